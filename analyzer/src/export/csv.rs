//! Per-fault CSV export, streamed: one row per fault as the lifecycle engine
//! resolves it. Timestamps (`t_*_ns`) are ns since the time origin of every
//! output ([`Origin`]: the trace's first record); durations are ns. A cell is empty when the
//! trace does not show that moment, never 0.

use std::io::{self, Read, Write};

use crate::drive::{self, At, Consumer, Derived, Limits, Origin, Summary};
use crate::engine::lifecycle::{Fault, Stage};
use crate::engine::network_split::NetworkSplitter;
use uffdscope_trace::record::Record;
use uffdscope_trace::TraceReader;

/// The header row.
pub const HEADER: &str =
    "tid,page,resolution,already_requested,reader_tid,requester_tid,waker_tid,place_len,\
t_entry_ns,t_blocked_ns,t_read_ns,t_request_ns,t_place_ns,t_place_end_ns,t_woken_ns,t_run_ns,\
queue_ns,request_ns,network_ns,place_ns,wake_ns,service_ns,blocked_ns,\
wire_ns,behind_stream_ns,rest_ns,paused_ns,behind_stream_bytes";

struct Csv<W: Write> {
    out: W,
    line: String,
    /// Takes the network stage of requested faults apart.
    split: NetworkSplitter,
}

fn cell<T: std::fmt::Display>(line: &mut String, v: Option<T>) {
    use std::fmt::Write as _;
    line.push(',');
    if let Some(v) = v {
        let _ = write!(line, "{v}");
    }
}

impl<W: Write> Csv<W> {
    fn row(&mut self, f: &Fault, origin: Origin) -> io::Result<()> {
        use std::fmt::Write as _;
        let rel = |ts: Option<u64>| ts.map(|t| origin.rel(t));
        let l = &mut self.line;
        l.clear();
        let _ = write!(
            l,
            "{},{:#x},{},{}",
            f.tid,
            f.page,
            f.resolution.as_str(),
            f.already_requested
        );
        cell(l, f.reader_tid);
        cell(l, f.requester_tid);
        cell(l, Some(f.waker_tid));
        cell(l, Some(f.place_len));
        for ts in [
            f.entry_ts,
            Some(f.blocked_ts),
            f.read_ts,
            f.request_ts,
            f.place_ts,
            f.place_end_ts,
            Some(f.woken_ts),
            f.run_ts,
        ] {
            cell(l, rel(ts));
        }
        for stage in Stage::ALL {
            cell(l, f.stage_ns(stage));
        }
        cell(l, f.service_ns());
        cell(l, f.blocked_ns());
        let split = self.split.split(f).unwrap_or_default();
        for part in [
            split.wire_ns,
            split.behind_stream_ns,
            split.rest_ns,
            split.paused_ns,
            split.behind_stream_bytes,
        ] {
            cell(l, part);
        }
        l.push('\n');
        self.out.write_all(l.as_bytes())
    }
}

impl<W: Write> Consumer for Csv<W> {
    type Error = io::Error;

    fn record(&mut self, rec: &Record, _: &Derived, _: At<'_>) -> io::Result<()> {
        self.split.push(rec);
        Ok(())
    }

    fn fault(&mut self, fault: &Fault, at: At<'_>) -> io::Result<()> {
        self.row(fault, at.origin)
    }
}

/// Streams one CSV row per fault of the trace to `out` (wrap it in a
/// `BufWriter`). Damage after the header ends the rows early and is returned
/// in [`Summary::damage`].
pub fn export<R: Read, W: Write>(
    reader: &mut TraceReader<R>,
    out: W,
    limits: Limits,
) -> io::Result<Summary> {
    let mut csv = Csv {
        out,
        line: String::with_capacity(256),
        split: NetworkSplitter::default(),
    };
    csv.out.write_all(HEADER.as_bytes())?;
    csv.out.write_all(b"\n")?;
    let (_, summary) = drive::drive(reader, &mut csv, limits)?;
    csv.out.flush()?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::lifecycle::Resolution;

    #[test]
    fn unknown_moments_are_empty_cells() {
        let mut csv = Csv {
            out: Vec::new(),
            line: String::new(),
            split: NetworkSplitter::default(),
        };
        let f = Fault {
            tid: 7,
            page: 0x7000,
            resolution: Resolution::Background,
            entry_ts: None,
            blocked_ts: 2_000,
            read_ts: None,
            reader_tid: None,
            request_ts: None,
            requester_tid: None,
            already_requested: false,
            place_ts: Some(5_000),
            place_end_ts: Some(5_500),
            woken_ts: 5_400,
            run_ts: Some(6_000),
            resume_ts: None,
            waker_tid: 9,
            place_len: 4096,
        };
        csv.row(&f, Origin::at(1_000)).expect("vec write");
        let row = String::from_utf8(csv.out).expect("utf8");
        assert_eq!(
            row,
            "7,0x7000,background,false,,,9,4096,,1000,,,4000,4500,4400,5000,,,,400,600,,4000,,,,,\n"
        );
        assert_eq!(
            row.trim_end().split(',').count(),
            HEADER.split(',').count(),
            "row and header have the same columns"
        );
    }
}
