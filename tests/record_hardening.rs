//! Root tier: `uffdscope record` (the real binary, real BPF) against hostile
//! or absent peers — a guest console FIFO nobody writes, an endless console
//! (`/dev/zero`), a missing or garbage-speaking QMP socket, a target whose
//! name is a terminal escape — always ends on `--duration` or SIGINT, says
//! what failed on stderr (escaped), and keeps it in the trace as notes.
#![cfg(target_os = "linux")]

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use uffdscope_fixtures::tier;
use uffdscope_trace::record::Record;
use uffdscope_trace::TraceReader;

/// A target process, killed when dropped (also when a test fails).
struct Target(Child);

impl Target {
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A FIFO nobody writes to.
fn fifo(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("console.fifo");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    path
}

/// A target that sleeps, having named itself `name` (a process may rename
/// only itself); the name is given to `printf` as its format.
fn target(name: &str) -> Target {
    let child = Command::new("sh")
        .args([
            "-c",
            "printf \"$0\" > /proc/$$/comm; exec 1>&-; while :; do sleep 1; done",
        ])
        .arg(name)
        .spawn()
        .expect("spawn sh");
    // Until sh renames itself, its name is our thread's (before exec) or "sh".
    let ours = std::fs::read_to_string("/proc/thread-self/comm").expect("our thread's name");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{}/comm", child.id()))
        .is_ok_and(|c| c == "sh\n" || c == ours)
    {
        assert!(
            Instant::now() < deadline,
            "the target did not rename itself"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Target(child)
}

fn record(pid: u32, out: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_uffdscope"))
        .args(["record", "-q", "--pid", &pid.to_string(), "-o"])
        .arg(out)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn uffdscope record")
}

/// Waits for the recorder, failing after `limit`.
fn wait(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("recorder still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("recorder output")
}

fn notes(trace: &Path) -> Vec<(String, String)> {
    let mut reader = TraceReader::open(trace).expect("trace opens");
    let mut out = Vec::new();
    let damage = reader.for_each(|r| {
        if let Record::Note(n) = r {
            out.push((n.kind, n.text));
        }
    });
    assert!(damage.is_none(), "damaged trace: {damage:?}");
    out
}

#[test]
fn silent_and_endless_peers_end_on_duration() {
    if !tier::root_bpf("silent_and_endless_peers_end_on_duration") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = fifo(dir.path());
    let t = target("\\033]0;pwned\\007");
    for (name, console) in [("fifo", fifo.as_path()), ("zero", Path::new("/dev/zero"))] {
        let trace = dir.path().join(format!("{name}.trace"));
        let qmp = dir.path().join("absent.qmp");
        let rec = record(
            t.id(),
            &trace,
            &[
                "--duration",
                "1",
                "--guest-console",
                console.to_str().expect("utf-8 path"),
                "--qmp",
                qmp.to_str().expect("utf-8 path"),
            ],
        );
        let out = wait(rec, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        assert!(
            !stderr.contains('\x1b') && !stderr.contains('\x07'),
            "{name}: raw escape on stderr: {stderr:?}"
        );
        assert!(
            stderr.contains("\\e]0;pwned\\a"),
            "{name}: target name not shown escaped: {stderr}"
        );
        assert!(
            stderr.contains("cannot connect to QMP"),
            "{name}: QMP failure not on stderr: {stderr}"
        );
        let kinds: Vec<String> = notes(&trace).into_iter().map(|n| n.0).collect();
        assert!(kinds.iter().any(|k| k == "qmp_error"), "{name}: {kinds:?}");
        assert_eq!(
            kinds.last().map(String::as_str),
            Some("end"),
            "{name}: {kinds:?}"
        );
        if name == "zero" {
            assert!(
                kinds.iter().any(|k| k == "console_cut"),
                "{name}: {kinds:?}"
            );
        }
        let size = std::fs::metadata(&trace).expect("trace").len();
        assert!(size < 64 << 20, "{name}: trace grew to {size} bytes");
    }
}

#[test]
fn sigint_ends_a_recording_with_a_silent_fifo_and_garbage_qmp() {
    if !tier::root_bpf("sigint_ends_a_recording_with_a_silent_fifo_and_garbage_qmp") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = fifo(dir.path());
    let qmp = dir.path().join("garbage.qmp");
    let listener = UnixListener::bind(&qmp).expect("bind the QMP socket");
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(b"\x1b[31mnot json\x07\n");
            std::thread::sleep(Duration::from_secs(60));
        }
    });
    let t = target("plain");
    let trace = dir.path().join("sigint.trace");
    let rec = record(
        t.id(),
        &trace,
        &[
            "--guest-console",
            fifo.to_str().expect("utf-8 path"),
            "--qmp",
            qmp.to_str().expect("utf-8 path"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&trace).map_or(0, |m| m.len()) < 64 {
        assert!(Instant::now() < deadline, "recorder did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(rec.id()).expect("pid")),
        nix::sys::signal::SIGINT,
    )
    .expect("SIGINT the recorder");
    let out = wait(rec, Duration::from_secs(15));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("QMP") && stderr.contains("invalid JSON"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\x1b') && !stderr.contains('\x07'),
        "raw escape on stderr: {stderr:?}"
    );
    let notes = notes(&trace);
    assert!(notes.iter().any(|n| n.0 == "qmp_error"), "{notes:?}");
    assert_eq!(
        notes.last().map(|n| n.1.as_str()),
        Some("stopped by signal")
    );
}

#[test]
fn a_failed_start_leaves_no_trace() {
    if !tier::root_bpf("a_failed_start_leaves_no_trace") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let t = target("plain");
    // Refused by the pre-flight: nothing is created.
    let ready = dir.path().join("ready");
    std::fs::write(&ready, b"").expect("ready file");
    let trace = dir.path().join("never.trace");
    let ready_arg = ready.to_str().expect("utf-8 path");
    let out = wait(
        record(t.id(), &trace, &["--ready-file", ready_arg]),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already exists"), "{stderr}");
    assert!(!trace.exists(), "a refused start left {}", trace.display());
    // Failing after the trace was created (the ready file is the trace
    // itself, so creating it fails): the trace is removed again.
    let same = dir.path().join("same.trace");
    let same_arg = same.to_str().expect("utf-8 path");
    let out = wait(
        record(t.id(), &same, &["--ready-file", same_arg]),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(!same.exists(), "a failed start left {}", same.display());
}

/// Runs `uffdscope ARGS` in a private mount namespace where tracefs is not
/// mounted (the host's mounts are untouched).
fn without_tracefs(args: &[&str]) -> Output {
    let script = "umount -l /sys/kernel/tracing 2>/dev/null; \
                  umount -l /sys/kernel/debug 2>/dev/null; \
                  test -e /sys/kernel/tracing/events && exit 97; \
                  exec \"$@\"";
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(env!("CARGO_BIN_EXE_uffdscope"))
        .args(args)
        .output()
        .expect("unshare (util-linux) runs");
    assert_ne!(
        out.status.code(),
        Some(97),
        "tracefs still mounted in the namespace"
    );
    out
}

#[test]
fn record_and_check_mount_a_missing_tracefs() {
    if !tier::root_bpf("record_and_check_mount_a_missing_tracefs") {
        return;
    }
    let out = without_tracefs(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("was not mounted: mounted it at /sys/kernel/tracing"),
        "{stdout}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("mounted.trace");
    let t = target("plain");
    let pid = t.id().to_string();
    let trace_arg = trace.to_str().expect("utf-8 path");
    let out = without_tracefs(&[
        "record",
        "-q",
        "--pid",
        &pid,
        "--duration",
        "0.5",
        "-o",
        trace_arg,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("tracefs was not mounted: mounted it at /sys/kernel/tracing"),
        "{stderr}"
    );
    assert_eq!(notes(&trace).last().map(|n| n.0.as_str()), Some("end"));
}
