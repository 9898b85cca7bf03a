//! The guest log: lines a guest printed about its own write latency
//! (guestperf's `NAME (PID): INFO: <epoch>ms copied <x> GB in <dur>ms`,
//! `epoch_ms value_ms` pairs, or JSON objects), parsed and kept compactly for
//! the guest correlation ([`crate::engine::guest`]).
//!
//! A log is untrusted input of any size: [`read`] streams it with a line
//! length cap, counts every line, keeps the samples from shortly before the
//! recording on, and at most [`MAX_SAMPLES`] of them, so its memory is
//! bounded whatever it holds.
//! Numbers are checked here once: every kept sample is finite and within the
//! caps below.

use std::collections::HashMap;
use std::io::{self, BufRead};

use serde::Serialize;

/// Longest line read; longer ones are counted as unreadable and skipped.
pub const MAX_LINE: usize = 64 << 10;
/// Longest run of bytes without a line break read before giving up on the
/// input (`/dev/zero`, a binary file): no guest log has such a line.
pub const MAX_SKIP: u64 = 64 << 20;
/// Most samples kept (32 bytes each: 64 MiB).
pub const MAX_SAMPLES: usize = 1 << 21;
/// Most distinct writers kept.
pub const MAX_SOURCES: usize = 4096;
/// Longest interval a line may print: 31 days, the longest recording.
pub const MAX_DUR_MS: f64 = 31.0 * 86_400_000.0;
/// Latest guest clock reading accepted (about the year 5138).
pub const MAX_EPOCH_MS: f64 = 1e14;
/// Highest guest CPU number accepted.
pub const MAX_CPU: u32 = 1 << 16;

/// One guest measurement: an interval of `dur_ms` that ended at `end`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sample {
    /// Guest wall-clock ms at the end of the interval, when the line carries it.
    pub guest_end_ms: Option<f64>,
    /// Host monotonic ns at which the line arrived, when recorded live.
    pub host_arrival_ns: Option<u64>,
    pub dur_ms: f64,
    /// Who printed it (`NAME (PID)` of guestperf), for per-thread grouping.
    pub source: String,
    /// Guest CPU the writer ran on, when the line names it (`.../cpuN`, `cpu=N`).
    pub cpu: Option<u32>,
}

/// Counts of what a guest log contained.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LineCounts {
    pub guestperf: u64,
    pub plain: u64,
    pub json: u64,
    pub unknown: u64,
    /// Lines that flag stale pages in the guest (`UFFDSCOPE-STALE`).
    pub stale_markers: u64,
    /// Lines in a known format whose numbers are impossible (not finite,
    /// negative, or beyond [`MAX_DUR_MS`] / [`MAX_EPOCH_MS`]); not analyzed.
    #[serde(skip)]
    pub rejected: u64,
    /// Lines that are not text: invalid UTF-8, or longer than [`MAX_LINE`].
    #[serde(skip)]
    pub unreadable: u64,
    /// Sample lines past [`MAX_SAMPLES`] or from writers past [`MAX_SOURCES`].
    #[serde(skip)]
    pub dropped: u64,
    /// Sample lines from long before the recording (see [`keep_from_ms`]).
    #[serde(skip)]
    pub before_recording: u64,
    /// Where reading stopped early: a "line" ran past [`MAX_SKIP`] bytes.
    #[serde(skip)]
    pub stopped_at: Option<u64>,
}

impl Sample {
    /// Finite, non-negative numbers within the caps: what the correlation relies on.
    fn is_plausible(&self) -> bool {
        (0.0..=MAX_DUR_MS).contains(&self.dur_ms)
            && self
                .guest_end_ms
                .is_none_or(|e| (0.0..=MAX_EPOCH_MS).contains(&e))
            && self.cpu.is_none_or(|c| c <= MAX_CPU)
    }
}

fn parse_cpu(name: &str) -> Option<u32> {
    let lower = name.to_ascii_lowercase();
    let idx = lower.rfind("cpu")?;
    let digits: String = lower[idx + 3..]
        .trim_start_matches(['=', ' ', ':'])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Parses `NAME (PID): INFO: <epoch>ms copied <x> GB in <dur>ms`.
fn parse_guestperf(line: &str) -> Option<Sample> {
    let (head, rest) = line.split_once(": INFO: ")?;
    let (epoch, rest) = rest.trim().split_once("ms copied ")?;
    let (_, dur) = rest.split_once(" in ")?;
    let dur = dur.trim().strip_suffix("ms")?;
    let epoch: f64 = epoch.trim().parse().ok()?;
    let dur: f64 = dur.trim().parse().ok()?;
    let name = head.split(" (").next().unwrap_or(head);
    Some(Sample {
        guest_end_ms: Some(epoch),
        host_arrival_ns: None,
        dur_ms: dur,
        source: head.trim().to_owned(),
        cpu: parse_cpu(name),
    })
}

fn parse_plain(line: &str) -> Option<Sample> {
    let mut it = line.split_whitespace();
    let epoch: f64 = it.next()?.parse().ok()?;
    let dur: f64 = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some(Sample {
        guest_end_ms: Some(epoch),
        host_arrival_ns: None,
        dur_ms: dur,
        source: "plain".to_owned(),
        cpu: None,
    })
}

fn parse_json(line: &str) -> Option<Sample> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let num = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| v.get(*k).and_then(serde_json::Value::as_f64))
    };
    let dur = num(&["dur_ms", "value_ms", "latency_ms"])?;
    let end = num(&["epoch_ms", "ts_ms", "end_ms"]);
    let source = v
        .get("name")
        .or_else(|| v.get("thread"))
        .and_then(|s| s.as_str())
        .unwrap_or("json")
        .to_owned();
    let cpu = match num(&["cpu"]) {
        // A CPU number that is not one is an impossible value, like a NaN.
        Some(c) if c.fract() != 0.0 || !(0.0..=f64::from(MAX_CPU)).contains(&c) => {
            return Some(Sample {
                dur_ms: f64::NAN,
                ..Sample::default()
            })
        }
        c => c.map(|c| c as u32),
    };
    Some(Sample {
        guest_end_ms: end,
        host_arrival_ns: None,
        dur_ms: dur,
        source,
        cpu,
    })
}

/// Parses one line in any supported format, updating `counts`. A line whose
/// numbers are impossible is counted in [`LineCounts::rejected`], not parsed.
pub fn parse_line(line: &str, counts: &mut LineCounts) -> Option<Sample> {
    let sample = parse_any(line, counts)?;
    if sample.is_plausible() {
        Some(sample)
    } else {
        counts.rejected += 1;
        None
    }
}

fn parse_any(line: &str, counts: &mut LineCounts) -> Option<Sample> {
    let line = line.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    if line.is_empty() {
        return None;
    }
    if line.contains("UFFDSCOPE-STALE") {
        counts.stale_markers += 1;
    }
    if let Some(s) = parse_guestperf(line) {
        counts.guestperf += 1;
        return Some(s);
    }
    if line.starts_with('{') {
        if let Some(s) = parse_json(line) {
            counts.json += 1;
            return Some(s);
        }
    }
    if let Some(s) = parse_plain(line) {
        counts.plain += 1;
        return Some(s);
    }
    counts.unknown += 1;
    None
}

/// A guest log's samples in compact form (interned writer names, no
/// `Option` padding) and the counts of what its lines were.
#[derive(Debug, Clone, Default)]
pub struct GuestLog {
    samples: Vec<Kept>,
    sources: Vec<String>,
    index: HashMap<String, u32>,
    /// Samples whose guest clock is earlier are not kept (see [`keep_from_ms`]).
    keep_from_ms: Option<f64>,
    pub counts: LineCounts,
}

/// One kept sample; `NONE_*` mark what the line did not carry.
#[derive(Debug, Clone, Copy)]
struct Kept {
    guest_end_ms: f64,
    host_arrival_ns: u64,
    dur_ms: f64,
    source: u32,
    cpu: u32,
}

const NONE_ARRIVAL: u64 = u64::MAX;
const NONE_CPU: u32 = u32::MAX;

/// A kept sample as the correlation reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleRef<'a> {
    pub guest_end_ms: Option<f64>,
    pub host_arrival_ns: Option<u64>,
    pub dur_ms: f64,
    /// The writer's index in [`GuestLog::source_name`].
    pub source: u32,
    pub source_name: &'a str,
    pub cpu: Option<u32>,
}

impl GuestLog {
    /// Parses one line; keeps its sample, stamped with the host's arrival
    /// time when the line was recorded live.
    pub fn push_line(&mut self, line: &str, host_arrival_ns: Option<u64>) {
        if let Some(mut s) = parse_line(line, &mut self.counts) {
            s.host_arrival_ns = host_arrival_ns;
            self.push(&s);
        }
    }

    /// Keeps a parsed sample (up to [`MAX_SAMPLES`]).
    pub fn push(&mut self, s: &Sample) {
        if let (Some(from), Some(end)) = (self.keep_from_ms, s.guest_end_ms) {
            if end < from {
                self.counts.before_recording += 1;
                return;
            }
        }
        if self.samples.len() >= MAX_SAMPLES {
            self.counts.dropped += 1;
            return;
        }
        let source = match self.index.get(&s.source) {
            Some(&i) => i,
            None if self.sources.len() < MAX_SOURCES => {
                let i = self.sources.len() as u32;
                self.sources.push(s.source.clone());
                self.index.insert(s.source.clone(), i);
                i
            }
            None => {
                self.counts.dropped += 1;
                return;
            }
        };
        self.samples.push(Kept {
            guest_end_ms: s.guest_end_ms.unwrap_or(f64::NAN),
            host_arrival_ns: s
                .host_arrival_ns
                .map_or(NONE_ARRIVAL, |t| t.min(NONE_ARRIVAL - 1)),
            dur_ms: s.dur_ms,
            source,
            cpu: s.cpu.map_or(NONE_CPU, |c| c.min(MAX_CPU)),
        });
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// True when nothing at all was read (no line of any kind).
    pub fn is_blank(&self) -> bool {
        self.samples.is_empty() && self.counts == LineCounts::default()
    }

    /// The `i`-th kept sample.
    pub fn get(&self, i: usize) -> SampleRef<'_> {
        let k = &self.samples[i];
        SampleRef {
            guest_end_ms: (!k.guest_end_ms.is_nan()).then_some(k.guest_end_ms),
            host_arrival_ns: (k.host_arrival_ns != NONE_ARRIVAL).then_some(k.host_arrival_ns),
            dur_ms: k.dur_ms,
            source: k.source,
            source_name: &self.sources[k.source as usize],
            cpu: (k.cpu != NONE_CPU).then_some(k.cpu),
        }
    }

    /// Every kept sample, in the order read.
    pub fn iter(&self) -> impl Iterator<Item = SampleRef<'_>> + '_ {
        (0..self.samples.len()).map(|i| self.get(i))
    }

    /// How many distinct writers the kept samples have.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// A writer's name.
    pub fn source_name(&self, source: u32) -> &str {
        &self.sources[source as usize]
    }
}

impl LineCounts {
    /// What the report should say about lines that were not analyzed.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.unreadable > 0 {
            out.push(format!(
                "{} guest log lines are not text (invalid UTF-8, or longer than {} KiB) and were skipped",
                self.unreadable,
                MAX_LINE >> 10
            ));
        }
        if self.rejected > 0 {
            out.push(format!(
                "{} guest log lines hold impossible numbers (not finite, negative, a duration over 31 days or a CPU over {MAX_CPU}) and were skipped",
                self.rejected
            ));
        }
        if self.dropped > 0 {
            out.push(format!(
                "{} guest samples past the first {MAX_SAMPLES} (or from writers past the first {MAX_SOURCES}) were not analyzed: keep only the lines around the migration",
                self.dropped
            ));
        }
        if self.before_recording > 0 {
            out.push(format!(
                "{} guest samples from more than {} minutes before the recording started were not analyzed",
                self.before_recording,
                LOOKBACK_MS / 60_000.0
            ));
        }
        if let Some(at) = self.stopped_at {
            out.push(format!(
                "stopped reading the guest log at byte {at}: no line break in {} MiB, so the rest is not a text log",
                MAX_SKIP >> 20
            ));
        }
        out
    }
}

/// How long before the recording's start (beyond the guest-clock offset
/// search) guest samples are still kept: enough for a baseline.
pub const LOOKBACK_MS: f64 = 10.0 * 60_000.0;
/// The guest-clock offset search reaches this far either side of the guess.
pub const OFFSET_SEARCH_MS: f64 = 60_200.0;

/// The earliest guest-clock ms worth keeping for a recording that started at
/// `start_ns` (monotonic; `realtime_offset_ns` to realtime), with the guest
/// clock `offset_ms` ahead of the host (searched when `None`): samples from
/// long before cannot line up with the trace, and a log of days would
/// otherwise fill [`MAX_SAMPLES`] with them. `None` when the start is unknown.
pub fn keep_from_ms(start_ns: u64, realtime_offset_ns: i64, offset_ms: Option<f64>) -> Option<f64> {
    if start_ns == 0 {
        return None;
    }
    let start_ms = (start_ns as f64 + realtime_offset_ns as f64) / 1e6;
    let reach = if offset_ms.is_some() {
        0.0
    } else {
        OFFSET_SEARCH_MS
    };
    Some(start_ms + offset_ms.unwrap_or(0.0) - reach - LOOKBACK_MS)
}

/// Reads a guest log from any input (a file, a pipe, a console capture),
/// keeping samples from `keep_from_ms` on (guest clock; see [`keep_from_ms`]).
/// Only I/O errors fail; every readable line is counted.
pub fn read(mut input: impl BufRead, keep_from_ms: Option<f64>) -> io::Result<GuestLog> {
    let mut log = GuestLog {
        keep_from_ms,
        ..GuestLog::default()
    };
    let mut line = Vec::with_capacity(256);
    let mut offset = 0u64;
    loop {
        line.clear();
        let got = read_line_capped(&mut input, &mut line)?;
        match got {
            Line::End => break,
            Line::Text(n) => {
                offset += n;
                match std::str::from_utf8(&line) {
                    Ok(text) => log.push_line(text, None),
                    Err(_) => log.counts.unreadable += 1,
                }
            }
            Line::Overlong(n) => {
                offset += n;
                log.counts.unreadable += 1;
            }
            Line::Endless => {
                log.counts.unreadable += 1;
                log.counts.stopped_at = Some(offset);
                break;
            }
        }
    }
    Ok(log)
}

/// What one call of [`read_line_capped`] found.
enum Line {
    /// A line of this many bytes (with its line break), now in the buffer.
    Text(u64),
    /// A line of this many bytes over [`MAX_LINE`], skipped.
    Overlong(u64),
    /// [`MAX_SKIP`] bytes without a line break.
    Endless,
    End,
}

fn read_line_capped(input: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<Line> {
    let mut consumed = 0u64;
    let mut overlong = false;
    loop {
        let avail = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            break;
        }
        let (chunk, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (&avail[..=i], true),
            None => (avail, false),
        };
        if !overlong && buf.len() + chunk.len() > MAX_LINE + 1 {
            overlong = true;
            buf.clear();
        }
        if !overlong {
            buf.extend_from_slice(chunk);
        }
        let n = chunk.len();
        input.consume(n);
        consumed += n as u64;
        if done {
            break;
        }
        if consumed > MAX_SKIP {
            return Ok(Line::Endless);
        }
    }
    Ok(match (consumed, overlong) {
        (0, _) => Line::End,
        (n, true) => Line::Overlong(n),
        (n, false) => Line::Text(n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stress_c_lines() {
        let mut c = LineCounts::default();
        let s = parse_line(
            "stress (1): INFO: 1700000000123ms copied 1 GB in 00412ms",
            &mut c,
        )
        .unwrap();
        assert_eq!(s.guest_end_ms, Some(1_700_000_000_123.0));
        assert!((s.dur_ms - 412.0).abs() < 1e-9);
        assert_eq!(s.source, "stress (1)");
        assert_eq!(c.guestperf, 1);
        let s = parse_line(
            "uffdscope-guest/cpu1 (00042): INFO: 000123ms copied 1 GB in 00007ms",
            &mut c,
        )
        .unwrap();
        assert_eq!(s.cpu, Some(1));
    }

    #[test]
    fn parses_plain_and_json_and_counts_unknown() {
        let mut c = LineCounts::default();
        assert!(parse_line("1000 25.5", &mut c).is_some());
        assert!(parse_line(r#"{"epoch_ms": 5, "dur_ms": 3, "cpu": 2}"#, &mut c).is_some());
        assert!(parse_line("[    0.000000] Linux version 6.1", &mut c).is_none());
        assert!(parse_line("UFFDSCOPE-STALE addr=0x1", &mut c).is_none());
        assert_eq!(
            c,
            LineCounts {
                guestperf: 0,
                plain: 1,
                json: 1,
                unknown: 2,
                stale_markers: 1,
                ..LineCounts::default()
            }
        );
    }

    #[test]
    fn impossible_numbers_are_counted_not_parsed() {
        let mut c = LineCounts::default();
        for line in [
            "1000 NaN",
            "1000 inf",
            "1000 1e308",
            "1e308 5",
            "-5 3",
            "1000 -3",
            r#"{"epoch_ms": 5, "dur_ms": 3, "cpu": 1e300}"#,
            r#"{"epoch_ms": 5, "dur_ms": 3, "cpu": -1}"#,
            "w (1): INFO: 5ms copied 1 GB in NaNms",
        ] {
            assert!(parse_line(line, &mut c).is_none(), "{line}");
        }
        assert_eq!(c.rejected, 9);
        assert_eq!(c.warnings().len(), 1);
    }

    #[test]
    fn the_reader_keeps_every_readable_line_and_counts_the_rest() {
        let mut input = b"1000 5\n\xff\xfe 7\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        input.extend_from_slice(b"\n2000 6\r\n3000 7");
        let log = read(&input[..], None).expect("reading memory");
        let durs: Vec<f64> = log.iter().map(|s| s.dur_ms).collect();
        assert_eq!(durs, vec![5.0, 6.0, 7.0]);
        assert_eq!(log.counts.unreadable, 2);
        assert_eq!(log.counts.plain, 3);
        assert_eq!(log.counts.stopped_at, None);
    }

    #[test]
    fn an_input_without_line_breaks_stops_after_the_skip_limit() {
        let zeros = io::BufReader::new(io::repeat(0));
        let log = read(zeros, None).expect("reading zeros");
        assert!(log.is_empty());
        let at = log.counts.stopped_at.expect("stopped");
        assert_eq!(at, 0);
        assert!(log.counts.warnings()[1].contains("stopped reading"));
    }

    #[test]
    fn samples_past_the_caps_are_counted() {
        let mut log = GuestLog::default();
        for i in 0..(MAX_SOURCES + 3) {
            log.push_line(&format!(r#"{{"name": "w{i}", "dur_ms": 1}}"#), None);
        }
        assert_eq!(log.len(), MAX_SOURCES);
        assert_eq!(log.counts.dropped, 3);
        let s = log.get(0);
        assert_eq!((s.source_name, s.guest_end_ms, s.cpu), ("w0", None, None));
    }

    #[test]
    fn samples_from_long_before_the_recording_are_counted_not_kept() {
        // Recording started at realtime 1_000_000 s; guest clock 2 s ahead.
        let from = keep_from_ms(5_000_000_000, 999_995_000_000_000, Some(2_000.0));
        assert_eq!(from, Some(1_000_002_000.0 - LOOKBACK_MS));
        let searched = keep_from_ms(5_000_000_000, 999_995_000_000_000, None);
        assert_eq!(
            searched,
            Some(1_000_000_000.0 - OFFSET_SEARCH_MS - LOOKBACK_MS)
        );
        assert_eq!(keep_from_ms(0, 5, None), None);
        let at = |ms: f64| format!("{ms} 5\n");
        let text = [at(1_000_002_000.0), at(1_000_002_000.0 - LOOKBACK_MS - 1.0)].concat();
        let log = read(text.as_bytes(), from).expect("reading memory");
        assert_eq!((log.len(), log.counts.before_recording), (1, 1));
        assert_eq!(log.counts.plain, 2, "every line is still counted");
    }
}
