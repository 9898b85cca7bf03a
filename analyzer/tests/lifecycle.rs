//! Fault-lifecycle engine tests: each tricky case of ARCHITECTURE.md, "The fault model and its stages" with exact stage values.

use uffdscope_analyzer::engine::lifecycle::{Engine, Fault, Resolution, Stage};
use uffdscope_fixtures::synth::{
    Builder, FaultSpec, Kind, FAULT_TID, RAM_BASE, UFFD_FD, VCPU_TID0,
};
use uffdscope_trace::record::{Record, UffdMsg, UffdRead};

const T: u64 = 5_000_000_000;

fn run(records: &[Record]) -> Vec<Fault> {
    let mut engine = Engine::new();
    let mut out = Vec::new();
    for r in records {
        engine.push(r, &mut |f| out.push(f));
    }
    engine.finish(&mut |f| out.push(f));
    out
}

fn stages(f: &Fault) -> [Option<u64>; 5] {
    Stage::ALL.map(|s| f.stage_ns(s))
}

fn build(specs: &[FaultSpec]) -> Vec<Record> {
    let mut b = Builder::new();
    b.preamble(T - 1_000_000, 2, 1 << 30);
    for s in specs {
        b.fault(s);
    }
    b.records
}

#[test]
fn requested_fault_has_all_five_stages() {
    let spec = FaultSpec::new(VCPU_TID0, RAM_BASE + 0x5000, T);
    let faults = run(&build(&[spec]));
    assert_eq!(faults.len(), 1);
    let f = &faults[0];
    assert_eq!(f.resolution, Resolution::Requested);
    assert_eq!(f.page, RAM_BASE + 0x5000);
    assert_eq!(
        stages(f),
        [
            Some(20_000),
            Some(5_000),
            Some(300_000),
            Some(8_000),
            Some(15_000)
        ]
    );
    assert_eq!(f.service_ns(), Some(333_000));
    assert_eq!(f.blocked_ns(), Some(333_000 + 15_000 - 2_000));
    assert!(f.qemu_counted());
}

#[test]
fn two_threads_on_one_page_share_the_request() {
    let first = FaultSpec::new(VCPU_TID0, RAM_BASE + 0x9000, T);
    let mut b = Builder::new();
    b.preamble(T - 1_000_000, 2, 1 << 30);
    b.fault(&first);
    // The second vCPU faults on the same page 100 µs later; the handler reads its
    // message but does not request the page again, and the same COPY wakes it.
    let mut second = FaultSpec::new(VCPU_TID0 + 1, RAM_BASE + 0x9000, T + 100_000);
    second.kind = Kind::ReadNoRequest;
    second.queue = 10_000;
    // Woken by the same placement as the first fault.
    second.network = first.place_start() - (second.entry_ts + second.queue);
    second.place = first.place;
    b.fault(&second);
    let faults = run(&b.records);
    assert_eq!(faults.len(), 2);
    let s = faults.iter().find(|f| f.tid == VCPU_TID0 + 1).unwrap();
    assert_eq!(s.resolution, Resolution::Requested);
    assert!(s.already_requested);
    assert_eq!(s.request_ts, None);
    assert_eq!(
        stages(s),
        [
            Some(10_000),
            None,
            Some(first.place_start() - (T + 110_000)),
            Some(8_000),
            Some(15_000)
        ]
    );
    let sum: u64 = stages(s)[..4].iter().flatten().sum();
    assert_eq!(Some(sum), s.service_ns());
}

#[test]
fn background_placement_without_read_or_request() {
    let mut spec = FaultSpec::new(VCPU_TID0, RAM_BASE + 0x20000, T);
    spec.kind = Kind::Background;
    spec.queue = 70_000;
    let f = &run(&build(&[spec]))[0];
    assert_eq!(f.resolution, Resolution::Background);
    assert!(!f.qemu_counted());
    assert_eq!(
        stages(f),
        [Some(70_000), None, None, Some(8_000), Some(15_000)]
    );
    assert_eq!(f.service_ns(), Some(78_000));
}

#[test]
fn page_placed_before_its_message_is_read() {
    let mut spec = FaultSpec::new(VCPU_TID0, RAM_BASE + 0x30000, T);
    spec.kind = Kind::Background;
    spec.queue = 40_000;
    let mut records = build(&[spec]);
    // The handler reads the (stale) message only after the page was placed.
    records.push(Record::UffdRead(UffdRead {
        tid: FAULT_TID,
        enter_ts: spec.woken_ts() + 50_000,
        exit_ts: spec.woken_ts() + 60_000,
        fd: UFFD_FD,
        ret: 32,
        msgs: vec![UffdMsg {
            event: UffdMsg::EVENT_PAGEFAULT,
            flags: 1,
            address: spec.page,
            ptid: spec.tid,
        }],
    }));
    let f = &run(&records)[0];
    assert_eq!(f.read_ts, None, "a read after placement did not drive it");
    assert_eq!(f.resolution, Resolution::Background);
    assert_eq!(stages(f)[0], Some(40_000));
}

#[test]
fn zero_page_resolution() {
    let mut spec = FaultSpec::new(VCPU_TID0, RAM_BASE + 0x40000, T);
    spec.kind = Kind::ZeroPage;
    let f = &run(&build(&[spec]))[0];
    assert_eq!(f.resolution, Resolution::ZeroPage);
    assert_eq!(f.service_ns(), Some(spec.service()));
}

#[test]
fn missing_fault_entry_leaves_queue_and_service_unknown() {
    let mut spec = FaultSpec::new(VCPU_TID0, RAM_BASE + 0x50000, T);
    spec.no_entry = true;
    let f = &run(&build(&[spec]))[0];
    assert_eq!(f.entry_ts, None);
    assert_eq!(f.service_ns(), None);
    assert_eq!(
        stages(f),
        [None, Some(5_000), Some(300_000), Some(8_000), Some(15_000)]
    );
}

#[test]
fn huge_page_fault_inside_a_2mib_placement() {
    let base = RAM_BASE + (4 << 21);
    let mut spec = FaultSpec::new(VCPU_TID0, base, T);
    spec.len = 2 << 20;
    let mut records = build(&[spec]);
    let inside = base + 5 * 4096 + 0x10;
    for r in &mut records {
        match r {
            Record::Sleep(s) => s.fault.as_mut().unwrap().addr = inside,
            Record::UffdRead(rd) => rd.msgs[0].address = inside,
            _ => {}
        }
    }
    let f = &run(&records)[0];
    assert_eq!(f.page, base + 5 * 4096);
    assert_eq!(f.place_len, 2 << 20);
    assert_eq!(f.resolution, Resolution::Requested);
    assert_eq!(
        stages(f),
        [
            Some(20_000),
            Some(5_000),
            Some(300_000),
            Some(8_000),
            Some(15_000)
        ]
    );
}

#[test]
fn memory_follows_open_faults_not_trace_length() {
    let mut engine = Engine::new();
    let mut b = Builder::new();
    b.preamble(T - 1_000_000, 1, 1 << 30);
    let mut resolved = 0u64;
    let mut max_open = 0;
    for i in 0..20_000u64 {
        let spec = FaultSpec::new(VCPU_TID0, RAM_BASE + i * 4096, T + i * 1_000_000);
        b.fault(&spec);
        for r in b.records.drain(..) {
            engine.push(&r, &mut |_| resolved += 1);
        }
        max_open = max_open.max(engine.open_faults());
    }
    engine.finish(&mut |_| resolved += 1);
    assert_eq!(resolved, 20_000);
    // Faults 1 ms apart with a 0.5 s settle window: about 500 open at a time.
    assert!(max_open <= 600, "open faults grew to {max_open}");
}

#[test]
fn faulting_main_thread_is_not_a_vcpu_when_vcpus_are_named() {
    use uffdscope_fixtures::synth::PID;
    use uffdscope_trace::record::Role;
    // QEMU's main thread blocks in uffd waits while it loads device state:
    // a real fault, but not a vCPU (QEMU's blocktime ignores it too).
    let main = FaultSpec::new(PID, RAM_BASE + 0x7000, T);
    let vcpu = FaultSpec::new(VCPU_TID0, RAM_BASE + 0x8000, T + 1_000_000);
    let mut engine = Engine::new();
    let mut faults = Vec::new();
    for r in &build(&[main, vcpu]) {
        engine.push(r, &mut |f| faults.push(f));
    }
    engine.finish(&mut |f| faults.push(f));
    assert_eq!(faults.len(), 2, "both sleeps are faults");
    assert_eq!(engine.threads[&PID].role(), Role::Other);
    assert_eq!(engine.threads[&VCPU_TID0].role(), Role::Vcpu);
}

#[test]
fn fault_taken_while_its_page_is_being_placed() {
    // The placing ioctl began 5 µs before the vCPU faulted on that page.
    let mut spec = FaultSpec::new(VCPU_TID0, RAM_BASE + 0x60000, T);
    spec.kind = Kind::Background;
    spec.queue = 0;
    let mut records = build(&[spec]);
    for r in &mut records {
        if let Record::UffdIoctl(io) = r {
            io.enter_ts = T - 5_000;
        }
    }
    let f = &run(&records)[0];
    assert_eq!(f.place_ts, Some(T - 5_000));
    assert_eq!(
        stages(f),
        [Some(0), None, None, Some(spec.place), Some(spec.wake)]
    );
    let sum: u64 = stages(f)[..4].iter().flatten().sum();
    assert_eq!(Some(sum), f.service_ns());
}

#[test]
fn the_wake_stage_ends_at_the_resume_in_user_mode_when_the_trace_has_it() {
    let mut spec = FaultSpec::new(VCPU_TID0, RAM_BASE + 0x5000, T);
    spec.resume_after = Some(3_000);
    let faults = run(&build(&[spec]));
    let f = &faults[0];
    assert_eq!(f.resume_ts, Some(T + 333_000 + 15_000 + 3_000));
    assert_eq!(f.stage_ns(Stage::Wake), Some(15_000 + 3_000));
    // Blocked time stays switch-out → switch-in, as QEMU's blocktime is defined.
    assert_eq!(f.blocked_ns(), Some(333_000 + 15_000 - 2_000));
    // Without a resume (no rseq, or an older trace) it ends at the switch-in.
    let faults = run(&build(&[FaultSpec::new(VCPU_TID0, RAM_BASE + 0x5000, T)]));
    assert_eq!(faults[0].stage_ns(Stage::Wake), Some(15_000));
}
