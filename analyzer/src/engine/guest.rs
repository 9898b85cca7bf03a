//! Guest correlation (ARCHITECTURE.md, "Guest correlation"): parse the guest's write-latency lines,
//! align the guest clock to the host, find the baseline and the spikes, and say
//! how much of each spike vCPU blocking explains.

use serde::Serialize;

use crate::engine::stats::Bins;

/// One guest measurement: an interval of `dur_ms` that ended at `end`.
#[derive(Debug, Clone, PartialEq)]
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
    let cpu = num(&["cpu"]).map(|c| c as u32);
    Some(Sample {
        guest_end_ms: end,
        host_arrival_ns: None,
        dur_ms: dur,
        source,
        cpu,
    })
}

/// Parses one line in any supported format, updating `counts`. A line whose
/// figures are not finite (`inf`, `NaN`, `1e999`) is not a measurement.
pub fn parse_line(line: &str, counts: &mut LineCounts) -> Option<Sample> {
    let finite = |s: &Sample| s.dur_ms.is_finite() && s.guest_end_ms.is_none_or(f64::is_finite);
    let line = line.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    if line.is_empty() {
        return None;
    }
    if line.contains("UFFDSCOPE-STALE") {
        counts.stale_markers += 1;
    }
    if let Some(s) = parse_guestperf(line).filter(finite) {
        counts.guestperf += 1;
        return Some(s);
    }
    if line.starts_with('{') {
        if let Some(s) = parse_json(line).filter(finite) {
            counts.json += 1;
            return Some(s);
        }
    }
    if let Some(s) = parse_plain(line).filter(finite) {
        counts.plain += 1;
        return Some(s);
    }
    counts.unknown += 1;
    None
}

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
    pub spikes: Vec<Spike>,
    pub correlation: Option<f64>,
    pub alignment: String,
    pub offset_ms: Option<f64>,
    /// The aligned intervals in time order, downsampled to [`MAX_INTERVALS`].
    pub intervals: Vec<GuestInterval>,
}

fn intervals(placed: &[Placed], ctx: &Context<'_>, threshold: Option<f64>) -> Vec<GuestInterval> {
    let mut all: Vec<GuestInterval> = placed
        .iter()
        .map(|p| GuestInterval {
            start_s: p.start_ns.saturating_sub(ctx.trace_start_ns) as f64 / 1e9,
            dur_ms: p.dur_ms,
            wall_ms: (p.end_ns - p.start_ns) as f64 / 1e6,
            vcpu_tid: p.tid,
            spike: threshold.is_some_and(|t| p.dur_ms > t),
        })
        .collect();
    all.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    if all.len() <= MAX_INTERVALS {
        return all;
    }
    let buckets = MAX_INTERVALS / 2;
    let first = all[0].start_s;
    let span = (all[all.len() - 1].start_s - first).max(f64::MIN_POSITIVE);
    let mut keep = vec![false; all.len()];
    let mut extremes: Vec<Option<(usize, usize)>> = vec![None; buckets];
    for (i, iv) in all.iter().enumerate() {
        let b = (((iv.start_s - first) / span) * (buckets - 1) as f64) as usize;
        let slot = &mut extremes[b.min(buckets - 1)];
        *slot = Some(match *slot {
            None => (i, i),
            Some((lo, hi)) => (
                if iv.dur_ms < all[lo].dur_ms { i } else { lo },
                if iv.dur_ms > all[hi].dur_ms { i } else { hi },
            ),
        });
    }
    for (lo, hi) in extremes.into_iter().flatten() {
        keep[lo] = true;
        keep[hi] = true;
    }
    all.into_iter()
        .zip(keep)
        .filter_map(|(iv, k)| k.then_some(iv))
        .collect()
}

/// A sample placed on the host monotonic clock.
#[derive(Debug, Clone)]
struct Placed {
    start_ns: u64,
    end_ns: u64,
    dur_ms: f64,
    source: String,
    tid: Option<u32>,
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

/// Puts samples on the host monotonic clock. An interval runs from the
/// previous line of the same source to this one (so both stress.c's "one line
/// per GiB written" and per-pass lines scaled to ms/GiB give the true wall
/// interval). A source's first line (or the first after a gap) has no
/// previous line: its wall time comes from the source's [`WallModel`],
/// fitted on its consecutive lines (1 ms per printed ms for stress.c; the
/// pass size in GiB for per-pass lines scaled to ms/GiB), or is `dur_ms`
/// when unknown.
fn place(samples: &[Sample], ctx: &Context<'_>, offset_ms: Option<f64>) -> Vec<Placed> {
    let mut ends: Vec<(usize, f64)> = samples
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let end_ns = match (s.host_arrival_ns, offset_ms, s.guest_end_ms) {
                (Some(arrival), None, _) => arrival as f64,
                (_, Some(off), Some(guest_end)) => {
                    (guest_end - off) * 1e6 - ctx.realtime_offset_ns as f64
                }
                _ => return None,
            };
            Some((i, end_ns))
        })
        .collect();
    ends.sort_by(|a, b| {
        samples[a.0]
            .source
            .cmp(&samples[b.0].source)
            .then(a.1.total_cmp(&b.1))
    });
    // (printed ms, wall ns) of each writer's consecutive lines.
    let mut pairs: std::collections::HashMap<&str, Vec<(f64, f64)>> =
        std::collections::HashMap::new();
    for w in ends.windows(2) {
        let (a, b) = (&samples[w[0].0], &samples[w[1].0]);
        if a.source == b.source && b.dur_ms > 0.0 && continues(w[0].1, w[1].1, b.dur_ms) {
            pairs
                .entry(b.source.as_str())
                .or_default()
                .push((b.dur_ms, w[1].1 - w[0].1));
        }
    }
    let scale: std::collections::HashMap<&str, WallModel> = pairs
        .into_iter()
        .filter_map(|(src, p)| Some((src, WallModel::fit(&p)?)))
        .collect();
    let mut out = Vec::with_capacity(ends.len());
    let mut prev: Option<(&str, f64)> = None;
    for (i, end_ns) in ends {
        let s = &samples[i];
        let own = end_ns
            - scale
                .get(s.source.as_str())
                .map_or(s.dur_ms * 1e6, |m| m.wall_ns(s.dur_ms));
        let start_ns = match prev {
            // Consecutive lines of one writer: the gap is the interval.
            Some((src, p)) if src == s.source && continues(p, end_ns, s.dur_ms) => p,
            _ => own,
        };
        prev = Some((&s.source, end_ns));
        if start_ns < 0.0 || end_ns <= start_ns {
            continue;
        }
        out.push(Placed {
            start_ns: start_ns as u64,
            end_ns: end_ns as u64,
            dur_ms: s.dur_ms,
            source: s.source.clone(),
            tid: s
                .cpu
                .and_then(|c| ctx.vcpu_tids.get(c as usize).copied())
                .or_else(|| (ctx.vcpu_tids.len() == 1).then(|| ctx.vcpu_tids[0])),
        });
    }
    out.sort_by_key(|p| p.end_ns);
    out
}

/// Blocked ms and faults of the sample's vCPU during its interval; without a
/// known vCPU, the most-blocked vCPU's.
fn blocked_in(p: &Placed, ctx: &Context<'_>) -> (f64, u64, Option<u32>) {
    let pick = |tid: u32| {
        let (ns, n) = ctx.bins.window(Some(tid), p.start_ns, p.end_ns);
        (ns as f64 / 1e6, n, Some(tid))
    };
    match p.tid {
        Some(tid) => pick(tid),
        None => ctx
            .vcpu_tids
            .iter()
            .map(|&t| pick(t))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap_or((0.0, 0, None)),
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

fn correlation_of(placed: &[Placed], ctx: &Context<'_>) -> Option<f64> {
    let xs: Vec<f64> = placed.iter().map(|p| p.dur_ms).collect();
    let ys: Vec<f64> = placed.iter().map(|p| blocked_in(p, ctx).0).collect();
    pearson(&xs, &ys)
}

/// Searches guest-clock offsets for the best alignment of durations with blocked time.
fn estimate_offset(samples: &[Sample], ctx: &Context<'_>) -> Option<(f64, f64)> {
    let guess = 0.0;
    let mut best: Option<(f64, f64)> = None;
    let consider = |off: f64, best: &mut Option<(f64, f64)>| {
        let placed = place(samples, ctx, Some(off));
        if let Some(c) = correlation_of(&placed, ctx) {
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

/// Correlates guest samples with vCPU blocking.
pub fn correlate(
    samples: &[Sample],
    counts: LineCounts,
    ctx: &Context<'_>,
    explicit_offset_ms: Option<f64>,
) -> GuestSection {
    let arrival =
        explicit_offset_ms.is_none() && samples.iter().all(|s| s.host_arrival_ns.is_some());
    let alignment = if samples.is_empty() {
        Alignment::None
    } else if arrival {
        Alignment::HostArrival
    } else if let Some(off) = explicit_offset_ms {
        Alignment::Explicit(off)
    } else {
        match estimate_offset(samples, ctx) {
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
        place(samples, ctx, offset)
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
    let mut spikes = Vec::new();
    if let (Some(base), Some(threshold)) = (baseline, threshold) {
        for p in placed.iter().filter(|p| p.dur_ms > threshold) {
            let (blocked_ms, faults, tid) = blocked_in(p, ctx);
            // The excess in wall time: at `dur` ms/GB instead of `base`, this
            // share of the interval was lost.
            let wall_ms = (p.end_ns - p.start_ns) as f64 / 1e6;
            let excess = wall_ms * (1.0 - base / p.dur_ms);
            spikes.push(Spike {
                start: p.start_ns.saturating_sub(ctx.trace_start_ns) as f64 / 1e9,
                dur_ms: p.dur_ms,
                wall_ms,
                excess_ms: excess,
                source: p.source.clone(),
                vcpu_tid: tid,
                blocked_ms,
                faults,
                explained: (blocked_ms / excess).clamp(0.0, 1.0),
                phase: phase(p.start_ns, p.end_ns, ctx),
            });
        }
    }
    let (alignment_name, offset_ms) = match alignment {
        Alignment::HostArrival => ("host_arrival".to_owned(), None),
        Alignment::Explicit(o) => ("explicit_offset".to_owned(), Some(o)),
        Alignment::Estimated { offset_ms, .. } => ("estimated".to_owned(), Some(offset_ms)),
        Alignment::None => ("none".to_owned(), None),
    };
    GuestSection {
        lines: counts,
        samples: samples.len(),
        baseline_ms: baseline,
        baseline_from,
        spikes,
        correlation: correlation_of(&placed, ctx),
        alignment: alignment_name,
        offset_ms,
        intervals: intervals(&placed, ctx, threshold),
    }
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
                stale_markers: 1
            }
        );
    }

    const MS: u64 = 1_000_000;

    /// A writer's lines (host arrival ns, printed ms/GiB), as `record` stores them.
    fn lines(points: &[(u64, f64)]) -> Vec<Sample> {
        points
            .iter()
            .map(|&(at, dur)| Sample {
                guest_end_ms: None,
                host_arrival_ns: Some(at),
                dur_ms: dur,
                source: "w/cpu0 (1)".to_owned(),
                cpu: Some(0),
            })
            .collect()
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
        let g = correlate(&lines(&pts), LineCounts::default(), &ctx, None);
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
}
