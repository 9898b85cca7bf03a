//! Every finding rule on a report where it fires and one where it does not.
//! The base is the committed real QEMU trace's report; each test changes
//! only the figures its rule reads.

use std::path::PathBuf;
use std::sync::LazyLock;

use uffdscope_analyzer::analysis::{analyze_file, Options};
use uffdscope_analyzer::report::findings::{findings, Severity};
use uffdscope_analyzer::report::Report;
use uffdscope_trace::record::Role;

static REAL: LazyLock<Report> = LazyLock::new(|| {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/data/qemu-7.2-tcg-postcopy-1vcpu.trace");
    analyze_file(&path, &Options::default()).expect("committed trace")
});

fn base() -> Report {
    REAL.clone()
}

fn rules(r: &Report) -> Vec<&'static str> {
    findings(r).iter().map(|f| f.rule).collect()
}

fn fires(r: &Report, rule: &str) -> bool {
    rules(r).contains(&rule)
}

/// The committed trace: QEMU 7.2 with a 64 MiB/s post-copy limit sends its
/// stream in bursts, and requested pages wait for the next one with the
/// channel silent — not queued behind bytes in flight.
#[test]
fn the_committed_trace_shows_requested_pages_waiting_at_the_source() {
    let r = base();
    assert!(fires(&r, "stream_paused"), "{:?}", rules(&r));
    assert!(!fires(&r, "head_of_line"), "{:?}", rules(&r));
    let f = findings(&r);
    let paused = f.iter().find(|f| f.rule == "stream_paused").unwrap();
    assert_eq!(paused.severity, Severity::Cause);
    assert!(paused.text.contains("ms"), "{}", paused.text);
    assert!(paused.evidence["paused_share"].as_f64().unwrap() > 0.8);
    // Findings open every format.
    let text = uffdscope_analyzer::render::text::render_text(&r);
    let at = |s: &str| text.find(s).unwrap_or(usize::MAX);
    assert!(at("[stream_paused]") < at("\nFaults\n"), "{text}");
    let md = uffdscope_analyzer::render::markdown::render_markdown(&r);
    assert!(md.contains("`stream_paused`"));
    let html = uffdscope_analyzer::render::html::render_html(&r);
    assert!(html.contains("<code>stream_paused</code>"));
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["findings"][0]["rule"], "stream_paused");
}

#[test]
fn drops() {
    let mut r = base();
    assert!(!fires(&r, "drops"));
    r.trace.drops = 7;
    assert!(fires(&r, "drops"));
    assert_eq!(findings(&r)[0].rule, "drops", "warnings come first");
}

#[test]
fn head_of_line() {
    let mut r = base();
    assert!(!fires(&r, "head_of_line"));
    r.faults.network_split_share.behind_stream = Some(0.7);
    r.faults.network_split_share.paused = Some(0.1);
    assert!(fires(&r, "head_of_line"));
    assert!(!fires(&r, "stream_paused"));
    // Too little network time to explain.
    r.faults.network_split_share.of_ms = 1.0;
    assert!(!fires(&r, "head_of_line"));
}

#[test]
fn stream_paused() {
    let mut r = base();
    r.faults.network_split_share.paused = Some(0.2);
    assert!(!fires(&r, "stream_paused"));
    r.faults.network_split_share.paused = Some(0.6);
    assert!(fires(&r, "stream_paused"));
}

#[test]
fn network_dominant() {
    let mut r = base();
    // Here the pauses explain the network time, so it is not repeated.
    assert!(!fires(&r, "network_dominant"));
    r.faults.network_split_share.paused = Some(0.1);
    assert!(fires(&r, "network_dominant"));
    r.faults.stage_share.insert("network".into(), Some(0.3));
    assert!(!fires(&r, "network_dominant"));
}

#[test]
fn placing_thread_saturated() {
    let mut r = base();
    assert!(!fires(&r, "placing_thread_saturated"));
    let duration_ms = r.trace.duration_s.unwrap() * 1000.0;
    let listen = r
        .threads
        .iter_mut()
        .find(|t| t.role == Role::Listen)
        .unwrap();
    listen.cpu_ms = Some(duration_ms * 0.9);
    assert!(fires(&r, "placing_thread_saturated"));
}

#[test]
fn fault_thread_starved() {
    let mut r = base();
    assert!(!fires(&r, "fault_thread_starved"));
    r.faults.stages_us.get_mut("queue").unwrap().p99 = Some(4000.0);
    assert!(fires(&r, "fault_thread_starved"));
}

#[test]
fn wake_latency_high() {
    let mut r = base();
    // 2.8 ms at p99 on the loaded VM that recorded it.
    assert!(fires(&r, "wake_latency_high"));
    r.faults.stages_us.get_mut("wake").unwrap().p99 = Some(300.0);
    assert!(!fires(&r, "wake_latency_high"));
}

#[test]
fn async_pf() {
    let mut r = base();
    // Format 1 cannot say.
    assert_eq!(r.faults.kvm_async, None);
    assert!(!fires(&r, "async_pf"));
    r.faults.kvm_async = Some(0);
    assert!(!fires(&r, "async_pf"));
    r.faults.kvm_async = Some(12);
    assert!(fires(&r, "async_pf"));
}

#[test]
fn qemu_blind_share() {
    let mut r = base();
    assert!(fires(&r, "qemu_blind_share"));
    let blocked = r.blocktime_ms.vcpu_sum;
    let replay = r.blocktime_ms.qemu_view.as_mut().expect("replayed");
    replay.vcpu_sum = blocked * 0.95;
    assert!(!fires(&r, "qemu_blind_share"));
    // Without recorded reads there is no replay, and nothing to say.
    r.blocktime_ms.qemu_view = None;
    assert!(!fires(&r, "qemu_blind_share"));
}

#[test]
fn qemu_counter_drift() {
    let mut r = base();
    assert!(!fires(&r, "qemu_counter_drift"));
    let q = r.qemu.as_mut().unwrap();
    q.blocktime_ms = Some(q.vcpu_blocktime_ms.as_ref().unwrap()[0] * 0.5);
    assert!(fires(&r, "qemu_counter_drift"));
}

#[test]
fn spikes_explained_and_not() {
    let mut r = base();
    assert!(fires(&r, "spike_explained"));
    assert!(!fires(&r, "spike_unexplained"));
    for s in &mut r.guest.as_mut().unwrap().spikes {
        s.explained = 0.1;
    }
    assert!(!fires(&r, "spike_explained"));
    assert!(fires(&r, "spike_unexplained"));
}

#[test]
fn rule_ids_are_stable_and_unique() {
    let mut r = base();
    r.trace.drops = 1;
    r.faults.kvm_async = Some(1);
    let ids = rules(&r);
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "{ids:?}");
    for id in ids {
        assert!(
            id.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{id}"
        );
    }
}

#[test]
fn preempt_ineffective() {
    let mut r = base();
    // No preempt channel on the committed trace.
    assert!(!fires(&r, "preempt_ineffective"));
    r.threads
        .iter_mut()
        .find(|t| t.role == Role::Listen)
        .unwrap()
        .role = Role::Preempt;
    r.faults.requested_placed_by.clear();
    r.faults.requested_placed_by.insert(Role::Listen, 300);
    r.faults.requested_placed_by.insert(Role::Preempt, 100);
    assert!(fires(&r, "preempt_ineffective"));
    r.faults.requested_placed_by.insert(Role::Preempt, 900);
    assert!(!fires(&r, "preempt_ineffective"));
}

/// A source section as a merge of `split` faults would give it, with the
/// source's share of their network time and one channel's window samples.
fn with_source(r: &mut Report, at_source_share: f64, split: u64, window: (u64, f64)) {
    use uffdscope_analyzer::report::both_ends::{
        SourceChannel, SourceMatches, SourceSection, SubStageShare,
    };
    use uffdscope_analyzer::report::StagePercentiles;
    let p = StagePercentiles {
        p50: Some(1500.0),
        p90: Some(2500.0),
        p99: Some(4000.0),
        max: Some(5000.0),
        count: split,
    };
    r.faults.stages_us.to_source = Some(p);
    r.faults.stages_us.at_source = Some(p);
    r.faults.stages_us.from_source = Some(p);
    r.source = Some(SourceSection {
        path: "source.trace".into(),
        pid: Some(2000),
        events: 1000,
        threads: Vec::new(),
        channels: vec![SourceChannel {
            fd: 32,
            local: "127.0.0.1:40000".into(),
            remote: "127.0.0.1:4444".into(),
            receives: 0,
            page_sends: 900,
            pages: 2600,
            dest_fd: None,
            anchor_votes: None,
            anchor_against: None,
            window_samples: window.0,
            window_full_share: Some(window.1),
        }],
        matched: SourceMatches {
            requested_faults: split,
            requests: split,
            pages: split,
            pages_sent_before: 0,
            split,
        },
        share: SubStageShare {
            to_source: Some(0.05),
            at_source: Some(at_source_share),
            from_source: Some(0.95 - at_source_share),
            of_ms: 400.0,
        },
    });
}

#[test]
fn source_dominant() {
    let mut r = base();
    assert!(!fires(&r, "source_dominant"), "no source trace");
    with_source(&mut r, 0.7, 100, (0, 0.0));
    let f = findings(&r);
    let hit = f
        .iter()
        .find(|f| f.rule == "source_dominant")
        .expect("fires");
    assert!(
        hit.text.contains("70%") && hit.text.contains("280"),
        "{}",
        hit.text
    );
    assert!(hit.knob.unwrap().contains("max-postcopy-bandwidth"));
    with_source(&mut r, 0.3, 100, (0, 0.0));
    assert!(!fires(&r, "source_dominant"));
    with_source(&mut r, 0.7, 5, (0, 0.0));
    assert!(!fires(&r, "source_dominant"), "too few split faults");
}

#[test]
fn source_send_queue_full() {
    let mut r = base();
    assert!(!fires(&r, "source_send_queue_full"));
    with_source(&mut r, 0.1, 100, (40, 0.5));
    let f = findings(&r);
    let hit = f
        .iter()
        .find(|f| f.rule == "source_send_queue_full")
        .expect("fires");
    assert!(
        hit.text.contains("50%") && hit.text.contains("40 tcp_probe"),
        "{}",
        hit.text
    );
    assert!(hit.knob.unwrap().contains("tcp_rmem"));
    with_source(&mut r, 0.1, 100, (40, 0.1));
    assert!(!fires(&r, "source_send_queue_full"));
    with_source(&mut r, 0.1, 100, (5, 0.9));
    assert!(!fires(&r, "source_send_queue_full"), "too few samples");
}
