//! Live metrics of a recording in progress, in the Prometheus text
//! exposition format (version 0.0.4): the recorder's record tap feeds
//! [`LiveMetrics::record`], and its HTTP thread serves
//! [`LiveMetrics::render`]. Faults and their stages come from the same pass
//! as the report ([`crate::drive::Driver`], the lifecycle engine), so a live
//! figure and the report's figure are one derivation (ARCHITECTURE.md, "The
//! fault model and its stages").
//!
//! What the records cannot say is handed in by the recorder: the drops and
//! its own CPU share (what its status line measures, [`RecorderFigures`]),
//! and at scrape time which threads are blocked in userfaultfd right now (a
//! sleep reaches the trace only when it ends).
//!
//! Every series carries the target's `pid` and, for QEMU, its `-name`
//! (`name`). Label values from the target or QMP are escaped; the sets that
//! grow with them (threads, migration states) are bounded.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fmt::Write as _;

use crate::analysis::vcpu_index;
use crate::drive::{At, Consumer, Derived, Driver, Limits};
use crate::engine::lifecycle::{Engine, Fault, Resolution, Stage};
use uffdscope_trace::record::{Record, Role};
use uffdscope_trace::TraceMeta;

/// The traced process, as its series are labelled.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub pid: u32,
    /// QEMU's `-name`, when it has one.
    pub name: Option<String>,
    /// The recording's `--detail` level: without the system-call
    /// tracepoints there are no request or placement counters to serve.
    pub detail: Option<uffdscope_trace::record::Detail>,
}

/// What the recorder measures itself, as its status line shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RecorderFigures {
    /// Ring-buffer records lost so far (the kernel's drop counter).
    pub drops: u64,
    /// Share of one CPU the recorder used over its last status interval.
    pub cpu_ratio: Option<f64>,
}

/// Upper bounds of the latency histograms' buckets, ns: 1-2-5 per decade
/// from 1 µs to 20 s, then 30 s (a request stuck behind a paused stream).
pub const BUCKETS_NS: [u64; 24] = [
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
    2_000_000_000,
    5_000_000_000,
    10_000_000_000,
    20_000_000_000,
    30_000_000_000,
];

/// Threads given series of their own; faults of threads past this many
/// (a target spawning threads without end) are counted as `role="other"`.
const MAX_THREADS: usize = 4096;
/// Migration states kept for the status gauge (QEMU has 15).
const MAX_STATES: usize = 32;
/// A migration state longer than this is cut (QMP text is the target's).
const MAX_STATE_LEN: usize = 64;

/// A Prometheus histogram over ns values with [`BUCKETS_NS`].
#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Per bucket (not cumulative); the last one is `+Inf`.
    counts: [u64; BUCKETS_NS.len() + 1],
    sum_ns: u128,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, ns: u64) {
        self.counts[BUCKETS_NS.partition_point(|&b| b < ns)] += 1;
        self.sum_ns += u128::from(ns);
        self.count += 1;
    }
}

/// What the pass hands over, kept as counts.
#[derive(Debug, Default)]
struct Counts {
    /// Records taken from the tap (the status line's events).
    events: u64,
    /// Resolved faults by faulting thread and resolution; a thread past
    /// [`MAX_THREADS`] counts under `None`.
    faults: BTreeMap<(Option<u32>, Resolution), u64>,
    /// Threads with a key in `faults`.
    threads: BTreeSet<u32>,
    service: Histogram,
    stages: [Histogram; Stage::ALL.len()],
    /// The last migration status QMP reported, and every one seen.
    migration: Option<String>,
    states: BTreeSet<String>,
    recorder: Option<RecorderFigures>,
}

impl Consumer for Counts {
    type Error = Infallible;

    fn record(&mut self, _: &Record, derived: &Derived, _: At<'_>) -> Result<(), Infallible> {
        if let Some(status) = derived.qmp.as_ref().and_then(|q| q.status.as_deref()) {
            let status: String = status.chars().take(MAX_STATE_LEN).collect();
            if self.states.len() < MAX_STATES || self.states.contains(&status) {
                self.states.insert(status.clone());
                self.migration = Some(status);
            }
        }
        Ok(())
    }

    fn fault(&mut self, fault: &Fault, _: At<'_>) -> Result<(), Infallible> {
        let known = self.threads.contains(&fault.tid) || self.threads.len() < MAX_THREADS;
        let tid = known.then(|| {
            self.threads.insert(fault.tid);
            fault.tid
        });
        *self.faults.entry((tid, fault.resolution)).or_insert(0) += 1;
        if let Some(ns) = fault.service_ns() {
            self.service.observe(ns);
        }
        for stage in Stage::ALL {
            if let Some(ns) = fault.stage_ns(stage) {
                self.stages[stage.index()].observe(ns);
            }
        }
        Ok(())
    }
}

/// The live model: one pass fed record by record, and what it counted.
pub struct LiveMetrics {
    pass: Driver,
    counts: Counts,
    /// Page requests and placements are recorded (not `--detail minimal`).
    syscalls_recorded: bool,
    /// `pid="..",name=".."`, escaped once.
    target_labels: String,
}

impl LiveMetrics {
    pub fn new(target: &Target) -> Self {
        let mut target_labels = format!("pid=\"{}\"", target.pid);
        if let Some(name) = &target.name {
            let _ = write!(target_labels, ",name=\"{}\"", label_value(name));
        }
        // The recording's start is its first record's time (the boundary
        // anchors there when the metadata has none).
        let meta = TraceMeta {
            detail: target.detail,
            ..TraceMeta::default()
        };
        Self {
            pass: Driver::new(&meta, Limits::NONE),
            syscalls_recorded: meta.records_syscalls(),
            counts: Counts::default(),
            target_labels,
        }
    }

    /// Takes one record the recorder wrote.
    pub fn record(&mut self, rec: &Record) {
        self.counts.events += 1;
        let Ok(()) = self.pass.push(rec, &mut self.counts);
    }

    /// What the recorder measured at its last status update.
    pub fn set_recorder(&mut self, figures: RecorderFigures) {
        self.counts.recorder = Some(figures);
    }

    /// The exposition. `blocked_now` lists the target's threads blocked in
    /// userfaultfd at this moment (`None`: not measurable on this host).
    pub fn render(&self, blocked_now: Option<&[u32]>) -> String {
        let mut out = Exposition {
            text: String::new(),
            target: &self.target_labels,
        };
        let engine = self.pass.engine();
        self.render_counters(&mut out, engine);
        self.render_histograms(&mut out);
        render_blocked(&mut out, engine, blocked_now);
        self.render_gauges(&mut out);
        out.text
    }

    fn render_counters(&self, out: &mut Exposition<'_>, engine: &Engine) {
        let c = &self.counts;
        out.head(
            "uffdscope_events_total",
            "counter",
            "Records written to the trace.",
        );
        out.sample("uffdscope_events_total", "", c.events);
        out.head(
            "uffdscope_faults_total",
            "counter",
            "Faults (a thread's sleep on a missing page) resolved, by the faulting thread and how the page arrived.",
        );
        let mut by_labels: BTreeMap<String, u64> = BTreeMap::new();
        for (&(tid, resolution), &n) in &c.faults {
            let labels = format!(
                "{},resolution=\"{}\"",
                thread_labels(engine, tid),
                resolution.as_str()
            );
            *by_labels.entry(labels).or_insert(0) += n;
        }
        for (labels, n) in by_labels {
            out.sample("uffdscope_faults_total", &labels, n);
        }
        if self.syscalls_recorded {
            render_uffd_counters(out, engine);
        }
        if let Some(r) = c.recorder {
            out.head(
                "uffdscope_drops_total",
                "counter",
                "Ring-buffer records lost (the figures are lower bounds when this is not 0).",
            );
            out.sample("uffdscope_drops_total", "", r.drops);
        }
    }

    fn render_histograms(&self, out: &mut Exposition<'_>) {
        let c = &self.counts;
        out.head(
            "uffdscope_fault_service_seconds",
            "histogram",
            "Fault service latency: fault entry to the wake.",
        );
        out.histogram("uffdscope_fault_service_seconds", "", &c.service);
        out.head(
            "uffdscope_fault_stage_seconds",
            "histogram",
            "Time faults spent in each stage (queue, request, network, place, wake).",
        );
        for stage in Stage::ALL {
            out.histogram(
                "uffdscope_fault_stage_seconds",
                &format!("stage=\"{}\"", stage.as_str()),
                &c.stages[stage.index()],
            );
        }
    }

    fn render_gauges(&self, out: &mut Exposition<'_>) {
        let c = &self.counts;
        if let Some(current) = &c.migration {
            out.head(
                "uffdscope_migration_status",
                "gauge",
                "The migration status QMP reported last (1), and the states seen before (0).",
            );
            for state in &c.states {
                let labels = format!("status=\"{}\"", label_value(state));
                out.sample(
                    "uffdscope_migration_status",
                    &labels,
                    u64::from(state == current),
                );
            }
        }
        if let Some(cpu) = c.recorder.and_then(|r| r.cpu_ratio) {
            if cpu.is_finite() {
                out.head(
                    "uffdscope_recorder_cpu_ratio",
                    "gauge",
                    "Share of one CPU the recorder used over its last status interval.",
                );
                out.sample("uffdscope_recorder_cpu_ratio", "", cpu);
            }
        }
    }
}

/// Page requests and placing ioctls (recorded at `--detail standard` and
/// `full`).
fn render_uffd_counters(out: &mut Exposition<'_>, engine: &Engine) {
    out.head(
        "uffdscope_requests_total",
        "counter",
        "Page requests sent to the source on the return path.",
    );
    out.sample("uffdscope_requests_total", "", engine.requests_sent);
    out.head(
        "uffdscope_placements_total",
        "counter",
        "Placing userfaultfd ioctls, by operation.",
    );
    for (op, n) in engine.placements_by_op() {
        out.sample("uffdscope_placements_total", &format!("op=\"{op}\""), n);
    }
}

/// `vcpu_blocked` per vCPU: 1 while it sleeps in userfaultfd.
fn render_blocked(out: &mut Exposition<'_>, engine: &Engine, blocked_now: Option<&[u32]>) {
    let Some(blocked) = blocked_now else {
        return;
    };
    out.head(
        "uffdscope_vcpu_blocked",
        "gauge",
        "1 while the vCPU thread is blocked in userfaultfd, else 0.",
    );
    for (&tid, facts) in &engine.threads {
        if facts.role() == Role::Vcpu {
            let labels = vcpu_labels(tid, facts.name.as_deref());
            out.sample(
                "uffdscope_vcpu_blocked",
                &labels,
                u64::from(blocked.contains(&tid)),
            );
        }
    }
}

/// `role=".."` and, for a vCPU, `vcpu="N"` (its QEMU index) or `tid="T"`.
fn thread_labels(engine: &Engine, tid: Option<u32>) -> String {
    let facts = tid.and_then(|t| engine.threads.get(&t).map(|f| (t, f)));
    match facts {
        Some((tid, f)) if f.role() == Role::Vcpu => {
            format!("role=\"vcpu\",{}", vcpu_labels(tid, f.name.as_deref()))
        }
        Some((_, f)) => format!("role=\"{}\"", f.role().as_str()),
        None => format!("role=\"{}\"", Role::Other.as_str()),
    }
}

fn vcpu_labels(tid: u32, name: Option<&str>) -> String {
    match name.and_then(vcpu_index) {
        Some(i) => format!("vcpu=\"{i}\""),
        None => format!("tid=\"{tid}\""),
    }
}

/// The text being written; every sample gets the target's labels first.
struct Exposition<'a> {
    text: String,
    target: &'a str,
}

impl Exposition<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let sep = if labels.is_empty() { "" } else { "," };
        let _ = writeln!(self.text, "{name}{{{}{sep}{labels}}} {value}", self.target);
    }

    fn histogram(&mut self, name: &str, labels: &str, h: &Histogram) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, n) in h.counts.iter().enumerate() {
            cumulative += n;
            let le = BUCKETS_NS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |&b| seconds(b.into()));
            self.sample(
                &format!("{name}_bucket"),
                &format!("{labels}{sep}le=\"{le}\""),
                cumulative,
            );
        }
        self.sample(&format!("{name}_sum"), labels, seconds(h.sum_ns));
        self.sample(&format!("{name}_count"), labels, h.count);
    }
}

/// ns as exact decimal seconds (`0.000001`, `30`, `1.5`).
fn seconds(ns: u128) -> String {
    let (whole, frac) = (ns / 1_000_000_000, ns % 1_000_000_000);
    if frac == 0 {
        whole.to_string()
    } else {
        let text = format!("{whole}.{frac:09}");
        text.trim_end_matches('0').to_owned()
    }
}

/// A label value escaped for the exposition: `\`, `"` and newline.
pub fn label_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{analyze, Options};
    use uffdscope_fixtures::synth::{Scenario, T0};
    use uffdscope_trace::record::Note;
    use uffdscope_trace::TraceReader;

    /// A synthetic migration fed to a live model, with a record 10 s after
    /// the last so every fault settles (live, the periodic scans do this).
    fn fed(scenario: &Scenario, target: &Target) -> (LiveMetrics, Vec<Record>) {
        let mut records = Vec::new();
        scenario.generate(|r| records.push(r.clone()), false);
        let last = records.iter().map(Record::ts).max().unwrap_or(T0);
        records.push(Record::Note(Note {
            ts: last + 10_000_000_000,
            kind: "end".into(),
            text: "stopped by signal".into(),
        }));
        let mut live = LiveMetrics::new(target);
        for r in &records {
            live.record(r);
        }
        (live, records)
    }

    /// `name{labels} value` split, with the labels parsed and unescaped.
    fn parse_sample(line: &str) -> (String, Vec<(String, String)>, f64) {
        let open = line.find('{').expect("every sample has labels");
        let name = line[..open].to_owned();
        let mut labels = Vec::new();
        let mut rest = &line[open + 1..];
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                let value = after.strip_prefix(' ').expect("one space before the value");
                let value = if value == "+Inf" {
                    f64::INFINITY
                } else {
                    value.parse().expect("a number")
                };
                return (name, labels, value);
            }
            rest = rest.strip_prefix(',').unwrap_or(rest);
            let eq = rest.find("=\"").expect("label=\"value\"");
            let key = rest[..eq].to_owned();
            assert!(
                key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{key}"
            );
            let mut value = String::new();
            let mut chars = rest[eq + 2..].char_indices();
            let end = loop {
                match chars.next().expect("closing quote") {
                    (_, '\\') => match chars.next().expect("escaped char").1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => panic!("bad escape \\{c} in {line}"),
                    },
                    (i, '"') => break eq + 2 + i + 1,
                    (_, '\n') => panic!("raw newline in {line}"),
                    (_, c) => value.push(c),
                }
            };
            labels.push((key, value));
            rest = &rest[end..];
        }
    }

    fn label<'a>(labels: &'a [(String, String)], key: &str) -> Option<&'a str> {
        labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A `--detail minimal` recording has no requests or placements to
    /// count: their series are left out, not served as 0.
    #[test]
    fn minimal_serves_no_request_or_placement_counters() {
        let target = Target {
            pid: 1,
            name: None,
            detail: Some(uffdscope_trace::record::Detail::Minimal),
        };
        let (live, _) = fed(&Scenario::default(), &target);
        let text = live.render(None);
        assert!(text.contains("uffdscope_faults_total{"), "{text}");
        assert!(!text.contains("uffdscope_requests_total"), "{text}");
        assert!(!text.contains("uffdscope_placements_total"), "{text}");
        assert!(!text.contains("resolution=\"background\""), "{text}");
    }

    #[test]
    fn exposition_is_well_formed_and_histograms_cumulative() {
        let target = Target {
            pid: 4242,
            name: Some("dst".into()),
            detail: None,
        };
        let (mut live, _) = fed(&Scenario::default(), &target);
        live.set_recorder(RecorderFigures {
            drops: 0,
            cpu_ratio: Some(0.1),
        });
        let text = live.render(Some(&[]));
        let mut typed: BTreeMap<String, String> = BTreeMap::new();
        let mut helped = BTreeSet::new();
        // (metric, labels without le) -> (last le, last cumulative count)
        let mut buckets: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
        let mut samples = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(!help.is_empty() && helped.insert(name.to_owned()), "{line}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(helped.contains(name), "TYPE before HELP: {line}");
                assert!(
                    typed.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "{line}"
                );
                continue;
            }
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let (name, labels, value) = parse_sample(line);
            samples += 1;
            assert_eq!(label(&labels, "pid"), Some("4242"), "{line}");
            assert_eq!(label(&labels, "name"), Some("dst"), "{line}");
            assert!(value.is_finite() && value >= 0.0, "{line}");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| typed.get(*f).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(&name);
            let kind = typed
                .get(family)
                .unwrap_or_else(|| panic!("no TYPE for {line}"));
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{line}");
            }
            if name.ends_with("_bucket") {
                let le = label(&labels, "le").expect("le");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le is a number")
                };
                let series: Vec<_> = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
                let key = (family.to_owned(), format!("{series:?}"));
                let (last_le, last_n) = buckets.get(&key).copied().unwrap_or((0.0, 0.0));
                assert!(le > last_le && value >= last_n, "not cumulative: {line}");
                buckets.insert(key, (le, value));
            }
            if let Some(family) = name.strip_suffix("_count") {
                let series: Vec<_> = labels.clone();
                let inf = buckets[&(family.to_owned(), format!("{series:?}"))];
                assert_eq!(inf, (f64::INFINITY, value), "+Inf bucket != _count: {line}");
            }
        }
        assert!(samples > 100, "{text}");
        assert_eq!(
            buckets.len(),
            1 + Stage::ALL.len(),
            "service + one per stage"
        );
        for name in [
            "uffdscope_faults_total",
            "uffdscope_migration_status",
            "uffdscope_vcpu_blocked",
            "uffdscope_recorder_cpu_ratio",
            "uffdscope_drops_total",
        ] {
            assert!(typed.contains_key(name), "{name} missing:\n{text}");
        }
    }

    #[test]
    fn figures_match_the_report_of_the_same_records() {
        let scenario = Scenario::default();
        let (mut live, records) = fed(
            &scenario,
            &Target {
                pid: 1,
                name: None,
                detail: None,
            },
        );
        live.set_recorder(RecorderFigures {
            drops: 3,
            cpu_ratio: Some(0.25),
        });
        let bytes = uffdscope_trace::write_all(&scenario.meta(), &records);
        let reader = TraceReader::new(std::io::Cursor::new(bytes)).expect("trace");
        let report = analyze(reader, "synthetic", &Options::default());
        let text = live.render(None);
        let value = |prefix: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .map(|l| parse_sample(l).2)
                .sum()
        };
        assert_eq!(value("uffdscope_faults_total{") as u64, report.faults.count);
        assert_eq!(
            value("uffdscope_fault_service_seconds_count{") as u64,
            report.faults.with_service
        );
        assert_eq!(
            Some(value("uffdscope_requests_total{") as u64),
            report.faults.page_requests
        );
        let placements: u64 = report
            .faults
            .placements
            .iter()
            .flat_map(|p| p.values())
            .sum();
        assert_eq!(value("uffdscope_placements_total{") as u64, placements);
        assert_eq!(
            value("uffdscope_events_total{") as u64,
            records.len() as u64
        );
        assert_eq!(value("uffdscope_drops_total{") as u64, 3);
        assert!(text.contains("uffdscope_recorder_cpu_ratio{pid=\"1\"} 0.25\n"));
        for (resolution, n) in &report.faults.by_resolution {
            let prefix = format!("resolution=\"{resolution}\"");
            let live_n: f64 = text
                .lines()
                .filter(|l| l.starts_with("uffdscope_faults_total{") && l.contains(&prefix))
                .map(|l| parse_sample(l).2)
                .sum();
            assert_eq!(live_n as u64, n.unwrap_or(0), "{resolution}");
        }
        // The synthetic vCPUs are named `CPU n/TCG`: their faults carry the index.
        assert!(text.contains("role=\"vcpu\",vcpu=\"1\""), "{text}");
        assert!(
            !text.contains("uffdscope_vcpu_blocked"),
            "not measured, not shown"
        );
        assert!(
            text.contains("uffdscope_migration_status{pid=\"1\",status=\"completed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("uffdscope_migration_status{pid=\"1\",status=\"postcopy-active\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn hostile_label_values_are_escaped() {
        let evil = "a\"b\\c\nd}\u{1b}e";
        assert_eq!(label_value(evil), "a\\\"b\\\\c\\nd}\u{1b}e");
        let live = LiveMetrics::new(&Target {
            pid: 7,
            name: Some(evil.into()),
            detail: None,
        });
        let text = live.render(None);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, labels, _) = parse_sample(line);
            assert_eq!(label(&labels, "name"), Some(evil), "{line}");
        }
    }

    #[test]
    fn bucket_bounds_are_exact_and_ascending() {
        assert_eq!(seconds(1_000), "0.000001");
        assert_eq!(seconds(30_000_000_000), "30");
        assert_eq!(seconds(1_500_000_000), "1.5");
        assert!(BUCKETS_NS.windows(2).all(|w| w[0] < w[1]));
        let mut h = Histogram::default();
        for ns in [0, 1_000, 1_001, 30_000_000_000, 30_000_000_001, u64::MAX] {
            h.observe(ns);
        }
        assert_eq!(h.counts[0], 2, "0 and 1 µs are <= 1 µs");
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[BUCKETS_NS.len() - 1], 1, "30 s is <= 30 s");
        assert_eq!(h.counts[BUCKETS_NS.len()], 2, "over 30 s: +Inf only");
        assert_eq!(h.count, 6);
    }
}
