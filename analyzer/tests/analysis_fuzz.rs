//! Property tests that reach the analysis: arbitrary records in a valid
//! (checksummed) trace go through the validation boundary, the analysis, every
//! renderer and both exports without a panic, and what comes out parses. The
//! strategies mostly draw values that relate (a few threads, a few pages, times
//! within seconds of the start, QEMU's thread names and return-path requests)
//! so faults really form, and sometimes anything at all.
//!
//! `PROPTEST_CASES` sets the number of cases (default 64, for CI); for a long
//! run: `PROPTEST_CASES=1000000 cargo test --release -p uffdscope-analyzer
//! --test analysis_fuzz`.

use hdrhistogram::serialization::interval_log::IntervalLogIterator;
use proptest::prelude::*;
use uffdscope_analyzer::analysis::{analyze, analyze_merged, Options, SourceInput};
use uffdscope_analyzer::compare;
use uffdscope_analyzer::drive::Limits as DriveLimits;
use uffdscope_analyzer::engine::both_ends::source::SourceIndex;
use uffdscope_analyzer::export::{csv, hlog, perfetto, Limits};
use uffdscope_analyzer::inputs::{guest_log, rp};
use uffdscope_analyzer::render::{self, html, markdown, text};
use uffdscope_trace::record::*;
use uffdscope_trace::{write_all, TraceMeta, TraceReader};

const T0: u64 = 1_000_000_000_000;
const BASE: u64 = 0x7f00_0000_0000;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

fn meta(start_ns: u64) -> TraceMeta {
    TraceMeta {
        tool: "fuzz".into(),
        host: "h".into(),
        kernel: "6.18".into(),
        realtime_offset_ns: 1_700_000_000_000_000_000 - T0 as i64,
        start_ns,
        target_pid: 42,
        target_comm: "qemu".into(),
        ..TraceMeta::default()
    }
}

fn ts() -> impl Strategy<Value = u64> {
    prop_oneof![
        12 => (0u64..3_000_000_000).prop_map(|d| T0 + d),
        1 => any::<u64>(),
        1 => Just(0u64),
    ]
}

fn tid() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 1u32..6, 1 => any::<u32>(), 1 => Just(0u32)]
}

fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => (0u64..32).prop_map(|p| BASE + p * 4096),
        1 => any::<u64>(),
    ]
}

fn len() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => Just(4096u64),
        2 => Just(2u64 << 20),
        1 => Just(0u64),
        1 => Just(1u64 << 60),
        1 => any::<u64>(),
    ]
}

fn op() -> impl Strategy<Value = IoctlOp> {
    prop_oneof![
        6 => Just(IoctlOp::Copy),
        2 => Just(IoctlOp::ZeroPage),
        2 => Just(IoctlOp::Wake),
        1 => Just(IoctlOp::Continue),
        1 => Just(IoctlOp::Register),
        1 => any::<u32>().prop_map(IoctlOp::from_cmd),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("CPU 0/TCG".to_owned()),
        Just("CPU 1/KVM".to_owned()),
        Just("fault-default".to_owned()),
        Just("postcopy/listen".to_owned()),
        Just("mig/dst/preempt".to_owned()),
        ".{0,20}",
    ]
}

/// A number as a guest or QMP would print it, or something impossible.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (0u32..5_000).prop_map(|v| v.to_string()),
        1 => Just("NaN".to_owned()),
        1 => Just("inf".to_owned()),
        1 => Just("1e308".to_owned()),
        1 => Just("-7".to_owned()),
        1 => any::<f64>().prop_map(|v| v.to_string()),
    ]
}

fn guest_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u32..3, 0u64..3_000, number()).prop_map(|(cpu, at, dur)| format!(
            "stress/cpu{cpu} (0042): INFO: {}ms copied 1 GB in {dur}ms",
            1_700_000_000_000 + at
        )),
        (number(), number()).prop_map(|(a, b)| format!("{a} {b}")),
        (number(), number(), number())
            .prop_map(|(e, d, c)| format!(r#"{{"epoch_ms": {e}, "dur_ms": {d}, "cpu": {c}}}"#)),
        "UFFDSCOPE-STALE.{0,10}",
        ".{0,60}",
    ]
}

fn qmp_json() -> impl Strategy<Value = String> {
    let status = prop_oneof![
        Just("postcopy-active"),
        Just("completed"),
        Just("active"),
        Just("x"),
    ];
    prop_oneof![
        (status, number(), proptest::collection::vec(number(), 0..4)).prop_map(
            |(st, bt, per)| format!(
                r#"{{"return": {{"status": "{st}", "postcopy-blocktime": {bt}, "postcopy-vcpu-blocktime": [{}]}}}}"#,
                per.join(",")
            )
        ),
        Just(r#"{"event":"MIGRATION","data":{"status":"postcopy-active"}}"#.to_owned()),
        ".{0,40}",
    ]
}

fn sock_head() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (
            proptest::option::of(Just("pc.ram")),
            0u64..(32 * 4096),
            prop_oneof![Just(4096u32), any::<u32>()]
        )
            .prop_map(|(block, start, len)| rp::encode_req_pages(block, start, len)),
        proptest::collection::vec(any::<u8>(), 0..=64),
    ]
}

fn sleep() -> impl Strategy<Value = Record> {
    (
        (tid(), tid(), op(), addr(), len()),
        proptest::option::of((ts(), addr())),
        (ts(), 0u64..50_000_000, 0u64..5_000_000, any::<bool>()),
        proptest::option::of((0u16..16, proptest::option::of(0u32..4), 0u32..3)),
    )
        .prop_map(
            |((tid, waker_tid, wake_op, wake_start, wake_len), fault, (b, w, r, run), kernel)| {
                Record::Sleep(Sleep {
                    tid,
                    fault: fault.map(|(ts, addr)| FaultEntry {
                        ts: ts.min(b),
                        addr,
                        ip: 0,
                        error_code: 6,
                        source: FaultSource::User,
                    }),
                    blocked_ts: b,
                    woken_ts: b.saturating_add(w),
                    run_ts: run.then_some(b.saturating_add(w).saturating_add(r)),
                    resume_ts: run
                        .then_some(b.saturating_add(w).saturating_add(r).saturating_add(r / 4)),
                    waker_tid,
                    wake_op,
                    wake_start,
                    wake_len,
                    kernel: kernel.map(|(flags, vcpu_id, block_state)| SleepKernel {
                        flags: SleepFlags(flags),
                        vcpu_id,
                        block_state,
                    }),
                })
            },
        )
}

/// A source's page send (format 4): runs of pages near the fuzz's RAM, with
/// QEMU's `CONTINUE|PAGE` header or anything.
fn pages_sent() -> impl Strategy<Value = Record> {
    let run = (
        0u64..1 << 20,
        addr(),
        prop_oneof![Just(4096u32), any::<u32>()],
        prop_oneof![1u32..64, any::<u32>()],
        proptest::option::of(prop_oneof![
            (0u64..32).prop_map(|p| (p * 4096) | 0x28),
            any::<u64>()
        ]),
    )
        .prop_map(|(at, addr, page_len, pages, header)| PageRun {
            at,
            addr,
            page_len,
            pages,
            header,
        });
    (
        tid(),
        ts(),
        0u64..100_000,
        prop_oneof![Just(9), any::<i32>()],
        proptest::collection::vec(run, 0..6),
        any::<bool>(),
    )
        .prop_map(|(tid, enter_ts, d, fd, runs, truncated)| {
            Record::PagesSent(PagesSent {
                tid,
                enter_ts,
                exit_ts: enter_ts.saturating_add(d),
                fd,
                ret: 4096,
                runs,
                truncated,
            })
        })
}

fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        1 => (ts(), tid(), name()).prop_map(|(ts, tid, name)| Record::Thread(ThreadInfo {
            ts,
            tid,
            role: Role::from_thread_name(&name).unwrap_or(Role::Other),
            name,
        })),
        6 => sleep(),
        4 => (tid(), ts(), 0u64..100_000, proptest::collection::vec((addr(), tid()), 0..4))
            .prop_map(|(tid, enter_ts, d, msgs)| Record::UffdRead(UffdRead {
                tid,
                enter_ts,
                exit_ts: enter_ts.saturating_add(d),
                fd: 7,
                ret: 32 * msgs.len() as i64,
                msgs: msgs
                    .into_iter()
                    .map(|(address, ptid)| UffdMsg {
                        event: UffdMsg::EVENT_PAGEFAULT,
                        flags: 0,
                        address,
                        ptid,
                    })
                    .collect(),
            })),
        6 => (tid(), ts(), prop_oneof![0u64..100_000, any::<u64>()], op(), addr(), len(), 0u32..3)
            .prop_map(|(tid, enter_ts, d, op, start, len, woken)| {
                Record::UffdIoctl(UffdIoctl {
                    tid,
                    enter_ts,
                    exit_ts: enter_ts.wrapping_add(d),
                    fd: 7,
                    op,
                    start,
                    len,
                    mode: 0,
                    ret: 0,
                    result: len as i64,
                    woken,
                })
            }),
        2 => (tid(), ts(), prop_oneof![0u64..10_000_000, any::<u64>()], any::<bool>(), len(), (prop_oneof![0u64..1000, any::<u64>()], any::<u64>()))
            .prop_map(|(tid, first_exit_ts, d, zero, len, (count, ioctl_ns))| {
                Record::PlacementBin(PlacementBin {
                    tid,
                    op: if zero { IoctlOp::ZeroPage } else { IoctlOp::Copy },
                    len,
                    first_exit_ts,
                    last_exit_ts: first_exit_ts.wrapping_add(d),
                    count,
                    ioctl_ns,
                })
            }),
        1 => (ts(), addr(), len()).prop_map(|(ts, start, len)| Record::UffdRange(UffdRange {
            ts,
            start,
            len,
            mode: 1
        })),
        3 => (tid(), ts(), 0u64..100_000, sock_head(), prop_oneof![Just(9), any::<i32>()], any::<bool>())
            .prop_map(|(tid, enter_ts, d, head, fd, recv)| Record::SockIo(SockIo {
                tid,
                enter_ts,
                exit_ts: enter_ts.saturating_add(d),
                fd,
                dir: if recv { Direction::Recv } else { Direction::Send },
                ret: head.len() as i64,
                head,
            })),
        2 => pages_sent(),
        1 => (ts(), tid(), any::<u64>(), any::<i64>()).prop_map(|(ts, tid, sk, len)| {
            Record::SockLen(SockLen {
                ts,
                tid,
                sk,
                dir: Direction::Recv,
                len,
            })
        }),
        1 => (ts(), any::<u64>(), any::<u16>(), any::<u32>()).prop_map(|(ts, sk, port, srtt_us)| {
            Record::TcpProbe(TcpProbe {
                ts,
                sk,
                sport: port,
                dport: 4444,
                srtt_us,
                cwnd: 10,
                seq: (port % 2 == 0).then_some(TcpSeq {
                    snd_nxt: srtt_us,
                    snd_una: srtt_us.wrapping_sub(u32::from(port)),
                    snd_wnd: 65536,
                }),
            })
        }),
        1 => (ts(), any::<u64>()).prop_map(|(ts, sk)| Record::TcpRetransmit(TcpRetransmit {
            ts,
            sk,
            sport: 1,
            dport: 4444
        })),
        1 => (ts(), prop_oneof![Just(9), any::<i32>()], ".{0,20}").prop_map(|(ts, fd, local)| {
            Record::Socket(SocketInfo {
                ts,
                fd,
                inode: 1,
                local,
                remote: "10.0.0.1:4444".into(),
                local_port: 1,
                remote_port: 4444,
            })
        }),
        1 => (ts(), any::<u64>()).prop_map(|(ts, total)| Record::Drops(Drops { ts, total })),
        1 => (ts(), tid(), any::<u64>()).prop_map(|(ts, tid, value)| Record::Perf(PerfSample {
            ts,
            tid,
            counter: "task_clock_ns".into(),
            value
        })),
        2 => (ts(), qmp_json()).prop_map(|(ts, json)| Record::Qmp(Qmp {
            ts,
            kind: "query-migrate".into(),
            json
        })),
        2 => (ts(), guest_text()).prop_map(|(ts, text)| Record::GuestLine(GuestLine { ts, text })),
        1 => (ts(), ".{0,20}").prop_map(|(ts, text)| Record::Note(Note {
            ts,
            kind: "end".into(),
            text
        })),
        2 => (tid(), ts(), 0u64..5_000_000, prop_oneof![Just(None), (0u64..1_000).prop_map(Some)], addr(), 0usize..3)
            .prop_map(|(tid, exit, d, out, ioctl_start, how)| Record::PlacerRun(PlacerRun {
                ts: exit.saturating_add(d),
                tid,
                how: [PlacerHow::Blocked, PlacerHow::Preempted, PlacerHow::Syscall][how],
                ioctl_exit_ts: exit,
                out_ts: out.map(|o| exit.saturating_add(o.min(d))),
                ioctl_start,
                woken: 1,
            })),
        2 => (tid(), ts(), 0usize..4, 0u64..8, addr())
            .prop_map(|(tid, ts, op, token, gva)| Record::KvmAsync(KvmAsync {
                ts,
                tid,
                op: KvmAsyncOp::ALL[op],
                token,
                gva,
                gfn: gva >> 12,
            })),
    ]
}

/// Everything a user can ask of one trace, checked for output that parses.
fn run_everything(bytes: &[u8], opts: &Options) -> Result<(), TestCaseError> {
    let reader = TraceReader::with_len(bytes, Some(bytes.len() as u64)).expect("valid header");
    let report = analyze(reader, "fuzz.trace", opts);
    for w in &report.warnings {
        prop_assert!(!w.is_empty());
    }
    let _ = text::render_text(&report);
    let _ = markdown::render_markdown(&report);
    let page = html::render_html(&report);
    prop_assert!(page.contains("</html>"));
    let json = serde_json::to_string(&report).expect("the report serializes");
    let back: serde_json::Value = serde_json::from_str(&json).expect("the JSON parses");
    prop_assert_eq!(&back["schema"], "uffdscope.report/1");

    let mut out = Vec::new();
    let mut reader = TraceReader::with_len(bytes, Some(bytes.len() as u64)).expect("valid header");
    csv::export(&mut reader, &mut out, Limits::NONE).expect("writing to memory");
    let table = String::from_utf8(out).expect("CSV is UTF-8");
    let width = csv::header().split(',').count();
    for row in table.lines() {
        prop_assert_eq!(row.split(',').count(), width, "row {}", row);
    }

    let mut out = Vec::new();
    let mut reader = TraceReader::with_len(bytes, Some(bytes.len() as u64)).expect("valid header");
    perfetto::export_json(&mut reader, &mut out, Limits::NONE).expect("writing to memory");
    let timeline: serde_json::Value =
        serde_json::from_slice(&out).expect("the Perfetto export is JSON");
    prop_assert!(timeline.is_object() || timeline.is_array());

    let mut out = Vec::new();
    let mut reader = TraceReader::with_len(bytes, Some(bytes.len() as u64)).expect("valid header");
    hlog::export(&mut reader, &mut out, hlog::DEFAULT_INTERVAL, Limits::NONE)
        .expect("writing to memory");
    for entry in IntervalLogIterator::new(&out) {
        prop_assert!(entry.is_ok(), "the interval log parses: {:?}", entry);
    }

    let runs = [
        compare::Run {
            label: "a".into(),
            report: &report,
        },
        compare::Run {
            label: "b".into(),
            report: &report,
        },
    ];
    let c = compare::compare(&runs);
    prop_assert!(
        c.changes[0].sentence.contains("nothing changed"),
        "{}",
        c.changes[0].sentence
    );
    let _ = render::compare::render_text(&c);
    let _ = render::compare::render_markdown(&c);
    serde_json::to_string(&c).expect("the comparison serializes");

    // The protobuf timeline of the same bytes is written without a panic.
    let mut reader = TraceReader::with_len(bytes, Some(bytes.len() as u64)).expect("valid header");
    perfetto::export_protobuf(&mut reader, std::io::sink(), Limits::NONE)
        .expect("writing to a sink");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_valid_traces_analyze_render_and_export(
        records in proptest::collection::vec(record(), 0..60),
        start in prop_oneof![Just(T0), Just(0u64), any::<u64>()],
        offset in proptest::option::of(-100_000.0f64..100_000.0),
    ) {
        let bytes = write_all(&meta(start), &records);
        let opts = Options { guest_log: None, guest_offset_ms: offset, ..Options::default() };
        run_everything(&bytes, &opts)?;
        // The kernel's placement filter takes any trace, and its output analyzes too.
        let (lean, _) = uffdscope_trace::lean::lean_records(&records);
        run_everything(&write_all(&meta(start), &lean), &opts)?;
    }

    #[test]
    fn arbitrary_guest_logs_correlate_with_arbitrary_traces(
        records in proptest::collection::vec(record(), 0..40),
        lines in proptest::collection::vec(guest_text(), 0..40),
        offset in proptest::option::of(-100_000.0f64..100_000.0),
    ) {
        let log = guest_log::read(lines.join("\n").as_bytes(), None).expect("reading memory");
        let bytes = write_all(&meta(T0), &records);
        let opts = Options { guest_log: Some(log), guest_offset_ms: offset, ..Options::default() };
        run_everything(&bytes, &opts)?;
    }

    /// Any destination trace, at any recording level, merged with any
    /// source trace: the merge, every renderer and the JSON never panic.
    #[test]
    fn arbitrary_pairs_merge_at_any_detail(
        dest in proptest::collection::vec(record(), 0..50),
        source in proptest::collection::vec(record(), 0..50),
        detail in prop_oneof![
            Just(None),
            Just(Some(Detail::Minimal)),
            Just(Some(Detail::Standard)),
            Just(Some(Detail::Full)),
        ],
        offset_us in proptest::option::of(-1e6f64..1e6),
    ) {
        let source_meta = TraceMeta { side: Some(Side::Source), ..meta(T0) };
        let source_bytes = write_all(&source_meta, &source);
        let index = SourceIndex::read(
            TraceReader::new(&source_bytes[..]).expect("valid header"),
            "source.trace",
            DriveLimits::NONE,
        );
        let dest_meta = TraceMeta { detail, ..meta(T0) };
        let dest_bytes = write_all(&dest_meta, &dest);
        // Without a source the destination alone, at its level, renders.
        run_everything(&dest_bytes, &Options::default())?;
        if let Ok(index) = index {
            let opts = Options {
                source: Some(SourceInput {
                    path: "source.trace".into(),
                    index: std::sync::Arc::new(index),
                    offset_us,
                }),
                ..Options::default()
            };
            let reader = TraceReader::new(&dest_bytes[..]).expect("valid header");
            let (report, _) = analyze_merged(reader, "dest.trace", &opts);
            let _ = text::render_text(&report);
            let _ = markdown::render_markdown(&report);
            prop_assert!(html::render_html(&report).contains("</html>"));
            let json = serde_json::to_string(&report).expect("the report serializes");
            let back: serde_json::Value = serde_json::from_str(&json).expect("the JSON parses");
            if let Some(bound) = back["clock"]["bound_us"].as_f64() {
                prop_assert!(bound.is_finite() && bound >= 0.0, "{}", back["clock"]);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_as_a_guest_log_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let log = guest_log::read(&bytes[..], None).expect("reading memory");
        let _ = log.counts.warnings();
    }
}

/// The strategies are worth running only if their traces reach the analysis:
/// faults form, guest lines correlate and QMP replies are read.
#[test]
fn generated_traces_reach_the_analysis() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = proptest::collection::vec(record(), 20..60);
    let (mut faults, mut guest, mut qemu, mut rejected) = (0, 0, 0, 0);
    for _ in 0..200 {
        let records = strategy.new_tree(&mut runner).expect("a value").current();
        let bytes = write_all(&meta(T0), &records);
        let reader = TraceReader::with_len(&bytes[..], None).expect("valid header");
        let r = analyze(reader, "fuzz.trace", &Options::default());
        faults += usize::from(r.faults.count > 0);
        guest += usize::from(r.guest.is_some_and(|g| g.samples > 0));
        qemu += usize::from(r.qemu.is_some_and(|q| !q.status_timeline.is_empty()));
        rejected += usize::from(r.warnings.iter().any(|w| w.starts_with("ignored")));
    }
    eprintln!("of 200 traces: {faults} with faults, {guest} with guest samples, {qemu} with QMP statuses, {rejected} with records turned away");
    assert!(faults >= 20, "{faults}");
    assert!(guest >= 20 && qemu >= 20 && rejected >= 20);
}
