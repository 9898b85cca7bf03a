//! What every renderer shows of a [`Report`]: the headline sentence, the
//! warnings, how figures and shares are written, which thread rows and stage
//! rows appear and in what order, how guest spikes after the migration are
//! summarised. Renderers (text, markdown, HTML) only lay these out; they never
//! decide a figure and never call one another.

use std::fmt::Write;

use crate::analysis::vcpu_index;
use crate::engine::guest::{Phase, Spike};
use crate::engine::lifecycle::Stage;
use crate::report::findings::Finding;
use crate::report::{FaultSection, Report, StagePercentiles, ThreadRow, TraceSection};
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

/// A count that may not have been recorded: the number, or `n/a`.
pub fn count(n: Option<u64>) -> String {
    n.map_or_else(|| "n/a".to_owned(), |n| n.to_string())
}

/// The resolutions that have faults, with their counts (unrecorded ones,
/// `null` in the JSON, are left out).
pub fn resolutions(f: &FaultSection) -> Vec<(&str, u64)> {
    f.by_resolution
        .iter()
        .filter_map(|(k, n)| n.filter(|&n| n > 0).map(|n| (k.as_str(), n)))
        .collect()
}

/// What the fault thread and the placing threads did, in one line; or what
/// the recording level left out.
pub fn uffd_activity(r: &Report) -> String {
    let f = &r.faults;
    let (Some(read), Some(reads), Some(failed), Some(requests), Some(placements)) = (
        f.messages_read,
        f.uffd_reads,
        f.failed_reads,
        f.page_requests,
        f.placements.as_ref(),
    ) else {
        let level = level_name(&r.trace);
        return format!(
            "uffd reads, page requests and placements: not recorded at --detail {level}"
        );
    };
    let placed: Vec<String> = placements.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!(
        "messages read {read} in {reads} reads ({failed} failed/EAGAIN), page requests {requests}, placements {}",
        if placed.is_empty() { "none".to_owned() } else { placed.join(", ") }
    )
}

/// The sentence that says what the recording's `--detail` level left out;
/// `None` when it recorded everything.
pub fn not_recorded(r: &Report) -> Option<String> {
    let t = &r.trace;
    if t.not_recorded.is_empty() {
        return None;
    }
    let level = level_name(t);
    Some(format!(
        "recorded at --detail {level}: not recorded: {} (their figures are n/a; record at --detail standard for them)",
        t.not_recorded.join(", ").replace('_', " ")
    ))
}

/// The recording's `--detail` level as `record` spells it.
fn level_name(t: &TraceSection) -> &'static str {
    t.detail
        .map_or("this", uffdscope_trace::record::Detail::as_str)
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
    /// Why faults were slow, most severe first (shown right after the warnings).
    pub findings: &'a [Finding],
    /// The migration's set-up in one line.
    pub context: String,
    /// The network stage of requested faults taken apart, as sub-rows of the
    /// stage table: at the source's two moments when a source trace was
    /// merged, else from the destination's records; empty when no requested
    /// fault had a known split.
    pub network_split: Vec<SplitRow>,
    /// What the sub-rows are, when there are some (renderers say which rows
    /// are the sub-rows).
    pub split_note: Option<String>,
    /// The source clock against the destination's, with a source trace.
    pub clock: Option<String>,
    /// QEMU 10.1's latency figures: replayed, and reported when QEMU did.
    pub qemu_latency: String,
}

/// Which figures are bounds or fallbacks, when some are: faults whose
/// switch-in was not seen, and faults whose resume in user mode was not.
fn bounded_sentence(r: &Report) -> Option<String> {
    let n = r.faults.count;
    let parts: Vec<String> = [
        r.faults.bounded.wake.filter(|k| *k > 0).map(|k| {
            format!("{k} of {n} faults ran again at a moment the trace did not see: their wake stage and blocked time are upper bounds")
        }),
        r.faults.resume_fallback.filter(|k| *k > 0).map(|k| {
            format!("{k} of {n} faults returned to user mode unseen (no rseq, or they blocked again first): their wake stage ends at the switch-in")
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// A part of the network stage of requested faults.
#[derive(Debug, Clone, Copy)]
pub struct SplitRow {
    pub part: SplitPart,
    pub p: StagePercentiles,
    /// Share of the requested faults' summed network time.
    pub share: Option<f64>,
}

/// The parts of the network stage, in the order they are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitPart {
    Wire,
    /// Queued behind the bytes that arrived first on the page's channel.
    Behind,
    Rest,
    /// Within `Rest`: the page's channel received nothing.
    Paused,
    /// With a source trace: request sent → the source received it.
    ToSource,
    /// Received → the source's send of the page entered.
    AtSource,
    /// That send → the placing ioctl entered.
    FromSource,
}

impl SplitPart {
    pub fn name(self) -> &'static str {
        match self {
            SplitPart::Wire => "wire",
            SplitPart::Behind => "behind",
            SplitPart::Rest => "rest",
            SplitPart::Paused => "paused",
            SplitPart::ToSource => "to_source",
            SplitPart::AtSource => "at_source",
            SplitPart::FromSource => "from_source",
        }
    }

    /// How deep the part sits under the network stage (`paused` is in `rest`).
    pub fn depth(self) -> usize {
        if self == SplitPart::Paused {
            2
        } else {
            1
        }
    }
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
            bounded: bounded_sentence(r),
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
            findings: &r.findings,
            context: context_line(r),
            network_split: split_rows(r),
            split_note: split_note(r),
            clock: clock_line(r),
            qemu_latency: qemu_latency_line(r),
        }
    }
}

/// The three sub-stages, when a source trace split some faults.
fn source_rows(r: &Report) -> Option<Vec<SplitRow>> {
    let share = &r.source.as_ref()?.share;
    let st = &r.faults.stages_us;
    let rows: Vec<SplitRow> = [
        (SplitPart::ToSource, st.to_source, share.to_source),
        (SplitPart::AtSource, st.at_source, share.at_source),
        (SplitPart::FromSource, st.from_source, share.from_source),
    ]
    .into_iter()
    .filter_map(|(part, p, share)| Some(SplitRow { part, p: p?, share }))
    .collect();
    (rows.iter().any(|row| row.p.count > 0)).then_some(rows)
}

/// What the stage table's sub-rows are.
fn split_note(r: &Report) -> Option<String> {
    if let (Some(src), Some(_)) = (&r.source, source_rows(r)) {
        let m = &src.matched;
        return Some(format!(
            "the network stage of requested faults split at the source (to_source: request sent → the source received it; at_source: → the source's send of the page; from_source: → the placing ioctl), in place of the destination-only split; {} of {} requested faults matched, {} of them with a page the source had sent before it read the request (at_source 0); shares of their summed network time",
            m.split, m.requested_faults, m.pages_sent_before
        ));
    }
    (!split_rows(r).is_empty()).then(|| {
        "the network stage of requested faults taken apart (wire RTT, behind the stream's bytes, the rest, of it the channel paused); shares of their summed network time".to_owned()
    })
}

/// `source clock: offset −1460.1 ± 29.8 µs at 2.63 s, drift 23.1 ppm, from
/// 665 request and 557 page samples`.
fn clock_line(r: &Report) -> Option<String> {
    let src = r.source.as_ref()?;
    let Some(c) = &r.clock else {
        return Some(format!(
            "source clock: not aligned with {} (see the warnings); no sub-stages",
            src.path
        ));
    };
    let samples = format!(
        "{} request and {} page samples",
        c.samples.requests, c.samples.pages
    );
    Some(match c.bound_us {
        None => format!(
            "source clock: offset {} µs given by --source-offset-us (not measured; {samples} matched), source trace {}",
            num(Some(c.source_offset_us)),
            src.path
        ),
        Some(b) => format!(
            "source clock: offset {} ± {} µs at {:.2} s, drift {} ppm, from {samples}{}; source trace {}",
            num(Some(c.source_offset_us)),
            num(Some(b)),
            c.at_s,
            num(c.drift_ppm),
            if c.contradiction_us.is_some() { " (they contradict each other: see the warnings)" } else { "" },
            src.path
        ),
    })
}

fn split_rows(r: &Report) -> Vec<SplitRow> {
    if let Some(rows) = source_rows(r) {
        return rows;
    }
    let (p, share) = (&r.faults.network_split_us, &r.faults.network_split_share);
    let measured = [p.wire, p.behind_stream, p.rest]
        .iter()
        .any(|part| part.count > 0);
    if !measured {
        return Vec::new();
    }
    vec![
        SplitRow {
            part: SplitPart::Wire,
            p: p.wire,
            share: share.wire,
        },
        SplitRow {
            part: SplitPart::Behind,
            p: p.behind_stream,
            share: share.behind_stream,
        },
        SplitRow {
            part: SplitPart::Rest,
            p: p.rest,
            share: share.rest,
        },
        SplitRow {
            part: SplitPart::Paused,
            p: p.paused,
            share: share.paused,
        },
    ]
}

/// `QEMU 7.2.22 · postcopy-blocktime, postcopy-ram on · this QEMU's
/// max-bandwidth 128 MiB/s, multifd-channels 2 · pages 4 KiB · 1 vCPU ·
/// return_path 127.0.0.1:37489 ↔ ...`
fn context_line(r: &Report) -> String {
    let c = &r.context;
    let mut parts = vec![format!(
        "QEMU {}",
        c.qemu_version.as_deref().unwrap_or("version unknown")
    )];
    match &c.capabilities {
        Some(caps) => {
            let on: Vec<&str> = caps
                .iter()
                .filter(|(_, on)| **on)
                .map(|(k, _)| k.as_str())
                .collect();
            parts.push(if on.is_empty() {
                "no capability on".to_owned()
            } else {
                format!("{} on", on.join(", "))
            });
        }
        None => parts.push("capabilities not recorded".to_owned()),
    }
    if let Some(params) = &c.parameters {
        // The recorder asks the QEMU it traces: a destination's bandwidth
        // limits are its own, not the source's.
        let named: Vec<String> = CONTEXT_PARAMETERS
            .iter()
            .filter_map(|key| Some(format!("{key} {}", parameter(key, params.get(*key)?))))
            .collect();
        if !named.is_empty() {
            parts.push(format!("this QEMU's {}", named.join(", ")));
        }
    }
    let sizes: Vec<String> = c.page_sizes.iter().map(|&b| bytes(b)).collect();
    if !sizes.is_empty() {
        parts.push(format!("pages {}", sizes.join(" + ")));
    }
    parts.push(format!(
        "{} vCPU{}",
        c.vcpus,
        if c.vcpus == 1 { "" } else { "s" }
    ));
    for ch in &c.channels {
        parts.push(format!("{} {} ↔ {}", ch.role.as_str(), ch.local, ch.remote));
    }
    parts.join(" · ")
}

/// The migration parameters a context line names, when QEMU reported them.
const CONTEXT_PARAMETERS: [&str; 5] = [
    "max-bandwidth",
    "max-postcopy-bandwidth",
    "multifd-channels",
    "downtime-limit",
    "postcopy-preempt-break-huge",
];

fn parameter(key: &str, v: &serde_json::Value) -> String {
    match v.as_u64() {
        Some(0) if key.ends_with("bandwidth") => "unlimited".to_owned(),
        Some(n) if key.ends_with("bandwidth") => format!("{}/s", bytes(n)),
        _ => v.to_string(),
    }
}

/// 4096 → `4 KiB`, 2097152 → `2 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    UNITS
        .iter()
        .find(|(size, _)| n >= *size && n.is_multiple_of(*size))
        .map_or_else(
            || format!("{n} B"),
            |(size, unit)| format!("{} {unit}", n / size),
        )
}

/// QEMU 10.1's figures: the replay always, QEMU's own when it reported them.
fn qemu_latency_line(r: &Report) -> String {
    let q = &r.qemu_latency;
    let ms = |ns: Option<u64>| with_unit(ns.map(|n| n as f64 / 1e6), " ms");
    let mut s = match &q.replay {
        Some(replay) => {
            let mut s = format!(
                "QEMU 10.1 post-copy latency, replayed over the trace: mean {} over {} faults that needed a page request",
                ms(replay.latency_ns),
                replay.faults
            );
            let per: Vec<String> = replay.vcpu_latency_ns.iter().map(|v| ms(*v)).collect();
            if !per.is_empty() {
                let _ = write!(s, " (per vCPU {})", per.join(", "));
            }
            s
        }
        None => {
            "QEMU 10.1 post-copy latency, replayed: n/a (page requests not recorded)".to_owned()
        }
    };
    match &q.reported {
        Some(rep) => {
            let _ = write!(s, "; reported by QEMU: mean {}", ms(rep.latency_ns));
        }
        None => s.push_str("; QEMU did not report it (before 10.1, or postcopy-blocktime off)"),
    }
    s
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
