//! One streaming pass over a trace that produces the [`Report`]: feeds the
//! lifecycle engine, statistics, network and QMP accumulators, then assembles
//! the report model.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::Path;

use crate::engine::blocktime::{self, QemuBlocktime};
use crate::engine::guest;
use crate::engine::lifecycle::{Engine, Fault, Resolution, Stage};
use crate::engine::network::Network;
use crate::engine::stats::{FaultStats, CURVE_QUANTILES};
use crate::inputs::guest_log::GuestLog;
use crate::inputs::validate::Boundary;
use crate::report::{
    Blocktime, FaultSection, NetworkSection, QemuSection, QemuView, Report, SlowFault,
    StatusChange, Target, ThreadRow, Timeline, TraceSection, SCHEMA,
};
use uffdscope_trace::record::{IoctlOp, Record, Role, UffdMsg};
use uffdscope_trace::{TraceError, TraceReader};

/// What the user asked of the analysis.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A guest log captured outside the trace (lines without host stamps),
    /// read with [`crate::inputs::guest_log::read`].
    pub guest_log: Option<GuestLog>,
    /// Guest clock minus host realtime, ms.
    pub guest_offset_ms: Option<f64>,
}

/// Why an analysis could not start.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error(transparent)]
    Trace(#[from] TraceError),
}

#[derive(Default)]
struct Qmp {
    blocktime_ms: Option<f64>,
    vcpu_blocktime_ms: Option<Vec<f64>>,
    statuses: Vec<(u64, String)>,
    postcopy_active_ns: Option<u64>,
    completed_ns: Option<u64>,
    seen: bool,
}

impl Qmp {
    fn push(&mut self, ts: u64, json: &str) {
        self.seen = true;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
            return;
        };
        let v = v.get("return").unwrap_or(&v);
        if let Some(b) = v
            .get("postcopy-blocktime")
            .and_then(serde_json::Value::as_f64)
        {
            self.blocktime_ms = Some(b);
        }
        if let Some(arr) = v
            .get("postcopy-vcpu-blocktime")
            .and_then(serde_json::Value::as_array)
        {
            self.vcpu_blocktime_ms =
                Some(arr.iter().filter_map(serde_json::Value::as_f64).collect());
        }
        let status = v.get("status").and_then(|s| s.as_str()).or_else(|| {
            v.get("data")
                .and_then(|d| d.get("status"))
                .and_then(|s| s.as_str())
        });
        if let Some(status) = status {
            match self.statuses.last_mut() {
                // A polled reply and the MIGRATION event report one change.
                Some((t, s)) if s == status => *t = (*t).min(ts),
                _ => self.statuses.push((ts, status.to_owned())),
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

struct Pass {
    engine: Engine,
    stats: FaultStats,
    network: Network,
    qmp: Qmp,
    events: u64,
    first_ts: Option<u64>,
    last_ts: Option<u64>,
    drops: u64,
    end: Option<String>,
    /// The guest lines recorded in the trace.
    guest: GuestLog,
    vcpu_names: BTreeMap<u32, String>,
    /// Threads that are vCPUs, as known so far.
    vcpu_set: HashSet<u32>,
    /// QEMU's blocktime accounting replayed over the trace, and the variant
    /// closing placements at the ioctl exit.
    qemu_bt: QemuBlocktime,
    qemu_bt_exit: QemuBlocktime,
    /// First and last value of each (thread, perf counter).
    perf: BTreeMap<(u32, String), (u64, u64)>,
}

impl Pass {
    fn refresh_vcpus(&mut self) {
        self.vcpu_set = self
            .engine
            .threads
            .iter()
            .filter(|(_, t)| t.role() == Role::Vcpu)
            .map(|(&tid, _)| tid)
            .collect();
    }

    /// Feeds QEMU's blocktime replay: message reads and the placing ioctls.
    fn push_qemu_blocktime(&mut self, rec: &Record) {
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
            Record::UffdIoctl(io)
                if matches!(
                    io.op,
                    IoctlOp::Copy | IoctlOp::ZeroPage | IoctlOp::Wake | IoctlOp::Continue
                ) =>
            {
                let placed = matches!(io.op, IoctlOp::Copy | IoctlOp::ZeroPage) && io.ret == 0;
                let placed = placed.then_some(io.start);
                self.qemu_bt.ioctl(io.tid, io.enter_ts, io.exit_ts, placed);
                self.qemu_bt_exit
                    .ioctl(io.tid, io.enter_ts, io.exit_ts, placed);
            }
            _ => return,
        }
        let set = &self.vcpu_set;
        let engine = &self.engine;
        let ctx = blocktime::Ctx {
            is_vcpu: &|tid| set.contains(&tid),
            placed_by: &|addr, ts| engine.placed_by(addr, ts),
            vcpus: set.len(),
        };
        self.qemu_bt.advance(&ctx);
        self.qemu_bt_exit.advance(&ctx);
    }

    fn push(&mut self, rec: &Record) {
        self.events += 1;
        let ts = rec.ts();
        if ts > 0 {
            self.first_ts = Some(self.first_ts.map_or(ts, |t| t.min(ts)));
            self.last_ts = Some(self.last_ts.map_or(ts, |t| t.max(ts)));
        }
        match rec {
            Record::Drops(d) => self.drops = self.drops.max(d.total),
            Record::Note(n) if n.kind == "end" => self.end = Some(n.text.clone()),
            Record::Qmp(q) => self.qmp.push(q.ts, &q.json),
            Record::GuestLine(g) => {
                self.guest.push_line(&g.text, Some(g.ts));
            }
            Record::Thread(t) if Role::from_thread_name(&t.name) == Some(Role::Vcpu) => {
                self.vcpu_names.insert(t.tid, t.name.clone());
            }
            Record::Perf(p) => {
                let e = self
                    .perf
                    .entry((p.tid, p.counter.clone()))
                    .or_insert((p.value, p.value));
                e.1 = p.value;
            }
            _ => {}
        }
        self.network.push(rec);
        self.push_qemu_blocktime(rec);
        let stats = &mut self.stats;
        let set = &self.vcpu_set;
        self.engine.push(rec, &mut |f: Fault| {
            stats.add(&f, set.contains(&f.tid), set.len());
        });
        // Roles change with names, and with a thread's first sleep.
        let refresh = match rec {
            Record::Thread(_) | Record::Process(_) => true,
            Record::Sleep(sl) => !self.vcpu_set.contains(&sl.tid),
            _ => false,
        };
        if refresh {
            self.refresh_vcpus();
        }
    }
}

/// vCPU tids in guest CPU order: by the `CPU n/` in their names, else by tid.
fn vcpu_order(pass: &Pass) -> Vec<u32> {
    let mut named: Vec<(u32, u32)> = pass
        .vcpu_names
        .iter()
        .filter_map(|(&tid, name)| {
            let n = name
                .strip_prefix("CPU ")?
                .split('/')
                .next()?
                .trim()
                .parse()
                .ok()?;
            Some((n, tid))
        })
        .collect();
    named.sort_unstable();
    if named.is_empty() {
        pass.engine
            .threads
            .iter()
            .filter(|(_, t)| t.role() == Role::Vcpu)
            .map(|(&tid, _)| tid)
            .collect()
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
pub fn analyze<R: Read>(mut reader: TraceReader<R>, path: &str, opts: &Options) -> Report {
    let mut pass = Pass {
        engine: Engine::new(),
        stats: FaultStats::default(),
        network: Network::default(),
        qmp: Qmp::default(),
        events: 0,
        first_ts: None,
        last_ts: None,
        drops: 0,
        end: None,
        guest: GuestLog::default(),
        vcpu_names: BTreeMap::new(),
        vcpu_set: HashSet::new(),
        qemu_bt: QemuBlocktime::new(),
        qemu_bt_exit: QemuBlocktime::closing_at_exit(),
        perf: BTreeMap::new(),
    };
    let mut boundary = Boundary::new(reader.meta());
    let damage = reader.for_each(|rec| {
        if let Some(rec) = boundary.admit(rec) {
            pass.push(&rec);
        }
    });
    pass.refresh_vcpus();
    let vcpus = pass.vcpu_set.len();
    {
        let stats = &mut pass.stats;
        let set = &pass.vcpu_set;
        pass.engine
            .finish(&mut |f: Fault| stats.add(&f, set.contains(&f.tid), vcpus));
    }
    pass.stats.finish(vcpus);
    {
        let set = &pass.vcpu_set;
        let engine = &pass.engine;
        let ctx = blocktime::Ctx {
            is_vcpu: &|tid| set.contains(&tid),
            placed_by: &|addr, ts| engine.placed_by(addr, ts),
            vcpus,
        };
        pass.qemu_bt.finish(&ctx);
        pass.qemu_bt_exit.finish(&ctx);
    }
    let mut report = build_report(&pass, reader.meta(), reader.version(), path, damage, opts);
    report.warnings.extend(boundary.warnings());
    report
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
        return Some(if between {
            format!(
                "QEMU's per-vCPU blocktime ({per_sum:.0} ms) lies between the replay's bounds: \
                 {late:.0} ms closing each slot when its placing thread next places a page, \
                 {early:.0} ms closing it at the ioctl's exit. When QEMU closed its slots depends \
                 on when its placing threads got the CPU back, which the trace does not show; with \
                 postcopy-preempt the fault-fast thread idles between urgent pages, so the first \
                 bound is far off"
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

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e3).round() / 1e3
}

fn build_report(
    pass: &Pass,
    meta: &uffdscope_trace::TraceMeta,
    version: u16,
    path: &str,
    damage: Option<TraceError>,
    opts: &Options,
) -> Report {
    let s = &pass.stats;
    let t0 = pass.first_ts.unwrap_or(meta.start_ns);
    let mut warnings = Vec::new();
    if pass.drops > 0 {
        warnings.push(format!(
            "the kernel dropped {} events (ring buffer full): fault counts and stages are incomplete",
            pass.drops
        ));
    }
    if let Some(d) = &damage {
        warnings.push(format!(
            "trace is damaged; analyzed the {} good records before: {d}",
            pass.events
        ));
    }
    if s.count > 0 && s.with_service < s.count {
        // Threads other than vCPUs (QEMU's main thread loading device state)
        // fault inside system calls, where no user fault entry exists.
        let not_vcpu: u64 = s
            .per_thread
            .iter()
            .filter(|(tid, _)| !pass.vcpu_set.contains(tid))
            .map(|(_, t)| t.faults - t.service.count())
            .sum();
        let missing = s.count - s.with_service;
        let who = if not_vcpu == missing {
            " (all on threads that are not vCPUs: faults taken inside system calls have no user fault entry)".to_owned()
        } else if not_vcpu > 0 {
            format!(" ({not_vcpu} of them on threads that are not vCPUs)")
        } else {
            String::new()
        };
        warnings.push(format!(
            "{missing} of {} faults have no fault-entry record{who}: their service latency is unknown",
            s.count
        ));
    }
    let stages_us = Stage::ALL
        .iter()
        .enumerate()
        .map(|(i, st)| (st.as_str().to_owned(), s.stages[i].percentiles().into()))
        .collect();
    let totals: Vec<f64> = (0..4)
        .map(|i| {
            let p = s.stages[i].percentiles();
            p.mean.unwrap_or(0.0) * p.count as f64
        })
        .collect();
    let sum: f64 = totals.iter().sum();
    let stage_share = Stage::ALL[..4]
        .iter()
        .zip(&totals)
        .map(|(st, t)| {
            (
                st.as_str().to_owned(),
                (sum > 0.0).then(|| (t / sum * 1000.0).round() / 1000.0),
            )
        })
        .collect();
    let by_resolution = Resolution::ALL
        .iter()
        .map(|r| {
            (
                r.as_str().to_owned(),
                s.by_resolution.get(r).copied().unwrap_or(0),
            )
        })
        .collect();
    let threads = pass
        .engine
        .threads
        .iter()
        .map(|(&tid, facts)| {
            let ts = s.per_thread.get(&tid);
            let p = ts.map(|t| t.service.percentiles()).unwrap_or_default();
            ThreadRow {
                tid,
                name: facts.name.clone(),
                role: facts.role().as_str(),
                faults: ts.map_or(0, |t| t.faults),
                blocked_ms: ms(ts.map_or(0, |t| t.blocked_ns)),
                service_p50_us: p.p50,
                service_p99_us: p.p99,
                uffd_reads: facts.uffd_reads,
                placements: facts.placements,
                cpu_ms: perf_delta(pass, tid, "task_clock_ns").map(ms),
                context_switches: perf_delta(pass, tid, "context_switches"),
                page_faults: perf_delta(pass, tid, "page_faults"),
            }
        })
        .collect();
    let vcpu_tids = vcpu_order(pass);
    let blocktime = Blocktime {
        vcpu_sum: ms(s.ours.per_vcpu_ns.values().sum()),
        all_vcpus_overlap: (!vcpu_tids.is_empty()).then(|| ms(s.ours.all_down_ns)),
        per_vcpu: s
            .ours
            .per_vcpu_ns
            .iter()
            .map(|(tid, ns)| (tid.to_string(), ms(*ns)))
            .collect(),
        vcpus: vcpu_tids.len(),
        qemu_view: QemuView {
            vcpu_sum: ms(pass.qemu_bt.per_vcpu_ns.values().sum()),
            all_vcpus_overlap: (!vcpu_tids.is_empty()).then(|| ms(pass.qemu_bt.total_ns)),
            per_vcpu: vcpu_tids
                .iter()
                .map(|tid| ms(pass.qemu_bt.per_vcpu_ns.get(tid).copied().unwrap_or(0)))
                .collect(),
            faults: pass.qemu_bt.counted,
            unseen_faults: s.vcpu_faults.saturating_sub(pass.qemu_bt.counted),
            overwritten: pass.qemu_bt.overwritten,
            vcpu_sum_close_at_exit: ms(pass.qemu_bt_exit.per_vcpu_ns.values().sum()),
            all_vcpus_overlap_close_at_exit: (!vcpu_tids.is_empty())
                .then(|| ms(pass.qemu_bt_exit.total_ns)),
        },
    };
    let qemu = pass.qmp.seen.then(|| QemuSection {
        version: meta.qemu_version.clone(),
        blocktime_ms: pass.qmp.blocktime_ms,
        vcpu_blocktime_ms: pass.qmp.vcpu_blocktime_ms.clone(),
        status_timeline: pass
            .qmp
            .statuses
            .iter()
            .map(|(ts, st)| StatusChange {
                at_s: ts.saturating_sub(t0) as f64 / 1e9,
                status: st.clone(),
            })
            .collect(),
        agreement: pass.qmp.blocktime_ms.filter(|b| *b > 0.0).map(|b| {
            let ours = blocktime.qemu_view.all_vcpus_overlap.unwrap_or(0.0);
            (ours / b * 1000.0).round() / 1000.0
        }),
        vcpu_agreement: pass
            .qmp
            .vcpu_blocktime_ms
            .as_ref()
            .map(|v| v.iter().sum::<f64>())
            .filter(|sum| *sum > 0.0)
            .map(|sum| (blocktime.qemu_view.vcpu_sum / sum * 1000.0).round() / 1000.0),
        remark: qemu_remark(&pass.qmp, &blocktime.qemu_view),
    });
    let log = opts.guest_log.as_ref().unwrap_or(&pass.guest);
    warnings.extend(log.counts.warnings());
    let guest = (!log.is_blank()).then(|| {
        let ctx = guest::Context {
            bins: &s.bins,
            vcpu_tids: &vcpu_tids,
            realtime_offset_ns: meta.realtime_offset_ns,
            switchover_ns: pass.qmp.postcopy_active_ns.or(s.first_fault_ts),
            completed_ns: pass.qmp.completed_ns,
            trace_start_ns: t0,
            faults_span: s.first_fault_ts.zip(s.last_fault_ts),
        };
        guest::correlate(log, &ctx, opts.guest_offset_ms)
    });
    if let Some(n) = guest.as_ref().map(|g| g.spikes_left_out).filter(|&n| n > 0) {
        warnings.push(format!(
            "{n} more guest spikes are not listed: the report keeps the {} with the most excess time",
            guest::MAX_SPIKES
        ));
    }
    if guest.as_ref().is_some_and(|g| g.lines.stale_markers > 0) {
        warnings.push("the guest reported stale pages (UFFDSCOPE-STALE lines)".to_owned());
    }
    Report {
        schema: SCHEMA,
        trace: TraceSection {
            path: path.to_owned(),
            duration_s: match (pass.first_ts, pass.last_ts) {
                (Some(a), Some(b)) => Some((b - a) as f64 / 1e9),
                _ => None,
            },
            events: pass.events,
            drops: pass.drops,
            target: Target {
                pid: meta.target_pid,
                comm: meta.target_comm.clone(),
            },
            kernel: meta.kernel.clone(),
            host: meta.host.clone(),
            tool: meta.tool.clone(),
            format_version: version,
            damage: damage.map(|d| d.to_string()),
            end: pass.end.clone(),
        },
        faults: FaultSection {
            count: s.count,
            by_resolution,
            service_us: s.service.percentiles(),
            blocked_us: s.blocked.percentiles(),
            service_curve_us: s.service.curve(&CURVE_QUANTILES),
            blocked_curve_us: s.blocked.curve(&CURVE_QUANTILES),
            stages_us,
            stage_share,
            with_service: s.with_service,
            stage_sum_consistent: s.stage_sum_consistent,
            qemu_counted: pass.qemu_bt.counted,
            messages_read: pass.engine.messages_read,
            uffd_reads: pass.engine.uffd_reads,
            failed_reads: pass.engine.eagain_reads,
            page_requests: pass.engine.requests_sent,
            placements: pass.engine.placements_by_op(),
            slowest: s.slowest.iter().map(|f| SlowFault::new(f, t0)).collect(),
        },
        threads,
        blocktime_ms: blocktime,
        network: NetworkSection {
            channels: pass
                .network
                .report(|tid| pass.engine.threads.get(&tid).map(|t| t.role().as_str())),
        },
        guest,
        qemu,
        warnings,
        timeline: timeline(pass, t0),
    }
}

/// Most bins a [`Timeline`] gets; the width is the smallest 1-2-5 step that fits.
const TIMELINE_MAX_BINS: u64 = 300;

fn timeline(pass: &Pass, t0: u64) -> Option<Timeline> {
    let s = &pass.stats;
    let end = pass.last_ts?.max(s.last_fault_ts?);
    let span_ms = end.saturating_sub(t0) / 1_000_000 + 1;
    let mut bin_ms = 10u64;
    'search: for decade in [1u64, 10, 100, 1_000, 10_000, 100_000] {
        for step in [10, 20, 50] {
            bin_ms = step * decade;
            if span_ms.div_ceil(bin_ms) <= TIMELINE_MAX_BINS {
                break 'search;
            }
        }
    }
    let n = span_ms.div_ceil(bin_ms) as usize;
    let series = s.bins.series(t0, bin_ms * 1_000_000, n);
    Some(Timeline {
        bin_ms: bin_ms as f64,
        blocked_ms: series.iter().map(|&(ns, _)| ms(ns)).collect(),
        faults: series.iter().map(|&(_, n)| n).collect(),
    })
}
