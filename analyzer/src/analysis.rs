//! The report's consumer of the one streaming pass ([`crate::drive`]): feeds
//! statistics, network, QMP and QEMU-blocktime accumulators with each record
//! and fault, then assembles the report model ([`crate::report`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use crate::drive::{self, At, Consumer, Derived, Limits, Summary};
use crate::engine::blocktime::{self, QemuBlocktime};
use crate::engine::both_ends::merge::{MergeOutcome, Merger};
use crate::engine::both_ends::source::SourceIndex;
use crate::engine::guest;
use crate::engine::kvm_async::KvmAsyncWaits;
use crate::engine::lifecycle::{Engine, Fault, Resolution, Stage, ThreadFacts, TidSet};
use crate::engine::network::Network;
use crate::engine::network_split::{NetworkSplitStats, NetworkSplitter};
use crate::engine::qemu_latency::{LatencyReplay, Log2Buckets};
use crate::engine::stats::{FaultStats, Hist, CURVE_QUANTILES};
use crate::inputs::guest_log::GuestLog;
use crate::inputs::qmp::{QemuLatency, QmpFacts};
use crate::report::both_ends;
use crate::report::{
    findings, Blocktime, Bounded, BytesPercentiles, ChannelEndpoint, FaultSection, KvmAsyncSection,
    MigrationContext, NetworkSection, NetworkSplitSection, NetworkSplitShare, QemuLatencySection,
    QemuSection, QemuView, Report, SlowFault, StagesUs, StatusChange, Target, ThreadRow, Timeline,
    TraceSection, SCHEMA,
};
use uffdscope_trace::record::{IoctlOp, Record, Role, UffdMsg};
use uffdscope_trace::{TraceError, TraceReader};

/// What the user asked of the analysis.
#[derive(Debug, Clone)]
pub struct Options {
    /// A guest log captured outside the trace (lines without host stamps),
    /// read with [`crate::inputs::guest_log::read`].
    pub guest_log: Option<GuestLog>,
    /// Guest clock minus host realtime, ms.
    pub guest_offset_ms: Option<f64>,
    /// Bounds on the pass ([`Limits::for_file_size`] for a file).
    pub limits: Limits,
    /// The source trace of the same migration (`--source`), read beforehand.
    pub source: Option<SourceInput>,
}

/// A source trace to merge with the destination's.
#[derive(Debug, Clone)]
pub struct SourceInput {
    /// As the user named it (for the report).
    pub path: String,
    pub index: Arc<SourceIndex>,
    /// `--source-offset-us`: the offset to use instead of the estimate.
    pub offset_us: Option<f64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            guest_log: None,
            guest_offset_ms: None,
            limits: Limits::NONE,
            source: None,
        }
    }
}

/// Why an analysis could not start.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error(transparent)]
    Trace(#[from] TraceError),
}

/// The guest CPU index of a vCPU thread, from its QEMU name `CPU n/...`.
pub fn vcpu_index(name: &str) -> Option<u32> {
    name.strip_prefix("CPU ")?
        .split('/')
        .next()?
        .trim()
        .parse()
        .ok()
}

#[derive(Default)]
struct Qmp {
    blocktime_ms: Option<f64>,
    vcpu_blocktime_ms: Option<Vec<f64>>,
    statuses: Vec<(u64, String)>,
    postcopy_active_ns: Option<u64>,
    completed_ns: Option<u64>,
    seen: bool,
    /// QEMU 10.1's latency figures, the latest reported.
    latency: Option<QemuLatency>,
    capabilities: Option<BTreeMap<String, bool>>,
    parameters: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Qmp {
    fn push(&mut self, ts: u64, facts: Option<&QmpFacts>) {
        self.seen = true;
        let Some(facts) = facts else {
            return;
        };
        if let Some(b) = facts.blocktime_ms {
            self.blocktime_ms = Some(b);
        }
        if let Some(v) = &facts.vcpu_blocktime_ms {
            self.vcpu_blocktime_ms = Some(v.clone());
        }
        if facts.latency.is_some() {
            self.latency.clone_from(&facts.latency);
        }
        if facts.capabilities.is_some() {
            self.capabilities.clone_from(&facts.capabilities);
        }
        if facts.parameters.is_some() {
            self.parameters.clone_from(&facts.parameters);
        }
        if let Some(status) = &facts.status {
            match self.statuses.last_mut() {
                // A polled reply and the MIGRATION event report one change.
                Some((t, s)) if s == status => *t = (*t).min(ts),
                _ => self.statuses.push((ts, status.clone())),
            }
            // Events and polled replies reach the trace in any order: keep the earliest.
            let earliest = |t: Option<u64>| Some(t.map_or(ts, |t| t.min(ts)));
            if status == "postcopy-active" {
                self.postcopy_active_ns = earliest(self.postcopy_active_ns);
            }
            if status == "completed" {
                self.completed_ns = earliest(self.completed_ns);
            }
        }
    }
}

/// Recorder notes that say something was missing or cut while recording,
/// with how each is introduced in a warning.
const WARNING_NOTES: [(&str, &str); 6] = [
    ("qmp_error", "QMP"),
    ("console_error", "guest console"),
    ("console_end", "guest console"),
    ("console_cut", "guest console"),
    ("bad_records", "kernel records that did not decode"),
    ("abi_mismatch", "the BPF object and the tracer disagree"),
];
/// Notes of one kind shown in full; the rest are counted.
const NOTES_SHOWN: usize = 3;

/// The recorder's notes of the [`WARNING_NOTES`] kinds, a few of each kept.
#[derive(Default)]
struct RecorderNotes {
    kept: Vec<(usize, String)>,
    more: [u64; WARNING_NOTES.len()],
}

impl RecorderNotes {
    fn push(&mut self, kind: &str, text: &str) {
        let Some(i) = WARNING_NOTES.iter().position(|(k, _)| *k == kind) else {
            return;
        };
        if self.kept.iter().filter(|(k, _)| *k == i).count() < NOTES_SHOWN {
            self.kept.push((i, text.to_owned()));
        } else {
            self.more[i] += 1;
        }
    }

    fn warnings(&self) -> impl Iterator<Item = String> + '_ {
        let kept = self
            .kept
            .iter()
            .map(|(i, text)| format!("while recording, {}: {text}", WARNING_NOTES[*i].1));
        let more = self
            .more
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| {
                format!(
                    "while recording, {}: {n} more notes like these",
                    WARNING_NOTES[i].1
                )
            });
        kept.chain(more)
    }
}

/// Distinct page sizes a report lists (4 KiB, 2 MiB, 1 GiB, and a spare).
const MAX_PAGE_SIZES: usize = 4;

#[derive(Default)]
struct Pass {
    stats: FaultStats,
    network: Network,
    qmp: Qmp,
    first_ts: Option<u64>,
    drops: u64,
    end: Option<String>,
    /// The guest lines recorded in the trace.
    guest: GuestLog,
    /// Threads that are vCPUs, as known so far.
    vcpu_set: TidSet,
    /// QEMU's blocktime accounting replayed over the trace, and the variant
    /// closing placements at the ioctl exit.
    qemu_bt: QemuBlocktime,
    qemu_bt_exit: QemuBlocktime,
    /// First and last value of each (thread, perf counter).
    perf: BTreeMap<(u32, String), (u64, u64)>,
    /// Sleeps whose switch-in was not traced ([`uffdscope_trace::record::Sleep::run_is_bound`]).
    bound_wakes: u64,
    /// Sleeps the kernel flagged as KVM async page faults.
    kvm_async: u64,
    /// Sleeps that ran again without a traced resume in user mode: their
    /// `wake` stage ends at the switch-in.
    resume_fallback: u64,
    /// The recorder took resume times and placer runs (a resume or a
    /// placer-run record was seen): only then is a sleep without a resume a
    /// fallback, and a slot not closed at a placer run a fact. A trace of an
    /// older recorder rewritten as format 3 (`uffdscope lean`) has neither.
    format3_recorder: bool,
    /// KVM async page faults: the kworkers' waits, by vCPU.
    kvm_waits: KvmAsyncWaits,
    /// Sleeps without the kernel's facts (format 1, or a format-1 trace
    /// rewritten by `uffdscope lean`): the two counts above are then unknown.
    sleeps_without_kernel: u64,
    /// Requested faults by the thread whose placement woke them.
    requested_by_placer: BTreeMap<u32, u64>,
    /// The network stage of requested faults taken apart.
    split: NetworkSplitter,
    split_stats: NetworkSplitStats,
    /// The network stage of the faults the split covers.
    split_network: Hist,
    /// QEMU 10.1's latency accounting replayed, and the service latency in its buckets.
    qemu_latency: LatencyReplay,
    service_log2: Log2Buckets,
    /// The recorder's notes that every report must show.
    recorder_notes: RecorderNotes,
    /// Distinct lengths of successful placements (page sizes), at most a few.
    page_sizes: std::collections::BTreeSet<u64>,
    /// What the merge with a source trace needs from this pass (`--source`).
    merger: Option<Merger>,
}

impl Pass {
    fn new(opts: &Options) -> Self {
        Self {
            qemu_bt: QemuBlocktime::new(),
            qemu_bt_exit: QemuBlocktime::closing_at_exit(),
            merger: opts.source.is_some().then(Merger::default),
            ..Self::default()
        }
    }

    fn blocktime_ctx<'a>(
        set: &'a TidSet,
        engine: &'a Engine,
    ) -> (impl Fn(u32) -> bool + 'a, impl Fn(u64, u64) -> bool + 'a) {
        (
            move |tid| set.contains(&tid),
            move |addr, ts| engine.placed_by(addr, ts),
        )
    }

    /// A successful placement's length, kept when it looks like a page size.
    fn note_page_size(&mut self, len: u64) {
        if len.is_power_of_two() && self.page_sizes.len() < MAX_PAGE_SIZES {
            self.page_sizes.insert(len);
        }
    }

    /// Feeds QEMU's blocktime replay: message reads and the placing ioctls.
    fn push_qemu_blocktime(&mut self, rec: &Record, engine: &Engine) {
        match rec {
            Record::UffdRead(r) => {
                for m in r
                    .msgs
                    .iter()
                    .filter(|m| m.event == UffdMsg::EVENT_PAGEFAULT)
                {
                    self.qemu_bt.read(r.exit_ts, m.address, m.ptid);
                    self.qemu_bt_exit.read(r.exit_ts, m.address, m.ptid);
                }
            }
            Record::UffdIoctl(io) if io.op.places_pages() || io.op == IoctlOp::Wake => {
                let placed = matches!(io.op, IoctlOp::Copy | IoctlOp::ZeroPage) && io.ret == 0;
                let placed = placed.then_some(io.start);
                self.qemu_bt.ioctl(io.tid, io.enter_ts, io.exit_ts, placed);
                self.qemu_bt_exit
                    .ioctl(io.tid, io.enter_ts, io.exit_ts, placed);
            }
            Record::PlacerRun(p) => {
                self.format3_recorder = true;
                self.qemu_bt.placer_run(p.tid, p.ts);
            }
            _ => return,
        }
        let (is_vcpu, placed_by) = Self::blocktime_ctx(&self.vcpu_set, engine);
        let ctx = blocktime::Ctx {
            is_vcpu: &is_vcpu,
            placed_by: &placed_by,
            vcpus: self.vcpu_set.len(),
        };
        self.qemu_bt.advance(&ctx);
        self.qemu_bt_exit.advance(&ctx);
    }
}

impl Consumer for Pass {
    type Error = Infallible;

    fn record(&mut self, rec: &Record, derived: &Derived, at: At<'_>) -> Result<(), Infallible> {
        let ts = rec.ts();
        if ts > 0 {
            self.first_ts = Some(self.first_ts.map_or(ts, |t| t.min(ts)));
        }
        match rec {
            Record::Drops(d) => self.drops = self.drops.max(d.total),
            Record::Note(n) if n.kind == "end" => self.end = Some(n.text.clone()),
            Record::Note(n) => self.recorder_notes.push(&n.kind, &n.text),
            Record::Qmp(q) => self.qmp.push(q.ts, derived.qmp.as_ref()),
            Record::GuestLine(g) => {
                self.guest.push_line(&g.text, Some(g.ts));
            }
            Record::Sleep(sl) => {
                self.bound_wakes += u64::from(sl.run_is_bound());
                self.kvm_async += u64::from(sl.kernel.is_some_and(|k| k.flags.kvm_async()));
                self.resume_fallback += u64::from(sl.run_ts.is_some() && sl.resume_ts.is_none());
                self.format3_recorder |= sl.resume_ts.is_some();
                self.sleeps_without_kernel += u64::from(sl.kernel.is_none());
            }
            Record::UffdIoctl(io)
                if matches!(io.op, IoctlOp::Copy | IoctlOp::ZeroPage) && io.ret == 0 =>
            {
                self.note_page_size(io.len);
            }
            Record::KvmAsync(k) => self.kvm_waits.push(k),
            Record::PlacementBin(bin) if bin.count > 0 => self.note_page_size(bin.len),
            Record::Perf(p) => {
                let e = self
                    .perf
                    .entry((p.tid, p.counter.clone()))
                    .or_insert((p.value, p.value));
                e.1 = p.value;
            }
            _ => {}
        }
        self.network.push(rec, &derived.return_path);
        self.split.push(rec);
        if let Some(m) = &mut self.merger {
            m.record(rec, &derived.return_path);
        }
        self.push_qemu_blocktime(rec, at.engine);
        Ok(())
    }

    fn fault(&mut self, f: &Fault, at: At<'_>) -> Result<(), Infallible> {
        if let Some(m) = &mut self.merger {
            m.fault(f, at.engine);
        }
        let vcpu = self.vcpu_set.contains(&f.tid);
        self.stats.add(f, vcpu, self.vcpu_set.len());
        if let Some(split) = self.split.split(f) {
            self.split_stats.add(&split);
            if let Some(ns) = f.stage_ns(Stage::Network) {
                self.split_network.record(ns);
            }
        }
        self.qemu_latency.add(f, vcpu);
        if f.resolution == Resolution::Requested {
            *self.requested_by_placer.entry(f.waker_tid).or_default() += 1;
        }
        if let Some(ns) = f.service_ns() {
            self.service_log2.add(ns);
        }
        Ok(())
    }

    fn role_changed(&mut self, tid: u32, role: Role) {
        if role == Role::Vcpu {
            self.vcpu_set.insert(tid);
        } else {
            self.vcpu_set.remove(&tid);
        }
    }
}

/// vCPU tids in guest CPU order: by the `CPU n/` in their names, else by tid.
fn vcpu_order(engine: &Engine) -> Vec<u32> {
    let vcpus = || {
        engine
            .threads
            .iter()
            .filter(|(_, t)| t.role() == Role::Vcpu)
    };
    let mut named: Vec<(u32, u32)> = vcpus()
        .filter(|(_, t)| t.named_role == Some(Role::Vcpu))
        .filter_map(|(&tid, t)| Some((vcpu_index(t.name.as_deref()?)?, tid)))
        .collect();
    named.sort_unstable();
    if named.is_empty() {
        vcpus().map(|(&tid, _)| tid).collect()
    } else {
        named.into_iter().map(|(_, tid)| tid).collect()
    }
}

/// Analyzes the trace at `path`.
pub fn analyze_file(path: &Path, opts: &Options) -> Result<Report, AnalysisError> {
    let reader = TraceReader::open(path)?;
    Ok(analyze(reader, &path.display().to_string(), opts))
}

/// Analyzes a trace from any reader.
pub fn analyze<R: Read>(reader: TraceReader<R>, path: &str, opts: &Options) -> Report {
    analyze_merged(reader, path, opts).0
}

/// Analyzes a trace and, with [`Options::source`], returns the merge with
/// the source trace too (each requested fault's sub-stages, for tests and
/// tools that need them one by one).
pub fn analyze_merged<R: Read>(
    mut reader: TraceReader<R>,
    path: &str,
    opts: &Options,
) -> (Report, Option<MergeOutcome>) {
    let mut pass = Pass::new(opts);
    let (engine, summary) = match drive::drive(&mut reader, &mut pass, opts.limits) {
        Ok(done) => done,
        Err(never) => match never {},
    };
    report_of(pass, &engine, &summary, &reader, path, opts)
}

#[cfg(feature = "parquet")]
/// Analyzes a trace while `also` takes the same pass (an export that needs
/// the report's figures at its end); the first error of `also` ends it.
pub(crate) fn analyze_with<R: Read, C: Consumer>(
    reader: &mut TraceReader<R>,
    path: &str,
    opts: &Options,
    also: &mut C,
) -> Result<(Report, Summary), C::Error> {
    let mut pass = Pass::new(opts);
    let mut both = Tee {
        pass: &mut pass,
        also,
    };
    let (engine, summary) = drive::drive(reader, &mut both, opts.limits)?;
    let (report, _) = report_of(pass, &engine, &summary, reader, path, opts);
    Ok((report, summary))
}

/// The report's consumer and another one, on one pass.
#[cfg(feature = "parquet")]
struct Tee<'a, C> {
    pass: &'a mut Pass,
    also: &'a mut C,
}

#[cfg(feature = "parquet")]
impl<C: Consumer> Consumer for Tee<'_, C> {
    type Error = C::Error;

    fn record(&mut self, rec: &Record, derived: &Derived, at: At<'_>) -> Result<(), C::Error> {
        let Ok(()) = self.pass.record(rec, derived, at);
        self.also.record(rec, derived, at)
    }

    fn fault(&mut self, f: &Fault, at: At<'_>) -> Result<(), C::Error> {
        let Ok(()) = self.pass.fault(f, at);
        self.also.fault(f, at)
    }

    fn role_changed(&mut self, tid: u32, role: Role) {
        self.pass.role_changed(tid, role);
        self.also.role_changed(tid, role);
    }
}

/// The report, from what the pass learned.
fn report_of<R: Read>(
    mut pass: Pass,
    engine: &Engine,
    summary: &Summary,
    reader: &TraceReader<R>,
    path: &str,
    opts: &Options,
) -> (Report, Option<MergeOutcome>) {
    let vcpus = pass.vcpu_set.len();
    pass.stats.finish(vcpus);
    pass.kvm_waits.finish();
    {
        let (is_vcpu, placed_by) = Pass::blocktime_ctx(&pass.vcpu_set, engine);
        let ctx = blocktime::Ctx {
            is_vcpu: &is_vcpu,
            placed_by: &placed_by,
            vcpus,
        };
        pass.qemu_bt.finish(&ctx);
        pass.qemu_bt_exit.finish(&ctx);
    }
    let origin = summary.origin.ns(reader.meta().start_ns);
    let merged = pass.merger.take().zip(opts.source.as_ref()).map(|(m, s)| {
        let offset_ns = s.offset_us.map(|us| us * 1e3);
        (m.finish(&s.index, offset_ns, origin), s)
    });
    let run = Run {
        pass: &pass,
        engine,
        summary,
        meta: reader.meta(),
        version: reader.version(),
        merged: merged.as_ref().map(|(m, s)| (m, *s)),
    };
    let report = build_report(&run, path, opts);
    (report, merged.map(|(m, _)| m))
}

/// Everything the pass learned, for assembling the report.
struct Run<'a> {
    pass: &'a Pass,
    engine: &'a Engine,
    summary: &'a Summary,
    meta: &'a uffdscope_trace::TraceMeta,
    version: u16,
    /// The merge with a source trace, and that trace (`--source`).
    merged: Option<(&'a MergeOutcome, &'a SourceInput)>,
}

impl Run<'_> {
    fn syscalls_recorded(&self) -> bool {
        self.meta.records_syscalls()
    }
}

/// How much a thread's perf counter grew over the recording.
fn perf_delta(pass: &Pass, tid: u32, counter: &str) -> Option<u64> {
    pass.perf
        .get(&(tid, counter.to_owned()))
        .map(|(first, last)| last.saturating_sub(*first))
}

/// Explains a known disagreement of QEMU's figures (see [`crate::engine::blocktime`]).
fn qemu_remark(qmp: &Qmp, view: &QemuView) -> Option<String> {
    const DRIFT: &str = "QEMU stops adding to postcopy-blocktime once its count of blocked \
        vCPUs (smp_cpus_down) drifts, after a race between its fault thread's received-bitmap \
        check and a placing thread (reworked upstream in 2025: the accounting moved under \
        page_request_mutex); the per-vCPU figures are unaffected, compare those";
    let total = qmp.blocktime_ms?;
    let per = qmp.vcpu_blocktime_ms.as_ref()?;
    let per_sum: f64 = per.iter().sum();
    let (late, early) = (view.vcpu_sum, view.vcpu_sum_close_at_exit);
    if per_sum > 0.0 && (late / per_sum - 1.0).abs() > 0.15 {
        let between = late.min(early) <= per_sum && per_sum <= late.max(early);
        return Some(if between && view.closed_at_placer_run.is_some() {
            format!(
                "QEMU's per-vCPU blocktime ({per_sum:.0} ms) lies between the replay's bounds: \
                 {late:.0} ms closing each slot when its placing thread ran on after the \
                 placement (recorded), {early:.0} ms closing it at the ioctl's exit; QEMU's \
                 placing thread closed its slots later than it was seen running again"
            )
        } else if between {
            format!(
                "QEMU's per-vCPU blocktime ({per_sum:.0} ms) lies between the replay's bounds: \
                 {late:.0} ms closing each slot when its placing thread next places a page, \
                 {early:.0} ms closing it at the ioctl's exit. When QEMU closed its slots depends \
                 on when its placing threads got the CPU back, which this trace (format 1 or 2) \
                 does not show; with postcopy-preempt the fault-fast thread idles between urgent \
                 pages, so the first bound is far off"
            )
        } else {
            format!(
                "QEMU's per-vCPU blocktime ({per_sum:.0} ms) is outside the replay's bounds \
                 ({late:.0} and {early:.0} ms): the trace may be missing reads or placements"
            )
        });
    }
    if let [one] = per.as_slice() {
        // With one vCPU QEMU's definition makes both figures the same number.
        if total + 0.5 < *one {
            return Some(format!(
                "QEMU's postcopy-blocktime ({total:.0} ms) is below its own per-vCPU blocktime \
                 ({one:.0} ms) with one vCPU, where they must be equal: {DRIFT}"
            ));
        }
        return None;
    }
    let replayed = view.all_vcpus_overlap?;
    (total < 0.85 * replayed).then(|| {
        format!(
            "QEMU's postcopy-blocktime ({total:.0} ms) is well below what its own accounting \
             gives for these faults ({replayed:.0} ms) while the per-vCPU figures agree: \
             probably its counter drift. {DRIFT}"
        )
    })
}

/// What a recording without the system-call and socket tracepoints
/// (`record --detail minimal`) cannot give, as `trace.not_recorded` names it.
pub const NOT_RECORDED_WITHOUT_SYSCALLS: &[&str] = &[
    "uffd_reads",
    "page_requests",
    "placements",
    "service_stages",
    "qemu_blocktime_replay",
    "network",
];

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e3).round() / 1e3
}

fn build_report(run: &Run<'_>, path: &str, opts: &Options) -> Report {
    let t0 = run.summary.origin.ns(run.meta.start_ns);
    let vcpu_tids = vcpu_order(run.engine);
    let blocktime = blocktime_section(run, &vcpu_tids);
    let qemu = qemu_section(run, blocktime.qemu_view.as_ref(), t0);
    let mut warnings = warnings(run);
    let guest = guest_section(run, &vcpu_tids, t0, opts, &mut warnings);
    let network = NetworkSection {
        channels: if run.syscalls_recorded() {
            run.pass
                .network
                .report(|tid| run.engine.threads.get(&tid).map(ThreadFacts::role))
        } else {
            Vec::new()
        },
    };
    let mut report = Report {
        schema: SCHEMA,
        trace: trace_section(run, path),
        faults: fault_section(run, t0),
        threads: thread_rows(run),
        context: context_section(run, &network, blocktime.vcpus),
        qemu_latency: QemuLatencySection {
            reported: run.pass.qmp.latency.clone(),
            replay: run
                .syscalls_recorded()
                .then(|| run.pass.qemu_latency.figures(&vcpu_tids)),
            service_dist: run.pass.service_log2.clone(),
        },
        blocktime_ms: blocktime,
        network,
        guest,
        qemu,
        warnings,
        timeline: timeline(run, t0),
        findings: Vec::new(),
        clock: run
            .merged
            .and_then(|(m, _)| both_ends::clock_section(m, t0)),
        source: run
            .merged
            .map(|(m, s)| both_ends::source_section(m, &s.index, &s.path)),
    };
    report.findings = findings::findings(&report);
    report
}

fn context_section(run: &Run<'_>, network: &NetworkSection, vcpus: usize) -> MigrationContext {
    let qmp = &run.pass.qmp;
    MigrationContext {
        qemu_version: run.meta.qemu_version.clone(),
        capabilities: qmp.capabilities.clone(),
        parameters: qmp.parameters.clone(),
        page_sizes: run.pass.page_sizes.iter().copied().collect(),
        vcpus,
        channels: network
            .channels
            .iter()
            .map(|c| ChannelEndpoint {
                role: c.role,
                local: c.local.clone(),
                remote: c.remote.clone(),
            })
            .collect(),
    }
}

/// Requested faults by the role of the thread that placed their page:
/// with postcopy-preempt on, the preempt thread should place most of them.
fn requested_placed_by(run: &Run<'_>) -> BTreeMap<Role, u64> {
    let mut by_role = BTreeMap::new();
    for (tid, n) in &run.pass.requested_by_placer {
        let role = run
            .engine
            .threads
            .get(tid)
            .map_or(Role::Other, ThreadFacts::role);
        *by_role.entry(role).or_default() += n;
    }
    by_role
}

fn network_split_share(pass: &Pass) -> NetworkSplitShare {
    let t = &pass.split_stats.totals;
    let share = |i: usize| t.shares().map(|s| (s[i] * 1000.0).round() / 1000.0);
    NetworkSplitShare {
        wire: share(0),
        behind_stream: share(1),
        rest: share(2),
        paused: share(3),
        of_ms: ms(t.network),
    }
}

fn network_split_section(pass: &Pass) -> (NetworkSplitSection, BytesPercentiles) {
    let s = &pass.split_stats;
    let bytes = s.behind_stream_bytes.percentiles();
    // The histogram keeps ns-scaled µs; bytes went in as "ns", so scale back.
    let back = |v: Option<f64>| v.map(|us| (us * 1000.0).round());
    (
        NetworkSplitSection {
            wire: s.wire.percentiles().into(),
            behind_stream: s.behind_stream.percentiles().into(),
            rest: s.rest.percentiles().into(),
            paused: s.paused.percentiles().into(),
            network: pass.split_network.percentiles().into(),
        },
        BytesPercentiles {
            p50: back(bytes.p50),
            p99: back(bytes.p99),
            max: back(bytes.max),
        },
    )
}

/// Warnings about what the trace lacks: drops, damage, faults without entry.
fn warnings(run: &Run<'_>) -> Vec<String> {
    let (pass, s) = (run.pass, &run.pass.stats);
    let mut warnings: Vec<String> = pass.recorder_notes.warnings().collect();
    // Records the validation boundary turned away.
    warnings.extend(run.summary.warnings.iter().cloned());
    if pass.drops > 0 {
        warnings.push(format!(
            "the kernel dropped {} events (ring buffer full): fault counts and stages are incomplete",
            pass.drops
        ));
    }
    if let Some(d) = &run.summary.damage {
        warnings.push(format!(
            "trace is damaged; analyzed the {} good records before: {d}",
            run.summary.records
        ));
    } else if let Some(n) = run.summary.stopped_at_limit {
        warnings.push(format!(
            "analysis stopped after {n} records (--max-events {n}): the rest of the trace was not read; raise --max-events to read it all"
        ));
    } else if !run.summary.complete {
        let t0 = run.summary.origin.ns(run.meta.start_ns);
        let last = run.summary.last_ts.map_or_else(
            || "it holds no timestamped record".to_owned(),
            |ts| {
                format!(
                    "its last record is at {:.3} s",
                    ts.saturating_sub(t0) as f64 / 1e9
                )
            },
        );
        warnings.push(format!(
            "the trace is incomplete: it has no end note, so the recording was cut (recorder killed, or the file cut at a frame boundary); {last}"
        ));
    }
    if let Some((m, _)) = run.merged {
        warnings.extend(m.warnings.iter().cloned());
    }
    if s.count > 0 && s.with_service < s.count {
        // A sleep with no fault entry: a fault taken through get_user_pages
        // (no exception, so no entry), or, in traces recorded before the
        // tracer checked where a wake came from, an idle thread's timer wake
        // that arrived during a placement (ARCHITECTURE.md, "A wake is a
        // fault's only if the ioctl made it").
        let not_vcpu: u64 = s
            .per_thread
            .iter()
            .filter(|(tid, _)| !pass.vcpu_set.contains(tid))
            .map(|(_, t)| t.faults - t.service.count())
            .sum();
        let missing = s.count - s.with_service;
        let who = if not_vcpu == missing {
            " (all on threads that are not vCPUs)".to_owned()
        } else if not_vcpu > 0 {
            format!(" ({not_vcpu} of them on threads that are not vCPUs)")
        } else {
            String::new()
        };
        warnings.push(format!(
            "{missing} of {} faults have no fault-entry record{who}: their service latency is unknown; \
             a trace recorded before uffdscope told interrupt wakes apart can count idle threads' \
             timer wakes here, a newer one only faults taken through get_user_pages",
            s.count
        ));
    }
    warnings
}

fn trace_section(run: &Run<'_>, path: &str) -> TraceSection {
    let (pass, meta) = (run.pass, run.meta);
    TraceSection {
        path: path.to_owned(),
        duration_s: match (pass.first_ts, run.summary.last_ts) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1e9),
            _ => None,
        },
        events: run.summary.records,
        drops: pass.drops,
        target: Target {
            pid: meta.target_pid,
            comm: meta.target_comm.clone(),
        },
        kernel: meta.kernel.clone(),
        host: meta.host.clone(),
        tool: meta.tool.clone(),
        format_version: run.version,
        detail: meta.detail,
        not_recorded: if run.syscalls_recorded() {
            Vec::new()
        } else {
            NOT_RECORDED_WITHOUT_SYSCALLS.to_vec()
        },
        damage: run.summary.damage.as_ref().map(ToString::to_string),
        end: pass.end.clone(),
        complete: run.summary.complete,
        stopped_at_limit: run.summary.stopped_at_limit,
    }
}

/// Each stage's share of the summed service-stage time, 3 decimals.
fn stage_shares(s: &FaultStats) -> BTreeMap<String, Option<f64>> {
    let totals: Vec<(Stage, f64)> = Stage::SERVICE
        .iter()
        .map(|&st| {
            let p = s.stage(st).percentiles();
            (st, p.mean.unwrap_or(0.0) * p.count as f64)
        })
        .collect();
    let sum: f64 = totals.iter().map(|(_, t)| t).sum();
    totals
        .iter()
        .map(|(st, t)| {
            (
                st.as_str().to_owned(),
                (sum > 0.0).then(|| (t / sum * 1000.0).round() / 1000.0),
            )
        })
        .collect()
}

/// Faults by resolution. Without recorded requests a copy cannot be told
/// requested from background: those two are `null` and `placed` counts the
/// copies; with them `placed` (always 0) is left out.
fn by_resolution(run: &Run<'_>) -> BTreeMap<String, Option<u64>> {
    let syscalls = run.syscalls_recorded();
    Resolution::ALL
        .iter()
        .filter(|&&r| !syscalls || r != Resolution::Placed)
        .map(|&r| {
            let n = run.pass.stats.by_resolution.get(&r).copied().unwrap_or(0);
            let known = syscalls || !matches!(r, Resolution::Requested | Resolution::Background);
            (r.as_str().to_owned(), known.then_some(n))
        })
        .collect()
}

/// Each stage's percentiles, and the network stage's three sub-stages when
/// a source trace was merged.
fn stages_us(run: &Run<'_>) -> StagesUs {
    let s = &run.pass.stats;
    let [to_source, at_source, from_source] = run
        .merged
        .map_or([None; 3], |(m, _)| both_ends::sub_stages(m));
    StagesUs {
        // Without the system-call tracepoints only the wake stage is
        // measured: the others are left out rather than shown empty.
        by_stage: Stage::ALL
            .iter()
            .filter(|&&st| run.syscalls_recorded() || st == Stage::Wake)
            .map(|&st| (st.as_str().to_owned(), s.stage(st).percentiles().into()))
            .collect(),
        to_source,
        at_source,
        from_source,
    }
}

fn fault_section(run: &Run<'_>, t0: u64) -> FaultSection {
    let (s, engine) = (&run.pass.stats, run.engine);
    let (split, bytes) = network_split_section(run.pass);
    let kernel_flags_known = run.version >= 2 && run.pass.sleeps_without_kernel == 0;
    let recorded = |n: u64| run.syscalls_recorded().then_some(n);
    FaultSection {
        count: s.count,
        by_resolution: by_resolution(run),
        service_us: s.service.percentiles(),
        blocked_us: s.blocked.percentiles(),
        service_curve_us: s.service.curve(&CURVE_QUANTILES),
        blocked_curve_us: s.blocked.curve(&CURVE_QUANTILES),
        stages_us: stages_us(run),
        stage_share: if run.syscalls_recorded() {
            stage_shares(s)
        } else {
            BTreeMap::new()
        },
        with_service: s.with_service,
        stage_sum_consistent: recorded(s.stage_sum_consistent),
        qemu_counted: recorded(run.pass.qemu_bt.counted),
        messages_read: recorded(engine.messages_read),
        uffd_reads: recorded(engine.uffd_reads),
        failed_reads: recorded(engine.eagain_reads),
        page_requests: recorded(engine.requests_sent),
        placements: run.syscalls_recorded().then(|| engine.placements_by_op()),
        slowest: s.slowest.iter().map(|f| SlowFault::new(f, t0)).collect(),
        // Each sleep is one fault; format 1 did not keep the kernel's flags.
        bounded: Bounded {
            wake: kernel_flags_known.then_some(run.pass.bound_wakes),
        },
        network_split_us: split,
        behind_stream_bytes: bytes,
        network_split_share: network_split_share(run.pass),
        requested_placed_by: requested_placed_by(run),
        kvm_async: kernel_flags_known.then_some(run.pass.kvm_async),
        // Format 3 added the resume.
        resume_fallback: (run.version >= 3 && run.pass.format3_recorder)
            .then_some(run.pass.resume_fallback),
        kvm_async_waits: kvm_async_section(&run.pass.kvm_waits),
    }
}

fn kvm_async_section(k: &KvmAsyncWaits) -> Option<KvmAsyncSection> {
    k.seen.then(|| KvmAsyncSection {
        faults: k.paired(),
        wait_us: k.wait.percentiles(),
        per_vcpu_ms: k
            .per_vcpu_ns
            .iter()
            .map(|(tid, ns)| (tid.to_string(), ms(*ns)))
            .collect(),
        handed_off: k.handed_off,
        unfinished: k.unfinished,
        repeated_faults: k.repeated,
    })
}

fn thread_rows(run: &Run<'_>) -> Vec<ThreadRow> {
    let s = &run.pass.stats;
    run.engine
        .threads
        .iter()
        .map(|(&tid, facts)| {
            let ts = s.per_thread.get(&tid);
            let p = ts.map(|t| t.service.percentiles()).unwrap_or_default();
            ThreadRow {
                tid,
                name: facts.name.clone(),
                role: facts.role(),
                faults: ts.map_or(0, |t| t.faults),
                blocked_ms: ms(ts.map_or(0, |t| t.blocked_ns)),
                service_p50_us: p.p50,
                service_p99_us: p.p99,
                uffd_reads: run.syscalls_recorded().then_some(facts.uffd_reads),
                placements: run.syscalls_recorded().then_some(facts.placements),
                cpu_ms: perf_delta(run.pass, tid, "task_clock_ns").map(ms),
                context_switches: perf_delta(run.pass, tid, "context_switches"),
                page_faults: perf_delta(run.pass, tid, "page_faults"),
            }
        })
        .collect()
}

fn blocktime_section(run: &Run<'_>, vcpu_tids: &[u32]) -> Blocktime {
    let (s, pass) = (&run.pass.stats, run.pass);
    let any = !vcpu_tids.is_empty();
    Blocktime {
        vcpu_sum: ms(s.ours.per_vcpu_ns.values().sum()),
        all_vcpus_overlap: any.then(|| ms(s.ours.all_down_ns)),
        per_vcpu: s
            .ours
            .per_vcpu_ns
            .iter()
            .map(|(tid, ns)| (tid.to_string(), ms(*ns)))
            .collect(),
        vcpus: vcpu_tids.len(),
        qemu_view: run.syscalls_recorded().then(|| QemuView {
            vcpu_sum: ms(pass.qemu_bt.per_vcpu_ns.values().sum()),
            all_vcpus_overlap: any.then(|| ms(pass.qemu_bt.total_ns)),
            per_vcpu: vcpu_tids
                .iter()
                .map(|tid| ms(pass.qemu_bt.per_vcpu_ns.get(tid).copied().unwrap_or(0)))
                .collect(),
            faults: pass.qemu_bt.counted,
            unseen_faults: s.vcpu_faults.saturating_sub(pass.qemu_bt.counted),
            overwritten: pass.qemu_bt.overwritten,
            vcpu_sum_close_at_exit: ms(pass.qemu_bt_exit.per_vcpu_ns.values().sum()),
            all_vcpus_overlap_close_at_exit: any.then(|| ms(pass.qemu_bt_exit.total_ns)),
            closed_at_placer_run: (run.version >= 3 && pass.format3_recorder)
                .then_some(pass.qemu_bt.closed_at_placer_run),
        }),
    }
}

fn qemu_section(run: &Run<'_>, view: Option<&QemuView>, t0: u64) -> Option<QemuSection> {
    let qmp = &run.pass.qmp;
    let ratio = |ours: f64, theirs: f64| (ours / theirs * 1000.0).round() / 1000.0;
    qmp.seen.then(|| QemuSection {
        version: run.meta.qemu_version.clone(),
        blocktime_ms: qmp.blocktime_ms,
        vcpu_blocktime_ms: qmp.vcpu_blocktime_ms.clone(),
        status_timeline: qmp
            .statuses
            .iter()
            .map(|(ts, st)| StatusChange {
                at_s: ts.saturating_sub(t0) as f64 / 1e9,
                status: st.clone(),
            })
            .collect(),
        agreement: qmp
            .blocktime_ms
            .filter(|b| *b > 0.0)
            .zip(view)
            .map(|(b, view)| ratio(view.all_vcpus_overlap.unwrap_or(0.0), b)),
        vcpu_agreement: qmp
            .vcpu_blocktime_ms
            .as_ref()
            .map(|v| v.iter().sum::<f64>())
            .filter(|sum| *sum > 0.0)
            .zip(view)
            .map(|(sum, view)| ratio(view.vcpu_sum, sum)),
        remark: view.and_then(|view| qemu_remark(qmp, view)),
    })
}

/// The guest section, from `--guest-log` when given, else from the guest
/// lines in the trace; warnings about the log go to `warnings`.
fn guest_section(
    run: &Run<'_>,
    vcpu_tids: &[u32],
    t0: u64,
    opts: &Options,
    warnings: &mut Vec<String>,
) -> Option<guest::GuestSection> {
    let pass = run.pass;
    let log = opts.guest_log.as_ref().unwrap_or(&pass.guest);
    warnings.extend(log.counts.warnings());
    if log.is_blank() {
        return None;
    }
    let ctx = guest::Context {
        bins: &pass.stats.bins,
        vcpu_tids,
        realtime_offset_ns: run.meta.realtime_offset_ns,
        switchover_ns: pass.qmp.postcopy_active_ns.or(pass.stats.first_fault_ts),
        completed_ns: pass.qmp.completed_ns,
        trace_start_ns: t0,
        faults_span: pass.stats.first_fault_ts.zip(pass.stats.last_fault_ts),
    };
    let section = guest::correlate(log, &ctx, opts.guest_offset_ms);
    if section.spikes_left_out > 0 {
        warnings.push(format!(
            "{} more guest spikes are not listed: the report keeps the {} with the most excess time",
            section.spikes_left_out,
            guest::MAX_SPIKES
        ));
    }
    if section.lines.stale_markers > 0 {
        warnings.push("the guest reported stale pages (UFFDSCOPE-STALE lines)".to_owned());
    }
    Some(section)
}

/// Most bins a [`Timeline`] gets; the width is the smallest 1-2-5 step that fits.
const TIMELINE_MAX_BINS: u64 = 300;

/// The smallest 1-2-5 bin width (ms, 10 ms at least) giving at most
/// [`TIMELINE_MAX_BINS`] bins over `span_ms`, for any span.
fn timeline_bin_ms(span_ms: u64) -> u64 {
    let mut decade = 1u64;
    loop {
        for step in [10, 20, 50] {
            let bin = decade.saturating_mul(step);
            if span_ms.div_ceil(bin) <= TIMELINE_MAX_BINS || bin == u64::MAX {
                return bin;
            }
        }
        decade = decade.saturating_mul(10);
    }
}

fn timeline(run: &Run<'_>, t0: u64) -> Option<Timeline> {
    let s = &run.pass.stats;
    let end = run.summary.last_ts?.max(s.last_fault_ts?);
    let span_ms = end.saturating_sub(t0) / 1_000_000 + 1;
    let bin_ms = timeline_bin_ms(span_ms);
    let n = usize::try_from(span_ms.div_ceil(bin_ms)).unwrap_or(usize::MAX);
    let series = s.bins.series(t0, bin_ms.saturating_mul(1_000_000), n);
    Some(Timeline {
        bin_ms: bin_ms as f64,
        blocked_ms: series.iter().map(|&(ns, _)| ms(ns)).collect(),
        faults: series.iter().map(|&(_, n)| n).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_bins_stay_within_their_limit_for_any_span() {
        assert_eq!(timeline_bin_ms(1), 10);
        assert_eq!(timeline_bin_ms(3_000), 10);
        assert_eq!(timeline_bin_ms(3_001), 20);
        for span in [10_000_000_000u64, u64::MAX / 1_000_000 + 1, u64::MAX] {
            let bin = timeline_bin_ms(span);
            assert!(
                span.div_ceil(bin) <= TIMELINE_MAX_BINS,
                "{span} ms in {bin} ms bins"
            );
        }
    }

    #[test]
    fn cpu_index_from_qemu_vcpu_names() {
        assert_eq!(vcpu_index("CPU 3/KVM"), Some(3));
        assert_eq!(vcpu_index("CPU 12/TCG"), Some(12));
        assert_eq!(vcpu_index("fault-default"), None);
        assert_eq!(vcpu_index("CPU x/KVM"), None);
    }
}
