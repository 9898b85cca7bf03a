//! The Parquet tables of two traces — the committed real QEMU trace and a
//! synthetic one — read as one dataset with DuckDB (the `duckdb` Python
//! package) and checked against each trace's JSON report: fault counts,
//! service-time percentiles and maximum per run (`GROUP BY run`), thread and
//! guest interval rows. Also: an export never replaces a file.
#![cfg(feature = "parquet")]

use std::path::Path;

use serde_json::Value;
use uffdscope_analyzer::analysis::{analyze_file, Options};
use uffdscope_analyzer::export::parquet::{export, Run};
use uffdscope_analyzer::report::Report;
use uffdscope_fixtures::{data_path, tier};
use uffdscope_trace::TraceReader;

/// Exports `trace` under `dir`; its run and JSON report.
fn export_trace(trace: &Path, dir: &Path) -> (Run, Value) {
    let mut reader = TraceReader::open(trace).expect("trace");
    let run = Run::of_file(trace, reader.meta()).expect("hash");
    let shown = trace.display().to_string();
    let done = export(&mut reader, &shown, &run, dir, &Options::default()).expect("export");
    assert_eq!(done.files.len(), 3);
    let report: Report = analyze_file(trace, &Options::default()).expect("report");
    (run, serde_json::to_value(&report).expect("report JSON"))
}

const QUERY: &str = r#"
import duckdb, json, sys
d = sys.argv[1]
con = duckdb.connect()
def rows(sql):
    cur = con.execute(sql)
    names = [c[0] for c in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]
print(json.dumps({
    "faults": rows(f"""
        SELECT run, any_value(host) AS host, count(*) AS faults,
               count(service_ns) AS with_service,
               quantile_disc(service_ns, 0.5) AS p50_ns,
               quantile_disc(service_ns, 0.99) AS p99_ns,
               max(service_ns) AS max_ns,
               count(*) FILTER (WHERE resolution = 'requested') AS requested
        FROM read_parquet('{d}/faults/*.parquet') GROUP BY run ORDER BY run"""),
    "threads": rows(f"""
        SELECT run, count(*) AS threads, sum(faults) AS faults
        FROM read_parquet('{d}/threads/*.parquet') GROUP BY run ORDER BY run"""),
    "guest": rows(f"""
        SELECT run, count(*) AS intervals
        FROM read_parquet('{d}/guest_intervals/*.parquet') GROUP BY run ORDER BY run"""),
}))
"#;

fn by_run<'a>(rows: &'a Value, run: &str) -> &'a Value {
    rows.as_array()
        .expect("rows")
        .iter()
        .find(|r| r["run"] == run)
        .unwrap_or_else(|| panic!("no rows of run {run} in {rows}"))
}

/// The report's percentiles come from a histogram with 3 significant
/// digits: the value at a quantile is within 0.1% of an exact one; a rank
/// apart from DuckDB's `quantile_disc` is allowed for with 1%.
fn close(report_us: &Value, exact_ns: &Value, what: &str) {
    let r = report_us.as_f64().expect("report value") * 1e3;
    let e = exact_ns.as_f64().expect("exact value");
    assert!(
        (r - e).abs() <= e * 0.01 + 1.0,
        "{what}: report {r} ns, dataset {e} ns"
    );
}

#[test]
fn two_traces_form_one_duckdb_dataset_matching_their_reports() {
    let Some(python) = tier::python_module("parquet_duckdb", "duckdb", "duckdb") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let traces = [
        data_path("qemu-7.2-tcg-postcopy-1vcpu.trace"),
        data_path("synthetic-2vcpu.trace"),
    ];
    let runs: Vec<(Run, Value)> = traces.iter().map(|t| export_trace(t, dir.path())).collect();
    let out = std::process::Command::new(&python)
        .args(["-c", QUERY])
        .arg(dir.path())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).expect("query JSON");
    assert_eq!(got["faults"].as_array().map(Vec::len), Some(2), "{got}");
    for (run, report) in &runs {
        let f = by_run(&got["faults"], &run.id);
        let want = &report["faults"];
        assert_eq!(f["host"], run.host.as_str());
        assert_eq!(f["faults"], want["count"], "fault count");
        assert_eq!(f["with_service"], want["service_us"]["count"]);
        assert_eq!(f["requested"], want["by_resolution"]["requested"]);
        close(&want["service_us"]["p50"], &f["p50_ns"], "p50");
        close(&want["service_us"]["p99"], &f["p99_ns"], "p99");
        close(&want["service_us"]["max"], &f["max_ns"], "max");
        let t = by_run(&got["threads"], &run.id);
        let threads = report["threads"].as_array().expect("threads");
        assert_eq!(t["threads"], threads.len());
        let faults: u64 = threads
            .iter()
            .map(|t| t["faults"].as_u64().expect("n"))
            .sum();
        assert_eq!(t["faults"], faults);
        let intervals = report["guest"]["intervals"].as_array().map_or(0, Vec::len);
        let g = got["guest"].as_array().expect("guest rows");
        let listed = g.iter().find(|r| r["run"] == run.id.as_str());
        assert_eq!(
            listed.map_or(0, |r| r["intervals"].as_u64().expect("n")),
            intervals as u64
        );
    }
}

#[test]
fn an_export_never_replaces_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = data_path("synthetic-2vcpu.trace");
    let (run, _) = export_trace(&trace, dir.path());
    let faults = dir
        .path()
        .join("faults")
        .join(format!("{}.parquet", run.id));
    let before = std::fs::read(&faults).expect("faults table");
    assert_eq!(&before[..4], b"PAR1");
    let mut reader = TraceReader::open(&trace).expect("trace");
    let again = export(&mut reader, "again", &run, dir.path(), &Options::default());
    let err = again.expect_err("a second export of the run");
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
    assert_eq!(std::fs::read(&faults).expect("faults table"), before);
    for table in ["faults", "threads", "guest_intervals"] {
        let names: Vec<String> = std::fs::read_dir(dir.path().join(table))
            .expect("table folder")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [format!("{}.parquet", run.id)], "{table}");
    }
}

#[test]
fn a_damaged_trace_exports_its_good_part_as_whole_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = std::fs::read(data_path("qemu-7.2-tcg-postcopy-1vcpu.trace")).expect("trace");
    let cut = dir.path().join("cut.trace");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).expect("write");
    let mut reader = TraceReader::open(&cut).expect("trace header");
    let run = Run::of_file(&cut, reader.meta()).expect("hash");
    let fleet = dir.path().join("fleet");
    let done = export(&mut reader, "cut", &run, &fleet, &Options::default()).expect("export");
    assert!(done.summary.damage.is_some(), "the cut is reported");
    assert!(done.summary.faults > 0);
    for file in &done.files {
        let b = std::fs::read(file).expect("table");
        assert!(
            b.starts_with(b"PAR1") && b.ends_with(b"PAR1"),
            "{}",
            file.display()
        );
    }
}
