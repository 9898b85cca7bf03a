//! The HTML report's cards and tables: headline figures, stages, threads,
//! blocktime compared with QEMU, network channels, guest spikes and the
//! slowest faults.

use std::fmt::Write;

use super::plots::blocktime_bars;
use super::{dur_ms, dur_us, escape, role_color, stage_color, stage_help, BLUE, ORANGE, RED};
use crate::engine::guest::Phase;
use crate::engine::lifecycle::Stage;
use crate::report::view::{self, num, pct, vcpus_in_cpu_order, SplitPart, View};
use crate::report::{Report, SlowFault};

pub(super) fn card(o: &mut String, key: &str, value: &str, sub: &str, bad: bool) {
    let _ = write!(
        o,
        r#"<div class="card{}"><div class="k">{key}</div><div class="v">{value}</div><div class="s">{sub}</div></div>"#,
        if bad { " bad" } else { "" }
    );
}

pub(super) fn cards(o: &mut String, r: &Report) {
    let f = &r.faults;
    let t = &r.trace;
    o.push_str(r#"<div class="cards">"#);
    let res: Vec<String> = view::resolutions(f)
        .iter()
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

/// What each part of the network stage of requested faults covers.
fn split_help(part: SplitPart) -> &'static str {
    match part {
        SplitPart::Wire => "the request socket's smoothed RTT",
        SplitPart::Behind => "bytes that arrived first on the page's channel ÷ its throughput",
        SplitPart::Rest => "the source, and what the destination cannot see",
        SplitPart::Paused => "of the rest: the page's channel received nothing",
        SplitPart::ToSource => "request sent → the source received it",
        SplitPart::AtSource => "→ the source's send of the page",
        SplitPart::FromSource => "→ the placing ioctl on the destination",
    }
}

/// Sub-rows of the network stage: its parts for requested faults, with
/// shares of their summed network time.
fn network_split_rows(o: &mut String, view: &View<'_>) {
    for part in &view.network_split {
        let p = part.p;
        let _ = write!(
            o,
            r#"<tr class="sub"><td class="l">&nbsp;&nbsp;↳ {}</td><td class="l" style="color:var(--muted)">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            part.part.name(),
            split_help(part.part),
            dur_us(p.p50),
            dur_us(p.p90),
            dur_us(p.p99),
            dur_us(p.max),
            p.count,
            part.share.map_or_else(String::new, |s| pct(Some(s)))
        );
    }
}

/// The findings, first thing after the headline.
pub(super) fn findings(o: &mut String, view: &View<'_>) {
    if view.findings.is_empty() {
        return;
    }
    o.push_str(r#"<section id="findings"><h2>Findings</h2><ul class="findings">"#);
    for f in view.findings {
        let _ = write!(
            o,
            "<li><code>{}</code> {}{}</li>",
            escape(f.rule),
            escape(&f.text),
            f.knob.map_or_else(String::new, |k| format!(
                r#"<br><span class="knob">Try: {}</span>"#,
                escape(k)
            ))
        );
    }
    o.push_str("</ul></section>");
}

pub(super) fn stages(o: &mut String, r: &Report, view: &View<'_>) {
    let f = &r.faults;
    o.push_str(r#"<section id="stages"><h2>Where the time went</h2>"#);
    let _ = write!(
        o,
        r#"<p class="note">Share of the summed stage time (queue → request → network → place) over the faults where it is known. Stages add up to the service latency for {} of {} faults with a known entry.{}</p>"#,
        view::count(f.stage_sum_consistent),
        f.with_service,
        view.bounded
            .as_deref()
            .map_or_else(String::new, |b| format!(" {}.", escape(b)))
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
        if stage == Stage::Network {
            network_split_rows(o, view);
        }
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
    if let Some(note) = &view.split_note {
        let _ = write!(o, r#"<p class="note">↳ rows: {}</p>"#, escape(note));
    }
    let _ = write!(
        o,
        r#"<p class="note" style="margin-top:10px">{}</p>"#,
        escape(&view::uffd_activity(r))
    );
    o.push_str("</section>");
}

pub(super) fn threads(o: &mut String, view: &View<'_>) {
    let rows = &view.threads;
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
            view::count(t.uffd_reads),
            view::count(t.placements)
        );
    }
    o.push_str("</table></section>");
}

pub(super) fn blocktime(o: &mut String, r: &Report) {
    let bt = &r.blocktime_ms;
    o.push_str(r#"<section id="blocktime"><h2>vCPU blocktime, compared with QEMU</h2>"#);
    let replay = bt.qemu_view.as_ref();
    let _ = match replay {
        Some(q) => write!(
            o,
            r#"<p class="note">uffdscope measures each fault from switch-out to running again. QEMU's <code>postcopy-blocktime</code> only sees a fault from the moment its fault thread reads the message until the page is placed, with one slot per vCPU; uffdscope replays that accounting over the trace: it counts {} vCPU faults and cannot see {} ({} of them read, then dropped because the vCPU's next fault was read first; the rest were placed before their message was read).</p>"#,
            q.faults, q.unseen_faults, q.overwritten
        ),
        None => write!(
            o,
            r#"<p class="note">uffdscope measures each fault from switch-out to running again. QEMU's accounting cannot be replayed: the trace did not record the fault thread's uffd reads.</p>"#
        ),
    };
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
            replay.map(|q| q.vcpu_sum),
            replay.and_then(|q| q.all_vcpus_overlap),
        ),
        ("QEMU reported", "#55606f", qemu_sum, qemu_all),
    ];
    o.push_str(r#"<div class="grid2"><div>"#);
    blocktime_bars(o, &series);
    o.push_str("</div></div><div>");
    // Per-vCPU comparison: QEMU lists vCPUs by CPU index.
    let qemu_per = r.qemu.as_ref().and_then(|q| q.vcpu_blocktime_ms.as_ref());
    o.push_str(r#"<table><tr><th class="l">vCPU</th><th>tid</th><th>uffdscope</th><th>replayed</th><th>QEMU reported</th></tr>"#);
    for (cpu, tid, name, ms) in vcpus_in_cpu_order(r) {
        let cpu = cpu.map(|c| c as usize);
        let theirs = cpu.and_then(|c| qemu_per.and_then(|v| v.get(c)).copied());
        let replayed = cpu.and_then(|c| replay.and_then(|q| q.per_vcpu.get(c)).copied());
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

pub(super) fn network(o: &mut String, r: &Report) {
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

pub(super) fn guest(o: &mut String, r: &Report, view: &View<'_>) {
    let (Some(g), Some(gf)) = (&r.guest, &view.guest) else {
        return;
    };
    o.push_str(r#"<section id="guest"><h2>Guest spikes</h2>"#);
    let _ = write!(
        o,
        r#"<p class="note">{} samples ({}) · alignment {}{} · baseline {} ({}) · correlation of interval duration with vCPU blocking {}</p>"#,
        g.samples,
        gf.lines,
        escape(&g.alignment),
        gf.offset,
        dur_ms(g.baseline_ms),
        escape(&g.baseline_from.replace('_', " ")),
        gf.correlation
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
    if view.after_spikes.is_some() {
        o.push_str(r#"<p class="note" style="margin-top:8px">Spikes in phase “after” came after the migration completed: no page was missing then, so they are not post-copy faults.</p>"#);
    }
    o.push_str("</section>");
}

pub(super) fn stage_bar(o: &mut String, sf: &SlowFault, scale: f64) {
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

pub(super) fn slowest(o: &mut String, r: &Report) {
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
