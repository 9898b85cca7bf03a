//! The validation boundary: the one place where decoded trace records become
//! analysis input. Traces travel in bug reports, so a record may hold any
//! value its encoding allows; here the impossible ones are turned away and
//! counted, and everything after this point relies on what it guarantees:
//!
//! - every timestamp lies within [`Boundary::BEFORE_NS`] before and
//!   [`Boundary::AFTER_NS`] after the recording's start (the metadata's
//!   `start_ns`, or the first record's time when the metadata has none), so
//!   no interval is longer than their sum and nothing sized by a time span
//!   can grow past it;
//! - intervals run forwards: a syscall's exit is not before its entry, a
//!   thread runs again no earlier than it was woken and resumes in user mode
//!   no earlier than it ran, a placing thread's moment after an ioctl is not
//!   before that ioctl's exit;
//! - byte lengths of ioctls, registered ranges and wake ranges are at most
//!   [`Boundary::MAX_LEN`], and `start + len` does not overflow;
//! - every record about a thread names one (tid 0 is the idle task, never a
//!   thread of the target);
//! - sleeps (which become faults) arrive in time order within
//!   [`Boundary::MAX_LATE_NS`];
//! - a placement bin covers one bin of time and counts at most one placement
//!   per nanosecond of it, so sums of counts cannot overflow.
//!
//! A record breaking any of these is dropped whole (a fault built from half a
//! record would be a guess); [`Boundary::warnings`] says how many of each kind
//! were dropped, for the report's warnings.

use crate::engine::stats::Sweep;
use uffdscope_trace::record::{PlacementBin, Record};
use uffdscope_trace::TraceMeta;

/// Why a record was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// A timestamp outside the recording's plausible span.
    OutsideSpan,
    /// An interval that ends before it starts.
    Backwards,
    /// A byte length over [`Boundary::MAX_LEN`], or one that overflows its range.
    TooLong,
    /// A record about thread id 0.
    NoThread,
    /// A sleep more than [`Boundary::MAX_LATE_NS`] older than a record before it.
    Late,
    /// A placement bin wider than one bin, or counting more than one
    /// placement per nanosecond of it, or more ioctl time than its
    /// placements can have taken.
    BadBin,
}

impl Rejection {
    const ALL: [Rejection; 6] = [
        Rejection::OutsideSpan,
        Rejection::Backwards,
        Rejection::TooLong,
        Rejection::NoThread,
        Rejection::Late,
        Rejection::BadBin,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn explain(self) -> String {
        match self {
            Rejection::OutsideSpan => format!(
                "a timestamp more than {} days before or {} days after the recording's start",
                Boundary::BEFORE_NS / DAY_NS,
                Boundary::AFTER_NS / DAY_NS
            ),
            Rejection::Backwards => {
                "an interval ending before it starts (exit before entry, run before wake)"
                    .to_owned()
            }
            Rejection::TooLong => format!(
                "a byte length over {} GiB or past the end of the address space",
                Boundary::MAX_LEN >> 30
            ),
            Rejection::NoThread => "thread id 0".to_owned(),
            Rejection::Late => format!(
                "a sleep more than {} s older than a record before it (out of order)",
                Boundary::MAX_LATE_NS / 1_000_000_000
            ),
            Rejection::BadBin => format!(
                "a placement bin spanning more than {} ms or counting more placements or ioctl time than fit in it",
                PlacementBin::BIN_NS / 1_000_000
            ),
        }
    }
}

const DAY_NS: u64 = 86_400 * 1_000_000_000;

/// Admits records into the analysis, counting what it turns away.
#[derive(Debug, Clone)]
pub struct Boundary {
    /// The recording's start, once known.
    anchor: Option<u64>,
    /// The latest record time admitted so far.
    latest: u64,
    rejected: [u64; Rejection::ALL.len()],
}

impl Boundary {
    /// How long before the recording's start a record may be (discovery
    /// records are stamped at the start; a day is a generous margin).
    pub const BEFORE_NS: u64 = DAY_NS;
    /// How long after the recording's start a record may be. A post-copy
    /// migration lasts seconds to hours; a month bounds every time-sized
    /// structure of the analysis.
    pub const AFTER_NS: u64 = 31 * DAY_NS;
    /// Longest byte range an ioctl, a registered range or a wake may cover.
    pub const MAX_LEN: u64 = 1 << 40;
    /// How far out of order a sleep may arrive: the tracer's per-CPU
    /// buffers interleave within milliseconds; the fault statistics sweep
    /// ([`Sweep::MARGIN_NS`]) tolerates this much.
    pub const MAX_LATE_NS: u64 = Sweep::MARGIN_NS;

    pub fn new(meta: &TraceMeta) -> Self {
        Self {
            anchor: (meta.start_ns > 0).then_some(meta.start_ns),
            latest: 0,
            rejected: [0; Rejection::ALL.len()],
        }
    }

    /// The record if it may enter the analysis; `None` (counted) if not.
    pub fn admit(&mut self, rec: Record) -> Option<Record> {
        self.admits(&rec).then_some(rec)
    }

    /// Whether the record may enter the analysis (counted when not).
    pub fn admits(&mut self, rec: &Record) -> bool {
        match self.check(rec) {
            Ok(()) => {
                self.latest = self.latest.max(rec.ts());
                true
            }
            Err(why) => {
                self.rejected[why.index()] += 1;
                false
            }
        }
    }

    /// How many records were turned away for `why`.
    pub fn rejected(&self, why: Rejection) -> u64 {
        self.rejected[why.index()]
    }

    /// One warning per kind of record turned away.
    pub fn warnings(&self) -> Vec<String> {
        Rejection::ALL
            .iter()
            .filter(|why| self.rejected(**why) > 0)
            .map(|why| {
                format!(
                    "ignored {} records with {}: the trace is damaged or was edited",
                    self.rejected(*why),
                    why.explain()
                )
            })
            .collect()
    }

    fn check(&mut self, rec: &Record) -> Result<(), Rejection> {
        self.check_times(rec)?;
        check_order(rec)?;
        check_lengths(rec)?;
        if let Record::PlacementBin(bin) = rec {
            check_bin(bin)?;
        }
        if thread_of(rec) == Some(0) {
            return Err(Rejection::NoThread);
        }
        // Sleeps become faults, whose statistics sweep in time order; other
        // records (a thread renamed, a guest line) may come late harmlessly.
        let late = rec.ts().saturating_add(Self::MAX_LATE_NS) < self.latest;
        if late && matches!(rec, Record::Sleep(_)) {
            return Err(Rejection::Late);
        }
        Ok(())
    }

    fn check_times(&mut self, rec: &Record) -> Result<(), Rejection> {
        let anchor = *self.anchor.get_or_insert(rec.ts());
        let lo = anchor.saturating_sub(Self::BEFORE_NS);
        let hi = anchor.saturating_add(Self::AFTER_NS);
        let mut ok = true;
        for_each_ts(rec, |ts| ok &= (lo..=hi).contains(&ts));
        if ok {
            Ok(())
        } else {
            Err(Rejection::OutsideSpan)
        }
    }
}

/// Calls `f` on every timestamp of a record.
fn for_each_ts(rec: &Record, mut f: impl FnMut(u64)) {
    match rec {
        Record::Sleep(s) => {
            if let Some(e) = &s.fault {
                f(e.ts);
            }
            f(s.blocked_ts);
            f(s.woken_ts);
            if let Some(run) = s.run_ts {
                f(run);
            }
            if let Some(resume) = s.resume_ts {
                f(resume);
            }
        }
        Record::PlacerRun(r) => {
            f(r.ioctl_exit_ts);
            f(r.ts);
            if let Some(out) = r.out_ts {
                f(out);
            }
        }
        Record::UffdRead(r) => {
            f(r.enter_ts);
            f(r.exit_ts);
        }
        Record::UffdIoctl(r) => {
            f(r.enter_ts);
            f(r.exit_ts);
        }
        Record::PlacementBin(r) => {
            f(r.first_exit_ts);
            f(r.last_exit_ts);
        }
        Record::SockIo(r) => {
            f(r.enter_ts);
            f(r.exit_ts);
        }
        other => f(other.ts()),
    }
}

fn check_order(rec: &Record) -> Result<(), Rejection> {
    let forwards = match rec {
        // Woken before blocked is a real order (woken while switching out);
        // running before being woken is not.
        Record::Sleep(s) => {
            s.run_ts.is_none_or(|run| run >= s.woken_ts)
                && s.resume_ts
                    .is_none_or(|resume| resume >= s.run_ts.unwrap_or(u64::MAX))
        }
        Record::PlacerRun(r) => {
            r.ioctl_exit_ts <= r.ts
                && r.out_ts
                    .is_none_or(|out| r.ioctl_exit_ts <= out && out <= r.ts)
        }
        Record::UffdRead(r) => r.enter_ts <= r.exit_ts,
        Record::UffdIoctl(r) => r.enter_ts <= r.exit_ts,
        Record::PlacementBin(r) => r.first_exit_ts <= r.last_exit_ts,
        Record::SockIo(r) => r.enter_ts <= r.exit_ts,
        _ => true,
    };
    if forwards {
        Ok(())
    } else {
        Err(Rejection::Backwards)
    }
}

fn check_lengths(rec: &Record) -> Result<(), Rejection> {
    let fits = |start: u64, len: u64| len <= Boundary::MAX_LEN && start.checked_add(len).is_some();
    let ok = match rec {
        Record::UffdIoctl(r) => fits(r.start, r.len),
        Record::PlacementBin(r) => r.len <= Boundary::MAX_LEN,
        Record::UffdRange(r) => fits(r.start, r.len),
        Record::Sleep(s) => fits(s.wake_start, s.wake_len),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(Rejection::TooLong)
    }
}

/// A bin holds the placements of one thread whose ioctls exited within one
/// [`PlacementBin::BIN_NS`]: at most one per nanosecond, each no longer than
/// the recording's span. This also bounds every sum of counts.
fn check_bin(bin: &PlacementBin) -> Result<(), Rejection> {
    let span = Boundary::BEFORE_NS + Boundary::AFTER_NS;
    let ok = PlacementBin::index(bin.first_exit_ts) == PlacementBin::index(bin.last_exit_ts)
        && bin.count <= PlacementBin::BIN_NS
        && bin.ioctl_ns <= bin.count.saturating_mul(span);
    if ok {
        Ok(())
    } else {
        Err(Rejection::BadBin)
    }
}

/// The thread a record is about, for the records that are about one.
fn thread_of(rec: &Record) -> Option<u32> {
    match rec {
        Record::Sleep(r) => Some(r.tid),
        Record::UffdRead(r) => Some(r.tid),
        Record::UffdIoctl(r) => Some(r.tid),
        Record::PlacementBin(r) => Some(r.tid),
        Record::SockIo(r) => Some(r.tid),
        Record::SockLen(r) => Some(r.tid),
        Record::Thread(r) => Some(r.tid),
        Record::NewUffd(r) => Some(r.tid),
        Record::Perf(r) => Some(r.tid),
        Record::PlacerRun(r) => Some(r.tid),
        Record::KvmAsync(r) => Some(r.tid),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uffdscope_trace::record::{IoctlOp, Note, Sleep, UffdIoctl};

    const T0: u64 = 10 * DAY_NS;

    fn meta() -> TraceMeta {
        TraceMeta {
            start_ns: T0,
            ..TraceMeta::default()
        }
    }

    fn ioctl(enter_ts: u64, exit_ts: u64, len: u64, tid: u32) -> Record {
        Record::UffdIoctl(UffdIoctl {
            tid,
            enter_ts,
            exit_ts,
            fd: 3,
            op: IoctlOp::Copy,
            start: 0x7f00_0000_0000,
            len,
            mode: 0,
            ret: 0,
            result: 4096,
            woken: 1,
        })
    }

    fn sleep(blocked_ts: u64, woken_ts: u64, run_ts: Option<u64>) -> Record {
        Record::Sleep(Sleep {
            tid: 7,
            fault: None,
            blocked_ts,
            woken_ts,
            run_ts,
            resume_ts: None,
            waker_tid: 8,
            wake_op: IoctlOp::Copy,
            wake_start: 0x1000,
            wake_len: 4096,
            kernel: None,
        })
    }

    #[test]
    fn plausible_records_pass_unchanged() {
        let mut b = Boundary::new(&meta());
        let rec = ioctl(T0 + 10, T0 + 20, 4096, 9);
        assert_eq!(b.admit(rec.clone()), Some(rec));
        // Woken while switching out: woken before blocked is allowed.
        assert!(b.admit(sleep(T0 + 50, T0 + 40, Some(T0 + 60))).is_some());
        assert!(b.warnings().is_empty());
    }

    #[test]
    fn each_impossible_value_is_dropped_and_counted() {
        let mut b = Boundary::new(&meta());
        assert!(b.admit(ioctl(T0, u64::MAX, 4096, 9)).is_none());
        assert!(b.admit(ioctl(T0 + 20, T0 + 10, 4096, 9)).is_none());
        assert!(b.admit(sleep(T0, T0 + 10, Some(T0 + 5))).is_none());
        assert!(b.admit(ioctl(T0, T0 + 1, 1 << 60, 9)).is_none());
        assert!(b.admit(ioctl(T0, T0 + 1, 4096, 0)).is_none());
        let step = Boundary::MAX_LATE_NS;
        assert!(b.admit(ioctl(T0 + step, T0 + 2 * step, 4096, 9)).is_some());
        let late = |run: u64| sleep(T0, T0 + 10, Some(run));
        assert!(b.admit(late(T0 + step)).is_some(), "within the margin");
        assert!(b.admit(late(T0 + step - 1)).is_none(), "too late");
        let io = ioctl(T0, T0 + 1, 4096, 9);
        assert!(b.admit(io).is_some(), "only sleeps must come in order");
        let bin = PlacementBin {
            tid: 9,
            op: IoctlOp::Copy,
            len: 4096,
            first_exit_ts: T0,
            last_exit_ts: T0 + 1_000,
            count: 3,
            ioctl_ns: 6_000,
        };
        assert!(b.admit(Record::PlacementBin(bin)).is_some());
        let overcounted = PlacementBin {
            count: PlacementBin::BIN_NS + 1,
            ..bin
        };
        assert!(b.admit(Record::PlacementBin(overcounted)).is_none());
        for why in Rejection::ALL {
            let expected = if why == Rejection::Backwards { 2 } else { 1 };
            assert_eq!(b.rejected(why), expected, "{why:?}");
        }
        assert_eq!(
            b.warnings().len(),
            Rejection::ALL.len(),
            "{:?}",
            b.warnings()
        );
        assert!(b.warnings()[0].starts_with("ignored 1 records with a timestamp"));
    }

    #[test]
    fn without_a_start_in_the_metadata_the_first_record_anchors_the_span() {
        let mut b = Boundary::new(&TraceMeta::default());
        let note = |ts| {
            Record::Note(Note {
                ts,
                kind: "start".into(),
                text: String::new(),
            })
        };
        assert!(b.admit(note(T0)).is_some());
        assert!(b.admit(note(T0 + Boundary::AFTER_NS)).is_some());
        assert!(b.admit(note(T0 + Boundary::AFTER_NS + 1)).is_none());
        assert!(b.admit(note(T0 - Boundary::BEFORE_NS - 1)).is_none());
    }
}
