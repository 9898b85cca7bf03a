//! The terminal rendering of a [`Report`]: lays out the figures of its
//! [`View`] in fixed-width sections. Every string from a trace or a guest log
//! goes through [`escape`] first, so no byte of a trace reaches a terminal as
//! a control sequence.

use std::fmt::Write;

use crate::engine::lifecycle::Stage;
use crate::report::view::{count, not_recorded, pct, resolutions, uffd_activity, with_unit, View};
use crate::report::Report;

/// Makes text from a trace safe for a terminal: C0 and C1 control characters
/// (ESC, BEL, CR, NUL, newlines, DEL, U+0080..U+009F) and the backslash are
/// shown visibly as `\xNN` / `\\`; everything else is kept.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(o, "\\x{:02x}", u32::from(c));
            }
            c => o.push(c),
        }
    }
    o
}

fn opt(v: Option<f64>) -> String {
    with_unit(v, "")
}

/// The terminal report.
pub fn render_text(r: &Report) -> String {
    let view = View::of(r);
    let mut o = String::new();
    header(&mut o, r, &view);
    faults(&mut o, r, &view);
    threads(&mut o, &view);
    blocktime(&mut o, r, &view);
    network(&mut o, r);
    guest(&mut o, r, &view);
    slowest(&mut o, r);
    o
}

fn heading(o: &mut String, title: &str) {
    let _ = writeln!(o, "{title}");
    let _ = writeln!(o, "{}", "-".repeat(title.chars().count()));
}

fn header(o: &mut String, r: &Report, view: &View<'_>) {
    for w in view.warnings {
        let _ = writeln!(o, "!! WARNING: {}", escape(w));
    }
    if !view.warnings.is_empty() {
        let _ = writeln!(o);
    }
    let t = &r.trace;
    let _ = writeln!(o, "uffdscope report: {}", escape(&t.path));
    let _ = writeln!(o, "{}", "=".repeat(72));
    let _ = writeln!(
        o,
        "target   pid {} ({}) on {} kernel {}",
        t.target.pid,
        escape(&t.target.comm),
        escape(&t.host),
        escape(&t.kernel)
    );
    let _ = writeln!(
        o,
        "trace    {} events over {}, {} drops{}",
        t.events,
        with_unit(t.duration_s, " s"),
        t.drops,
        t.end
            .as_ref()
            .map_or(String::new(), |e| format!(", ended: {}", escape(e)))
    );
    let _ = writeln!(o, "setup    {}", escape(&view.context));
    if let Some(note) = not_recorded(r) {
        let _ = writeln!(o, "detail   {note}");
    }
    if let Some(clock) = &view.clock {
        let _ = writeln!(o, "source   {}", escape(clock));
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "{}", escape(&view.headline));
    let _ = writeln!(o);
    findings(o, view);
}

fn findings(o: &mut String, view: &View<'_>) {
    if view.findings.is_empty() {
        return;
    }
    heading(o, "Findings");
    for f in view.findings {
        let _ = writeln!(o, "* [{}] {}", f.rule, escape(&f.text));
        if let Some(knob) = f.knob {
            let _ = writeln!(o, "  try: {knob}");
        }
    }
    let _ = writeln!(o);
}

/// One line of the stage table: p50, p90, p99, max, count, share.
fn stage_line(o: &mut String, name: &str, p: [Option<f64>; 4], count: u64, share: Option<f64>) {
    // A name longer than its column takes from the first figure's.
    let first = 10usize.saturating_sub(name.chars().count().saturating_sub(10));
    let _ = writeln!(
        o,
        "{:<10} {:>first$} {:>10} {:>10} {:>10} {:>10} {:>7}",
        name,
        opt(p[0]),
        opt(p[1]),
        opt(p[2]),
        opt(p[3]),
        count,
        share.map_or_else(String::new, |s| pct(Some(s)))
    );
}

fn faults(o: &mut String, r: &Report, view: &View<'_>) {
    let f = &r.faults;
    heading(o, "Faults");
    let res: Vec<String> = resolutions(f)
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let _ = writeln!(o, "count {}  ({})", f.count, res.join(", "));
    let _ = writeln!(o, "{}", uffd_activity(r));
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "stage (µs)", "p50", "p90", "p99", "max", "count", "share"
    );
    for row in &view.stages {
        let p = row.p;
        let figures = [p.p50, p.p90, p.p99, p.max];
        stage_line(o, row.stage.as_str(), figures, p.count, row.share);
        if row.stage == Stage::Network {
            for part in &view.network_split {
                let p = part.p;
                let name = format!("{}{}", " ".repeat(part.part.depth()), part.part.name());
                stage_line(o, &name, [p.p50, p.p90, p.p99, p.max], p.count, part.share);
            }
        }
    }
    for (name, p) in [("service", &f.service_us), ("blocked", &f.blocked_us)] {
        stage_line(o, name, [p.p50, p.p90, p.p99, p.max], p.count, None);
    }
    if let Some(consistent) = f.stage_sum_consistent {
        let _ = writeln!(
            o,
            "stages add up to the service latency for {consistent} of {} faults with a known entry",
            f.with_service
        );
    }
    if let Some(note) = &view.split_note {
        let _ = writeln!(o, "indented: {note}");
    }
    if let Some(b) = &view.bounded {
        let _ = writeln!(o, "{b}");
    }
    let _ = writeln!(o);
}

fn threads(o: &mut String, view: &View<'_>) {
    heading(o, "Threads");
    let _ = writeln!(
        o,
        "{:>8} {:<18} {:<8} {:>8} {:>11} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "tid",
        "name",
        "role",
        "faults",
        "blocked ms",
        "p50 µs",
        "p99 µs",
        "reads",
        "placed",
        "cpu ms"
    );
    for th in &view.threads {
        let _ = writeln!(
            o,
            "{:>8} {:<18} {:<8} {:>8} {:>11.1} {:>9} {:>9} {:>8} {:>8} {:>8}",
            th.tid,
            th.name.as_deref().map_or_else(|| "?".to_owned(), escape),
            th.role.as_str(),
            th.faults,
            th.blocked_ms,
            opt(th.service_p50_us),
            opt(th.service_p99_us),
            count(th.uffd_reads),
            count(th.placements),
            opt(th.cpu_ms)
        );
    }
    let _ = writeln!(o);
}

fn blocktime(o: &mut String, r: &Report, view: &View<'_>) {
    let bt = &r.blocktime_ms;
    heading(o, "vCPU blocktime");
    let _ = writeln!(
        o,
        "uffdscope: sum over {} vCPUs {:.1} ms, all vCPUs blocked at once {}",
        bt.vcpus,
        bt.vcpu_sum,
        with_unit(bt.all_vcpus_overlap, " ms")
    );
    match &bt.qemu_view {
        Some(q) => {
            let _ = writeln!(
                o,
                "QEMU's accounting replayed (message read → placed; counts {} vCPU faults, cannot see {}, of them {} read then dropped): sum {:.1} ms, per vCPU {:?} ms, all blocked {}; closing at the ioctl exit instead: sum {:.1} ms",
                q.faults,
                q.unseen_faults,
                q.overwritten,
                q.vcpu_sum,
                q.per_vcpu,
                with_unit(q.all_vcpus_overlap, " ms"),
                q.vcpu_sum_close_at_exit
            );
        }
        None => {
            let _ = writeln!(
                o,
                "QEMU's accounting replayed: n/a (uffd reads not recorded)"
            );
        }
    }
    if let Some(q) = &r.qemu {
        let ratio =
            |a: Option<f64>| a.map_or_else(String::new, |a| format!(" (replay/QEMU = {a:.2})"));
        let _ = writeln!(
            o,
            "QEMU reports: postcopy-blocktime {}{}, per vCPU {}{}",
            with_unit(q.blocktime_ms, " ms"),
            ratio(q.agreement),
            q.vcpu_blocktime_ms
                .as_ref()
                .map_or_else(|| "n/a".to_owned(), |v| format!("{v:?} ms")),
            ratio(q.vcpu_agreement)
        );
        if let Some(remark) = &q.remark {
            let _ = writeln!(o, "note: {}", escape(remark));
        }
        if !q.status_timeline.is_empty() {
            let tl: Vec<String> = q
                .status_timeline
                .iter()
                .map(|c| format!("{:.2}s {}", c.at_s, escape(&c.status)))
                .collect();
            let _ = writeln!(o, "migration: {}", tl.join(" → "));
        }
    }
    let _ = writeln!(o, "{}", escape(&view.qemu_latency));
    let _ = writeln!(o);
}

fn network(o: &mut String, r: &Report) {
    if r.network.channels.is_empty() {
        return;
    }
    heading(o, "Network");
    for c in &r.network.channels {
        let _ = writeln!(
            o,
            "{:<12} {} → {}  srtt p50 {} p99 {}  retrans {}  rx {} B  tx {} B  requests {}",
            c.role.as_str(),
            escape(&c.local),
            escape(&c.remote),
            with_unit(c.srtt_us.p50, " µs"),
            with_unit(c.srtt_us.p99, " µs"),
            c.retransmits,
            c.bytes_rx,
            c.bytes_tx,
            c.page_requests
        );
    }
    let _ = writeln!(o);
}

fn guest(o: &mut String, r: &Report, view: &View<'_>) {
    let (Some(g), Some(gf)) = (&r.guest, &view.guest) else {
        return;
    };
    heading(o, "Guest");
    let _ = writeln!(
        o,
        "{} samples ({}); alignment: {}{}",
        g.samples,
        gf.lines,
        escape(&g.alignment),
        gf.offset
    );
    let _ = writeln!(
        o,
        "baseline {} ({}), correlation with vCPU blocking {}",
        with_unit(g.baseline_ms, " ms"),
        g.baseline_from,
        gf.correlation
    );
    if !g.spikes.is_empty() {
        let _ = writeln!(
            o,
            "{:>9} {:>9} {:>10} {:>8} {:>11} {:>7} {:>10}  phase",
            "at s", "dur ms", "excess ms", "vCPU", "blocked ms", "faults", "explained"
        );
        for sp in &view.spikes {
            let _ = writeln!(
                o,
                "{:>9.2} {:>9.0} {:>10.0} {:>8} {:>11.1} {:>7} {:>10}  {}",
                sp.start,
                sp.dur_ms,
                sp.excess_ms,
                sp.vcpu_tid
                    .map_or_else(|| "?".to_owned(), |t| t.to_string()),
                sp.blocked_ms,
                sp.faults,
                pct(Some(sp.explained)),
                sp.phase.as_str()
            );
        }
        if let Some(a) = view.after_spikes {
            let _ = writeln!(
                o,
                "+ {} spikes after the migration completed (up to {:.0} ms, {} faults, {:.1} ms blocked): not post-copy faults",
                a.count, a.worst_ms, a.faults, a.blocked_ms
            );
        }
    }
    let _ = writeln!(o);
}

fn slowest(o: &mut String, r: &Report) {
    let f = &r.faults;
    if f.slowest.is_empty() {
        return;
    }
    heading(o, "Slowest faults");
    for sf in &f.slowest {
        let stages: Vec<String> = Stage::ALL
            .iter()
            .map(|st| {
                let v = sf.stages_us.get(st.as_str()).copied().flatten();
                format!("{} {}", st.as_str(), opt(v))
            })
            .collect();
        let _ = writeln!(
            o,
            "{:>8.3}s tid {} page {} {:<10} service {} µs | {}",
            sf.at_s,
            sf.tid,
            escape(&sf.page),
            sf.resolution.as_str(),
            opt(sf.service_us),
            stages.join(" → ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_shows_control_characters_visibly() {
        assert_eq!(escape("\u{1b}[2J"), "\\x1b[2J");
        assert_eq!(escape("bell\u{7}cr\rnul\0"), "bell\\x07cr\\x0dnul\\x00");
        assert_eq!(escape("c1\u{9b}31m del\u{7f}"), "c1\\x9b31m del\\x7f");
        assert_eq!(escape("two\nlines\ttab"), "two\\x0alines\\x09tab");
        assert_eq!(
            escape("a\\x1b"),
            "a\\\\x1b",
            "a literal backslash cannot fake an escape"
        );
        assert_eq!(escape("CPU 0/KVM µs →"), "CPU 0/KVM µs →");
    }
}
