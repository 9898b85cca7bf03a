//! Terminal and markdown renderings of a [`Report`].

use crate::render::format::{num, pct};
use std::fmt::Write;

use crate::engine::guest::Phase;
use crate::engine::lifecycle::Stage;
use crate::report::Report;
use uffdscope_trace::record::Role;

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "n/a".to_owned(), |x| format!("{}{unit}", num(Some(x))))
}

/// The headline: one or two sentences a bug reader needs.
pub fn headline(r: &Report) -> String {
    let f = &r.faults;
    if f.count == 0 {
        return "No userfaultfd faults were recorded.".to_owned();
    }
    let mut s = format!(
        "{} faults; service latency p50 {} / p99 {} / max {}",
        f.count,
        opt(f.service_us.p50, " µs"),
        opt(f.service_us.p99, " µs"),
        opt(f.service_us.max, " µs"),
    );
    let net = f.stage_share.get("network").copied().flatten();
    if let Some(n) = net {
        let _ = write!(
            s,
            "; {} of the known stage time was network plus source",
            pct(Some(n))
        );
    }
    s.push('.');
    if let Some(g) = &r.guest {
        if let Some(worst) = g
            .spikes
            .iter()
            .max_by(|a, b| a.excess_ms.total_cmp(&b.excess_ms))
        {
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
    }
    s
}

/// The terminal report.
pub fn render_text(r: &Report) -> String {
    let mut o = String::new();
    let bar = "=".repeat(72);
    for w in &r.warnings {
        let _ = writeln!(o, "!! WARNING: {w}");
    }
    if !r.warnings.is_empty() {
        let _ = writeln!(o);
    }
    let t = &r.trace;
    let _ = writeln!(o, "uffdscope report: {}", t.path);
    let _ = writeln!(o, "{bar}");
    let _ = writeln!(
        o,
        "target   pid {} ({}) on {} kernel {}",
        t.target.pid, t.target.comm, t.host, t.kernel
    );
    let _ = writeln!(
        o,
        "trace    {} events over {}, {} drops{}",
        t.events,
        opt(t.duration_s, " s"),
        t.drops,
        t.end
            .as_ref()
            .map_or(String::new(), |e| format!(", ended: {e}"))
    );
    let _ = writeln!(o);
    let _ = writeln!(o, "{}", headline(r));
    let _ = writeln!(o);

    let f = &r.faults;
    let _ = writeln!(o, "Faults");
    let _ = writeln!(o, "------");
    let res: Vec<String> = f
        .by_resolution
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let _ = writeln!(o, "count {}  ({})", f.count, res.join(", "));
    let _ = writeln!(
        o,
        "messages read {} in {} reads ({} failed/EAGAIN), page requests {}, placements {}",
        f.messages_read,
        f.uffd_reads,
        f.failed_reads,
        f.page_requests,
        f.placements
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "stage (µs)", "p50", "p90", "p99", "max", "count", "share"
    );
    let row = |o: &mut String, name: &str, p50, p90, p99, max, count: u64, share: Option<f64>| {
        let _ = writeln!(
            o,
            "{:<10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}",
            name,
            opt(p50, ""),
            opt(p90, ""),
            opt(p99, ""),
            opt(max, ""),
            count,
            share.map_or_else(String::new, |s| pct(Some(s)))
        );
    };
    for stage in Stage::ALL {
        let name = stage.as_str();
        if let Some(p) = f.stages_us.get(name) {
            let share = f.stage_share.get(name).copied().flatten();
            row(&mut o, name, p.p50, p.p90, p.p99, p.max, p.count, share);
        }
    }
    let s = &f.service_us;
    row(&mut o, "service", s.p50, s.p90, s.p99, s.max, s.count, None);
    let b = &f.blocked_us;
    row(&mut o, "blocked", b.p50, b.p90, b.p99, b.max, b.count, None);
    let _ = writeln!(
        o,
        "stages add up to the service latency for {} of {} faults with a known entry",
        f.stage_sum_consistent, f.with_service
    );
    let _ = writeln!(o);

    let _ = writeln!(o, "Threads");
    let _ = writeln!(o, "-------");
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
    for th in r
        .threads
        .iter()
        .filter(|t| t.faults > 0 || t.role != Role::Other)
    {
        let _ = writeln!(
            o,
            "{:>8} {:<18} {:<8} {:>8} {:>11.1} {:>9} {:>9} {:>8} {:>8} {:>8}",
            th.tid,
            th.name.as_deref().unwrap_or("?"),
            th.role.as_str(),
            th.faults,
            th.blocked_ms,
            opt(th.service_p50_us, ""),
            opt(th.service_p99_us, ""),
            th.uffd_reads,
            th.placements,
            opt(th.cpu_ms, "")
        );
    }
    let _ = writeln!(o);

    let bt = &r.blocktime_ms;
    let _ = writeln!(o, "vCPU blocktime");
    let _ = writeln!(o, "--------------");
    let _ = writeln!(
        o,
        "uffdscope: sum over {} vCPUs {:.1} ms, all vCPUs blocked at once {}",
        bt.vcpus,
        bt.vcpu_sum,
        opt(bt.all_vcpus_overlap, " ms")
    );
    let _ = writeln!(
        o,
        "QEMU's accounting replayed (message read → placed; counts {} vCPU faults, cannot see {}, of them {} read then dropped): sum {:.1} ms, per vCPU {:?} ms, all blocked {}; closing at the ioctl exit instead: sum {:.1} ms",
        bt.qemu_view.faults,
        bt.qemu_view.unseen_faults,
        bt.qemu_view.overwritten,
        bt.qemu_view.vcpu_sum,
        bt.qemu_view.per_vcpu,
        opt(bt.qemu_view.all_vcpus_overlap, " ms"),
        bt.qemu_view.vcpu_sum_close_at_exit
    );
    if let Some(q) = &r.qemu {
        let _ = writeln!(
            o,
            "QEMU reports: postcopy-blocktime {}{}, per vCPU {}{}",
            opt(q.blocktime_ms, " ms"),
            q.agreement
                .map_or_else(String::new, |a| format!(" (replay/QEMU = {a:.2})")),
            q.vcpu_blocktime_ms
                .as_ref()
                .map_or_else(|| "n/a".to_owned(), |v| format!("{v:?} ms")),
            q.vcpu_agreement
                .map_or_else(String::new, |a| format!(" (replay/QEMU = {a:.2})"))
        );
        if let Some(remark) = &q.remark {
            let _ = writeln!(o, "note: {remark}");
        }
        if !q.status_timeline.is_empty() {
            let tl: Vec<String> = q
                .status_timeline
                .iter()
                .map(|c| format!("{:.2}s {}", c.at_s, c.status))
                .collect();
            let _ = writeln!(o, "migration: {}", tl.join(" → "));
        }
    }
    let _ = writeln!(o);

    if !r.network.channels.is_empty() {
        let _ = writeln!(o, "Network");
        let _ = writeln!(o, "-------");
        for c in &r.network.channels {
            let _ = writeln!(
                o,
                "{:<12} {} → {}  srtt p50 {} p99 {}  retrans {}  rx {} B  tx {} B  requests {}",
                c.role.as_str(),
                c.local,
                c.remote,
                opt(c.srtt_us.p50, " µs"),
                opt(c.srtt_us.p99, " µs"),
                c.retransmits,
                c.bytes_rx,
                c.bytes_tx,
                c.page_requests
            );
        }
        let _ = writeln!(o);
    }

    if let Some(g) = &r.guest {
        let _ = writeln!(o, "Guest");
        let _ = writeln!(o, "-----");
        let _ = writeln!(
            o,
            "{} samples ({} guestperf, {} plain, {} json, {} other lines); alignment: {}{}",
            g.samples,
            g.lines.guestperf,
            g.lines.plain,
            g.lines.json,
            g.lines.unknown,
            g.alignment,
            g.offset_ms
                .map_or_else(String::new, |o| format!(" (offset {o:.0} ms)"))
        );
        let _ = writeln!(
            o,
            "baseline {} ({}), correlation with vCPU blocking {}",
            opt(g.baseline_ms, " ms"),
            g.baseline_from,
            g.correlation
                .map_or_else(|| "n/a".to_owned(), |c| format!("{c:.2}"))
        );
        if !g.spikes.is_empty() {
            let _ = writeln!(
                o,
                "{:>9} {:>9} {:>10} {:>8} {:>11} {:>7} {:>10}  phase",
                "at s", "dur ms", "excess ms", "vCPU", "blocked ms", "faults", "explained"
            );
            // Spikes after the migration completed cannot come from missing
            // pages: one summary line keeps them from burying the others.
            let (after, shown): (Vec<_>, Vec<_>) =
                g.spikes.iter().partition(|s| s.phase == Phase::After);
            for sp in shown {
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
            if !after.is_empty() {
                let worst = after.iter().map(|s| s.dur_ms).fold(0.0, f64::max);
                let faults: u64 = after.iter().map(|s| s.faults).sum();
                let blocked: f64 = after.iter().map(|s| s.blocked_ms).sum();
                let _ = writeln!(
                    o,
                    "+ {} spikes after the migration completed (up to {worst:.0} ms, {faults} faults, {blocked:.1} ms blocked): not post-copy faults",
                    after.len()
                );
            }
        }
        let _ = writeln!(o);
    }

    if !f.slowest.is_empty() {
        let _ = writeln!(o, "Slowest faults");
        let _ = writeln!(o, "--------------");
        for sf in &f.slowest {
            let stages: Vec<String> = Stage::ALL
                .iter()
                .map(|st| {
                    let v = sf.stages_us.get(st.as_str()).copied().flatten();
                    format!("{} {}", st.as_str(), opt(v, ""))
                })
                .collect();
            let _ = writeln!(
                o,
                "{:>8.3}s tid {} page {} {:<10} service {} µs | {}",
                sf.at_s,
                sf.tid,
                sf.page,
                sf.resolution.as_str(),
                opt(sf.service_us, ""),
                stages.join(" → ")
            );
        }
    }
    o
}
