//! The kernel's placement filter, applied in userspace to a full trace: which
//! placing ioctls stay records one by one, and the [`PlacementBin`]s the rest
//! are counted in (see ARCHITECTURE.md, "Placements counted in the kernel").
//!
//! A successful, complete `UFFDIO_COPY` or `UFFDIO_ZEROPAGE` stays a record
//! when the analysis needs it by itself:
//!
//! 1. it woke a thread (`woken > 0`): the fault join;
//! 2. its range covers a page whose uffd message was read and not yet covered
//!    by a recorded placement (the kernel's "read, not yet resolved" map);
//! 3. it exited while a `read()` on a uffd fd was in progress: that read may
//!    return a message for the page it placed, which QEMU's blocktime
//!    accounting then withdraws (the kernel keeps a count of reads in flight);
//! 4. it is the thread's next uffd ioctl after a placement kept by 1–3: the
//!    end of that placement in QEMU's blocktime replay (a per-thread flag).
//!
//! Every other placement is counted per (thread, kind, length, 10 ms bin of
//! its exit). Every other record passes unchanged. The kernel keeps its maps
//! bounded (least-recently-used eviction); this mirror does not, so it is the
//! exact rule the kernel approximates.
//!
//! Rule 3 needs to know the reads before the placements they overlap, so the
//! filter takes two passes: [`LeanFilter::learn`] every record, then
//! [`LeanFilter::push`] every record. Memory follows the number of uffd reads,
//! not the trace length.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use crate::container::{TraceError, TraceReader, TraceWriter};
use crate::record::{IoctlOp, PlacementBin, Record, UffdIoctl, UffdMsg};

const PAGE: u64 = 4096;

/// What one bin is counted under.
type BinKey = (u64, u32, u32, u64);

/// Counts of what the filter did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeanStats {
    /// Placements kept as records, by the first rule that kept them (1–4).
    pub kept: [u64; 4],
    /// Placements counted in bins.
    pub counted: u64,
    /// Bin records written.
    pub bins: u64,
}

/// The filter; see the module documentation for the two passes.
#[derive(Debug, Default)]
pub struct LeanFilter {
    /// Every uffd read as (enter, exit), sorted by enter once prepared.
    reads: Vec<(u64, u64)>,
    /// The latest exit among `reads[..=i]`.
    reads_max_exit: Vec<u64>,
    /// Every page-fault message as (read exit, page), sorted once prepared.
    messages: Vec<(u64, u64)>,
    next_message: usize,
    prepared: bool,
    /// Pages read and not yet covered by a recorded placement, with how many
    /// messages are waiting on each.
    pending: BTreeMap<u64, u32>,
    /// Threads whose next uffd ioctl is kept (rule 4).
    record_next: HashSet<u32>,
    bins: BTreeMap<BinKey, PlacementBin>,
    stats: LeanStats,
}

impl LeanFilter {
    pub fn new() -> Self {
        Self::default()
    }

    /// First pass: notes the uffd reads of `rec`.
    pub fn learn(&mut self, rec: &Record) {
        if let Record::UffdRead(r) = rec {
            self.reads.push((r.enter_ts, r.exit_ts));
            self.messages.extend(
                r.msgs
                    .iter()
                    .filter(|m| m.event == UffdMsg::EVENT_PAGEFAULT)
                    .map(|m| (r.exit_ts, m.address & !(PAGE - 1))),
            );
        }
    }

    fn prepare(&mut self) {
        self.reads.sort_unstable();
        let mut max = 0;
        self.reads_max_exit = self
            .reads
            .iter()
            .map(|&(_, exit)| {
                max = max.max(exit);
                max
            })
            .collect();
        self.messages.sort_unstable();
        self.prepared = true;
    }

    /// Second pass: hands `rec` (or nothing, when it was counted) and any bins
    /// that closed to `out`.
    pub fn push(&mut self, rec: Record, out: &mut impl FnMut(Record)) {
        if !self.prepared {
            self.prepare();
        }
        let ts = rec.ts();
        if ts > 0 {
            self.flush_before(PlacementBin::index(ts).saturating_sub(1), out);
        }
        match rec {
            Record::UffdIoctl(io) => {
                if let Some(io) = self.place(io) {
                    out(Record::UffdIoctl(io));
                }
            }
            other => out(other),
        }
    }

    /// Writes the bins still open; returns what the filter did.
    pub fn finish(mut self, out: &mut impl FnMut(Record)) -> LeanStats {
        self.flush_before(u64::MAX, out);
        self.stats
    }

    /// Writes every bin whose index is below `index`, in key order.
    fn flush_before(&mut self, index: u64, out: &mut impl FnMut(Record)) {
        while let Some(entry) = self.bins.first_entry() {
            if entry.key().0 >= index {
                break;
            }
            out(Record::PlacementBin(entry.remove()));
            self.stats.bins += 1;
        }
    }

    /// Decides one uffd ioctl: `Some` when it stays a record.
    fn place(&mut self, io: UffdIoctl) -> Option<UffdIoctl> {
        let countable = matches!(io.op, IoctlOp::Copy | IoctlOp::ZeroPage)
            && io.ret == 0
            && u64::try_from(io.result) == Ok(io.len);
        if !countable {
            // Not a background placement: every other uffd ioctl is recorded.
            if io.op.places_pages() {
                self.admit_messages(io.exit_ts);
                self.resolve_pending(io.start, io.len);
            }
            self.record_next.remove(&io.tid);
            return Some(io);
        }
        self.admit_messages(io.exit_ts);
        let rule = if io.woken > 0 {
            Some(0)
        } else if self.covers_pending(io.start, io.len) {
            Some(1)
        } else if self.read_in_flight(io.exit_ts) {
            Some(2)
        } else if self.record_next.contains(&io.tid) {
            Some(3)
        } else {
            None
        };
        self.record_next.remove(&io.tid);
        let Some(rule) = rule else {
            self.count(&io);
            return None;
        };
        self.resolve_pending(io.start, io.len);
        self.stats.kept[rule] += 1;
        if rule < 3 {
            self.record_next.insert(io.tid);
        }
        Some(io)
    }

    /// Messages read by `ts` become pending.
    fn admit_messages(&mut self, ts: u64) {
        while let Some(&(read_ts, page)) = self.messages.get(self.next_message) {
            if read_ts > ts {
                break;
            }
            *self.pending.entry(page).or_default() += 1;
            self.next_message += 1;
        }
    }

    fn covers_pending(&self, start: u64, len: u64) -> bool {
        let first = start & !(PAGE - 1);
        self.pending
            .range(first..start.saturating_add(len.max(1)))
            .next()
            .is_some()
    }

    fn resolve_pending(&mut self, start: u64, len: u64) {
        let first = start & !(PAGE - 1);
        let end = start.saturating_add(len.max(1));
        let covered: Vec<u64> = self.pending.range(first..end).map(|(&p, _)| p).collect();
        for page in covered {
            self.pending.remove(&page);
        }
    }

    /// Whether some uffd read had entered and not yet exited at `ts`.
    fn read_in_flight(&self, ts: u64) -> bool {
        let entered = self.reads.partition_point(|&(enter, _)| enter <= ts);
        entered
            .checked_sub(1)
            .is_some_and(|last| self.reads_max_exit[last] >= ts)
    }

    fn count(&mut self, io: &UffdIoctl) {
        let key = (PlacementBin::index(io.exit_ts), io.tid, io.op.cmd(), io.len);
        let bin = self.bins.entry(key).or_insert(PlacementBin {
            tid: io.tid,
            op: io.op,
            len: io.len,
            first_exit_ts: io.exit_ts,
            last_exit_ts: io.exit_ts,
            count: 0,
            ioctl_ns: 0,
        });
        bin.first_exit_ts = bin.first_exit_ts.min(io.exit_ts);
        bin.last_exit_ts = bin.last_exit_ts.max(io.exit_ts);
        bin.count += 1;
        bin.ioctl_ns = bin
            .ioctl_ns
            .saturating_add(io.exit_ts.saturating_sub(io.enter_ts));
        self.stats.counted += 1;
    }
}

/// What [`lean_file`] wrote.
#[derive(Debug)]
pub struct LeanFile {
    pub stats: LeanStats,
    pub records_in: u64,
    pub records_out: u64,
    pub bytes_out: u64,
    /// Where reading the input stopped early; the good part was written.
    pub damage: Option<TraceError>,
}

/// Why [`lean_file`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LeanError {
    #[error("reading {path}: {source}")]
    Input { path: PathBuf, source: TraceError },
    #[error("writing {path} (it must not exist yet; give a new file name)")]
    Output {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Writes `output` (a new file, created exclusively) with the records of the
/// trace at `input`, its background placements counted in bins. Reads the
/// input twice, holding only its uffd reads in memory.
pub fn lean_file(input: &Path, output: &Path) -> Result<LeanFile, LeanError> {
    let in_err = |source| LeanError::Input {
        path: input.to_owned(),
        source,
    };
    let out_err = |source| LeanError::Output {
        path: output.to_owned(),
        source,
    };
    let mut filter = LeanFilter::new();
    let mut first = TraceReader::open(input).map_err(in_err)?;
    let damage = first.for_each(|rec| filter.learn(&rec));
    let records_in = first.records_read();
    let mut second = TraceReader::open(input).map_err(in_err)?;
    let mut writer = TraceWriter::create(output, second.meta()).map_err(out_err)?;
    let mut failed = None;
    let mut emit = |rec: Record| {
        if failed.is_none() {
            failed = writer.push(&rec).err();
        }
    };
    let mut left = records_in;
    // The same records as the first pass, even if the file grew meanwhile.
    second.for_each(|rec| {
        if left > 0 {
            left -= 1;
            filter.push(rec, &mut emit);
        }
    });
    let stats = filter.finish(&mut emit);
    if let Some(source) = failed {
        return Err(out_err(source));
    }
    let records_out = writer.records_written() + u64::from(writer.pending_records());
    let file = writer.finish().map_err(out_err)?;
    let bytes_out = file.metadata().map_err(out_err)?.len();
    Ok(LeanFile {
        stats,
        records_in,
        records_out,
        bytes_out,
        damage,
    })
}

/// Applies the filter to a whole trace held in memory.
pub fn lean_records(records: &[Record]) -> (Vec<Record>, LeanStats) {
    let mut filter = LeanFilter::new();
    for rec in records {
        filter.learn(rec);
    }
    let mut out = Vec::with_capacity(records.len());
    let mut emit = |r| out.push(r);
    for rec in records {
        filter.push(rec.clone(), &mut emit);
    }
    let stats = filter.finish(&mut emit);
    (out, stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::UffdRead;

    const MS: u64 = 1_000_000;
    const PLACER: u32 = 20;

    fn copy(page: u64, enter: u64, woken: u32) -> Record {
        Record::UffdIoctl(UffdIoctl {
            tid: PLACER,
            enter_ts: enter,
            exit_ts: enter + 2_000,
            fd: 5,
            op: IoctlOp::Copy,
            start: page,
            len: PAGE,
            mode: 0,
            ret: 0,
            result: 4096,
            woken,
        })
    }

    fn read(page: u64, enter: u64, exit: u64) -> Record {
        Record::UffdRead(UffdRead {
            tid: 10,
            enter_ts: enter,
            exit_ts: exit,
            fd: 5,
            ret: 32,
            msgs: vec![UffdMsg {
                event: UffdMsg::EVENT_PAGEFAULT,
                flags: 0,
                address: page + 0x10,
                ptid: 1,
            }],
        })
    }

    /// The start pages of the placements kept as records.
    fn kept(records: &[Record]) -> (Vec<u64>, LeanStats) {
        let (out, stats) = lean_records(records);
        let pages = out
            .iter()
            .filter_map(|r| match r {
                Record::UffdIoctl(io) => Some(io.start),
                _ => None,
            })
            .collect();
        (pages, stats)
    }

    #[test]
    fn background_placements_are_counted_per_thread_length_and_bin() {
        let records: Vec<Record> = (0..5).map(|i| copy(i * PAGE, i * 4 * MS, 0)).collect();
        let (out, stats) = lean_records(&records);
        assert_eq!(stats.counted, 5);
        let bins: Vec<PlacementBin> = out
            .iter()
            .filter_map(|r| match r {
                Record::PlacementBin(b) => Some(*b),
                _ => None,
            })
            .collect();
        // Exits at 2 µs, 4 ms, 8 ms (bin 0), 12 ms, 16 ms (bin 1).
        assert_eq!(bins.len(), 2, "{bins:?}");
        assert_eq!((bins[0].count, bins[1].count), (3, 2));
        assert_eq!(bins[0].ioctl_ns, 6_000);
        assert_eq!(bins[1].first_exit_ts, 12 * MS + 2_000);
        assert_eq!(bins[1].last_exit_ts, 16 * MS + 2_000);
        assert_eq!(bins[0].bytes(), 3 * PAGE);
    }

    #[test]
    fn a_waking_placement_and_the_threads_next_ioctl_are_kept() {
        let (pages, stats) = kept(&[copy(0, 0, 1), copy(PAGE, MS, 0), copy(2 * PAGE, 2 * MS, 0)]);
        assert_eq!(pages, [0, PAGE], "the wake, then its end in QEMU's replay");
        assert_eq!(stats.kept, [1, 0, 0, 1]);
        assert_eq!(stats.counted, 1);
    }

    #[test]
    fn a_placement_of_a_page_read_and_not_yet_resolved_is_kept_once() {
        let (pages, stats) = kept(&[
            read(3 * PAGE, MS, MS + 500),
            copy(PAGE, 2 * MS, 0),
            copy(3 * PAGE, 3 * MS, 0),
            copy(PAGE, 4 * MS, 0),
            copy(3 * PAGE, 5 * MS, 0),
        ]);
        assert_eq!(
            pages,
            [3 * PAGE, PAGE],
            "the read page, then the next ioctl"
        );
        assert_eq!(stats.kept, [0, 1, 0, 1]);
    }

    #[test]
    fn a_placement_exiting_during_a_read_is_kept() {
        // The read dequeued a message before the placement and returns after it.
        let (pages, stats) = kept(&[copy(PAGE, MS, 0), read(7 * PAGE, MS, 2 * MS)]);
        assert_eq!(pages, [PAGE]);
        assert_eq!(stats.kept, [0, 0, 1, 0]);
    }

    #[test]
    fn failed_and_other_ioctls_are_always_records() {
        let Record::UffdIoctl(ok) = copy(0, 0, 0) else {
            unreachable!()
        };
        let failed = UffdIoctl {
            ret: -17,
            result: -17,
            ..ok.clone()
        };
        let short = UffdIoctl {
            result: 100,
            ..ok.clone()
        };
        let wake = UffdIoctl {
            op: IoctlOp::Wake,
            ..ok
        };
        let records = [failed, short, wake].map(Record::UffdIoctl);
        let (out, stats) = lean_records(&records);
        assert_eq!(out, records);
        assert_eq!(stats.counted, 0);
    }
}
