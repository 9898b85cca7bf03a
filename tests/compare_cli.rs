//! The `compare`, `completions` and `man` subcommands and `report --format
//! hlog` end to end: output, exit codes, hostile inputs.

mod common;
use common::{bin, fixture, stderr};

#[test]
fn compare_in_every_format() {
    for (format, expect) in [
        ("text", "B/A"),
        ("markdown", "| B/A |"),
        ("json", "\"schema\": \"uffdscope.compare/1\""),
    ] {
        let out = bin()
            .args([
                "compare", "--format", format, "--label", "off", "--label", "on",
            ])
            .arg(fixture())
            .arg(fixture())
            .output()
            .unwrap();
        assert!(out.status.success(), "{format}: {}", stderr(&out));
        let body = String::from_utf8(out.stdout).unwrap();
        assert!(body.contains(expect), "{format}:\n{body}");
        assert!(
            body.contains("on against off: nothing changed"),
            "{format}:\n{body}"
        );
    }
}

#[test]
fn compare_labels_default_to_file_names_made_unique() {
    let out = bin()
        .args(["compare", "-f", "json"])
        .arg(fixture())
        .arg(fixture())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["runs"][0]["label"], "synthetic-2vcpu.trace");
    assert_eq!(v["runs"][1]["label"], "synthetic-2vcpu.trace#2");
}

#[test]
fn compare_usage_errors_exit_1() {
    let one = bin().arg("compare").arg(fixture()).output().unwrap();
    assert_eq!(one.status.code(), Some(1), "one trace is not a comparison");
    let labels = bin()
        .args(["compare", "--label", "only-one"])
        .arg(fixture())
        .arg(fixture())
        .output()
        .unwrap();
    assert_eq!(labels.status.code(), Some(1));
    assert!(
        stderr(&labels).contains("one --label per trace"),
        "{}",
        stderr(&labels)
    );
}

#[test]
fn compare_hostile_traces_exit_like_report() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.trace");
    std::fs::write(&empty, b"").unwrap();
    let junk = dir.path().join("junk.trace");
    std::fs::write(&junk, b"this is not a trace at all").unwrap();
    for bad in [&empty, &junk, &dir.path().join("missing.trace")] {
        let out = bin()
            .arg("compare")
            .arg(fixture())
            .arg(bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", bad.display());
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(&bad.display().to_string()), "{err}");
        assert!(out.stdout.is_empty(), "nothing compared");
    }
    assert!(stderr(
        &bin()
            .arg("compare")
            .arg(fixture())
            .arg(&empty)
            .output()
            .unwrap()
    )
    .contains("is empty"));
    // A damaged trace: compared up to its last good frame, exit 2.
    let bytes = std::fs::read(fixture()).unwrap();
    let cut = dir.path().join("cut.trace");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let out = bin()
        .arg("compare")
        .arg(fixture())
        .arg(&cut)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("damaged trace"), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cut.trace"));
}

#[test]
fn compare_output_file_is_never_clobbered() {
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("cmp.md");
    std::fs::write(&existing, b"keep").unwrap();
    let out = bin()
        .args(["compare", "-f", "markdown", "-o"])
        .arg(&existing)
        .arg(fixture())
        .arg(fixture())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep");
}

#[test]
fn hlog_format_streams_an_interval_log() {
    let out = bin()
        .args(["report", "--format", "hlog", "--interval", "0.5"])
        .arg(fixture())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let log = String::from_utf8(out.stdout).unwrap();
    assert!(
        log.starts_with("#[Histogram log format version 1.3]"),
        "{log}"
    );
    assert!(log.contains("Tag=service,") && log.contains("Tag=network,"));
    assert!(log.lines().any(|l| l.contains(",0.500,")), "{log}");
    let bad = bin()
        .args(["report", "--format", "hlog", "--interval", "0"])
        .arg(fixture())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("--interval"), "{}", stderr(&bad));
}

#[test]
fn completions_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = bin().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = String::from_utf8(out.stdout).unwrap();
        for sub in ["report", "compare", "completions", "man"] {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
        assert!(
            script.contains("hlog"),
            "{shell}: the format values complete"
        );
    }
}

#[test]
fn man_page_has_name_and_synopsis() {
    let out = bin().arg("man").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.starts_with(".ie") || page.starts_with(".TH"), "roff");
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH SUBCOMMANDS"] {
        assert!(page.contains(section), "{section} in\n{page}");
    }
    assert!(page.contains("uffdscope"));
    assert!(page.contains("compare"));
}
