//! `uffdscope report` with inputs as users have them: pipes, standard input,
//! endless or binary guest logs, bad numbers and paths that are not traces.
//! Each case exits 0 (with a note) or 2 with one line naming the file and the fix.

use std::io::Write;

use std::process::{Command, Output, Stdio};

mod common;
use common::{bin, fixture, stderr};

fn json_of(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn report_json(args: &[&str]) -> serde_json::Value {
    let out = bin()
        .args(["report", "-f", "json"])
        .arg(fixture())
        .args(args)
        .output()
        .expect("run uffdscope");
    json_of(&out)
}

/// `-` reads the trace from standard input, with the same result as the file.
#[test]
fn a_trace_on_standard_input_reads_like_the_file() {
    let mut child = bin()
        .args(["report", "-f", "json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run uffdscope");
    let bytes = std::fs::read(fixture()).expect("fixture");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(&bytes));
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer").expect("write stdin");
    let piped = json_of(&out);
    let file = report_json(&[]);
    assert_eq!(piped["faults"], file["faults"]);
    assert_eq!(piped["guest"], file["guest"]);
    assert_eq!(piped["trace"]["path"], "-");
}

/// A pipe path (`<(cat t)`, `/dev/stdin`) has size 0; it was taken for an
/// empty file before.
#[cfg(unix)]
#[test]
fn a_trace_through_a_named_pipe_reads_like_the_file() {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cat '{}' | '{}' report -f csv /dev/stdin",
            fixture().display(),
            env!("CARGO_BIN_EXE_uffdscope")
        ))
        .output()
        .expect("run sh");
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(rows, 401, "header and one row per fault");
}

#[cfg(target_os = "linux")]
#[test]
fn dev_zero_as_guest_log_stops_with_a_note() {
    let v = report_json(&["--guest-log", "/dev/zero"]);
    let warnings = v["warnings"].to_string();
    assert!(
        warnings.contains("stopped reading the guest log"),
        "{warnings}"
    );
}

#[test]
fn one_bad_byte_in_a_guest_log_loses_only_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("guest.log");
    let mut text = Vec::new();
    for i in 0..20u64 {
        text.extend_from_slice(format!("{} 5\n", 1_700_000_002_000 + i * 10).as_bytes());
    }
    text.extend_from_slice(b"\xff\xfe\n");
    std::fs::write(&log, &text).expect("write log");
    let v = report_json(&["--guest-log", log.to_str().expect("utf-8 path")]);
    assert_eq!(v["guest"]["lines"]["plain"], 20);
    assert!(
        v["warnings"].to_string().contains("not text"),
        "{}",
        v["warnings"]
    );
}

#[test]
fn a_guest_offset_that_is_not_a_number_is_a_usage_error() {
    for bad in ["nan", "inf", "-inf", "soon"] {
        let out = bin()
            .arg("report")
            .arg(fixture())
            .args(["--guest-offset", bad])
            .output()
            .expect("run uffdscope");
        assert_eq!(out.status.code(), Some(1), "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains("milliseconds"), "{}", stderr(&out));
    }
}

/// Nonexistent, empty, directory: exit 2, one line that names the path and the fix.
#[test]
fn paths_that_are_not_traces_say_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty.trace");
    std::fs::write(&empty, b"").expect("write");
    let missing = dir.path().join("missing.trace");
    for (path, says) in [
        (missing, "does not exist: check the path"),
        (empty.clone(), "is empty: the recording wrote nothing"),
        (dir.path().to_path_buf(), "is a directory"),
    ] {
        let out = bin()
            .arg("report")
            .arg(&path)
            .output()
            .expect("run uffdscope");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&path.display().to_string()) && err.contains(says),
            "{err}"
        );
    }
    let out = bin()
        .args(["report", "--guest-log"])
        .arg(dir.path().join("no.log"))
        .arg(fixture())
        .output()
        .expect("run uffdscope");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no.log") && stderr(&out).contains("check the path"));
}

/// A trace on standard input has no size to bound the pass by: it must not
/// get the 1 M-record floor meant for tiny files (it was cut there once).
#[test]
fn a_large_trace_on_standard_input_is_read_whole() {
    use uffdscope_trace::record::{Drops, Note, Record};
    const N: u64 = 1_200_000;
    let t0 = 1_000_000_000u64;
    let mut records: Vec<Record> = (0..N)
        .map(|i| {
            Record::Drops(Drops {
                ts: t0 + i * 1_000,
                total: 0,
            })
        })
        .collect();
    records.push(Record::Note(Note {
        ts: t0 + N * 1_000,
        kind: "end".into(),
        text: "stopped by signal".into(),
    }));
    let meta = uffdscope_trace::TraceMeta {
        start_ns: t0,
        ..uffdscope_trace::TraceMeta::default()
    };
    let bytes = uffdscope_trace::write_all(&meta, &records);
    let mut child = bin()
        .args(["report", "-f", "json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run uffdscope");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(&bytes));
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer").expect("write stdin");
    let v = json_of(&out);
    assert_eq!(v["trace"]["events"], N + 1, "{}", stderr(&out));
    assert_eq!(v["trace"]["complete"], true);
}
