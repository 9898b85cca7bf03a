//! Guest correlation (ARCHITECTURE.md, "Guest correlation"): align the guest's
//! write-latency lines ([`crate::inputs::guest_log`]) to the host clock, find
//! the baseline and the spikes, and say how much of each spike vCPU blocking
//! explains. `O(n log n)` in the log's samples, plus the blocked-time lookups
//! of the intervals near the faults.

use serde::Serialize;

use std::collections::HashMap;

use crate::engine::stats::Bins;
pub use crate::inputs::guest_log::{parse_line, LineCounts, Sample};
use crate::inputs::guest_log::{GuestLog, SampleRef, OFFSET_SEARCH_MS};

/// How guest time was put on the host's clock.
#[derive(Debug, Clone, PartialEq)]
pub enum Alignment {
    /// Each line stamped with host time on arrival by `record`.
    HostArrival,
    /// `--guest-offset`: guest clock minus host realtime, ms.
    Explicit(f64),
    /// Searched for the offset that best aligns spikes with blocked time.
    Estimated { offset_ms: f64, correlation: f64 },
    /// Nothing to align with (no faults, or no timestamps).
    None,
}

/// Inputs the correlation needs from the trace.
pub struct Context<'a> {
    pub bins: &'a Bins,
    /// vCPU tids in CPU index order (from names `CPU n/...` or first appearance).
    pub vcpu_tids: &'a [u32],
    /// `CLOCK_REALTIME - CLOCK_MONOTONIC` on the recording host, ns.
    pub realtime_offset_ns: i64,
    /// When post-copy started (first fault or QMP `postcopy-active`), host mono ns.
    pub switchover_ns: Option<u64>,
    /// When the migration completed (QMP `completed`), host mono ns.
    pub completed_ns: Option<u64>,
    pub trace_start_ns: u64,
    /// First fault entry and last fault end, host mono ns: every blocked
    /// interval in `bins` lies inside. `None` when unknown.
    pub faults_span: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Spike {
    /// Seconds since trace start.
    pub start: f64,
    /// The value the guest printed (ms per GB written).
    pub dur_ms: f64,
    /// The interval's wall time on the host clock.
    pub wall_ms: f64,
    /// Wall time lost to the slowdown: `wall_ms * (1 - baseline / dur_ms)`.
    pub excess_ms: f64,
    pub source: String,
    pub vcpu_tid: Option<u32>,
    pub blocked_ms: f64,
    pub faults: u64,
    /// Share of the excess over baseline explained by vCPU blocking (0..=1).
    pub explained: f64,
    /// Where the interval lies against the migration.
    pub phase: Phase,
}

/// Where a guest interval lies against the post-copy phase of the migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// It ended before post-copy started.
    Before,
    /// It overlaps the post-copy phase.
    Postcopy,
    /// It began after the migration completed: not a post-copy fault.
    After,
    /// The trace does not say when post-copy started.
    Unknown,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Before => "before",
            Phase::Postcopy => "postcopy",
            Phase::After => "after",
            Phase::Unknown => "unknown",
        }
    }
}

/// Where `[start, end)` lies against the post-copy phase.
fn phase(start: u64, end: u64, ctx: &Context<'_>) -> Phase {
    match (ctx.switchover_ns, ctx.completed_ns) {
        (None, _) => Phase::Unknown,
        (Some(sw), _) if end <= sw => Phase::Before,
        (Some(_), Some(done)) if start >= done => Phase::After,
        _ => Phase::Postcopy,
    }
}

/// One guest interval on the host clock, for timeline plots.
#[derive(Debug, Clone, Serialize)]
pub struct GuestInterval {
    /// Seconds since trace start when the interval began.
    pub start_s: f64,
    /// The value the guest printed.
    pub dur_ms: f64,
    /// The interval's wall time on the host clock.
    pub wall_ms: f64,
    pub vcpu_tid: Option<u32>,
    /// Above the spike threshold.
    pub spike: bool,
}

/// Most intervals a [`GuestSection`] keeps; beyond, each time bucket keeps its
/// shortest and longest interval (so spikes and the baseline survive).
pub const MAX_INTERVALS: usize = 2_000;

#[derive(Debug, Clone, Serialize)]
pub struct GuestSection {
    pub lines: LineCounts,
    pub samples: usize,
    pub baseline_ms: Option<f64>,
    pub baseline_from: &'static str,
    /// Intervals above the threshold, in time order; at most [`MAX_SPIKES`]
    /// (those with the most excess).
    pub spikes: Vec<Spike>,
    /// Spikes beyond [`MAX_SPIKES`], not listed.
    #[serde(skip)]
    pub spikes_left_out: usize,
    pub correlation: Option<f64>,
    pub alignment: String,
    pub offset_ms: Option<f64>,
    /// The aligned intervals in time order, downsampled to [`MAX_INTERVALS`].
    pub intervals: Vec<GuestInterval>,
}

fn intervals(placed: &[Placed], ctx: &Context<'_>, threshold: Option<f64>) -> Vec<GuestInterval> {
    let start_s = |p: &Placed| p.start_ns.saturating_sub(ctx.trace_start_ns) as f64 / 1e9;
    let interval = |p: &Placed| GuestInterval {
        start_s: start_s(p),
        dur_ms: p.dur_ms,
        wall_ms: (p.end_ns - p.start_ns) as f64 / 1e6,
        vcpu_tid: p.tid(),
        spike: threshold.is_some_and(|t| p.dur_ms > t),
    };
    // Time order by index, so only the kept intervals are ever built.
    let mut order: Vec<usize> = (0..placed.len()).collect();
    order.sort_by(|&a, &b| start_s(&placed[a]).total_cmp(&start_s(&placed[b])));
    if order.len() <= MAX_INTERVALS {
        return order.iter().map(|&i| interval(&placed[i])).collect();
    }
    let buckets = MAX_INTERVALS / 2;
    let at = |k: usize| &placed[order[k]];
    let first = start_s(at(0));
    let span = (start_s(at(order.len() - 1)) - first).max(f64::MIN_POSITIVE);
    let mut extremes: Vec<Option<(usize, usize)>> = vec![None; buckets];
    for k in 0..order.len() {
        let p = at(k);
        let b = (((start_s(p) - first) / span) * (buckets - 1) as f64) as usize;
        let slot = &mut extremes[b.min(buckets - 1)];
        *slot = Some(match *slot {
            None => (k, k),
            Some((lo, hi)) => (
                if p.dur_ms < at(lo).dur_ms { k } else { lo },
                if p.dur_ms > at(hi).dur_ms { k } else { hi },
            ),
        });
    }
    let mut keep: Vec<usize> = extremes
        .into_iter()
        .flatten()
        .flat_map(|(lo, hi)| [lo, hi])
        .collect();
    keep.sort_unstable();
    keep.dedup();
    keep.into_iter().map(|k| interval(at(k))).collect()
}

/// A sample placed on the host monotonic clock. As large as a [`Span`], so
/// placing reuses the spans' memory.
#[derive(Debug, Clone)]
struct Placed {
    start_ns: u64,
    end_ns: u64,
    dur_ms: f64,
    /// The sample's index in the [`GuestLog`].
    sample: u32,
    /// The vCPU it is about, [`NO_TID`] when unknown.
    tid: u32,
}

const NO_TID: u32 = u32::MAX;

impl Placed {
    fn tid(&self) -> Option<u32> {
        (self.tid != NO_TID).then_some(self.tid)
    }
}

/// Whether the line after `prev_end_ns` of one writer, ending at `end_ns`,
/// continues it (otherwise the writer was not printing meanwhile).
fn continues(prev_end_ns: f64, end_ns: f64, dur_ms: f64) -> bool {
    end_ns > prev_end_ns && end_ns - prev_end_ns < 4.0 * dur_ms * 1e6 + 1e9
}

fn median_of(mut v: Vec<f64>) -> Option<f64> {
    median(&mut v)
}

/// How a writer's printed value maps to wall time:
/// `wall = per_ms * printed + overhead`. Lines scaled to ms/GiB print the pass
/// time times a constant (1 / pass size in GiB), and each line costs some
/// fixed time on top (printing, other writers); the overhead matters for
/// short passes only.
#[derive(Debug, Clone, Copy)]
struct WallModel {
    per_ms: f64,
    overhead_ns: f64,
}

impl WallModel {
    /// Fits consecutive-line pairs (printed ms, wall ns). With printed values
    /// spread wide (a slowdown in the writer's history) a least-squares line
    /// separates the two terms; otherwise the median ratio is all there is.
    fn fit(pairs: &[(f64, f64)]) -> Option<Self> {
        let ratio = median_of(pairs.iter().map(|(d, w)| w / d).collect())?;
        let proportional = Self {
            per_ms: ratio,
            overhead_ns: 0.0,
        };
        let durs = median_of(pairs.iter().map(|p| p.0).collect())?;
        let widest = pairs.iter().map(|p| p.0).fold(0.0, f64::max);
        if pairs.len() < 3 || widest < 4.0 * durs {
            return Some(proportional);
        }
        let n = pairs.len() as f64;
        let mx = pairs.iter().map(|p| p.0).sum::<f64>() / n;
        let my = pairs.iter().map(|p| p.1).sum::<f64>() / n;
        let sxy: f64 = pairs.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
        let sxx: f64 = pairs.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
        let per_ms = sxy / sxx;
        if !(per_ms.is_finite() && per_ms > 0.0) {
            return Some(proportional);
        }
        Some(Self {
            per_ms,
            overhead_ns: (my - per_ms * mx).max(0.0),
        })
    }

    fn wall_ns(&self, printed_ms: f64) -> f64 {
        self.per_ms * printed_ms + self.overhead_ns
    }
}

/// One sample's interval on the host clock before rounding to ns.
#[derive(Debug, Clone, Copy)]
struct Span {
    start_ns: f64,
    end_ns: f64,
    dur_ms: f64,
    /// The sample's index in the [`GuestLog`] (below [`MAX_SAMPLES`]).
    sample: u32,
}

/// Where a sample's line ended on the host monotonic clock.
fn end_ns(s: &SampleRef<'_>, ctx: &Context<'_>, offset_ms: Option<f64>) -> Option<f64> {
    match (s.host_arrival_ns, offset_ms, s.guest_end_ms) {
        (Some(arrival), None, _) => Some(arrival as f64),
        (_, Some(off), Some(guest_end)) => {
            Some((guest_end - off) * 1e6 - ctx.realtime_offset_ns as f64)
        }
        _ => None,
    }
}

/// Puts samples on the host monotonic clock. An interval runs from the
/// previous line of the same source to this one (so both stress.c's "one line
/// per GiB written" and per-pass lines scaled to ms/GiB give the true wall
/// interval). A source's first line (or the first after a gap) has no
/// previous line: its wall time comes from the source's [`WallModel`],
/// fitted on its consecutive lines (1 ms per printed ms for stress.c; the
/// pass size in GiB for per-pass lines scaled to ms/GiB), or is `dur_ms`
/// when unknown. Spans come out grouped by writer (in name order), each
/// writer's in time order. `O(n log n)`.
fn chain(log: &GuestLog, ctx: &Context<'_>, offset_ms: Option<f64>) -> Vec<Span> {
    let rank = source_ranks(log);
    let mut spans: Vec<Span> = (0..log.len())
        .filter_map(|i| {
            let s = log.get(i);
            Some(Span {
                start_ns: f64::NAN,
                end_ns: end_ns(&s, ctx, offset_ms)?,
                dur_ms: s.dur_ms,
                sample: i as u32,
            })
        })
        .collect();
    let source = |sp: &Span| log.get(sp.sample as usize).source;
    spans.sort_by(|a, b| {
        rank[source(a) as usize]
            .cmp(&rank[source(b) as usize])
            .then(a.end_ns.total_cmp(&b.end_ns))
    });
    // (printed ms, wall ns) of one writer's consecutive lines.
    let mut pairs: Vec<(f64, f64)> = Vec::new();
    for writer in spans.chunk_by_mut(|a, b| source(a) == source(b)) {
        pairs.clear();
        for w in writer.windows(2) {
            let dur_ms = w[1].dur_ms;
            if dur_ms > 0.0 && continues(w[0].end_ns, w[1].end_ns, dur_ms) {
                pairs.push((dur_ms, w[1].end_ns - w[0].end_ns));
            }
        }
        let model = WallModel::fit(&pairs);
        let mut prev: Option<f64> = None;
        for sp in writer {
            let dur_ms = sp.dur_ms;
            let own = sp.end_ns - model.map_or(dur_ms * 1e6, |m| m.wall_ns(dur_ms));
            sp.start_ns = match prev {
                // Consecutive lines of one writer: the gap is the interval.
                Some(p) if continues(p, sp.end_ns, dur_ms) => p,
                _ => own,
            };
            prev = Some(sp.end_ns);
        }
    }
    spans
}

/// Each writer's position in name order (the order [`chain`] groups them in).
fn source_ranks(log: &GuestLog) -> Vec<u32> {
    let n = log.sources();
    let mut by_name: Vec<u32> = (0..n as u32).collect();
    by_name.sort_by(|&a, &b| log.source_name(a).cmp(log.source_name(b)));
    let mut rank = vec![0u32; n];
    for (r, &src) in by_name.iter().enumerate() {
        rank[src as usize] = r as u32;
    }
    rank
}

/// The vCPU a sample's line names, else the only vCPU.
fn vcpu_of(s: &SampleRef<'_>, ctx: &Context<'_>) -> Option<u32> {
    s.cpu
        .and_then(|c| ctx.vcpu_tids.get(c as usize).copied())
        .or_else(|| (ctx.vcpu_tids.len() == 1).then(|| ctx.vcpu_tids[0]))
}

/// [`chain`]'s spans on the integer clock, in time order (by end); spans
/// that would start before the clock's zero or are empty are left out.
fn place(log: &GuestLog, ctx: &Context<'_>, offset_ms: Option<f64>) -> Vec<Placed> {
    let mut out: Vec<Placed> = chain(log, ctx, offset_ms)
        .into_iter()
        .filter(|sp| sp.start_ns >= 0.0 && sp.end_ns > sp.start_ns)
        .map(|sp| Placed {
            start_ns: sp.start_ns as u64,
            end_ns: sp.end_ns as u64,
            dur_ms: sp.dur_ms,
            sample: sp.sample,
            tid: vcpu_of(&log.get(sp.sample as usize), ctx).unwrap_or(NO_TID),
        })
        .collect();
    out.sort_by_key(|p| p.end_ns);
    out
}

/// The vCPUs' blocked time, summed over blocks of bins once, so that the
/// blocked time of an interval of any length costs two partial blocks (one
/// long fault under thousands of long guest intervals summed every interval
/// bin by bin before). Sums whole bins exactly as [`Bins::window`] does.
struct BlockedTime<'a> {
    bins: &'a Bins,
    vcpu_tids: &'a [u32],
    block_ns: u64,
    first_block: u64,
    /// Per vCPU with blocked time: (ns, faults) before each block boundary;
    /// `None` without a span of faults to index (every window sums bins).
    cumulative: Option<HashMap<u32, Vec<(u64, u64)>>>,
}

impl<'a> BlockedTime<'a> {
    /// Most blocks per vCPU.
    const MAX_BLOCKS: u64 = 4096;
    /// Fewest bins per block.
    const MIN_BLOCK_BINS: u64 = 64;

    fn new(ctx: &Context<'a>) -> Self {
        let w = ctx.bins.width_ns();
        let Some((first, last)) = ctx.faults_span else {
            return Self {
                bins: ctx.bins,
                vcpu_tids: ctx.vcpu_tids,
                block_ns: w,
                first_block: 0,
                cumulative: None,
            };
        };
        let span_bins = last.saturating_sub(first) / w + 1;
        let block_ns = w * span_bins
            .div_ceil(Self::MAX_BLOCKS)
            .max(Self::MIN_BLOCK_BINS);
        let first_block = first / block_ns;
        let blocks = last / block_ns - first_block + 1;
        let mut cumulative = HashMap::new();
        for &tid in ctx.vcpu_tids {
            let span = (first_block * block_ns, (last / block_ns + 1) * block_ns);
            if ctx.bins.window(Some(tid), span.0, span.1) == (0, 0) {
                continue;
            }
            let mut sums = Vec::with_capacity(blocks as usize + 1);
            let mut total = (0u64, 0u64);
            sums.push(total);
            for b in first_block..first_block + blocks {
                let (ns, n) = ctx.bins.window(Some(tid), b * block_ns, (b + 1) * block_ns);
                total = (total.0 + ns, total.1 + n);
                sums.push(total);
            }
            cumulative.insert(tid, sums);
        }
        Self {
            bins: ctx.bins,
            vcpu_tids: ctx.vcpu_tids,
            block_ns,
            first_block,
            cumulative: Some(cumulative),
        }
    }

    /// Blocked ns and faults started in `[start, end)` on `tid`, as
    /// [`Bins::window`] counts them.
    fn window(&self, tid: u32, start: u64, end: u64) -> (u64, u64) {
        let Some(cumulative) = &self.cumulative else {
            return self.bins.window(Some(tid), start, end);
        };
        let Some(sums) = cumulative.get(&tid) else {
            return (0, 0);
        };
        // Whole blocks inside the window, clamped to the indexed ones.
        let (b1, b2) = (start.div_ceil(self.block_ns), end / self.block_ns);
        if b1 >= b2 {
            return self.bins.window(Some(tid), start, end);
        }
        let last = self.first_block + sums.len() as u64 - 1;
        let index = |b: u64| (b.clamp(self.first_block, last) - self.first_block) as usize;
        let (lo, hi) = (sums[index(b1)], sums[index(b2)]);
        let head = self.bins.window(Some(tid), start, b1 * self.block_ns);
        let tail = self.bins.window(Some(tid), b2 * self.block_ns, end);
        (
            head.0 + (hi.0 - lo.0) + tail.0,
            head.1 + (hi.1 - lo.1) + tail.1,
        )
    }

    /// Blocked ms and faults of the sample's vCPU during its interval;
    /// without a known vCPU, the most-blocked vCPU's.
    fn of(&self, p: &Placed) -> (f64, u64, Option<u32>) {
        let pick = |tid: u32| {
            let (ns, n) = self.window(tid, p.start_ns, p.end_ns);
            (ns as f64 / 1e6, n, Some(tid))
        };
        match p.tid() {
            Some(tid) => pick(tid),
            None => self
                .vcpu_tids
                .iter()
                .map(|&t| pick(t))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .unwrap_or((0.0, 0, None)),
        }
    }
}

fn pearson(xs: &[f64], ys: &[f64]) -> Option<f64> {
    let n = xs.len() as f64;
    if xs.len() < 3 {
        return None;
    }
    let mx = xs.iter().sum::<f64>() / n;
    let my = ys.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in xs.iter().zip(ys) {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
        syy += (y - my) * (y - my);
    }
    if sxx <= 0.0 || syy <= 0.0 {
        return None;
    }
    Some(sxy / (sxx * syy).sqrt())
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        f64::midpoint(v[m - 1], v[m])
    } else {
        v[m]
    })
}

fn correlation_of(placed: &[Placed], blocked: &BlockedTime<'_>) -> Option<f64> {
    let xs: Vec<f64> = placed.iter().map(|p| p.dur_ms).collect();
    let ys: Vec<f64> = placed.iter().map(|p| blocked.of(p).0).collect();
    pearson(&xs, &ys)
}

/// Most intervals near blocked time each tried offset looks at; beyond, a
/// sample of them (the offset is a maximum of a correlation, which a sample
/// of tens of thousands finds as well as millions do).
const SEARCH_SAMPLES: usize = 20_000;

/// A fixed bit mixer (splitmix64's finalizer): a reproducible pseudo-random
/// choice of samples that does not follow the writers' interleaving.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Guest intervals placed once, for trying many guest-clock offsets: a
/// different offset moves every guest-clock interval by the same amount, so
/// only the intervals that then overlap blocked time need looking at.
struct OffsetSearch<'a> {
    /// Spans at offset 0, by start.
    spans: Vec<Span>,
    /// The latest end among `spans[..=i]`.
    max_end: Vec<f64>,
    /// Prefix sums of the centred printed values and their squares.
    sum_x: Vec<f64>,
    sum_xx: Vec<f64>,
    mean: f64,
    /// Where blocked time can be: the faults' span widened by two bins.
    near: (f64, f64),
    log: &'a GuestLog,
    ctx: &'a Context<'a>,
    blocked: &'a BlockedTime<'a>,
}

impl<'a> OffsetSearch<'a> {
    fn new(log: &'a GuestLog, ctx: &'a Context<'a>, blocked: &'a BlockedTime<'a>) -> Option<Self> {
        let (first, last) = ctx.faults_span?;
        let margin = 2.0 * ctx.bins.width_ns() as f64;
        let near = (first as f64 - margin, last as f64 + margin);
        let mut spans: Vec<Span> = chain(log, ctx, Some(0.0))
            .into_iter()
            .filter(|sp| sp.end_ns > sp.start_ns)
            .collect();
        // Every offset looks at the spans near blocked time; past
        // SEARCH_SAMPLES of them, a fixed pseudo-random share stands for all.
        let reach = OFFSET_SEARCH_MS * 1e6;
        let reachable = spans
            .iter()
            .filter(|sp| sp.end_ns > near.0 - reach && sp.start_ns < near.1 + reach)
            .count();
        let keep_one_in = reachable.div_ceil(SEARCH_SAMPLES).max(1) as u64;
        if keep_one_in > 1 {
            spans.retain(|sp| mix(u64::from(sp.sample)).is_multiple_of(keep_one_in));
            spans.shrink_to_fit();
        }
        spans.sort_by(|a, b| a.start_ns.total_cmp(&b.start_ns));
        let mean = spans.iter().map(|sp| sp.dur_ms).sum::<f64>() / spans.len().max(1) as f64;
        let (mut sum_x, mut sum_xx, mut max_end) = (vec![0.0], vec![0.0], Vec::new());
        for sp in &spans {
            let x = sp.dur_ms - mean;
            sum_x.push(sum_x[sum_x.len() - 1] + x);
            sum_xx.push(sum_xx[sum_xx.len() - 1] + x * x);
            max_end.push(max_end.last().map_or(sp.end_ns, |m: &f64| m.max(sp.end_ns)));
        }
        Some(Self {
            spans,
            max_end,
            sum_x,
            sum_xx,
            mean,
            near,
            log,
            ctx,
            blocked,
        })
    }

    /// Pearson's correlation of printed values with blocked time at
    /// `offset_ms`. Intervals that miss blocked time count with none, so the
    /// work is the intervals near the faults, not the whole log.
    fn correlation(&self, offset_ms: f64) -> Option<f64> {
        let shift = -offset_ms * 1e6;
        // Spans starting before the clock's zero are not placed.
        let first = self.spans.partition_point(|sp| sp.start_ns + shift < 0.0);
        let n = self.spans.len() - first;
        if n < 3 {
            return None;
        }
        let sx = self.sum_x[self.spans.len()] - self.sum_x[first];
        let sxx0 = self.sum_xx[self.spans.len()] - self.sum_xx[first];
        let (lo, hi) = (self.near.0 - shift, self.near.1 - shift);
        let (mut sy, mut syy, mut sxy) = (0.0, 0.0, 0.0);
        let mut i = self.spans.partition_point(|sp| sp.start_ns < hi);
        while i > first && self.max_end[i - 1] > lo {
            i -= 1;
            let sp = &self.spans[i];
            if sp.end_ns <= lo {
                continue;
            }
            let p = Placed {
                start_ns: (sp.start_ns + shift) as u64,
                end_ns: (sp.end_ns + shift) as u64,
                dur_ms: sp.dur_ms,
                sample: sp.sample,
                tid: vcpu_of(&self.log.get(sp.sample as usize), self.ctx).unwrap_or(NO_TID),
            };
            let y = self.blocked.of(&p).0;
            sy += y;
            syy += y * y;
            sxy += (sp.dur_ms - self.mean) * y;
        }
        let n = n as f64;
        let cov = sxy - sx * sy / n;
        let (vx, vy) = (sxx0 - sx * sx / n, syy - sy * sy / n);
        (vx > 0.0 && vy > 0.0).then(|| cov / (vx * vy).sqrt())
    }
}

/// Searches guest-clock offsets for the best alignment of durations with blocked time.
fn estimate_offset(
    log: &GuestLog,
    ctx: &Context<'_>,
    blocked: &BlockedTime<'_>,
) -> Option<(f64, f64)> {
    let search = OffsetSearch::new(log, ctx, blocked)?;
    let guess = 0.0;
    let mut best: Option<(f64, f64)> = None;
    let consider = |off: f64, best: &mut Option<(f64, f64)>| {
        if let Some(c) = search.correlation(off) {
            if best.is_none_or(|(_, bc)| c > bc) {
                *best = Some((off, c));
            }
        }
    };
    // Coarse ±60 s in 100 ms steps, then ±200 ms around the best in 5 ms steps.
    for i in -600..=600 {
        consider(guess + f64::from(i) * 100.0, &mut best);
    }
    let (center, _) = best?;
    for i in -40..=40 {
        consider(center + f64::from(i) * 5.0, &mut best);
    }
    best
}

/// Most spikes a [`GuestSection`] lists.
pub const MAX_SPIKES: usize = 1_000;

/// The intervals above `threshold` as spikes, in time order: the
/// [`MAX_SPIKES`] with the most excess wall time, and how many more there were.
fn spikes(
    placed: &[Placed],
    log: &GuestLog,
    ctx: &Context<'_>,
    blocked: &BlockedTime<'_>,
    base: f64,
    threshold: f64,
) -> (Vec<Spike>, usize) {
    // The excess in wall time: at `dur` ms/GB instead of `base`, this
    // share of the interval was lost.
    let excess_of = |p: &Placed| (p.end_ns - p.start_ns) as f64 / 1e6 * (1.0 - base / p.dur_ms);
    let mut chosen: Vec<(f64, usize)> = placed
        .iter()
        .enumerate()
        .filter(|(_, p)| p.dur_ms > threshold)
        .map(|(i, p)| (excess_of(p), i))
        .collect();
    let left_out = chosen.len().saturating_sub(MAX_SPIKES);
    if left_out > 0 {
        chosen.select_nth_unstable_by(MAX_SPIKES - 1, |a, b| {
            b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
        });
        chosen.truncate(MAX_SPIKES);
        chosen.sort_unstable_by_key(|&(_, i)| i);
    }
    let spikes = chosen
        .into_iter()
        .map(|(excess, i)| {
            let p = &placed[i];
            let (blocked_ms, faults, tid) = blocked.of(p);
            let wall_ms = (p.end_ns - p.start_ns) as f64 / 1e6;
            Spike {
                start: p.start_ns.saturating_sub(ctx.trace_start_ns) as f64 / 1e9,
                dur_ms: p.dur_ms,
                wall_ms,
                excess_ms: excess,
                source: log.get(p.sample as usize).source_name.to_owned(),
                vcpu_tid: tid,
                blocked_ms,
                faults,
                explained: (blocked_ms / excess).clamp(0.0, 1.0),
                phase: phase(p.start_ns, p.end_ns, ctx),
            }
        })
        .collect();
    (spikes, left_out)
}

/// Correlates guest samples with vCPU blocking.
pub fn correlate(
    log: &GuestLog,
    ctx: &Context<'_>,
    explicit_offset_ms: Option<f64>,
) -> GuestSection {
    let blocked = BlockedTime::new(ctx);
    let arrival = explicit_offset_ms.is_none() && log.iter().all(|s| s.host_arrival_ns.is_some());
    let alignment = if log.is_empty() {
        Alignment::None
    } else if arrival {
        Alignment::HostArrival
    } else if let Some(off) = explicit_offset_ms {
        Alignment::Explicit(off)
    } else {
        match estimate_offset(log, ctx, &blocked) {
            Some((offset_ms, correlation)) => Alignment::Estimated {
                offset_ms,
                correlation,
            },
            None => Alignment::None,
        }
    };
    let offset = match alignment {
        Alignment::Explicit(o) | Alignment::Estimated { offset_ms: o, .. } => Some(o),
        _ => None,
    };
    let placed = if matches!(alignment, Alignment::None) {
        Vec::new()
    } else {
        place(log, ctx, offset)
    };
    let (mut before, baseline_from): (Vec<f64>, &'static str) = match ctx.switchover_ns {
        Some(sw) if placed.iter().any(|p| p.end_ns <= sw) => (
            placed
                .iter()
                .filter(|p| p.end_ns <= sw)
                .map(|p| p.dur_ms)
                .collect(),
            "pre_switchover_median",
        ),
        _ => (
            placed.iter().map(|p| p.dur_ms).collect(),
            "all_intervals_median",
        ),
    };
    let baseline = median(&mut before);
    let threshold = baseline.map(|base| (base * 1.5).max(base + 1.0));
    let (spikes, spikes_left_out) = match (baseline, threshold) {
        (Some(base), Some(threshold)) => spikes(&placed, log, ctx, &blocked, base, threshold),
        _ => (Vec::new(), 0),
    };
    let (alignment_name, offset_ms) = match alignment {
        Alignment::HostArrival => ("host_arrival".to_owned(), None),
        Alignment::Explicit(o) => ("explicit_offset".to_owned(), Some(o)),
        Alignment::Estimated { offset_ms, .. } => ("estimated".to_owned(), Some(offset_ms)),
        Alignment::None => ("none".to_owned(), None),
    };
    GuestSection {
        lines: log.counts.clone(),
        samples: log.len(),
        baseline_ms: baseline,
        baseline_from,
        spikes,
        spikes_left_out,
        correlation: correlation_of(&placed, &blocked),
        alignment: alignment_name,
        offset_ms,
        intervals: intervals(&placed, ctx, threshold),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// A writer's lines (host arrival ns, printed ms/GiB), as `record` stores them.
    fn lines(points: &[(u64, f64)]) -> GuestLog {
        let mut log = GuestLog::default();
        for &(at, dur) in points {
            log.push(&Sample {
                guest_end_ms: None,
                host_arrival_ns: Some(at),
                dur_ms: dur,
                source: "w/cpu0 (1)".to_owned(),
                cpu: Some(0),
            });
        }
        log
    }

    #[test]
    fn first_line_spans_the_printed_value_times_the_writers_wall_ratio() {
        // Passes of a quarter GiB: 10 ms/GiB printed every 2.5 ms of wall time.
        // The first line printed 4000 ms/GiB, so it covered 1000 ms of wall time.
        let t0 = 10_000 * MS;
        let mut pts = vec![(t0, 4000.0)];
        pts.extend((1..=20).map(|i| (t0 + i * 2_500_000, 10.0)));
        let bins = Bins::default();
        let tids = [7];
        let ctx = Context {
            bins: &bins,
            vcpu_tids: &tids,
            realtime_offset_ns: 0,
            switchover_ns: Some(t0 - 2_000 * MS),
            completed_ns: Some(t0 + 10 * MS),
            trace_start_ns: 0,
            faults_span: None,
        };
        let placed = place(&lines(&pts), &ctx, None);
        let first = placed.iter().find(|p| p.end_ns == t0).expect("first line");
        assert_eq!(first.end_ns - first.start_ns, 1_000 * MS);
    }

    #[test]
    fn spikes_say_where_they_lie_against_the_post_copy_phase() {
        let t0 = 10_000 * MS;
        let mut b = Bins::default();
        b.add(7, t0 + 1_410 * MS, t0 + 1_495 * MS);
        let tids = [7];
        let ctx = Context {
            bins: &b,
            vcpu_tids: &tids,
            realtime_offset_ns: 0,
            switchover_ns: Some(t0 + 900 * MS),
            completed_ns: Some(t0 + 1_600 * MS),
            trace_start_ns: t0,
            faults_span: None,
        };
        // 100 ms intervals at a 50 ms/GiB baseline (2 GiB per line), one
        // spike during post-copy and one after it.
        let mut pts = Vec::new();
        for i in 1..=30u64 {
            let dur = match i {
                15 => 500.0,
                25 => 250.0,
                _ => 50.0,
            };
            pts.push((t0 + i * 100 * MS, dur));
        }
        let g = correlate(&lines(&pts), &ctx, None);
        let phases: Vec<(u64, &str)> = g
            .spikes
            .iter()
            .map(|s| ((s.start * 10.0).round() as u64, s.phase.as_str()))
            .collect();
        assert_eq!(
            phases,
            vec![(14, "postcopy"), (24, "after")],
            "{:?}",
            g.spikes
        );
        let during = &g.spikes[0];
        assert!(during.explained > 0.9, "{during:?}");
        assert!(g.spikes[1].explained < 0.01);
    }

    #[test]
    fn wall_model_separates_per_line_overhead_from_the_pass_rate() {
        // Quarter-GiB passes (0.25 ms of wall per printed ms) plus 3 ms per
        // line; mostly 40 ms/GiB lines, two slow ones.
        let mut pairs: Vec<(f64, f64)> = (0..40).map(|_| (40.0, 13.0e6)).collect();
        pairs.push((8000.0, 2_003.0e6));
        pairs.push((4000.0, 1_003.0e6));
        let m = WallModel::fit(&pairs).expect("a model");
        assert!((m.per_ms - 0.25e6).abs() < 1.0, "{m:?}");
        assert!((m.overhead_ns - 3.0e6).abs() < 10.0, "{m:?}");
        // Without a slow line there is nothing to separate: the ratio.
        let m = WallModel::fit(&pairs[..40]).expect("a model");
        assert!((m.wall_ns(40.0) - 13.0e6).abs() < 1.0, "{m:?}");
    }

    #[test]
    fn blocked_time_by_blocks_sums_as_the_bins_do() {
        let t0 = 10_000 * MS;
        let mut b = Bins::default();
        b.add(7, t0 + 3 * MS / 2, t0 + 900 * MS);
        b.add(7, t0 + 1_000 * MS, t0 + 1_000 * MS + 1);
        b.add(8, t0 + 2_000 * MS + 17, t0 + 2_400 * MS - 5);
        let tids = [7, 8, 9];
        let ctx = Context {
            bins: &b,
            vcpu_tids: &tids,
            realtime_offset_ns: 0,
            switchover_ns: None,
            completed_ns: None,
            trace_start_ns: t0,
            faults_span: Some((t0 + MS, t0 + 2_400 * MS)),
        };
        let blocked = BlockedTime::new(&ctx);
        let mut x = 1u64;
        for _ in 0..20_000 {
            x = mix(x);
            let start = t0 - 100 * MS + x % (2_700 * MS);
            let end = start + mix(x) % (1_500 * MS);
            for tid in tids {
                assert_eq!(
                    blocked.window(tid, start, end),
                    b.window(Some(tid), start, end),
                    "{tid} {start} {end}"
                );
            }
        }
    }
}
