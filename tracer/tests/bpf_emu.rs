//! Root tier: the raw BPF records of a post-copy emulator run against the
//! emulator's own ground truth. Every fault the vCPU threads slept on must
//! come out of the kernel as exactly one joined `fault_wake` record for that
//! (thread, page), and its timestamps must nest inside the interval the vCPU
//! measured around the faulting store.
//!
//! Two runs: demand faults only, and demand faults with the source's
//! background stream on. The stream's `UFFDIO_COPY`s land at any moment of a
//! fault, so they exercise every race between the wake and the vCPU's
//! switch-out that the kernel-side join has to survive.
#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uffdscope_ebpf::abi::{fault_flags, fault_source, ioctl, FaultWake};
use uffdscope_ebpf::RawEvent;
use uffdscope_fixtures::emu::{self, Bandwidth, Config, Emu, TruthFault, PAGE_SIZE};
use uffdscope_fixtures::tier;
use uffdscope_tracer::bpf::{BpfConfig, BpfTracer};

/// One emulator and one tracer at a time: the machine has two cores, and a
/// second run would only add scheduling noise to the first.
static SERIAL: Mutex<()> = Mutex::new(());

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Everything the records say about a fault the tracer missed, for the
/// failure message: the records of that thread around it and the ioctls
/// that placed its page.
fn explain_missing(t: &TruthFault, events: &[RawEvent]) -> String {
    let rel = |ts: u64| ts as i64 - t.start_ns as i64;
    let mut s = format!("\n{t:?} ({} ns):", t.latency_ns());
    for e in events {
        match e {
            RawEvent::FaultWake(w)
                if w.hdr.tid == t.tid
                    && w.hdr.ts + 1_000_000 > t.start_ns
                    && w.fault_ts < t.end_ns + 1_000_000 =>
            {
                let _ = write!(
                    s,
                    "\n  fault_wake page {:#x} fault {:+} blocked {:+} woken {:+} run {:+} flags {:#x}",
                    w.fault_addr & !(PAGE_SIZE as u64 - 1),
                    rel(w.fault_ts),
                    rel(w.blocked_ts),
                    rel(w.woken_ts),
                    rel(w.run_ts),
                    w.flags
                );
            }
            RawEvent::UffdIoctl(i) if i.start <= t.page_addr && t.page_addr < i.start + i.len => {
                let _ = write!(
                    s,
                    "\n  ioctl {:#x} by {} enter {:+} exit {:+} ret {} woke {} of {} wakeups",
                    i.cmd,
                    i.hdr.tid,
                    rel(i.enter_ts),
                    rel(i.hdr.ts),
                    i.ret,
                    i.n_woken,
                    i.n_wakeups
                );
            }
            _ => {}
        }
    }
    s
}

fn faults_match_truth(name: &str, bandwidth: Bandwidth) {
    if !tier::root_bpf(name) {
        return;
    }
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("tempdir");
    let truth_path = dir.path().join("truth.csv");
    let cfg = Config {
        mem_bytes: 64 << 20,
        vcpus: 2,
        bandwidth,
        wait_for_signal: true,
        truth: Some(truth_path.clone()),
        ..Config::default()
    };
    let run = Emu::spawn(&cfg).unwrap_or_else(|e| panic!("spawn emulator: {e}"));
    let pid = run.pid();
    let mut tracer = BpfTracer::load(&BpfConfig::new(vec![pid]))
        .unwrap_or_else(|e| panic!("BpfTracer::load: {e}"));
    let mut ring = tracer.take_ring().expect("take ring");

    // Drain on a ~20 ms timer while the emulator runs, as `record` will.
    let stop = Arc::new(AtomicBool::new(false));
    let drainer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut events = Vec::new();
            let mut bad = 0;
            let mut signalled = 0u32;
            loop {
                let last = stop.load(Ordering::Acquire);
                if ring.wait(Duration::from_millis(20)).expect("epoll on ring") {
                    signalled += 1;
                }
                bad += ring.drain_into(&mut events).bad;
                if last {
                    break;
                }
            }
            (events, bad, signalled)
        })
    };
    run.go().unwrap_or_else(|e| panic!("start emulator: {e}"));
    let out = run
        .wait()
        .and_then(emu::EmuOutput::success)
        .unwrap_or_else(|e| panic!("emulator run: {e}"));
    stop.store(true, Ordering::Release);
    let (events, bad, signalled) = drainer.join().expect("drain thread");
    assert_eq!(bad, 0, "undecodable records");
    let stats = tracer.program_stats().expect("program stats");
    let counters = tracer.counters().expect("counters");
    println!("{name}: counters: {counters:?}; forced wake-ups seen: {signalled}");
    assert_eq!(counters.drops, 0, "ring drops: {counters:?}");
    assert_eq!(counters.map_full, 0, "map full: {counters:?}");

    let truth = emu::read_truth(&truth_path).unwrap_or_else(|e| panic!("read truth: {e}"));
    assert!(!truth.is_empty(), "the emulator reported no faults");
    if let Some(summary) = out.summary() {
        assert_eq!(summary.faults, truth.len() as u64, "summary vs truth file");
    }
    let truth_tids: std::collections::BTreeSet<u32> = truth.iter().map(|t| t.tid).collect();

    let mut by_key: BTreeMap<(u32, u64), Vec<&FaultWake>> = BTreeMap::new();
    let mut early: BTreeMap<(u32, u64), &FaultWake> = BTreeMap::new();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &events {
        *kinds.entry(e.kind().name()).or_default() += 1;
        let RawEvent::FaultWake(w) = e else { continue };
        let page = w.fault_addr & !(PAGE_SIZE as u64 - 1);
        if w.flags & fault_flags::WOKEN_BEFORE_BLOCK != 0 {
            // Not a fault in the truth's sense either: the vCPU never slept
            // in handle_userfault.
            early.insert((w.hdr.tid, page), w);
            continue;
        }
        if !truth_tids.contains(&w.hdr.tid) {
            continue;
        }
        assert_eq!(w.fault_source, fault_source::USER, "{w:?}");
        by_key.entry((w.hdr.tid, page)).or_default().push(w);
    }
    println!(
        "{name}: records by kind: {kinds:?}; woken before blocking: {}",
        early.len()
    );

    let mut diffs_entry = Vec::with_capacity(truth.len());
    let mut diffs_end = Vec::with_capacity(truth.len());
    let mut missing = Vec::new();
    let mut raced = 0usize;
    let mut run_unseen = 0usize;
    let mut run_late = 0usize;
    let mut slept_elsewhere = 0usize;
    for t in &truth {
        let Some(ws) = by_key.remove(&(t.tid, t.page_addr)) else {
            // The wake beat the switch-out, and the store still slept: on
            // something else in the fault's retry, such as mmap_lock behind
            // another vCPU's mmap/munmap (seen here: D state in
            // lock_mm_and_find_vma). The uffd part of the fault never
            // blocked, and the record says so.
            match early.get(&(t.tid, t.page_addr)) {
                Some(w) if t.start_ns <= w.fault_ts && w.woken_ts <= t.end_ns => {
                    slept_elsewhere += 1;
                }
                _ => missing.push(*t),
            }
            continue;
        };
        assert_eq!(ws.len(), 1, "several records for one fault {t:?}: {ws:?}");
        let w = ws[0];
        // The vCPU read the clock just before the store and just after it
        // resumed: the kernel's fault entry and switch-in lie in between.
        assert!(
            t.start_ns <= w.fault_ts && w.fault_ts <= w.blocked_ts.min(w.woken_ts),
            "fault entry outside the truth interval: {t:?} {w:?}"
        );
        assert!(
            w.blocked_ts != 0,
            "a truth fault without a switch-out: {t:?} {w:?}"
        );
        assert!(
            w.blocked_ts.max(w.woken_ts) <= w.run_ts,
            "switch-in before the wake: {t:?} {w:?}"
        );
        if w.flags & fault_flags::RUN_UNSEEN == 0 {
            assert!(
                w.run_ts <= t.end_ns,
                "switch-in outside the truth interval: {t:?} {w:?}"
            );
            diffs_end.push((t.end_ns - w.run_ts) as i64);
        } else {
            // The kernel did not report the switch-in (see the BPF side);
            // run_ts is the first sign of the thread running after it,
            // normally its return to user mode, which the store's clock
            // read follows.
            run_unseen += 1;
            assert!(
                w.woken_ts <= t.end_ns,
                "wake outside the truth interval: {t:?} {w:?}"
            );
            if w.run_ts > t.end_ns {
                run_late += 1;
            }
        }
        if w.flags & fault_flags::WOKEN_BEFORE_SWITCH != 0 {
            raced += 1;
        } else {
            assert!(w.blocked_ts <= w.woken_ts, "{w:?}");
        }
        assert!(
            matches!(w.ioctl_cmd, ioctl::COPY | ioctl::ZEROPAGE | ioctl::WAKE),
            "woken by {:#x}: {w:?}",
            w.ioctl_cmd
        );
        assert!(
            w.ioctl_start <= t.page_addr && t.page_addr < w.ioctl_start + w.ioctl_len,
            "waking ioctl does not cover the page: {t:?} {w:?}"
        );
        diffs_entry.push((w.fault_ts - t.start_ns) as i64);
    }
    assert!(
        missing.is_empty(),
        "{name}: {} of {} truth faults without a record:{}",
        missing.len(),
        truth.len(),
        missing
            .iter()
            .take(5)
            .map(|t| explain_missing(t, &events))
            .collect::<String>()
    );
    let extra: Vec<_> = by_key.into_iter().collect();
    assert!(
        extra.is_empty(),
        "{name}: {} records for faults the truth does not have, e.g. {:?}",
        extra.len(),
        &extra[..extra.len().min(3)]
    );

    // Cost of the programs (kernel.bpf_stats_enabled=1 to get times).
    let total_ns: u64 = stats.iter().map(|p| p.run_time_ns).sum();
    if total_ns > 0 {
        let mut line = format!(
            "{name}: BPF {} ns per truth fault;",
            total_ns / truth.len() as u64
        );
        for p in stats.iter().filter(|p| p.run_cnt > 0) {
            let _ = write!(line, " {} {}x{}ns", p.program, p.run_cnt, p.mean_ns());
        }
        println!("{line}");
    }
    diffs_entry.sort_unstable();
    diffs_end.sort_unstable();
    let lat: Vec<i64> = {
        let mut v: Vec<i64> = truth.iter().map(|t| t.latency_ns() as i64).collect();
        v.sort_unstable();
        v
    };
    println!(
        "{name}: woken while switching out: {raced}; switch-in not traced: {run_unseen} \
         ({run_late} first seen running after the store); \
         slept outside handle_userfault: {slept_elsewhere}"
    );
    println!(
        "{name}: {} faults; truth latency p50 {} ns p99 {} ns; store->fault entry p50 {} p99 {} ns; switch-in->resume p50 {} p99 {} ns",
        truth.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&diffs_entry, 0.5),
        percentile(&diffs_entry, 0.99),
        percentile(&diffs_end, 0.5),
        percentile(&diffs_end, 0.99),
    );
}

#[test]
fn emulator_demand_faults_match_truth() {
    faults_match_truth("emulator_demand_faults_match_truth", Bandwidth::Off);
}

#[test]
fn emulator_faults_with_background_stream_match_truth() {
    // 64 MiB/s over 64 MiB: the stream and the demand requests overlap for
    // the whole first pass.
    faults_match_truth(
        "emulator_faults_with_background_stream_match_truth",
        Bandwidth::BytesPerSec(64 << 20),
    );
}
