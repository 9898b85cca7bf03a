//! QEMU 10.1's post-copy latency figures, replayed over the trace so they can
//! be set beside the ones a 10.1 destination reports in `query-migrate`
//! (`postcopy-latency`, `postcopy-vcpu-latency`, `postcopy-non-vcpu-latency`,
//! `postcopy-latency-dist`).
//!
//! QEMU 10.1 starts a fault's clock when its fault thread handles the message
//! and asks the source for the page (or finds it asked for already), and stops
//! it after `UFFDIO_COPY` returns. Faults whose message QEMU never read are
//! invisible to it, and so are faults resolved without a request. Each
//! faulting thread on a page has its own entry, so several vCPUs on one page
//! each count. The mean per vCPU is total / count of that vCPU's faults; the
//! overall mean adds the non-vCPU faults (the main thread, kworkers).
//!
//! [`Log2Buckets`] is QEMU's distribution: 24 buckets, bucket N holding
//! latencies in [2^N, 2^(N+1)) µs, the last one everything above.
//! Not validated against a real QEMU 10.1 (none on this host): the semantics
//! follow the QAPI schema and the upstream change that introduced them.

use std::collections::HashMap;

use serde::Serialize;

use crate::engine::lifecycle::Fault;

/// QEMU's bucket count.
pub const BUCKETS: usize = 24;

/// A latency distribution in QEMU 10.1's 24 log2 µs buckets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Log2Buckets(pub [u64; BUCKETS]);

impl Default for Log2Buckets {
    fn default() -> Self {
        Self([0; BUCKETS])
    }
}

impl Log2Buckets {
    /// The bucket of a latency: floor(log2(µs)), 0 for under 2 µs, capped.
    pub fn bucket_of(ns: u64) -> usize {
        let us = ns / 1000;
        if us < 2 {
            return 0;
        }
        (us.ilog2() as usize).min(BUCKETS - 1)
    }

    pub fn add(&mut self, ns: u64) {
        self.0[Self::bucket_of(ns)] += 1;
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Mean {
    total_ns: u64,
    count: u64,
}

impl Mean {
    fn add(&mut self, ns: u64) {
        self.total_ns = self.total_ns.saturating_add(ns);
        self.count += 1;
    }

    fn ns(self) -> Option<u64> {
        (self.count > 0).then(|| self.total_ns / self.count)
    }
}

/// QEMU 10.1's accounting, replayed fault by fault.
#[derive(Debug, Default)]
pub struct LatencyReplay {
    per_vcpu: HashMap<u32, Mean>,
    non_vcpu: Mean,
    dist: Log2Buckets,
}

/// The replay's figures, in QEMU's units (ns, and bucket counts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LatencyFigures {
    /// `postcopy-latency`: mean over every counted fault; `None` without any.
    pub latency_ns: Option<u64>,
    /// `postcopy-vcpu-latency`, by CPU index; `None` for a vCPU with no
    /// counted fault (QEMU prints 0 there).
    pub vcpu_latency_ns: Vec<Option<u64>>,
    /// `postcopy-non-vcpu-latency`.
    pub non_vcpu_latency_ns: Option<u64>,
    /// `postcopy-latency-dist`.
    pub dist: Log2Buckets,
    /// Faults counted.
    pub faults: u64,
}

impl LatencyReplay {
    /// The interval QEMU 10.1 would time for this fault, if it would.
    pub fn qemu_interval_ns(f: &Fault) -> Option<u64> {
        f.read_ts?;
        let start = match (f.request_ts, f.already_requested) {
            (Some(sent), _) => sent,
            (None, true) => f.read_ts?,
            (None, false) => return None,
        };
        f.place_end_ts?.checked_sub(start)
    }

    /// Adds a fault; `vcpu` says whether its thread is a vCPU.
    pub fn add(&mut self, f: &Fault, vcpu: bool) {
        let Some(ns) = Self::qemu_interval_ns(f) else {
            return;
        };
        self.dist.add(ns);
        if vcpu {
            self.per_vcpu.entry(f.tid).or_default().add(ns);
        } else {
            self.non_vcpu.add(ns);
        }
    }

    /// The figures, with vCPUs in `vcpu_order` (QEMU's CPU index order).
    /// A vCPU thread not in the order counts with the non-vCPU threads.
    pub fn figures(&self, vcpu_order: &[u32]) -> LatencyFigures {
        let mut all = self.non_vcpu;
        let mut non_vcpu = self.non_vcpu;
        for (tid, m) in &self.per_vcpu {
            all.total_ns = all.total_ns.saturating_add(m.total_ns);
            all.count += m.count;
            if !vcpu_order.contains(tid) {
                non_vcpu.total_ns = non_vcpu.total_ns.saturating_add(m.total_ns);
                non_vcpu.count += m.count;
            }
        }
        let vcpu_latency_ns = vcpu_order
            .iter()
            .map(|tid| self.per_vcpu.get(tid).and_then(|m| m.ns()))
            .collect();
        LatencyFigures {
            latency_ns: all.ns(),
            vcpu_latency_ns,
            non_vcpu_latency_ns: non_vcpu.ns(),
            dist: self.dist.clone(),
            faults: all.count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::lifecycle::Resolution;

    const US: u64 = 1000;

    fn fault(tid: u32, read: Option<u64>, request: Option<u64>, already: bool, end: u64) -> Fault {
        Fault {
            tid,
            page: 0x1000,
            resolution: Resolution::Requested,
            entry_ts: Some(1),
            blocked_ts: 2,
            read_ts: read,
            reader_tid: Some(9),
            request_ts: request,
            requester_tid: request.map(|_| 9),
            already_requested: already,
            place_ts: Some(end - 5 * US),
            place_end_ts: Some(end),
            woken_ts: end - US,
            run_ts: Some(end + US),
            resume_ts: None,
            waker_tid: 8,
            place_len: 4096,
        }
    }

    #[test]
    fn buckets_follow_qemu() {
        assert_eq!(Log2Buckets::bucket_of(0), 0);
        assert_eq!(Log2Buckets::bucket_of(1_999), 0);
        assert_eq!(Log2Buckets::bucket_of(2 * US), 1);
        assert_eq!(Log2Buckets::bucket_of(256 * US), 8);
        assert_eq!(Log2Buckets::bucket_of(511 * US), 8);
        assert_eq!(Log2Buckets::bucket_of(512 * US), 9);
        assert_eq!(Log2Buckets::bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn only_faults_qemu_requested_count_from_the_request() {
        let mut r = LatencyReplay::default();
        // Own request at 100 µs, copy returned at 400 µs: 300 µs.
        r.add(
            &fault(100, Some(50 * US), Some(100 * US), false, 400 * US),
            true,
        );
        // Another vCPU on a page already requested: from its read.
        r.add(&fault(101, Some(200 * US), None, true, 400 * US), true);
        // Never read: invisible to QEMU.
        r.add(&fault(101, None, None, false, 400 * US), true);
        // Read, but no request (the page was arriving): not a remote fault.
        r.add(&fault(101, Some(10 * US), None, false, 400 * US), true);
        // The main thread.
        r.add(
            &fault(1, Some(10 * US), Some(20 * US), false, 1020 * US),
            false,
        );
        let f = r.figures(&[100, 101, 102]);
        assert_eq!(f.faults, 3);
        assert_eq!(
            f.vcpu_latency_ns,
            vec![Some(300 * US), Some(200 * US), None]
        );
        assert_eq!(f.non_vcpu_latency_ns, Some(1000 * US));
        assert_eq!(f.latency_ns, Some(500 * US));
        assert_eq!(f.dist.total(), 3);
        assert_eq!(f.dist.0[7], 1); // 200 µs
        assert_eq!(f.dist.0[8], 1); // 300 µs
        assert_eq!(f.dist.0[9], 1); // 1000 µs
    }

    #[test]
    fn nothing_counted_is_unknown_not_zero() {
        let f = LatencyReplay::default().figures(&[1, 2]);
        assert_eq!(f.latency_ns, None);
        assert_eq!(f.vcpu_latency_ns, vec![None, None]);
        assert_eq!(f.non_vcpu_latency_ns, None);
    }
}
