//! What the comparison shows: which figure changed most against the baseline
//! and the sentence that says so ([`Change`]), and how each cell, ratio and
//! delta is written. The comparison renderers (`render::compare`) only lay
//! these out.

use std::fmt::Write;

use serde::Serialize;

use crate::compare::{Figure, FindingRow, RunInfo, Section, Unit};
use crate::report::findings::Severity;
use crate::report::view::num;

/// A time figure whose ratio to the baseline stays within this much of 1 has
/// not changed.
pub const UNCHANGED_WITHIN: f64 = 0.05;

/// A time figure under this many µs in both runs is left out of "what
/// changed most": tens of µs move with the host's load from run to run.
pub const NOISE_FLOOR_US: f64 = 100.0;

/// Whether a figure can be "what changed most" between runs `0` and `i`: a
/// time at or above [`NOISE_FLOOR_US`] in one of them, not decided by a
/// single fault (`max`, `p999`), and measured rather than modelled (the
/// replay of QEMU's accounting is a model whose bounds depend on the set-up:
/// ARCHITECTURE.md, "Fidelity against QEMU" in the README).
pub fn can_change_most(f: &Figure, i: usize) -> bool {
    let us = |v: Option<f64>| match f.unit {
        Unit::Us => v,
        Unit::Ms => v.map(|ms| ms * 1000.0),
        _ => None,
    };
    let above_floor = [f.values[0], f.values[i]]
        .into_iter()
        .any(|v| us(v).is_some_and(|us| us.abs() >= NOISE_FLOOR_US));
    above_floor
        && !matches!(f.id.rsplit('.').next(), Some("max" | "p999"))
        && !f.id.contains(".qemu_view.")
}

/// The figure every sentence names besides the one that changed most.
const HEADLINE: &str = "faults.service_us.p99";

/// What changed most in one run against the baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub label: String,
    pub against: String,
    /// The id of the time figure whose ratio to the baseline is furthest
    /// from 1 (either way), among the figures [`can_change_most`] admits; `null`
    /// when none changed by more than [`UNCHANGED_WITHIN`].
    pub figure: Option<String>,
    pub ratio: Option<f64>,
    /// Rules that fired in this run and not in the baseline, and the reverse.
    pub findings_new: Vec<&'static str>,
    pub findings_gone: Vec<&'static str>,
    pub sentence: String,
}

/// The change of each run after the first against the first.
pub fn changes(runs: &[RunInfo], figures: &[Figure], findings: &[FindingRow]) -> Vec<Change> {
    (1..runs.len())
        .map(|i| change(runs, i, figures, findings))
        .collect()
}

fn change(runs: &[RunInfo], i: usize, figures: &[Figure], findings: &[FindingRow]) -> Change {
    let (label, against) = (&runs[i].label, &runs[0].label);
    let most = figures
        .iter()
        .filter(|f| can_change_most(f, i))
        .filter_map(|f| Some((f, f.ratio[i].filter(|r| *r > 0.0)?)))
        .max_by(|(_, a), (_, b)| a.ln().abs().total_cmp(&b.ln().abs()))
        .filter(|(_, r)| (r - 1.0).abs() > UNCHANGED_WITHIN);
    let fired = |run: usize| {
        findings
            .iter()
            .filter(move |row| row.severity[run].is_some())
            .map(|row| row.rule)
    };
    let findings_new: Vec<&'static str> = fired(i).filter(|r| !fired(0).any(|b| b == *r)).collect();
    let findings_gone: Vec<&'static str> =
        fired(0).filter(|r| !fired(i).any(|b| b == *r)).collect();
    let sentence = if most.is_none() && findings_new.is_empty() && findings_gone.is_empty() {
        format!(
            "{label} against {against}: nothing changed (every time of {NOISE_FLOOR_US:.0} µs or more within {:.0}%, the same findings).",
            UNCHANGED_WITHIN * 100.0
        )
    } else {
        sentence(
            &format!("{label} against {against}: "),
            most.map(|(f, r)| (f, i, r)),
            figures,
            (&findings_new, &findings_gone),
        )
    };
    Change {
        label: label.clone(),
        against: against.clone(),
        figure: most.map(|(f, _)| f.id.clone()),
        ratio: most.map(|(_, r)| r),
        findings_new,
        findings_gone,
        sentence,
    }
}

/// The sentence of a run in which something changed: the figure that
/// changed most and the service p99, then the findings that came and went.
fn sentence(
    opening: &str,
    most: Option<(&Figure, usize, f64)>,
    figures: &[Figure],
    (new, gone): (&[&str], &[&str]),
) -> String {
    let mut s = opening.to_owned();
    match most {
        Some((f, i, ratio)) => {
            let _ = write!(s, "{} changed most, {}", f.name, from_to(f, i, ratio));
            let headline = figures.iter().find(|h| h.id == HEADLINE && h.id != f.id);
            if let Some((head, r)) = headline.and_then(|h| Some((h, h.ratio[i]?))) {
                let _ = write!(s, "; {} {}", head.name, from_to(head, i, r));
            }
            s.push('.');
        }
        None => {
            let _ = write!(
                s,
                "no time of {NOISE_FLOOR_US:.0} µs or more changed by more than {:.0}%.",
                UNCHANGED_WITHIN * 100.0
            );
        }
    }
    if new.is_empty() && gone.is_empty() {
        s.push_str(" The same findings fired.");
    }
    if !new.is_empty() {
        let _ = write!(s, " New findings: {}.", new.join(", "));
    }
    if !gone.is_empty() {
        let _ = write!(s, " Findings gone: {}.", gone.join(", "));
    }
    s
}

/// `1.20 ms → 4.80 ms (×4.00)`.
fn from_to(f: &Figure, i: usize, ratio: f64) -> String {
    format!(
        "{} → {} ({})",
        with_unit(f.values[0], f.unit),
        with_unit(f.values[i], f.unit),
        self::ratio(Some(ratio))
    )
}

/// What an unmeasured cell, ratio or delta shows.
pub const UNMEASURED: &str = "–";

/// A value in its unit's form, without the unit: `812`, `1.23`, `45%`, `0.82`.
pub fn value(v: Option<f64>, unit: Unit) -> String {
    let Some(v) = v.filter(|v| v.is_finite()) else {
        return UNMEASURED.to_owned();
    };
    match unit {
        Unit::Us | Unit::Ms | Unit::S => num(Some(v)),
        Unit::Count => format!("{v:.0}"),
        Unit::Share => crate::report::view::pct(Some(v)),
        Unit::Coefficient => format!("{v:.2}"),
    }
}

/// A value with its unit: `812 µs`, `45%`.
pub fn with_unit(v: Option<f64>, unit: Unit) -> String {
    let shown = value(v, unit);
    match unit_name(unit) {
        Some(u) if v.is_some_and(f64::is_finite) => format!("{shown} {u}"),
        _ => shown,
    }
}

/// A ratio to the baseline: `×1.00`, `×0.31`.
pub fn ratio(r: Option<f64>) -> String {
    match r.filter(|r| r.is_finite()) {
        None => UNMEASURED.to_owned(),
        Some(r) if r >= 1000.0 => format!("×{r:.1e}"),
        Some(r) if r >= 100.0 => format!("×{r:.0}"),
        Some(r) if r >= 0.01 || r == 0.0 => format!("×{r:.2}"),
        Some(r) => format!("×{r:.1e}"),
    }
}

/// A delta against the baseline, signed: `+12.3`, `-4.00`, `+5 pp` for shares.
pub fn delta(d: Option<f64>, unit: Unit) -> String {
    let Some(d) = d.filter(|d| d.is_finite()) else {
        return UNMEASURED.to_owned();
    };
    let magnitude = match unit {
        Unit::Share => format!("{:.0} pp", d.abs() * 100.0),
        unit => value(Some(d.abs()), unit),
    };
    // A delta that rounds to zero is `+0`, never `-0`.
    let shown_nonzero = magnitude.chars().any(|c| matches!(c, '1'..='9'));
    let sign = if d < 0.0 && shown_nonzero { "-" } else { "+" };
    format!("{sign}{magnitude}")
}

/// The unit as a figure's name shows it, for figures that have one.
pub fn unit_name(unit: Unit) -> Option<&'static str> {
    match unit {
        Unit::Us => Some("µs"),
        Unit::Ms => Some("ms"),
        Unit::S => Some("s"),
        Unit::Count | Unit::Share | Unit::Coefficient => None,
    }
}

/// A figure's name with its unit: `service p99, µs`.
pub fn name(f: &Figure) -> String {
    match unit_name(f.unit) {
        Some(u) => format!("{}, {u}", f.name),
        None => f.name.clone(),
    }
}

/// A section's title.
pub fn title(section: Section) -> &'static str {
    match section {
        Section::Faults => "Faults",
        Section::Service => "Service latency (fault → woken)",
        Section::Blocked => "Blocked time (switch-out → switch-in)",
        Section::Stages => "Stages",
        Section::NetworkSplit => "The network stage of requested faults, taken apart",
        Section::Blocktime => "vCPU blocktime",
        Section::Guest => "Guest spikes during post-copy",
    }
}

/// A finding's severity in a run, or [`UNMEASURED`] where it did not fire.
pub fn severity(s: Option<Severity>) -> &'static str {
    match s {
        Some(Severity::Warning) => "warning",
        Some(Severity::Cause) => "cause",
        Some(Severity::Info) => "info",
        None => UNMEASURED,
    }
}

/// A run's key letter in column heads: `A` for the baseline, then `B`, `C`,
/// ...; `R27`, `R28`, ... past `Z`.
pub fn key(i: usize) -> String {
    match u8::try_from(i).ok().filter(|i| *i < 26) {
        Some(i) => char::from(b'A' + i).to_string(),
        None => format!("R{}", i + 1),
    }
}

/// The column heads after the figure's name: each run's label, then each
/// later run's ratio and delta against the baseline by key (`B/A`, `B−A`).
pub fn heads(runs: &[RunInfo]) -> Vec<String> {
    let mut heads: Vec<String> = runs.iter().map(|r| r.label.clone()).collect();
    heads.extend((1..runs.len()).map(|i| format!("{}/{}", key(i), key(0))));
    heads.extend((1..runs.len()).map(|i| format!("{}−{}", key(i), key(0))));
    heads
}

/// A figure's cells under [`heads`].
pub fn cells(f: &Figure) -> Vec<String> {
    let mut cells: Vec<String> = f.values.iter().map(|v| value(*v, f.unit)).collect();
    cells.extend(f.ratio[1..].iter().map(|r| ratio(*r)));
    cells.extend(f.delta[1..].iter().map(|d| delta(*d, f.unit)));
    cells
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_write_unmeasured_as_a_dash_and_sign_deltas() {
        assert_eq!(value(None, Unit::Us), "–");
        assert_eq!(ratio(None), "–");
        assert_eq!(ratio(Some(3.2)), "×3.20");
        assert_eq!(ratio(Some(0.002)), "×2.0e-3");
        assert_eq!(ratio(Some(123.4)), "×123");
        assert_eq!(ratio(Some(26_116_095.0)), "×2.6e7");
        assert_eq!(delta(Some(-4.0), Unit::Ms), "-4.00");
        assert_eq!(delta(Some(0.0), Unit::Us), "+0.00");
        assert_eq!(delta(Some(0.12), Unit::Share), "+12 pp");
        assert_eq!(delta(Some(-0.001), Unit::Share), "+0 pp");
        assert_eq!(delta(Some(-0.001), Unit::Us), "+0.00");
        assert_eq!(with_unit(Some(812.0), Unit::Us), "812 µs");
        assert_eq!(with_unit(None, Unit::Us), "–");
        assert_eq!(
            (key(0), key(1), key(25), key(26)),
            ("A".into(), "B".into(), "Z".into(), "R27".into())
        );
    }
}
