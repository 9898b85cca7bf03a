//! End-to-end tests of the `uffdscope` binary: formats, exit codes, safe output.

use std::path::PathBuf;
use std::process::Command;

mod common;
use common::{bin, fixture};

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

/// Runs `report -f FORMAT` on the committed trace; stdout on success.
fn report_as(format: &str) -> String {
    let out = bin()
        .args(["report", "-f", format])
        .arg(fixture())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{format}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fault_count() -> u64 {
    let v: serde_json::Value = serde_json::from_str(&report_as("json")).unwrap();
    v["faults"]["count"].as_u64().unwrap()
}

#[test]
fn markdown_report_has_the_stage_table() {
    let md = report_as("markdown");
    assert!(
        md.contains("| stage (µs) | p50 | p90 | p99 | max | count | share |"),
        "{md}"
    );
    for stage in ["queue", "request", "network", "place", "wake"] {
        assert!(
            md.contains(&format!("\n| {stage} | ")),
            "row {stage} missing:\n{md}"
        );
    }
    assert!(md.contains("**vCPU blocktime**") && md.contains("**Slowest faults**"));
    assert!(
        md.len() < 8_000,
        "too long for an issue comment: {} bytes",
        md.len()
    );
}

#[test]
fn html_report_is_self_contained_and_structured() {
    let html = report_as("html");
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.trim_end().ends_with("</html>"));
    assert!(!html.contains("<script"), "no scripts at all");
    for external in ["src=\"http", "href=\"http", "url(http", "@import", "<link"] {
        assert!(!html.contains(external), "external resource: {external}");
    }
    for id in [
        "stages",
        "latency",
        "guest-timeline",
        "timeline",
        "guest",
        "blocktime",
        "threads",
        "network",
        "slowest",
    ] {
        assert!(
            html.contains(&format!("<section id=\"{id}\">")),
            "section {id} missing"
        );
    }
    for (open, close) in [
        ("<section", "</section>"),
        ("<svg", "</svg>"),
        ("<table", "</table>"),
    ] {
        assert_eq!(
            html.matches(open).count(),
            html.matches(close).count(),
            "unbalanced {open}"
        );
    }
    assert!(html.matches("<svg").count() >= 6, "plots missing");
    assert!(html.contains("CPU 0/TCG") && html.contains("postcopy-active"));
}

#[test]
fn html_escapes_strings_from_the_trace_and_guest() {
    use uffdscope_fixtures::synth::{Scenario, T0, VCPU_TID0};
    use uffdscope_trace::record::{GuestLine, Record, Role, ThreadInfo};
    let evil = "<script>alert(1)</script>";
    let scenario = Scenario::default();
    let mut records = Vec::new();
    scenario.generate(|r| records.push(r.clone()), false);
    // Rename a vCPU after the fact and add guest lines from an evil writer.
    records.push(Record::Thread(ThreadInfo {
        ts: T0 + 1,
        tid: VCPU_TID0,
        name: format!("CPU 0/{evil}"),
        role: Role::Vcpu,
    }));
    for i in 1..=4u64 {
        records.push(Record::GuestLine(GuestLine {
            ts: T0 + i * 400_000_000,
            text: format!(
                "{evil} (1): INFO: {}ms copied 1 GB in {}ms",
                1_700_000_000_000 + i * 400,
                if i == 4 { 2000 } else { 400 }
            ),
        }));
    }
    let mut meta = scenario.meta();
    meta.target_comm = evil.to_owned();
    let dir = tempfile::tempdir().unwrap();
    // A file name cannot hold the `/` of `</script>`.
    let path = dir.path().join("<script>x.trace");
    std::fs::write(&path, uffdscope_trace::write_all(&meta, &records)).unwrap();
    let out = bin()
        .args(["report", "-f", "html"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = String::from_utf8(out.stdout).unwrap();
    assert!(!html.contains("<script"), "unescaped trace string");
    let escaped = "&lt;script&gt;alert(1)&lt;/script&gt;";
    assert!(
        html.contains(&format!("CPU 0/{escaped}")),
        "thread name shown escaped"
    );
    assert!(
        html.contains(&format!("{escaped} (1)")),
        "guest writer shown escaped"
    );
    assert!(html.contains("&lt;script&gt;x.trace"), "path shown escaped");
    let md = {
        let out = bin()
            .args(["report", "-f", "markdown"])
            .arg(&path)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(
        !md.contains("<script"),
        "markdown must not carry raw HTML from the trace"
    );
}

#[test]
fn perfetto_export_is_json_with_thread_tracks_and_fault_slices() {
    let text = report_as("perfetto-json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let ev = v["traceEvents"].as_array().unwrap();
    let names: Vec<&str> = ev
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .filter_map(|e| e["args"]["name"].as_str())
        .collect();
    for want in [
        "CPU 0/TCG [vcpu]",
        "CPU 1/TCG [vcpu]",
        "fault-default [fault]",
        "postcopy/listen [listen]",
        "guest console",
        "QMP migration status",
    ] {
        assert!(names.contains(&want), "track {want} missing: {names:?}");
    }
    let faults = ev
        .iter()
        .filter(|e| {
            e["ph"] == "X"
                && e["cat"] == "fault"
                && e["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("fault 0x"))
        })
        .count() as u64;
    assert_eq!(faults, fault_count(), "one slice per fault");
    assert!(ev.iter().any(|e| e["ph"] == "s") && ev.iter().any(|e| e["ph"] == "f"));
}

#[test]
fn perfetto_export_is_a_protobuf_trace_of_packets() {
    let out = bin()
        .args(["report", "-f", "perfetto"])
        .arg(fixture())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A Trace is a run of `packet` fields (field 1, length-delimited); the
    // structure is checked in analyzer/tests/perfetto_protobuf.rs.
    let b = &out.stdout;
    let mut pos = 0;
    let mut packets = 0;
    while pos < b.len() {
        assert_eq!(b[pos], 0x0a, "packet field at byte {pos}");
        pos += 1;
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let byte = b[pos];
            pos += 1;
            len |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        pos += len;
        packets += 1;
    }
    assert_eq!(pos, b.len(), "the last packet ends the file");
    assert!(packets as u64 > fault_count(), "{packets} packets");
}

#[test]
fn parquet_export_writes_three_tables_once_and_needs_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet");
    let export = || {
        bin()
            .args(["report", "-f", "parquet"])
            .arg(fixture())
            .arg("-o")
            .arg(&fleet)
            .output()
            .unwrap()
    };
    let out = export();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(files.len(), 3, "{files:?}");
    for (file, table) in files.iter().zip(["faults", "threads", "guest_intervals"]) {
        assert!(file.contains(&format!("/{table}/")), "{file}");
        assert_eq!(&std::fs::read(file).unwrap()[..4], b"PAR1", "{file}");
    }
    let again = export();
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already exported"), "{err}");
    let piped = bin()
        .args(["report", "-f", "parquet", "-", "-o"])
        .arg(dir.path().join("other"))
        .stdin(std::fs::File::open(fixture()).unwrap())
        .output()
        .unwrap();
    assert!(!piped.status.success());
    let err = String::from_utf8_lossy(&piped.stderr);
    assert!(err.contains("needs a trace file"), "{err}");
}

#[test]
fn csv_export_has_one_row_per_fault() {
    let text = report_as("csv");
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("tid,page,resolution,"));
    let columns = header.split(',').count();
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len() as u64, fault_count());
    assert!(rows.iter().all(|r| r.split(',').count() == columns));
}

#[test]
fn streamed_exports_never_clobber_and_report_damage() {
    let dir = tempfile::tempdir().unwrap();
    for format in ["perfetto", "perfetto-json", "csv", "html", "markdown"] {
        let existing = dir.path().join(format!("existing.{format}"));
        std::fs::write(&existing, b"precious").unwrap();
        let out = bin()
            .args(["report", "-f", format])
            .arg(fixture())
            .arg("-o")
            .arg(&existing)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{format} overwrote a file");
        assert_eq!(std::fs::read(&existing).unwrap(), b"precious");
        #[cfg(unix)]
        {
            let target = dir.path().join(format!("target.{format}"));
            std::fs::write(&target, b"precious").unwrap();
            let link = dir.path().join(format!("link.{format}"));
            std::os::unix::fs::symlink(&target, &link).unwrap();
            let out = bin()
                .args(["report", "-f", format])
                .arg(fixture())
                .arg("-o")
                .arg(&link)
                .output()
                .unwrap();
            assert!(!out.status.success(), "{format} followed a symlink");
            assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        }
    }
    let bytes = std::fs::read(fixture()).unwrap();
    let cut = dir.path().join("cut.trace");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let out = bin()
        .args(["report", "-f", "perfetto-json"])
        .arg(&cut)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("closed JSON despite damage");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cut.trace") && err.contains("truncated"),
        "{err}"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn record_errors_name_the_problem() {
    // Not root: run unprivileged (drop to nobody when we are root).
    let me = std::process::id().to_string();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let out = if root {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_uffdscope"))
            .args(["record", "--pid", &me, "-o", "/nonexistent/x.trace"])
            .output()
            .expect("setpriv (util-linux) runs")
    } else {
        bin()
            .args(["record", "--pid", &me, "-o", "/nonexistent/x.trace"])
            .output()
            .unwrap()
    };
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must run as root"), "{err}");

    // A pid that does not exist.
    let out = bin()
        .args(["record", "--pid", "4194300", "-o", "/tmp/never.trace"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Neither --pid nor --qemu is a usage error.
    let out = bin().args(["record", "-o", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// The committed trace without its end note: a recording that was cut.
fn cut_trace(dir: &std::path::Path) -> PathBuf {
    use uffdscope_trace::record::Record;
    let bytes = std::fs::read(fixture()).unwrap();
    let all = uffdscope_trace::read_all(&bytes).unwrap();
    let meta = uffdscope_trace::TraceReader::new(&bytes[..])
        .unwrap()
        .meta()
        .clone();
    let records: Vec<Record> = all
        .records
        .into_iter()
        .filter(|r| !matches!(r, Record::Note(n) if n.kind == "end"))
        .collect();
    let path = dir.join("cut.trace");
    std::fs::write(&path, uffdscope_trace::write_all(&meta, &records)).unwrap();
    path
}

#[test]
fn a_cut_trace_is_reported_and_exits_4() {
    let dir = tempfile::tempdir().unwrap();
    let cut = cut_trace(dir.path());
    for format in [
        "text",
        "json",
        "markdown",
        "html",
        "perfetto",
        "perfetto-json",
        "csv",
    ] {
        let out = bin()
            .args(["report", "--format", format])
            .arg(&cut)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(4), "{format}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("no end note"), "{format}: {stderr}");
        assert!(
            !out.stdout.is_empty(),
            "{format}: the output is still written"
        );
    }
    let out = bin().arg("report").arg(fixture()).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "the committed trace is complete"
    );
}

#[test]
fn max_events_bounds_the_pass_and_exits_4() {
    for format in ["json", "perfetto-json"] {
        let out = bin()
            .args(["report", "--max-events", "50", "--format", format])
            .arg(fixture())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(4), "{format}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--max-events 50"), "{format}: {stderr}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
        if format == "json" {
            assert_eq!(v["trace"]["events"], 50);
            assert_eq!(v["trace"]["complete"], false);
        }
    }
}

#[test]
fn help_documents_the_exit_codes() {
    let out = bin().args(["report", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Exit codes:"), "{help}");
    assert!(
        help.contains("4  report written, but the trace is incomplete"),
        "{help}"
    );
    assert!(help.contains("--max-events"), "{help}");
}
