//! The comparison of several runs (`uffdscope compare`): the model of the
//! `uffdscope.compare/1` JSON object. It takes finished [`Report`]s (one per
//! trace, the first is the baseline), lines up the figures they already hold,
//! and adds each run's ratio and delta against the baseline. The only figures
//! it derives are the ones a single report has no use for (the sum of QEMU's
//! per-vCPU blocktime, the share of all guest spike excess that vCPU blocking
//! explains). [`view`] decides what changed most and how cells are written.

pub mod view;

use std::collections::BTreeSet;

use serde::Serialize;

use crate::engine::lifecycle::Stage;
use crate::report::findings::Severity;
use crate::report::view::View;
use crate::report::{Report, StagePercentiles};

pub const SCHEMA: &str = "uffdscope.compare/1";

/// Several runs side by side.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub schema: &'static str,
    /// The runs, baseline first.
    pub runs: Vec<RunInfo>,
    /// Every compared figure, in the order shown.
    pub figures: Vec<Figure>,
    /// Each rule that fired in some run, with its severity per run (`null`
    /// where it did not fire).
    pub findings: Vec<FindingRow>,
    /// Per run after the baseline: what changed most against it.
    pub changes: Vec<view::Change>,
}

/// What a run is, as its report says.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub label: String,
    pub path: String,
    pub faults: u64,
    pub duration_s: Option<f64>,
    /// The trace's end note was read (the recording was not cut).
    pub complete: bool,
    /// Why reading the trace stopped early, when it is damaged.
    pub damage: Option<String>,
    pub drops: u64,
    /// The report's warnings, each once.
    pub warnings: Vec<String>,
}

/// The kind of a figure: says its unit and whether it is a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Us,
    Ms,
    S,
    Count,
    /// A share, 0..=1.
    Share,
    /// A correlation coefficient, -1..=1.
    Coefficient,
}

/// The section a figure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    Faults,
    Service,
    Blocked,
    Stages,
    NetworkSplit,
    Blocktime,
    Guest,
}

impl Section {
    pub const ALL: [Section; 7] = [
        Section::Faults,
        Section::Service,
        Section::Blocked,
        Section::Stages,
        Section::NetworkSplit,
        Section::Blocktime,
        Section::Guest,
    ];
}

/// One figure of every run, with ratios and deltas against the first run.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Stable id: the report's JSON path of the figure where it has one
    /// (`service_us.p99`, `faults.stages_us.network.p99`).
    pub id: String,
    /// How the figure is named in text and markdown.
    pub name: String,
    pub section: Section,
    pub unit: Unit,
    /// Per run; `null` where the run did not measure it.
    pub values: Vec<Option<f64>>,
    /// Per run, the value over the baseline's; `null` where either is
    /// unmeasured or the baseline is 0.
    pub ratio: Vec<Option<f64>>,
    /// Per run, the value minus the baseline's; `null` where either is unmeasured.
    pub delta: Vec<Option<f64>>,
}

impl Figure {
    fn new(
        id: String,
        name: String,
        section: Section,
        unit: Unit,
        values: Vec<Option<f64>>,
    ) -> Self {
        let base = values.first().copied().flatten().filter(|v| v.is_finite());
        let ratio = values
            .iter()
            .map(|v| Some(v.filter(|v| v.is_finite())? / base.filter(|b| *b != 0.0)?))
            .collect();
        let delta = values
            .iter()
            .map(|v| Some(v.filter(|v| v.is_finite())? - base?))
            .collect();
        Self {
            id,
            name,
            section,
            unit,
            values,
            ratio,
            delta,
        }
    }

    /// Some run measured it.
    fn measured(&self) -> bool {
        self.values.iter().any(Option::is_some)
    }
}

/// A finding rule across the runs.
#[derive(Debug, Clone, Serialize)]
pub struct FindingRow {
    pub rule: &'static str,
    pub severity: Vec<Option<Severity>>,
}

/// One run to compare: its label and its report.
pub struct Run<'a> {
    pub label: String,
    pub report: &'a Report,
}

/// Compares `runs`, the first being the baseline.
pub fn compare(runs: &[Run<'_>]) -> Comparison {
    let reports: Vec<&Report> = runs.iter().map(|r| r.report).collect();
    let mut figures = Vec::new();
    faults(&mut figures, &reports);
    latency(&mut figures, &reports);
    stages(&mut figures, &reports);
    network_split(&mut figures, &reports);
    blocktime(&mut figures, &reports);
    guest(&mut figures, &reports);
    let figures: Vec<Figure> = figures.into_iter().filter(Figure::measured).collect();
    let findings = finding_rows(&reports);
    let runs: Vec<RunInfo> = runs.iter().map(run_info).collect();
    let changes = view::changes(&runs, &figures, &findings);
    Comparison {
        schema: SCHEMA,
        runs,
        figures,
        findings,
        changes,
    }
}

fn run_info(run: &Run<'_>) -> RunInfo {
    let t = &run.report.trace;
    let mut warnings: Vec<String> = Vec::new();
    for w in &run.report.warnings {
        if !warnings.contains(w) {
            warnings.push(w.clone());
        }
    }
    RunInfo {
        label: run.label.clone(),
        path: t.path.clone(),
        faults: run.report.faults.count,
        duration_s: t.duration_s,
        complete: t.complete,
        damage: t.damage.clone(),
        drops: t.drops,
        warnings,
    }
}

/// Adds a figure read from each report by `get`.
fn push(
    out: &mut Vec<Figure>,
    reports: &[&Report],
    (id, name): (String, String),
    section: Section,
    unit: Unit,
    get: impl Fn(&Report) -> Option<f64>,
) {
    let values = reports.iter().map(|r| get(r)).collect();
    out.push(Figure::new(id, name, section, unit, values));
}

fn faults(out: &mut Vec<Figure>, reports: &[&Report]) {
    let ids = |id: &str, name: &str| (id.to_owned(), name.to_owned());
    push(
        out,
        reports,
        ids("faults.count", "faults"),
        Section::Faults,
        Unit::Count,
        |r| Some(r.faults.count as f64),
    );
    push(
        out,
        reports,
        ids("trace.duration_s", "trace duration"),
        Section::Faults,
        Unit::S,
        |r| r.trace.duration_s,
    );
}

/// Service and blocked time percentiles.
fn latency(out: &mut Vec<Figure>, reports: &[&Report]) {
    type Pick = fn(&crate::engine::stats::Percentiles) -> Option<f64>;
    const SERVICE: [(&str, Pick); 6] = [
        ("p50", |p| p.p50),
        ("p90", |p| p.p90),
        ("p99", |p| p.p99),
        ("p999", |p| p.p999),
        ("max", |p| p.max),
        ("mean", |p| p.mean),
    ];
    for (q, pick) in SERVICE {
        let id = (format!("faults.service_us.{q}"), format!("service {q}"));
        push(out, reports, id, Section::Service, Unit::Us, |r| {
            pick(&r.faults.service_us)
        });
    }
    for (q, pick) in SERVICE {
        let id = (format!("faults.blocked_us.{q}"), format!("blocked {q}"));
        push(out, reports, id, Section::Blocked, Unit::Us, |r| {
            pick(&r.faults.blocked_us)
        });
    }
}

type StagePick = fn(&StagePercentiles) -> Option<f64>;

/// The percentiles of a stage table row shown side by side.
const STAGE_QUANTILES: [(&str, StagePick); 3] =
    [("p50", |p| p.p50), ("p99", |p| p.p99), ("max", |p| p.max)];

fn stages(out: &mut Vec<Figure>, reports: &[&Report]) {
    for stage in Stage::ALL {
        let name = stage.as_str();
        for (q, pick) in STAGE_QUANTILES {
            let id = (
                format!("faults.stages_us.{name}.{q}"),
                format!("{name} {q}"),
            );
            push(out, reports, id, Section::Stages, Unit::Us, |r| {
                r.faults.stages_us.get(name).and_then(pick)
            });
        }
        let id = (
            format!("faults.stage_share.{name}"),
            format!("{name} share"),
        );
        push(out, reports, id, Section::Stages, Unit::Share, |r| {
            r.faults.stage_share.get(name).copied().flatten()
        });
    }
}

/// The parts of the network stage by their report JSON keys, in the order
/// the report's view lists them ([`View::network_split`]).
const SPLIT_PARTS: [&str; 4] = ["wire", "behind_stream", "rest", "paused"];

/// The parts of the network stage, when some run has them (as the report's
/// view shows them: a run that could not take the stage apart has none).
fn network_split(out: &mut Vec<Figure>, reports: &[&Report]) {
    if reports.iter().all(|r| View::of(r).network_split.is_empty()) {
        return;
    }
    for (i, part) in SPLIT_PARTS.iter().enumerate() {
        let row = |r: &Report| View::of(r).network_split.get(i).copied();
        for (q, pick) in STAGE_QUANTILES.iter().take(2) {
            let id = (
                format!("faults.network_split_us.{part}.{q}"),
                format!("network {part} {q}"),
            );
            push(out, reports, id, Section::NetworkSplit, Unit::Us, |r| {
                pick(&row(r)?.p)
            });
        }
        let id = (
            format!("faults.network_split_share.{part}"),
            format!("network {part} share"),
        );
        push(out, reports, id, Section::NetworkSplit, Unit::Share, |r| {
            row(r)?.share
        });
    }
}

fn blocktime(out: &mut Vec<Figure>, reports: &[&Report]) {
    type Get = fn(&Report) -> Option<f64>;
    const FIGURES: [(&str, &str, Get); 6] = [
        ("blocktime_ms.vcpu_sum", "vCPU blocked, sum (ours)", |r| {
            Some(r.blocktime_ms.vcpu_sum)
        }),
        (
            "blocktime_ms.all_vcpus_overlap",
            "all vCPUs blocked (ours)",
            |r| r.blocktime_ms.all_vcpus_overlap,
        ),
        (
            "blocktime_ms.qemu_view.vcpu_sum",
            "vCPU blocked, sum (QEMU replayed)",
            |r| r.blocktime_ms.qemu_view.as_ref().map(|q| q.vcpu_sum),
        ),
        (
            "blocktime_ms.qemu_view.all_vcpus_overlap",
            "all vCPUs blocked (QEMU replayed)",
            |r| {
                r.blocktime_ms
                    .qemu_view
                    .as_ref()
                    .and_then(|q| q.all_vcpus_overlap)
            },
        ),
        (
            "qemu.vcpu_blocktime_ms.sum",
            "vCPU blocked, sum (QEMU's)",
            |r| Some(r.qemu.as_ref()?.vcpu_blocktime_ms.as_ref()?.iter().sum()),
        ),
        ("qemu.blocktime_ms", "all vCPUs blocked (QEMU's)", |r| {
            r.qemu.as_ref()?.blocktime_ms
        }),
    ];
    for (id, name, get) in FIGURES {
        push(
            out,
            reports,
            (id.to_owned(), name.to_owned()),
            Section::Blocktime,
            Unit::Ms,
            get,
        );
    }
}

/// Guest spikes during or before post-copy (as the report's view lists
/// them), and how much of their excess vCPU blocking explains.
fn guest(out: &mut Vec<Figure>, reports: &[&Report]) {
    type Get = fn(&Report) -> Option<f64>;
    const FIGURES: [(&str, &str, Unit, Get); 5] = [
        ("guest.spike_count", "spikes", Unit::Count, |r| {
            r.guest.as_ref()?;
            Some(View::of(r).spikes.len() as f64)
        }),
        ("guest.worst_spike_ms", "worst spike", Unit::Ms, |r| {
            View::of(r).spikes.iter().map(|s| s.dur_ms).reduce(f64::max)
        }),
        (
            "guest.spike_excess_ms",
            "spike excess, sum",
            Unit::Ms,
            |r| {
                let spikes = View::of(r).spikes;
                (!spikes.is_empty()).then(|| spikes.iter().map(|s| s.excess_ms).sum())
            },
        ),
        (
            "guest.spike_explained",
            "excess explained by vCPU blocking",
            Unit::Share,
            explained,
        ),
        (
            "guest.correlation",
            "correlation with blocking",
            Unit::Coefficient,
            |r| r.guest.as_ref()?.correlation.filter(|c| c.is_finite()),
        ),
    ];
    for (id, name, unit, get) in FIGURES {
        push(
            out,
            reports,
            (id.to_owned(), name.to_owned()),
            Section::Guest,
            unit,
            get,
        );
    }
}

/// The share of all spike excess that vCPU blocking explains (each spike's
/// explained share weighted by its excess); `None` without excess.
fn explained(r: &Report) -> Option<f64> {
    let spikes = View::of(r).spikes;
    let excess: f64 = spikes.iter().map(|s| s.excess_ms).sum();
    (excess > 0.0).then(|| {
        spikes
            .iter()
            .map(|s| s.explained * s.excess_ms)
            .sum::<f64>()
            / excess
    })
}

fn finding_rows(reports: &[&Report]) -> Vec<FindingRow> {
    let mut seen = BTreeSet::new();
    let mut rows = Vec::new();
    for f in reports.iter().flat_map(|r| &r.findings) {
        if seen.insert(f.rule) {
            rows.push(FindingRow {
                rule: f.rule,
                severity: reports
                    .iter()
                    .map(|r| {
                        r.findings
                            .iter()
                            .find(|g| g.rule == f.rule)
                            .map(|g| g.severity)
                    })
                    .collect(),
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_deltas_of_unmeasured_or_zero_baselines_are_null() {
        let f = Figure::new(
            "x".into(),
            "x".into(),
            Section::Service,
            Unit::Us,
            vec![Some(0.0), Some(2.0), None],
        );
        assert_eq!(f.ratio, vec![None, None, None]);
        assert_eq!(f.delta, vec![Some(0.0), Some(2.0), None]);
        let g = Figure::new(
            "y".into(),
            "y".into(),
            Section::Service,
            Unit::Us,
            vec![Some(4.0), Some(2.0), Some(f64::NAN)],
        );
        assert_eq!(g.ratio, vec![Some(1.0), Some(0.5), None]);
        assert_eq!(g.delta, vec![Some(0.0), Some(-2.0), None]);
        let h = Figure::new(
            "z".into(),
            "z".into(),
            Section::Service,
            Unit::Us,
            vec![None, Some(1.0)],
        );
        assert_eq!(h.ratio, vec![None, None]);
        assert_eq!(h.delta, vec![None, None]);
    }
}
