//! The kernel's placement filter ([`uffdscope_trace::lean`]) applied to full
//! traces: the JSON report of the lean trace equals the full trace's in every
//! figure but the ones that describe the file itself.

use std::path::PathBuf;

use serde_json::Value;
use uffdscope_analyzer::analysis::{analyze, Options};
use uffdscope_fixtures::synth::Scenario;
use uffdscope_trace::lean::{lean_records, LeanStats};
use uffdscope_trace::record::Record;
use uffdscope_trace::{TraceMeta, TraceReader};

const REAL: &str = "fixtures/data/qemu-7.2-tcg-postcopy-1vcpu.trace";

fn report_json(meta: &TraceMeta, records: &[Record]) -> Value {
    let bytes = uffdscope_trace::write_all(meta, records);
    let reader = TraceReader::new(bytes.as_slice()).expect("written trace reads");
    serde_json::to_value(analyze(reader, "trace", &Options::default())).expect("report serializes")
}

/// The paths (JSON pointer style) where two reports differ.
fn differences(full: &Value, lean: &Value, at: &str, out: &mut Vec<String>) {
    match (full, lean) {
        (Value::Object(a), Value::Object(b)) => {
            for key in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
                let (x, y) = (
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                );
                differences(x, y, &format!("{at}/{key}"), out);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differences(x, y, &format!("{at}/{i}"), out);
            }
        }
        (a, b) if a != b => out.push(format!("{at}: {a} vs {b}")),
        _ => {}
    }
}

/// Applies the filter and compares the reports; returns the filter's counts.
fn assert_lean_reports_alike(meta: &TraceMeta, records: &[Record]) -> LeanStats {
    let (lean, stats) = lean_records(records);
    let full = report_json(meta, records);
    let small = report_json(meta, &lean);
    let mut diff = Vec::new();
    differences(&full, &small, "", &mut diff);
    // The one figure that describes the file rather than the recording.
    diff.retain(|d| !d.starts_with("/trace/events:"));
    assert!(
        diff.is_empty(),
        "{} figures differ:\n{}",
        diff.len(),
        diff.join("\n")
    );
    assert_eq!(full["trace"]["events"], records.len());
    assert_eq!(small["trace"]["events"], lean.len());
    assert_eq!(
        records.len() - lean.len(),
        usize::try_from(stats.counted - stats.bins).expect("fits"),
        "every counted placement left the trace, every bin joined it"
    );
    stats
}

#[test]
fn the_committed_real_trace_reports_alike_when_lean() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(REAL);
    let bytes = std::fs::read(path).expect("committed real trace readable");
    let back = uffdscope_trace::read_all(&bytes).expect("committed real trace header");
    let stats = assert_lean_reports_alike(&back.meta, &back.records);
    eprintln!("{REAL}: {} records, {stats:?}", back.records.len());
    let (lean, _) = lean_records(&back.records);
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for r in &lean {
        let name = format!("{r:?}");
        let kind = name.split('(').next().unwrap_or_default().to_owned();
        *kinds.entry(kind).or_default() += 1;
    }
    eprintln!("what stays: {kinds:?}");
    assert!(
        stats.counted > 0,
        "the real trace has background placements"
    );
}

/// The synthetic generator places background pages that vCPUs fault on
/// later (its background cursor wraps onto the faulting pages). A kernel
/// never delivers a fault on a page already placed, so no filter running at
/// placement time can know such a placement matters (QEMU's accounting sees
/// the later message as "already received"). Those placements are dropped
/// from the full trace before the comparison, which leaves it physically
/// possible; how many is printed.
fn without_placements_of_pages_faulted_later(records: Vec<Record>) -> Vec<Record> {
    let mut read_at: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    for r in &records {
        if let Record::UffdRead(r) = r {
            for m in &r.msgs {
                let t = read_at.entry(m.address & !4095).or_insert(r.enter_ts);
                *t = (*t).max(r.enter_ts);
            }
        }
    }
    let before = records.len();
    let kept: Vec<Record> = records
        .into_iter()
        .filter(|r| match r {
            Record::UffdIoctl(io) if io.woken == 0 => (io.start..io.start + io.len.max(1))
                .step_by(4096)
                .all(|page| {
                    read_at
                        .get(&(page & !4095))
                        .is_none_or(|&t| t <= io.exit_ts)
                }),
            _ => true,
        })
        .collect();
    eprintln!(
        "synthetic: {} impossible placements left out",
        before - kept.len()
    );
    kept
}

#[test]
fn the_synthetic_trace_reports_alike_when_lean() {
    let scenario = Scenario::default();
    let mut records = Vec::new();
    scenario.generate(|r| records.push(r.clone()), false);
    let records = without_placements_of_pages_faulted_later(records);
    let stats = assert_lean_reports_alike(&scenario.meta(), &records);
    eprintln!("synthetic: {} records, {stats:?}", records.len());
    assert!(stats.counted > 0, "the scenario has background placements");
}

/// A lean trace's Perfetto export draws the counted placements as a rate
/// per placing thread: the rates over the bins add up to every placement
/// counted.
#[test]
fn perfetto_draws_counted_placements_as_a_rate() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(REAL);
    let back = uffdscope_trace::read_all(&std::fs::read(path).expect("readable")).expect("header");
    let (lean, stats) = lean_records(&back.records);
    let bytes = uffdscope_trace::write_all(&back.meta, &lean);
    let mut reader = TraceReader::new(bytes.as_slice()).expect("written trace reads");
    let mut out = Vec::new();
    uffdscope_analyzer::export::perfetto::export_json(
        &mut reader,
        &mut out,
        uffdscope_analyzer::export::Limits::NONE,
    )
    .expect("export");
    let v: Value = serde_json::from_slice(&out).expect("perfetto JSON");
    let per_s: f64 = v["traceEvents"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["ph"] == "C" && e["name"].as_str().is_some_and(|n| n.contains("counted/s")))
        .filter_map(|e| e["args"]["per_s"].as_f64())
        .sum();
    let bin_s = uffdscope_trace::record::PlacementBin::BIN_NS as f64 / 1e9;
    assert!(stats.counted > 0);
    assert!(
        (per_s * bin_s - stats.counted as f64).abs() < 0.5,
        "{per_s} /s vs {stats:?}"
    );
}
