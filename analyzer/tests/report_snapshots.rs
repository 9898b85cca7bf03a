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

#[test]
fn text_report_snapshot() {
    insta::assert_snapshot!(uffdscope_analyzer::text::render_text(&report()));
}

#[test]
fn json_report_snapshot() {
    insta::assert_json_snapshot!(report());
}
