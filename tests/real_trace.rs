//! The committed real trace (`fixtures/data/qemu-7.2-tcg-postcopy-1vcpu.trace`,
//! recorded by `uffdscope record` on the destination of a QEMU 7.2 TCG
//! post-copy migration, with its QMP monitor and guest console): the report
//! README's main command shows must keep showing faults, the vCPU, QEMU's
//! figures with the replay agreeing, and the guest spikes explained.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/data")
        .join(name)
}

const TRACE: &str = "qemu-7.2-tcg-postcopy-1vcpu.trace";

fn report(format: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_uffdscope"))
        .args(["report", "--format", format])
        .arg(data(TRACE))
        .output()
        .expect("run uffdscope report");
    assert!(
        out.status.success(),
        "uffdscope report {format} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 report")
}

#[test]
fn real_trace_report_has_faults_vcpu_qemu_and_explained_spikes() {
    let r: Value = serde_json::from_str(&report("json")).expect("JSON report");
    assert_eq!(r["trace"]["drops"], 0);
    assert!(r["trace"]["damage"].is_null());

    let faults = r["faults"]["count"].as_u64().expect("fault count");
    assert!(faults > 1000, "{faults} faults");
    assert_eq!(
        r["faults"]["placements"]["copy"].as_u64().map(|n| n > 0),
        Some(true)
    );

    let threads = r["threads"].as_array().expect("threads");
    let role = |name: &str| {
        threads
            .iter()
            .find(|t| t["name"] == name)
            .map(|t| t["role"].clone())
    };
    assert_eq!(role("CPU 0/TCG"), Some("vcpu".into()));
    assert_eq!(role("fault-default"), Some("fault".into()));
    assert_eq!(role("postcopy/listen"), Some("listen".into()));
    assert_eq!(
        threads.iter().filter(|t| t["role"] == "vcpu").count(),
        1,
        "only the vCPU is a vCPU (the main thread faults too): {threads:#?}"
    );
    let vcpu = threads
        .iter()
        .find(|t| t["role"] == "vcpu")
        .expect("vCPU row");
    assert!(vcpu["service_p50_us"].is_number());

    let q = &r["qemu"];
    assert_eq!(q["version"], "7.2.22");
    let qemu_vcpu = q["vcpu_blocktime_ms"][0]
        .as_f64()
        .expect("QEMU vcpu blocktime");
    let replay = r["blocktime_ms"]["qemu_view"]["per_vcpu"][0]
        .as_f64()
        .expect("replayed vcpu blocktime");
    assert!(
        (replay / qemu_vcpu - 1.0).abs() <= 0.15,
        "replay {replay} ms vs QEMU {qemu_vcpu} ms"
    );
    let ours = r["blocktime_ms"]["vcpu_sum"]
        .as_f64()
        .expect("our blocktime");
    assert!(
        ours > replay,
        "uffdscope sees faults QEMU cannot: {ours} vs {replay}"
    );
    assert!(r["blocktime_ms"]["qemu_view"]["unseen_faults"].as_u64() > Some(0));

    let g = &r["guest"];
    assert_eq!(g["alignment"], "host_arrival");
    let spikes: Vec<&Value> = g["spikes"]
        .as_array()
        .expect("spikes")
        .iter()
        .filter(|s| s["phase"] == "postcopy")
        .collect();
    assert!(!spikes.is_empty(), "no post-copy spike: {g:#}");
    for s in &spikes {
        let explained = s["explained"].as_f64().expect("explained");
        assert!(explained >= 0.5, "spike not explained: {s:#}");
    }

    let text = report("text");
    assert!(text.contains("QEMU reports: postcopy-blocktime"), "{text}");
    assert!(text.contains("postcopy"), "{text}");
}
