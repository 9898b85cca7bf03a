//! `uffdscope report DEST --source SRC` end to end on the committed real
//! pair: the clock and the sub-stages in JSON and text, the override, and
//! swapped sides as input errors (exit 2).

use std::path::PathBuf;

mod common;
use common::bin;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/data")
        .join(name)
}

fn dest() -> PathBuf {
    data("qemu-7.2-tcg-postcopy-both.dest.trace")
}

fn source() -> PathBuf {
    data("qemu-7.2-tcg-postcopy-both.source.trace")
}

#[test]
fn json_has_the_clock_and_the_sub_stages() {
    let out = bin()
        .args(["report", "--format", "json"])
        .arg(dest())
        .arg("--source")
        .arg(source())
        .output()
        .unwrap();
    assert!(
        out.status.code().is_some_and(|c| c == 0 || c == 4),
        "{out:?}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for path in [
        "/clock/source_offset_us",
        "/clock/bound_us",
        "/clock/drift_ppm",
        "/clock/samples/requests",
        "/clock/samples/pages",
        "/source/pid",
        "/source/threads",
        "/source/channels",
        "/faults/stages_us/to_source/p50",
        "/faults/stages_us/at_source/p99",
        "/faults/stages_us/from_source/count",
    ] {
        assert!(!v.pointer(path).unwrap().is_null(), "{path}");
    }
}

#[test]
fn text_shows_the_clock_line_and_an_override_replaces_it() {
    let out = bin()
        .arg("report")
        .arg(dest())
        .arg("--source")
        .arg(source())
        .args(["--source-offset-us", "-2.5"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("source clock: offset -2.50 µs given by --source-offset-us"),
        "{text}"
    );
    assert!(text.contains(" at_source "), "{text}");
}

#[test]
fn swapped_sides_are_input_errors() {
    for (d, s) in [(source(), source()), (dest(), dest())] {
        let out = bin()
            .arg("report")
            .arg(&d)
            .arg("--source")
            .arg(&s)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--source"), "{err}");
        assert!(out.stdout.is_empty());
    }
}
