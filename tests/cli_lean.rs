//! `uffdscope lean`: a shrunk trace reports the same, the output is never
//! clobbered, damage is reported with exit code 2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_uffdscope"))
}

fn real() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/data/qemu-7.2-tcg-postcopy-1vcpu.trace")
}

/// Runs `uffdscope lean INPUT -o OUTPUT`.
fn run_lean(input: impl AsRef<Path>, output: impl AsRef<Path>) -> Output {
    bin()
        .arg("lean")
        .arg(input.as_ref())
        .arg("-o")
        .arg(output.as_ref())
        .output()
        .unwrap()
}

/// The JSON report of `trace`, whose `report` must exit with `code`.
fn json_report(trace: &Path, code: i32) -> serde_json::Value {
    let out = bin()
        .args(["report", "-f", "json"])
        .arg(trace)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{said}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_lean_trace_reports_like_the_full_one() {
    let dir = tempfile::tempdir().unwrap();
    let lean = dir.path().join("lean.trace");
    let out = run_lean(real(), &lean);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("145527 records → 31573"), "{said}");
    let (mut full, mut small) = (json_report(&real(), 0), json_report(&lean, 0));
    // What describes the file: its path, its record count, its format.
    assert_eq!(full["trace"]["format_version"], 1);
    assert_eq!(small["trace"]["format_version"], 4);
    assert_eq!(small["trace"]["events"], 31573);
    for key in ["path", "events", "format_version"] {
        full["trace"][key] = serde_json::Value::Null;
        small["trace"][key] = serde_json::Value::Null;
    }
    assert_eq!(full, small);
    let full_bytes = std::fs::metadata(real()).unwrap().len();
    let lean_bytes = std::fs::metadata(&lean).unwrap().len();
    assert!(
        lean_bytes * 2 < full_bytes,
        "{lean_bytes} of {full_bytes} bytes"
    );
}

#[test]
fn lean_never_clobbers_and_reports_damage() {
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("existing.trace");
    std::fs::write(&existing, b"precious").unwrap();
    let out = run_lean(real(), &existing);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must not exist"));
    assert_eq!(std::fs::read(&existing).unwrap(), b"precious");

    let bytes = std::fs::read(real()).unwrap();
    let cut = dir.path().join("cut.trace");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let out_path = dir.path().join("cut.lean.trace");
    let out = run_lean(&cut, &out_path);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is damaged"));
    // The cut trace has no end note, so its report exits 4 (incomplete).
    assert!(json_report(&out_path, 4)["faults"]["count"].as_u64() > Some(0));

    let missing = dir.path().join("missing.trace");
    let out = run_lean(&missing, dir.path().join("x"));
    assert_eq!(out.status.code(), Some(2));
}
