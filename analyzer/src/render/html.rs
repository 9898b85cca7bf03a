//! The HTML rendering of a [`Report`]: one self-contained file (inline CSS and
//! inline SVG drawn here; no scripts, fonts or stylesheets from anywhere) that
//! can be attached to a bug and opened offline.
//!
//! Every string that came from a trace or a guest log goes through [`escape`]
//! (ARCHITECTURE.md, "Safety rules"). Numbers are formatted here and need no escaping.

use crate::render::format::{num, pct};
use std::fmt::Write;

use crate::engine::guest::Phase;
use crate::engine::lifecycle::Stage;
use crate::engine::stats::QuantilePoint;
use crate::report::{Report, SlowFault, ThreadRow};
use uffdscope_trace::record::Role;

/// Escapes text for HTML element content and quoted attribute values (also
/// inside inline SVG).
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

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

const CSS: &str = r#"
:root{--fg:#1d2330;--muted:#5d6778;--line:#e3e7ee;--bg:#f6f8fb;--card:#fff;--accent:#2f6fd6;--bad:#d1342f}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:28px 28px 40px}
header h1{margin:0;font-size:22px;font-weight:650;letter-spacing:-.01em}
header .path{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px;color:var(--muted);word-break:break-all}
header .meta{color:var(--muted);font-size:13px;margin-top:4px}
.warn{background:#fff1f0;border:1px solid #f3b7b3;border-left:5px solid var(--bad);border-radius:6px;padding:10px 14px;margin:14px 0 0;font-weight:650;color:#8a1f1b}
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
td.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
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
        Role::Other => GREY,
    }
}

/// Ticks at 1-2-5 steps covering `[lo, hi]`, about `n` of them.
fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    let raw = span / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut ticks = Vec::new();
    let mut t = (lo / step).ceil() * step;
    while t <= hi + step * 1e-9 && ticks.len() < 50 {
        ticks.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    ticks
}

/// A value axis rounded up to its last tick.
fn nice_max(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let ticks = nice_ticks(0.0, max, 5);
    let last = ticks.last().copied().unwrap_or(max);
    if last >= max {
        last
    } else {
        let step = if ticks.len() > 1 {
            ticks[1] - ticks[0]
        } else {
            max
        };
        last + step
    }
}

fn tick_label(v: f64) -> String {
    if v == 0.0 {
        "0".to_owned()
    } else if v.abs() >= 10_000.0 {
        format!("{:.0}k", v / 1e3)
    } else if v.abs() >= 1.0 && (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// A plot area in an SVG of `w`×`h` user units, with margins for axes.
struct Plot {
    w: f64,
    h: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Plot {
    fn new(w: f64, h: f64, x: (f64, f64), y: (f64, f64)) -> Self {
        Self {
            w,
            h,
            left: 58.0,
            right: 58.0,
            top: 18.0,
            bottom: 36.0,
            x0: x.0,
            x1: if x.1 > x.0 { x.1 } else { x.0 + 1.0 },
            y0: y.0,
            y1: if y.1 > y.0 { y.1 } else { y.0 + 1.0 },
        }
    }

    fn x(&self, v: f64) -> f64 {
        let f = ((v - self.x0) / (self.x1 - self.x0)).clamp(0.0, 1.0);
        self.left + f * (self.w - self.left - self.right)
    }

    fn y(&self, v: f64) -> f64 {
        self.y_in(v, self.y0, self.y1)
    }

    fn y_in(&self, v: f64, lo: f64, hi: f64) -> f64 {
        let f = ((v - lo) / (hi - lo).max(f64::MIN_POSITIVE)).clamp(0.0, 1.0);
        self.h - self.bottom - f * (self.h - self.top - self.bottom)
    }

    fn open(&self, o: &mut String, label: &str) {
        let _ = write!(
            o,
            r#"<svg viewBox="0 0 {} {}" role="img" aria-label="{}">"#,
            self.w,
            self.h,
            escape(label)
        );
    }

    /// Grid, axes and tick labels; `xticks` carry their own labels.
    fn axes(&self, o: &mut String, xticks: &[(f64, String)], ylabel: &str, xlabel: &str) {
        let (l, r) = (self.left, self.w - self.right);
        let (t, b) = (self.top, self.h - self.bottom);
        for v in nice_ticks(self.y0, self.y1, 5) {
            let y = self.y(v);
            let _ = write!(
                o,
                r#"<line class="gridl" x1="{l:.1}" x2="{r:.1}" y1="{y:.1}" y2="{y:.1}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                l - 6.0,
                y + 3.5,
                tick_label(v)
            );
        }
        for (v, label) in xticks {
            let x = self.x(*v);
            let _ = write!(
                o,
                r#"<line class="axis" x1="{x:.1}" x2="{x:.1}" y1="{b:.1}" y2="{:.1}"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                b + 4.0,
                b + 16.0,
                escape(label)
            );
        }
        let _ = write!(
            o,
            r#"<line class="axis" x1="{l:.1}" x2="{r:.1}" y1="{b:.1}" y2="{b:.1}"/><line class="axis" x1="{l:.1}" x2="{l:.1}" y1="{t:.1}" y2="{b:.1}"/>"#
        );
        let _ = write!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            f64::midpoint(l, r),
            self.h - 4.0,
            escape(xlabel),
            f64::midpoint(t, b),
            escape(ylabel)
        );
    }

    /// A right-hand axis for a second series in `[0, hi]`.
    fn right_axis(&self, o: &mut String, hi: f64, label: &str, color: &str) {
        let r = self.w - self.right;
        for v in nice_ticks(0.0, hi, 4) {
            let y = self.y_in(v, 0.0, hi);
            let _ = write!(
                o,
                r#"<text x="{:.1}" y="{:.1}" style="fill:{color}">{}</text>"#,
                r + 6.0,
                y + 3.5,
                tick_label(v)
            );
        }
        let _ = write!(
            o,
            r#"<line class="axis" x1="{r:.1}" x2="{r:.1}" y1="{:.1}" y2="{:.1}"/><text transform="translate({:.1} {:.1}) rotate(90)" text-anchor="middle" style="fill:{color}">{}</text>"#,
            self.top,
            self.h - self.bottom,
            self.w - 12.0,
            f64::midpoint(self.top, self.h - self.bottom),
            escape(label)
        );
    }
}

fn time_ticks(x1: f64) -> Vec<(f64, String)> {
    nice_ticks(0.0, x1, 10)
        .into_iter()
        .map(|t| (t, format!("{} s", tick_label(t))))
        .collect()
}

fn card(o: &mut String, key: &str, value: &str, sub: &str, bad: bool) {
    let _ = write!(
        o,
        r#"<div class="card{}"><div class="k">{key}</div><div class="v">{value}</div><div class="s">{sub}</div></div>"#,
        if bad { " bad" } else { "" }
    );
}

fn cards(o: &mut String, r: &Report) {
    let f = &r.faults;
    let t = &r.trace;
    o.push_str(r#"<div class="cards">"#);
    let res: Vec<String> = f
        .by_resolution
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{} {n}", escape(&k.replace('_', " "))))
        .collect();
    card(o, "Faults", &f.count.to_string(), &res.join(" · "), false);
    card(
        o,
        "Service p50",
        &dur_us(f.service_us.p50),
        &format!("entry → woken, {} faults", f.service_us.count),
        false,
    );
    card(
        o,
        "Service p99 / max",
        &dur_us(f.service_us.p99),
        &format!("max {}", dur_us(f.service_us.max)),
        false,
    );
    let bt = &r.blocktime_ms;
    card(
        o,
        "vCPU blocktime",
        &dur_ms(Some(bt.vcpu_sum)),
        &format!(
            "sum over {} vCPUs · all blocked {}",
            bt.vcpus,
            dur_ms(bt.all_vcpus_overlap)
        ),
        false,
    );
    if let Some(q) = &r.qemu {
        card(
            o,
            "QEMU blocktime",
            &dur_ms(q.blocktime_ms),
            &match (q.vcpu_agreement, q.agreement) {
                (Some(v), _) => format!("replayed/QEMU per-vCPU sum = {v:.2}"),
                (None, Some(a)) => format!("replayed/QEMU = {a:.2}"),
                (None, None) => "postcopy-blocktime".to_owned(),
            },
            false,
        );
    }
    if let Some(g) = &r.guest {
        match g
            .spikes
            .iter()
            .max_by(|a, b| a.excess_ms.total_cmp(&b.excess_ms))
        {
            Some(w) => card(
                o,
                "Worst guest spike",
                &dur_ms(Some(w.dur_ms)),
                &format!(
                    "{} explained · baseline {}",
                    pct(Some(w.explained)),
                    dur_ms(g.baseline_ms)
                ),
                false,
            ),
            None => card(
                o,
                "Guest",
                "no spikes",
                &format!("baseline {}", dur_ms(g.baseline_ms)),
                false,
            ),
        }
    }
    card(
        o,
        "Trace",
        &t.duration_s
            .map_or_else(|| "n/a".to_owned(), |d| format!("{} s", num(Some(d)))),
        &format!("{} events · {} drops", t.events, t.drops),
        t.drops > 0 || t.damage.is_some(),
    );
    o.push_str("</div>");
}

fn stages(o: &mut String, r: &Report) {
    let f = &r.faults;
    o.push_str(r#"<section id="stages"><h2>Where the time went</h2>"#);
    let _ = write!(
        o,
        r#"<p class="note">Share of the summed stage time (queue → request → network → place) over the faults where it is known. Stages add up to the service latency for {} of {} faults with a known entry.</p>"#,
        f.stage_sum_consistent, f.with_service
    );
    let shares: Vec<(Stage, f64)> = Stage::SERVICE
        .iter()
        .filter_map(|s| {
            f.stage_share
                .get(s.as_str())
                .copied()
                .flatten()
                .map(|v| (*s, v))
        })
        .collect();
    if shares.iter().any(|(_, v)| *v > 0.0) {
        let (w, h) = (1000.0, 46.0);
        let _ = write!(
            o,
            r#"<svg viewBox="0 0 {w} {h}" role="img" aria-label="stage shares">"#
        );
        let mut x = 0.0;
        for (stage, share) in &shares {
            let sw = share * w;
            if sw <= 0.0 {
                continue;
            }
            let name = stage.as_str();
            let _ = write!(
                o,
                r#"<rect x="{x:.2}" y="4" width="{sw:.2}" height="34" fill="{}"><title>{name}: {}</title></rect>"#,
                stage_color(*stage),
                pct(Some(*share))
            );
            if sw > 90.0 {
                let _ = write!(
                    o,
                    r#"<text x="{:.1}" y="25.5" text-anchor="middle" style="fill:#fff;font-weight:600;font-size:13px">{name} {}</text>"#,
                    x + sw / 2.0,
                    pct(Some(*share))
                );
            }
            x += sw;
        }
        o.push_str("</svg>");
    }
    o.push_str(r#"<table style="margin-top:10px"><tr><th class="l">stage</th><th class="l">from → to</th><th>p50</th><th>p90</th><th>p99</th><th>max</th><th>count</th><th>share</th></tr>"#);
    for stage in Stage::ALL {
        let name = stage.as_str();
        let Some(p) = f.stages_us.get(name) else {
            continue;
        };
        let share = f.stage_share.get(name).copied().flatten();
        let _ = write!(
            o,
            r#"<tr><td class="l"><span class="sw" style="background:{}"></span>{name}</td><td class="l" style="color:var(--muted)">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            stage_color(stage),
            stage_help(stage),
            dur_us(p.p50),
            dur_us(p.p90),
            dur_us(p.p99),
            dur_us(p.max),
            p.count,
            share.map_or_else(String::new, |s| pct(Some(s)))
        );
    }
    for (name, help, p) in [
        ("service", "fault entry → woken", &f.service_us),
        ("blocked", "switched out → running again", &f.blocked_us),
    ] {
        let _ = write!(
            o,
            r#"<tr><td class="l"><b>{name}</b></td><td class="l" style="color:var(--muted)">{help}</td><td><b>{}</b></td><td>{}</td><td><b>{}</b></td><td>{}</td><td>{}</td><td></td></tr>"#,
            dur_us(p.p50),
            dur_us(p.p90),
            dur_us(p.p99),
            dur_us(p.max),
            p.count
        );
    }
    o.push_str("</table>");
    let placements: Vec<String> = f
        .placements
        .iter()
        .map(|(k, v)| format!("{} {v}", escape(k)))
        .collect();
    let _ = write!(
        o,
        r#"<p class="note" style="margin-top:10px">{} messages read in {} reads ({} failed) · {} page requests · placements: {}</p>"#,
        f.messages_read,
        f.uffd_reads,
        f.failed_reads,
        f.page_requests,
        if placements.is_empty() {
            "none".to_owned()
        } else {
            placements.join(", ")
        }
    );
    o.push_str("</section>");
}

/// x position of a quantile on a "nines" axis: 0 → 0, 0.9 → 1, 0.99 → 2, …; the
/// maximum sits half a decade past 99.99%.
fn nines(q: f64) -> f64 {
    if q >= 1.0 {
        4.5
    } else {
        (-(1.0 - q).log10()).clamp(0.0, 4.0)
    }
}

fn curve_path(p: &Plot, curve: &[QuantilePoint], scale: f64) -> String {
    let mut d = String::new();
    for (i, pt) in curve.iter().enumerate() {
        let _ = write!(
            d,
            "{}{:.1},{:.1}",
            if i == 0 { "M" } else { "L" },
            p.x(nines(pt.q)),
            p.y(pt.us * scale)
        );
    }
    d
}

fn latency_plot(o: &mut String, r: &Report) {
    let f = &r.faults;
    o.push_str(r#"<section id="latency"><h2>Service latency distribution</h2>"#);
    if f.service_curve_us.is_empty() && f.blocked_curve_us.is_empty() {
        o.push_str(r#"<p class="note">No fault has a known service latency.</p></section>"#);
        return;
    }
    o.push_str(r#"<p class="note">Latency at each percentile (HdrHistogram); the x axis stretches the tail: each step is one more nine.</p>"#);
    let max = f
        .service_curve_us
        .iter()
        .chain(&f.blocked_curve_us)
        .map(|p| p.us)
        .fold(0.0, f64::max);
    // Plot in ms once values reach milliseconds: round ticks read better.
    let (scale, unit) = if max >= 2_000.0 {
        (1e-3, "ms")
    } else {
        (1.0, "µs")
    };
    let p = Plot::new(1000.0, 300.0, (0.0, 4.5), (0.0, nice_max(max * scale)));
    p.open(o, "service latency percentiles");
    let xt: Vec<(f64, String)> = [
        (0.0, "0%"),
        (nines(0.5), "50%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
        (4.5, "max"),
    ]
    .iter()
    .map(|(x, l)| (*x, (*l).to_owned()))
    .collect();
    p.axes(o, &xt, unit, "percentile");
    for (curve, color, dash, name) in [
        (&f.blocked_curve_us, GREY, "5 4", "blocked"),
        (&f.service_curve_us, BLUE, "", "service"),
    ] {
        if curve.is_empty() {
            continue;
        }
        let _ = write!(
            o,
            r#"<path d="{}" fill="none" stroke="{color}" stroke-width="2.2" stroke-dasharray="{dash}"/>"#,
            curve_path(&p, curve, scale)
        );
        for pt in curve {
            let _ = write!(
                o,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"><title>{name} p{}: {}</title></circle>"#,
                p.x(nines(pt.q)),
                p.y(pt.us * scale),
                tick_label(pt.q * 100.0),
                dur_us(Some(pt.us))
            );
        }
    }
    for (q, v) in [
        (0.5, f.service_us.p50),
        (0.99, f.service_us.p99),
        (1.0, f.service_us.max),
    ] {
        if let Some(v) = v {
            let _ = write!(
                o,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end" style="fill:{BLUE};font-weight:600">{}</text>"#,
                p.x(nines(q)) - 6.0,
                p.y(v * scale) - 7.0,
                dur_us(Some(v))
            );
        }
    }
    o.push_str("</svg>");
    let _ = write!(
        o,
        r#"<div class="legend"><span><span class="sw" style="background:{BLUE}"></span>service (entry → woken)</span><span><span class="sw" style="background:{GREY}"></span>blocked (switched out → running)</span></div></section>"#
    );
}

/// The x range of timeline plots, in seconds since trace start.
fn time_span(r: &Report) -> f64 {
    let mut end = r.trace.duration_s.unwrap_or(0.0);
    if let Some(t) = &r.timeline {
        end = end.max(t.blocked_ms.len() as f64 * t.bin_ms / 1e3);
    }
    if let Some(g) = &r.guest {
        for iv in &g.intervals {
            end = end.max(iv.start_s + iv.wall_ms / 1e3);
        }
    }
    end.max(1e-3)
}

/// A step-area path of mean threads blocked per bin, on the right axis `[0, hi]`.
fn blocked_area(p: &Plot, r: &Report, hi: f64) -> Option<String> {
    let t = r.timeline.as_ref()?;
    let bin_s = t.bin_ms / 1e3;
    let base = p.y_in(0.0, 0.0, hi);
    let mut d = format!("M{:.1},{base:.1}", p.x(0.0));
    for (i, ms) in t.blocked_ms.iter().enumerate() {
        let y = p.y_in(ms / t.bin_ms, 0.0, hi);
        let _ = write!(
            d,
            "L{:.1},{y:.1}L{:.1},{y:.1}",
            p.x(i as f64 * bin_s),
            p.x((i + 1) as f64 * bin_s)
        );
    }
    let _ = write!(
        d,
        "L{:.1},{base:.1}Z",
        p.x(t.blocked_ms.len() as f64 * bin_s)
    );
    Some(d)
}

fn blocked_hi(r: &Report) -> f64 {
    let peak = r.timeline.as_ref().map_or(0.0, |t| {
        t.blocked_ms
            .iter()
            .map(|ms| ms / t.bin_ms)
            .fold(0.0, f64::max)
    });
    nice_max(peak.max(r.blocktime_ms.vcpus as f64).max(1.0))
}

fn status_markers(o: &mut String, p: &Plot, r: &Report) {
    let Some(q) = &r.qemu else { return };
    for (i, c) in q.status_timeline.iter().enumerate() {
        let x = p.x(c.at_s);
        let y = p.top + 10.0 + (i % 2) as f64 * 12.0;
        let _ = write!(
            o,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="#55606f" stroke-dasharray="3 3"/><text x="{:.1}" y="{y:.1}" style="fill:#39414d">{}</text>"##,
            p.top,
            p.h - p.bottom,
            x + 4.0,
            escape(&c.status)
        );
    }
}

fn timeline_plot(o: &mut String, r: &Report) {
    let Some(t) = &r.timeline else { return };
    o.push_str(r#"<section id="timeline"><h2>Faults over time</h2>"#);
    let _ = write!(
        o,
        r#"<p class="note">Mean number of faulting threads blocked and the fault rate, per {} ms bin; dashed lines are QEMU migration status changes.</p>"#,
        tick_label(t.bin_ms)
    );
    let span = time_span(r);
    let bin_s = t.bin_ms / 1e3;
    let rate: Vec<f64> = t.faults.iter().map(|n| *n as f64 / bin_s).collect();
    let hi = blocked_hi(r);
    let p = Plot::new(
        1000.0,
        240.0,
        (0.0, span),
        (0.0, nice_max(rate.iter().copied().fold(0.0, f64::max))),
    );
    p.open(o, "faults over time");
    p.axes(o, &time_ticks(span), "faults/s", "time since trace start");
    p.right_axis(o, hi, "threads blocked", ORANGE);
    if let Some(d) = blocked_area(&p, r, hi) {
        let _ = write!(
            o,
            r#"<path d="{d}" fill="{ORANGE}" fill-opacity="0.35" stroke="{ORANGE}" stroke-width="1"/>"#
        );
    }
    let mut d = String::new();
    for (i, v) in rate.iter().enumerate() {
        let _ = write!(
            d,
            "{}{:.1},{:.1}",
            if i == 0 { "M" } else { "L" },
            p.x((i as f64 + 0.5) * bin_s),
            p.y(*v)
        );
    }
    let _ = write!(
        o,
        r#"<path d="{d}" fill="none" stroke="{BLUE}" stroke-width="1.6"/>"#
    );
    status_markers(o, &p, r);
    o.push_str("</svg>");
    let _ = write!(
        o,
        r#"<div class="legend"><span><span class="sw" style="background:{BLUE}"></span>faults per second</span><span><span class="sw" style="background:{ORANGE};opacity:.6"></span>threads blocked (mean over the bin)</span></div></section>"#
    );
}

fn guest_plot(o: &mut String, r: &Report) {
    let Some(g) = &r.guest else { return };
    if g.intervals.is_empty() {
        return;
    }
    o.push_str(r#"<section id="guest-timeline"><h2>Guest timeline</h2>"#);
    let _ = write!(
        o,
        r#"<p class="note">Each guest interval as a bar at the duration the guest printed, from its start to its end on the host clock (alignment: {}). Spikes are red; the shaded area is the number of vCPUs blocked in userfaultfd faults.{}</p>"#,
        escape(&g.alignment),
        if g.intervals.len() < g.samples {
            format!(
                " {} of {} intervals shown (the shortest and longest of each time slice).",
                g.intervals.len(),
                g.samples
            )
        } else {
            String::new()
        }
    );
    let span = time_span(r);
    let max = g.intervals.iter().map(|i| i.dur_ms).fold(0.0, f64::max);
    let hi = blocked_hi(r);
    let p = Plot::new(1000.0, 300.0, (0.0, span), (0.0, nice_max(max * 1.05)));
    p.open(o, "guest interval durations over time");
    p.axes(
        o,
        &time_ticks(span),
        "interval duration (ms)",
        "time since trace start",
    );
    p.right_axis(o, hi, "vCPUs blocked", ORANGE);
    if let Some(d) = blocked_area(&p, r, hi) {
        let _ = write!(
            o,
            r#"<path d="{d}" fill="{ORANGE}" fill-opacity="0.3" stroke="none"/>"#
        );
    }
    if let Some(b) = g.baseline_ms {
        let y = p.y(b);
        let _ = write!(
            o,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#39414d" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" text-anchor="end" style="fill:#39414d">baseline {}</text>"##,
            p.left,
            p.w - p.right,
            p.w - p.right - 4.0,
            y - 5.0,
            dur_ms(Some(b))
        );
    }
    for iv in &g.intervals {
        let (x0, x1) = (p.x(iv.start_s), p.x(iv.start_s + iv.wall_ms / 1e3));
        let y = p.y(iv.dur_ms);
        let color = if iv.spike { RED } else { BLUE };
        let _ = write!(
            o,
            r#"<line x1="{x0:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="{color}" stroke-width="4" stroke-linecap="round"><title>{} at {:.2} s{}</title></line>"#,
            x1.max(x0 + 1.0),
            dur_ms(Some(iv.dur_ms)),
            iv.start_s,
            iv.vcpu_tid
                .map_or_else(String::new, |t| format!(", vCPU tid {t}"))
        );
    }
    status_markers(o, &p, r);
    o.push_str("</svg>");
    let _ = write!(
        o,
        r#"<div class="legend"><span><span class="sw" style="background:{BLUE}"></span>guest interval</span><span><span class="sw" style="background:{RED}"></span>spike</span><span><span class="sw" style="background:{ORANGE};opacity:.6"></span>vCPUs blocked</span></div></section>"#
    );
}

fn threads(o: &mut String, r: &Report) {
    let rows: Vec<&ThreadRow> = r
        .threads
        .iter()
        .filter(|t| t.faults > 0 || t.role != Role::Other)
        .collect();
    if rows.is_empty() {
        return;
    }
    let max_blocked = rows.iter().map(|t| t.blocked_ms).fold(0.0, f64::max);
    o.push_str(r#"<section id="threads"><h2>Threads</h2><p class="note">Roles come from thread names (QEMU <code>debug-threads=on</code>) or from behaviour: the uffd reader is the fault thread, the ioctl caller places pages, threads that block in uffd waits are vCPUs.</p>"#);
    o.push_str(r#"<table><tr><th>tid</th><th class="l">name</th><th class="l">role</th><th>faults</th><th>blocked</th><th class="l" style="width:22%"></th><th>service p50</th><th>service p99</th><th>uffd reads</th><th>placements</th></tr>"#);
    for t in rows {
        let w = if max_blocked > 0.0 {
            t.blocked_ms / max_blocked * 100.0
        } else {
            0.0
        };
        let _ = write!(
            o,
            r#"<tr><td>{}</td><td class="l mono">{}</td><td class="l"><span class="pill" style="background:{}">{}</span></td><td>{}</td><td>{}</td><td class="l"><div class="bar"><span style="width:{w:.1}%;background:{ORANGE}"></span></div></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            t.tid,
            t.name.as_deref().map_or_else(|| "?".to_owned(), escape),
            role_color(t.role),
            t.role.as_str(),
            t.faults,
            if t.faults > 0 {
                dur_ms(Some(t.blocked_ms))
            } else {
                "–".to_owned()
            },
            dur_us(t.service_p50_us),
            dur_us(t.service_p99_us),
            t.uffd_reads,
            t.placements
        );
    }
    o.push_str("</table></section>");
}

/// The guest CPU index of a vCPU thread, from `CPU n/...`.
fn cpu_index(name: Option<&str>) -> Option<usize> {
    name?
        .strip_prefix("CPU ")?
        .split('/')
        .next()?
        .trim()
        .parse()
        .ok()
}

fn blocktime(o: &mut String, r: &Report) {
    let bt = &r.blocktime_ms;
    o.push_str(r#"<section id="blocktime"><h2>vCPU blocktime, compared with QEMU</h2>"#);
    let _ = write!(
        o,
        r#"<p class="note">uffdscope measures each fault from switch-out to running again. QEMU's <code>postcopy-blocktime</code> only sees a fault from the moment its fault thread reads the message until the page is placed, with one slot per vCPU; uffdscope replays that accounting over the trace: it counts {} vCPU faults and cannot see {} ({} of them read, then dropped because the vCPU's next fault was read first; the rest were placed before their message was read).</p>"#,
        bt.qemu_view.faults, bt.qemu_view.unseen_faults, bt.qemu_view.overwritten
    );
    let qemu_sum = r
        .qemu
        .as_ref()
        .and_then(|q| q.vcpu_blocktime_ms.as_ref())
        .map(|v| v.iter().sum::<f64>());
    let qemu_all = r.qemu.as_ref().and_then(|q| q.blocktime_ms);
    let series: [(&str, &str, Option<f64>, Option<f64>); 3] = [
        ("uffdscope", BLUE, Some(bt.vcpu_sum), bt.all_vcpus_overlap),
        (
            "QEMU's accounting, replayed",
            "#7fa7e8",
            Some(bt.qemu_view.vcpu_sum),
            bt.qemu_view.all_vcpus_overlap,
        ),
        ("QEMU reported", "#55606f", qemu_sum, qemu_all),
    ];
    let max = series
        .iter()
        .flat_map(|s| [s.2, s.3])
        .flatten()
        .fold(0.0, f64::max);
    o.push_str(r#"<div class="grid2"><div>"#);
    let p = Plot::new(520.0, 250.0, (0.0, 2.0), (0.0, nice_max(max)));
    p.open(o, "blocktime comparison");
    p.axes(o, &[], "ms", "");
    let group_w = (p.x(1.0) - p.x(0.0)) * 0.8;
    let bar_w = group_w / 3.0;
    for (gi, group) in ["sum over vCPUs", "all vCPUs blocked at once"]
        .iter()
        .enumerate()
    {
        let gx = p.x(gi as f64) + (p.x(1.0) - p.x(0.0)) * 0.1;
        for (si, (name, color, sum, all)) in series.iter().enumerate() {
            let v = if gi == 0 { *sum } else { *all };
            let x = gx + si as f64 * bar_w;
            match v {
                Some(v) => {
                    let y = p.y(v);
                    let _ = write!(
                        o,
                        r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{color}" rx="2"><title>{name}: {} ms</title></rect><text x="{:.1}" y="{:.1}" text-anchor="middle" style="fill:#39414d">{}</text>"#,
                        x + 2.0,
                        bar_w - 4.0,
                        (p.y(0.0) - y).max(0.5),
                        num(Some(v)),
                        x + bar_w / 2.0,
                        y - 4.0,
                        num(Some(v))
                    );
                }
                None => {
                    let _ = write!(
                        o,
                        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">n/a</text>"#,
                        x + bar_w / 2.0,
                        p.y(0.0) - 4.0
                    );
                }
            }
        }
        let _ = write!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" style="font-weight:600">{group}</text>"#,
            gx + group_w / 2.0,
            p.h - p.bottom + 16.0
        );
    }
    o.push_str("</svg><div class=\"legend\">");
    for (name, color, _, _) in &series {
        let _ = write!(
            o,
            r#"<span><span class="sw" style="background:{color}"></span>{name}</span>"#
        );
    }
    o.push_str("</div></div><div>");
    // Per-vCPU comparison: QEMU lists vCPUs by CPU index.
    let qemu_per = r.qemu.as_ref().and_then(|q| q.vcpu_blocktime_ms.as_ref());
    o.push_str(r#"<table><tr><th class="l">vCPU</th><th>tid</th><th>uffdscope</th><th>replayed</th><th>QEMU reported</th></tr>"#);
    let mut rows: Vec<(Option<usize>, u32, Option<&str>, f64)> = bt
        .per_vcpu
        .iter()
        .filter_map(|(tid, ms)| {
            let tid: u32 = tid.parse().ok()?;
            let name = r
                .threads
                .iter()
                .find(|t| t.tid == tid)
                .and_then(|t| t.name.as_deref());
            Some((cpu_index(name), tid, name, *ms))
        })
        .collect();
    rows.sort_by_key(|(cpu, tid, _, _)| (cpu.unwrap_or(usize::MAX), *tid));
    for (cpu, tid, name, ms) in rows {
        let theirs = cpu.and_then(|c| qemu_per.and_then(|v| v.get(c)).copied());
        let replayed = cpu.and_then(|c| bt.qemu_view.per_vcpu.get(c).copied());
        let _ = write!(
            o,
            r#"<tr><td class="l mono">{}</td><td>{tid}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            name.map_or_else(|| "?".to_owned(), escape),
            dur_ms(Some(ms)),
            dur_ms(replayed),
            dur_ms(theirs)
        );
    }
    o.push_str("</table>");
    if let Some(q) = &r.qemu {
        let mut ratios = Vec::new();
        if let Some(a) = q.vcpu_agreement {
            ratios.push(format!(
                "replayed ÷ QEMU's <code>postcopy-vcpu-blocktime</code> sum = <b>{a:.2}</b>"
            ));
        }
        if let Some(a) = q.agreement {
            ratios.push(format!(
                "replayed all-blocked ÷ QEMU's <code>postcopy-blocktime</code> = <b>{a:.2}</b>"
            ));
        }
        if !ratios.is_empty() {
            let _ = write!(
                o,
                r#"<p class="note" style="margin-top:10px">{}{}.</p>"#,
                ratios.join("; "),
                q.version
                    .as_deref()
                    .map_or_else(String::new, |v| format!(" (QEMU {})", escape(v)))
            );
        }
        if let Some(remark) = &q.remark {
            let _ = write!(o, r#"<p class="note">Note: {}</p>"#, escape(remark));
        }
        if !q.status_timeline.is_empty() {
            o.push_str(r#"<div class="chips">"#);
            for c in &q.status_timeline {
                let _ = write!(
                    o,
                    r#"<span class="chip">{:.2} s · {}</span>"#,
                    c.at_s,
                    escape(&c.status)
                );
            }
            o.push_str("</div>");
        }
    }
    o.push_str("</div></div></section>");
}

fn network(o: &mut String, r: &Report) {
    if r.network.channels.is_empty() {
        return;
    }
    o.push_str(r#"<section id="network"><h2>Network</h2><table><tr><th class="l">channel</th><th class="l">local → remote</th><th>srtt p50</th><th>srtt p99</th><th>retransmits</th><th>bytes rx</th><th>bytes tx</th><th>page requests</th></tr>"#);
    for c in &r.network.channels {
        let _ = write!(
            o,
            r#"<tr><td class="l">{}</td><td class="l mono">{} → {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            c.role.as_str(),
            escape(&c.local),
            escape(&c.remote),
            dur_us(c.srtt_us.p50),
            dur_us(c.srtt_us.p99),
            c.retransmits,
            c.bytes_rx,
            c.bytes_tx,
            c.page_requests
        );
    }
    o.push_str("</table></section>");
}

fn guest(o: &mut String, r: &Report) {
    let Some(g) = &r.guest else { return };
    o.push_str(r#"<section id="guest"><h2>Guest spikes</h2>"#);
    let _ = write!(
        o,
        r#"<p class="note">{} samples ({} guestperf, {} plain, {} JSON, {} other lines) · alignment {}{} · baseline {} ({}) · correlation of interval duration with vCPU blocking {}</p>"#,
        g.samples,
        g.lines.guestperf,
        g.lines.plain,
        g.lines.json,
        g.lines.unknown,
        escape(&g.alignment),
        g.offset_ms
            .map_or_else(String::new, |v| format!(" (offset {v:.0} ms)")),
        dur_ms(g.baseline_ms),
        escape(&g.baseline_from.replace('_', " ")),
        g.correlation
            .map_or_else(|| "n/a".to_owned(), |c| format!("{c:.2}"))
    );
    if g.spikes.is_empty() {
        o.push_str("<p>No interval exceeded the spike threshold.</p></section>");
        return;
    }
    o.push_str(r#"<table><tr><th>at</th><th class="l">source</th><th>printed</th><th>wall time</th><th>excess</th><th>vCPU tid</th><th>vCPU blocked</th><th>faults</th><th>explained</th><th class="l" style="width:16%"></th><th class="l">phase</th></tr>"#);
    for s in &g.spikes {
        // After the migration completed no page is missing: such a spike is
        // not a post-copy fault, so it is shown muted.
        let _ = write!(
            o,
            r#"<tr{}><td>{:.2} s</td><td class="l mono">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><b>{}</b></td><td class="l"><div class="bar"><span style="width:{:.1}%;background:{}"></span></div></td><td class="l">{}</td></tr>"#,
            if s.phase == Phase::After {
                r#" style="opacity:.5""#
            } else {
                ""
            },
            s.start,
            escape(&s.source),
            dur_ms(Some(s.dur_ms)),
            dur_ms(Some(s.wall_ms)),
            dur_ms(Some(s.excess_ms)),
            s.vcpu_tid.map_or_else(|| "?".to_owned(), |t| t.to_string()),
            dur_ms(Some(s.blocked_ms)),
            s.faults,
            pct(Some(s.explained)),
            s.explained.clamp(0.0, 1.0) * 100.0,
            if s.explained >= 0.5 { BLUE } else { RED },
            s.phase.as_str()
        );
    }
    o.push_str("</table>");
    if g.spikes.iter().any(|s| s.phase == Phase::After) {
        o.push_str(r#"<p class="note" style="margin-top:8px">Spikes in phase “after” came after the migration completed: no page was missing then, so they are not post-copy faults.</p>"#);
    }
    o.push_str("</section>");
}

fn stage_bar(o: &mut String, sf: &SlowFault, scale: f64) {
    let w = 600.0;
    let _ = write!(
        o,
        r#"<svg viewBox="0 0 {w} 18" preserveAspectRatio="none" style="height:18px" role="img" aria-label="stages">"#
    );
    let mut x = 0.0;
    for st in Stage::ALL {
        let Some(us) = sf.stages_us.get(st.as_str()).copied().flatten() else {
            continue;
        };
        let sw = us / scale * w;
        let _ = write!(
            o,
            r#"<rect x="{x:.2}" y="2" width="{:.2}" height="14" fill="{}"><title>{}: {}</title></rect>"#,
            sw.max(0.6),
            stage_color(st),
            st.as_str(),
            dur_us(Some(us))
        );
        x += sw;
    }
    o.push_str("</svg>");
}

fn slowest(o: &mut String, r: &Report) {
    let f = &r.faults;
    if f.slowest.is_empty() {
        return;
    }
    o.push_str(r#"<section id="slowest"><h2>Slowest faults</h2><p class="note">Each fault's stages in order, to one scale (queue → request → network → place → wake). Stages the trace does not show are listed, not drawn (a fault has no request stage of its own when its page had already been requested).</p>"#);
    let scale = f
        .slowest
        .iter()
        .map(|s| s.stages_us.values().copied().flatten().sum::<f64>())
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    o.push_str(r#"<table><tr><th>at</th><th>tid</th><th class="l">page</th><th class="l">resolution</th><th>service</th><th>blocked</th><th class="l" style="width:40%">stages</th><th class="l">not seen</th></tr>"#);
    for sf in &f.slowest {
        let unknown: Vec<&str> = Stage::ALL
            .iter()
            .filter(|s| sf.stages_us.get(s.as_str()).copied().flatten().is_none())
            .map(|s| s.as_str())
            .collect();
        let _ = write!(
            o,
            r#"<tr><td>{:.3} s</td><td>{}</td><td class="l mono">{}</td><td class="l">{}</td><td><b>{}</b></td><td>{}</td><td class="l">"#,
            sf.at_s,
            sf.tid,
            escape(&sf.page),
            sf.resolution.as_str().replace('_', " "),
            dur_us(sf.service_us),
            dur_us(sf.blocked_us)
        );
        stage_bar(o, sf, scale);
        let _ = write!(
            o,
            r#"</td><td class="l" style="color:var(--muted)">{}</td></tr>"#,
            unknown.join(", ")
        );
    }
    o.push_str("</table><div class=\"legend\">");
    for st in Stage::ALL {
        let _ = write!(
            o,
            r#"<span><span class="sw" style="background:{}"></span>{}</span>"#,
            stage_color(st),
            st.as_str()
        );
    }
    o.push_str("</div></section>");
}

/// Renders the whole report as one self-contained HTML document.
pub fn render_html(r: &Report) -> String {
    let t = &r.trace;
    let mut o = String::with_capacity(64 * 1024);
    let _ = write!(
        o,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>uffdscope report: {}</title><style>{CSS}</style></head><body><main>"#,
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
    for w in &r.warnings {
        let _ = write!(o, r#"<div class="warn">⚠ {}</div>"#, escape(w));
    }
    let _ = write!(
        o,
        r#"<p class="headline">{}</p>"#,
        escape(&crate::render::text::headline(r))
    );
    cards(&mut o, r);
    stages(&mut o, r);
    latency_plot(&mut o, r);
    guest_plot(&mut o, r);
    timeline_plot(&mut o, r);
    guest(&mut o, r);
    blocktime(&mut o, r);
    threads(&mut o, r);
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
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x&'y")</script>"#),
            "&lt;script&gt;alert(&quot;x&amp;&#39;y&quot;)&lt;/script&gt;"
        );
        assert_eq!(escape("CPU 0/TCG"), "CPU 0/TCG");
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            nice_ticks(0.0, 10.0, 5),
            vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        );
        assert!((nice_max(5976.0) - 6000.0).abs() < 1e-9);
        assert!((nice_max(0.0) - 1.0).abs() < 1e-9);
        assert_eq!(tick_label(0.25), "0.25");
        assert_eq!(tick_label(20_000.0), "20k");
    }

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
        let md = crate::render::markdown::render_markdown(&report);
        assert!(md.contains("**0 faults** (none)"), "{md}");
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
