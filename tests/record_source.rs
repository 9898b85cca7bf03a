//! Root tier: `uffdscope record` on the emulator's *source* process (real
//! BPF), beside a second recorder on its destination, checked against what
//! the emulator knows: the bytes its return-path thread read (captured by
//! the emulator itself), every page of its RAM sent once in page runs with
//! one RAMBlock base, and each requested page sent on the preempt channel no
//! sooner than the configured delay after the receive that delivered its
//! request (the emulator queues it at that receive for exactly that long).
#![cfg(target_os = "linux")]

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use uffdscope_fixtures::emu::{Bandwidth, Config, Emu};
use uffdscope_fixtures::tier;
use uffdscope_trace::record::Record;

#[path = "common/both_ends.rs"]
mod both_ends;
use both_ends::{
    check_requested_pages, check_return_path, check_sends, check_sides, read, requests, spread,
    PAGE,
};

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

/// `uffdscope record --side SIDE` on `pid`, returned once it is attached.
fn start_recorder(pid: u32, side: &str, out: &Path) -> Child {
    let ready = out.with_extension("ready");
    let child = Command::new(env!("CARGO_BIN_EXE_uffdscope"))
        .args(["record", "-q", "--side", side, "--pid", &pid.to_string()])
        .arg("-o")
        .arg(out)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn uffdscope record");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(
            Instant::now() < deadline,
            "recorder not attached within 30 s"
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

#[test]
fn source_recording_matches_the_emulator() {
    if !tier::root_bpf("source_recording_matches_the_emulator") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let capture = dir.path().join("rp.bin");
    let cfg = Config {
        mem_bytes: 32 << 20,
        vcpus: 2,
        bandwidth: Bandwidth::BytesPerSec(32 << 20),
        preempt: true,
        request_delay_us: REQUEST_DELAY.as_micros() as u64,
        // Every page has content, so every page is sent as a page iovec.
        zero_percent: 0,
        capture_rp: Some(capture.clone()),
        wait_for_signal: true,
        ..Config::default()
    };
    let emu = Emu::spawn(&cfg).expect("spawn emulator");
    let source_pid = child_of(emu.pid());
    let (dst_trace, src_trace) = (dir.path().join("dst.trace"), dir.path().join("src.trace"));
    let dst_rec = start_recorder(emu.pid(), "destination", &dst_trace);
    let src_rec = start_recorder(source_pid, "auto", &src_trace);
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

    // Requested pages: the preempt thread sends each no sooner than the
    // delay after the receive that delivered its request.
    let legs = check_requested_pages(&requests(&sent), &received, &sends, (BLOCK, base));
    let preempt: Vec<u32> = src
        .iter()
        .filter_map(|r| match r {
            Record::Thread(t) if t.name == "mig/src/preempt" => Some(t.tid),
            _ => None,
        })
        .collect();
    let delay = REQUEST_DELAY.as_nanos() as u64;
    let late: Vec<u64> = legs
        .at_source
        .iter()
        .zip(&legs.senders)
        .filter(|(_, tid)| preempt.contains(tid))
        .map(|(&ns, _)| ns)
        .collect();
    assert!(
        !late.is_empty(),
        "no requested page went out on the preempt channel"
    );
    assert!(
        late.iter().all(|&ns| ns >= delay),
        "a page sent sooner than {delay} ns after its request's receive: {late:?}"
    );
    eprintln!(
        "preempt sends after the receive, minus the emulator's {delay} ns delay: {}",
        spread(late.iter().map(|ns| ns - delay).collect())
    );
}
