//! Tier 3: both ends of a real QEMU 7.2 post-copy migration (TCG, preempt
//! channel on, through the lab harness) recorded at once, `uffdscope record`
//! on the destination and on the source, and the source's trace checked
//! against the destination's: the return path's bytes as the source received
//! them are the bytes the destination sent, the requests decode at the same
//! stream positions, the pages go out in `PagesSent` runs whose QEMU headers
//! agree on one RAMBlock base. Both recorders stamp `CLOCK_MONOTONIC` of the
//! same host here, so the test also prints how long each leg took.
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};

use uffdscope_fixtures::qemu::{self, LabConfig, Summary};
use uffdscope_fixtures::tier;

#[path = "common/both_ends.rs"]
mod both_ends;
use both_ends::check_pair;

/// QEMU's main RAMBlock.
const BLOCK: &str = "pc.ram";

/// A lab run recorded on both ends, with the two traces.
pub struct BothEnds {
    pub summary: Summary,
    pub destination: PathBuf,
    pub source: PathBuf,
}

/// One post-copy migration (preempt on) with `uffdscope record` on both
/// QEMUs; panics when the migration or a recorder fails.
pub fn record_both_ends(dir: &Path) -> BothEnds {
    let bin = env!("CARGO_BIN_EXE_uffdscope");
    // `exec`: the lab signals the shell's process group and waits for it.
    let cfg = LabConfig {
        out_dir: dir.to_path_buf(),
        mem_mb: 192,
        guest_mem_mb: 64,
        preempt: true,
        record_cmd: Some(format!(
            "exec {bin} record -q --side destination --pid {{pid}} --qmp {{qmp}} --guest-console {{console}} -o {{out}} --ready-file {{ready}}"
        )),
        record_source_cmd: Some(format!(
            "exec {bin} record -q --side auto --pid {{pid}} --qmp {{qmp}} -o {{out}} --ready-file {{ready}}"
        )),
        ..LabConfig::default()
    };
    let summary = qemu::run(&cfg).unwrap_or_else(|e| panic!("lab run failed: {e}"));
    assert!(
        summary.ok,
        "migration did not complete: {:?}",
        summary.error
    );
    let rec = summary.recorder.clone().expect("recorder section");
    let trace = |r: &serde_json::Value, who: &str, log: &str| {
        assert_eq!(
            r["exit_code"],
            0,
            "the {who} recorder must exit 0 on SIGINT: {r}\n{}",
            std::fs::read_to_string(dir.join(log)).unwrap_or_default()
        );
        let p = PathBuf::from(r["out"].as_str().expect("recorder output path"));
        assert!(p.exists(), "no {who} trace at {}", p.display());
        p
    };
    BothEnds {
        destination: trace(&rec, "destination", "recorder.stderr"),
        source: trace(&rec["source"], "source", "recorder-source.stderr"),
        summary,
    }
}

#[test]
fn record_both_ends_of_a_real_postcopy() {
    if !tier::qemu("record_both_ends_of_a_real_postcopy") {
        return;
    }
    let dir = tier::KeptOnPanic::new("uffdscope-both-");
    let run = record_both_ends(&dir.path());
    check_pair(&run.destination, &run.source, BLOCK);
    check_merge(&run.destination, &run.source);
}

/// `report DEST --source SRC` on a pair recorded on one host: the two
/// recorders share one clock, so the estimated offset's bound must contain
/// 0; and every requested fault the merge split has sub-stages that add up
/// to its network stage.
fn check_merge(destination: &Path, source: &Path) {
    use std::sync::Arc;
    use uffdscope_analyzer::analysis::{analyze_merged, Options, SourceInput};
    use uffdscope_analyzer::drive::Limits;
    use uffdscope_analyzer::engine::both_ends::source::SourceIndex;
    use uffdscope_trace::TraceReader;

    let index = SourceIndex::read(
        TraceReader::open(source).expect("source trace"),
        "source",
        Limits::NONE,
    )
    .expect("a source trace");
    let opts = Options {
        source: Some(SourceInput {
            path: source.display().to_string(),
            index: Arc::new(index),
            offset_us: None,
        }),
        ..Options::default()
    };
    let reader = TraceReader::open(destination).expect("destination trace");
    let (report, merged) = analyze_merged(reader, "dest", &opts);
    let merged = merged.expect("merged");
    let clock = report
        .clock
        .expect("the clock is aligned from the messages");
    let bound = clock.bound_us.expect("an estimated offset has a bound");
    eprintln!(
        "offset {:.2} ± {bound:.2} µs, drift {:?} ppm, {} of {} requested faults split",
        clock.source_offset_us,
        clock.drift_ppm,
        merged
            .per_fault
            .iter()
            .filter(|f| f.split.is_some())
            .count(),
        merged.per_fault.len()
    );
    assert!(
        clock.source_offset_us.abs() <= bound,
        "one host, one clock: the bound must contain 0: {clock:?}"
    );
    let split: Vec<_> = merged
        .per_fault
        .iter()
        .filter_map(|f| f.split.map(|s| (f, s)))
        .collect();
    assert!(!split.is_empty(), "no requested fault was split");
    for (f, s) in split {
        assert_eq!(
            s.to_source + s.at_source + s.from_source,
            f.network_ns,
            "sub-stages of {f:?}"
        );
    }
}

/// The committed pair (`fixtures/data/qemu-7.2-tcg-postcopy-both.*`) passes
/// the same checks, on any machine.
#[test]
fn the_committed_pair_matches() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/data");
    let (dest, source) = (
        data.join("qemu-7.2-tcg-postcopy-both.dest.trace"),
        data.join("qemu-7.2-tcg-postcopy-both.source.trace"),
    );
    check_pair(&dest, &source, BLOCK);
    check_merge(&dest, &source);
}
