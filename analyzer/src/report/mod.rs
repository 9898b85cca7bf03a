//! The report model: the stable JSON contract of ARCHITECTURE.md, "The report JSON contract" (`uffdscope.report/1`).
//! Renderers (text, markdown, HTML) read this model through [`view`], which
//! decides what they show; nothing else decides numbers.

pub mod both_ends;
pub mod findings;
pub mod view;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::engine::lifecycle::{Fault, Resolution, Stage};
use crate::engine::network::ChannelReport;
use crate::engine::stats::{Percentiles, QuantilePoint};
use uffdscope_trace::record::Role;

pub const SCHEMA: &str = "uffdscope.report/1";

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub trace: TraceSection,
    pub faults: FaultSection,
    pub threads: Vec<ThreadRow>,
    pub blocktime_ms: Blocktime,
    pub network: NetworkSection,
    pub guest: Option<crate::engine::guest::GuestSection>,
    pub qemu: Option<QemuSection>,
    /// Warnings every renderer must show (drops, damage, unknowns).
    pub warnings: Vec<String>,
    /// Faults and blocked time over the trace, for plots; `None` without faults.
    pub timeline: Option<Timeline>,
    /// Why faults were slow and what to try ([`findings`]), most severe first.
    pub findings: Vec<findings::Finding>,
    /// QEMU 10.1's latency figures: reported by QEMU, and replayed here.
    pub qemu_latency: QemuLatencySection,
    /// What a bug report needs to say about the migration.
    pub context: MigrationContext,
    /// The source clock against the destination's; `null` without a source
    /// trace (`--source`) or when the two could not be aligned.
    pub clock: Option<both_ends::ClockSection>,
    /// What the source trace showed; `null` without one.
    pub source: Option<both_ends::SourceSection>,
}

/// The network stage of requested faults taken apart
/// ([`crate::engine::network_split`]); each part over the faults where it is
/// known. `wire + behind_stream + rest` is each fault's network stage;
/// `paused` is the part of `rest` during which the page's channel received
/// nothing; `network` is the whole stage of the same faults.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct NetworkSplitSection {
    pub wire: StagePercentiles,
    pub behind_stream: StagePercentiles,
    pub rest: StagePercentiles,
    pub paused: StagePercentiles,
    pub network: StagePercentiles,
}

/// Shares of summed network time ([`NetworkSplitSection`]'s parts).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct NetworkSplitShare {
    pub wire: Option<f64>,
    pub behind_stream: Option<f64>,
    pub rest: Option<f64>,
    pub paused: Option<f64>,
    /// The summed network time the shares are of, ms.
    pub of_ms: f64,
}

/// Byte counts at a few percentiles.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BytesPercentiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

/// QEMU 10.1's post-copy latency accounting, as a 10.1 destination reports
/// it and as replayed over this trace ([`crate::engine::qemu_latency`]).
#[derive(Debug, Clone, Serialize)]
pub struct QemuLatencySection {
    /// From `query-migrate`; `None` when QEMU did not report them (before 10.1).
    pub reported: Option<crate::inputs::qmp::QemuLatency>,
    /// `null` when page requests were not recorded.
    pub replay: Option<crate::engine::qemu_latency::LatencyFigures>,
    /// uffdscope's service latency of every fault, in QEMU's 24 log2 µs buckets.
    pub service_dist: crate::engine::qemu_latency::Log2Buckets,
}

/// The migration's set-up, as far as the trace tells it.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationContext {
    pub qemu_version: Option<String>,
    /// `query-migrate-capabilities`, when the recorder asked.
    pub capabilities: Option<BTreeMap<String, bool>>,
    /// `query-migrate-parameters`, when the recorder asked.
    pub parameters: Option<serde_json::Map<String, serde_json::Value>>,
    /// Lengths of the placements seen (4096, or huge pages), smallest first.
    pub page_sizes: Vec<u64>,
    pub vcpus: usize,
    pub channels: Vec<ChannelEndpoint>,
}

/// One migration channel's endpoints.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelEndpoint {
    pub role: crate::engine::network::ChannelRole,
    pub local: String,
    pub remote: String,
}

/// Faults and blocked time in fixed-width bins from the trace start.
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    /// Bin width, ms.
    pub bin_ms: f64,
    /// ms the faulting threads spent blocked in each bin, summed over threads
    /// (divided by `bin_ms`: the mean number of threads blocked).
    pub blocked_ms: Vec<f64>,
    /// Faults that began blocking in each bin.
    pub faults: Vec<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub pid: u32,
    pub comm: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TraceSection {
    pub path: String,
    pub duration_s: Option<f64>,
    pub events: u64,
    pub drops: u64,
    pub target: Target,
    pub kernel: String,
    pub host: String,
    pub tool: String,
    pub format_version: u16,
    /// The recording's `--detail` level; `null` before format 4.
    pub detail: Option<uffdscope_trace::record::Detail>,
    /// What the level did not record, so the figures built on it are `null`
    /// (e.g. `uffd_reads`, `page_requests`, `placements`, `network` at
    /// `minimal`); empty when everything was recorded.
    pub not_recorded: Vec<&'static str>,
    /// Why reading stopped early, when the file is damaged.
    pub damage: Option<String>,
    /// How the recording ended, as the recorder noted it.
    pub end: Option<String>,
    /// The recorder's end note was read: the recording was closed, not cut
    /// (recorder killed, file cut at a frame boundary), and the whole trace
    /// was analyzed.
    pub complete: bool,
    /// The pass stopped after this many records (`--max-events`); not in the JSON.
    #[serde(skip)]
    pub stopped_at_limit: Option<u64>,
}

/// Each stage's percentiles by name, and the network stage of requested
/// faults split at the source's two moments (`null` without a source trace;
/// `to_source + at_source + from_source` is each split fault's network stage).
#[derive(Debug, Clone, Default, Serialize)]
pub struct StagesUs {
    #[serde(flatten)]
    pub by_stage: BTreeMap<String, StagePercentiles>,
    /// Request sent → the source received it.
    pub to_source: Option<StagePercentiles>,
    /// Received → the source's send of the page entered.
    pub at_source: Option<StagePercentiles>,
    /// That send → the placing ioctl entered on the destination.
    pub from_source: Option<StagePercentiles>,
}

impl std::ops::Deref for StagesUs {
    type Target = BTreeMap<String, StagePercentiles>;
    fn deref(&self) -> &Self::Target {
        &self.by_stage
    }
}

impl std::ops::DerefMut for StagesUs {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.by_stage
    }
}

/// Stage percentiles in µs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StagePercentiles {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    pub count: u64,
}

impl From<Percentiles> for StagePercentiles {
    fn from(p: Percentiles) -> Self {
        Self {
            p50: p.p50,
            p90: p.p90,
            p99: p.p99,
            max: p.max,
            count: p.count,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultSection {
    pub count: u64,
    /// Faults by resolution; `requested` and `background` are `null` and
    /// `placed` counts the copies where requests were not recorded.
    pub by_resolution: BTreeMap<String, Option<u64>>,
    pub service_us: Percentiles,
    pub blocked_us: Percentiles,
    /// Service latency at [`crate::engine::stats::CURVE_QUANTILES`] (percentile plots).
    pub service_curve_us: Vec<QuantilePoint>,
    /// Blocked time at the same quantiles.
    pub blocked_curve_us: Vec<QuantilePoint>,
    pub stages_us: StagesUs,
    /// Share of total stage time per stage (queue..place), of faults with all known.
    pub stage_share: BTreeMap<String, Option<f64>>,
    pub with_service: u64,
    /// Faults whose four service stages add up; `null` when the stages
    /// before the placement were not recorded.
    pub stage_sum_consistent: Option<u64>,
    pub qemu_counted: Option<u64>,
    pub messages_read: Option<u64>,
    pub uffd_reads: Option<u64>,
    pub failed_reads: Option<u64>,
    pub page_requests: Option<u64>,
    pub placements: Option<BTreeMap<String, u64>>,
    pub slowest: Vec<SlowFault>,
    /// Faults whose figures are upper bounds, by what is bounded.
    pub bounded: Bounded,
    /// The network stage of requested faults taken apart.
    pub network_split_us: NetworkSplitSection,
    /// Bytes that arrived ahead of a requested page on its channel.
    pub behind_stream_bytes: BytesPercentiles,
    /// Each part's share of the summed network time of the requested faults
    /// whose parts are all known (`null` without any).
    pub network_split_share: NetworkSplitShare,
    /// Requested faults by the role of the thread whose placement woke them
    /// (`listen`: the main channel's thread; `preempt`: the preempt channel's).
    pub requested_placed_by: BTreeMap<Role, u64>,
    /// Faults that were KVM async page faults (a kworker waited); `None`
    /// when the trace format cannot say (version 1).
    pub kvm_async: Option<u64>,
    /// Faults whose thread ran again without a traced return to user mode
    /// (no rseq area, or it blocked again first): their `wake` stage ends at
    /// the switch-in instead of the resume. `None` before format 3.
    pub resume_fallback: Option<u64>,
    /// KVM async page faults: waits a kworker did for a vCPU while the vCPU
    /// ran on, which QEMU's blocktime cannot see. `None` when the trace has
    /// no KVM async steps (TCG, or before format 3).
    pub kvm_async_waits: Option<KvmAsyncSection>,
}

/// The waits KVM moved from vCPUs to kworkers (`engine/kvm_async.rs`).
#[derive(Debug, Clone, Serialize)]
pub struct KvmAsyncSection {
    /// Async faults whose wait was paired (`not_present` → `ready`).
    pub faults: u64,
    /// Each one's wait.
    pub wait_us: Percentiles,
    /// Summed wait per vCPU thread (by tid), ms.
    pub per_vcpu_ms: BTreeMap<String, f64>,
    /// Faults KVM handed to a kworker (`kvm_try_async_get_page`).
    pub handed_off: u64,
    /// Waits whose end the trace does not hold.
    pub unfinished: u64,
    /// Repeated faults on an outstanding page (the vCPU halts until ready).
    pub repeated_faults: u64,
}

/// Counts of faults with a figure that is only an upper bound.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Bounded {
    /// The switch-in after the wake was not traced: the wake stage and the
    /// end of blocked time are upper bounds. `None` when the trace format
    /// cannot say (version 1).
    pub wake: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlowFault {
    pub tid: u32,
    pub page: String,
    pub resolution: Resolution,
    /// Seconds since trace start of the fault entry (or block).
    pub at_s: f64,
    pub service_us: Option<f64>,
    pub blocked_us: Option<f64>,
    pub stages_us: BTreeMap<String, Option<f64>>,
}

impl SlowFault {
    pub fn new(f: &Fault, t0: u64) -> Self {
        let us = |ns: Option<u64>| ns.map(|n| n as f64 / 1000.0);
        Self {
            tid: f.tid,
            page: format!("{:#x}", f.page),
            resolution: f.resolution,
            at_s: f.entry_ts.unwrap_or(f.blocked_ts).saturating_sub(t0) as f64 / 1e9,
            service_us: us(f.service_ns()),
            blocked_us: us(f.blocked_ns()),
            stages_us: Stage::ALL
                .iter()
                .map(|s| (s.as_str().to_owned(), us(f.stage_ns(*s))))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ThreadRow {
    pub tid: u32,
    pub name: Option<String>,
    pub role: Role,
    pub faults: u64,
    pub blocked_ms: f64,
    pub service_p50_us: Option<f64>,
    pub service_p99_us: Option<f64>,
    pub uffd_reads: Option<u64>,
    pub placements: Option<u64>,
    /// CPU time over the recording (software task-clock counter), when sampled.
    pub cpu_ms: Option<f64>,
    /// Context switches over the recording, when sampled.
    pub context_switches: Option<u64>,
    /// Page faults (all kinds) over the recording, when sampled.
    pub page_faults: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Blocktime {
    pub vcpu_sum: f64,
    pub all_vcpus_overlap: Option<f64>,
    pub per_vcpu: BTreeMap<String, f64>,
    pub vcpus: usize,
    /// QEMU's own accounting replayed over the trace ([`crate::engine::blocktime`]):
    /// from the fault thread's read of a vCPU's message to the placement,
    /// with QEMU's one-slot-per-vCPU rules. `null` when uffd reads were not
    /// recorded.
    pub qemu_view: Option<QemuView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QemuView {
    pub vcpu_sum: f64,
    pub all_vcpus_overlap: Option<f64>,
    /// Per vCPU in CPU index order (the order of QEMU's `postcopy-vcpu-blocktime`).
    pub per_vcpu: Vec<f64>,
    /// vCPU faults whose time QEMU adds.
    pub faults: u64,
    /// vCPU faults QEMU cannot see: no message was read (the page arrived
    /// first), or the message was read but QEMU dropped it (`overwritten`).
    pub unseen_faults: u64,
    /// Messages QEMU read and then lost: the vCPU's next fault was read before
    /// the placing thread accounted the previous one.
    pub overwritten: u64,
    /// The same replay closing each placement at its ioctl's exit (the other
    /// bound: QEMU's figure lies between this and `vcpu_sum`).
    pub vcpu_sum_close_at_exit: f64,
    pub all_vcpus_overlap_close_at_exit: Option<f64>,
    /// Placements the replay closed at the placing thread's recorded moment
    /// after them (its return to user mode after a preemption, its blocking
    /// switch-out or its next syscall) rather than at its next ioctl. `None`
    /// before format 3.
    pub closed_at_placer_run: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetworkSection {
    pub channels: Vec<ChannelReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusChange {
    pub at_s: f64,
    pub status: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct QemuSection {
    pub version: Option<String>,
    /// QEMU's own `postcopy-blocktime` (all vCPUs blocked), ms.
    pub blocktime_ms: Option<f64>,
    /// QEMU's own `postcopy-vcpu-blocktime`, ms per vCPU.
    pub vcpu_blocktime_ms: Option<Vec<f64>>,
    pub status_timeline: Vec<StatusChange>,
    /// uffdscope's QEMU-view overlap divided by QEMU's `postcopy-blocktime`.
    pub agreement: Option<f64>,
    /// uffdscope's QEMU-view vCPU sum divided by the sum of QEMU's
    /// `postcopy-vcpu-blocktime` (the robust comparison: see `remark`).
    pub vcpu_agreement: Option<f64>,
    /// Why QEMU's figures disagree with themselves or with the replay, when
    /// they do for a known reason.
    pub remark: Option<String>,
}
