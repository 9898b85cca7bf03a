//! The trace record model: every fact the tracer writes and the analyzer reads.
//!
//! All timestamps are `CLOCK_MONOTONIC` nanoseconds on the recording host; the
//! trace metadata carries the offset to `CLOCK_REALTIME`. Records are plain data:
//! interpretation lives in the analyzer crate.

use serde::Serialize;

/// Thread roles, by name (QEMU with `debug-threads=on`) or by behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A guest vCPU (or an emulator's vCPU thread): it faults and blocks.
    Vcpu,
    /// The thread that reads uffd messages and sends page requests.
    Fault,
    /// The thread that receives the main stream and places pages.
    Listen,
    /// The postcopy-preempt channel's placing thread.
    Preempt,
    /// Anything else.
    Other,
    /// The source's migration thread: it sends the page stream (QEMU 7.2
    /// `live_migration`, 8+ `mig/src/main`). Format 4.
    MigSource,
    /// The source's return-path thread: it receives the destination's page
    /// requests (QEMU 7.2 `return path`, 8.x `mig/src/rp-thr`, 9.1+
    /// `mig/src/return`). Format 4.
    ReturnPath,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Vcpu,
        Role::Fault,
        Role::Listen,
        Role::Preempt,
        Role::Other,
        Role::MigSource,
        Role::ReturnPath,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Vcpu => "vcpu",
            Role::Fault => "fault",
            Role::Listen => "listen",
            Role::Preempt => "preempt",
            Role::Other => "other",
            Role::MigSource => "mig_source",
            Role::ReturnPath => "return_path",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Role::Vcpu => 0,
            Role::Fault => 1,
            Role::Listen => 2,
            Role::Preempt => 3,
            Role::Other => 4,
            Role::MigSource => 5,
            Role::ReturnPath => 6,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Role> {
        Role::ALL.get(usize::from(code)).copied()
    }

    /// Role from a thread name, covering QEMU 7.2 and 8+ names, the emulator's
    /// names and the source side. `None` when the name says nothing.
    pub fn from_thread_name(name: &str) -> Option<Role> {
        let name = name.trim();
        if name.starts_with("CPU ") && name.contains('/') {
            return Some(Role::Vcpu);
        }
        match name {
            "fault-default" | "mig/dst/fault" => Some(Role::Fault),
            "postcopy/listen" | "mig/dst/listen" => Some(Role::Listen),
            // QEMU 7.2-8.x name the preempt channel's placing thread "fault-fast"
            // (it is the fast listen thread, not a fault thread).
            "mig/dst/preempt" | "postcopy/preempt" | "fault-fast" => Some(Role::Preempt),
            // The source: `migration_thread` and `source_return_path_thread`
            // of QEMU's migration/migration.c, named as 7.2, 8.x and 9.1+ do.
            "live_migration" | "mig/src/main" => Some(Role::MigSource),
            "return path" | "mig/src/rp-thr" | "mig/src/return" => Some(Role::ReturnPath),
            _ => None,
        }
    }
}

/// Where a fault entry was observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultSource {
    /// `exceptions:page_fault_user`: a host-virtual address (TCG, emulator, any process).
    User,
    /// `kvm:kvm_page_fault`: a guest-physical address of a KVM vCPU.
    Kvm,
    /// `exceptions:page_fault_kernel`: a host-virtual address the kernel
    /// touched on the thread's behalf (`copy_to_user` into guest RAM).
    Kernel,
}

impl FaultSource {
    /// Whether the entry's address is a host-virtual one, comparable with
    /// placement ranges (a KVM entry's is guest-physical).
    pub fn is_host_address(self) -> bool {
        self != FaultSource::Kvm
    }
}

/// The access that started a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FaultEntry {
    pub ts: u64,
    pub addr: u64,
    pub ip: u64,
    pub error_code: u64,
    pub source: FaultSource,
}

/// The uffd ioctl kinds uffdscope decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IoctlOp {
    Copy,
    ZeroPage,
    Wake,
    Continue,
    Register,
    Unregister,
    Api,
    WriteProtect,
    /// Any other command number on a uffd fd.
    Other(u32),
}

impl IoctlOp {
    pub const CMD_API: u32 = 0xc018_aa3f;
    pub const CMD_REGISTER: u32 = 0xc020_aa00;
    pub const CMD_UNREGISTER: u32 = 0x8010_aa01;
    pub const CMD_WAKE: u32 = 0x8010_aa02;
    pub const CMD_COPY: u32 = 0xc028_aa03;
    pub const CMD_ZEROPAGE: u32 = 0xc020_aa04;
    pub const CMD_WRITEPROTECT: u32 = 0xc018_aa06;
    pub const CMD_CONTINUE: u32 = 0xc020_aa07;
    /// `USERFAULTFD_IOC_NEW`, on `/dev/userfaultfd` rather than a uffd.
    pub const CMD_USERFAULTFD_IOC_NEW: u32 = 0x0000_aa00;

    pub fn from_cmd(cmd: u32) -> IoctlOp {
        match cmd {
            Self::CMD_COPY => IoctlOp::Copy,
            Self::CMD_ZEROPAGE => IoctlOp::ZeroPage,
            Self::CMD_WAKE => IoctlOp::Wake,
            Self::CMD_CONTINUE => IoctlOp::Continue,
            Self::CMD_REGISTER => IoctlOp::Register,
            Self::CMD_UNREGISTER => IoctlOp::Unregister,
            Self::CMD_API => IoctlOp::Api,
            Self::CMD_WRITEPROTECT => IoctlOp::WriteProtect,
            other => IoctlOp::Other(other),
        }
    }

    pub fn cmd(self) -> u32 {
        match self {
            IoctlOp::Copy => Self::CMD_COPY,
            IoctlOp::ZeroPage => Self::CMD_ZEROPAGE,
            IoctlOp::Wake => Self::CMD_WAKE,
            IoctlOp::Continue => Self::CMD_CONTINUE,
            IoctlOp::Register => Self::CMD_REGISTER,
            IoctlOp::Unregister => Self::CMD_UNREGISTER,
            IoctlOp::Api => Self::CMD_API,
            IoctlOp::WriteProtect => Self::CMD_WRITEPROTECT,
            IoctlOp::Other(cmd) => cmd,
        }
    }

    /// True for the ioctls that install pages (and so may wake faulting threads).
    pub fn places_pages(self) -> bool {
        matches!(self, IoctlOp::Copy | IoctlOp::ZeroPage | IoctlOp::Continue)
    }
}

/// A blocking sleep of a tracked thread that ended with a wake-up from inside a
/// uffd ioctl: the kernel-side join of fault entry, switch-out, waking and switch-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sleep {
    pub tid: u32,
    /// The thread's last fault entry before it blocked, when one was seen.
    pub fault: Option<FaultEntry>,
    pub blocked_ts: u64,
    pub woken_ts: u64,
    /// Switch-in after the wake; `None` when the thread never ran again in the trace.
    pub run_ts: Option<u64>,
    /// The thread's first return to user or guest mode after the switch-in
    /// (`rseq:rseq_update`): when the faulting access can complete. `None`
    /// when not seen (the thread has no rseq area, or blocked again first)
    /// and in traces before format 3, which did not record it.
    pub resume_ts: Option<u64>,
    pub waker_tid: u32,
    /// The uffd ioctl the waker was inside.
    pub wake_op: IoctlOp,
    /// `dst`/`start` of that ioctl.
    pub wake_start: u64,
    pub wake_len: u64,
    /// What the kernel said about the interval beyond its timestamps; `None`
    /// in version-1 traces, which did not keep it.
    pub kernel: Option<SleepKernel>,
}

impl Sleep {
    /// True when `run_ts` is only an upper bound on the switch-in (the
    /// switch-in itself was not traced). `false` when unknown (version 1).
    pub fn run_is_bound(&self) -> bool {
        self.kernel.is_some_and(|k| k.flags.run_unseen())
    }
}

/// The kernel's own facts about one [`Sleep`], kept as the BPF side saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SleepKernel {
    pub flags: SleepFlags,
    /// The KVM vCPU id, for KVM fault entries.
    pub vcpu_id: Option<u32>,
    /// The task state at switch-out (`prev_state & 0xff`: 1 = S, 2 = D); 0
    /// when the thread never switched out.
    pub block_state: u32,
}

/// How the kernel-side join of one sleep went (see ARCHITECTURE.md, "How
/// each moment of a fault is observed"). The bit values are the trace
/// format's own, stable across BPF changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SleepFlags(pub u16);

impl SleepFlags {
    /// Woken between fault entry and switch-out: it never blocked.
    pub const WOKEN_BEFORE_BLOCK: u16 = 0x1;
    /// A KVM async page fault followed the fault entry.
    pub const KVM_ASYNC: u16 = 0x2;
    /// Woken while switching out to sleep: `woken_ts <= blocked_ts`.
    pub const WOKEN_BEFORE_SWITCH: u16 = 0x4;
    /// The switch-in was not traced: `run_ts` is the first traced moment the
    /// thread ran after the wake, an upper bound.
    pub const RUN_UNSEEN: u16 = 0x8;
    /// Every bit this version defines.
    pub const KNOWN: u16 = 0xf;

    pub fn woken_before_block(self) -> bool {
        self.0 & Self::WOKEN_BEFORE_BLOCK != 0
    }
    pub fn kvm_async(self) -> bool {
        self.0 & Self::KVM_ASYNC != 0
    }
    pub fn woken_before_switch(self) -> bool {
        self.0 & Self::WOKEN_BEFORE_SWITCH != 0
    }
    pub fn run_unseen(self) -> bool {
        self.0 & Self::RUN_UNSEEN != 0
    }
}

/// What a placing thread did first after a uffd ioctl that woke someone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacerHow {
    /// It switched out in a sleeping state at [`PlacerRun::ts`].
    Blocked,
    /// It was preempted at [`PlacerRun::out_ts`] and ran again in user mode
    /// at [`PlacerRun::ts`] (or, when that was not seen, `ts` is its next
    /// switch-out or traced syscall).
    Preempted,
    /// It entered a traced syscall at [`PlacerRun::ts`] without leaving the CPU.
    Syscall,
}

impl PlacerHow {
    pub(crate) fn code(self) -> u8 {
        match self {
            PlacerHow::Blocked => 1,
            PlacerHow::Preempted => 2,
            PlacerHow::Syscall => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<PlacerHow> {
        match code {
            1 => Some(PlacerHow::Blocked),
            2 => Some(PlacerHow::Preempted),
            3 => Some(PlacerHow::Syscall),
            _ => None,
        }
    }
}

/// The placing thread's first moment after a uffd ioctl that woke at least
/// one tracked thread (format 3): QEMU accounts the woken vCPU's blocktime
/// in that thread once the ioctl has returned, so this is when it can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacerRun {
    /// The moment (see [`PlacerHow`]).
    pub ts: u64,
    pub tid: u32,
    pub how: PlacerHow,
    /// Exit of the waking ioctl.
    pub ioctl_exit_ts: u64,
    /// The preempting switch-out, for [`PlacerHow::Preempted`].
    pub out_ts: Option<u64>,
    /// `dst`/`start` of the waking ioctl.
    pub ioctl_start: u64,
    /// Tracked threads it woke.
    pub woken: u32,
}

/// A step of KVM's asynchronous page-fault path, from the `kvm:` tracepoints
/// of that name (format 3; earlier traces kept them as notes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KvmAsyncOp {
    /// `kvm_try_async_get_page` (gva, gfn): the vCPU hands the page to a
    /// kworker instead of waiting for it.
    TryAsyncGetPage,
    /// `kvm_async_pf_not_present` (token, gva): the guest is told the page
    /// is not there yet and runs on.
    NotPresent,
    /// `kvm_async_pf_ready` (token, gva): the kworker got the page; the
    /// guest is told.
    Ready,
    /// `kvm_async_pf_repeated_fault` (gva, gfn): the vCPU faulted again on a
    /// page whose async fault is still outstanding.
    RepeatedFault,
}

impl KvmAsyncOp {
    pub const ALL: [KvmAsyncOp; 4] = [
        KvmAsyncOp::TryAsyncGetPage,
        KvmAsyncOp::NotPresent,
        KvmAsyncOp::Ready,
        KvmAsyncOp::RepeatedFault,
    ];

    /// The code the BPF side and the trace use (1..=4).
    pub fn code(self) -> u8 {
        match self {
            KvmAsyncOp::TryAsyncGetPage => 1,
            KvmAsyncOp::NotPresent => 2,
            KvmAsyncOp::Ready => 3,
            KvmAsyncOp::RepeatedFault => 4,
        }
    }

    pub fn from_code(code: u32) -> Option<KvmAsyncOp> {
        KvmAsyncOp::ALL
            .into_iter()
            .find(|op| u32::from(op.code()) == code)
    }
}

/// One KVM async page-fault step of a vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvmAsync {
    pub ts: u64,
    /// The vCPU thread the tracepoint fired in.
    pub tid: u32,
    pub op: KvmAsyncOp,
    /// The async-PF token (`NotPresent`, `Ready`), else 0.
    pub token: u64,
    /// Guest virtual address.
    pub gva: u64,
    /// Guest frame number (`TryAsyncGetPage`, `RepeatedFault`), else 0.
    pub gfn: u64,
}

/// One `uffd_msg` as read by the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UffdMsg {
    /// `UFFD_EVENT_*` (PAGEFAULT = 0x12).
    pub event: u8,
    /// `UFFD_PAGEFAULT_FLAG_*` (WRITE = 1, WP = 2, MINOR = 4).
    pub flags: u64,
    pub address: u64,
    /// Faulting thread id (UFFD_FEATURE_THREAD_ID), 0 when not provided.
    pub ptid: u32,
}

impl UffdMsg {
    pub const EVENT_PAGEFAULT: u8 = 0x12;
}

/// A `read()` on a uffd fd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UffdRead {
    pub tid: u32,
    pub enter_ts: u64,
    pub exit_ts: u64,
    pub fd: i32,
    /// Syscall return value (bytes, or `-errno`).
    pub ret: i64,
    pub msgs: Vec<UffdMsg>,
}

/// An ioctl on a uffd fd, entry to exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UffdIoctl {
    pub tid: u32,
    pub enter_ts: u64,
    pub exit_ts: u64,
    pub fd: i32,
    pub op: IoctlOp,
    /// `dst` (COPY) or `start` (ZEROPAGE, WAKE, CONTINUE, REGISTER).
    pub start: u64,
    pub len: u64,
    pub mode: u64,
    /// Syscall return value.
    pub ret: i64,
    /// The struct's result field (`copy`, `zeropage`, `mapped`), when it has one.
    pub result: i64,
    /// Threads woken while inside this ioctl.
    pub woken: u32,
}

/// Background placements of one thread counted instead of recorded: the
/// successful `UFFDIO_COPY`s (or `UFFDIO_ZEROPAGE`s) of one length whose ioctl
/// exited inside one [`PlacementBin::BIN_NS`] bin and that the analysis does
/// not need one by one (they woke no thread and covered no page whose message
/// was read and not yet resolved; see ARCHITECTURE.md, "Placements counted in
/// the kernel"). Format version 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementBin {
    pub tid: u32,
    /// `Copy` or `ZeroPage`.
    pub op: IoctlOp,
    /// The length of each placement (the page size).
    pub len: u64,
    /// Exit of the first placement counted.
    pub first_exit_ts: u64,
    /// Exit of the last placement counted (the record's time).
    pub last_exit_ts: u64,
    /// Placements counted.
    pub count: u64,
    /// Their summed ioctl time, entry to exit, ns.
    pub ioctl_ns: u64,
}

impl PlacementBin {
    /// Width of a bin: placements are counted per thread per 10 ms of ioctl exit.
    pub const BIN_NS: u64 = 10_000_000;

    /// The bin a placement exiting at `exit_ts` falls in.
    pub fn index(exit_ts: u64) -> u64 {
        exit_ts / Self::BIN_NS
    }

    /// Bytes placed.
    pub fn bytes(&self) -> u64 {
        self.count.saturating_mul(self.len)
    }
}

/// Direction of a socket transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Send,
    Recv,
}

/// A send/recv syscall on one of the target's sockets, with the payload's first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SockIo {
    pub tid: u32,
    pub enter_ts: u64,
    pub exit_ts: u64,
    pub fd: i32,
    pub dir: Direction,
    pub ret: i64,
    /// The first bytes of the payload (at most [`SockIo::MAX_HEAD`]).
    pub head: Vec<u8>,
}

impl SockIo {
    pub const MAX_HEAD: usize = 64;
}

/// Byte counts from `sock:sock_send_length`/`sock_recv_length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockLen {
    pub ts: u64,
    pub tid: u32,
    /// Kernel socket pointer, the join key with [`TcpProbe::sk`].
    pub sk: u64,
    pub dir: Direction,
    pub len: i64,
}

/// A `tcp:tcp_probe` sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpProbe {
    pub ts: u64,
    pub sk: u64,
    pub sport: u16,
    pub dport: u16,
    /// Smoothed RTT in microseconds (the kernel's `srtt_us >> 3`).
    pub srtt_us: u32,
    pub cwnd: u32,
    /// The socket's send sequence state at the sample (format 4); `None` in
    /// older traces.
    pub seq: Option<TcpSeq>,
}

/// A socket's send sequence state from `tcp:tcp_probe` (format 4): with the
/// congestion window it tells a send queue that is full from one that is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSeq {
    /// Next sequence number to send.
    pub snd_nxt: u32,
    /// Oldest unacknowledged sequence number.
    pub snd_una: u32,
    /// The peer's advertised receive window, bytes.
    pub snd_wnd: u32,
}

impl TcpSeq {
    /// Bytes sent and not yet acknowledged.
    pub fn in_flight(&self) -> u32 {
        self.snd_nxt.wrapping_sub(self.snd_una)
    }
}

/// One send of guest pages by the migration *source* (format 4): the
/// `iovec`s of a `sendmsg`/`writev` on one of the target's sockets that
/// point at whole pages, as runs of contiguous entries. QEMU's stream puts
/// each page's header at the end of the buffer segment just before the
/// page's own `iovec`, so each run also keeps the 8 bytes before its first
/// page. See ARCHITECTURE.md, "Both ends of the migration".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagesSent {
    pub tid: u32,
    pub enter_ts: u64,
    pub exit_ts: u64,
    pub fd: i32,
    /// Bytes the syscall sent, or `-errno`.
    pub ret: i64,
    /// The page runs, in `iovec` order (at most [`PagesSent::MAX_RUNS`]).
    pub runs: Vec<PageRun>,
    /// The send had more `iovec`s or runs than the kernel walked: pages
    /// after the last run may be missing.
    pub truncated: bool,
}

impl PagesSent {
    /// Most runs one record carries (a decoder bound, too).
    pub const MAX_RUNS: usize = 64;
}

/// Contiguous page-sized `iovec`s inside one [`PagesSent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    /// Byte offset of the run's first page within the send's payload.
    pub at: u64,
    /// Host address of the first page in the sender's memory.
    pub addr: u64,
    /// Length of each page entry, bytes.
    pub page_len: u32,
    /// Entries in the run (each `page_len` long, addresses contiguous).
    pub pages: u32,
    /// The 8 bytes just before the run's first page in the stream, read as
    /// a big-endian integer (QEMU's page header when the page continues the
    /// current RAMBlock); `None` when they were not read.
    pub header: Option<u64>,
}

/// Which end of a migration a trace was recorded on (format 4 metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The destination: vCPUs fault on missing pages, the fault thread
    /// requests them, placing threads install them.
    Destination,
    /// The source: the return path receives page requests and the migration
    /// thread sends pages.
    Source,
}

/// How much a recording attached (format 4 metadata; `record --detail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detail {
    /// The fewest tracepoints that still give service latency, blocked time,
    /// resolution and blocktime.
    Minimal,
    /// What every report section needs.
    Standard,
    /// Every tracepoint uffdscope knows.
    Full,
}

/// A `tcp:tcp_retransmit_skb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRetransmit {
    pub ts: u64,
    pub sk: u64,
    pub sport: u16,
    pub dport: u16,
}

/// A socket of the target found by discovery (`/proc/PID/fd`, `/proc/net/tcp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketInfo {
    pub ts: u64,
    pub fd: i32,
    pub inode: u64,
    pub local: String,
    pub remote: String,
    pub local_port: u16,
    pub remote_port: u16,
}

/// A thread of the target and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadInfo {
    pub ts: u64,
    pub tid: u32,
    pub name: String,
    pub role: Role,
}

/// The traced process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub ts: u64,
    pub pid: u32,
    pub comm: String,
    pub cmdline: Vec<String>,
}

/// A userfaultfd range (from `UFFDIO_REGISTER` seen live or `/proc/PID/smaps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UffdRange {
    pub ts: u64,
    pub start: u64,
    pub len: u64,
    /// `UFFDIO_REGISTER_MODE_*` bits (MISSING = 1, WP = 2, MINOR = 4).
    pub mode: u64,
}

/// A new uffd fd in the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewUffd {
    pub ts: u64,
    pub tid: u32,
    pub fd: i32,
}

/// Cumulative ring-buffer drops reported by the kernel side at `ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drops {
    pub ts: u64,
    pub total: u64,
}

/// A software perf counter sample for one thread (cumulative value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerfSample {
    pub ts: u64,
    pub tid: u32,
    pub counter: String,
    pub value: u64,
}

/// A QMP reply or event, kept as its JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qmp {
    pub ts: u64,
    /// `query-migrate`, `event:POSTCOPY_ACTIVE`, `blocktime`, ...
    pub kind: String,
    pub json: String,
}

impl Qmp {
    /// The reply to `query-migrate-capabilities`, asked once at start.
    pub const CAPABILITIES: &'static str = "query-migrate-capabilities";
    /// The reply to `query-migrate-parameters`, asked once at start.
    pub const PARAMETERS: &'static str = "query-migrate-parameters";
}

/// A guest console line with its host arrival time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestLine {
    pub ts: u64,
    pub text: String,
}

/// A free-form note from the recorder (start, stop reason, warnings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub ts: u64,
    pub kind: String,
    pub text: String,
}

/// Every record a trace can hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Process(ProcessInfo),
    Thread(ThreadInfo),
    Sleep(Sleep),
    UffdRead(UffdRead),
    UffdIoctl(UffdIoctl),
    PlacementBin(PlacementBin),
    UffdRange(UffdRange),
    NewUffd(NewUffd),
    SockIo(SockIo),
    SockLen(SockLen),
    Socket(SocketInfo),
    TcpProbe(TcpProbe),
    TcpRetransmit(TcpRetransmit),
    Drops(Drops),
    Perf(PerfSample),
    Qmp(Qmp),
    GuestLine(GuestLine),
    Note(Note),
    PlacerRun(PlacerRun),
    KvmAsync(KvmAsync),
    PagesSent(PagesSent),
}

impl Record {
    /// The time the record is about (its latest timestamp for intervals).
    pub fn ts(&self) -> u64 {
        match self {
            Record::Process(r) => r.ts,
            Record::Thread(r) => r.ts,
            Record::Sleep(r) => r.run_ts.unwrap_or(r.woken_ts),
            Record::UffdRead(r) => r.exit_ts,
            Record::UffdIoctl(r) => r.exit_ts,
            Record::PlacementBin(r) => r.last_exit_ts,
            Record::UffdRange(r) => r.ts,
            Record::NewUffd(r) => r.ts,
            Record::SockIo(r) => r.exit_ts,
            Record::SockLen(r) => r.ts,
            Record::Socket(r) => r.ts,
            Record::TcpProbe(r) => r.ts,
            Record::TcpRetransmit(r) => r.ts,
            Record::Drops(r) => r.ts,
            Record::Perf(r) => r.ts,
            Record::Qmp(r) => r.ts,
            Record::GuestLine(r) => r.ts,
            Record::Note(r) => r.ts,
            Record::PlacerRun(r) => r.ts,
            Record::KvmAsync(r) => r.ts,
            Record::PagesSent(r) => r.exit_ts,
        }
    }
}
