//! The Rust mirror of `bpf/events.h`: record structs, kinds, flags, ioctl
//! numbers and map-key helpers. Each struct is `#[repr(C)]` and made of
//! fixed-width integers only; the offset of every field and the size of every
//! struct are asserted at compile time from the header itself
//! ([`crate::generated`]), so a drift from the C header fails the build
//! rather than misreading records.

use std::mem::size_of;

/// Maximum number of target processes (`UFS_MAX_TARGETS`).
pub const MAX_TARGETS: usize = 8;
/// `uffd_msg` captured per `read()` (`UFS_READ_MAX_MSGS`).
pub const READ_MAX_MSGS: usize = 8;
/// `sizeof(struct uffd_msg)`.
pub const UFFD_MSG_SIZE: usize = 32;
/// Payload bytes captured per send (`UFS_SEND_CAPTURE`).
pub const SEND_CAPTURE: usize = 64;
/// Length of a kernel task name.
pub const COMM_LEN: usize = 16;

/// userfaultfd ioctl numbers, as the kernel's UAPI header defines them
/// (taken from `events.h` through [`crate::generated::ioctl`]).
pub mod ioctl {
    use crate::generated::ioctl as h;

    /// `USERFAULTFD_IOC_NEW`, on `/dev/userfaultfd`; returns a new uffd.
    pub const USERFAULTFD_IOC_NEW: u32 = h::USERFAULTFD_IOC_NEW;
    /// `UFFDIO_REGISTER` {start, len, mode, ioctls(out)}.
    pub const REGISTER: u32 = h::UFFDIO_REGISTER;
    /// `UFFDIO_UNREGISTER` {start, len}.
    pub const UNREGISTER: u32 = h::UFFDIO_UNREGISTER;
    /// `UFFDIO_WAKE` {start, len}.
    pub const WAKE: u32 = h::UFFDIO_WAKE;
    /// `UFFDIO_COPY` {dst, src, len, mode, copy(out)}.
    pub const COPY: u32 = h::UFFDIO_COPY;
    /// `UFFDIO_ZEROPAGE` {start, len, mode, zeropage(out)}.
    pub const ZEROPAGE: u32 = h::UFFDIO_ZEROPAGE;
    /// `UFFDIO_MOVE` {dst, src, len, mode, move(out)}.
    pub const MOVE: u32 = h::UFFDIO_MOVE;
    /// `UFFDIO_WRITEPROTECT` {start, len, mode}.
    pub const WRITEPROTECT: u32 = h::UFFDIO_WRITEPROTECT;
    /// `UFFDIO_CONTINUE` {start, len, mode, mapped(out)}.
    pub const CONTINUE: u32 = h::UFFDIO_CONTINUE;
    /// `UFFDIO_POISON` {start, len, mode, updated(out)}.
    pub const POISON: u32 = h::UFFDIO_POISON;
    /// `UFFDIO_API` {api, features(in/out), ioctls(out)}.
    pub const API: u32 = h::UFFDIO_API;

    /// The ioctl's name, for display.
    pub fn name(cmd: u32) -> Option<&'static str> {
        Some(match cmd {
            USERFAULTFD_IOC_NEW => "USERFAULTFD_IOC_NEW",
            REGISTER => "UFFDIO_REGISTER",
            UNREGISTER => "UFFDIO_UNREGISTER",
            WAKE => "UFFDIO_WAKE",
            COPY => "UFFDIO_COPY",
            ZEROPAGE => "UFFDIO_ZEROPAGE",
            MOVE => "UFFDIO_MOVE",
            WRITEPROTECT => "UFFDIO_WRITEPROTECT",
            CONTINUE => "UFFDIO_CONTINUE",
            POISON => "UFFDIO_POISON",
            API => "UFFDIO_API",
            _ => return None,
        })
    }
}

/// `uffd_msg.event` values.
pub mod uffd_event {
    /// `UFFD_EVENT_PAGEFAULT`.
    pub const PAGEFAULT: u8 = 0x12;
    /// `UFFD_EVENT_FORK`.
    pub const FORK: u8 = 0x13;
    /// `UFFD_EVENT_REMAP`.
    pub const REMAP: u8 = 0x14;
    /// `UFFD_EVENT_REMOVE`.
    pub const REMOVE: u8 = 0x15;
    /// `UFFD_EVENT_UNMAP`.
    pub const UNMAP: u8 = 0x16;
    /// Pagefault flag: write access.
    pub const FLAG_WRITE: u64 = 1;
    /// Pagefault flag: write-protect fault.
    pub const FLAG_WP: u64 = 2;
    /// Pagefault flag: minor fault.
    pub const FLAG_MINOR: u64 = 4;
}

/// `enum ufs_event_kind`: the `kind` of a record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum Kind {
    /// [`FaultWake`].
    FaultWake = 1,
    /// [`UffdRead`].
    UffdRead = 2,
    /// [`UffdIoctl`].
    UffdIoctl = 3,
    /// [`UffdFd`].
    UffdFd = 4,
    /// [`Send`].
    Send = 5,
    /// [`SockLen`].
    SockLen = 6,
    /// [`TcpProbe`].
    TcpProbe = 7,
    /// [`TcpRetrans`].
    TcpRetrans = 8,
    /// [`Thread`].
    Thread = 9,
    /// [`KvmAsyncPf`].
    KvmAsyncPf = 10,
    /// [`PlacerRun`].
    PlacerRun = 11,
    /// A receive on a source's socket, as a [`Send`] (see [`recv_syscall`]).
    Recv = 12,
    /// [`PagesSent`].
    PagesSent = 13,
}

impl Kind {
    /// Every kind, in numeric order.
    pub const ALL: [Kind; 13] = [
        Kind::FaultWake,
        Kind::UffdRead,
        Kind::UffdIoctl,
        Kind::UffdFd,
        Kind::Send,
        Kind::SockLen,
        Kind::TcpProbe,
        Kind::TcpRetrans,
        Kind::Thread,
        Kind::KvmAsyncPf,
        Kind::PlacerRun,
        Kind::Recv,
        Kind::PagesSent,
    ];
    /// Entries of the `ufs_drops` map (`UFS_EV_KIND_COUNT`), indexed by kind.
    pub const COUNT: u32 = 14;

    /// The kind for a header value, or `None` when this build does not know it.
    pub fn from_raw(raw: u16) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u16 == raw)
    }

    /// Size in bytes of this kind's record.
    pub const fn record_size(self) -> usize {
        match self {
            Kind::FaultWake => size_of::<FaultWake>(),
            Kind::UffdRead => size_of::<UffdRead>(),
            Kind::UffdIoctl => size_of::<UffdIoctl>(),
            Kind::UffdFd => size_of::<UffdFd>(),
            Kind::Send | Kind::Recv => size_of::<Send>(),
            Kind::SockLen => size_of::<SockLen>(),
            Kind::TcpProbe => size_of::<TcpProbe>(),
            Kind::TcpRetrans => size_of::<TcpRetrans>(),
            Kind::Thread => size_of::<Thread>(),
            Kind::KvmAsyncPf => size_of::<KvmAsyncPf>(),
            Kind::PlacerRun => size_of::<PlacerRun>(),
            Kind::PagesSent => size_of::<PagesSent>(),
        }
    }

    /// Short lowercase name, for reports and errors.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::FaultWake => "fault_wake",
            Kind::UffdRead => "uffd_read",
            Kind::UffdIoctl => "uffd_ioctl",
            Kind::UffdFd => "uffd_fd",
            Kind::Send => "send",
            Kind::SockLen => "sock_len",
            Kind::TcpProbe => "tcp_probe",
            Kind::TcpRetrans => "tcp_retrans",
            Kind::Thread => "thread",
            Kind::KvmAsyncPf => "kvm_async_pf",
            Kind::PlacerRun => "placer_run",
            Kind::Recv => "recv",
            Kind::PagesSent => "pages_sent",
        }
    }
}

/// `enum ufs_stat`: indices of the per-CPU `ufs_stats` counters.
pub mod stat {
    /// `read()` on a uffd fd returned `-EAGAIN` (counted, not emitted).
    pub const READ_EAGAIN: u32 = 0;
    /// A per-thread or per-fd hash map update failed (map full).
    pub const MAP_FULL: u32 = 1;
    /// `sock_*_length` returned `-EAGAIN` (counted, not emitted).
    pub const SOCK_EAGAIN: u32 = 2;
    /// Tracked sleeps that ended without a wake from a uffd ioctl.
    pub const SLEEP_OTHER: u32 = 3;
    /// Tracked sleeps whose switch-in was never traced (the thread was seen
    /// running again later); those ended by a uffd ioctl are emitted with
    /// [`fault_flags::RUN_UNSEEN`].
    pub const RUN_UNSEEN: u32 = 4;
    /// Wakes by an interrupt that arrived while a target thread was inside a
    /// uffd ioctl (told apart by the kernel stack they run on): not faults,
    /// counted and not emitted.
    pub const WAKE_IN_INTERRUPT: u32 = 5;
    /// Wakes by a uffd ioctl of a thread whose pending fault was not in the
    /// ioctl's range (an mmap_lock or page-lock waiter): not faults.
    pub const WAKE_OUT_OF_RANGE: u32 = 6;
    /// Entries of the `ufs_stats` map.
    pub const COUNT: u32 = 8;
}

/// `ufs_fault_wake.fault_source` values.
pub mod fault_source {
    /// No fault entry was pending when the thread blocked.
    pub const NONE: u16 = 0;
    /// `exceptions:page_fault_user`: address is a host virtual address.
    pub const USER: u16 = 1;
    /// `kvm:kvm_page_fault`: address is a guest physical address, ip the guest rip.
    pub const KVM: u16 = 2;
    /// `exceptions:page_fault_kernel`: a kernel-mode access to a host virtual
    /// address (`copy_to_user` into guest RAM); ip is a kernel address.
    pub const KERNEL: u16 = 3;
}

/// `ufs_fault_wake.flags` bits.
pub mod fault_flags {
    /// Woken between fault entry and switch-out: `blocked_ts` and `run_ts` are 0.
    pub const WOKEN_BEFORE_BLOCK: u16 = 0x1;
    /// `kvm_try_async_get_page` followed the KVM fault entry.
    pub const KVM_ASYNC: u16 = 0x2;
    /// Woken while switching out to sleep (the wake raced the switch):
    /// `woken_ts <= blocked_ts <= run_ts`.
    pub const WOKEN_BEFORE_SWITCH: u16 = 0x4;
    /// The switch-in was never traced. `run_ts` is then the first traced
    /// moment the thread ran after the wake, an upper bound on the switch-in:
    /// its return to user or guest mode (`rseq:rseq_update`, a few µs after
    /// the switch-in), else its next switch-out, fault or exit. The other
    /// times hold.
    pub const RUN_UNSEEN: u16 = 0x8;
}

/// `ufs_uffd_fd.op` values.
pub mod uffd_fd_op {
    /// Returned by `userfaultfd(2)`.
    pub const SYSCALL: u32 = 1;
    /// Returned by `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd`.
    pub const IOC_NEW: u32 = 2;
    /// A known uffd fd was closed.
    pub const CLOSE: u32 = 3;
}

/// `ufs_send.syscall` values.
pub mod send_syscall {
    /// `sendmsg(2)`.
    pub const SENDMSG: u16 = 1;
    /// `sendto(2)` (and `send(3)`).
    pub const SENDTO: u16 = 2;
    /// `write(2)`.
    pub const WRITE: u16 = 3;
    /// `writev(2)`.
    pub const WRITEV: u16 = 4;
}

/// `ufs_send.syscall` values of a [`Kind::Recv`] record (the source's
/// receives).
pub mod recv_syscall {
    /// `recvmsg(2)`.
    pub const RECVMSG: u16 = 5;
    /// `recvfrom(2)` (and `recv(3)`).
    pub const RECVFROM: u16 = 6;
    /// `read(2)`.
    pub const READ: u16 = 7;
    /// `readv(2)`.
    pub const READV: u16 = 8;
}

/// `ufs_page_run.flags` bits.
pub mod run_flags {
    /// `header` holds the 8 stream bytes before the run's first page.
    pub const HEADER: u16 = 0x1;
}

/// `ufs_pages_sent.truncated` bits.
pub mod pages_truncated {
    /// More iovecs than the kernel walks, or the array was unreadable.
    pub const MORE_IOV: u16 = 0x1;
    /// More runs than a record keeps.
    pub const MORE_RUNS: u16 = 0x2;
}

/// `ufs_thread.op` values.
pub mod thread_op {
    /// A thread was created (`task_newtask` with `CLONE_THREAD`).
    pub const NEW: u32 = 1;
    /// A thread was renamed (`task_rename`).
    pub const RENAME: u32 = 2;
    /// A thread exited (`sched_process_exit`); flags = `group_dead`.
    pub const EXIT: u32 = 3;
}

/// `ufs_kvm_async_pf.op` values.
pub mod kvm_async_op {
    /// `kvm_try_async_get_page` (gva, gfn).
    pub const TRY_ASYNC_GET_PAGE: u32 = 1;
    /// `kvm_async_pf_not_present` (token, gva).
    pub const NOT_PRESENT: u32 = 2;
    /// `kvm_async_pf_ready` (token, gva).
    pub const READY: u32 = 3;
    /// `kvm_async_pf_repeated_fault` (gva, gfn).
    pub const REPEATED_FAULT: u32 = 4;
}

/// `ufs_placer_run.how` values: what the placing thread did first after a
/// uffd ioctl that woke someone.
pub mod placer_how {
    /// Switched out in a sleeping state; `hdr.ts` is that switch-out.
    pub const BLOCKED: u32 = 1;
    /// Preempted; `hdr.ts` is its return to user mode (`rseq:rseq_update`),
    /// or its next switch-out or traced syscall when that was not seen.
    pub const PREEMPTED: u32 = 2;
    /// Entered a traced syscall without leaving the CPU; `hdr.ts` is that entry.
    pub const SYSCALL: u32 = 3;
}

/// Key of the `ufs_uffd_fds` and `ufs_sock_fds` maps (`UFS_FD_KEY`).
pub const fn fd_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

/// `struct ufs_hdr`: common header of every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Hdr {
    /// `enum ufs_event_kind`.
    pub kind: u16,
    /// CPU the record was emitted on.
    pub cpu: u16,
    /// Thread the record is about (see each record).
    pub tid: u32,
    /// Emission time, CLOCK_MONOTONIC ns.
    pub ts: u64,
}

/// `struct ufs_fault_wake`: a uffd-resolved block of one thread, joined in
/// the kernel. `hdr.tid` is the woken thread. Normally
/// `fault_ts <= blocked_ts <= woken_ts <= run_ts`; [`fault_flags`] marks the
/// two orders a racing wake produces. `WOKEN_BEFORE_BLOCK` and `RUN_UNSEEN`
/// records are emitted late (at the thread's next fault or switch-out), so
/// records are not sorted by `woken_ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct FaultWake {
    /// Header; `ts` = `run_ts`, or `woken_ts` when `run_ts` is 0.
    pub hdr: Hdr,
    /// Fault entry time; 0 when `fault_source` is NONE.
    pub fault_ts: u64,
    /// Host VA (user) or guest physical address (KVM).
    pub fault_addr: u64,
    /// User ip, or guest rip (KVM).
    pub fault_ip: u64,
    /// Page-fault error code.
    pub fault_error_code: u64,
    /// Switch-out time; 0 with `WOKEN_BEFORE_BLOCK`.
    pub blocked_ts: u64,
    /// `sched_waking` time, from inside the uffd ioctl.
    pub woken_ts: u64,
    /// Switch-in time; 0 with `WOKEN_BEFORE_BLOCK`; see `RUN_UNSEEN`.
    pub run_ts: u64,
    /// dst/start of the waking ioctl.
    pub ioctl_start: u64,
    /// len of the waking ioctl.
    pub ioctl_len: u64,
    /// cmd of the waking ioctl.
    pub ioctl_cmd: u32,
    /// Thread that issued the waking ioctl.
    pub waker_tid: u32,
    /// uffd fd of the waking ioctl.
    pub ioctl_fd: u32,
    /// vCPU id (KVM only).
    pub vcpu_id: u32,
    /// `prev_state & 0xff` at switch-out (1 = S, 2 = D).
    pub block_state: u32,
    /// [`fault_source`] value.
    pub fault_source: u16,
    /// [`fault_flags`] bits.
    pub flags: u16,
    /// First return to user or guest mode after `run_ts` (`rseq:rseq_update`);
    /// 0 when not seen (no rseq area, or the thread blocked again first).
    pub resume_ts: u64,
}

/// `struct ufs_uffd_msg`: a `struct uffd_msg` verbatim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct UffdMsg {
    /// [`uffd_event`] value.
    pub event: u8,
    /// Reserved by the kernel.
    pub reserved1: u8,
    /// Reserved by the kernel.
    pub reserved2: u16,
    /// Reserved by the kernel.
    pub reserved3: u32,
    /// PAGEFAULT: flags; FORK: new uffd; REMAP: from; REMOVE/UNMAP: start.
    pub arg0: u64,
    /// PAGEFAULT: address; REMAP: to; REMOVE/UNMAP: end.
    pub arg1: u64,
    /// PAGEFAULT: ptid in the low 32 bits; REMAP: len.
    pub arg2: u64,
}

impl UffdMsg {
    /// True for `UFFD_EVENT_PAGEFAULT`.
    pub fn is_pagefault(&self) -> bool {
        self.event == uffd_event::PAGEFAULT
    }
    /// Pagefault flags ([`uffd_event::FLAG_WRITE`], ...).
    pub fn flags(&self) -> u64 {
        self.arg0
    }
    /// Faulting address of a pagefault message.
    pub fn address(&self) -> u64 {
        self.arg1
    }
    /// Faulting thread id (needs `UFFD_FEATURE_THREAD_ID`; 0 otherwise).
    pub fn ptid(&self) -> u32 {
        self.arg2 as u32
    }
}

/// `struct ufs_uffd_read`: a `read()` on a uffd fd. `hdr.tid` is the reader,
/// `hdr.ts` the exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct UffdRead {
    /// Header.
    pub hdr: Hdr,
    /// `sys_enter_read` time.
    pub enter_ts: u64,
    /// Return value (bytes or -errno).
    pub ret: i64,
    /// The uffd fd.
    pub fd: u32,
    /// Messages returned (`ret / 32`), possibly more than were captured.
    pub n_msgs: u32,
    /// The first [`READ_MAX_MSGS`] messages.
    pub msgs: [UffdMsg; READ_MAX_MSGS],
}

impl UffdRead {
    /// The captured messages.
    pub fn messages(&self) -> &[UffdMsg] {
        let n = (self.n_msgs as usize).min(READ_MAX_MSGS);
        &self.msgs[..n]
    }
}

/// `struct ufs_uffd_ioctl`: one ioctl on a uffd fd. `hdr.tid` is the caller,
/// `hdr.ts` the exit. See events.h for the meaning of each field per `cmd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct UffdIoctl {
    /// Header.
    pub hdr: Hdr,
    /// `sys_enter_ioctl` time.
    pub enter_ts: u64,
    /// Return value.
    pub ret: i64,
    /// dst / start / api.
    pub start: u64,
    /// COPY/MOVE src; API: features asked.
    pub src: u64,
    /// Length.
    pub len: u64,
    /// Mode.
    pub mode: u64,
    /// copy/zeropage/mapped/move/updated; REGISTER: ioctls; API: features granted.
    pub result: i64,
    /// [`ioctl`] number.
    pub cmd: u32,
    /// The uffd fd.
    pub fd: u32,
    /// Tracked threads whose uffd sleep this ioctl ended.
    pub n_woken: u32,
    /// Every `sched_waking` done while inside.
    pub n_wakeups: u32,
}

/// `struct ufs_uffd_fd`: a uffd fd appeared or was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct UffdFd {
    /// Header; `tid` is the caller.
    pub hdr: Hdr,
    /// The fd.
    pub fd: u32,
    /// Process owning the fd.
    pub tgid: u32,
    /// [`uffd_fd_op`] value.
    pub op: u32,
    /// Padding.
    pub pad: u32,
}

/// `struct ufs_send`: a send on a target's socket fd. `hdr.tid` is the
/// caller, `hdr.ts` the exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Send {
    /// Header.
    pub hdr: Hdr,
    /// `sys_enter_*` time.
    pub enter_ts: u64,
    /// Return value.
    pub ret: i64,
    /// count/len, or the sum of the first 4 iovec lengths.
    pub req_len: u64,
    /// The socket fd.
    pub fd: u32,
    /// iovec count (sendmsg, writev), else 0.
    pub iovcnt: u32,
    /// [`send_syscall`] value.
    pub syscall: u16,
    /// Valid bytes in `bytes`.
    pub captured: u16,
    /// Padding.
    pub pad: u32,
    /// Start of the payload.
    pub bytes: [u8; SEND_CAPTURE],
}

impl Send {
    /// The captured payload prefix.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[..(self.captured as usize).min(SEND_CAPTURE)]
    }
}

impl Default for Send {
    fn default() -> Self {
        Send {
            hdr: Hdr::default(),
            enter_ts: 0,
            ret: 0,
            req_len: 0,
            fd: 0,
            iovcnt: 0,
            syscall: 0,
            captured: 0,
            pad: 0,
            bytes: [0; SEND_CAPTURE],
        }
    }
}

/// `struct ufs_sock_len`: `sock_recv_length` / `sock_send_length` in a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct SockLen {
    /// Header; `tid` is the caller.
    pub hdr: Hdr,
    /// `struct sock` address.
    pub sk: u64,
    /// Bytes, or -errno.
    pub ret: i32,
    /// MSG_* flags.
    pub flags: i32,
    /// Address family.
    pub family: u16,
    /// Protocol.
    pub protocol: u16,
    /// 0 = recv, 1 = send.
    pub dir: u16,
    /// Padding.
    pub pad: u16,
}

/// `struct ufs_tcp_probe`: `tcp:tcp_probe` on a socket a target used.
/// `hdr.tid` is whatever thread was current (often softirq).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct TcpProbe {
    /// Header.
    pub hdr: Hdr,
    /// `struct sock` address.
    pub sk: u64,
    /// Socket cookie.
    pub sock_cookie: u64,
    /// Local port.
    pub sport: u16,
    /// Remote port.
    pub dport: u16,
    /// Address family.
    pub family: u16,
    /// Segment data length.
    pub data_len: u16,
    /// snd_nxt.
    pub snd_nxt: u32,
    /// snd_una.
    pub snd_una: u32,
    /// Congestion window (segments).
    pub snd_cwnd: u32,
    /// Slow-start threshold.
    pub ssthresh: u32,
    /// Send window.
    pub snd_wnd: u32,
    /// Smoothed RTT, µs.
    pub srtt_us: u32,
    /// Receive window.
    pub rcv_wnd: u32,
    /// Padding.
    pub pad: u32,
}

/// `struct ufs_tcp_retrans`: `tcp:tcp_retransmit_skb` on a socket a target used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct TcpRetrans {
    /// Header.
    pub hdr: Hdr,
    /// `struct sock` address.
    pub sk: u64,
    /// Local port.
    pub sport: u16,
    /// Remote port.
    pub dport: u16,
    /// Address family.
    pub family: u16,
    /// Padding.
    pub pad: u16,
    /// TCP state.
    pub state: i32,
    /// Error of the retransmission.
    pub err: i32,
}

/// `struct ufs_thread`: thread lifecycle of a target. `hdr.tid` is the
/// thread concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Thread {
    /// Header.
    pub hdr: Hdr,
    /// Process.
    pub tgid: u32,
    /// [`thread_op`] value.
    pub op: u32,
    /// Thread that created or renamed it (itself for EXIT).
    pub actor_tid: u32,
    /// NEW: low clone flags; EXIT: group_dead.
    pub flags: u32,
    /// Name, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

impl Thread {
    /// The name up to its first NUL, lossily decoded.
    pub fn comm_str(&self) -> String {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        String::from_utf8_lossy(&self.comm[..end]).into_owned()
    }
}

/// `struct ufs_kvm_async_pf`: a KVM async page-fault step of a target vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct KvmAsyncPf {
    /// Header.
    pub hdr: Hdr,
    /// [`kvm_async_op`] value.
    pub op: u32,
    /// Padding.
    pub pad: u32,
    /// Async PF token.
    pub token: u64,
    /// Guest virtual address.
    pub gva: u64,
    /// Guest frame number.
    pub gfn: u64,
}

/// `struct ufs_placer_run`: the placing thread's first moment after a uffd
/// ioctl that woke at least one tracked thread. `hdr.tid` is the placing
/// thread, `hdr.ts` that moment (see [`placer_how`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct PlacerRun {
    /// Header.
    pub hdr: Hdr,
    /// Exit of the waking ioctl.
    pub ioctl_exit_ts: u64,
    /// `PREEMPTED`: the switch-out; else 0.
    pub out_ts: u64,
    /// dst/start of the waking ioctl.
    pub ioctl_start: u64,
    /// [`placer_how`] value.
    pub how: u32,
    /// Tracked threads the ioctl woke.
    pub n_woken: u32,
}

/// `struct ufs_bin_key`: key of the `ufs_bins` map, background placements
/// counted in the kernel per thread, kind, length and 10 ms bin of ioctl exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
#[repr(C)]
pub struct BinKey {
    /// Ioctl exit ns / `UFS_BIN_NS`.
    pub bin: u64,
    /// Each placement's length.
    pub len: u64,
    /// The placing thread.
    pub tid: u32,
    /// [`ioctl::COPY`] or [`ioctl::ZEROPAGE`].
    pub cmd: u32,
}

/// `struct ufs_bin_val`: one bin's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct BinVal {
    /// Placements counted.
    pub count: u64,
    /// Their summed entry-to-exit time, ns.
    pub ioctl_ns: u64,
    pub first_exit_ts: u64,
    pub last_exit_ts: u64,
}

/// Page runs one [`PagesSent`] keeps (`UFS_SRC_MAX_RUNS`).
pub const SRC_MAX_RUNS: usize = 32;

/// `struct ufs_page_run`: contiguous page-sized iovecs of one send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct PageRun {
    /// Payload offset of the first page.
    pub at: u64,
    /// The sender's address of the first page.
    pub addr: u64,
    /// The stream's 8 bytes before the first page, as sent (valid with
    /// [`run_flags::HEADER`]).
    pub header: [u8; 8],
    /// Length of each entry.
    pub page_len: u32,
    /// Entries.
    pub pages: u16,
    /// [`run_flags`] bits.
    pub flags: u16,
}

/// `struct ufs_pages_sent`: a send on a source target's socket, with the
/// page runs among its iovecs. `hdr.tid` is the caller, `hdr.ts` the exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct PagesSent {
    /// Header.
    pub hdr: Hdr,
    /// `sys_enter_*` time.
    pub enter_ts: u64,
    /// Return value.
    pub ret: i64,
    /// The socket fd.
    pub fd: u32,
    /// iovec count (sendmsg, writev), else 0.
    pub iovcnt: u32,
    /// [`send_syscall`] value.
    pub syscall: u16,
    /// Valid entries of `runs`.
    pub n_runs: u16,
    /// [`pages_truncated`] bits.
    pub truncated: u16,
    /// Padding.
    pub pad: u16,
    /// The runs, in iovec order.
    pub runs: [PageRun; SRC_MAX_RUNS],
}

impl PagesSent {
    /// The valid runs.
    pub fn valid_runs(&self) -> &[PageRun] {
        &self.runs[..usize::from(self.n_runs).min(SRC_MAX_RUNS)]
    }
}

impl Default for PagesSent {
    fn default() -> Self {
        PagesSent {
            hdr: Hdr::default(),
            enter_ts: 0,
            ret: 0,
            fd: 0,
            iovcnt: 0,
            syscall: 0,
            n_runs: 0,
            truncated: 0,
            pad: 0,
            runs: [PageRun::default(); SRC_MAX_RUNS],
        }
    }
}
