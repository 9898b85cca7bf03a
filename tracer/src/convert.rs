//! Raw kernel events → trace records: the one place where the `events.h` ABI
//! meets the analyzer's record model.

use uffdscope_ebpf::abi::{
    self, fault_flags, fault_source, pages_truncated, placer_how, run_flags, thread_op, uffd_fd_op,
};
use uffdscope_ebpf::RawEvent;
use uffdscope_trace::record::{
    Direction, FaultEntry, FaultSource, IoctlOp, KvmAsync, KvmAsyncOp, NewUffd, Note, PageRun,
    PagesSent, PlacementBin, PlacerHow, PlacerRun, Record, Role, Sleep, SleepFlags, SleepKernel,
    SockIo, SockLen, TcpProbe, TcpRetransmit, TcpSeq, ThreadInfo, UffdIoctl, UffdMsg, UffdRead,
};

/// A raw event that cannot be turned into a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("fault_wake record with unknown fault source {0}")]
    FaultSource(u16),
    #[error("uffd_fd record with unknown op {0}")]
    UffdFdOp(u32),
    #[error("thread record with unknown op {0}")]
    ThreadOp(u32),
    #[error("sock_len record with unknown direction {0}")]
    Direction(u16),
    #[error("placer_run record with unknown how {0}")]
    PlacerHow(u32),
    #[error("kvm_async_pf record with unknown op {0}")]
    KvmAsyncOp(u32),
}

/// The records one raw event becomes (zero or one today; a `Vec` keeps the
/// door open for events that expand).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Records(pub Vec<Record>);

fn sleep(e: &abi::FaultWake) -> Result<Record, ConvertError> {
    let source = match e.fault_source {
        fault_source::NONE => None,
        fault_source::USER => Some(FaultSource::User),
        fault_source::KVM => Some(FaultSource::Kvm),
        fault_source::KERNEL => Some(FaultSource::Kernel),
        other => return Err(ConvertError::FaultSource(other)),
    };
    let never_slept = e.flags & fault_flags::WOKEN_BEFORE_BLOCK != 0 || e.blocked_ts == 0;
    Ok(Record::Sleep(Sleep {
        tid: e.hdr.tid,
        fault: source.map(|source| FaultEntry {
            ts: e.fault_ts,
            addr: e.fault_addr,
            ip: e.fault_ip,
            error_code: e.fault_error_code,
            source,
        }),
        // Woken between entry and switch-out: it never blocked, so the
        // blocked interval is empty rather than invented.
        blocked_ts: if never_slept {
            e.woken_ts
        } else {
            e.blocked_ts
        },
        woken_ts: e.woken_ts,
        run_ts: (!never_slept && e.run_ts != 0).then_some(e.run_ts),
        resume_ts: (!never_slept && e.resume_ts != 0).then_some(e.resume_ts),
        waker_tid: e.waker_tid,
        wake_op: IoctlOp::from_cmd(e.ioctl_cmd),
        wake_start: e.ioctl_start,
        wake_len: e.ioctl_len,
        kernel: Some(SleepKernel {
            flags: sleep_flags(e.flags),
            vcpu_id: (source == Some(FaultSource::Kvm)).then_some(e.vcpu_id),
            block_state: e.block_state,
        }),
    }))
}

/// The kernel's `UFS_FW_*` bits as the trace format's [`SleepFlags`] (the
/// two sets are named alike but versioned apart).
fn sleep_flags(raw: u16) -> SleepFlags {
    const MAP: [(u16, u16); 4] = [
        (
            fault_flags::WOKEN_BEFORE_BLOCK,
            SleepFlags::WOKEN_BEFORE_BLOCK,
        ),
        (fault_flags::KVM_ASYNC, SleepFlags::KVM_ASYNC),
        (
            fault_flags::WOKEN_BEFORE_SWITCH,
            SleepFlags::WOKEN_BEFORE_SWITCH,
        ),
        (fault_flags::RUN_UNSEEN, SleepFlags::RUN_UNSEEN),
    ];
    SleepFlags(
        MAP.iter()
            .filter(|(kernel, _)| raw & kernel != 0)
            .fold(0, |acc, (_, trace)| acc | trace),
    )
}

fn placer_run(e: &abi::PlacerRun) -> Result<Record, ConvertError> {
    let how = match e.how {
        placer_how::BLOCKED => PlacerHow::Blocked,
        placer_how::PREEMPTED => PlacerHow::Preempted,
        placer_how::SYSCALL => PlacerHow::Syscall,
        other => return Err(ConvertError::PlacerHow(other)),
    };
    Ok(Record::PlacerRun(PlacerRun {
        ts: e.hdr.ts,
        tid: e.hdr.tid,
        how,
        ioctl_exit_ts: e.ioctl_exit_ts,
        out_ts: (e.out_ts != 0).then_some(e.out_ts),
        ioctl_start: e.ioctl_start,
        woken: e.n_woken,
    }))
}

/// A source's send: its page runs, each header read big-endian as QEMU
/// writes it (ARCHITECTURE.md, "Both ends of the migration").
fn pages_sent(e: &abi::PagesSent) -> Record {
    let runs = e
        .valid_runs()
        .iter()
        .map(|r| PageRun {
            at: r.at,
            addr: r.addr,
            page_len: r.page_len,
            pages: u32::from(r.pages),
            header: (r.flags & run_flags::HEADER != 0).then(|| u64::from_be_bytes(r.header)),
        })
        .collect();
    Record::PagesSent(PagesSent {
        tid: e.hdr.tid,
        enter_ts: e.enter_ts,
        exit_ts: e.hdr.ts,
        fd: fd(e.fd),
        ret: e.ret,
        runs,
        truncated: e.truncated & (pages_truncated::MORE_IOV | pages_truncated::MORE_RUNS) != 0,
    })
}

/// A send or (on the source) a receive, with the payload's first bytes.
fn sock_io(e: &abi::Send, dir: Direction) -> Record {
    Record::SockIo(SockIo {
        tid: e.hdr.tid,
        enter_ts: e.enter_ts,
        exit_ts: e.hdr.ts,
        fd: fd(e.fd),
        dir,
        ret: e.ret,
        head: e.payload().to_vec(),
    })
}

fn fd(raw: u32) -> i32 {
    i32::try_from(raw).unwrap_or(-1)
}

impl TryFrom<&RawEvent> for Records {
    type Error = ConvertError;

    fn try_from(raw: &RawEvent) -> Result<Self, ConvertError> {
        let rec = match raw {
            RawEvent::FaultWake(e) => sleep(e)?,
            RawEvent::UffdRead(e) => Record::UffdRead(UffdRead {
                tid: e.hdr.tid,
                enter_ts: e.enter_ts,
                exit_ts: e.hdr.ts,
                fd: fd(e.fd),
                ret: e.ret,
                msgs: e
                    .messages()
                    .iter()
                    .map(|m| UffdMsg {
                        event: m.event,
                        flags: m.flags(),
                        address: m.address(),
                        ptid: m.ptid(),
                    })
                    .collect(),
            }),
            RawEvent::UffdIoctl(e) => Record::UffdIoctl(UffdIoctl {
                tid: e.hdr.tid,
                enter_ts: e.enter_ts,
                exit_ts: e.hdr.ts,
                fd: fd(e.fd),
                op: IoctlOp::from_cmd(e.cmd),
                start: e.start,
                len: e.len,
                mode: e.mode,
                ret: e.ret,
                result: e.result,
                woken: e.n_woken,
            }),
            RawEvent::UffdFd(e) => match e.op {
                uffd_fd_op::SYSCALL | uffd_fd_op::IOC_NEW => Record::NewUffd(NewUffd {
                    ts: e.hdr.ts,
                    tid: e.hdr.tid,
                    fd: fd(e.fd),
                }),
                uffd_fd_op::CLOSE => Record::Note(Note {
                    ts: e.hdr.ts,
                    kind: "uffd_close".into(),
                    text: format!("tid {} closed uffd fd {}", e.hdr.tid, e.fd),
                }),
                other => return Err(ConvertError::UffdFdOp(other)),
            },
            RawEvent::Send(e) => sock_io(e, Direction::Send),
            RawEvent::Recv(e) => sock_io(e, Direction::Recv),
            RawEvent::PagesSent(e) => pages_sent(e),
            RawEvent::SockLen(e) => Record::SockLen(SockLen {
                ts: e.hdr.ts,
                tid: e.hdr.tid,
                sk: e.sk,
                dir: match e.dir {
                    0 => Direction::Recv,
                    1 => Direction::Send,
                    other => return Err(ConvertError::Direction(other)),
                },
                len: i64::from(e.ret),
            }),
            RawEvent::TcpProbe(e) => Record::TcpProbe(TcpProbe {
                ts: e.hdr.ts,
                sk: e.sk,
                sport: e.sport,
                dport: e.dport,
                srtt_us: e.srtt_us,
                cwnd: e.snd_cwnd,
                seq: Some(TcpSeq {
                    snd_nxt: e.snd_nxt,
                    snd_una: e.snd_una,
                    snd_wnd: e.snd_wnd,
                }),
            }),
            RawEvent::TcpRetrans(e) => Record::TcpRetransmit(TcpRetransmit {
                ts: e.hdr.ts,
                sk: e.sk,
                sport: e.sport,
                dport: e.dport,
            }),
            RawEvent::Thread(e) => match e.op {
                thread_op::NEW | thread_op::RENAME => {
                    let name = e.comm_str();
                    Record::Thread(ThreadInfo {
                        ts: e.hdr.ts,
                        tid: e.hdr.tid,
                        role: Role::from_thread_name(&name).unwrap_or(Role::Other),
                        name,
                    })
                }
                thread_op::EXIT => Record::Note(Note {
                    ts: e.hdr.ts,
                    kind: "thread_exit".into(),
                    text: format!("tid {} ({}) exited", e.hdr.tid, e.comm_str()),
                }),
                other => return Err(ConvertError::ThreadOp(other)),
            },
            RawEvent::KvmAsyncPf(e) => Record::KvmAsync(KvmAsync {
                ts: e.hdr.ts,
                tid: e.hdr.tid,
                op: KvmAsyncOp::from_code(e.op).ok_or(ConvertError::KvmAsyncOp(e.op))?,
                token: e.token,
                gva: e.gva,
                gfn: e.gfn,
            }),
            RawEvent::PlacerRun(e) => placer_run(e)?,
        };
        Ok(Records(vec![rec]))
    }
}

/// One bin of background placements counted in the kernel; `None` for a
/// kind the kernel does not count (never written by this object).
pub fn placement_bin(key: &abi::BinKey, val: &abi::BinVal) -> Option<Record> {
    let op = IoctlOp::from_cmd(key.cmd);
    if !matches!(op, IoctlOp::Copy | IoctlOp::ZeroPage) {
        return None;
    }
    Some(Record::PlacementBin(PlacementBin {
        tid: key.tid,
        op,
        len: key.len,
        first_exit_ts: val.first_exit_ts,
        last_exit_ts: val.last_exit_ts,
        count: val.count,
        ioctl_ns: val.ioctl_ns,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wake(flags: u16, source: u16) -> abi::FaultWake {
        abi::FaultWake {
            hdr: abi::Hdr {
                kind: abi::Kind::FaultWake as u16,
                cpu: 0,
                tid: 42,
                ts: 1_000,
            },
            fault_ts: 100,
            fault_addr: 0x7f00_0000_1010,
            fault_ip: 0x5555,
            fault_error_code: 6,
            blocked_ts: 200,
            woken_ts: 900,
            run_ts: 1_000,
            ioctl_start: 0x7f00_0000_1000,
            ioctl_len: 4096,
            ioctl_cmd: abi::ioctl::COPY,
            waker_tid: 43,
            ioctl_fd: 5,
            vcpu_id: 0,
            block_state: 1,
            fault_source: source,
            flags,
            resume_ts: 1_004,
        }
    }

    #[test]
    fn fault_wake_becomes_a_sleep_with_its_entry() {
        let Records(v) =
            Records::try_from(&RawEvent::FaultWake(wake(0, fault_source::USER))).unwrap();
        let Record::Sleep(s) = &v[0] else {
            panic!("not a sleep: {v:?}")
        };
        assert_eq!(s.tid, 42);
        assert_eq!(s.fault.unwrap().ts, 100);
        assert_eq!(
            (s.blocked_ts, s.woken_ts, s.run_ts, s.resume_ts),
            (200, 900, Some(1_000), Some(1_004))
        );
        assert_eq!(s.wake_op, IoctlOp::Copy);
        let mut no_rseq = wake(0, fault_source::USER);
        no_rseq.resume_ts = 0;
        let Records(v) = Records::try_from(&RawEvent::FaultWake(no_rseq)).unwrap();
        let Record::Sleep(s) = &v[0] else {
            panic!("not a sleep: {v:?}")
        };
        assert_eq!(s.resume_ts, None, "0 is not observed");
    }

    #[test]
    fn placer_run_and_kvm_async_become_records() {
        let raw = abi::PlacerRun {
            hdr: abi::Hdr {
                kind: abi::Kind::PlacerRun as u16,
                cpu: 0,
                tid: 43,
                ts: 5_000,
            },
            ioctl_exit_ts: 1_000,
            out_ts: 1_200,
            ioctl_start: 0x7f00_0000_1000,
            how: placer_how::PREEMPTED,
            n_woken: 1,
        };
        let Records(v) = Records::try_from(&RawEvent::PlacerRun(raw)).unwrap();
        assert_eq!(
            v[0],
            Record::PlacerRun(PlacerRun {
                ts: 5_000,
                tid: 43,
                how: PlacerHow::Preempted,
                ioctl_exit_ts: 1_000,
                out_ts: Some(1_200),
                ioctl_start: 0x7f00_0000_1000,
                woken: 1,
            })
        );
        let bad = abi::PlacerRun { how: 9, ..raw };
        assert_eq!(
            Records::try_from(&RawEvent::PlacerRun(bad)),
            Err(ConvertError::PlacerHow(9))
        );
        let kvm = abi::KvmAsyncPf {
            op: abi::kvm_async_op::READY,
            token: 7,
            gva: 0x1000,
            ..abi::KvmAsyncPf::default()
        };
        let Records(v) = Records::try_from(&RawEvent::KvmAsyncPf(kvm)).unwrap();
        assert!(
            matches!(
                v[0],
                Record::KvmAsync(KvmAsync {
                    op: KvmAsyncOp::Ready,
                    token: 7,
                    ..
                })
            ),
            "{v:?}"
        );
        let bad = abi::KvmAsyncPf { op: 0, ..kvm };
        assert_eq!(
            Records::try_from(&RawEvent::KvmAsyncPf(bad)),
            Err(ConvertError::KvmAsyncOp(0))
        );
    }

    #[test]
    fn source_sends_and_receives_become_records() {
        let mut raw = abi::PagesSent {
            enter_ts: 10,
            ret: 8200,
            fd: 7,
            n_runs: 2,
            truncated: pages_truncated::MORE_RUNS,
            ..abi::PagesSent::default()
        };
        raw.hdr.ts = 20;
        raw.runs[0] = abi::PageRun {
            at: 8,
            addr: 0x7f00_0000_2000,
            header: 0x2028_u64.to_be_bytes(),
            page_len: 4096,
            pages: 2,
            flags: run_flags::HEADER,
        };
        raw.runs[1] = abi::PageRun {
            at: 9000,
            header: [0xff; 8],
            flags: 0,
            ..raw.runs[0]
        };
        // A stale run past n_runs is not read.
        raw.runs[2] = raw.runs[0];
        let Records(v) = Records::try_from(&RawEvent::PagesSent(Box::new(raw))).unwrap();
        let Record::PagesSent(p) = &v[0] else {
            panic!("not a PagesSent: {v:?}")
        };
        assert_eq!((p.enter_ts, p.exit_ts, p.fd, p.ret), (10, 20, 7, 8200));
        assert!(p.truncated);
        assert_eq!(p.runs.len(), 2);
        assert_eq!(
            p.runs[0].header,
            Some(0x2028),
            "big-endian, as QEMU writes it"
        );
        assert_eq!(p.runs[0].pages, 2);
        assert_eq!(p.runs[1].header, None, "no HEADER flag, no header");

        let mut recv = abi::Send {
            captured: 2,
            ret: 12,
            ..abi::Send::default()
        };
        recv.bytes[..2].copy_from_slice(&[0, 1]);
        let Records(v) = Records::try_from(&RawEvent::Recv(recv)).unwrap();
        let Record::SockIo(io) = &v[0] else {
            panic!("not a SockIo: {v:?}")
        };
        assert_eq!(
            (io.dir, io.head.as_slice()),
            (Direction::Recv, &[0u8, 1][..])
        );
    }

    #[test]
    fn woken_before_blocking_has_no_blocked_interval() {
        let mut e = wake(fault_flags::WOKEN_BEFORE_BLOCK, fault_source::NONE);
        e.blocked_ts = 0;
        e.run_ts = 0;
        let Records(v) = Records::try_from(&RawEvent::FaultWake(e)).unwrap();
        let Record::Sleep(s) = &v[0] else {
            panic!("not a sleep")
        };
        assert_eq!(s.fault, None);
        assert_eq!(s.blocked_ts, 900);
        assert_eq!(s.run_ts, None);
    }

    #[test]
    fn unknown_enum_values_are_errors_not_panics() {
        assert_eq!(
            Records::try_from(&RawEvent::FaultWake(wake(0, 9))),
            Err(ConvertError::FaultSource(9))
        );
        let fdrec = abi::UffdFd {
            op: 77,
            ..abi::UffdFd::default()
        };
        assert_eq!(
            Records::try_from(&RawEvent::UffdFd(fdrec)),
            Err(ConvertError::UffdFdOp(77))
        );
    }

    #[test]
    fn a_kernel_bin_becomes_a_placement_bin() {
        let key = abi::BinKey {
            bin: 7,
            len: 4096,
            tid: 42,
            cmd: IoctlOp::CMD_ZEROPAGE,
        };
        let val = abi::BinVal {
            count: 3,
            ioctl_ns: 900,
            first_exit_ts: 70_000_100,
            last_exit_ts: 79_000_000,
        };
        let Some(Record::PlacementBin(b)) = placement_bin(&key, &val) else {
            panic!("not a bin")
        };
        assert_eq!(
            (b.tid, b.op, b.len, b.count),
            (42, IoctlOp::ZeroPage, 4096, 3)
        );
        assert_eq!(
            (b.first_exit_ts, b.last_exit_ts, b.ioctl_ns),
            (70_000_100, 79_000_000, 900)
        );
        let wake = abi::BinKey {
            cmd: IoctlOp::CMD_WAKE,
            ..key
        };
        assert_eq!(placement_bin(&wake, &val), None);
    }
}
