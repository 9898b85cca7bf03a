//! `report --format hlog`: the interval log reads back with the hdrhistogram
//! crate's own log reader and V2 deserializer, and its histograms, added up,
//! hold the report's counts and percentiles.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::prelude::{Engine as _, BASE64_STANDARD};
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use uffdscope_analyzer::analysis::{analyze, Options};
use uffdscope_analyzer::drive::Limits;
use uffdscope_analyzer::export::hlog::{self, TAGS};
use uffdscope_fixtures::synth::Scenario;
use uffdscope_trace::TraceReader;

fn synthetic() -> Vec<u8> {
    let scenario = Scenario::default();
    let mut records = Vec::new();
    scenario.generate(|r| records.push(r.clone()), false);
    uffdscope_trace::write_all(&scenario.meta(), &records)
}

struct ReadBack {
    /// Every interval's histogram added up, per tag.
    totals: BTreeMap<String, Histogram<u64>>,
    /// (start, length) of each interval line, in log order.
    intervals: Vec<(Duration, Duration)>,
    base_time: Option<Duration>,
    text: String,
}

fn export(trace: &[u8], interval: Duration) -> ReadBack {
    let mut reader = TraceReader::new(trace).expect("trace opens");
    let mut out = Vec::new();
    let summary = hlog::export(&mut reader, &mut out, interval, Limits::NONE).expect("vec write");
    assert!(summary.damage.is_none());
    let mut back = ReadBack {
        totals: BTreeMap::new(),
        intervals: Vec::new(),
        base_time: None,
        text: String::from_utf8(out.clone()).expect("the log is text"),
    };
    let mut deserializer = Deserializer::new();
    for entry in IntervalLogIterator::new(&out) {
        match entry.expect("every line parses") {
            LogEntry::Interval(h) => {
                let tag = h
                    .tag()
                    .expect("every histogram is tagged")
                    .as_str()
                    .to_owned();
                let bytes = BASE64_STANDARD
                    .decode(h.encoded_histogram())
                    .expect("base64");
                let hist: Histogram<u64> = deserializer
                    .deserialize(&mut &bytes[..])
                    .expect("V2 histogram deserializes");
                back.intervals.push((h.start_timestamp(), h.duration()));
                back.totals
                    .entry(tag)
                    .or_insert_with(|| Histogram::new(3).unwrap())
                    .add(hist)
                    .expect("histograms add");
            }
            LogEntry::BaseTime(t) => back.base_time = Some(t),
            LogEntry::StartTime(_) => {}
        }
    }
    back
}

#[test]
fn interval_log_holds_the_reports_counts_and_percentiles() {
    let trace = synthetic();
    let report = analyze(
        TraceReader::new(&trace[..]).unwrap(),
        "synthetic",
        &Options::default(),
    );
    let back = export(&trace, hlog::DEFAULT_INTERVAL);
    let json = serde_json::to_value(&report).unwrap();
    let expected = |tag: &str| match tag {
        "service" => json["faults"]["service_us"].clone(),
        "blocked" => json["faults"]["blocked_us"].clone(),
        "wire" | "behind_stream" | "rest" | "paused" => {
            json["faults"]["network_split_us"][tag].clone()
        }
        stage => json["faults"]["stages_us"][stage].clone(),
    };
    let mut compared = 0;
    for tag in TAGS {
        let want = expected(tag);
        let count = want["count"].as_u64().expect("count");
        let Some(got) = back.totals.get(tag) else {
            assert_eq!(count, 0, "{tag}: the report has values, the log none");
            continue;
        };
        assert_eq!(got.len(), count, "{tag} count");
        for (q, key) in [(0.5, "p50"), (0.99, "p99")] {
            let report_us = want[key].as_f64().expect("percentile");
            let log_us = got.value_at_quantile(q) as f64 / 1000.0;
            // Both are 3-significant-digit histograms of the same values.
            let tolerance = report_us * 1e-3 + 0.001;
            assert!(
                (log_us - report_us).abs() <= tolerance,
                "{tag} {key}: log {log_us} µs, report {report_us} µs"
            );
        }
        compared += 1;
    }
    assert!(compared >= 7, "only {compared} tags had values");
    assert!(
        back.text.contains("nanoseconds"),
        "the unit is in the header"
    );
    assert!(
        back.base_time.is_some(),
        "the synthetic trace has a wall clock"
    );
}

#[test]
fn intervals_have_the_asked_length_and_come_in_order() {
    let trace = synthetic();
    let back = export(&trace, Duration::from_millis(100));
    assert!(
        back.intervals.len() > 10,
        "{} intervals",
        back.intervals.len()
    );
    let mut last = Duration::ZERO;
    for (start, length) in &back.intervals {
        assert_eq!(*length, Duration::from_millis(100));
        assert!(*start >= last, "intervals in time order");
        assert_eq!(start.as_millis() % 100, 0, "intervals start on their grid");
        last = *start;
    }
    // The totals do not depend on the interval length, not even when more
    // intervals are open than `MAX_OPEN` allows (1 ms: older ones are
    // written early, and a late fault adds a line).
    let whole = export(&trace, Duration::from_secs(3600));
    let fine = export(&trace, Duration::from_millis(1));
    assert!(fine.intervals.len() > hlog::MAX_OPEN * 4);
    for (tag, h) in &back.totals {
        assert_eq!(h.len(), whole.totals[tag].len(), "{tag}");
        assert_eq!(h.len(), fine.totals[tag].len(), "{tag}");
    }
}

#[test]
fn a_trace_without_faults_gives_a_header_only() {
    let scenario = Scenario {
        faults: 0,
        ..Scenario::default()
    };
    let mut records = Vec::new();
    scenario.generate(|r| records.push(r.clone()), false);
    let trace = uffdscope_trace::write_all(&scenario.meta(), &records);
    let back = export(&trace, hlog::DEFAULT_INTERVAL);
    assert!(back.intervals.is_empty());
    assert!(back.text.starts_with("#[Histogram log format version 1.3]"));
}

#[test]
fn interval_lengths_out_of_range_are_refused() {
    assert!(hlog::interval(Duration::ZERO).is_err());
    assert!(hlog::interval(Duration::from_micros(999)).is_err());
    assert!(hlog::interval(Duration::from_secs(3601)).is_err());
    assert!(hlog::interval(Duration::from_millis(1)).is_ok());
}
