//! Both ends of a migration merged (`report DEST --source SRC`) on synthetic
//! pairs with a known source clock (offset, drift) and known sub-stages
//! (`fixtures::synth::source`).

use std::sync::Arc;

use uffdscope_analyzer::analysis::{analyze_merged, Options, SourceInput};
use uffdscope_analyzer::drive::Limits;
use uffdscope_analyzer::engine::both_ends::merge::MergeOutcome;
use uffdscope_analyzer::engine::both_ends::source::{SourceError, SourceIndex};
use uffdscope_analyzer::report::Report;
use uffdscope_fixtures::synth::source::{generate_pair, SourceClock, TruthFault};
use uffdscope_fixtures::synth::Scenario;
use uffdscope_trace::record::Record;
use uffdscope_trace::{write_all, TraceReader};

struct Pair {
    dest: Vec<u8>,
    source: Vec<u8>,
    truth: Vec<TruthFault>,
}

fn scenario() -> Scenario {
    Scenario {
        faults: 400,
        guest: false,
        ..Scenario::default()
    }
}

fn pair(clock: SourceClock) -> Pair {
    let s = scenario();
    let mut dest = Vec::new();
    let (meta, records, truth) = generate_pair(&s, clock, |r| dest.push(r.clone()));
    Pair {
        dest: write_all(&s.meta(), &dest),
        source: write_all(&meta, &records),
        truth,
    }
}

fn index(bytes: &[u8]) -> Result<SourceIndex, SourceError> {
    SourceIndex::read(TraceReader::new(bytes)?, "source.trace", Limits::NONE)
}

fn merged(p: &Pair, offset_us: Option<f64>) -> (Report, MergeOutcome) {
    let opts = Options {
        source: Some(SourceInput {
            path: "source.trace".into(),
            index: Arc::new(index(&p.source).expect("a source trace")),
            offset_us,
        }),
        ..Options::default()
    };
    let reader = TraceReader::new(&p.dest[..]).expect("a trace");
    let (report, m) = analyze_merged(reader, "dest.trace", &opts);
    (report, m.expect("merged"))
}

/// The truth of the fault the merge reports as `(tid, page, entry)`.
fn truth_of(p: &Pair, tid: u32, page: u64, entry: Option<u64>) -> &TruthFault {
    p.truth
        .iter()
        .find(|t| t.tid == tid && t.page == page && Some(t.entry_ts) == entry)
        .expect("every requested fault has a truth")
}

#[test]
fn recovers_the_source_clock_within_its_bound() {
    for offset_us in [0i64, 250, -4_000, 12_345, -1_500_000] {
        for drift_ppm in [0.0, 50.0, -50.0] {
            let clock = SourceClock {
                offset_ns: offset_us * 1_000,
                drift_ppm,
            };
            let (r, _) = merged(&pair(clock), None);
            let c = r.clock.expect("the clocks were aligned");
            let bound = c.bound_us.expect("an estimate has a bound");
            // The truth at the moment the estimate is stated at.
            let truth = offset_us as f64 + drift_ppm * c.at_s;
            assert!(
                (c.source_offset_us - truth).abs() <= bound,
                "offset {offset_us} µs drift {drift_ppm} ppm: {c:?}"
            );
            assert!(bound < 100.0, "the bound is useful: {c:?}");
            assert!(c.contradiction_us.is_none(), "{c:?}");
            let drift = c.drift_ppm.expect("an estimate has a drift");
            assert!((drift - drift_ppm).abs() < 10.0, "{c:?}");
            assert!(c.samples.requests > 100 && c.samples.pages > 100, "{c:?}");
        }
    }
}

#[test]
fn sub_stages_add_up_to_the_network_stage_and_match_the_truth() {
    let p = pair(SourceClock {
        offset_ns: -3_000_000,
        drift_ppm: 50.0,
    });
    let (r, m) = merged(&p, None);
    let bound_ns = r.clock.unwrap().bound_us.unwrap() * 1e3;
    let mut split = 0;
    for f in &m.per_fault {
        let t = truth_of(&p, f.tid, f.page, f.entry_ts);
        assert_eq!(f.network_ns, t.network);
        let (Some(s), Some(truth)) = (f.split, t.split) else {
            assert_eq!(
                f.split, None,
                "a fault without a truth split is null: {f:?}"
            );
            continue;
        };
        split += 1;
        assert_eq!(s.to_source + s.at_source + s.from_source, f.network_ns);
        let close = |got: u64, want: u64| (got as f64 - want as f64).abs() <= bound_ns + 2.0;
        assert!(
            close(s.to_source, truth[0]),
            "{s:?} vs {truth:?}, bound {bound_ns} ns"
        );
        assert!(close(s.at_source, truth[1]), "{s:?} vs {truth:?}");
        assert!(
            close(s.from_source, truth[2]) || close(s.to_source + s.at_source, truth[0] + truth[1]),
            "{s:?} vs {truth:?}"
        );
    }
    let truth_split = p.truth.iter().filter(|t| t.split.is_some()).count();
    assert_eq!(split, truth_split, "every fault the source shows is split");
    let matched = r.source.as_ref().unwrap().matched;
    assert_eq!(matched.split, split as u64);
    assert_eq!(r.faults.stages_us.to_source.unwrap().count, split as u64);
}

#[test]
fn a_receive_lost_on_the_source_realigns_the_streams_after_it() {
    let s = scenario();
    let mut dest = Vec::new();
    let clock = SourceClock {
        offset_ns: 700_000,
        drift_ppm: 0.0,
    };
    let (meta, mut records, truth) = generate_pair(&s, clock, |r| dest.push(r.clone()));
    // The 200th receive never reached the source trace (a ring drop).
    let lost = records
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Record::SockIo(_)))
        .nth(200)
        .map(|(i, _)| i)
        .unwrap();
    records.remove(lost);
    let p = Pair {
        dest: write_all(&s.meta(), &dest),
        source: write_all(&meta, &records),
        truth,
    };
    let (r, m) = merged(&p, None);
    let c = r.clock.unwrap();
    // Requests in the gap give no clock sample: the bound still holds.
    assert!(
        (c.source_offset_us - 700.0).abs() <= c.bound_us.unwrap(),
        "{c:?}"
    );
    assert!(c.contradiction_us.is_none(), "{c:?}");
    let bound_ns = c.bound_us.unwrap() * 1e3;
    let right = m
        .per_fault
        .iter()
        .filter_map(|f| Some((f.split?, truth_of(&p, f.tid, f.page, f.entry_ts).split?)))
        .filter(|(s, t)| (s.to_source as f64 - t[0] as f64).abs() <= bound_ns + 2.0)
        .count();
    let truths = p.truth.iter().filter(|t| t.split.is_some()).count();
    assert!(
        right + 3 >= truths,
        "{right} of {truths} requests mapped right"
    );
    assert!(
        r.warnings.iter().any(|w| w.contains("moved apart 1 times")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn faults_whose_request_the_source_never_saw_are_null() {
    let p = pair(SourceClock::default());
    let (_, m) = merged(&p, None);
    let unseen: Vec<_> = p.truth.iter().filter(|t| t.split.is_none()).collect();
    assert!(
        !unseen.is_empty(),
        "the synthetic source starts after the first requests"
    );
    for t in unseen {
        let f = m
            .per_fault
            .iter()
            .find(|f| f.tid == t.tid && f.page == t.page && f.entry_ts == Some(t.entry_ts))
            .unwrap();
        assert_eq!(f.split, None);
    }
}

#[test]
fn an_offset_given_by_hand_replaces_the_estimate() {
    let p = pair(SourceClock {
        offset_ns: 2_000_000,
        drift_ppm: 0.0,
    });
    let (r, _) = merged(&p, Some(2_000.0));
    let c = r.clock.unwrap();
    assert_eq!(c.from, "override");
    assert!((c.source_offset_us - 2_000.0).abs() < 1e-9);
    assert_eq!(c.bound_us, None);
    assert!(r.faults.stages_us.to_source.unwrap().count > 0);
}

#[test]
fn without_a_source_the_keys_are_null() {
    let p = pair(SourceClock::default());
    let r = uffdscope_analyzer::analysis::analyze(
        TraceReader::new(&p.dest[..]).unwrap(),
        "dest.trace",
        &Options::default(),
    );
    let json = serde_json::to_value(&r).unwrap();
    assert!(json["clock"].is_null() && json["source"].is_null());
    for k in ["to_source", "at_source", "from_source"] {
        assert!(json["faults"]["stages_us"][k].is_null(), "{k}");
    }
    assert!(json["faults"]["stages_us"]["network"]["p50"].is_number());
}

#[test]
fn a_destination_trace_is_refused_as_the_source() {
    let p = pair(SourceClock::default());
    let err = index(&p.dest).unwrap_err();
    assert!(matches!(err, SourceError::NotSource { .. }));
    assert!(err.to_string().contains("--side source"), "{err}");
}

#[test]
fn hostile_source_traces_never_panic() {
    let p = pair(SourceClock::default());
    // Truncated anywhere, and bytes flipped.
    for cut in (0..p.source.len()).step_by(p.source.len() / 40 + 1) {
        if let Ok(ix) = index(&p.source[..cut]) {
            let _ = ix.bases();
        }
    }
    let mut garbage = p.source.clone();
    for i in (200..garbage.len()).step_by(97) {
        garbage[i] ^= 0x5a;
    }
    if let Ok(ix) = index(&garbage) {
        let _ = ix.bases();
    }
    // Lying records: absurd lengths, counts and addresses.
    let s = scenario();
    let (meta, mut records, _) = generate_pair(&s, SourceClock::default(), |_| {});
    for r in &mut records {
        match r {
            Record::SockIo(io) => io.ret = i64::MAX,
            Record::PagesSent(ps) => {
                for run in &mut ps.runs {
                    run.pages = u32::MAX;
                    run.addr = u64::MAX - 10;
                    run.header = Some(u64::MAX);
                }
            }
            _ => {}
        }
    }
    let lying = Pair {
        dest: p.dest.clone(),
        source: write_all(&meta, &records),
        truth: Vec::new(),
    };
    let (r, m) = merged(&lying, None);
    assert!(m.per_fault.iter().all(|f| f.split.is_none()));
    assert!(r.clock.is_none(), "nothing true to align on");
}

/// The committed real pair: QEMU 7.2 TCG post-copy with preempt, both ends
/// recorded on one host over 127.0.0.1, so the true offset is 0.
#[test]
fn the_real_pair_aligns_on_one_host_and_splits_every_requested_fault() {
    let data = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/data");
    let read = |name: &str| std::fs::read(data.join(name)).expect("committed trace");
    let p = Pair {
        dest: read("qemu-7.2-tcg-postcopy-both.dest.trace"),
        source: read("qemu-7.2-tcg-postcopy-both.source.trace"),
        truth: Vec::new(),
    };
    let (r, m) = merged(&p, None);
    let c = r.clock.expect("aligned");
    assert!(c.source_offset_us.abs() <= c.bound_us.unwrap(), "{c:?}");
    assert!(c.contradiction_us.is_none(), "{c:?}");
    let src = r.source.as_ref().unwrap();
    assert_eq!(src.matched.requests, src.matched.requested_faults);
    assert_eq!(src.matched.split, src.matched.requested_faults);
    for f in &m.per_fault {
        let s = f.split.expect("split");
        assert_eq!(s.to_source + s.at_source + s.from_source, f.network_ns);
    }
    assert!(r.findings.iter().any(|f| f.rule == "source_dominant"));
}
