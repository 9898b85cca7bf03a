//! The text and markdown renderings of a [`Comparison`] (`uffdscope
//! compare`): the runs, what changed most, then one table per section with
//! each run's figure, its ratio and its delta against the baseline, then the
//! findings per run. Cells come from [`crate::compare::view`]; labels, paths
//! and warnings are escaped for the output they go to.

use std::fmt::Write;

use crate::compare::view::{self, UNMEASURED};
use crate::compare::{Comparison, Section};
use crate::render::{markdown, text};

/// Rows of one section: the head, then one row per figure (name first).
fn section_rows(c: &Comparison, section: Section) -> Vec<Vec<String>> {
    c.figures
        .iter()
        .filter(|f| f.section == section)
        .map(|f| {
            let mut row = vec![view::name(f)];
            row.extend(view::cells(f));
            row
        })
        .collect()
}

fn findings_rows(c: &Comparison) -> Vec<Vec<String>> {
    c.findings
        .iter()
        .map(|row| {
            let mut cells = vec![row.rule.to_owned()];
            cells.extend(row.severity.iter().map(|s| view::severity(*s).to_owned()));
            cells
        })
        .collect()
}

fn run_line(r: &crate::compare::RunInfo) -> String {
    let duration = r
        .duration_s
        .map_or_else(|| UNMEASURED.to_owned(), |d| format!("{d:.1} s"));
    let mut s = format!("{} faults, {duration}", r.faults);
    if r.drops > 0 {
        let _ = write!(s, ", {} drops", r.drops);
    }
    if !r.complete {
        s.push_str(", incomplete");
    }
    s
}

/// Renders the comparison for a terminal.
pub fn render_text(c: &Comparison) -> String {
    let esc = |s: &str| text::escape(s);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "uffdscope compare: {} runs, baseline {}",
        c.runs.len(),
        esc(&c.runs[0].label)
    );
    for (i, r) in c.runs.iter().enumerate() {
        let _ = writeln!(
            o,
            "  {}  {}  {}  ({})",
            view::key(i),
            esc(&r.label),
            esc(&r.path),
            run_line(r)
        );
        for w in &r.warnings {
            let _ = writeln!(o, "    ! {}", esc(w));
        }
    }
    o.push('\n');
    for change in &c.changes {
        let _ = writeln!(o, "{}", esc(&change.sentence));
    }
    let heads: Vec<String> = view::heads(&c.runs).iter().map(|h| esc(h)).collect();
    for section in Section::ALL {
        let rows = section_rows(c, section);
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(o, "\n{}", view::title(section));
        text_table(&mut o, &heads, &rows);
    }
    if !c.findings.is_empty() {
        let heads: Vec<String> = c.runs.iter().map(|r| esc(&r.label)).collect();
        o.push_str("\nFindings\n");
        text_table(&mut o, &heads, &findings_rows(c));
    }
    o
}

/// A fixed-width table: names left-aligned, cells right-aligned.
fn text_table(o: &mut String, heads: &[String], rows: &[Vec<String>]) {
    let width = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = std::iter::once(0)
        .chain(heads.iter().map(|h| width(h)))
        .collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
        }
    }
    let line = |o: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        o.push_str("  ");
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            let pad = " ".repeat(w.saturating_sub(width(cell)));
            if i == 0 {
                let _ = write!(o, "{cell}{pad}");
            } else {
                let _ = write!(o, "  {pad}{cell}");
            }
        }
        o.push('\n');
    };
    line(
        o,
        &mut std::iter::once("").chain(heads.iter().map(String::as_str)),
    );
    for row in rows {
        line(o, &mut row.iter().map(String::as_str));
    }
}

/// Renders the comparison as GitHub-flavoured markdown.
pub fn render_markdown(c: &Comparison) -> String {
    let esc = |s: &str| markdown::escape(s);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "### uffdscope compare: {} runs, baseline {}\n",
        c.runs.len(),
        esc(&c.runs[0].label)
    );
    for (i, r) in c.runs.iter().enumerate() {
        let _ = writeln!(
            o,
            "- {}: **{}** {} ({})",
            view::key(i),
            esc(&r.label),
            esc(&r.path),
            run_line(r)
        );
        for w in &r.warnings {
            let _ = writeln!(o, "  - **{}**", esc(w));
        }
    }
    o.push('\n');
    for change in &c.changes {
        let _ = writeln!(o, "{}\n", esc(&change.sentence));
    }
    let heads: Vec<String> = view::heads(&c.runs).iter().map(|h| esc(h)).collect();
    for section in Section::ALL {
        let rows = section_rows(c, section);
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(o, "**{}**\n", esc(view::title(section)));
        markdown_table(&mut o, &heads, &rows);
    }
    if !c.findings.is_empty() {
        let heads: Vec<String> = c.runs.iter().map(|r| esc(&r.label)).collect();
        o.push_str("**Findings**\n\n");
        markdown_table(&mut o, &heads, &findings_rows(c));
    }
    let _ = writeln!(o, "<sub>{}</sub>", c.schema);
    o
}

fn markdown_table(o: &mut String, heads: &[String], rows: &[Vec<String>]) {
    let _ = writeln!(o, "| | {} |", heads.join(" | "));
    let _ = writeln!(o, "|---|{}", "---:|".repeat(heads.len()));
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| markdown::escape(c)).collect();
        let _ = writeln!(o, "| {} |", cells.join(" | "));
    }
    o.push('\n');
}
