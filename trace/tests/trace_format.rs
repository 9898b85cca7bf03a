//! Trace container tests: round trips, truncation, corruption, hostile lengths.

use proptest::prelude::*;
use uffdscope_trace::record::*;
use uffdscope_trace::{TraceError, TraceMeta, TraceReader, TraceWriter};

fn meta() -> TraceMeta {
    TraceMeta {
        tool: "test".into(),
        host: "h".into(),
        kernel: "6.18".into(),
        target_pid: 42,
        target_comm: "qemu".into(),
        ..TraceMeta::default()
    }
}

fn arb_op() -> impl Strategy<Value = IoctlOp> {
    prop_oneof![
        Just(IoctlOp::Copy),
        Just(IoctlOp::ZeroPage),
        Just(IoctlOp::Wake),
        Just(IoctlOp::Continue),
        Just(IoctlOp::Register),
        any::<u32>().prop_map(IoctlOp::from_cmd),
    ]
}

fn arb_dir() -> impl Strategy<Value = Direction> {
    prop_oneof![Just(Direction::Send), Just(Direction::Recv)]
}

fn arb_fault() -> impl Strategy<Value = FaultEntry> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(ts, addr, ip, error_code, kvm)| FaultEntry {
            ts,
            addr,
            ip,
            error_code,
            source: if kvm {
                FaultSource::Kvm
            } else {
                FaultSource::User
            },
        })
}

fn arb_record() -> impl Strategy<Value = Record> {
    let s = ".{0,40}";
    prop_oneof![
        (
            any::<u64>(),
            any::<u32>(),
            s,
            proptest::collection::vec(s, 0..4)
        )
            .prop_map(|(ts, pid, comm, cmdline)| Record::Process(ProcessInfo {
                ts,
                pid,
                comm,
                cmdline
            })),
        (any::<u64>(), any::<u32>(), s, 0u8..5).prop_map(|(ts, tid, name, r)| {
            Record::Thread(ThreadInfo {
                ts,
                tid,
                name,
                role: Role::ALL[usize::from(r)],
            })
        }),
        (
            any::<u32>(),
            proptest::option::of(arb_fault()),
            (
                any::<u64>(),
                any::<u64>(),
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u64>())
            ),
            any::<u32>(),
            arb_op(),
            any::<u64>(),
            any::<u64>(),
            prop::option::of((0u16..16, prop::option::of(any::<u32>()), any::<u32>()))
        )
            .prop_map(
                |(
                    tid,
                    fault,
                    (blocked_ts, woken_ts, run_ts, resume_ts),
                    waker_tid,
                    wake_op,
                    ws,
                    wl,
                    kernel,
                )| {
                    Record::Sleep(Sleep {
                        tid,
                        fault,
                        blocked_ts,
                        woken_ts,
                        run_ts,
                        resume_ts,
                        waker_tid,
                        wake_op,
                        wake_start: ws,
                        wake_len: wl,
                        kernel: kernel.map(|(flags, vcpu_id, block_state)| SleepKernel {
                            flags: SleepFlags(flags),
                            vcpu_id,
                            block_state,
                        }),
                    })
                }
            ),
        (
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<i32>(),
            any::<i64>(),
            proptest::collection::vec(
                (any::<u8>(), any::<u64>(), any::<u64>(), any::<u32>()),
                0..9
            )
        )
            .prop_map(|(tid, enter_ts, exit_ts, fd, ret, msgs)| {
                Record::UffdRead(UffdRead {
                    tid,
                    enter_ts,
                    exit_ts,
                    fd,
                    ret,
                    msgs: msgs
                        .into_iter()
                        .map(|(event, flags, address, ptid)| UffdMsg {
                            event,
                            flags,
                            address,
                            ptid,
                        })
                        .collect(),
                })
            }),
        (
            (any::<u32>(), any::<u64>(), any::<u64>(), any::<i32>()),
            arb_op(),
            (any::<u64>(), any::<u64>(), any::<u64>()),
            (any::<i64>(), any::<i64>(), any::<u32>())
        )
            .prop_map(
                |((tid, enter_ts, exit_ts, fd), op, (start, len, mode), (ret, result, woken))| {
                    Record::UffdIoctl(UffdIoctl {
                        tid,
                        enter_ts,
                        exit_ts,
                        fd,
                        op,
                        start,
                        len,
                        mode,
                        ret,
                        result,
                        woken,
                    })
                }
            ),
        (
            (any::<u32>(), any::<bool>(), any::<u64>()),
            (any::<u64>(), any::<u64>()),
            (any::<u64>(), any::<u64>())
        )
            .prop_map(
                |((tid, zero, len), (first_exit_ts, last_exit_ts), (count, ioctl_ns))| {
                    Record::PlacementBin(PlacementBin {
                        tid,
                        op: if zero {
                            IoctlOp::ZeroPage
                        } else {
                            IoctlOp::Copy
                        },
                        len,
                        first_exit_ts,
                        last_exit_ts,
                        count,
                        ioctl_ns,
                    })
                }
            ),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(ts, start, len, mode)| Record::UffdRange(UffdRange {
                ts,
                start,
                len,
                mode
            })
        ),
        (any::<u64>(), any::<u32>(), any::<i32>())
            .prop_map(|(ts, tid, fd)| Record::NewUffd(NewUffd { ts, tid, fd })),
        (
            (any::<u32>(), any::<u64>(), any::<u64>(), any::<i32>()),
            arb_dir(),
            any::<i64>(),
            proptest::collection::vec(any::<u8>(), 0..=64)
        )
            .prop_map(|((tid, enter_ts, exit_ts, fd), dir, ret, head)| {
                Record::SockIo(SockIo {
                    tid,
                    enter_ts,
                    exit_ts,
                    fd,
                    dir,
                    ret,
                    head,
                })
            }),
        (
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            arb_dir(),
            any::<i64>()
        )
            .prop_map(|(ts, tid, sk, dir, len)| Record::SockLen(SockLen {
                ts,
                tid,
                sk,
                dir,
                len
            })),
        (
            any::<u64>(),
            any::<i32>(),
            any::<u64>(),
            s,
            s,
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(|(ts, fd, inode, local, remote, local_port, remote_port)| {
                Record::Socket(SocketInfo {
                    ts,
                    fd,
                    inode,
                    local,
                    remote,
                    local_port,
                    remote_port,
                })
            }),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u16>(),
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            proptest::option::of((any::<u32>(), any::<u32>(), any::<u32>()))
        )
            .prop_map(
                |(ts, sk, sport, dport, srtt_us, cwnd, seq)| Record::TcpProbe(TcpProbe {
                    ts,
                    sk,
                    sport,
                    dport,
                    srtt_us,
                    cwnd,
                    seq: seq.map(|(snd_nxt, snd_una, snd_wnd)| TcpSeq {
                        snd_nxt,
                        snd_una,
                        snd_wnd
                    }),
                })
            ),
        (any::<u64>(), any::<u64>(), any::<u16>(), any::<u16>()).prop_map(
            |(ts, sk, sport, dport)| Record::TcpRetransmit(TcpRetransmit {
                ts,
                sk,
                sport,
                dport
            })
        ),
        (any::<u64>(), any::<u64>()).prop_map(|(ts, total)| Record::Drops(Drops { ts, total })),
        (any::<u64>(), any::<u32>(), s, any::<u64>()).prop_map(|(ts, tid, counter, value)| {
            Record::Perf(PerfSample {
                ts,
                tid,
                counter,
                value,
            })
        }),
        (any::<u64>(), s, s).prop_map(|(ts, kind, json)| Record::Qmp(Qmp { ts, kind, json })),
        (any::<u64>(), s).prop_map(|(ts, text)| Record::GuestLine(GuestLine { ts, text })),
        (any::<u64>(), s, s).prop_map(|(ts, kind, text)| Record::Note(Note { ts, kind, text })),
        (
            (any::<u64>(), any::<u32>(), 0u8..3, any::<u64>()),
            (
                proptest::option::of(any::<u64>()),
                any::<u64>(),
                any::<u32>()
            )
        )
            .prop_map(
                |((ts, tid, how, ioctl_exit_ts), (out_ts, ioctl_start, woken))| {
                    Record::PlacerRun(PlacerRun {
                        ts,
                        tid,
                        how: [PlacerHow::Blocked, PlacerHow::Preempted, PlacerHow::Syscall]
                            [usize::from(how)],
                        ioctl_exit_ts,
                        out_ts,
                        ioctl_start,
                        woken,
                    })
                }
            ),
        (
            any::<u64>(),
            any::<u32>(),
            0usize..4,
            any::<u64>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(ts, tid, op, token, gva, gfn)| Record::KvmAsync(KvmAsync {
                ts,
                tid,
                op: KvmAsyncOp::ALL[op],
                token,
                gva,
                gfn,
            })),
        arb_pages_sent(),
    ]
}

fn arb_pages_sent() -> impl Strategy<Value = Record> {
    let run = (
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(at, addr, page_len, pages, header)| PageRun {
            at,
            addr,
            page_len,
            pages,
            header,
        });
    (
        any::<u64>(),
        any::<u32>(),
        any::<u64>(),
        any::<i32>(),
        any::<i64>(),
        proptest::collection::vec(run, 0..=PagesSent::MAX_RUNS),
        any::<bool>(),
    )
        .prop_map(|(exit_ts, tid, enter_ts, fd, ret, runs, truncated)| {
            Record::PagesSent(PagesSent {
                tid,
                enter_ts,
                exit_ts,
                fd,
                ret,
                runs,
                truncated,
            })
        })
}

proptest! {
    #[test]
    fn records_round_trip(records in proptest::collection::vec(arb_record(), 0..200)) {
        let bytes = uffdscope_trace::write_all(&meta(), &records);
        let back = uffdscope_trace::read_all(&bytes).expect("header readable");
        prop_assert!(back.damage.is_none(), "damage: {:?}", back.damage);
        prop_assert_eq!(back.meta, meta());
        prop_assert_eq!(back.records, records);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = uffdscope_trace::read_all(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header_never_panic(
        tail in proptest::collection::vec(any::<u8>(), 0..600)
    ) {
        let mut bytes = uffdscope_trace::write_all(&meta(), &[]);
        bytes.extend_from_slice(&tail);
        let _ = uffdscope_trace::read_all(&bytes);
    }
}

fn sample_records(n: u64) -> Vec<Record> {
    (0..n)
        .map(|i| {
            Record::UffdIoctl(UffdIoctl {
                tid: 7,
                enter_ts: 1_000 + i * 100,
                exit_ts: 1_050 + i * 100,
                fd: 9,
                op: IoctlOp::Copy,
                start: 0x7f00_0000_0000 + i * 4096,
                len: 4096,
                mode: 0,
                ret: 0,
                result: 4096,
                woken: u32::from(i % 3 == 0),
            })
        })
        .collect()
}

/// Builds a trace with several small frames.
fn multi_frame_trace(frames: u64, per_frame: u64) -> (Vec<u8>, Vec<Record>) {
    let records = sample_records(frames * per_frame);
    let mut w = TraceWriter::new(Vec::new(), &meta()).unwrap();
    for chunk in records.chunks(per_frame as usize) {
        for r in chunk {
            w.push(r).unwrap();
        }
        w.flush_frame().unwrap();
    }
    (w.finish().unwrap(), records)
}

#[test]
fn truncation_at_every_offset_keeps_the_good_prefix() {
    let (bytes, records) = multi_frame_trace(4, 5);
    let mut frame_ends = Vec::new();
    {
        let mut r = TraceReader::with_len(&bytes[..], Some(bytes.len() as u64)).unwrap();
        while r.next_frame().unwrap().is_some() {
            frame_ends.push(r.offset() as usize);
        }
    }
    assert_eq!(frame_ends.len(), 4);
    for cut in 0..bytes.len() {
        match uffdscope_trace::read_all(&bytes[..cut]) {
            Err(e) => assert!(
                matches!(e, TraceError::TruncatedHeader | TraceError::BadMagic),
                "cut {cut}: header error {e}"
            ),
            Ok(all) => {
                let complete = frame_ends.iter().filter(|&&end| end <= cut).count();
                assert_eq!(all.records, records[..complete * 5], "cut {cut}");
                let at_boundary = cut == trace_header_len(&bytes) || frame_ends.contains(&cut);
                if at_boundary {
                    assert!(all.damage.is_none(), "cut {cut}: {:?}", all.damage);
                } else {
                    let err = all.damage.unwrap_or_else(|| panic!("cut {cut}: no error"));
                    assert!(
                        matches!(err, TraceError::TruncatedFrame { .. }),
                        "cut {cut}: {err}"
                    );
                }
            }
        }
    }
}

fn trace_header_len(bytes: &[u8]) -> usize {
    20 + u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize
}

#[test]
fn every_bit_flip_in_a_frame_is_detected() {
    let (bytes, records) = multi_frame_trace(2, 5);
    let header = trace_header_len(&bytes);
    for byte in header..bytes.len() {
        for bit in 0..8 {
            let mut damaged = bytes.clone();
            damaged[byte] ^= 1 << bit;
            let all = uffdscope_trace::read_all(&damaged).unwrap();
            assert!(
                all.damage.is_some(),
                "flip at byte {byte} bit {bit} not detected"
            );
            // Nothing wrong is ever returned: only a prefix of the truth.
            assert!(records.starts_with(&all.records), "byte {byte} bit {bit}");
        }
    }
}

#[test]
fn metadata_bit_flip_is_detected() {
    let bytes = uffdscope_trace::write_all(&meta(), &sample_records(3));
    let mut damaged = bytes.clone();
    damaged[22] ^= 0x10;
    assert!(matches!(
        uffdscope_trace::read_all(&damaged),
        Err(TraceError::MetaChecksum)
    ));
}

#[test]
fn huge_frame_length_is_rejected_without_allocating() {
    let mut bytes = uffdscope_trace::write_all(&meta(), &[]);
    let at = bytes.len() as u64;
    bytes.extend_from_slice(b"UFRM");
    bytes.extend_from_slice(&u32::MAX.to_le_bytes()); // payload length: 4 GiB
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    let all = uffdscope_trace::read_all(&bytes).unwrap();
    match all.damage {
        Some(TraceError::CorruptFrame { offset, detail }) => {
            assert_eq!(offset, at);
            assert!(detail.contains("limits"), "{detail}");
        }
        other => panic!("expected a corrupt-frame error, got {other:?}"),
    }
}

#[test]
fn length_field_claiming_2_pow_40_is_rejected() {
    // A record whose string claims 2^40 bytes inside an otherwise valid frame.
    let mut raw = vec![16u8, 0]; // GuestLine, ts delta 0
    uffdscope_trace::codec::put_varint(&mut raw, 1 << 40);
    let payload = zstd::bulk::compress(&raw, 3).unwrap();
    let mut bytes = uffdscope_trace::write_all(&meta(), &[]);
    bytes.extend_from_slice(b"UFRM");
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    let all = uffdscope_trace::read_all(&bytes).unwrap();
    assert!(
        matches!(all.damage, Some(TraceError::Record { .. })),
        "{:?}",
        all.damage
    );
}

#[test]
fn metadata_length_over_limit_is_rejected() {
    let mut bytes = uffdscope_trace::write_all(&meta(), &[]);
    bytes[12..16].copy_from_slice(&(1u32 << 31).to_le_bytes());
    assert!(matches!(
        uffdscope_trace::read_all(&bytes),
        Err(TraceError::MetaTooLarge { .. })
    ));
}

#[test]
fn future_version_is_a_clear_error() {
    let mut bytes = uffdscope_trace::write_all(&meta(), &[]);
    bytes[8..10].copy_from_slice(&99u16.to_le_bytes());
    let err = uffdscope_trace::read_all(&bytes).unwrap_err();
    assert!(err.to_string().contains("version 99"), "{err}");
    assert!(err.to_string().contains("newer"), "{err}");
}

#[test]
fn version_zero_is_damage_not_a_newer_format() {
    let mut bytes = uffdscope_trace::write_all(&meta(), &[]);
    bytes[8..10].copy_from_slice(&0u16.to_le_bytes());
    let err = uffdscope_trace::read_all(&bytes).unwrap_err();
    assert!(
        matches!(err, TraceError::InvalidVersion { found: 0 }),
        "{err}"
    );
    assert!(!err.to_string().contains("newer"), "{err}");
}

#[test]
fn undefined_header_flags_are_rejected() {
    let mut bytes = uffdscope_trace::write_all(&meta(), &[]);
    bytes[10..12].copy_from_slice(&0x0100u16.to_le_bytes());
    let err = uffdscope_trace::read_all(&bytes).unwrap_err();
    assert!(
        matches!(err, TraceError::UnknownHeaderFlags { flags: 0x0100, .. }),
        "{err}"
    );
}

#[test]
fn reader_sees_frames_while_the_writer_is_still_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.trace");
    let mut w = TraceWriter::create(&path, &meta()).unwrap();
    for r in sample_records(10) {
        w.push(&r).unwrap();
    }
    w.flush_frame().unwrap();
    w.push(&sample_records(1)[0]).unwrap(); // pending, not yet in a frame
    let mut reader = TraceReader::open(&path).unwrap();
    let mut n = 0;
    assert!(reader.for_each(|_| n += 1).is_none());
    assert_eq!(n, 10);
    drop(w);
}

#[test]
fn create_refuses_existing_files_and_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("exists");
    std::fs::write(&existing, b"keep me").unwrap();
    assert!(TraceWriter::create(&existing, &meta()).is_err());
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    #[cfg(unix)]
    {
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("target-does-not-exist"), &link).unwrap();
        assert!(TraceWriter::create(&link, &meta()).is_err());
        assert!(!dir.path().join("target-does-not-exist").exists());
        let fresh = dir.path().join("fresh");
        TraceWriter::create(&fresh, &meta()).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&fresh).unwrap().permissions(),
        ) & 0o777;
        assert_eq!(mode, 0o600);
    }
}

#[test]
fn a_placement_bin_of_another_ioctl_is_rejected() {
    let bin = PlacementBin {
        tid: 7,
        op: IoctlOp::Copy,
        len: 4096,
        first_exit_ts: 5,
        last_exit_ts: 9,
        count: 3,
        ioctl_ns: 1_500,
    };
    let good = uffdscope_trace::write_all(&meta(), &[Record::PlacementBin(bin)]);
    assert_eq!(
        uffdscope_trace::read_all(&good).expect("header").records,
        [Record::PlacementBin(bin)]
    );
    let wake = PlacementBin {
        op: IoctlOp::Wake,
        ..bin
    };
    let bad = uffdscope_trace::write_all(&meta(), &[Record::PlacementBin(wake)]);
    let back = uffdscope_trace::read_all(&bad).expect("header");
    assert!(back.records.is_empty());
    let damage = back.damage.expect("a bin of UFFDIO_WAKE is damage");
    assert!(
        damage.to_string().contains("placement bin ioctl command"),
        "{damage}"
    );
}
