//! Root tier: `uffdscope record` (the real binary, real BPF) against the
//! post-copy emulator, checked against the emulator's ground truth, plus the
//! ways a recording can end (target exits, SIGINT, target killed, recorder killed),
//! and the emulator's source recorded beside its destination.
#![cfg(target_os = "linux")]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use uffdscope_analyzer::analysis::{analyze_file, Options};
use uffdscope_analyzer::engine::lifecycle::{Engine, Fault};
use uffdscope_analyzer::report::Report;
use uffdscope_fixtures::emu::source_truth::read_source_truth;
use uffdscope_fixtures::emu::truth::{read_truth, Exactness};
use uffdscope_fixtures::emu::{Bandwidth, Config, Emu};
use uffdscope_fixtures::tier;
use uffdscope_trace::record::Record;
use uffdscope_trace::TraceReader;

#[path = "common/both_ends.rs"]
mod both_ends;
use both_ends::{
    check_requested_pages, check_return_path, check_sends, check_sides, read, requests, spread,
    PAGE,
};

/// These tests measure latencies and load the machine; running them one at a
/// time keeps each one's numbers its own.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn start_recorder(pid: u32, out: &Path) -> Child {
    start_recorder_with(pid, out, &[])
}

fn start_recorder_with(pid: u32, out: &Path, extra: &[&str]) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_uffdscope"))
        .args(["record", "-q", "--pid", &pid.to_string()])
        .args(extra)
        .arg("-o")
        .arg(out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn uffdscope record");
    // The recorder writes the header and the discovery records right after
    // attaching: once the file has a frame, the probes are live.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(out).map_or(0, |m| m.len()) < 64 {
        assert!(
            Instant::now() < deadline,
            "recorder did not start within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn finish(child: Child) -> String {
    let out = child.wait_with_output().expect("wait for recorder");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "recorder failed: {stderr}");
    stderr
}

fn faults_of(trace: &Path) -> Vec<Fault> {
    let mut reader = TraceReader::open(trace).expect("trace opens");
    let mut engine = Engine::new();
    let mut faults = Vec::new();
    let damage = reader.for_each(|r| engine.push(&r, &mut |f| faults.push(f)));
    assert!(damage.is_none(), "damaged trace: {damage:?}");
    engine.finish(&mut |f| faults.push(f));
    faults
}

fn emu_config(dir: &Path, mem: u64, bandwidth: Bandwidth) -> (Config, PathBuf) {
    let truth = dir.join("truth.csv");
    (
        Config {
            mem_bytes: mem,
            vcpus: 2,
            bandwidth,
            wait_for_signal: true,
            truth: Some(truth.clone()),
            ..Config::default()
        },
        truth,
    )
}

#[test]
fn recorded_faults_match_the_ground_truth() {
    if !tier::root_bpf("recorded_faults_match_the_ground_truth") {
        return;
    }
    let (report, _) = ground_truth(&["--detail", "full"]);
    assert_every_stage(&report);
}

/// At the default level background placements are counted in the kernel:
/// every fault is still recorded exactly, and every placement is counted.
#[test]
fn lean_recorded_faults_match_the_ground_truth() {
    if !tier::root_bpf("lean_recorded_faults_match_the_ground_truth") {
        return;
    }
    let (report, recorded) = ground_truth(&["--detail", "standard"]);
    assert_every_stage(&report);
    let placed: u64 = report
        .faults
        .placements
        .as_ref()
        .expect("placements recorded")
        .values()
        .sum();
    let pages = (64u64 << 20) / 4096;
    assert!(placed >= pages, "{placed} placements for {pages} pages");
    eprintln!(
        "lean: {recorded} of {placed} placements recorded, {} faults, {} records",
        report.faults.count, report.trace.events
    );
    // The waking placement of each fault and the placer's next ioctl stay
    // records (two per fault); a placement during a uffd read or of a page
    // read but not yet placed adds a few more. How many faults there are
    // depends on the run (the emulator races its own background stream).
    assert!(
        recorded < placed && recorded <= 3 * report.faults.count + 64,
        "{recorded} of {placed} placements recorded for {} faults",
        report.faults.count
    );
}

/// Records the emulator with `extra` recorder arguments and checks every
/// fault against its ground truth; returns the trace's report and how many
/// placing ioctls it recorded one by one.
fn ground_truth(extra: &[&str]) -> (Report, u64) {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (cfg, truth_path) = emu_config(dir.path(), 64 << 20, Bandwidth::BytesPerSec(64 << 20));
    let emu = Emu::spawn(&cfg).expect("spawn emulator");
    let trace = dir.path().join("run.trace");
    let rec = start_recorder_with(emu.pid(), &trace, extra);
    emu.go().expect("start vCPUs");
    emu.wait()
        .expect("emulator run")
        .success()
        .expect("emulator verified every page");
    let stderr = finish(rec);
    assert!(stderr.contains("target exited"), "{stderr}");

    let truth = read_truth(&truth_path).expect("truth");
    let faults = faults_of(&trace);
    // The truth counts stores during which the vCPU slept; a fault woken before
    // it could block has no run time and no context switch.
    let e = Exactness::compare(&truth, &faults);
    assert!(
        e.duplicates.is_empty(),
        "two sleeps for (tid, page) {:?}",
        e.duplicates
    );
    let explain: Vec<String> = e
        .missing
        .iter()
        .take(5)
        .map(|t| {
            let near: Vec<&Fault> = faults
                .iter()
                .filter(|f| {
                    f.tid == t.tid
                        && (f.page == t.page_addr
                            || (f.woken_ts + 1_000_000 > t.start_ns
                                && f.woken_ts < t.end_ns + 1_000_000))
                })
                .collect();
            format!("{t:?} -> recorded as {near:?}")
        })
        .collect();
    assert!(
        e.missing.is_empty(),
        "{} of {} ground-truth faults not recorded:\n{}",
        e.missing.len(),
        truth.len(),
        explain.join("\n")
    );
    assert_eq!(e.slept, truth.len(), "recorded sleeps vs ground truth");
    assert_eq!(e.no_entry, 0, "every fault entry seen");
    eprintln!("{}", e.summary());
    // The kernel's interval must nest inside the store the vCPU timed.
    assert_eq!(
        e.outside, 0,
        "recorded intervals not inside the timed store"
    );
    // The emulator's threads register rseq (glibc does), so a fault ends at
    // its return to user mode; what remains is the store's retry and the
    // vCPU's clock read, plus a preemption after the resume. A thread that
    // blocks again before it gets back to user mode (about 1 fault in 5000
    // under load) falls back to its switch-in. The README quotes the
    // measured figures (`uffdscope-bench tracer-exactness`).
    assert!(
        e.fallback * 100 <= e.diffs_ns.len(),
        "more than 1% of faults without a traced resume: {}",
        e.summary()
    );
    let p99 = e.percentile_ns(99.0).expect("faults");
    assert!(
        p99 <= 20_000,
        "p99 |truth - recorded| latency difference {p99} ns exceeds 20 µs: {}",
        e.summary()
    );

    let report = analyze_file(&trace, &Options::default()).expect("analyze");
    assert_eq!(report.trace.drops, 0);
    assert_eq!(report.trace.end.as_deref(), Some("target exited"));
    let (mut recorded, mut narrowed) = (0, Vec::new());
    let damage = TraceReader::open(&trace)
        .expect("trace opens")
        .for_each(|r| {
            recorded += u64::from(matches!(&r, Record::UffdIoctl(io) if io.op.places_pages()));
            if let Record::Note(n) = &r {
                if n.kind == "narrowed" {
                    narrowed.push(n.text.clone());
                }
            }
        });
    assert!(damage.is_none(), "{damage:?}");
    // Once the fault thread's first request shows the return path's send
    // call, the other send calls' programs are detached (none at minimal,
    // which has no send programs).
    if extra.contains(&"minimal") {
        assert!(narrowed.is_empty(), "{narrowed:?}");
    } else {
        assert_eq!(narrowed.len(), 1, "{narrowed:?}");
        assert!(narrowed[0].contains("detached 6 programs"), "{narrowed:?}");
    }
    (report, recorded)
}

/// What a level that attaches the system-call tracepoints must give: every
/// stage, adding up, and the threads' roles.
fn assert_every_stage(report: &Report) {
    assert_eq!(
        report.faults.stage_sum_consistent,
        Some(report.faults.with_service),
        "queue + request + network + place must equal service latency"
    );
    let roles: Vec<&str> = report.threads.iter().map(|t| t.role.as_str()).collect();
    for role in ["vcpu", "fault", "listen"] {
        assert!(roles.contains(&role), "role {role} not detected: {roles:?}");
    }
}

/// `--detail minimal` attaches no system-call tracepoint, reads the placing
/// ioctl from the waker's registers, and still records every fault exactly.
#[test]
fn minimal_recorded_faults_match_the_ground_truth() {
    if !tier::root_bpf("minimal_recorded_faults_match_the_ground_truth") {
        return;
    }
    let (report, recorded) = ground_truth(&["--detail", "minimal"]);
    assert_eq!(recorded, 0, "minimal records no placing ioctl");
    eprintln!(
        "minimal: {} faults, {} records",
        report.faults.count, report.trace.events
    );
    // What minimal cannot know is null, never 0.
    assert!(report.faults.with_service > 0);
    assert_eq!(report.faults.stage_sum_consistent, None);
    assert_eq!(report.faults.page_requests, None);
    assert!(report.blocktime_ms.qemu_view.is_none());
    assert_eq!(report.faults.by_resolution["requested"], None);
    assert!(report.faults.by_resolution["placed"].is_some_and(|n| n > 0));
    assert!(report.trace.not_recorded.contains(&"network"));
}

#[test]
fn fifty_thousand_faults_without_drops() {
    if !tier::root_bpf("fifty_thousand_faults_without_drops") {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // No background stream: every one of the 65536 pages is a demand fault.
    let (cfg, truth_path) = emu_config(dir.path(), 256 << 20, Bandwidth::Off);
    let emu = Emu::spawn(&cfg).expect("spawn emulator");
    let trace = dir.path().join("big.trace");
    let rec = start_recorder(emu.pid(), &trace);
    emu.go().expect("start vCPUs");
    emu.wait()
        .expect("emulator run")
        .success()
        .expect("emulator verified");
    finish(rec);
    let truth = read_truth(&truth_path).expect("truth");
    assert!(
        truth.len() >= 50_000,
        "only {} faults in the truth",
        truth.len()
    );
    let report = analyze_file(&trace, &Options::default()).expect("analyze");
    assert_eq!(report.trace.drops, 0, "drops at default settings");
    assert!(
        report.faults.count >= 50_000,
        "{} faults",
        report.faults.count
    );
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(
        unsafe { libc::kill(pid as i32, sig) },
        0,
        "kill({pid}, {sig})"
    );
}

#[test]
fn sigint_and_killed_target_leave_readable_traces() {
    if !tier::root_bpf("sigint_and_killed_target_leave_readable_traces") {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // A slow background stream keeps the emulator busy for many seconds.
    let (mut cfg, _) = emu_config(dir.path(), 256 << 20, Bandwidth::BytesPerSec(8 << 20));
    cfg.truth = None;

    // 1. SIGINT to the recorder mid-run.
    let emu = Emu::spawn(&cfg).expect("spawn emulator");
    let trace = dir.path().join("sigint.trace");
    let rec = start_recorder(emu.pid(), &trace);
    emu.go().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    signal(rec.id(), libc::SIGINT);
    let stderr = finish(rec);
    assert!(stderr.contains("stopped by signal"), "{stderr}");
    let report = analyze_file(&trace, &Options::default()).expect("analyze");
    assert_eq!(report.trace.end.as_deref(), Some("stopped by signal"));
    assert!(report.trace.damage.is_none());
    assert!(report.faults.count > 0);
    signal(emu.pid(), libc::SIGKILL);
    let _ = emu.wait();

    // 2. The target killed mid-run.
    let emu = Emu::spawn(&cfg).expect("spawn emulator");
    let trace = dir.path().join("killed.trace");
    let rec = start_recorder(emu.pid(), &trace);
    emu.go().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    signal(emu.pid(), libc::SIGKILL);
    let _ = emu.wait();
    let stderr = finish(rec);
    assert!(stderr.contains("target exited"), "{stderr}");
    let report = analyze_file(&trace, &Options::default()).expect("analyze");
    assert_eq!(report.trace.end.as_deref(), Some("target exited"));
    assert!(report.faults.count > 0);

    // 3. The recorder itself killed: the file reads up to its last frame.
    let emu = Emu::spawn(&cfg).expect("spawn emulator");
    let trace = dir.path().join("recorder-killed.trace");
    let mut rec = start_recorder(emu.pid(), &trace);
    emu.go().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    rec.kill().unwrap();
    let _ = rec.wait();
    signal(emu.pid(), libc::SIGKILL);
    let _ = emu.wait();
    let report = analyze_file(&trace, &Options::default()).expect("analyze killed recording");
    assert_eq!(
        report.trace.end, None,
        "no end note: the recorder never finished"
    );
    assert!(
        report.faults.count > 0,
        "frames flushed before the kill hold faults"
    );
}

/// The emulator's one RAMBlock.
const BLOCK: &str = "pc.ram";
/// How long the emulator's source holds a requested page before sending it.
const REQUEST_DELAY: Duration = Duration::from_millis(1);

/// The source process the emulator's destination spawned (`--role both`).
fn child_of(parent: u32) -> u32 {
    let children: Vec<u32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(") ")
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect();
    assert_eq!(
        children.len(),
        1,
        "the destination {parent} has children {children:?}"
    );
    children[0]
}

/// The emulator's *source* process recorded (real BPF) beside a second
/// recorder on its destination, checked against what the emulator knows:
/// the bytes its return-path thread read (captured by the emulator itself),
/// every page of its RAM sent once in page runs with one RAMBlock base, and
/// for each requested page, the recorded receive ending before the source
/// read the request and the recorded send starting after the source called
/// it (`--source-truth`).
#[test]
fn source_recording_matches_the_emulator() {
    if !tier::root_bpf("source_recording_matches_the_emulator") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let capture = dir.path().join("rp.bin");
    let source_truth = dir.path().join("source-truth.csv");
    let cfg = Config {
        mem_bytes: 32 << 20,
        vcpus: 2,
        bandwidth: Bandwidth::BytesPerSec(32 << 20),
        preempt: true,
        request_delay_us: REQUEST_DELAY.as_micros() as u64,
        // Every page has content, so every page is sent as a page iovec.
        zero_percent: 0,
        capture_rp: Some(capture.clone()),
        source_truth: Some(source_truth.clone()),
        wait_for_signal: true,
        ..Config::default()
    };
    let emu = Emu::spawn(&cfg).expect("spawn emulator");
    let source_pid = child_of(emu.pid());
    let (dst_trace, src_trace) = (dir.path().join("dst.trace"), dir.path().join("src.trace"));
    let _serial = serial();
    let dst_rec = start_recorder_with(emu.pid(), &dst_trace, &["--side", "destination"]);
    let src_rec = start_recorder_with(source_pid, &src_trace, &["--side", "auto"]);
    emu.go().expect("start vCPUs");
    emu.wait()
        .expect("emulator run")
        .success()
        .expect("emulator verified every page");
    let src_stderr = finish(src_rec);
    finish(dst_rec);
    assert!(
        src_stderr.contains("recording the source end"),
        "auto did not pick the source: {src_stderr}"
    );

    let (dst_side, dst) = read(&dst_trace);
    let (src_side, src) = read(&src_trace);
    check_sides(&dst, dst_side, &src, src_side);
    let (sent, received) = check_return_path(&dst, &src);

    // The emulator's own copy of the bytes its return path read.
    let truth = std::fs::read(&capture).expect("return-path capture");
    let end = received.last().map(|(at, s)| at + s.ret.unsigned_abs());
    assert_eq!(end, Some(truth.len() as u64), "return-path bytes");
    for (at, s) in &received {
        let at = usize::try_from(*at).expect("position");
        assert_eq!(
            s.head.as_slice(),
            &truth[at..at + s.head.len()],
            "receive at stream byte {at}"
        );
    }

    // Every page of the RAM went out once, in runs from one base.
    let (sends, base) = check_sends(&src);
    let mut pages = HashSet::new();
    for run in sends.iter().flat_map(|s| &s.runs) {
        assert_eq!(u64::from(run.page_len), PAGE, "{run:?}");
        for i in 0..u64::from(run.pages) {
            let page = (run.addr + i * PAGE - base) / PAGE;
            assert!(pages.insert(page), "page {page} sent twice");
        }
    }
    let all = cfg.mem_bytes / PAGE;
    assert_eq!(pages.len() as u64, all, "pages in runs");
    assert!(pages.iter().all(|&p| p < all), "a run outside the RAMBlock");

    // Requested pages: each request's receive, then its page's send (the
    // figures printed), and against the source's own clock readings.
    check_requested_pages(&requests(&sent), &received, &sends, (BLOCK, base));
    recorded_times_against_the_source_truth(&source_truth, &received, &sends, base);
}

/// Each requested page the emulator's source sent, against its own clock
/// readings: the receive that delivered the request ended (recorded exit) at
/// or before the source had read it, and the page's one send began
/// (recorded entry) at or after the source called it. Prints by how much.
fn recorded_times_against_the_source_truth(
    path: &Path,
    received: &[(u64, &uffdscope_trace::record::SockIo)],
    sends: &[&uffdscope_trace::record::PagesSent],
    base: u64,
) {
    let rows = read_source_truth(path).expect("source truth");
    // A request in the receive that was in progress when the recorder
    // attached has no recorded receive (see `check_return_path`).
    let first = received.first().map_or(u64::MAX, |(_, s)| s.exit_ts);
    let rows: Vec<_> = rows.into_iter().filter(|r| r.recv_ns >= first).collect();
    assert!(!rows.is_empty(), "the source sent no requested page");
    let (mut recv_lag, mut send_lag) = (Vec::new(), Vec::new());
    for row in &rows {
        let recv = received
            .iter()
            .map(|(_, s)| s)
            .filter(|s| s.exit_ts <= row.recv_ns)
            .map(|s| s.exit_ts)
            .max()
            .expect("a recorded receive before the source read the request");
        recv_lag.push(row.recv_ns - recv);
        let addr = base + row.page * PAGE;
        let send: Vec<u64> = sends
            .iter()
            .filter(|p| {
                p.runs.iter().any(|r| {
                    addr >= r.addr && addr < r.addr + u64::from(r.page_len) * u64::from(r.pages)
                })
            })
            .map(|p| p.enter_ts)
            .collect();
        assert_eq!(send.len(), 1, "page {} in {} sends", row.page, send.len());
        assert!(
            send[0] >= row.send_ns,
            "page {}: recorded send entry {} before the source called it at {}",
            row.page,
            send[0],
            row.send_ns
        );
        send_lag.push(send[0] - row.send_ns);
    }
    eprintln!(
        "source truth, {} requested pages: request read by the source after the recorded receive exit: {}",
        rows.len(),
        spread(recv_lag)
    );
    eprintln!(
        "  recorded send entry after the source called the send: {}",
        spread(send_lag)
    );
}
