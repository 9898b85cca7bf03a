//! Statistics over resolved faults: latency histograms (hdrhistogram), per-thread
//! totals, vCPU blocktime with the all-vCPUs-blocked overlap, and per-millisecond
//! blocked-time bins for guest correlation.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::engine::lifecycle::{Fault, Resolution, Stage, TidMap, TidSet};

/// A latency histogram in nanoseconds.
#[derive(Debug, Clone)]
pub struct Hist {
    h: Histogram<u64>,
}

impl Default for Hist {
    fn default() -> Self {
        Self {
            h: Histogram::new(3).expect("3 significant figures is valid"),
        }
    }
}

/// Percentiles in microseconds; `None` when there are no samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
    pub count: u64,
}

/// One point of a latency distribution: the value at quantile `q`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct QuantilePoint {
    pub q: f64,
    pub us: f64,
}

/// Quantiles a percentile plot needs: dense towards the tail.
pub const CURVE_QUANTILES: [f64; 16] = [
    0.0, 0.1, 0.25, 0.5, 0.75, 0.8, 0.9, 0.95, 0.97, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999, 1.0,
];

fn us(ns: u64) -> f64 {
    (ns as f64 / 1000.0 * 1000.0).round() / 1000.0
}

impl Hist {
    pub fn record(&mut self, ns: u64) {
        // Auto-resizing histogram: recording only fails on overflow of u64 counts.
        let _ = self.h.record(ns.max(1));
    }

    pub fn count(&self) -> u64 {
        self.h.len()
    }

    /// The histogram itself (ns), for writing it out (`export::hlog`).
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.h
    }

    /// The latency at each of `quantiles` (0..=1), in µs; empty when no values.
    pub fn curve(&self, quantiles: &[f64]) -> Vec<QuantilePoint> {
        if self.h.is_empty() {
            return Vec::new();
        }
        quantiles
            .iter()
            .map(|&q| QuantilePoint {
                q,
                us: us(self.h.value_at_quantile(q)),
            })
            .collect()
    }

    pub fn percentiles(&self) -> Percentiles {
        if self.h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: Some(us(self.h.value_at_quantile(0.50))),
            p90: Some(us(self.h.value_at_quantile(0.90))),
            p99: Some(us(self.h.value_at_quantile(0.99))),
            p999: Some(us(self.h.value_at_quantile(0.999))),
            max: Some(us(self.h.max())),
            mean: Some((self.h.mean() / 1000.0 * 1000.0).round() / 1000.0),
            count: self.h.len(),
        }
    }
}

/// Per-thread fault totals.
#[derive(Debug, Clone, Default)]
pub struct ThreadStats {
    pub faults: u64,
    pub blocked_ns: u64,
    pub service: Hist,
}

/// Streaming sweep of per-vCPU blocked intervals: the sum per vCPU and the
/// time during which every vCPU was blocked at once (QEMU's `postcopy-blocktime`).
///
/// Intervals arrive in the order of their ends, roughly; their starts can lag by
/// up to the longest interval. Boundaries (time, then -1 for an end before +1
/// for a start, then thread) are buffered in a heap and swept once the stream
/// is that far (plus a margin) past them.
#[derive(Debug, Default)]
pub struct Sweep {
    heap: BinaryHeap<Reverse<(u64, i8, u32)>>,
    down: TidSet,
    pub per_vcpu_ns: BTreeMap<u32, u64>,
    pub all_down_ns: u64,
    all_down_since: Option<u64>,
    latest: u64,
    longest: u64,
}

impl Sweep {
    /// Margin for intervals arriving out of order beyond the longest one.
    pub const MARGIN_NS: u64 = 2_000_000_000;

    /// Adds one blocked interval of vCPU `tid`. `vcpus` is the vCPU count in force.
    pub fn add(&mut self, tid: u32, start: u64, end: u64, vcpus: usize) {
        if end <= start {
            return;
        }
        let sum = self.per_vcpu_ns.entry(tid).or_default();
        *sum = sum.saturating_add(end - start);
        self.heap.push(Reverse((end, -1, tid)));
        self.heap.push(Reverse((start, 1, tid)));
        self.latest = self.latest.max(end);
        self.longest = self.longest.max(end - start);
        self.drain(
            self.latest
                .saturating_sub(self.longest.saturating_add(Self::MARGIN_NS)),
            vcpus,
        );
    }

    fn drain(&mut self, upto: u64, vcpus: usize) {
        while let Some(&Reverse((t, delta, tid))) = self.heap.peek() {
            if t > upto {
                break;
            }
            self.heap.pop();
            if delta > 0 {
                self.down.insert(tid);
                if vcpus > 0 && self.down.len() >= vcpus && self.all_down_since.is_none() {
                    self.all_down_since = Some(t);
                }
            } else {
                self.down.remove(&tid);
                if self.down.len() < vcpus {
                    if let Some(since) = self.all_down_since.take() {
                        // A boundary later than the margin allows can come after `since`.
                        self.all_down_ns = self.all_down_ns.saturating_add(t.saturating_sub(since));
                    }
                }
            }
        }
    }

    /// Sweeps everything left.
    pub fn finish(&mut self, vcpus: usize) {
        self.drain(u64::MAX, vcpus);
    }
}

/// Blocked time and fault counts in time bins, per vCPU thread, stored densely
/// from each thread's first fault (faults cluster in the post-copy phase).
///
/// Bins start 1 ms wide; when a thread's span would need more than
/// [`Bins::MAX_BINS`] of them, or all threads together more than
/// [`Bins::MAX_TOTAL_BINS`], every thread's bins are merged in pairs (2 ms,
/// 4 ms, ...), so memory stays bounded however long the trace is. A fault
/// that would not fit even at the widest bin (a span of weeks: damaged
/// timestamps) is left out and counted in [`Bins::unbinned`].
#[derive(Debug, Default)]
pub struct Bins {
    per_tid: TidMap<(u64, Vec<(u32, u32)>)>,
    /// Current bin width; 0 means [`Bins::BIN_NS`].
    width_ns: u64,
    /// Bins held over all threads.
    total: u64,
    /// Faults left out because no bin width could hold their span.
    pub unbinned: u64,
}

impl Bins {
    /// The finest (initial) bin width.
    pub const BIN_NS: u64 = 1_000_000;
    /// Bins per thread before the width doubles (8 bytes each).
    pub const MAX_BINS: u64 = 1 << 21;
    /// Bins over all threads before the width doubles (64 MiB).
    pub const MAX_TOTAL_BINS: u64 = 1 << 23;
    /// Widest bin: blocked ns per bin must fit a u32.
    const MAX_WIDTH_NS: u64 = 1 << 31;

    /// The current bin width in ns.
    pub fn width_ns(&self) -> u64 {
        if self.width_ns == 0 {
            Self::BIN_NS
        } else {
            self.width_ns
        }
    }

    /// The first and last bin of the interval `[start, end)` at width `w`
    /// (a bin for `start` even when the interval is empty).
    fn bin_range(start: u64, end: u64, w: u64) -> (u64, u64) {
        let last = if end > start {
            (end - 1) / w
        } else {
            start / w
        };
        (start / w, last)
    }

    /// Halves the resolution of every thread's bins.
    fn coarsen(&mut self) {
        let w = self.width_ns();
        let mut total = 0u64;
        for (base, bins) in self.per_tid.values_mut() {
            let new_base = *base / 2;
            let mut merged = vec![
                (0u32, 0u32);
                (*base + bins.len() as u64)
                    .div_ceil(2)
                    .saturating_sub(new_base) as usize
            ];
            for (i, &(ns, n)) in bins.iter().enumerate() {
                let slot = &mut merged[(u64::midpoint(*base, i as u64) - new_base) as usize];
                slot.0 = slot.0.saturating_add(ns);
                slot.1 = slot.1.saturating_add(n);
            }
            *base = new_base;
            *bins = merged;
            total += bins.len() as u64;
        }
        self.total = total;
        self.width_ns = w * 2;
    }

    /// Coarsens until `[start, end)` of `tid` fits the bounds; `false` when
    /// it cannot fit even at the widest bin.
    fn make_room(&mut self, tid: u32, start: u64, end: u64) -> bool {
        // Decide before coarsening, so a hopeless span costs the others nothing.
        let (mut lo, mut hi) = (start, end.saturating_sub(1).max(start));
        if let Some((base, bins)) = self.per_tid.get(&tid) {
            let w = self.width_ns();
            lo = lo.min(base * w);
            hi = hi.max((base + bins.len() as u64).saturating_mul(w) - 1);
        }
        if hi / Self::MAX_WIDTH_NS - lo / Self::MAX_WIDTH_NS + 1 > Self::MAX_BINS {
            return false;
        }
        loop {
            let w = self.width_ns();
            let (span, growth) = self.growth(tid, start, end, w);
            if span <= Self::MAX_BINS && self.total + growth <= Self::MAX_TOTAL_BINS {
                return true;
            }
            if w >= Self::MAX_WIDTH_NS {
                return false;
            }
            self.coarsen();
        }
    }

    /// The span `tid`'s bins would cover with `[start, end)` added at width
    /// `w`, and how many bins that adds.
    fn growth(&self, tid: u32, start: u64, end: u64, w: u64) -> (u64, u64) {
        let (first, last) = Self::bin_range(start, end, w);
        match self.per_tid.get(&tid) {
            Some((base, bins)) => {
                let len = bins.len() as u64;
                let span = (base + len).max(last + 1) - (*base).min(first);
                (span, span - len)
            }
            None => (last - first + 1, last - first + 1),
        }
    }

    pub fn add(&mut self, tid: u32, start: u64, end: u64) {
        if !self.make_room(tid, start, end) {
            self.unbinned += 1;
            return;
        }
        let w = self.width_ns();
        let (first, last) = Self::bin_range(start, end, w);
        let room = Self::MAX_TOTAL_BINS - self.total;
        let (base, bins) = self.per_tid.entry(tid).or_insert((first, Vec::new()));
        let before = bins.len() as u64;
        if first < *base {
            // An earlier fault than the first seen: shift the array, with as
            // much slack again (within the bounds), so that a stream of ever
            // earlier faults costs amortized O(1) moves, not O(bins) each.
            let span = *base + before - first;
            let slack = before
                .min(first)
                .min(Self::MAX_BINS - span.min(Self::MAX_BINS))
                .min(room.saturating_sub(span - before));
            let shift = (*base - first + slack) as usize;
            bins.splice(0..0, std::iter::repeat_n((0, 0), shift));
            *base = first - slack;
        }
        let need = (last - *base + 1) as usize;
        if bins.len() < need {
            bins.resize(need, (0, 0));
        }
        self.total += bins.len() as u64 - before;
        let slot = &mut bins[(first - *base) as usize].1;
        *slot = slot.saturating_add(1);
        let mut t = start;
        while t < end {
            let bin = t / w;
            let bin_end = (bin * w).saturating_add(w).min(end);
            let slot = &mut bins[(bin - *base) as usize].0;
            *slot = slot.saturating_add((bin_end - t) as u32);
            t = bin_end;
        }
    }

    /// Blocked ns and faults per `bin_ns`-wide bin from `start`, summed over
    /// threads, for `n` bins. Each stored bin counts in the bin holding its start.
    pub fn series(&self, start: u64, bin_ns: u64, n: usize) -> Vec<(u64, u64)> {
        let mut out = vec![(0u64, 0u64); n];
        let bin_ns = bin_ns.max(1);
        let w = self.width_ns();
        for (base, bins) in self.per_tid.values() {
            for (i, &(ns, faults)) in bins.iter().enumerate() {
                if ns == 0 && faults == 0 {
                    continue;
                }
                let t = (base + i as u64) * w;
                let idx = (t.saturating_sub(start) / bin_ns) as usize;
                if let Some(slot) = out.get_mut(idx) {
                    slot.0 += u64::from(ns);
                    slot.1 += u64::from(faults);
                }
            }
        }
        out
    }

    /// Blocked ns and faults started in `[start, end)`, for one thread or all.
    pub fn window(&self, tid: Option<u32>, start: u64, end: u64) -> (u64, u64) {
        let mut blocked = 0u64;
        let mut faults = 0u64;
        let w = self.width_ns();
        for (_, (base, bins)) in self
            .per_tid
            .iter()
            .filter(|(t, _)| tid.is_none_or(|x| x == **t))
        {
            let lo = (start / w).max(*base);
            let hi = (end / w).min(base + bins.len() as u64);
            for bin in lo..=hi {
                let Some(&(ns, n)) = bins.get((bin - base) as usize) else {
                    continue;
                };
                let b0 = bin * w;
                let b1 = b0.saturating_add(w);
                let overlap = b1.min(end).saturating_sub(b0.max(start));
                // Prorate partial bins: blocked time is spread evenly within a bin.
                blocked += (u128::from(ns) * u128::from(overlap) / u128::from(w)) as u64;
                if b0 >= start && b0 < end {
                    faults += u64::from(n);
                }
            }
        }
        (blocked, faults)
    }
}

/// Everything accumulated from the faults of one trace.
#[derive(Debug, Default)]
pub struct FaultStats {
    pub count: u64,
    pub by_resolution: BTreeMap<Resolution, u64>,
    pub service: Hist,
    pub blocked: Hist,
    /// Per stage, in [`Stage::ALL`] order: read with [`FaultStats::stage`].
    stages: [Hist; Stage::ALL.len()],
    pub per_thread: BTreeMap<u32, ThreadStats>,
    /// Faults whose stages add up exactly to their service latency.
    pub stage_sum_consistent: u64,
    /// Faults with a service latency (fault entry seen).
    pub with_service: u64,
    /// Faults of vCPU threads (the others, e.g. the main thread loading
    /// device state, are faults too but not vCPU blocktime).
    pub vcpu_faults: u64,
    /// vCPU blocked time (switch-out → switch-in) and its all-vCPUs overlap.
    pub ours: Sweep,
    pub bins: Bins,
    pub slowest: Vec<Fault>,
    /// The least key among `slowest` once it is full: faults at or below it
    /// cannot enter.
    slowest_floor: u64,
    pub first_fault_ts: Option<u64>,
    pub last_fault_ts: Option<u64>,
}

impl FaultStats {
    /// The distribution of one stage.
    pub fn stage(&self, stage: Stage) -> &Hist {
        &self.stages[stage.index()]
    }

    /// How many of the slowest faults are kept for the report.
    pub const KEEP_SLOWEST: usize = 10;

    /// Adds one resolved fault; `vcpu` says whether its thread is a vCPU,
    /// `vcpus` how many vCPUs there are.
    pub fn add(&mut self, f: &Fault, vcpu: bool, vcpus: usize) {
        self.count += 1;
        *self.by_resolution.entry(f.resolution).or_default() += 1;
        let service = f.service_ns();
        if let Some(ns) = service {
            self.service.record(ns);
            self.with_service += 1;
        }
        if let Some(ns) = f.blocked_ns() {
            self.blocked.record(ns);
        }
        let mut sum = 0u64;
        let mut complete = true;
        for stage in &Stage::ALL {
            match f.stage_ns(*stage) {
                Some(ns) => {
                    self.stages[stage.index()].record(ns);
                    if *stage != Stage::Wake {
                        sum += ns;
                    }
                }
                None if matches!(stage, Stage::Queue | Stage::Place) => complete = false,
                None => {}
            }
        }
        if complete && service == Some(sum) {
            self.stage_sum_consistent += 1;
        }
        let t = self.per_thread.entry(f.tid).or_default();
        t.faults += 1;
        if let Some(ns) = f.blocked_ns() {
            t.blocked_ns = t.blocked_ns.saturating_add(ns);
        }
        if let Some(ns) = service {
            t.service.record(ns);
        }
        let end = f.run_ts.unwrap_or(f.woken_ts);
        if vcpu {
            self.vcpu_faults += 1;
            self.ours.add(f.tid, f.blocked_ts, end, vcpus);
        }
        self.bins.add(f.tid, f.blocked_ts, end);
        let start = f.entry_ts.unwrap_or(f.blocked_ts);
        self.first_fault_ts = Some(self.first_fault_ts.map_or(start, |t| t.min(start)));
        self.last_fault_ts = Some(self.last_fault_ts.map_or(end, |t| t.max(end)));
        self.keep_slowest(f);
    }

    fn keep_slowest(&mut self, f: &Fault) {
        let key = |f: &Fault| f.service_ns().or(f.blocked_ns()).unwrap_or(0);
        if self.slowest.len() == Self::KEEP_SLOWEST && key(f) <= self.slowest_floor {
            return;
        }
        if self.slowest.len() < Self::KEEP_SLOWEST {
            self.slowest.push(f.clone());
        } else if let Some((i, min)) = self
            .slowest
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| key(s))
            .map(|(i, s)| (i, key(s)))
        {
            if key(f) > min {
                self.slowest[i] = f.clone();
            }
        }
        if self.slowest.len() == Self::KEEP_SLOWEST {
            self.slowest_floor = self.slowest.iter().map(key).min().unwrap_or(0);
        }
    }

    pub fn finish(&mut self, vcpus: usize) {
        self.ours.finish(vcpus);
        self.slowest
            .sort_by_key(|f| Reverse(f.service_ns().or(f.blocked_ns()).unwrap_or(0)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_measures_all_down_overlap() {
        let mut s = Sweep::default();
        s.add(1, 100, 300, 2);
        s.add(2, 200, 400, 2);
        s.add(1, 350, 500, 2);
        s.finish(2);
        assert_eq!(s.per_vcpu_ns[&1], 350);
        assert_eq!(s.per_vcpu_ns[&2], 200);
        assert_eq!(s.all_down_ns, 100 + 50);
    }

    #[test]
    fn bins_coarsen_instead_of_growing_without_bound() {
        let mut b = Bins::default();
        let span_ms = Bins::MAX_BINS * 3;
        b.add(1, 0, 1_000_000);
        b.add(1, span_ms * 1_000_000, span_ms * 1_000_000 + 500_000);
        assert_eq!(b.width_ns(), 4_000_000);
        assert!(b.per_tid[&1].1.len() as u64 <= Bins::MAX_BINS);
        // Totals survive the merge.
        assert_eq!(b.window(Some(1), 0, u64::MAX / 2), (1_500_000, 2));
    }

    #[test]
    fn bins_take_timestamps_at_the_end_of_the_clock() {
        let mut b = Bins::default();
        b.add(1, u64::MAX - 5_000_000, u64::MAX);
        b.add(1, u64::MAX - 1, u64::MAX);
        b.add(2, u64::MAX, u64::MAX);
        assert_eq!(b.unbinned, 0);
        assert_eq!(b.window(None, u64::MAX - 10_000_000, u64::MAX).1, 3);
    }

    #[test]
    fn a_span_no_bin_width_can_hold_is_left_out_not_allocated() {
        let mut b = Bins::default();
        b.add(1, 0, 1 << 62);
        b.add(2, 1_000, 2_000);
        b.add(2, 1 << 62, (1 << 62) + 1_000);
        assert_eq!(b.unbinned, 2);
        assert!(b.total <= Bins::MAX_TOTAL_BINS);
        assert_eq!(b.window(Some(2), 0, 1_000_000_000), (1_000, 1));
    }

    #[test]
    fn many_threads_share_one_bound() {
        let mut b = Bins::default();
        let span = Bins::MAX_BINS * Bins::BIN_NS;
        for tid in 0..8 {
            b.add(tid, 0, 1);
            b.add(tid, span - 1, span);
        }
        assert!(b.total <= Bins::MAX_TOTAL_BINS, "{}", b.total);
        assert_eq!(b.width_ns(), 2 * Bins::BIN_NS);
        assert_eq!(b.window(None, 0, span).1, 16);
    }

    #[test]
    fn bins_prorate_partial_windows() {
        let mut b = Bins::default();
        b.add(1, 500_000, 2_500_000);
        assert_eq!(b.window(Some(1), 0, 3_000_000), (2_000_000, 1));
        assert_eq!(b.window(None, 1_000_000, 2_000_000), (1_000_000, 0));
        assert_eq!(b.window(Some(2), 0, 3_000_000), (0, 0));
    }

    #[test]
    fn series_sums_threads_per_bin() {
        let mut b = Bins::default();
        b.add(1, 500_000, 2_500_000);
        b.add(2, 10_000_000, 10_500_000);
        let s = b.series(0, 5_000_000, 3);
        assert_eq!(s, vec![(2_000_000, 1), (0, 0), (500_000, 1)]);
        assert_eq!(
            b.series(0, 5_000_000, 2).len(),
            2,
            "bins past n are dropped"
        );
    }

    #[test]
    fn curve_is_empty_without_values_and_monotonic_with() {
        assert!(Hist::default().curve(&CURVE_QUANTILES).is_empty());
        let mut h = Hist::default();
        for ns in 1..=1000u64 {
            h.record(ns * 1000);
        }
        let c = h.curve(&CURVE_QUANTILES);
        assert_eq!(c.len(), CURVE_QUANTILES.len());
        assert!(c.windows(2).all(|w| w[0].us <= w[1].us), "{c:?}");
        assert!((c.last().expect("points").us - 1000.0).abs() < 1.0);
    }

    #[test]
    fn empty_histogram_is_unknown_not_zero() {
        let p = Hist::default().percentiles();
        assert_eq!(p.p50, None);
        assert_eq!(p.count, 0);
    }
}
