//! KVM asynchronous page faults: the waits a kworker does for a vCPU.
//!
//! When a KVM vCPU faults on a page the host does not have and the guest can
//! take an async page fault, KVM does not sleep in the vCPU thread:
//! `kvm_try_async_get_page` hands the page to a kworker, which sleeps in
//! userfaultfd in its place, `kvm_async_pf_not_present` tells the guest the
//! page is not there yet (with a token), and the vCPU runs on. When the
//! kworker has the page, `kvm_async_pf_ready` (same token) tells the guest.
//! The kworker is not a thread of QEMU, so its sleep is not recorded and the
//! uffd message QEMU reads names the kworker, not a vCPU: QEMU's blocktime
//! cannot see these waits. This module pairs each vCPU's `not_present` with
//! its `ready` by token and attributes the wait to that vCPU.
//! A repeated fault on a page still outstanding (`kvm_async_pf_repeated_fault`)
//! makes the vCPU halt until it is ready; those are counted.
//!
//! Memory is bounded: at most [`KvmAsyncWaits::MAX_OUTSTANDING`] unmatched
//! `not_present` steps are kept; beyond that, or when the trace ends, they
//! count as `unfinished`.

use std::collections::{BTreeMap, HashMap};

use uffdscope_trace::record::{KvmAsync, KvmAsyncOp};

use crate::engine::stats::Hist;

/// The async page faults of a trace, paired by token.
#[derive(Debug, Default)]
pub struct KvmAsyncWaits {
    /// Outstanding `not_present` steps by (vCPU thread, token): their time.
    open: HashMap<(u32, u64), u64>,
    /// The wait of each paired fault, `not_present` → `ready`.
    pub wait: Hist,
    /// Summed wait per vCPU thread, ns.
    pub per_vcpu_ns: BTreeMap<u32, u64>,
    /// `kvm_try_async_get_page` steps: faults handed to a kworker.
    pub handed_off: u64,
    /// `not_present` steps without a `ready` (trace ended, or too many open).
    pub unfinished: u64,
    /// `ready` steps without a `not_present` (it came before the trace).
    pub ready_unpaired: u64,
    /// `kvm_async_pf_repeated_fault`: the vCPU touched an outstanding page
    /// again and halts until it is ready.
    pub repeated: u64,
    /// Whether any step was seen.
    pub seen: bool,
}

impl KvmAsyncWaits {
    /// Most `not_present` steps waiting for their `ready` at once.
    pub const MAX_OUTSTANDING: usize = 65_536;

    pub fn new() -> Self {
        Self::default()
    }

    /// One step, in trace order per vCPU thread.
    pub fn push(&mut self, r: &KvmAsync) {
        self.seen = true;
        match r.op {
            KvmAsyncOp::TryAsyncGetPage => self.handed_off += 1,
            KvmAsyncOp::RepeatedFault => self.repeated += 1,
            KvmAsyncOp::NotPresent => {
                if self.open.len() >= Self::MAX_OUTSTANDING {
                    self.unfinished += 1;
                    return;
                }
                if self.open.insert((r.tid, r.token), r.ts).is_some() {
                    // A token reused before its ready: the first never finished.
                    self.unfinished += 1;
                }
            }
            KvmAsyncOp::Ready => match self.open.remove(&(r.tid, r.token)) {
                Some(since) => {
                    let ns = r.ts.saturating_sub(since);
                    self.wait.record(ns);
                    *self.per_vcpu_ns.entry(r.tid).or_default() += ns;
                }
                None => self.ready_unpaired += 1,
            },
        }
    }

    /// Ends the pass: what is still open never finished.
    pub fn finish(&mut self) {
        self.unfinished += self.open.len() as u64;
        self.open.clear();
    }

    /// Paired waits.
    pub fn paired(&self) -> u64 {
        self.wait.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(ts: u64, tid: u32, op: KvmAsyncOp, token: u64) -> KvmAsync {
        KvmAsync {
            ts,
            tid,
            op,
            token,
            gva: 0x1000,
            gfn: 1,
        }
    }

    #[test]
    fn waits_pair_by_vcpu_and_token_and_go_to_that_vcpu() {
        let mut k = KvmAsyncWaits::new();
        k.push(&step(10, 1, KvmAsyncOp::TryAsyncGetPage, 0));
        k.push(&step(11, 1, KvmAsyncOp::NotPresent, 0x1001));
        // The same token on another vCPU is another fault.
        k.push(&step(12, 2, KvmAsyncOp::NotPresent, 0x1001));
        k.push(&step(40, 2, KvmAsyncOp::Ready, 0x1001));
        k.push(&step(111, 1, KvmAsyncOp::Ready, 0x1001));
        k.push(&step(120, 1, KvmAsyncOp::Ready, 0x9999));
        k.push(&step(130, 1, KvmAsyncOp::NotPresent, 0x2001));
        k.push(&step(131, 1, KvmAsyncOp::RepeatedFault, 0));
        k.finish();
        assert_eq!(k.paired(), 2);
        assert_eq!(k.per_vcpu_ns[&1], 100);
        assert_eq!(k.per_vcpu_ns[&2], 28);
        assert_eq!(
            (k.handed_off, k.unfinished, k.ready_unpaired, k.repeated),
            (1, 1, 1, 1)
        );
    }

    #[test]
    fn outstanding_steps_are_bounded() {
        let mut k = KvmAsyncWaits::new();
        let n = KvmAsyncWaits::MAX_OUTSTANDING as u64 + 10;
        for token in 0..n {
            k.push(&step(token, 1, KvmAsyncOp::NotPresent, token));
        }
        assert_eq!(k.open.len(), KvmAsyncWaits::MAX_OUTSTANDING);
        k.finish();
        assert_eq!(k.unfinished, n);
    }
}
