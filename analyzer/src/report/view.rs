//! What every renderer shows of a [`Report`]: the headline sentence, the
//! warnings, how figures and shares are written, which thread rows and stage
//! rows appear and in what order, how guest spikes after the migration are
//! summarised. Renderers (text, markdown, HTML) only lay these out; they never
//! decide a figure and never call one another.

use std::fmt::Write;

use crate::analysis::vcpu_index;
use crate::engine::guest::{Phase, Spike};
use crate::engine::lifecycle::Stage;
use crate::report::{Report, StagePercentiles, ThreadRow};
use uffdscope_trace::record::Role;

/// A figure with 3 significant-ish digits (`1234`, `12.3`, `1.23`), or `n/a`
/// (also for a figure that is not finite).
pub fn num(v: Option<f64>) -> String {
    match v.filter(|x| x.is_finite()) {
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
        None => "n/a".to_owned(),
    }
}

/// A share (0..=1) as a whole percentage; a non-zero share under 1% is `<1%`;
/// `n/a` when unknown or not finite.
pub fn pct(v: Option<f64>) -> String {
    match v.filter(|x| x.is_finite()) {
        Some(x) if x > 0.0 && x < 0.01 => "<1%".to_owned(),
        Some(x) => format!("{:.0}%", x * 100.0),
        None => "n/a".to_owned(),
    }
}

/// A figure with its unit, or `n/a` without one.
pub fn with_unit(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "n/a".to_owned(), |x| format!("{}{unit}", num(Some(x))))
}

/// One row of the stage table.
#[derive(Debug, Clone, Copy)]
pub struct StageRow {
    pub stage: Stage,
    pub p: StagePercentiles,
    /// Share of the summed service-stage time; `None` for the wake stage.
    pub share: Option<f64>,
}

/// Spikes after the migration completed, summarised in one line: no page
/// was missing then, so they are not post-copy faults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AfterSpikes {
    pub count: usize,
    pub worst_ms: f64,
    pub faults: u64,
    pub blocked_ms: f64,
}

/// The guest section's summary figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFigures {
    /// Lines by kind: `N guestperf, N plain, N json, N other lines`.
    pub lines: String,
    /// ` (offset N ms)` when the guest clock offset is known, else empty.
    pub offset: String,
    /// Correlation of interval duration with vCPU blocking, 2 decimals, or `n/a`.
    pub correlation: String,
}

/// The figures every renderer shows.
#[derive(Debug)]
pub struct View<'a> {
    pub headline: String,
    /// Every warning, in the order they are shown (first in every format).
    pub warnings: &'a [String],
    pub stages: Vec<StageRow>,
    /// Thread rows worth a line: faulting threads and threads with a role.
    pub threads: Vec<&'a ThreadRow>,
    /// Guest spikes during or before post-copy, in time order.
    pub spikes: Vec<&'a Spike>,
    pub after_spikes: Option<AfterSpikes>,
    /// Which figures are only upper bounds, when some are.
    pub bounded: Option<String>,
    pub guest: Option<GuestFigures>,
}

impl<'a> View<'a> {
    pub fn of(r: &'a Report) -> Self {
        let spikes: Vec<&Spike> = r.guest.iter().flat_map(|g| &g.spikes).collect();
        let (after, spikes): (Vec<&Spike>, Vec<&Spike>) =
            spikes.into_iter().partition(|s| s.phase == Phase::After);
        Self {
            headline: headline(r),
            warnings: &r.warnings,
            stages: stage_rows(r),
            threads: r
                .threads
                .iter()
                .filter(|t| t.faults > 0 || t.role != Role::Other)
                .collect(),
            spikes,
            after_spikes: (!after.is_empty()).then(|| AfterSpikes {
                count: after.len(),
                worst_ms: after.iter().map(|s| s.dur_ms).fold(0.0, f64::max),
                faults: after.iter().map(|s| s.faults).sum(),
                blocked_ms: after.iter().map(|s| s.blocked_ms).sum(),
            }),
            bounded: r.faults.bounded.wake.filter(|n| *n > 0).map(|n| {
                format!(
                    "{n} of {} faults ran again at a moment the trace did not see: their wake stage and blocked time are upper bounds",
                    r.faults.count
                )
            }),
            guest: r.guest.as_ref().map(|g| GuestFigures {
                lines: format!(
                    "{} guestperf, {} plain, {} json, {} other lines",
                    g.lines.guestperf, g.lines.plain, g.lines.json, g.lines.unknown
                ),
                offset: g
                    .offset_ms
                    .map_or_else(String::new, |o| format!(" (offset {o:.0} ms)")),
                correlation: g
                    .correlation
                    .filter(|c| c.is_finite())
                    .map_or_else(|| "n/a".to_owned(), |c| format!("{c:.2}")),
            }),
        }
    }
}

fn stage_rows(r: &Report) -> Vec<StageRow> {
    let f = &r.faults;
    Stage::ALL
        .iter()
        .filter_map(|&stage| {
            let name = stage.as_str();
            Some(StageRow {
                stage,
                p: *f.stages_us.get(name)?,
                share: f.stage_share.get(name).copied().flatten(),
            })
        })
        .collect()
}

/// The headline: one or two sentences a bug reader needs.
fn headline(r: &Report) -> String {
    let f = &r.faults;
    if f.count == 0 {
        return "No userfaultfd faults were recorded.".to_owned();
    }
    let mut s = format!(
        "{} faults; service latency p50 {} / p99 {} / max {}",
        f.count,
        with_unit(f.service_us.p50, " µs"),
        with_unit(f.service_us.p99, " µs"),
        with_unit(f.service_us.max, " µs"),
    );
    if let Some(n) = f
        .stage_share
        .get(Stage::Network.as_str())
        .copied()
        .flatten()
    {
        let _ = write!(
            s,
            "; {} of the known stage time was network plus source",
            pct(Some(n))
        );
    }
    s.push('.');
    let worst = r
        .guest
        .iter()
        .flat_map(|g| &g.spikes)
        .max_by(|a, b| a.excess_ms.total_cmp(&b.excess_ms));
    if let Some(worst) = worst {
        let _ = write!(
            s,
            " Worst guest spike: {:.0} ms at {:.1} s, {} explained by vCPU {} blocked {:.0} ms on {} faults.",
            worst.dur_ms,
            worst.start,
            pct(Some(worst.explained)),
            worst.vcpu_tid.map_or_else(|| "?".to_owned(), |t| t.to_string()),
            worst.blocked_ms,
            worst.faults
        );
    }
    s
}

/// vCPU threads with blocked time, in guest CPU order (by the `CPU n/` of
/// their names, unnamed last by tid): `(cpu index, tid, name, blocked ms)`.
pub fn vcpus_in_cpu_order(r: &Report) -> Vec<(Option<u32>, u32, Option<&str>, f64)> {
    let mut rows: Vec<_> = r
        .blocktime_ms
        .per_vcpu
        .iter()
        .filter_map(|(tid, ms)| {
            let tid: u32 = tid.parse().ok()?;
            let name = r
                .threads
                .iter()
                .find(|t| t.tid == tid)
                .and_then(|t| t.name.as_deref());
            Some((name.and_then(vcpu_index), tid, name, *ms))
        })
        .collect();
    rows.sort_by_key(|(cpu, tid, _, _)| (cpu.is_none(), *cpu, *tid));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_figures_and_shares() {
        assert_eq!(num(Some(1234.5)), "1234");
        assert_eq!(num(Some(-12.34)), "-12.3");
        assert_eq!(num(Some(1.234)), "1.23");
        assert_eq!(num(None), "n/a");
        assert_eq!(pct(Some(0.004)), "<1%");
        assert_eq!(pct(Some(0.0)), "0%");
        assert_eq!(pct(Some(0.926)), "93%");
        assert_eq!(pct(None), "n/a");
        assert_eq!(pct(Some(f64::NAN)), "n/a");
        assert_eq!(num(Some(f64::INFINITY)), "n/a");
        assert_eq!(with_unit(Some(2.0), " ms"), "2.00 ms");
        assert_eq!(with_unit(None, " ms"), "n/a");
    }
}
