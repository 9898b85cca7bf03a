//! QEMU's own post-copy blocktime accounting, replayed over the trace, so
//! that QEMU's `postcopy-blocktime` and `postcopy-vcpu-blocktime` can be
//! checked against the same faults uffdscope measures.
//!
//! QEMU (7.2, and later releases until a 2025 rework; `migration/postcopy-ram.c`)
//! keeps, per vCPU, the address and time of its last fault whose uffd message
//! the fault thread read (`mark_postcopy_blocktime_begin`, called right after
//! the `read()`), and closes it when a placing thread installs a page at that
//! exact address (`mark_postcopy_blocktime_end`, called after `UFFDIO_COPY` or
//! `UFFDIO_ZEROPAGE` returned and the received bitmap was set). Times are
//! milliseconds of `QEMU_CLOCK_REALTIME` (CLOCK_MONOTONIC). The rules this
//! replay follows, and why each matters on a real trace:
//!
//! - Only messages from vCPU threads count (`get_mem_fault_cpu_index`); the
//!   main thread's faults while loading device state do not.
//! - Faults whose message QEMU never read (the page arrived first and the
//!   kernel withdrew the message) are invisible to QEMU.
//! - A vCPU has one slot. When its next fault is read before the previous
//!   one's end was accounted, the new begin overwrites the slot and the
//!   previous fault's time is lost. That happens often: the placing ioctl
//!   wakes the vCPU, and on a busy host the placing thread is preempted on its
//!   way out of the ioctl, so `mark_postcopy_blocktime_end` runs only when it
//!   gets the CPU back, by which time the vCPU has faulted again. Since
//!   format 3 the kernel records that moment for every placement that woke
//!   a thread ([`uffdscope_trace::record::PlacerRun`]): the placing thread's
//!   return to user mode after a preemption, its blocking switch-out, or its
//!   next traced syscall, whichever came first; the end is put there. Older
//!   traces, and placements that woke nobody, end at the placing thread's
//!   next uffd ioctl's entry (the last placement of a thread ends at its own
//!   exit). That moment is an upper bound: a thread that went to wait for
//!   data after its placement closed the slot earlier. It reproduces QEMU
//!   within 1% without `postcopy-preempt`; with it, the `fault-fast` thread
//!   idles between urgent pages, its next ioctl is far off and the replay
//!   drops too much, which is what the placing thread's recorded moment
//!   fixes. [`QemuBlocktime::closing_at_exit`] is the other bound (no
//!   preemption at all); QEMU's figure lies between the two.
//! - A begin for a page already received is withdrawn at once.
//! - The all-vCPUs figure adds `end - last_begin` at an end that finds every
//!   vCPU down, `last_begin` being the latest begin of any vCPU.
//!
//! Not replayed: QEMU's millisecond truncation (unbiased over many faults), and
//! the race between a begin's received-bitmap check and a concurrent end,
//! which makes QEMU's `smp_cpus_down` counter drift below the vCPU count; from
//! then on QEMU stops adding to `postcopy-blocktime` (the 2025 rework moved the
//! accounting under `page_request_mutex`). With one vCPU that shows
//! as `postcopy-blocktime` < `postcopy-vcpu-blocktime`.

use std::collections::BTreeMap;

use crate::engine::lifecycle::TidMap;
use crate::engine::queue::TimeQueue;

/// How far behind the newest record events are replayed: records of different
/// threads reach the trace slightly out of order, and an end's time is only
/// known once the placing thread's next ioctl arrives.
pub const LAG_NS: u64 = 200_000_000;

const PAGE: u64 = 4096;

// Event kinds, in processing order at equal timestamps: placements close
// first (QEMU sets the received bitmap before a later begin checks it).
const END: u8 = 0;
const BEGIN: u8 = 1;

/// What the replay needs to know from the rest of the analysis.
pub struct Ctx<'a> {
    /// Whether a thread is a vCPU (QEMU's `get_mem_fault_cpu_index`).
    pub is_vcpu: &'a dyn Fn(u32) -> bool,
    /// Whether the page at an address was placed (its ioctl returned) by a
    /// time: QEMU's received bitmap.
    pub placed_by: &'a dyn Fn(u64, u64) -> bool,
    /// How many vCPUs there are (QEMU's `smp.cpus`).
    pub vcpus: usize,
}

/// One vCPU's slot (`vcpu_addr`, `page_fault_vcpu_time`).
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    addr: u64,
    since: u64,
}

/// The replay; feed reads and placing ioctls in trace order (roughly: records
/// of different threads within [`LAG_NS`] of each other may come in any
/// order; one thread's records are in order), then [`finish`](Self::finish).
#[derive(Debug, Default)]
pub struct QemuBlocktime {
    /// Close each placement at its ioctl's exit (what QEMU means to do)
    /// instead of at the placing thread's next ioctl (what it does on a busy
    /// host): the variant that shows what the preemption race costs.
    close_at_exit: bool,
    /// Events waiting to be replayed, in time order.
    /// Events by time, each (kind, seq, address, thread).
    queue: TimeQueue<(u8, u64, u64, u32)>,
    seq: u64,
    /// Per placing thread: its last placement (page, ioctl exit), whose end
    /// waits for the thread's next ioctl.
    pending_end: TidMap<(u64, u64)>,
    slots: TidMap<Slot>,
    down: usize,
    last_begin: u64,
    watermark: u64,
    /// Blocked ns per vCPU thread, as QEMU counts it.
    pub per_vcpu_ns: BTreeMap<u32, u64>,
    /// QEMU's `postcopy-blocktime`: ns during which every vCPU was down.
    pub total_ns: u64,
    /// vCPU faults whose time QEMU added (begin closed by an end).
    pub counted: u64,
    /// vCPU faults QEMU read but dropped: the vCPU's next fault overwrote the slot.
    pub overwritten: u64,
    /// Messages read for pages already received (QEMU withdraws the begin).
    pub already_received: u64,
    /// Messages from threads that are not vCPUs (QEMU ignores them).
    pub not_vcpu: u64,
    /// Page-fault messages read.
    pub messages: u64,
    /// Placements closed at the placing thread's recorded moment
    /// ([`QemuBlocktime::placer_run`]) rather than at its next ioctl.
    pub closed_at_placer_run: u64,
}

impl QemuBlocktime {
    pub fn new() -> Self {
        Self::default()
    }

    /// The variant that closes each placement at its ioctl's exit.
    pub fn closing_at_exit() -> Self {
        Self {
            close_at_exit: true,
            ..Self::default()
        }
    }

    fn push(&mut self, ts: u64, kind: u8, addr: u64, tid: u32) {
        self.seq += 1;
        self.queue.push(ts, (kind, self.seq, addr, tid));
    }

    /// A page-fault message for `addr` from thread `ptid`, read at `ts`.
    pub fn read(&mut self, ts: u64, addr: u64, ptid: u32) {
        self.messages += 1;
        // QEMU compares the message's address with the placed page's start;
        // the kernel reports the page address unless a handler asks for
        // UFFD_FEATURE_EXACT_ADDRESS, which QEMU does not.
        self.push(ts, BEGIN, addr & !(PAGE - 1), ptid);
        self.watermark = self.watermark.max(ts);
    }

    /// A uffd ioctl of thread `tid`. `placed` is the address of a page it
    /// installed (successful `UFFDIO_COPY`/`UFFDIO_ZEROPAGE`).
    pub fn ioctl(&mut self, tid: u32, enter_ts: u64, exit_ts: u64, placed: Option<u64>) {
        self.watermark = self.watermark.max(exit_ts);
        if self.close_at_exit {
            if let Some(addr) = placed {
                self.push(exit_ts, END, addr, tid);
            }
            return;
        }
        // This ioctl is the thread's next action after its previous placement.
        if let Some((addr, prev_exit)) = self.pending_end.remove(&tid) {
            self.push(enter_ts.max(prev_exit), END, addr, tid);
        }
        if let Some(addr) = placed {
            self.pending_end.insert(tid, (addr, exit_ts));
        }
    }

    /// The placing thread `tid`'s first moment after its last uffd ioctl,
    /// which woke someone (format 3): its pending placement ends here.
    pub fn placer_run(&mut self, tid: u32, ts: u64) {
        if self.close_at_exit {
            return;
        }
        self.watermark = self.watermark.max(ts);
        if let Some((addr, exit_ts)) = self.pending_end.remove(&tid) {
            self.closed_at_placer_run += 1;
            self.push(ts.max(exit_ts), END, addr, tid);
        }
    }

    /// Replays what is older than the lag. `ctx` says which threads are
    /// vCPUs and which pages were placed when.
    pub fn advance(&mut self, ctx: &Ctx<'_>) {
        let upto = self.watermark.saturating_sub(LAG_NS);
        self.drain(upto, ctx);
    }

    /// Replays everything left; each thread's last placement ends at its exit.
    pub fn finish(&mut self, ctx: &Ctx<'_>) {
        let last: Vec<(u32, (u64, u64))> = self.pending_end.drain().collect();
        for (tid, (addr, exit_ts)) in last {
            self.push(exit_ts, END, addr, tid);
        }
        self.drain(u64::MAX, ctx);
    }

    fn drain(&mut self, upto: u64, ctx: &Ctx<'_>) {
        while let Some((ts, (kind, _, addr, tid))) = self.queue.pop_upto(upto) {
            if kind == BEGIN {
                self.begin(ts, addr, tid, ctx);
            } else {
                self.end(ts, addr, ctx.vcpus);
            }
        }
    }

    fn begin(&mut self, ts: u64, addr: u64, tid: u32, ctx: &Ctx<'_>) {
        if tid == 0 || !(ctx.is_vcpu)(tid) {
            self.not_vcpu += 1;
            return;
        }
        if (ctx.placed_by)(addr, ts) {
            self.already_received += 1;
            return;
        }
        let slot = self.slots.entry(tid).or_default();
        if slot.addr == 0 {
            self.down += 1;
        } else {
            self.overwritten += 1;
        }
        *slot = Slot { addr, since: ts };
        self.last_begin = ts;
    }

    fn end(&mut self, ts: u64, addr: u64, vcpus: usize) {
        let mut affected = 0;
        let mut all_down = false;
        for (&tid, slot) in &mut self.slots {
            if slot.addr != addr {
                continue;
            }
            if vcpus > 0 && self.down >= vcpus {
                all_down = true;
            }
            *self.per_vcpu_ns.entry(tid).or_default() += ts.saturating_sub(slot.since);
            slot.addr = 0;
            affected += 1;
        }
        self.counted += affected;
        self.down = self.down.saturating_sub(affected as usize);
        if all_down {
            self.total_ns += ts.saturating_sub(self.last_begin);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Runs `f` with threads 1 and 2 as vCPUs and `placed` (page, exit) as
    /// the placements the engine saw.
    fn with_ctx(vcpus: usize, placed: &[(u64, u64)], f: impl FnOnce(&Ctx<'_>)) {
        let is_vcpu = |tid: u32| tid == 1 || tid == 2;
        let placed_by = |addr: u64, ts: u64| placed.iter().any(|&(a, t)| a == addr && t <= ts);
        f(&Ctx {
            is_vcpu: &is_vcpu,
            placed_by: &placed_by,
            vcpus,
        });
    }

    fn finish(q: &mut QemuBlocktime, vcpus: usize) {
        with_ctx(vcpus, &[], |c| q.finish(c));
    }

    #[test]
    fn a_read_fault_counts_from_read_to_the_placing_threads_next_ioctl() {
        let mut q = QemuBlocktime::new();
        q.read(10 * MS, 0x1000, 1);
        q.ioctl(9, 20 * MS, 21 * MS, Some(0x1000));
        q.ioctl(9, 25 * MS, 26 * MS, Some(0x2000));
        finish(&mut q, 1);
        assert_eq!(q.per_vcpu_ns[&1], 15 * MS, "end at the next ioctl's entry");
        assert_eq!(q.total_ns, 15 * MS, "one vCPU: total equals its sum");
        assert_eq!(q.counted, 1);
    }

    #[test]
    fn the_exit_variant_closes_at_the_ioctl_exit_and_drops_nothing() {
        let mut q = QemuBlocktime::closing_at_exit();
        q.read(10 * MS, 0x1000, 1);
        q.ioctl(9, 20 * MS, 21 * MS, Some(0x1000));
        q.read(22 * MS, 0x2000, 1);
        q.ioctl(9, 23 * MS, 24 * MS, Some(0x3000));
        q.ioctl(9, 30 * MS, 31 * MS, Some(0x2000));
        finish(&mut q, 1);
        assert_eq!(q.overwritten, 0);
        assert_eq!(q.counted, 2);
        assert_eq!(q.per_vcpu_ns[&1], 11 * MS + 9 * MS);
    }

    #[test]
    fn the_last_placement_ends_at_its_exit() {
        let mut q = QemuBlocktime::new();
        q.read(10 * MS, 0x1000, 1);
        q.ioctl(9, 20 * MS, 21 * MS, Some(0x1000));
        finish(&mut q, 1);
        assert_eq!(q.per_vcpu_ns[&1], 11 * MS);
    }

    #[test]
    fn next_fault_read_before_the_end_overwrites_the_slot() {
        let mut q = QemuBlocktime::new();
        q.read(10 * MS, 0x1000, 1);
        q.ioctl(9, 20 * MS, 21 * MS, Some(0x1000));
        // The vCPU ran again and faulted on 0x2000 before the placing thread's
        // next ioctl: QEMU loses the first fault.
        q.read(22 * MS, 0x2000, 1);
        q.ioctl(9, 23 * MS, 24 * MS, Some(0x3000));
        q.ioctl(9, 30 * MS, 31 * MS, Some(0x2000));
        q.ioctl(9, 40 * MS, 41 * MS, Some(0x4000));
        finish(&mut q, 1);
        assert_eq!(q.overwritten, 1);
        assert_eq!(q.counted, 1);
        assert_eq!(q.per_vcpu_ns[&1], 40 * MS - 22 * MS);
    }

    #[test]
    fn all_vcpus_down_counts_from_the_last_begin_to_the_first_end() {
        let mut q = QemuBlocktime::new();
        q.read(10 * MS, 0x1000, 1);
        q.read(15 * MS, 0x2000, 2);
        q.ioctl(9, 20 * MS, 21 * MS, Some(0x1000));
        q.ioctl(9, 30 * MS, 31 * MS, Some(0x2000));
        finish(&mut q, 2);
        assert_eq!(q.per_vcpu_ns[&1], 20 * MS);
        assert_eq!(q.per_vcpu_ns[&2], 31 * MS - 15 * MS);
        assert_eq!(q.total_ns, 30 * MS - 15 * MS);
    }

    #[test]
    fn non_vcpu_and_already_received_messages_are_not_counted() {
        let mut q = QemuBlocktime::new();
        q.ioctl(9, MS, 2 * MS, Some(0x1000));
        q.ioctl(9, 3 * MS, 4 * MS, Some(0x5000));
        q.read(5 * MS, 0x1000, 1);
        q.read(6 * MS, 0x2000, 7);
        q.ioctl(9, 8 * MS, 9 * MS, Some(0x2000));
        with_ctx(2, &[(0x1000, 2 * MS), (0x5000, 4 * MS)], |c| q.finish(c));
        assert_eq!(q.already_received, 1);
        assert_eq!(q.not_vcpu, 1);
        assert_eq!(q.counted, 0);
        assert!(q.per_vcpu_ns.is_empty());
    }

    #[test]
    fn the_placing_threads_recorded_moment_closes_before_its_next_ioctl() {
        let mut q = QemuBlocktime::new();
        q.read(10 * MS, 0x1000, 1);
        q.ioctl(9, 20 * MS, 21 * MS, Some(0x1000));
        // Preempted at its exit, it ran again at 23 ms; its next ioctl is far off.
        q.placer_run(9, 23 * MS);
        q.read(24 * MS, 0x2000, 1);
        q.ioctl(9, 90 * MS, 91 * MS, Some(0x2000));
        finish(&mut q, 1);
        assert_eq!(q.closed_at_placer_run, 1);
        assert_eq!(q.overwritten, 0, "the slot was closed before the next read");
        assert_eq!(q.counted, 2);
        assert_eq!(q.per_vcpu_ns[&1], 13 * MS + (91 - 24) * MS);
    }

    #[test]
    fn replay_waits_for_the_lag_before_deciding() {
        let mut q = QemuBlocktime::new();
        q.read(10 * MS, 0x1000, 1);
        q.ioctl(9, 20 * MS, 21 * MS, Some(0x1000));
        q.ioctl(9, 100 * MS, 101 * MS, None);
        with_ctx(1, &[], |c| q.advance(c));
        assert_eq!(q.counted, 0, "nothing older than the lag yet");
        q.ioctl(9, LAG_NS + 300 * MS, LAG_NS + 301 * MS, None);
        with_ctx(1, &[], |c| q.advance(c));
        assert_eq!(q.counted, 1);
        assert_eq!(q.per_vcpu_ns[&1], 90 * MS);
    }
}
