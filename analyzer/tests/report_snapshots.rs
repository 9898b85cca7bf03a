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

#[test]
fn committed_trace_matches_the_generator() {
    let scenario = Scenario::default();
    let mut records = Vec::new();
    scenario.generate(|r| records.push(r.clone()), false);
    let fresh = uffdscope_trace::write_all(&scenario.meta(), &records);
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
}

#[test]
fn text_report_snapshot() {
    insta::assert_snapshot!(uffdscope_analyzer::render::text::render_text(&report()));
}

#[test]
fn json_report_snapshot() {
    insta::assert_json_snapshot!(report());
}
