//! The inline SVG plots of the HTML report: a small plot frame with axes
//! and ticks, the latency percentile curves, the blocked-time timeline and
//! the guest interval timeline.

use std::fmt::Write;

use super::{dur_ms, dur_us, escape, BLUE, GREY, ORANGE, RED};
use crate::engine::stats::QuantilePoint;
use crate::report::view::num;
use crate::report::Report;

/// Ticks at 1-2-5 steps covering `[lo, hi]`, about `n` of them.
pub(super) fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
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
pub(super) fn nice_max(max: f64) -> f64 {
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

pub(super) fn tick_label(v: f64) -> String {
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
pub(super) struct Plot {
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
    pub(super) fn new(w: f64, h: f64, x: (f64, f64), y: (f64, f64)) -> Self {
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

    pub(super) fn x(&self, v: f64) -> f64 {
        let f = ((v - self.x0) / (self.x1 - self.x0)).clamp(0.0, 1.0);
        self.left + f * (self.w - self.left - self.right)
    }

    pub(super) fn y(&self, v: f64) -> f64 {
        self.y_in(v, self.y0, self.y1)
    }

    pub(super) fn y_in(&self, v: f64, lo: f64, hi: f64) -> f64 {
        let f = ((v - lo) / (hi - lo).max(f64::MIN_POSITIVE)).clamp(0.0, 1.0);
        self.h - self.bottom - f * (self.h - self.top - self.bottom)
    }

    pub(super) fn open(&self, o: &mut String, label: &str) {
        let _ = write!(
            o,
            r#"<svg viewBox="0 0 {} {}" role="img" aria-label="{}">"#,
            self.w,
            self.h,
            escape(label)
        );
    }

    /// Grid, axes and tick labels; `xticks` carry their own labels.
    pub(super) fn axes(
        &self,
        o: &mut String,
        xticks: &[(f64, String)],
        ylabel: &str,
        xlabel: &str,
    ) {
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
    pub(super) fn right_axis(&self, o: &mut String, hi: f64, label: &str, color: &str) {
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

pub(super) fn time_ticks(x1: f64) -> Vec<(f64, String)> {
    nice_ticks(0.0, x1, 10)
        .into_iter()
        .map(|t| (t, format!("{} s", tick_label(t))))
        .collect()
}

/// x position of a quantile on a "nines" axis: 0 → 0, 0.9 → 1, 0.99 → 2, …; the
/// maximum sits half a decade past 99.99%.
pub(super) fn nines(q: f64) -> f64 {
    if q >= 1.0 {
        4.5
    } else {
        (-(1.0 - q).log10()).clamp(0.0, 4.0)
    }
}

pub(super) fn curve_path(p: &Plot, curve: &[QuantilePoint], scale: f64) -> String {
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

pub(super) fn latency_plot(o: &mut String, r: &Report) {
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
pub(super) fn time_span(r: &Report) -> f64 {
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
pub(super) fn blocked_area(p: &Plot, r: &Report, hi: f64) -> Option<String> {
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

pub(super) fn blocked_hi(r: &Report) -> f64 {
    let peak = r.timeline.as_ref().map_or(0.0, |t| {
        t.blocked_ms
            .iter()
            .map(|ms| ms / t.bin_ms)
            .fold(0.0, f64::max)
    });
    nice_max(peak.max(r.blocktime_ms.vcpus as f64).max(1.0))
}

pub(super) fn status_markers(o: &mut String, p: &Plot, r: &Report) {
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

pub(super) fn timeline_plot(o: &mut String, r: &Report) {
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

pub(super) fn guest_plot(o: &mut String, r: &Report) {
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

/// Bars of the blocktime comparison: per series `(name, colour, sum over
/// vCPUs, all vCPUs blocked at once)`, grouped by figure.
pub(super) fn blocktime_bars(o: &mut String, series: &[(&str, &str, Option<f64>, Option<f64>); 3]) {
    let max = series
        .iter()
        .flat_map(|s| [s.2, s.3])
        .flatten()
        .fold(0.0, f64::max);
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
    for (name, color, _, _) in series {
        let _ = write!(
            o,
            r#"<span><span class="sw" style="background:{color}"></span>{name}</span>"#
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            nice_ticks(0.0, 10.0, 5),
            vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        );
        assert!((nice_max(5976.0) - 6000.0).abs() < 1e-9);
        assert!((nice_max(0.0) - 1.0).abs() < 1e-9);
        assert_eq!(tick_label(0.25), "0.25");
        assert_eq!(tick_label(20_000.0), "20k");
    }
}
