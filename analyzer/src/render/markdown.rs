//! The markdown rendering of a [`Report`]: a compact, GitHub-flavoured summary
//! meant to be pasted into a bug or an issue comment. Warnings come first, in
//! bold; tables are capped so the whole thing stays comment-sized.

use std::fmt::Write;

use crate::engine::lifecycle::Stage;
use crate::report::view::{self, num, View};
use crate::report::{Report, StagePercentiles};

/// Rows kept per table before "… and N more".
const MAX_THREADS: usize = 12;
const MAX_SPIKES: usize = 8;
const MAX_SLOW: usize = 5;

/// Escapes text from a trace or guest log for a markdown table cell or line:
/// no table breaks, no emphasis or links, no raw HTML.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '~' | '#' | '!' => {
                o.push('\\');
                o.push(c);
            }
            '\n' | '\r' | '\t' => o.push(' '),
            c if c.is_control() => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

fn pct(v: Option<f64>) -> String {
    escape(&view::pct(v))
}

/// Renders the markdown report.
pub fn render_markdown(r: &Report) -> String {
    let view = View::of(r);
    let mut o = String::new();
    header(&mut o, r, &view);
    faults(&mut o, r, &view);
    threads(&mut o, &view);
    blocktime(&mut o, r);
    let _ = writeln!(o, "{}\n", escape(&view.qemu_latency));
    guest(&mut o, r, &view);
    slowest(&mut o, r);
    let t = &r.trace;
    let _ = writeln!(
        o,
        "<sub>{} · {} · trace format v{}</sub>",
        escape(&t.tool),
        r.schema,
        t.format_version
    );
    o
}

fn header(o: &mut String, r: &Report, view: &View<'_>) {
    let t = &r.trace;
    let _ = writeln!(o, "### uffdscope report: {}", escape(&t.path));
    let _ = writeln!(o);
    if !view.warnings.is_empty() {
        let lines: Vec<String> = view
            .warnings
            .iter()
            .map(|w| format!("> **⚠ WARNING: {}**", escape(w)))
            .collect();
        let _ = writeln!(o, "{}\n", lines.join("\n>\n"));
    }
    let _ = writeln!(o, "**{}**", escape(&view.headline));
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{} (pid {}) on {}, kernel {} · {} events over {} s · {} drops{}",
        escape(&t.target.comm),
        t.target.pid,
        escape(&t.host),
        escape(&t.kernel),
        t.events,
        num(t.duration_s),
        t.drops,
        t.end
            .as_deref()
            .map_or_else(String::new, |e| format!(" · ended: {}", escape(e)))
    );
    let _ = writeln!(o);
    let _ = writeln!(o, "Setup: {}", escape(&view.context));
    if let Some(note) = view::not_recorded(r) {
        let _ = writeln!(o);
        let _ = writeln!(o, "Detail: {}", escape(&note));
    }
    if let Some(clock) = &view.clock {
        let _ = writeln!(o, "\n{}", escape(clock));
    }
    let _ = writeln!(o);
    findings(o, view);
}

fn findings(o: &mut String, view: &View<'_>) {
    if view.findings.is_empty() {
        return;
    }
    let _ = writeln!(o, "#### Findings");
    let _ = writeln!(o);
    for f in view.findings {
        let knob = f
            .knob
            .map_or_else(String::new, |k| format!(" *Try:* {}.", escape(k)));
        let _ = writeln!(o, "- **`{}`** {}{knob}", f.rule, escape(&f.text));
    }
    let _ = writeln!(o);
}

fn faults(o: &mut String, r: &Report, view: &View<'_>) {
    let f = &r.faults;
    let res: Vec<String> = view::resolutions(f)
        .iter()
        .map(|(k, n)| format!("{} {n}", escape(k)))
        .collect();
    let _ = writeln!(
        o,
        "**{} faults** ({}); {} messages read, {} page requests, {} placements.",
        f.count,
        if res.is_empty() {
            "none".to_owned()
        } else {
            res.join(", ")
        },
        view::count(f.messages_read),
        view::count(f.page_requests),
        view::count(f.placements.as_ref().map(|p| p.values().sum::<u64>()))
    );
    let _ = writeln!(o);
    let _ = writeln!(o, "| stage (µs) | p50 | p90 | p99 | max | count | share |");
    let _ = writeln!(o, "|---|--:|--:|--:|--:|--:|--:|");
    for row in &view.stages {
        stage_row(o, row.stage.as_str(), &row.p, row.share);
        if row.stage == Stage::Network {
            for part in &view.network_split {
                stage_row(o, &format!("↳ {}", part.part.name()), &part.p, part.share);
            }
        }
    }
    for (name, p) in [("**service**", &f.service_us), ("blocked", &f.blocked_us)] {
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {} | {} | {} | |",
            num(p.p50),
            num(p.p90),
            num(p.p99),
            num(p.max),
            p.count
        );
    }
    if let Some(note) = &view.split_note {
        let _ = writeln!(o, "\n↳ rows: {}", escape(note));
    }
    if let Some(b) = &view.bounded {
        let _ = writeln!(o, "\n{}", escape(b));
    }
    let _ = writeln!(o);
}

/// One row of the stage table: p50, p90, p99, max, count, share.
fn stage_row(o: &mut String, name: &str, p: &StagePercentiles, share: Option<f64>) {
    let _ = writeln!(
        o,
        "| {name} | {} | {} | {} | {} | {} | {} |",
        num(p.p50),
        num(p.p90),
        num(p.p99),
        num(p.max),
        p.count,
        share.map_or_else(String::new, |s| pct(Some(s)))
    );
}

fn threads(o: &mut String, view: &View<'_>) {
    let threads = &view.threads;
    if threads.is_empty() {
        return;
    }
    let _ = writeln!(o, "<details><summary>Threads ({})</summary>", threads.len());
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "| tid | name | role | faults | blocked ms | p50 µs | p99 µs | reads | placed |"
    );
    let _ = writeln!(o, "|--:|---|---|--:|--:|--:|--:|--:|--:|");
    for th in threads.iter().take(MAX_THREADS) {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {:.1} | {} | {} | {} | {} |",
            th.tid,
            th.name.as_deref().map_or_else(|| "?".to_owned(), escape),
            th.role.as_str(),
            th.faults,
            th.blocked_ms,
            num(th.service_p50_us),
            num(th.service_p99_us),
            view::count(th.uffd_reads),
            view::count(th.placements)
        );
    }
    if threads.len() > MAX_THREADS {
        let _ = writeln!(o, "\n… and {} more threads.", threads.len() - MAX_THREADS);
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "</details>");
    let _ = writeln!(o);
}

fn blocktime(o: &mut String, r: &Report) {
    let bt = &r.blocktime_ms;
    let _ = writeln!(o, "**vCPU blocktime** ({} vCPUs)", bt.vcpus);
    let _ = writeln!(o);
    let _ = writeln!(o, "| ms | sum over vCPUs | all vCPUs blocked at once |");
    let _ = writeln!(o, "|---|--:|--:|");
    let _ = writeln!(
        o,
        "| uffdscope (blocked → running) | {:.1} | {} |",
        bt.vcpu_sum,
        num(bt.all_vcpus_overlap)
    );
    if let Some(q) = &bt.qemu_view {
        let _ = writeln!(
            o,
            "| QEMU's accounting, replayed (read → placed; counts {} faults, cannot see {}) | {:.1} | {} |",
            q.faults,
            q.unseen_faults,
            q.vcpu_sum,
            num(q.all_vcpus_overlap)
        );
    }
    if let Some(q) = &r.qemu {
        let _ = writeln!(
            o,
            "| QEMU `postcopy-(vcpu-)blocktime` | {} | {} |",
            num(q.vcpu_blocktime_ms.as_ref().map(|v| v.iter().sum())),
            num(q.blocktime_ms)
        );
        let _ = writeln!(o);
        let mut notes = Vec::new();
        if let Some(a) = q.vcpu_agreement {
            notes.push(format!("Replayed / QEMU per-vCPU sum = {a:.2}."));
        }
        if let Some(a) = q.agreement {
            notes.push(format!("Replayed / QEMU all-blocked = {a:.2}."));
        }
        if let Some(remark) = &q.remark {
            notes.push(format!("Note: {}", escape(remark)));
        }
        if !q.status_timeline.is_empty() {
            let tl: Vec<String> = q
                .status_timeline
                .iter()
                .map(|c| format!("{:.2} s {}", c.at_s, escape(&c.status)))
                .collect();
            notes.push(format!("Migration: {}.", tl.join(" → ")));
        }
        if !notes.is_empty() {
            let _ = writeln!(o, "{}", notes.join(" "));
        }
    }
    let _ = writeln!(o);
}

fn guest(o: &mut String, r: &Report, view: &View<'_>) {
    let (Some(g), Some(gf)) = (&r.guest, &view.guest) else {
        return;
    };
    let _ = writeln!(
        o,
        "**Guest**: {} samples, baseline {} ms ({}), correlation with vCPU blocking {}, alignment {}{}.",
        g.samples,
        num(g.baseline_ms),
        escape(g.baseline_from),
        gf.correlation,
        escape(&g.alignment),
        gf.offset
    );
    let _ = writeln!(o);
    if g.spikes.is_empty() {
        return;
    }
    spike_table(o, view);
    if let Some(a) = view.after_spikes {
        let _ = writeln!(
            o,
            "\n{} more spikes (up to {:.0} ms) came after the migration completed: not post-copy faults.",
            a.count, a.worst_ms
        );
    }
    let _ = writeln!(o);
}

/// The largest spikes during the migration, in time order.
fn spike_table(o: &mut String, view: &View<'_>) {
    let mut worst = view.spikes.clone();
    worst.sort_by(|a, b| b.excess_ms.total_cmp(&a.excess_ms));
    worst.truncate(MAX_SPIKES);
    worst.sort_by(|a, b| a.start.total_cmp(&b.start));
    if !worst.is_empty() {
        let _ = writeln!(
            o,
            "| at s | printed ms | wall ms | excess ms | vCPU | blocked ms | faults | explained |"
        );
        let _ = writeln!(o, "|--:|--:|--:|--:|--:|--:|--:|--:|");
    }
    for sp in worst {
        let _ = writeln!(
            o,
            "| {:.2} | {:.0} | {:.0} | {:.0} | {} | {:.1} | {} | {} |",
            sp.start,
            sp.dur_ms,
            sp.wall_ms,
            sp.excess_ms,
            sp.vcpu_tid
                .map_or_else(|| "?".to_owned(), |t| t.to_string()),
            sp.blocked_ms,
            sp.faults,
            pct(Some(sp.explained))
        );
    }
    if view.spikes.len() > MAX_SPIKES {
        let _ = writeln!(
            o,
            "\n{} spikes in all; the {MAX_SPIKES} largest are shown.",
            view.spikes.len()
        );
    }
}

fn slowest(o: &mut String, r: &Report) {
    let f = &r.faults;
    if f.slowest.is_empty() {
        return;
    }
    let _ = writeln!(o, "**Slowest faults** (µs)");
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "| at s | tid | page | resolution | service | queue | request | network | place | wake |"
    );
    let _ = writeln!(o, "|--:|--:|---|---|--:|--:|--:|--:|--:|--:|");
    for sf in f.slowest.iter().take(MAX_SLOW) {
        let stages: Vec<String> = Stage::ALL
            .iter()
            .map(|s| num(sf.stages_us.get(s.as_str()).copied().flatten()))
            .collect();
        let _ = writeln!(
            o,
            "| {:.3} | {} | {} | {} | {} | {} |",
            sf.at_s,
            sf.tid,
            escape(&sf.page),
            escape(sf.resolution.as_str()),
            num(sf.service_us),
            stages.join(" | ")
        );
    }
    let _ = writeln!(o);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_tables_markup_and_html() {
        assert_eq!(escape("a|b"), "a\\|b");
        assert_eq!(
            escape("<script>x</script>"),
            "&lt;script&gt;x&lt;/script&gt;"
        );
        assert_eq!(escape("**bold** [l](u)"), "\\*\\*bold\\*\\* \\[l\\](u)");
        assert_eq!(escape("two\nlines"), "two lines");
        assert_eq!(
            escape("a\u{1b}[2J\u{7}\0\u{9b}b"),
            "a\u{fffd}\\[2J\u{fffd}\u{fffd}\u{fffd}b"
        );
        assert_eq!(escape("CPU 0/TCG"), "CPU 0/TCG");
    }

    #[test]
    fn a_trace_without_faults_renders() {
        use crate::analysis::{analyze, Options};
        let bytes = uffdscope_trace::write_all(&uffdscope_trace::TraceMeta::default(), &[]);
        let reader = uffdscope_trace::TraceReader::new(&bytes[..]).expect("header");
        let md = render_markdown(&analyze(reader, "empty.trace", &Options::default()));
        assert!(md.contains("**0 faults** (none)"), "{md}");
    }
}
