//! Traces as untrusted input: whatever a trace holds, every writer stays
//! bounded, valid and safe for the terminal, and a cut trace says it is cut.

use serde_json::Value;
use uffdscope_analyzer::analysis::{analyze, Options};
use uffdscope_analyzer::export::{self, Limits};
use uffdscope_analyzer::render::{html, markdown, text};
use uffdscope_fixtures::synth::{Builder, FaultSpec, Scenario, RAM_BASE, T0, VCPU_TID0};
use uffdscope_trace::record::{GuestLine, Note, Record, ThreadInfo};
use uffdscope_trace::{TraceMeta, TraceReader};

/// Two faults, then `extra`, then the recorder's end note when `closed`.
fn trace(meta: &TraceMeta, extra: Vec<Record>, closed: bool) -> Vec<u8> {
    let mut b = Builder::new();
    b.preamble(T0, 2, 1 << 30);
    for i in 0..2u64 {
        let at = T0 + 1_000_000_000 + i * 10_000_000;
        b.fault(&FaultSpec::new(VCPU_TID0, RAM_BASE + i * 4096, at));
    }
    b.records.extend(extra);
    if closed {
        b.records.push(Record::Note(Note {
            ts: T0 + 3_000_000_000,
            kind: "end".into(),
            text: "target exited".into(),
        }));
    }
    uffdscope_trace::write_all(meta, &b.records)
}

fn report(bytes: &[u8]) -> uffdscope_analyzer::report::Report {
    let reader = TraceReader::new(bytes).expect("trace header");
    analyze(reader, "hostile.trace", &Options::default())
}

fn perfetto(bytes: &[u8], limits: Limits) -> (Value, export::Summary) {
    let mut reader = TraceReader::new(bytes).expect("trace header");
    let mut out = Vec::new();
    let summary = export::perfetto::export_json(&mut reader, &mut out, limits).expect("export");
    let v = serde_json::from_slice(&out).unwrap_or_else(|e| {
        panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out));
    });
    (v, summary)
}

fn instants(v: &Value) -> Vec<String> {
    v["traceEvents"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["ph"] == "i")
        .map(|e| e["name"].as_str().expect("name").to_owned())
        .collect()
}

#[test]
fn a_trace_spanning_all_of_time_keeps_its_timeline_small() {
    let far = Record::Note(Note {
        ts: u64::MAX - 1,
        kind: "warning".into(),
        text: "far future".into(),
    });
    let r = report(&trace(&Scenario::default().meta(), vec![far], true));
    let t = r.timeline.expect("faults give a timeline");
    assert!(t.faults.len() <= 300, "{} bins", t.faults.len());
    assert_eq!(t.faults.iter().sum::<u64>(), 2);
}

#[test]
fn the_pass_stops_at_its_record_bound_and_says_so() {
    let bytes = trace(&Scenario::default().meta(), Vec::new(), true);
    let (v, summary) = perfetto(&bytes, Limits { max_records: 10 });
    assert_eq!(summary.records, 10);
    assert_eq!(summary.stopped_at_limit, Some(10));
    assert!(!summary.complete);
    let names = instants(&v);
    assert!(
        names.iter().any(|n| n.contains("--max-events")),
        "{names:?}"
    );
    let reader = TraceReader::new(&bytes[..]).expect("header");
    let opts = Options {
        limits: Limits { max_records: 10 },
        ..Options::default()
    };
    let r = analyze(reader, "bounded.trace", &opts);
    assert_eq!(r.trace.events, 10);
    assert!(!r.trace.complete);
    assert!(
        r.warnings.iter().any(|w| w.contains("--max-events 10")),
        "{:?}",
        r.warnings
    );
    assert_eq!(Limits::for_file_size(100).max_records, Limits::MIN_RECORDS);
    assert_eq!(Limits::for_file_size(1 << 30).max_records, 16 << 30);
}

#[test]
fn a_cut_trace_is_reported_as_cut_in_every_format() {
    let meta = Scenario::default().meta();
    let closed = report(&trace(&meta, Vec::new(), true));
    assert!(closed.trace.complete);
    assert!(closed.warnings.is_empty(), "{:?}", closed.warnings);

    let bytes = trace(&meta, Vec::new(), false);
    let cut = report(&bytes);
    assert!(!cut.trace.complete);
    let json = serde_json::to_value(&cut).unwrap();
    assert_eq!(json["trace"]["complete"], false);
    assert!(
        json["trace"].get("stopped_at_limit").is_none(),
        "not in the contract"
    );
    let warning = "the trace is incomplete: it has no end note";
    let last = "its last record is at 1.010";
    for (format, out) in [
        ("text", text::render_text(&cut)),
        ("markdown", markdown::render_markdown(&cut)),
        ("html", html::render_html(&cut)),
        ("json", json.to_string()),
    ] {
        assert!(out.contains(warning), "{format}:\n{out}");
        assert!(out.contains(last), "{format}:\n{out}");
    }
    let (v, summary) = perfetto(&bytes, Limits::NONE);
    assert!(!summary.complete);
    assert!(
        instants(&v).iter().any(|n| n.contains("trace cut here")),
        "{:?}",
        instants(&v)
    );
}

#[test]
fn no_writer_emits_inf_or_nan() {
    let lines: Vec<Record> = [
        "stress (42): INFO: 1700000000000ms copied 1 GB in 1e999ms",
        "stress (42): INFO: 1700000000400ms copied 1 GB in NaNms",
        "1e999 400",
        r#"{"dur_ms": 1e308, "epoch_ms": 1700000000800}"#,
        "stress (42): INFO: 1700000001200ms copied 1 GB in 1e308ms",
        "stress (42): INFO: 1700000001600ms copied 1 GB in 400ms",
    ]
    .iter()
    .enumerate()
    .map(|(i, text)| {
        Record::GuestLine(GuestLine {
            ts: T0 + 1_000_000_000 + i as u64 * 400_000_000,
            text: (*text).to_owned(),
        })
    })
    .collect();
    let bytes = trace(&Scenario::default().meta(), lines, true);
    let (v, _) = perfetto(&bytes, Limits::NONE);
    assert!(v["traceEvents"].is_array());
    let r = report(&bytes);
    let g = r.guest.as_ref().expect("guest lines");
    // Non-finite and absurd figures are not measurements: the guest-log
    // reader counts them apart (and says so in a warning).
    assert_eq!(
        g.lines.rejected, 5,
        "non-finite figures are not measurements"
    );
    assert_eq!(g.samples, 1, "only the 400 ms line is a measurement");
    let json = serde_json::to_string(&r).unwrap();
    serde_json::from_str::<Value>(&json).expect("report JSON");
    let inf_or_nan = |s: &str| {
        s.split(|c: char| !c.is_ascii_alphanumeric())
            .any(|w| matches!(w, "inf" | "NaN" | "nan" | "Infinity"))
    };
    for (format, out) in [
        ("json", json.clone()),
        ("text", text::render_text(&r)),
        ("markdown", markdown::render_markdown(&r)),
        ("html", html::render_html(&r)),
    ] {
        assert!(!inf_or_nan(&out), "{format}:\n{out}");
    }
    let mut reader = TraceReader::new(&bytes[..]).expect("header");
    let mut csv = Vec::new();
    export::csv::export(&mut reader, &mut csv, Limits::NONE).expect("csv");
    assert!(!inf_or_nan(&String::from_utf8(csv).expect("utf-8")));
}

#[test]
fn trace_strings_reach_the_terminal_escaped() {
    let evil = "x\u{1b}]0;pwned\u{7}\u{1b}[2J\r\0\u{9b}y";
    let meta = TraceMeta {
        host: evil.to_owned(),
        kernel: evil.to_owned(),
        target_comm: evil.to_owned(),
        ..Scenario::default().meta()
    };
    let name = Record::Thread(ThreadInfo {
        ts: T0 + 1,
        tid: VCPU_TID0,
        name: format!("CPU 0/KVM {evil}"),
        role: uffdscope_trace::record::Role::Vcpu,
    });
    let end = Record::Note(Note {
        ts: T0 + 4_000_000_000,
        kind: "end".into(),
        text: evil.to_owned(),
    });
    let r = report(&trace(&meta, vec![name, end], false));
    let out = text::render_text(&r);
    for c in out.chars() {
        assert!(
            !c.is_control() || c == '\n',
            "control {c:?} reaches the terminal:\n{out}"
        );
    }
    assert!(
        out.contains("x\\x1b]0;pwned\\x07\\x1b[2J\\x0d\\x00\\x9by"),
        "{out}"
    );
}
