//! The streamed exports (Perfetto JSON, CSV) against synthetic traces with
//! known faults: exact slices, stages, flows, tracks and rows.

use serde_json::Value;
use uffdscope_analyzer::analysis::{analyze, Options};
use uffdscope_fixtures::synth::{
    Builder, FaultSpec, Kind, Scenario, FAULT_TID, LISTEN_TID, RAM_BASE, T0, VCPU_TID0,
};
use uffdscope_trace::TraceReader;

/// One fault 1 s after the recording start.
const T: u64 = T0 + 1_000_000_000;

fn trace_of(specs: &[FaultSpec]) -> Vec<u8> {
    let mut b = Builder::new();
    b.preamble(T0, 2, 1 << 30);
    for s in specs {
        b.fault(s);
    }
    uffdscope_trace::container::write_all(&Scenario::default().meta(), &b.records)
}

fn perfetto(bytes: &[u8]) -> (Value, uffdscope_analyzer::export::Summary) {
    let mut reader = TraceReader::new(bytes).expect("trace header");
    let mut out = Vec::new();
    let summary = uffdscope_analyzer::export::perfetto::export_json(
        &mut reader,
        &mut out,
        uffdscope_analyzer::export::Limits::NONE,
    )
    .expect("export");
    let v = serde_json::from_slice(&out).unwrap_or_else(|e| {
        panic!(
            "perfetto output is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out)
        )
    });
    (v, summary)
}

fn csv(bytes: &[u8]) -> (String, uffdscope_analyzer::export::Summary) {
    let mut reader = TraceReader::new(bytes).expect("trace header");
    let mut out = Vec::new();
    let summary = uffdscope_analyzer::export::csv::export(
        &mut reader,
        &mut out,
        uffdscope_analyzer::export::Limits::NONE,
    )
    .expect("export");
    (String::from_utf8(out).expect("utf-8 CSV"), summary)
}

fn events(v: &Value) -> &Vec<Value> {
    v["traceEvents"].as_array().expect("traceEvents array")
}

fn us(v: &Value) -> f64 {
    v.as_f64().expect("number")
}

fn thread_names(v: &Value) -> Vec<String> {
    events(v)
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .map(|e| e["args"]["name"].as_str().expect("name").to_owned())
        .collect()
}

#[test]
fn requested_fault_is_a_slice_with_five_stages_and_a_flow() {
    let spec = FaultSpec::new(VCPU_TID0, RAM_BASE + 0x5000, T);
    let (v, summary) = perfetto(&trace_of(&[spec]));
    assert_eq!(summary.faults, 1);
    assert!(summary.damage.is_none());
    let ev = events(&v);
    let faults: Vec<&Value> = ev.iter().filter(|e| e["cat"] == "fault").collect();
    assert_eq!(faults.len(), 1, "{faults:?}");
    let f = faults[0];
    assert_eq!(f["ph"], "X");
    assert_eq!(f["name"], "fault 0x7f0000005000");
    assert_eq!(f["tid"], VCPU_TID0);
    assert_eq!(f["args"]["resolution"], "requested");
    // Entry at 1 s; 20 + 5 + 300 + 8 µs to woken, 15 µs more to running.
    assert!((us(&f["ts"]) - 1_000_000.0).abs() < 1e-6, "{f}");
    assert!((us(&f["dur"]) - 348.0).abs() < 1e-6, "{f}");
    assert!((us(&f["args"]["service_us"]) - 333.0).abs() < 1e-6, "{f}");
    let stages: Vec<(String, f64)> = ev
        .iter()
        .filter(|e| e["cat"] == "stage")
        .map(|e| (e["name"].as_str().expect("name").to_owned(), us(&e["dur"])))
        .collect();
    assert_eq!(
        stages,
        [
            ("queue".to_owned(), 20.0),
            ("request".to_owned(), 5.0),
            ("network".to_owned(), 300.0),
            ("place".to_owned(), 8.0),
            ("wake".to_owned(), 15.0)
        ]
    );
    let flow: Vec<(&str, u64)> = ev
        .iter()
        .filter(|e| e["cat"] == "flow")
        .map(|e| {
            (
                e["ph"].as_str().expect("ph"),
                e["tid"].as_u64().expect("tid"),
            )
        })
        .collect();
    assert_eq!(
        flow,
        [
            ("s", u64::from(FAULT_TID)),
            ("t", u64::from(FAULT_TID)),
            ("t", u64::from(LISTEN_TID)),
            ("f", u64::from(VCPU_TID0))
        ],
        "read → request → placement → woken"
    );
    let named = |name: &str, tid: u32| {
        ev.iter().any(|e| {
            e["ph"] == "X"
                && e["tid"] == tid
                && e["name"].as_str().is_some_and(|n| n.starts_with(name))
        })
    };
    assert!(named("uffd read", FAULT_TID));
    assert!(named("request pc.ram+0x5000", FAULT_TID));
    assert!(named("UFFDIO_COPY", LISTEN_TID));
    let names = thread_names(&v);
    for want in [
        "CPU 0/TCG [vcpu]",
        "fault-default [fault]",
        "postcopy/listen [listen]",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing in {names:?}"
        );
    }
}

#[test]
fn background_fault_flows_from_the_placement_only() {
    let mut spec = FaultSpec::new(VCPU_TID0, RAM_BASE + 0x20000, T);
    spec.kind = Kind::Background;
    let bytes = trace_of(&[spec]);
    let (v, _) = perfetto(&bytes);
    let flow: Vec<u64> = events(&v)
        .iter()
        .filter(|e| e["cat"] == "flow")
        .map(|e| e["tid"].as_u64().expect("tid"))
        .collect();
    assert_eq!(flow, [u64::from(LISTEN_TID), u64::from(VCPU_TID0)]);
    let stages: Vec<&str> = events(&v)
        .iter()
        .filter(|e| e["cat"] == "stage")
        .map(|e| e["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        stages,
        ["queue", "place", "wake"],
        "unknown stages are not drawn"
    );
    let (text, _) = csv(&bytes);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let row: Vec<&str> = lines.next().expect("row").split(',').collect();
    assert_eq!(row.len(), header.len());
    let col = |name: &str| row[header.iter().position(|h| *h == name).expect(name)];
    assert_eq!(col("resolution"), "background");
    assert_eq!(col("t_read_ns"), "", "never read: empty, not 0");
    assert_eq!(col("request_ns"), "");
    assert_eq!(col("network_ns"), "");
    assert_eq!(col("queue_ns"), "20000");
    assert_eq!(col("t_entry_ns"), "1000000000");
    assert_eq!(col("service_ns"), "28000");
}

#[test]
fn csv_has_one_row_per_fault_of_the_report() {
    let scenario = Scenario::default();
    let mut records = Vec::new();
    scenario.generate(|r| records.push(r.clone()), false);
    let bytes = uffdscope_trace::container::write_all(&scenario.meta(), &records);
    let report = analyze(
        TraceReader::new(&bytes[..]).expect("header"),
        "mem",
        &Options::default(),
    );
    let (text, summary) = csv(&bytes);
    assert_eq!(summary.faults, report.faults.count);
    assert_eq!(text.lines().count() as u64, report.faults.count + 1);
    let columns = uffdscope_analyzer::export::csv::header().split(',').count();
    assert!(text.lines().all(|l| l.split(',').count() == columns));
}

#[test]
fn scenario_tracks_guest_qmp_and_drops() {
    let scenario = Scenario {
        drops: 7,
        ..Scenario::default()
    };
    let mut records = Vec::new();
    scenario.generate(|r| records.push(r.clone()), false);
    let (v, summary) = perfetto(&uffdscope_trace::container::write_all(
        &scenario.meta(),
        &records,
    ));
    assert_eq!(summary.records, records.len() as u64);
    let ev = events(&v);
    let drops: Vec<f64> = ev
        .iter()
        .filter(|e| e["ph"] == "C" && e["name"] == "ring-buffer drops")
        .map(|e| us(&e["args"]["dropped"]))
        .collect();
    assert_eq!(drops.first(), Some(&0.0));
    assert_eq!(drops.last(), Some(&7.0));
    let statuses: Vec<&str> = ev
        .iter()
        .filter(|e| e["cat"] == "qmp")
        .map(|e| e["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        statuses,
        [
            "status: active",
            "status: postcopy-active",
            "status: completed"
        ]
    );
    assert!(ev
        .iter()
        .any(|e| e["ph"] == "M" && e["name"] == "process_name" && e["args"]["name"] == "guest"));
    let guest_lines = ev
        .iter()
        .filter(|e| e["ph"] == "i" && e["cat"] == "guest")
        .count();
    let intervals = ev
        .iter()
        .filter(|e| e["ph"] == "X" && e["cat"] == "guest")
        .count();
    assert!(
        guest_lines > 0 && intervals == guest_lines,
        "{guest_lines} lines, {intervals} intervals"
    );
    let names = thread_names(&v);
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("guest intervals: stress/cpu1")),
        "{names:?}"
    );
}

#[test]
fn damaged_trace_still_gives_closed_json() {
    let scenario = Scenario::default();
    let mut records = Vec::new();
    scenario.generate(|r| records.push(r.clone()), false);
    let bytes = uffdscope_trace::container::write_all(&scenario.meta(), &records);
    let cut = &bytes[..bytes.len() - 100];
    let (v, summary) = perfetto(cut);
    assert!(summary.damage.is_some(), "the cut must be reported");
    assert!(!events(&v).is_empty());
    let (text, summary) = csv(cut);
    assert!(summary.damage.is_some());
    assert_eq!(text.lines().count() as u64, summary.faults + 1);
}

/// On the committed real trace, requested faults carry the network stage's
/// parts, and wire + behind_stream + rest is each fault's network stage.
#[test]
fn csv_rows_take_the_network_stage_apart() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/data/qemu-7.2-tcg-postcopy-1vcpu.trace");
    let (text, _) = csv(&std::fs::read(path).expect("committed trace"));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let (network, wire, behind, rest, res) = (
        col("network_ns"),
        col("wire_ns"),
        col("behind_stream_ns"),
        col("rest_ns"),
        col("resolution"),
    );
    let mut split = 0;
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        let num = |i: usize| cells[i].parse::<u64>().ok();
        if let (Some(w), Some(b), Some(r)) = (num(wire), num(behind), num(rest)) {
            assert_eq!(cells[res], "requested", "{line}");
            assert_eq!(Some(w + b + r), num(network), "{line}");
            split += 1;
        }
    }
    assert!(
        split > 500,
        "only {split} rows with the network stage taken apart"
    );
}

/// The Perfetto network slices of requested faults carry the same parts.
#[test]
fn perfetto_network_slices_carry_the_parts() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/data/qemu-7.2-tcg-postcopy-1vcpu.trace");
    let (v, _) = perfetto(&std::fs::read(path).expect("committed trace"));
    let with_parts = events(&v)
        .iter()
        .filter(|e| e["name"] == "network" && e["args"]["behind_stream_us"].is_number())
        .count();
    assert!(with_parts > 500, "{with_parts} network slices with parts");
}
