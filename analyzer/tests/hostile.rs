//! Hostile traces that used to panic, abort or take minutes (quadratic or
//! page-by-page work). Each builds the trace in memory and checks that the
//! analysis completes with the facts the trace holds. No timing asserts: the
//! sizes are chosen so that the old code would take minutes or abort, and the
//! test runner's own timeout catches a regression.

use uffdscope_analyzer::analysis::{analyze, Options};
use uffdscope_analyzer::report::Report;
use uffdscope_trace::record::{
    FaultEntry, FaultSource, IoctlOp, Record, Role, Sleep, ThreadInfo, UffdIoctl, UffdMsg, UffdRead,
};
use uffdscope_trace::{write_all, TraceMeta, TraceReader};

const VCPU: u32 = 101;
const PLACER: u32 = 200;
const READER: u32 = 300;
const PAGE_ADDR: u64 = 0x7f00_0000_0000;

fn report(records: &[Record]) -> Report {
    let bytes = write_all(&TraceMeta::default(), records);
    let reader =
        TraceReader::with_len(&bytes[..], Some(bytes.len() as u64)).expect("header is valid");
    analyze(reader, "hostile", &Options::default())
}

/// The validation boundary said it turned records away for `why`.
fn ignored(r: &Report, why: &str) -> bool {
    r.warnings
        .iter()
        .any(|w| w.starts_with("ignored") && w.contains(why))
}

/// The report of a trace of `n` records made by `record` from their index.
fn report_of_each(n: u64, record: impl Fn(u64) -> Record) -> Report {
    report(&(0..n).map(record).collect::<Vec<_>>())
}

fn sleep(blocked_ts: u64, woken_ts: u64, run_ts: u64, wake_len: u64) -> Record {
    Record::Sleep(Sleep {
        tid: VCPU,
        fault: Some(FaultEntry {
            ts: blocked_ts.saturating_sub(1),
            addr: PAGE_ADDR,
            ip: 0,
            error_code: 2,
            source: FaultSource::User,
        }),
        blocked_ts,
        woken_ts,
        run_ts: Some(run_ts),
        resume_ts: None,
        waker_tid: PLACER,
        wake_op: IoctlOp::Copy,
        wake_start: PAGE_ADDR,
        wake_len,
        kernel: None,
    })
}

fn copy(enter_ts: u64, exit_ts: u64, start: u64, len: u64) -> Record {
    Record::UffdIoctl(UffdIoctl {
        tid: PLACER,
        enter_ts,
        exit_ts,
        fd: 3,
        op: IoctlOp::Copy,
        start,
        len,
        mode: 0,
        ret: 0,
        result: len as i64,
        woken: 1,
    })
}

fn wake(enter_ts: u64, exit_ts: u64, start: u64, len: u64) -> Record {
    match copy(enter_ts, exit_ts, start, len) {
        Record::UffdIoctl(io) => Record::UffdIoctl(UffdIoctl {
            op: IoctlOp::Wake,
            ..io
        }),
        _ => unreachable!("copy builds an ioctl"),
    }
}

fn read(ts: u64, address: u64) -> Record {
    Record::UffdRead(UffdRead {
        tid: READER,
        enter_ts: ts.saturating_sub(100),
        exit_ts: ts,
        fd: 3,
        ret: 32,
        msgs: vec![UffdMsg {
            event: UffdMsg::EVENT_PAGEFAULT,
            flags: 0,
            address,
            ptid: VCPU,
        }],
    })
}

/// Used to panic: `index out of bounds` in the time bins (`(bin + 1) * width`
/// overflowed).
#[test]
fn a_fault_at_the_end_of_the_clock_is_analyzed() {
    let end = u64::MAX;
    let r = report(&[
        copy(end - 4_000, end - 2_000, PAGE_ADDR, 4096),
        sleep(end - 5_000, end - 2_500, end, 4096),
    ]);
    assert_eq!(r.faults.count, 1);
    assert_eq!(r.faults.by_resolution["background"], Some(1));
}

/// Used to abort: the per-vCPU bins were sized by the fault's span (9 GB for
/// 2^62 ns).
#[test]
fn a_fault_lasting_two_to_the_62_ns_does_not_size_memory() {
    let span = 1u64 << 62;
    let r = report(&[
        copy(span - 2_000, span - 1_000, PAGE_ADDR, 4096),
        sleep(1_000_000, span - 1_500, span, 4096),
    ]);
    // The validation boundary turns the impossible times away, and says so;
    // the bins' own bound (stats.rs) stays as a second line of defence.
    assert_eq!(r.faults.count, 0);
    assert!(ignored(&r, "timestamp"), "{:?}", r.warnings);
}

/// Used to hang: resolving the fault walked every page of the 2^60-byte
/// placement looking for reads (2^48 hash lookups).
#[test]
fn a_placement_of_two_to_the_60_bytes_is_resolved_without_walking_it() {
    let t = 1_000_000_000;
    let r = report(&[
        read(t - 10_000, PAGE_ADDR),
        copy(t - 5_000, t + 5_000, PAGE_ADDR, 1 << 60),
        sleep(t - 20_000, t, t + 1_000, 1 << 60),
    ]);
    // The boundary turns the impossible lengths away (the index's own
    // length classes are checked in `one_huge_placement_...` below).
    assert_eq!(r.faults.count, 0);
    assert_eq!(r.faults.messages_read, Some(1));
    assert!(ignored(&r, "byte length"), "{:?}", r.warnings);
}

/// Used to run for hours: the vCPU set was recomputed from every thread on
/// every thread record (O(threads²)).
#[test]
fn three_hundred_thousand_thread_records_are_linear() {
    let r = report_of_each(300_000, |i| {
        Record::Thread(ThreadInfo {
            ts: 1_000 + i,
            tid: 10_000 + i as u32,
            name: "worker".to_owned(),
            role: Role::Other,
        })
    });
    assert_eq!(r.threads.len(), 300_000);
    assert_eq!(r.blocktime_ms.vcpus, 0);
}

/// Used to take minutes: each out-of-order read was inserted into the
/// middle of QEMU's blocktime replay queue (O(n) moves each).
#[test]
fn half_a_million_out_of_order_reads_are_replayed_in_n_log_n() {
    let n = 500_000u64;
    let base = 10_000_000_000u64;
    // Alternately from both ends towards the middle: every insertion lands
    // in the middle of what is queued.
    let records: Vec<Record> = (0..n)
        .map(|i| {
            let k = if i % 2 == 0 { i / 2 } else { n - 1 - i / 2 };
            read(base + k * 100, PAGE_ADDR + k * 4096)
        })
        .chain(std::iter::once(sleep(
            base - 1_000,
            base + n * 100,
            base + n * 100 + 10,
            4096,
        )))
        .collect();
    let r = report(&records);
    assert_eq!(r.faults.messages_read, Some(n));
    assert_eq!(r.faults.count, 1);
}

/// Used to take minutes: each fault earlier than all before it shifted the
/// thread's whole array of time bins.
#[test]
fn ever_earlier_faults_do_not_shift_the_bins_each_time() {
    let n = 300_000u64;
    let t0 = 400_000_000_000u64;
    let r = report_of_each(n, |i| {
        let t = t0 - i * 1_000_000;
        sleep(t, t + 10_000, t + 20_000, 4096)
    });
    // Sleeps more than 2 s older than one before them are turned away at the
    // boundary; those within it still arrive ever earlier, and the count of
    // both adds up.
    assert!(ignored(&r, "out of order"), "{:?}", r.warnings);
    let kept = r.faults.count;
    assert!(kept >= 2_000, "{kept}");
    let timeline = r.timeline.expect("faults make a timeline");
    assert_eq!(timeline.faults.iter().sum::<u64>(), kept);
}

/// Used to take minutes: with one range of 2^60 bytes indexed (a wake, so it
/// places nothing), finding the placements covering an address scanned every
/// multi-page placement below it.
#[test]
fn one_huge_placement_does_not_make_every_lookup_scan_all_ranges() {
    let n = 100_000u64;
    let t = 1_000_000_000u64;
    let mut records = vec![
        sleep(t - 30_000, t - 20_000, t - 10_000, 4096),
        wake(t, t + 100, 0, 1 << 60),
    ];
    for i in 0..n {
        let ts = t + 1_000 + i * 1_000;
        records.push(copy(ts, ts + 100, PAGE_ADDR + i * 0x4000, 0x2000));
    }
    let reads_at = PAGE_ADDR + n * 0x4000;
    for i in 0..n {
        let ts = t + 1_000 + (n + i) * 1_000;
        records.push(read(ts, reads_at + i * 4096));
    }
    let r = report(&records);
    assert_eq!(r.faults.messages_read, Some(n));
    assert_eq!(r.faults.count, 1);
    assert_eq!(
        r.blocktime_ms.qemu_view.as_ref().map(|q| q.faults),
        Some(0),
        "no page read was placed"
    );
}
