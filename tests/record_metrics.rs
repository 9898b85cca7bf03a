//! `uffdscope record --metrics`: a real Prometheus (Debian's `prometheus`)
//! scrapes the recorder while it records the post-copy emulator, and the
//! values it stores, read back through its query API, must be the final
//! trace's report figures. Plus the address checks of the flag.
#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use uffdscope_analyzer::analysis::{analyze_file, Options};
use uffdscope_analyzer::live::BUCKETS_NS;
use uffdscope_fixtures::emu::{Bandwidth, Config, Emu, RunLength};
use uffdscope_fixtures::tier::{self, KeptOnPanic};

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A child killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` over HTTP/1.0: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    Ok((status, body.unwrap_or_default()))
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The instant vector `promql` evaluates to: (labels, value) per series.
fn query(prom: SocketAddr, promql: &str) -> Vec<(serde_json::Value, f64)> {
    let (status, body) =
        get(prom, &format!("/api/v1/query?query={}", encode(promql))).expect("query Prometheus");
    assert_eq!(status, 200, "{promql}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("Prometheus answers JSON");
    assert_eq!(v["status"], "success", "{promql}: {body}");
    v["data"]["result"]
        .as_array()
        .expect("a vector")
        .iter()
        .map(|s| {
            let value = s["value"][1].as_str().expect("value as text");
            (
                s["metric"].clone(),
                value.parse().expect("a number (NaN when no data)"),
            )
        })
        .collect()
}

/// The single value of `promql`, once it has one.
fn scalar(prom: SocketAddr, promql: &str) -> Option<f64> {
    match query(prom, promql).as_slice() {
        [(_, v)] => Some(*v),
        [] => None,
        many => panic!("{promql}: {} series, expected one", many.len()),
    }
}

fn start_prometheus(dir: &Path, scrape: SocketAddr) -> (Killed, SocketAddr) {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: uffdscope\n    static_configs:\n      - targets: ['{scrape}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn prometheus");
    let child = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !get(web, "/-/ready").is_ok_and(|(status, _)| status == 200) {
        assert!(
            Instant::now() < deadline,
            "Prometheus not ready within 60 s; see {}/prometheus.log",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (child, web)
}

fn start_recorder(pid: u32, trace: &Path, metrics: SocketAddr) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_uffdscope"))
        .args(["record", "-q", "--pid", &pid.to_string(), "-o"])
        .arg(trace)
        .args(["--metrics", &metrics.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn uffdscope record");
    // Once the trace has a frame, the probes are live and the endpoint is up.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(trace).map_or(0, |m| m.len()) < 64 {
        assert!(
            Instant::now() < deadline,
            "recorder did not start within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Polls `promql` until it is above 0 and unchanged for `still`: the
/// emulator's faults are over and every one has settled and been scraped.
fn settled(prom: SocketAddr, promql: &str, still: Duration, within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    let mut last: Option<(f64, Instant)> = None;
    loop {
        let now = Instant::now();
        assert!(
            now < deadline,
            "{promql} did not settle within {within:?}: {last:?}"
        );
        let v = scalar(prom, promql).unwrap_or(0.0);
        match last {
            Some((prev, since)) if (prev - v).abs() < 0.5 && v > 0.0 => {
                if now - since >= still {
                    return v;
                }
            }
            _ => last = Some((v, now)),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The `[lower, upper]` seconds of the histogram bucket holding `s`.
fn bucket_of(s: f64) -> (f64, f64) {
    let ns = (s * 1e9) as u64;
    let i = BUCKETS_NS.partition_point(|&b| b < ns);
    let lower = if i == 0 {
        0.0
    } else {
        BUCKETS_NS[i - 1] as f64 / 1e9
    };
    let upper = BUCKETS_NS.get(i).map_or(f64::INFINITY, |&b| b as f64 / 1e9);
    (lower, upper)
}

#[test]
fn prometheus_scrapes_a_live_recording_and_agrees_with_the_report() {
    if !tier::prometheus("prometheus_scrapes_a_live_recording_and_agrees_with_the_report") {
        return;
    }
    let dir = KeptOnPanic::new("uffdscope-metrics-");
    // Faulting is over within a few seconds (the stream delivers 64 MiB at
    // 32 MiB/s); the vCPUs keep writing, fault-free, until 25 s, which leaves
    // the recorder and Prometheus running for the figures to settle.
    let cfg = Config {
        mem_bytes: 64 << 20,
        vcpus: 2,
        bandwidth: Bandwidth::BytesPerSec(32 << 20),
        wait_for_signal: true,
        run: RunLength::Duration(Duration::from_secs(25)),
        ..Config::default()
    };
    let emu = Emu::spawn(&cfg).expect("spawn emulator");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let trace = dir.path().join("run.trace");
    let recorder = start_recorder(emu.pid(), &trace, metrics);
    let (_prometheus, prom) = start_prometheus(&dir.path(), metrics);
    emu.go().expect("start vCPUs");

    let faults = settled(
        prom,
        "sum(uffdscope_faults_total)",
        Duration::from_secs(4),
        Duration::from_secs(20),
    );
    let up = scalar(prom, "up{job=\"uffdscope\"}");
    assert_eq!(
        up.map(|u| u as u64),
        Some(1),
        "Prometheus could not scrape the recorder"
    );
    let pid = emu.pid();
    let vcpu_series = query(
        prom,
        &format!("uffdscope_faults_total{{pid=\"{pid}\",role=\"vcpu\"}}"),
    );
    assert!(
        vcpu_series.iter().any(|(m, _)| m["vcpu"] == "0")
            && vcpu_series.iter().any(|(m, _)| m["vcpu"] == "1"),
        "per-vCPU fault series by QEMU-style index: {vcpu_series:?}"
    );
    let blocked = query(prom, "uffdscope_vcpu_blocked");
    assert_eq!(
        blocked.len(),
        2,
        "one blocked-now gauge per vCPU: {blocked:?}"
    );
    assert!(
        blocked.iter().all(|(_, v)| *v as u64 == 0),
        "no vCPU blocked after faulting: {blocked:?}"
    );
    let p50 = scalar(
        prom,
        "histogram_quantile(0.5, sum by (le) (uffdscope_fault_service_seconds_bucket))",
    )
    .expect("a service-latency median");
    let stages = query(prom, "uffdscope_fault_stage_seconds_count");
    assert_eq!(stages.len(), 5, "one histogram per stage: {stages:?}");
    let drops = scalar(prom, "uffdscope_drops_total").expect("drops exported");
    let cpu = scalar(prom, "uffdscope_recorder_cpu_ratio").expect("recorder CPU exported");
    assert!((0.0..=2.0).contains(&cpu), "recorder CPU share {cpu}");
    let events = scalar(prom, "uffdscope_events_total").expect("events exported");

    emu.wait()
        .expect("emulator run")
        .success()
        .expect("emulator verified every page");
    let out = recorder
        .wait_with_output()
        .expect("recorder ends with its target");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "recorder failed: {stderr}");
    assert!(
        stderr.contains(&format!("live metrics at http://{metrics}/metrics")),
        "{stderr}"
    );

    let report = analyze_file(&trace, &Options::default()).expect("analyze");
    assert_eq!(
        faults as u64, report.faults.count,
        "live fault count vs the report's"
    );
    assert_eq!(drops as u64, report.trace.drops);
    assert_eq!(drops as u64, 0, "drops at default settings");
    assert!(events as u64 <= report.trace.events && events > 0.0);
    let report_p50 = report.faults.service_us.p50.expect("report p50") / 1e6;
    // Prometheus interpolates inside the bucket that holds the median; the
    // report's median (HdrHistogram, 3 digits) lies in that bucket, or at
    // its edge.
    let (lower, _) = bucket_of(report_p50 * 0.99);
    let (_, upper) = bucket_of(report_p50 * 1.01);
    eprintln!(
        "live: {faults} faults, service p50 {:.1} µs (Prometheus) vs {:.1} µs (report), recorder CPU {:.1}%",
        p50 * 1e6,
        report_p50 * 1e6,
        cpu * 100.0
    );
    assert!(
        (lower..=upper).contains(&p50),
        "Prometheus p50 {p50} s outside the report p50 {report_p50} s's bucket [{lower}, {upper}]"
    );
}

/// `record` of this test process into `trace` with `--metrics metrics`: it
/// must refuse; its exit code and stderr.
fn refused_record(trace: &Path, metrics: &str) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_uffdscope"))
        .args([
            "record",
            "-q",
            "--pid",
            &std::process::id().to_string(),
            "-o",
        ])
        .arg(trace)
        .args(["--metrics", metrics])
        .output()
        .expect("run uffdscope record");
    assert!(!trace.exists(), "refused before writing anything");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn metrics_address_must_be_loopback_unless_allowed() {
    if !tier::root("metrics_address_must_be_loopback_unless_allowed") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("never.trace");
    let (code, stderr) = refused_record(&trace, "0.0.0.0:0");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--metrics-allow-remote"), "{stderr}");

    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (code, stderr) = refused_record(&trace, &addr);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("choose another --metrics"),
        "{stderr}"
    );
}

#[test]
fn metrics_address_syntax_is_explained() {
    let out = Command::new(env!("CARGO_BIN_EXE_uffdscope"))
        .args(["record", "--pid", "1", "--metrics", "localhost"])
        .output()
        .expect("run uffdscope record");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("127.0.0.1:9464"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_uffdscope"))
        .args(["record", "--pid", "1", "--metrics-allow-remote"])
        .output()
        .expect("run uffdscope record");
    assert_eq!(
        out.status.code(),
        Some(1),
        "--metrics-allow-remote alone is refused"
    );
}
