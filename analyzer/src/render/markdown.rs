//! The markdown rendering of a [`Report`]: a compact, GitHub-flavoured summary
//! meant to be pasted into a bug or an issue comment. Warnings come first, in
//! bold; tables are capped so the whole thing stays comment-sized.

use crate::render::format::num;
use std::fmt::Write;

use crate::engine::guest::Phase;
use crate::engine::lifecycle::Stage;
use crate::report::Report;
use uffdscope_trace::record::Role;

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
    escape(&crate::render::format::pct(v))
}

/// Renders the markdown report.
pub fn render_markdown(r: &Report) -> String {
    let mut o = String::new();
    let t = &r.trace;
    let _ = writeln!(o, "### uffdscope report: {}", escape(&t.path));
    let _ = writeln!(o);
    if !r.warnings.is_empty() {
        let lines: Vec<String> = r
            .warnings
            .iter()
            .map(|w| format!("> **⚠ WARNING: {}**", escape(w)))
            .collect();
        let _ = writeln!(o, "{}\n", lines.join("\n>\n"));
    }
    let _ = writeln!(o, "**{}**", escape(&crate::render::text::headline(r)));
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

    let f = &r.faults;
    let res: Vec<String> = f
        .by_resolution
        .iter()
        .filter(|(_, n)| **n > 0)
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
        f.messages_read,
        f.page_requests,
        f.placements.values().sum::<u64>()
    );
    let _ = writeln!(o);
    let _ = writeln!(o, "| stage (µs) | p50 | p90 | p99 | max | count | share |");
    let _ = writeln!(o, "|---|--:|--:|--:|--:|--:|--:|");
    for stage in Stage::ALL {
        let name = stage.as_str();
        if let Some(p) = f.stages_us.get(name) {
            let share = f.stage_share.get(name).copied().flatten();
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
    let _ = writeln!(o);

    let threads: Vec<_> = r
        .threads
        .iter()
        .filter(|t| t.faults > 0 || t.role != Role::Other)
        .collect();
    if !threads.is_empty() {
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
                th.uffd_reads,
                th.placements
            );
        }
        if threads.len() > MAX_THREADS {
            let _ = writeln!(o, "\n… and {} more threads.", threads.len() - MAX_THREADS);
        }
        let _ = writeln!(o);
        let _ = writeln!(o, "</details>");
        let _ = writeln!(o);
    }

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
    let _ = writeln!(
        o,
        "| QEMU's accounting, replayed (read → placed; counts {} faults, cannot see {}) | {:.1} | {} |",
        bt.qemu_view.faults,
        bt.qemu_view.unseen_faults,
        bt.qemu_view.vcpu_sum,
        num(bt.qemu_view.all_vcpus_overlap)
    );
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

    if let Some(g) = &r.guest {
        let _ = writeln!(
            o,
            "**Guest**: {} samples, baseline {} ms ({}), correlation with vCPU blocking {}, alignment {}{}.",
            g.samples,
            num(g.baseline_ms),
            escape(g.baseline_from),
            g.correlation.map_or_else(|| "n/a".to_owned(), |c| format!("{c:.2}")),
            escape(&g.alignment),
            g.offset_ms
                .map_or_else(String::new, |o| format!(" (offset {o:.0} ms)"))
        );
        let _ = writeln!(o);
        if !g.spikes.is_empty() {
            // Spikes after the migration completed cannot come from missing
            // pages: summarised in one line below.
            let (after, during): (Vec<_>, Vec<_>) =
                g.spikes.iter().partition(|s| s.phase == Phase::After);
            let mut worst = during.clone();
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
            if during.len() > MAX_SPIKES {
                let _ = writeln!(
                    o,
                    "\n{} spikes in all; the {MAX_SPIKES} largest are shown.",
                    during.len()
                );
            }
            if !after.is_empty() {
                let worst = after.iter().map(|s| s.dur_ms).fold(0.0, f64::max);
                let _ = writeln!(
                    o,
                    "\n{} more spikes (up to {worst:.0} ms) came after the migration completed: not post-copy faults.",
                    after.len()
                );
            }
            let _ = writeln!(o);
        }
    }

    if !f.slowest.is_empty() {
        let _ = writeln!(o, "**Slowest faults** (µs)");
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "| at s | tid | page | resolution | service | queue | request | network | place | wake |"
        );
        let _ = writeln!(o, "|--:|--:|---|---|--:|--:|--:|--:|--:|--:|");
        for sf in f.slowest.iter().take(MAX_SLOW) {
            let stage = |s: Stage| num(sf.stages_us.get(s.as_str()).copied().flatten());
            let _ = writeln!(
                o,
                "| {:.3} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                sf.at_s,
                sf.tid,
                escape(&sf.page),
                escape(sf.resolution.as_str()),
                num(sf.service_us),
                stage(Stage::Queue),
                stage(Stage::Request),
                stage(Stage::Network),
                stage(Stage::Place),
                stage(Stage::Wake)
            );
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(
        o,
        "<sub>{} · {} · trace format v{}</sub>",
        escape(&t.tool),
        r.schema,
        t.format_version
    );
    o
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
        assert_eq!(escape("CPU 0/TCG"), "CPU 0/TCG");
    }
}
