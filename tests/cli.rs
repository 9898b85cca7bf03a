//! End-to-end tests of the `uffdscope` binary: formats, exit codes, safe output.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_uffdscope"))
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/data/synthetic-2vcpu.trace")
}

#[test]
fn text_report_of_the_committed_trace() {
    let out = bin().arg("report").arg(fixture()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("400 faults"), "{text}");
    assert!(text.contains("Slowest faults"), "{text}");
}

#[test]
fn json_report_has_every_contract_key() {
    let out = bin()
        .args(["report", "--format", "json"])
        .arg(fixture())
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema"], "uffdscope.report/1");
    for path in [
        "/trace/path",
        "/trace/duration_s",
        "/trace/events",
        "/trace/drops",
        "/trace/target/pid",
        "/trace/target/comm",
        "/trace/kernel",
        "/faults/count",
        "/faults/by_resolution",
        "/faults/service_us/p50",
        "/faults/service_us/p90",
        "/faults/service_us/p99",
        "/faults/service_us/p999",
        "/faults/service_us/max",
        "/faults/service_us/mean",
        "/threads",
        "/blocktime_ms/vcpu_sum",
        "/blocktime_ms/all_vcpus_overlap",
        "/blocktime_ms/per_vcpu",
        "/network/channels",
        "/guest",
        "/qemu",
    ] {
        assert!(v.pointer(path).is_some(), "missing {path}");
    }
    for stage in ["queue", "request", "network", "place", "wake"] {
        for k in ["p50", "p90", "p99", "max", "count"] {
            let p = format!("/faults/stages_us/{stage}/{k}");
            assert!(v.pointer(&p).is_some(), "missing {p}");
        }
    }
    let t = &v["threads"][0];
    for k in ["tid", "name", "role", "faults", "blocked_ms"] {
        assert!(t.get(k).is_some(), "thread row missing {k}");
    }
    let c = &v["network"]["channels"][0];
    for k in ["role", "srtt_us", "retransmits", "bytes_rx", "bytes_tx"] {
        assert!(c.get(k).is_some(), "channel missing {k}");
    }
    for k in ["lines", "baseline_ms", "spikes", "correlation", "alignment"] {
        assert!(v["guest"].get(k).is_some(), "guest missing {k}");
    }
    for k in ["blocktime_ms", "vcpu_blocktime_ms", "status_timeline"] {
        assert!(v["qemu"].get(k).is_some(), "qemu missing {k}");
    }
}

#[test]
fn damaged_trace_reports_the_good_part_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture()).unwrap();
    let cut = dir.path().join("cut.trace");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let out = bin().arg("report").arg(&cut).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cut.trace") && err.contains("truncated"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one-line error: {err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("WARNING"));
}

#[test]
fn unreadable_inputs_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.trace");
    std::fs::write(&junk, b"this is not a trace at all").unwrap();
    for path in [junk, dir.path().join("missing.trace")] {
        let out = bin().arg("report").arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", path.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn usage_errors_exit_1_and_help_has_examples() {
    let out = bin()
        .args(["report", "--format", "yaml", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = bin().args(["report", "--help"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Examples:"));
}

#[test]
fn output_file_is_never_clobbered() {
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("report.txt");
    std::fs::write(&existing, b"precious").unwrap();
    let out = bin()
        .arg("report")
        .arg(fixture())
        .arg("-o")
        .arg(&existing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(std::fs::read(&existing).unwrap(), b"precious");
    let fresh = dir.path().join("new.json");
    let out = bin()
        .args(["report", "-f", "json"])
        .arg(fixture())
        .arg("-o")
        .arg(&fresh)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(std::fs::read_to_string(&fresh)
        .unwrap()
        .contains("uffdscope.report/1"));
}
