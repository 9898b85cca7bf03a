//! Findings: rules over the finished report that say *why* faults were slow
//! and what to try. Each rule has a stable id, its thresholds as named
//! constants beside it, a sentence with the numbers behind it, and the knob
//! to try where one exists. Rules only read the report; they decide nothing
//! the report does not already hold.

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::engine::guest::{Phase, Spike};
use crate::engine::network::ChannelRole;
use crate::report::{Report, StagePercentiles};
use uffdscope_trace::record::Role;

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The figures cannot be trusted as they stand.
    Warning,
    /// A cause of latency, with something to try.
    Cause,
    /// Context worth knowing.
    Info,
}

/// One finding. `rule` ids are stable: scripts may match on them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub rule: &'static str,
    pub severity: Severity,
    pub text: String,
    /// The knob to try, when there is one.
    pub knob: Option<&'static str>,
    pub evidence: Map<String, Value>,
}

impl Finding {
    fn new(rule: &'static str, severity: Severity, text: String, evidence: Value) -> Self {
        let evidence = match evidence {
            Value::Object(map) => map,
            other => Map::from_iter([("value".to_owned(), other)]),
        };
        Self {
            rule,
            severity,
            text,
            knob: None,
            evidence,
        }
    }

    fn knob(mut self, knob: &'static str) -> Self {
        self.knob = Some(knob);
        self
    }
}

type Rule = fn(&Report) -> Option<Finding>;

/// Every rule, in the order findings are shown within a severity.
const RULES: [Rule; 15] = [
    drops,
    qemu_counter_drift,
    source_dominant,
    source_send_queue_full,
    head_of_line,
    stream_paused,
    preempt_ineffective,
    network_dominant,
    placing_thread_saturated,
    fault_thread_starved,
    wake_latency_high,
    async_pf,
    qemu_blind_share,
    spike_explained,
    spike_unexplained,
];

/// The findings of a report, most severe first.
pub fn findings(r: &Report) -> Vec<Finding> {
    let mut out: Vec<Finding> = RULES.iter().filter_map(|rule| rule(r)).collect();
    out.sort_by_key(|f| f.severity);
    out
}

fn round(v: f64, places: i32) -> f64 {
    let k = 10f64.powi(places);
    (v * k).round() / k
}

fn ms(us: f64) -> f64 {
    round(us / 1000.0, 2)
}

fn pct(share: f64) -> f64 {
    round(share * 100.0, 1)
}

fn stage<'a>(r: &'a Report, name: &str) -> Option<&'a StagePercentiles> {
    r.faults.stages_us.get(name)
}

/// `drops`: the kernel lost records, so every count is a lower bound.
fn drops(r: &Report) -> Option<Finding> {
    (r.trace.drops > 0).then(|| {
        Finding::new(
            "drops",
            Severity::Warning,
            format!(
                "The kernel dropped {} records: every count and sum in this report is a lower bound.",
                r.trace.drops
            ),
            json!({ "drops": r.trace.drops, "events": r.trace.events }),
        )
        .knob("record again with a larger --ring-mb")
    })
}

/// A share of the requested faults' summed network time at least this big
/// names the cause ([`head_of_line`], [`stream_paused`]).
pub const NETWORK_PART_SHARE: f64 = 0.5;
/// Below this much summed network time (ms) there is nothing to explain.
pub const NETWORK_PART_MIN_MS: f64 = 10.0;

/// The share of summed network time spent in one part, when it names the cause.
fn dominant_part(r: &Report, part: Option<f64>) -> Option<f64> {
    let of = r.faults.network_split_share.of_ms;
    part.filter(|&share| share >= NETWORK_PART_SHARE && of >= NETWORK_PART_MIN_MS)
}

/// `head_of_line`: requested pages queued behind bytes of the background
/// stream on their channel.
fn head_of_line(r: &Report) -> Option<Finding> {
    let share = dominant_part(r, r.faults.network_split_share.behind_stream)?;
    let split = &r.faults.network_split_us;
    let bytes = r.faults.behind_stream_bytes;
    let preempt_on = r
        .network
        .channels
        .iter()
        .any(|c| c.role == ChannelRole::Preempt);
    let mut text = format!(
        "Requested pages queued behind other data on their channel: {}% of their network time ({} of {} ms) went to bytes that arrived ahead of them on the same channel (p99 {} ms behind {:.1} MiB) — the background stream, or other requested pages.",
        pct(share),
        ms(share * r.faults.network_split_share.of_ms * 1000.0),
        round(r.faults.network_split_share.of_ms, 1),
        split.behind_stream.p99.map_or(f64::NAN, ms),
        bytes.p99.unwrap_or(0.0) / f64::from(1u32 << 20),
    );
    let knob = if preempt_on {
        text.push_str(
            " postcopy-preempt is on, yet requested pages still queued on their channel.",
        );
        "check which channel carries the requested pages: postcopy-preempt is on"
    } else {
        "when the data ahead is the background stream, enable postcopy-preempt on both sides (migrate-set-capabilities postcopy-preempt on), so requested pages get a channel of their own"
    };
    Some(
        Finding::new(
            "head_of_line",
            Severity::Cause,
            text,
            json!({
                "behind_stream_share": round(share, 3),
                "network_ms": round(r.faults.network_split_share.of_ms, 1),
                "behind_stream_p99_ms": split.behind_stream.p99.map(ms),
                "behind_stream_bytes_p99": bytes.p99,
                "requested_faults": split.behind_stream.count,
                "preempt": preempt_on,
            }),
        )
        .knob(knob),
    )
}

/// With a source trace, the source's share (`at_source`) of the split
/// faults' summed network time at least this big names it as the cause...
pub const SOURCE_SHARE: f64 = 0.5;
/// ...judged over at least this many split faults.
pub const SOURCE_MIN_SPLIT: u64 = 20;

/// `source_dominant`: with both ends recorded, requested pages spent most
/// of their network time at the source, between its receive of the
/// request and its send of the page.
fn source_dominant(r: &Report) -> Option<Finding> {
    let src = r.source.as_ref()?;
    let (share, of_ms, n) = (src.share.at_source?, src.share.of_ms, src.matched.split);
    if share < SOURCE_SHARE || n < SOURCE_MIN_SPLIT || of_ms < NETWORK_PART_MIN_MS {
        return None;
    }
    let at = r.faults.stages_us.at_source?;
    Some(
        Finding::new(
            "source_dominant",
            Severity::Cause,
            format!(
                "Requested pages waited at the source: {}% of their network time ({} of {} ms over {n} faults; p50 {} ms, p99 {} ms per fault) passed between the source receiving the request and its send of the page. Its migration thread was busy, or pacing the stream.",
                pct(share),
                ms(share * of_ms * 1000.0),
                round(of_ms, 1),
                at.p50.map_or(f64::NAN, ms),
                at.p99.map_or(f64::NAN, ms),
            ),
            json!({
                "at_source_share": round(share, 3),
                "network_ms": round(of_ms, 1),
                "at_source_p50_ms": at.p50.map(ms),
                "at_source_p99_ms": at.p99.map(ms),
                "split_faults": n,
            }),
        )
        .knob("check the source's migration thread CPU (give it a core of its own), raise max-postcopy-bandwidth on the source, or enable postcopy-preempt so requested pages skip the stream's queue"),
    )
}

/// A source socket whose bytes in flight filled the peer's window in at
/// least this share of its `tcp_probe` samples had a full send queue...
pub const WINDOW_FULL_SHARE: f64 = 0.3;
/// ...judged over at least this many samples.
pub const WINDOW_MIN_SAMPLES: u64 = 10;

/// `source_send_queue_full`: the source could not send more on a channel
/// because the destination's receive window was full: pages waited in the
/// source's socket buffer.
fn source_send_queue_full(r: &Report) -> Option<Finding> {
    let src = r.source.as_ref()?;
    let (ch, share) = src
        .channels
        .iter()
        .filter(|c| c.window_samples >= WINDOW_MIN_SAMPLES)
        .filter_map(|c| Some((c, c.window_full_share?)))
        .filter(|(_, share)| *share >= WINDOW_FULL_SHARE)
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    let from = r.faults.stages_us.from_source;
    Some(
        Finding::new(
            "source_send_queue_full",
            Severity::Cause,
            format!(
                "The source's send queue on {} → {} was full: in {}% of {} tcp_probe samples its bytes in flight filled the destination's advertised receive window, so pages, requested ones included, waited in the source's socket buffer (from_source p50 {} ms, p99 {} ms).",
                ch.local,
                ch.remote,
                pct(share),
                ch.window_samples,
                from.and_then(|p| p.p50).map_or(f64::NAN, ms),
                from.and_then(|p| p.p99).map_or(f64::NAN, ms),
            ),
            json!({
                "channel": format!("{} -> {}", ch.local, ch.remote),
                "window_full_share": round(share, 3),
                "samples": ch.window_samples,
                "from_source_p50_ms": from.and_then(|p| p.p50).map(ms),
            }),
        )
        .knob("let the destination drain faster (raise net.ipv4.tcp_rmem / net.core.rmem_max there, check its listen thread's CPU), or enable postcopy-preempt so requested pages go on a socket the stream does not fill"),
    )
}

/// `stream_paused`: requested pages waited while their channel carried
/// nothing at all, and came with the stream's next burst: the source held
/// them back (its bandwidth limit pausing the stream between bursts, or a
/// busy migration thread).
fn stream_paused(r: &Report) -> Option<Finding> {
    let share = dominant_part(r, r.faults.network_split_share.paused)?;
    let split = &r.faults.network_split_us;
    Some(
        Finding::new(
            "stream_paused",
            Severity::Cause,
            format!(
                "Requested pages waited at the source: for {}% of their network time ({} of {} ms; p99 {} ms per fault) their channel received nothing at all, and each page came with the stream's next burst. The source was pausing its stream, as QEMU's bandwidth limit does between its 100 ms windows, or its migration thread was busy; recording the source too tells which.",
                pct(share),
                ms(share * r.faults.network_split_share.of_ms * 1000.0),
                round(r.faults.network_split_share.of_ms, 1),
                split.paused.p99.map_or(f64::NAN, ms),
            ),
            json!({
                "paused_share": round(share, 3),
                "network_ms": round(r.faults.network_split_share.of_ms, 1),
                "paused_p99_ms": split.paused.p99.map(ms),
                "behind_stream_share": r.faults.network_split_share.behind_stream,
                "requested_faults": split.paused.count,
            }),
        )
        .knob("raise max-postcopy-bandwidth, or enable postcopy-preempt so requested pages leave the paced stream"),
    )
}

/// With postcopy-preempt on, at least this share of requested pages should
/// come on the preempt channel...
pub const PREEMPT_SHARE: f64 = 0.5;
/// ...judged over at least this many requested faults.
pub const PREEMPT_MIN_REQUESTED: u64 = 20;

/// `preempt_ineffective`: postcopy-preempt is on, yet most requested pages
/// still came on the main channel, behind the stream.
fn preempt_ineffective(r: &Report) -> Option<Finding> {
    let by = &r.faults.requested_placed_by;
    let preempt_thread = r.threads.iter().any(|t| t.role == Role::Preempt);
    let preempt_channel = r
        .network
        .channels
        .iter()
        .any(|c| c.role == ChannelRole::Preempt);
    if !(preempt_thread || preempt_channel) {
        return None;
    }
    let total: u64 = by.values().sum();
    let on_preempt = by.get(&Role::Preempt).copied().unwrap_or(0);
    let share = on_preempt as f64 / total.max(1) as f64;
    if total < PREEMPT_MIN_REQUESTED || share >= PREEMPT_SHARE {
        return None;
    }
    Some(
        Finding::new(
            "preempt_ineffective",
            Severity::Cause,
            format!(
                "postcopy-preempt is on, yet only {on_preempt} of {total} requested pages ({}%) came on the preempt channel; the rest were placed by the main channel's thread, after the stream.",
                pct(share)
            ),
            json!({
                "requested": total,
                "on_preempt_channel": on_preempt,
                "share": round(share, 3),
            }),
        )
        .knob("check that the source sends urgent pages on the preempt channel (QEMU 8.0+ reworked it), and record the source to see where requests wait"),
    )
}

/// The network stage's share of known service time that makes it dominant.
pub const NETWORK_DOMINANT_SHARE: f64 = 0.6;

/// `network_dominant`: the round trip to the source is most of the latency
/// (shown when [`head_of_line`] or [`stream_paused`] does not already explain it).
fn network_dominant(r: &Report) -> Option<Finding> {
    let share = (*r.faults.stage_share.get("network")?)?;
    let split = &r.faults.network_split_share;
    let explained = dominant_part(r, split.behind_stream).or(dominant_part(r, split.paused));
    if share < NETWORK_DOMINANT_SHARE || explained.is_some() {
        return None;
    }
    let p50 = stage(r, "network").and_then(|s| s.p50);
    let wire = r.faults.network_split_us.wire.p50;
    Some(
        Finding::new(
            "network_dominant",
            Severity::Cause,
            format!(
                "The network stage (request sent → page placed) is {}% of the known service time, median {}; the wire's round trip is {}.",
                pct(share),
                p50.map_or("unknown".to_owned(), |v| format!("{} ms", ms(v))),
                wire.map_or("unknown".to_owned(), |v| format!("{} ms", ms(v))),
            ),
            json!({ "share": round(share, 3), "network_p50_ms": p50.map(ms), "wire_p50_ms": wire.map(ms) }),
        )
        .knob("check the link's bandwidth and the source host's load"),
    )
}

/// A placing thread on CPU for at least this share of the recording.
pub const PLACING_BUSY_SHARE: f64 = 0.8;

/// `placing_thread_saturated`: one thread receives and places every page,
/// and it had no time to spare, so it bounds post-copy bandwidth.
fn placing_thread_saturated(r: &Report) -> Option<Finding> {
    let duration_ms = r.trace.duration_s? * 1000.0;
    let (t, busy) = r
        .threads
        .iter()
        .filter(|t| matches!(t.role, Role::Listen | Role::Preempt))
        .filter_map(|t| Some((t, t.cpu_ms? / duration_ms)))
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    (busy >= PLACING_BUSY_SHARE).then(|| {
        Finding::new(
            "placing_thread_saturated",
            Severity::Cause,
            format!(
                "The placing thread {} ({}) was on CPU {}% of the recording: one thread receiving and placing every page bounds post-copy bandwidth.",
                t.name.as_deref().unwrap_or("?"),
                t.tid,
                pct(busy)
            ),
            json!({ "tid": t.tid, "busy_share": round(busy, 3), "cpu_ms": t.cpu_ms, "placements": t.placements }),
        )
        .knob("give the placing thread a CPU of its own; postcopy-preempt adds a second placing thread")
    })
}

/// Queue p99 (µs) above which the fault thread is taken as starved.
pub const QUEUE_P99_US: f64 = 1000.0;

/// `fault_thread_starved`: faults wait long before the fault thread reads them.
fn fault_thread_starved(r: &Report) -> Option<Finding> {
    let p99 = stage(r, "queue")?.p99?;
    (p99 >= QUEUE_P99_US).then(|| {
        Finding::new(
            "fault_thread_starved",
            Severity::Cause,
            format!(
                "Faults waited up to {} ms (p99) before QEMU's fault thread read them: the fault thread is short of CPU.",
                ms(p99)
            ),
            json!({ "queue_p99_ms": ms(p99), "queue_p50_ms": stage(r, "queue").and_then(|s| s.p50).map(ms) }),
        )
        .knob("keep a host CPU free for QEMU's migration threads (pin vCPUs elsewhere)")
    })
}

/// Wake p99 (µs) above which vCPUs are taken as waiting for a CPU.
pub const WAKE_P99_US: f64 = 1000.0;

/// `wake_latency_high`: vCPUs run long after their page was placed.
fn wake_latency_high(r: &Report) -> Option<Finding> {
    let p99 = stage(r, "wake")?.p99?;
    (p99 >= WAKE_P99_US).then(|| {
        Finding::new(
            "wake_latency_high",
            Severity::Cause,
            format!(
                "vCPUs ran up to {} ms (p99) after their page was placed and they were woken: host CPU contention.",
                ms(p99)
            ),
            json!({ "wake_p99_ms": ms(p99), "wake_p50_ms": stage(r, "wake").and_then(|s| s.p50).map(ms) }),
        )
        .knob("dedicate host CPUs to the vCPU threads")
    })
}

/// `async_pf`: KVM moved faults' waits to kworkers. From the paired
/// `not_present` → `ready` waits when the trace has them (format 3), else
/// from the sleeps the kernel flagged.
fn async_pf(r: &Report) -> Option<Finding> {
    if let Some(w) = r.faults.kvm_async_waits.as_ref().filter(|w| w.faults > 0) {
        let total: f64 = w.per_vcpu_ms.values().sum();
        let vcpus = w.per_vcpu_ms.len();
        return Some(Finding::new(
            "async_pf",
            Severity::Info,
            format!(
                "{} faults were KVM async page faults: kworkers waited {total:.1} ms in all (p99 {} per fault) for pages on behalf of {vcpus} vCPU(s), which ran on meanwhile. QEMU's blocktime does not count those waits: the uffd message names the kworker, not a vCPU.",
                w.faults,
                w.wait_us.p99.map_or_else(|| "unknown".to_owned(), |us| format!("{us:.0} µs")),
            ),
            json!({
                "kvm_async_faults": w.faults,
                "kworker_wait_ms": total,
                "wait_p99_us": w.wait_us.p99,
                "repeated_faults": w.repeated_faults,
            }),
        ));
    }
    let n = r.faults.kvm_async.filter(|&n| n > 0)?;
    Some(Finding::new(
        "async_pf",
        Severity::Info,
        format!(
            "{n} faults were KVM async page faults: a kworker waited for the page while the vCPU ran on. QEMU's blocktime does not count those waits."
        ),
        json!({ "kvm_async_faults": n }),
    ))
}

/// Share of vCPU blocked time QEMU's accounting misses that is worth saying.
pub const QEMU_BLIND_SHARE: f64 = 0.2;

/// `qemu_blind_share`: what QEMU's own blocktime cannot see.
fn qemu_blind_share(r: &Report) -> Option<Finding> {
    let b = &r.blocktime_ms;
    let q = b.qemu_view.as_ref()?;
    if b.vcpu_sum <= 0.0 {
        return None;
    }
    let blind = 1.0 - q.vcpu_sum / b.vcpu_sum;
    (blind >= QEMU_BLIND_SHARE).then(|| {
        Finding::new(
            "qemu_blind_share",
            Severity::Info,
            format!(
                "QEMU's own blocktime accounting cannot see {}% of vCPU blocked time: {} vCPU faults it never read or lost, and the time from placement to the vCPU running again.",
                pct(blind),
                q.unseen_faults
            ),
            json!({
                "blind_share": round(blind, 3),
                "vcpu_blocked_ms": round(b.vcpu_sum, 1),
                "qemu_view_ms": round(q.vcpu_sum, 1),
                "unseen_faults": q.unseen_faults,
            }),
        )
    })
}

/// QEMU's all-vCPUs figure this far below its own per-vCPU evidence drifted.
pub const DRIFT_RATIO: f64 = 0.8;

/// `qemu_counter_drift`: QEMU's `postcopy-blocktime` disagrees with itself.
fn qemu_counter_drift(r: &Report) -> Option<Finding> {
    let q = r.qemu.as_ref()?;
    let total = q.blocktime_ms?;
    let per_vcpu = q.vcpu_blocktime_ms.as_ref()?;
    // With one vCPU both figures must be equal; with more, the all-vCPUs
    // figure must match the replay of QEMU's own rules.
    let expected = if per_vcpu.len() == 1 {
        per_vcpu[0]
    } else {
        r.blocktime_ms.qemu_view.as_ref()?.all_vcpus_overlap?
    };
    if expected <= 0.0 || total >= expected * DRIFT_RATIO {
        return None;
    }
    Some(Finding::new(
        "qemu_counter_drift",
        Severity::Warning,
        format!(
            "QEMU's postcopy-blocktime ({total:.0} ms) is {}% of what its own per-vCPU figures imply ({expected:.0} ms): its blocked-vCPU counter drifted. Compare the per-vCPU figures instead.",
            pct(total / expected)
        ),
        json!({ "postcopy_blocktime_ms": total, "expected_ms": round(expected, 1), "vcpus": per_vcpu.len() }),
    ))
}

/// A spike explained at least this much counts as explained.
pub const SPIKE_EXPLAINED_SHARE: f64 = 0.5;

fn spikes(r: &Report, explained: bool) -> Option<(usize, usize, &Spike)> {
    // After the migration completed no page was missing: not post-copy's.
    let all: Vec<&Spike> = r
        .guest
        .as_ref()?
        .spikes
        .iter()
        .filter(|s| s.phase != Phase::After)
        .collect();
    let chosen: Vec<_> = all
        .iter()
        .filter(|s| (s.explained >= SPIKE_EXPLAINED_SHARE) == explained)
        .collect();
    let largest = chosen
        .iter()
        .max_by(|a, b| a.excess_ms.total_cmp(&b.excess_ms))?;
    Some((chosen.len(), all.len(), largest))
}

/// `spike_explained`: guest spikes that vCPU blocking accounts for.
fn spike_explained(r: &Report) -> Option<Finding> {
    let (n, of, s) = spikes(r, true)?;
    Some(Finding::new(
        "spike_explained",
        Severity::Info,
        format!(
            "{n} of {of} guest latency spikes are at least half explained by vCPU blocking; the largest, +{:.0} ms at {:.1} s, is {}% explained by {:.0} ms blocked on {} faults.",
            s.excess_ms, s.start, pct(s.explained), s.blocked_ms, s.faults
        ),
        json!({ "spikes": n, "of": of, "largest_excess_ms": round(s.excess_ms, 1), "largest_explained": round(s.explained, 3) }),
    ))
}

/// `spike_unexplained`: guest spikes that vCPU blocking does not account for.
fn spike_unexplained(r: &Report) -> Option<Finding> {
    let (n, of, s) = spikes(r, false)?;
    Some(
        Finding::new(
            "spike_unexplained",
            Severity::Cause,
            format!(
                "{n} of {of} guest latency spikes are mostly not explained by vCPU blocking; the largest, +{:.0} ms at {:.1} s, only {}%: the time went elsewhere.",
                s.excess_ms, s.start, pct(s.explained)
            ),
            json!({ "spikes": n, "of": of, "largest_excess_ms": round(s.excess_ms, 1), "largest_explained": round(s.explained, 3) }),
        )
        .knob("look at guest CPU steal, host I/O and migration throttling around those times"),
    )
}
