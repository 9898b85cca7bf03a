//! Regression tests for hostile inputs found in the hardening review: each
//! once crashed, hung, exhausted memory or fooled the analysis. Each now
//! finishes (these sizes took minutes or ran out of memory before) and says
//! what it ignored.

use std::fmt::Write as _;

use uffdscope_analyzer::analysis::{analyze, Options};
use uffdscope_analyzer::inputs::guest_log;
use uffdscope_analyzer::report::Report;
use uffdscope_trace::record::*;
use uffdscope_trace::{write_all, TraceMeta, TraceReader};

const T0: u64 = 1_000_000_000_000;
const MS: u64 = 1_000_000;
const PAGE: u64 = 0x7f00_0000_0000;
/// Guest realtime ms at `T0` (the metadata's realtime offset below).
const EPOCH_MS: u64 = 1_700_000_000_000;

fn meta() -> TraceMeta {
    TraceMeta {
        tool: "test".into(),
        realtime_offset_ns: (EPOCH_MS * MS) as i64 - T0 as i64,
        start_ns: T0,
        target_pid: 1,
        target_comm: "qemu".into(),
        ..TraceMeta::default()
    }
}

fn analyze_records(records: &[Record], opts: &Options) -> Report {
    let bytes = write_all(&meta(), records);
    let reader = TraceReader::with_len(&bytes[..], Some(bytes.len() as u64)).expect("header");
    analyze(reader, "hostile.trace", opts)
}

fn vcpu(tid: u32) -> Record {
    Record::Thread(ThreadInfo {
        ts: T0,
        tid,
        name: format!("CPU {}/TCG", tid - 10),
        role: Role::Vcpu,
    })
}

fn copy(tid: u32, enter_ts: u64, exit_ts: u64, start: u64, len: u64) -> Record {
    Record::UffdIoctl(UffdIoctl {
        tid,
        enter_ts,
        exit_ts,
        fd: 7,
        op: IoctlOp::Copy,
        start,
        len,
        mode: 0,
        ret: 0,
        result: len as i64,
        woken: 1,
    })
}

fn sleep(tid: u32, blocked_ts: u64, woken_ts: u64, run_ts: u64, wake_len: u64) -> Record {
    Record::Sleep(Sleep {
        tid,
        fault: Some(FaultEntry {
            ts: blocked_ts - 1_000,
            addr: PAGE,
            ip: 0,
            error_code: 6,
            source: FaultSource::User,
        }),
        blocked_ts,
        woken_ts,
        run_ts: Some(run_ts),
        resume_ts: None,
        waker_tid: 20,
        wake_op: IoctlOp::Copy,
        wake_start: PAGE,
        wake_len,
        kernel: None,
    })
}

/// A placement of 2^60 bytes, timestamps at the end of time, an ioctl that
/// exits before it enters, a thread that runs before it is woken, and tid 0:
/// each is turned away at the boundary and named in a warning, and the one
/// plausible fault still counts.
#[test]
fn impossible_records_are_ignored_and_named() {
    let records = vec![
        vcpu(10),
        copy(20, T0 + 5 * MS, T0 + 6 * MS, PAGE, 1 << 60),
        copy(20, u64::MAX - 5, u64::MAX, PAGE, 4096),
        copy(20, T0 + 9 * MS, T0 + 8 * MS, PAGE, 4096),
        sleep(10, T0 + MS, T0 + 2 * MS, T0 + MS, 4096),
        sleep(0, T0 + MS, T0 + 2 * MS, T0 + 3 * MS, 4096),
        Record::UffdRange(UffdRange {
            ts: T0,
            start: u64::MAX - 10,
            len: 4096,
            mode: 1,
        }),
        copy(20, T0 + 10 * MS, T0 + 11 * MS, PAGE, 4096),
        sleep(10, T0 + 10 * MS, T0 + 11 * MS, T0 + 12 * MS, 4096),
    ];
    let r = analyze_records(&records, &Options::default());
    let ignored: Vec<&String> = r
        .warnings
        .iter()
        .filter(|w| w.starts_with("ignored"))
        .collect();
    assert_eq!(ignored.len(), 4, "{:?}", r.warnings);
    for (n, what) in [
        (1, "timestamp"),
        (2, "interval ending before it starts"),
        (2, "byte length"),
        (1, "thread id 0"),
    ] {
        assert!(
            ignored
                .iter()
                .any(|w| w.starts_with(&format!("ignored {n} records")) && w.contains(what)),
            "{what}: {ignored:?}"
        );
    }
    assert_eq!(r.faults.count, 1);
    assert_eq!(r.trace.events, 3);
    let d = r.trace.duration_s.expect("a duration");
    assert!(d < 1.0, "the span is the plausible records': {d}");
}

/// A vCPU blocked for 100 s from `T0 + 1 s`, and the guest lines `line(i)`
/// gives as (host arrival, writer, printed ms) for `i` in `0..lines`.
fn one_long_fault(lines: u64, line: impl Fn(u64) -> (u64, String, u64)) -> Report {
    let (blocked, woken) = (T0 + 1_000 * MS, T0 + 101_000 * MS);
    let mut records = vec![vcpu(10)];
    for i in 0..lines {
        let (ts, writer, dur) = line(i);
        let epoch = EPOCH_MS + (ts - T0) / MS;
        records.push(Record::GuestLine(GuestLine {
            ts,
            text: format!("{writer}/cpu0 (1): INFO: {epoch}ms copied 1 GB in {dur}ms"),
        }));
    }
    records.push(copy(20, woken - MS, woken, PAGE, 4096));
    records.push(sleep(10, blocked, woken, woken + MS, 4096));
    analyze_records(&records, &Options::default())
}

/// One vCPU blocked for 100 s while the guest printed a line every 5 ms.
#[test]
fn many_guest_lines_inside_one_long_fault() {
    let r = one_long_fault(20_000, |i| {
        let dur = if i % 100 == 0 { 500 } else { 5 };
        (T0 + 1_000 * MS + i * 5 * MS, "stress".to_owned(), dur)
    });
    let g = r.guest.expect("a guest section");
    assert_eq!(g.samples, 20_000);
    assert_eq!(g.alignment, "host_arrival");
    assert_eq!(g.spikes.len(), 200, "every 100th line");
    // The first line's interval ends as the vCPU blocks; every other lies inside.
    let blocked = g.spikes.iter().filter(|s| s.blocked_ms > 0.0).count();
    assert_eq!(blocked, 199);
}

/// 4 000 writers (the most a log may have is 4 096) whose first lines each
/// span most of a 100 s fault: each interval's blocked time was summed bin by
/// bin (100 000 bins each; 2.1 s in a release build, 20 000 such lines 85 s).
#[test]
fn many_long_guest_intervals_over_one_long_fault() {
    let r = one_long_fault(4_000, |i| {
        (T0 + 100_000 * MS + i * MS / 4, format!("writer{i}"), 99_000)
    });
    let g = r.guest.expect("a guest section");
    assert_eq!(g.samples, 4_000);
    let spans: Vec<f64> = g.intervals.iter().map(|i| i.wall_ms).collect();
    assert!(
        spans.iter().all(|&w| (w - 99_000.0).abs() < 1.0),
        "{spans:?}"
    );
    let c = g.correlation;
    assert!(
        c.is_none(),
        "one printed value throughout: nothing to correlate, {c:?}"
    );
}

/// A guest log of 100 000 lines without host stamps, so the guest clock's
/// offset is searched: 6.2 s in a release build before (each offset placed
/// the whole log again), and a 10 M-line log never finished.
#[test]
fn a_long_guest_log_is_aligned_without_placing_it_per_offset() {
    let (blocked, woken) = (T0 + 2_000 * MS, T0 + 2_600 * MS);
    let records = vec![
        vcpu(10),
        copy(20, woken - MS, woken, PAGE, 4096),
        sleep(10, blocked, woken, woken + MS, 4096),
    ];
    // The guest clock is 1.5 s ahead; one line every 2 ms from 190 s
    // before the fault, slow while the vCPU is blocked.
    let ahead_ms = 1_500u64;
    let mut text = String::new();
    for i in 0..100_000i64 {
        let host_ms = i * 2 - 195_400;
        let dur = if (2_000..2_600).contains(&host_ms) {
            40
        } else {
            2
        };
        let epoch = (EPOCH_MS + ahead_ms) as i64 + host_ms;
        let _ = writeln!(text, "w (1): INFO: {epoch}ms copied 1 GB in {dur}ms");
    }
    let m = meta();
    let from = guest_log::keep_from_ms(m.start_ns, m.realtime_offset_ns, None);
    let log = guest_log::read(text.as_bytes(), from).expect("reading memory");
    assert_eq!(log.counts.guestperf, 100_000);
    let opts = Options {
        guest_log: Some(log),
        guest_offset_ms: None,
        ..Options::default()
    };
    let r = analyze_records(&records, &opts);
    let g = r.guest.expect("a guest section");
    assert_eq!(g.alignment, "estimated");
    let off = g.offset_ms.expect("an offset");
    assert!((off - ahead_ms as f64).abs() <= 5.0, "{off}");
    assert!(
        g.correlation.is_some_and(|c| c > 0.5),
        "{:?}",
        g.correlation
    );
}

/// `--guest-log /dev/zero` read until memory ran out; one invalid UTF-8 byte
/// rejected the whole log.
#[test]
fn endless_and_binary_guest_logs_keep_what_is_readable() {
    let zeros = std::io::Read::take(std::io::repeat(0), 1 << 30);
    let log = guest_log::read(std::io::BufReader::new(zeros), None).expect("reading zeros");
    assert!(log.is_empty());
    assert!(log.counts.stopped_at.is_some());

    let mut bytes = b"1000 5\n".to_vec();
    bytes.extend_from_slice(b"\xc3\x28 garbage\n2000 6\n");
    let log = guest_log::read(&bytes[..], None).expect("reading memory");
    assert_eq!((log.len(), log.counts.unreadable), (2, 1));
    let r = analyze_records(
        &[vcpu(10)],
        &Options {
            guest_log: Some(log),
            guest_offset_ms: None,
            ..Options::default()
        },
    );
    assert!(
        r.warnings.iter().any(|w| w.contains("not text")),
        "{:?}",
        r.warnings
    );
}

/// Guest lines with NaN, infinite or absurd numbers are counted and named,
/// never analyzed (they reached the JSON as `null` and broke the HTML plots).
#[test]
fn guest_lines_with_impossible_numbers_are_named() {
    let mut records = vec![vcpu(10)];
    for (i, text) in [
        "stress/cpu0 (1): INFO: 1700000000000ms copied 1 GB in NaNms",
        "stress/cpu0 (1): INFO: 1700000000005ms copied 1 GB in 1e308ms",
        "stress/cpu0 (1): INFO: infms copied 1 GB in 5ms",
        "stress/cpu0 (1): INFO: 1700000000010ms copied 1 GB in 5ms",
    ]
    .into_iter()
    .enumerate()
    {
        records.push(Record::GuestLine(GuestLine {
            ts: T0 + i as u64 * MS,
            text: text.to_owned(),
        }));
    }
    let r = analyze_records(&records, &Options::default());
    assert_eq!(r.guest.expect("a guest section").samples, 1);
    assert!(
        r.warnings
            .iter()
            .any(|w| w.starts_with("3 guest log lines hold impossible numbers")),
        "{:?}",
        r.warnings
    );
}
