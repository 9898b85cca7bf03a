//! KVM async page faults on synthetic traces: what a KVM host's trace shows
//! when a kworker waits for a page in a vCPU's place (not validated on a KVM
//! host yet; the records follow the kernel's `kvm:` tracepoints).

use uffdscope_analyzer::analysis::{analyze, Options};
use uffdscope_analyzer::report::findings::findings;
use uffdscope_analyzer::report::Report;
use uffdscope_fixtures::synth::{Builder, FaultSpec, Scenario, RAM_BASE, VCPU_TID0};
use uffdscope_trace::record::Record;
use uffdscope_trace::TraceReader;

fn report_of(scenario: &Scenario, records: &[Record]) -> Report {
    let bytes = uffdscope_trace::write_all(&scenario.meta(), records);
    let reader = TraceReader::new(&bytes[..]).expect("trace header");
    analyze(reader, "synthetic", &Options::default())
}

const T: u64 = uffdscope_fixtures::synth::T0 + 1_000_000;

#[test]
fn a_kworkers_wait_goes_to_the_vcpu_it_served_and_qemu_does_not_see_it() {
    let mut b = Builder::for_kvm();
    b.preamble(T - 1_000, 2, 1 << 30);
    let a = FaultSpec::new(VCPU_TID0, RAM_BASE + 0x5000, T);
    let c = FaultSpec::new(VCPU_TID0 + 1, RAM_BASE + 0x9000, T + 10_000);
    b.kvm_async_fault(&a, 0x1000, false);
    b.kvm_async_fault(&c, 0x1001, true);
    // vCPU 0 ran on and took an ordinary fault while its kworker waited.
    b.fault(&FaultSpec::new(VCPU_TID0, RAM_BASE + 0x7000, T + 50_000));
    let r = report_of(&Scenario::default(), &b.records);
    let w = r.faults.kvm_async_waits.as_ref().expect("KVM steps seen");
    assert_eq!(w.faults, 2);
    assert_eq!((w.handed_off, w.unfinished, w.repeated_faults), (2, 0, 1));
    // not_present (entry + 1 µs) → ready (woken + wake).
    let wait = |f: &FaultSpec| (f.woken_ts() + f.wake - f.entry_ts - 1_000) as f64 / 1e6;
    let close = |tid: u32, want: f64| (w.per_vcpu_ms[&tid.to_string()] - want).abs() < 1e-3;
    assert!(close(VCPU_TID0, wait(&a)), "{:?}", w.per_vcpu_ms);
    assert!(close(VCPU_TID0 + 1, wait(&c)), "{:?}", w.per_vcpu_ms);
    // The vCPU's own fault (a kvm_page_fault entry) is the only sleep, with
    // all its stages; the kworkers' waits are not faults.
    assert_eq!(r.faults.count, 1);
    assert_eq!(r.faults.stage_sum_consistent, Some(1));
    assert_eq!(r.faults.stages_us["wake"].count, 1);
    // QEMU reads the kworkers' messages but cannot tie them to a vCPU.
    assert_eq!(r.blocktime_ms.qemu_view.as_ref().map(|q| q.faults), Some(1));
    let f = findings(&r);
    let async_pf = f.iter().find(|f| f.rule == "async_pf").expect("async_pf");
    assert!(
        async_pf
            .text
            .contains("2 faults were KVM async page faults")
            && async_pf.text.contains("2 vCPU(s)")
            && async_pf.text.contains("QEMU's blocktime does not count"),
        "{}",
        async_pf.text
    );
}

#[test]
fn the_generator_emits_async_faults_and_the_report_says_so() {
    let scenario = Scenario {
        kvm_async_every: 10,
        guest: false,
        ..Scenario::default()
    };
    let mut records = Vec::new();
    scenario.generate(|r| records.push(r.clone()), false);
    let r = report_of(&scenario, &records);
    let total = scenario.faults * u64::from(scenario.vcpus);
    let w = r.faults.kvm_async_waits.as_ref().expect("KVM steps seen");
    assert_eq!(w.faults, total / 10);
    assert_eq!(w.unfinished, 0);
    assert_eq!(w.per_vcpu_ms.len(), 2, "both vCPUs had async faults");
    assert_eq!(
        r.faults.count,
        total - total / 10,
        "async faults are not sleeps"
    );
    assert!(findings(&r).iter().any(|f| f.rule == "async_pf"));
    assert!(
        r.threads
            .iter()
            .any(|t| t.name.as_deref() == Some("CPU 0/KVM")),
        "KVM vCPU names"
    );
}

#[test]
fn a_tcg_trace_has_no_kvm_section() {
    let scenario = Scenario {
        guest: false,
        ..Scenario::default()
    };
    let mut records = Vec::new();
    scenario.generate(|r| records.push(r.clone()), false);
    let r = report_of(&scenario, &records);
    assert!(r.faults.kvm_async_waits.is_none());
    assert_eq!(
        r.faults.resume_fallback, None,
        "no resume and no placer run in the trace: its recorder took none, so no sleep is a fallback"
    );
}
