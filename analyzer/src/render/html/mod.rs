//! The HTML rendering of a [`Report`]: one self-contained file (inline CSS and
//! inline SVG drawn here; no scripts, fonts or stylesheets from anywhere) that
//! can be attached to a bug and opened offline. [`plots`] draws the SVG plots,
//! [`tables`] the cards and tables; this module lays out the page.
//!
//! Every string that came from a trace or a guest log goes through [`escape`]
//! (ARCHITECTURE.md, "Safety rules"). Numbers are formatted here and need no escaping.

mod escape;
mod plots;
mod tables;

use std::fmt::Write;

pub use escape::escape;

use crate::engine::lifecycle::Stage;
use crate::report::view::{num, View};
use crate::report::Report;
use plots::{guest_plot, latency_plot, timeline_plot};
use tables::{blocktime, cards, findings, guest, network, slowest, stages, threads};
use uffdscope_trace::record::Role;

fn stage_color(stage: Stage) -> &'static str {
    match stage {
        Stage::Queue => "#8e6cc6",
        Stage::Request => "#f0a04b",
        Stage::Network => "#2f6fd6",
        Stage::Place => "#27a08f",
        Stage::Wake => "#a3acb9",
    }
}

fn stage_help(stage: Stage) -> &'static str {
    match stage {
        Stage::Queue => "fault entry → the fault thread reads the uffd message",
        Stage::Request => "message read → page request sent",
        Stage::Network => {
            "request sent (or read) → placement begins: round trip, source service, queueing"
        }
        Stage::Place => "UFFDIO_COPY/ZEROPAGE entry → faulting thread woken",
        Stage::Wake => "woken → running again",
    }
}
const BLUE: &str = "#2f6fd6";
const RED: &str = "#d1342f";
const ORANGE: &str = "#f0a04b";
const GREY: &str = "#8a94a3";

/// The page's content security policy: inline styles only. The report has no
/// script, image, font or fetch of its own, so a string that slipped past
/// [`escape`] still could neither run nor load anything
/// (`tests/html_browser.rs` checks this in Chromium).
const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'";

const CSS: &str = r#"
:root{--fg:#1d2330;--muted:#5d6778;--line:#e3e7ee;--bg:#f6f8fb;--card:#fff;--accent:#2f6fd6;--bad:#d1342f}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:28px 28px 40px;overflow-wrap:anywhere}
header h1{margin:0;font-size:22px;font-weight:650;letter-spacing:-.01em}
header .path{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px;color:var(--muted);word-break:break-all}
header .meta{color:var(--muted);font-size:13px;margin-top:4px}
.warn{background:#fff1f0;border:1px solid #f3b7b3;border-left:5px solid var(--bad);border-radius:6px;padding:10px 14px;margin:14px 0 0;font-weight:650;color:#8a1f1b}
.findings li{margin:6px 0}.knob{color:var(--muted)}tr.sub td{font-size:12px}
.headline{font-size:16px;background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 18px;margin:18px 0}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:12px;margin:0 0 8px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px}
.card .k{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:22px;font-weight:650;margin:2px 0;font-variant-numeric:tabular-nums}
.card .s{font-size:12px;color:var(--muted)}
.card.bad{border-color:#f3b7b3;background:#fff7f6}.card.bad .v{color:var(--bad)}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:16px 20px;margin:16px 0}
section h2{font-size:16px;margin:0 0 4px;font-weight:650}
section .note{color:var(--muted);font-size:12.5px;margin:2px 0 10px}
table{border-collapse:collapse;width:100%;font-size:13px;font-variant-numeric:tabular-nums}
th,td{padding:5px 8px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{font-weight:600;color:var(--muted);font-size:12px;background:#fafbfd}
td.l,th.l{text-align:left}
td.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;white-space:normal}
tr:last-child td{border-bottom:none}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;vertical-align:-1px}
.pill{display:inline-block;padding:0 7px;border-radius:9px;font-size:11.5px;font-weight:600;color:#fff}
.legend{display:flex;flex-wrap:wrap;gap:6px 16px;font-size:12.5px;color:var(--muted);margin:6px 0 0}
.chips{display:flex;flex-wrap:wrap;gap:6px;margin:8px 0 0}
.chip{background:#eef2f8;border-radius:12px;padding:2px 10px;font-size:12.5px}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:20px}
@media (max-width:900px){.grid2{grid-template-columns:1fr}}
svg{display:block;width:100%;height:auto}
svg text{font:11px system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;fill:#5d6778}
svg .axis{stroke:#c9d0db;stroke-width:1}
svg .gridl{stroke:#eef1f5;stroke-width:1}
.bar{background:#eef1f5;border-radius:3px;height:8px;min-width:60px;position:relative}
.bar>span{position:absolute;left:0;top:0;bottom:0;border-radius:3px}
footer{color:var(--muted);font-size:12px;text-align:center;margin-top:20px}
"#;

/// A duration given in µs, in the unit that reads best.
fn dur_us(v: Option<f64>) -> String {
    match v {
        None => "n/a".to_owned(),
        Some(us) if us.abs() < 1_000.0 => format!("{} µs", num(Some(us))),
        Some(us) if us.abs() < 1_000_000.0 => format!("{} ms", num(Some(us / 1e3))),
        Some(us) => format!("{} s", num(Some(us / 1e6))),
    }
}

fn dur_ms(v: Option<f64>) -> String {
    dur_us(v.map(|ms| ms * 1e3))
}

fn role_color(role: Role) -> &'static str {
    match role {
        Role::Vcpu => BLUE,
        Role::Fault => "#8e6cc6",
        Role::Listen => "#27a08f",
        Role::Preempt => "#3f9b4a",
        Role::Other | Role::MigSource | Role::ReturnPath => GREY,
    }
}

/// Renders the whole report as one self-contained HTML document.
pub fn render_html(r: &Report) -> String {
    let view = View::of(r);
    let t = &r.trace;
    let mut o = String::with_capacity(64 * 1024);
    let _ = write!(
        o,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="{CSP}"><meta name="viewport" content="width=device-width,initial-scale=1"><title>uffdscope report: {}</title><style>{CSS}</style></head><body><main>"#,
        escape(&t.path)
    );
    let _ = write!(
        o,
        r#"<header><h1>uffdscope report</h1><div class="path">{}</div><div class="meta">{} (pid {}) on {} · kernel {} · {} events over {} · {} drops{}</div></header>"#,
        escape(&t.path),
        escape(&t.target.comm),
        t.target.pid,
        escape(&t.host),
        escape(&t.kernel),
        t.events,
        t.duration_s
            .map_or_else(|| "n/a".to_owned(), |d| format!("{} s", num(Some(d)))),
        t.drops,
        t.end
            .as_deref()
            .map_or_else(String::new, |e| format!(" · ended: {}", escape(e)))
    );
    for w in view.warnings {
        let _ = write!(o, r#"<div class="warn">⚠ {}</div>"#, escape(w));
    }
    let _ = write!(o, r#"<p class="headline">{}</p>"#, escape(&view.headline));
    let _ = write!(o, r#"<p class="note">Setup: {}</p>"#, escape(&view.context));
    if let Some(note) = crate::report::view::not_recorded(r) {
        let _ = write!(o, r#"<p class="note">Detail: {}</p>"#, escape(&note));
    }
    if let Some(clock) = &view.clock {
        let _ = write!(o, r#"<p class="note">{}</p>"#, escape(clock));
    }
    findings(&mut o, &view);
    cards(&mut o, r);
    stages(&mut o, r, &view);
    latency_plot(&mut o, r);
    guest_plot(&mut o, r);
    timeline_plot(&mut o, r);
    guest(&mut o, r, &view);
    blocktime(&mut o, r);
    let _ = write!(o, r#"<p class="note">{}</p>"#, escape(&view.qemu_latency));
    threads(&mut o, &view);
    network(&mut o, r);
    slowest(&mut o, r);
    let _ = write!(
        o,
        "<footer>{} · {} · trace format v{}</footer></main></body></html>",
        escape(&t.tool),
        r.schema,
        t.format_version
    );
    o.push('\n');
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{analyze, Options};
    use uffdscope_trace::record::{GuestLine, Record, Role, ThreadInfo};
    use uffdscope_trace::{TraceMeta, TraceReader};

    #[test]
    fn a_trace_without_faults_renders() {
        let bytes = uffdscope_trace::write_all(&TraceMeta::default(), &[]);
        let reader = TraceReader::new(&bytes[..]).expect("header");
        let report = analyze(reader, "empty.trace", &Options::default());
        let html = render_html(&report);
        assert!(html.contains("No userfaultfd faults were recorded."));
        assert!(html.contains("No fault has a known service latency."));
        for bad in ["NaN", "\"inf", "\"-inf"] {
            assert!(!html.contains(bad), "{bad} in an attribute:\n{html}");
        }
    }

    #[test]
    fn strings_from_the_trace_are_escaped() {
        let evil = "<script>alert(1)</script>";
        let meta = TraceMeta {
            tool: format!("tool {evil}"),
            host: evil.to_owned(),
            kernel: evil.to_owned(),
            target_comm: evil.to_owned(),
            ..TraceMeta::default()
        };
        let mut records = vec![Record::Thread(ThreadInfo {
            ts: 1_000,
            tid: 7,
            name: evil.to_owned(),
            role: Role::Fault,
        })];
        for i in 0..5u64 {
            records.push(Record::GuestLine(GuestLine {
                ts: 1_000_000_000 + i * 400_000_000,
                text: format!(
                    "{evil} (1): INFO: {}ms copied 1 GB in {}ms",
                    1_700_000_000_000 + i * 400,
                    if i == 3 { 900 } else { 400 }
                ),
            }));
        }
        let bytes = uffdscope_trace::write_all(&meta, &records);
        let reader = TraceReader::new(&bytes[..]).expect("header");
        let report = analyze(reader, &format!("/tmp/{evil}.trace"), &Options::default());
        assert!(
            report.guest.as_ref().is_some_and(|g| !g.spikes.is_empty()),
            "the test needs a spike whose source carries the payload"
        );
        let html = render_html(&report);
        assert!(!html.contains("<script"), "unescaped payload in:\n{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }
}
