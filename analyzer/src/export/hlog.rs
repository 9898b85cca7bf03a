//! HdrHistogram interval log export (`report --format hlog`), streamed: each
//! fault's latencies go into the histograms of the fixed-length interval in
//! which it was woken, one histogram per tag (service, blocked, the five
//! stages, the four parts of the network stage), and an interval is written
//! once the stream is [`LATE_NS`] past its end. The log is HdrHistogram's own
//! format (V2 deflate-compressed histograms, base64, `Tag=` per line), so its
//! `HistogramLogReader`/`HistogramLogProcessor` and the Rust crate's
//! `IntervalLogIterator` read it. Values are nanoseconds, as the report's
//! histograms hold them.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;

use crate::drive::{self, At, Consumer, Derived, Limits, Origin, Summary};
use crate::engine::lifecycle::{Fault, Stage, RETAIN_NS};
use crate::engine::network_split::NetworkSplitter;
use crate::engine::stats::Hist;
use uffdscope_trace::record::Record;
use uffdscope_trace::TraceReader;

/// The histograms of one interval, in [`TAGS`] order; a tag's histogram is
/// made with its first value (an empty one still holds ~16 KiB).
type Interval = [Option<Hist>; TAGS.len()];

/// Every tag of the log, in the order an interval's lines are written.
pub const TAGS: [&str; 11] = [
    "service",
    "blocked",
    "queue",
    "request",
    "network",
    "place",
    "wake",
    "wire",
    "behind_stream",
    "rest",
    "paused",
];

/// Index in [`TAGS`] of the first stage (the stages follow in [`Stage::ALL`] order).
const FIRST_STAGE: usize = 2;
/// Index in [`TAGS`] of the first part of the network stage.
const FIRST_PART: usize = FIRST_STAGE + Stage::ALL.len();

/// How far the stream must be past an interval's end before it is written:
/// faults resolve in about the order they end, within the engine's window.
/// A fault later than that adds a second line for its interval and tag
/// (readers that add the intervals up count it once).
pub const LATE_NS: u64 = RETAIN_NS;

/// At most this many intervals are open at once (the oldest is written
/// first): short intervals must not hold [`LATE_NS`] worth of histograms
/// (up to ~170 KiB each at 3 significant digits).
pub const MAX_OPEN: usize = 32;

/// The default interval length.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// Why an interval length cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("interval {0:?} is out of range: give between 1 ms and 1 hour (e.g. --interval 1)")]
pub struct BadInterval(pub Duration);

/// The interval length, checked: between 1 ms and an hour.
pub fn interval(length: Duration) -> Result<Duration, BadInterval> {
    if (Duration::from_millis(1)..=Duration::from_secs(3600)).contains(&length) {
        Ok(length)
    } else {
        Err(BadInterval(length))
    }
}

struct Hlog<W: Write> {
    out: W,
    serializer: V2DeflateSerializer,
    interval_ns: u64,
    /// Open intervals by index from the origin.
    open: BTreeMap<u64, Interval>,
    /// The latest wake seen, ns since the origin.
    latest_ns: u64,
    /// The header is written with the first interval (it needs the origin).
    header_written: bool,
    /// `CLOCK_REALTIME - CLOCK_MONOTONIC` of the recording, ns.
    realtime_offset_ns: i64,
    split: NetworkSplitter,
}

impl<W: Write> Hlog<W> {
    fn add(&mut self, f: &Fault, origin: Origin) {
        let woken = u64::try_from(origin.rel(f.woken_ts)).unwrap_or(0);
        self.latest_ns = self.latest_ns.max(woken);
        let hists = self.open.entry(woken / self.interval_ns).or_default();
        let mut put = |i: usize, ns: Option<u64>| {
            if let Some(ns) = ns {
                hists[i].get_or_insert_with(Hist::default).record(ns);
            }
        };
        put(0, f.service_ns());
        put(1, f.blocked_ns());
        for (i, stage) in Stage::ALL.iter().enumerate() {
            put(FIRST_STAGE + i, f.stage_ns(*stage));
        }
        let split = self.split.split(f).unwrap_or_default();
        let parts = [
            split.wire_ns,
            split.behind_stream_ns,
            split.rest_ns,
            split.paused_ns,
        ];
        for (i, part) in parts.into_iter().enumerate() {
            put(FIRST_PART + i, part);
        }
    }

    /// Writes the intervals that end before `upto_ns` (ns since the
    /// origin), and the oldest ones past [`MAX_OPEN`].
    fn flush(&mut self, upto_ns: u64, origin: Origin) -> io::Result<()> {
        while let Some(&index) = self.open.keys().next() {
            let ended = index.saturating_add(1).saturating_mul(self.interval_ns) <= upto_ns;
            if !ended && self.open.len() <= MAX_OPEN {
                break;
            }
            let Some(hists) = self.open.remove(&index) else {
                break;
            };
            self.write_interval(index, &hists, origin)?;
        }
        Ok(())
    }

    fn write_interval(&mut self, index: u64, hists: &Interval, origin: Origin) -> io::Result<()> {
        if !self.header_written {
            self.write_header(origin)?;
        }
        let start = Duration::from_nanos(index.saturating_mul(self.interval_ns));
        let length = Duration::from_nanos(self.interval_ns);
        let mut log =
            IntervalLogWriterBuilder::new().begin_log_with(&mut self.out, &mut self.serializer)?;
        for (tag, hist) in TAGS.iter().zip(hists) {
            let Some(hist) = hist.as_ref().filter(|h| h.count() > 0) else {
                continue;
            };
            log.write_histogram(hist.histogram(), start, length, Tag::new(tag))
                .map_err(|e| io::Error::other(format!("writing the {tag} histogram: {e}")))?;
        }
        Ok(())
    }

    fn write_header(&mut self, origin: Origin) -> io::Result<()> {
        self.header_written = true;
        let mut builder = IntervalLogWriterBuilder::new();
        builder
            .add_comment("[Histogram log format version 1.3]")
            .add_comment(&format!(
                "uffdscope {}: userfaultfd fault latencies. Values (and the max column) are nanoseconds.",
                env!("CARGO_PKG_VERSION")
            ))
            .add_comment(&format!("Tags: {}.", TAGS.join(", ")))
            .add_comment(&format!(
                "Intervals of {} s from the trace's first record; each fault is counted in the interval in which it was woken; intervals and tags without faults are left out.",
                self.interval_ns as f64 / 1e9
            ))
            .add_comment("A fault resolved after its interval was written adds another line for that interval and tag.");
        // The timestamps are seconds since the origin; its wall-clock time
        // is the BaseTime when the recording's clock offset puts it after 1970.
        let origin_realtime = i128::from(origin.ns(0)) + i128::from(self.realtime_offset_ns);
        if let Some(ns) = u64::try_from(origin_realtime).ok().filter(|ns| *ns > 0) {
            let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(ns);
            builder.with_start_time(at).with_base_time(at);
        }
        builder.begin_log_with(&mut self.out, &mut self.serializer)?;
        self.out.write_all(
            b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
        )
    }
}

impl<W: Write> Consumer for Hlog<W> {
    type Error = io::Error;

    fn record(&mut self, rec: &Record, _: &Derived, _: At<'_>) -> io::Result<()> {
        self.split.push(rec);
        Ok(())
    }

    fn fault(&mut self, fault: &Fault, at: At<'_>) -> io::Result<()> {
        self.add(fault, at.origin);
        self.flush(self.latest_ns.saturating_sub(LATE_NS), at.origin)
    }
}

/// Streams the interval log of the trace to `out` (wrap it in a
/// `BufWriter`), intervals of `interval` (checked with [`interval`]).
/// Damage after the header ends the log early and is returned in
/// [`Summary::damage`].
pub fn export<R: Read, W: Write>(
    reader: &mut TraceReader<R>,
    out: W,
    interval: Duration,
    limits: Limits,
) -> io::Result<Summary> {
    let mut hlog = Hlog {
        out,
        serializer: V2DeflateSerializer::new(),
        interval_ns: u64::try_from(interval.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1),
        open: BTreeMap::new(),
        latest_ns: 0,
        header_written: false,
        realtime_offset_ns: reader.meta().realtime_offset_ns,
        split: NetworkSplitter::default(),
    };
    let (_, summary) = drive::drive(reader, &mut hlog, limits)?;
    hlog.flush(u64::MAX, summary.origin)?;
    if !hlog.header_written {
        hlog.write_header(summary.origin)?;
    }
    hlog.out.flush()?;
    Ok(summary)
}
