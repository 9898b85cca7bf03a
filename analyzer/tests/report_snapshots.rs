//! Snapshot tests of the text and JSON report of the committed synthetic trace,
//! and a check that the committed trace is exactly what the generator writes.

use std::path::PathBuf;

use uffdscope_analyzer::analysis::{analyze, Options};
use uffdscope_fixtures::synth::Scenario;
use uffdscope_trace::TraceReader;

const REL: &str = "fixtures/data/synthetic-2vcpu.trace";

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(REL)
}

fn report() -> uffdscope_analyzer::report::Report {
    let reader = TraceReader::open(&fixture()).expect("committed fixture trace opens");
    analyze(reader, REL, &Options::default())
}

/// The default scenario's records, and the trace this build writes of them.
fn generated() -> (Vec<uffdscope_trace::record::Record>, Vec<u8>) {
    let scenario = Scenario::default();
    let mut records = Vec::new();
    scenario.generate(|r| records.push(r.clone()), false);
    let fresh = uffdscope_trace::write_all(&scenario.meta(), &records);
    (records, fresh)
}

#[test]
fn committed_trace_matches_the_generator() {
    let (records, fresh) = generated();
    let committed = std::fs::read(fixture()).expect("fixture readable");
    let back = uffdscope_trace::read_all(&committed).expect("fixture header");
    assert!(back.damage.is_none());
    assert_eq!(
        back.records, records,
        "fixtures/data/synthetic-2vcpu.trace is stale: regenerate with `cargo run -p uffdscope-fixtures --bin uffdscope-gen -- -o ...`"
    );
    assert_eq!(uffdscope_trace::read_all(&fresh).unwrap().records, records);
}

/// Format version 1 (before the kernel's sleep facts were kept) still reads,
/// and gives the same report as the same scenario written today.
#[test]
fn format_version_1_reads_and_reports_alike() {
    const V1: &str = "fixtures/data/synthetic-2vcpu.format1.trace";
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(V1);
    let reader = TraceReader::open(&path).expect("format-1 fixture opens");
    assert_eq!(reader.version(), 1);
    let old = serde_json::to_value(analyze(reader, REL, &Options::default())).unwrap();
    let new = serde_json::to_value(report()).unwrap();
    assert_eq!(old["faults"]["count"], new["faults"]["count"]);
    assert_eq!(old["faults"]["stages_us"], new["faults"]["stages_us"]);
    assert_eq!(old["blocktime_ms"], new["blocktime_ms"]);
    assert!(
        old["faults"]["bounded"]["wake"].is_null(),
        "format 1 cannot say which wakes are bounds"
    );
    assert_eq!(new["faults"]["bounded"]["wake"], 0);
}

/// The committed trace is format 2; the same records written today are
/// the current format and report the same.
#[test]
fn format_version_2_reads_and_reports_alike_as_current() {
    let (_, fresh) = generated();
    let reader = TraceReader::new(&fresh[..]).expect("fresh trace");
    assert_eq!(reader.version(), uffdscope_trace::container::VERSION);
    let new = serde_json::to_value(analyze(reader, REL, &Options::default())).unwrap();
    let old_reader = TraceReader::open(&fixture()).expect("committed fixture trace opens");
    assert_eq!(old_reader.version(), 2);
    let old = serde_json::to_value(analyze(old_reader, REL, &Options::default())).unwrap();
    for key in [
        "count",
        "stages_us",
        "service_us",
        "blocked_us",
        "bounded",
        "kvm_async",
    ] {
        assert_eq!(old["faults"][key], new["faults"][key], "faults.{key}");
    }
    // These records carry no resume and no placer run: whatever the format
    // version, their recorder took none, so neither count is known.
    for report in [&old, &new] {
        assert!(report["faults"]["resume_fallback"].is_null());
        assert!(report["blocktime_ms"]["qemu_view"]["closed_at_placer_run"].is_null());
    }
    assert_eq!(old["blocktime_ms"], new["blocktime_ms"]);
}

#[test]
fn text_report_snapshot() {
    insta::assert_snapshot!(uffdscope_analyzer::render::text::render_text(&report()));
}

#[test]
fn json_report_snapshot() {
    insta::assert_json_snapshot!(report());
}

/// A sleep whose switch-in was not traced makes its wake stage an upper
/// bound: the report counts it and every renderer says so in one line.
#[test]
fn bound_wakes_are_counted_and_shown() {
    use uffdscope_fixtures::synth::{Builder, FaultSpec, RAM_BASE, T0, VCPU_TID0};
    use uffdscope_trace::record::{Record, SleepFlags};
    let mut b = Builder::new();
    b.preamble(T0, 2, 1 << 30);
    for i in 0..3u64 {
        let at = T0 + 1_000_000_000 + i * 10_000_000;
        b.fault(&FaultSpec::new(VCPU_TID0, RAM_BASE + i * 4096, at));
    }
    let mut bound = 0;
    for r in &mut b.records {
        if let Record::Sleep(s) = r {
            let k = s
                .kernel
                .as_mut()
                .expect("format-2 sleeps carry kernel facts");
            if bound < 2 {
                k.flags = SleepFlags(k.flags.0 | SleepFlags::RUN_UNSEEN);
                bound += 1;
            }
        }
    }
    assert_eq!(bound, 2, "the builder wrote the faults as sleeps");
    let bytes = uffdscope_trace::write_all(&Scenario::default().meta(), &b.records);
    let report = analyze(
        TraceReader::new(&bytes[..]).expect("header"),
        "bound.trace",
        &Options::default(),
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["faults"]["bounded"]["wake"], 2);
    let line = "2 of 3 faults ran again at a moment the trace did not see";
    let text = uffdscope_analyzer::render::text::render_text(&report);
    assert!(text.contains(line), "{text}");
    let md = uffdscope_analyzer::render::markdown::render_markdown(&report);
    assert!(md.contains(line), "{md}");
    let html = uffdscope_analyzer::render::html::render_html(&report);
    assert!(html.contains(line), "{html}");
}
