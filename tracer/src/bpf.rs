//! The BPF side of recording. Owns:
//! - [`TRACEPOINTS`]: every tracepoint the object attaches to, whether it is
//!   required, and the format fields its program reads;
//! - [`BpfTracer::load`]: patching the read-only globals (targets, wake-up
//!   threshold), loading `uffdscope_ebpf::OBJECT` with aya, seeding the uffd
//!   and socket fd maps from `/proc`, and attaching every program;
//! - [`RingDrain`]: non-blocking drains of the ring buffer;
//! - drop and statistics counters (per-CPU sums);
//! - [`probe_tracepoints`]: which tracepoints exist here and whether their
//!   layout is the one the programs were written for (`uffdscope check`).

use std::fmt;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::{ProgramError, TracePoint};
use aya::{Ebpf, EbpfError, EbpfLoader};
use nix::poll::PollTimeout;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use uffdscope_ebpf::abi::{self, Kind, MAX_TARGETS};
use uffdscope_ebpf::{decode, names, DecodeError, RawEvent, OBJECT};

/// Whether recording can go on without a tracepoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Without it the fault lifecycle cannot be reconstructed.
    Required,
    /// It adds detail (KVM, network, thread names); recording works without it.
    Optional,
}

/// A field of a tracepoint's format file that a program reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatField {
    /// Field name as the format file spells it.
    pub name: &'static str,
    /// Byte offset in the record.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

const fn field(name: &'static str, offset: u32, size: u32) -> FormatField {
    FormatField { name, offset, size }
}

/// One tracepoint and the program of the object attached to it.
#[derive(Debug)]
pub struct Tracepoint {
    /// Program (function) name in the object.
    pub program: &'static str,
    /// tracefs category.
    pub category: &'static str,
    /// tracefs event name.
    pub name: &'static str,
    /// Required or optional.
    pub need: Need,
    /// What it is used for, for `uffdscope check`.
    pub purpose: &'static str,
    /// Fields the program reads (see ebpf/bpf/tracepoints.h).
    pub fields: &'static [FormatField],
}

impl fmt::Display for Tracepoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.category, self.name)
    }
}

const SYS_RET: &[FormatField] = &[field("ret", 16, 8)];
const SOCK_LENGTH: &[FormatField] = &[
    field("sk", 8, 8),
    field("family", 16, 2),
    field("protocol", 18, 2),
    field("ret", 20, 4),
    field("flags", 24, 4),
];
const KVM_GVA_GFN: &[FormatField] = &[field("gva", 8, 8), field("gfn", 16, 8)];
const KVM_TOKEN_GVA: &[FormatField] = &[field("token", 8, 8), field("gva", 16, 8)];

macro_rules! tp {
    ($prog:literal, $cat:literal, $name:literal, $need:ident, $purpose:literal, $fields:expr) => {
        Tracepoint {
            program: $prog,
            category: $cat,
            name: $name,
            need: Need::$need,
            purpose: $purpose,
            fields: $fields,
        }
    };
}

/// Every tracepoint uffdscope attaches to, in attach order.
pub static TRACEPOINTS: &[Tracepoint] =
    &[
        tp!(
            "ufs_page_fault_user",
            "exceptions",
            "page_fault_user",
            Required,
            "fault entry of user/TCG accesses (address, ip, error code)",
            &[
                field("address", 8, 8),
                field("ip", 16, 8),
                field("error_code", 24, 8)
            ]
        ),
        tp!(
            "ufs_kvm_page_fault",
            "kvm",
            "kvm_page_fault",
            Optional,
            "fault entry of KVM vCPUs (guest physical address, guest rip)",
            &[
                field("vcpu_id", 8, 4),
                field("guest_rip", 16, 8),
                field("fault_address", 24, 8),
                field("error_code", 32, 8)
            ]
        ),
        tp!(
            "ufs_kvm_try_async_get_page",
            "kvm",
            "kvm_try_async_get_page",
            Optional,
            "KVM async page fault started (the wait moves to a kworker)",
            KVM_GVA_GFN
        ),
        tp!(
            "ufs_kvm_async_pf_not_present",
            "kvm",
            "kvm_async_pf_not_present",
            Optional,
            "KVM async page fault injected as not present",
            KVM_TOKEN_GVA
        ),
        tp!(
            "ufs_kvm_async_pf_ready",
            "kvm",
            "kvm_async_pf_ready",
            Optional,
            "KVM async page fault ready",
            KVM_TOKEN_GVA
        ),
        tp!(
            "ufs_kvm_async_pf_repeated_fault",
            "kvm",
            "kvm_async_pf_repeated_fault",
            Optional,
            "KVM async page fault repeated",
            KVM_GVA_GFN
        ),
        tp!(
            "ufs_sched_switch",
            "sched",
            "sched_switch",
            Required,
            "thread blocks and runs again",
            &[
                field("prev_pid", 24, 4),
                field("prev_state", 32, 8),
                field("next_pid", 56, 4)
            ]
        ),
        tp!(
            "ufs_sched_waking",
            "sched",
            "sched_waking",
            Required,
            "faulting thread woken from inside a uffd ioctl",
            &[field("pid", 24, 4)]
        ),
        tp!(
            "ufs_sched_wakeup",
            "sched",
            "sched_wakeup",
            Required,
            "tells a wake that raced a fault's switch-out from one that came before it",
            &[field("pid", 24, 4)]
        ),
        tp!(
            "ufs_rseq_update",
            "rseq",
            "rseq_update",
            Optional,
            "thread back in user or guest mode: ends a sleep whose switch-in was not traced",
            &[]
        ),
        tp!(
            "ufs_sys_exit_userfaultfd",
            "syscalls",
            "sys_exit_userfaultfd",
            Required,
            "new uffd fds from userfaultfd(2)",
            SYS_RET
        ),
        tp!(
            "ufs_sys_enter_close",
            "syscalls",
            "sys_enter_close",
            Required,
            "uffd and socket fds going away",
            &[field("fd", 16, 8)]
        ),
        tp!("ufs_sys_enter_ioctl", "syscalls", "sys_enter_ioctl", Required,
        "page placement (UFFDIO_COPY/ZEROPAGE/CONTINUE/WAKE), registration, USERFAULTFD_IOC_NEW",
        &[field("fd", 16, 8), field("cmd", 24, 8), field("arg", 32, 8)]),
        tp!(
            "ufs_sys_exit_ioctl",
            "syscalls",
            "sys_exit_ioctl",
            Required,
            "end of uffd ioctls (result, threads woken)",
            SYS_RET
        ),
        tp!(
            "ufs_sys_enter_read",
            "syscalls",
            "sys_enter_read",
            Required,
            "fault thread reads uffd messages",
            &[field("fd", 16, 8), field("buf", 24, 8)]
        ),
        tp!(
            "ufs_sys_exit_read",
            "syscalls",
            "sys_exit_read",
            Required,
            "uffd messages decoded (event, flags, address, ptid)",
            SYS_RET
        ),
        tp!(
            "ufs_sys_enter_sendmsg",
            "syscalls",
            "sys_enter_sendmsg",
            Optional,
            "page requests sent (QEMU return path uses sendmsg)",
            &[field("fd", 16, 8), field("msg", 24, 8)]
        ),
        tp!(
            "ufs_sys_exit_sendmsg",
            "syscalls",
            "sys_exit_sendmsg",
            Optional,
            "page request send result",
            SYS_RET
        ),
        tp!(
            "ufs_sys_enter_writev",
            "syscalls",
            "sys_enter_writev",
            Optional,
            "page requests sent with writev",
            &[
                field("fd", 16, 8),
                field("vec", 24, 8),
                field("vlen", 32, 8)
            ]
        ),
        tp!(
            "ufs_sys_exit_writev",
            "syscalls",
            "sys_exit_writev",
            Optional,
            "writev result",
            SYS_RET
        ),
        tp!(
            "ufs_sys_enter_sendto",
            "syscalls",
            "sys_enter_sendto",
            Optional,
            "page requests sent with send/sendto",
            &[
                field("fd", 16, 8),
                field("buff", 24, 8),
                field("len", 32, 8)
            ]
        ),
        tp!(
            "ufs_sys_exit_sendto",
            "syscalls",
            "sys_exit_sendto",
            Optional,
            "send/sendto result",
            SYS_RET
        ),
        tp!(
            "ufs_sys_enter_write",
            "syscalls",
            "sys_enter_write",
            Optional,
            "page requests sent with write",
            &[
                field("fd", 16, 8),
                field("buf", 24, 8),
                field("count", 32, 8)
            ]
        ),
        tp!(
            "ufs_sys_exit_write",
            "syscalls",
            "sys_exit_write",
            Optional,
            "write result",
            SYS_RET
        ),
        tp!(
            "ufs_sys_exit_socket",
            "syscalls",
            "sys_exit_socket",
            Optional,
            "socket fds created after the last /proc scan",
            SYS_RET
        ),
        tp!(
            "ufs_sys_exit_accept",
            "syscalls",
            "sys_exit_accept",
            Optional,
            "socket fds accepted after the last /proc scan",
            SYS_RET
        ),
        tp!(
            "ufs_sys_exit_accept4",
            "syscalls",
            "sys_exit_accept4",
            Optional,
            "socket fds accepted after the last /proc scan",
            SYS_RET
        ),
        tp!(
            "ufs_sock_recv_length",
            "sock",
            "sock_recv_length",
            Optional,
            "bytes received per socket",
            SOCK_LENGTH
        ),
        tp!(
            "ufs_sock_send_length",
            "sock",
            "sock_send_length",
            Optional,
            "bytes sent per socket",
            SOCK_LENGTH
        ),
        tp!(
            "ufs_inet_sock_set_state",
            "sock",
            "inet_sock_set_state",
            Optional,
            "forget closed TCP sockets",
            &[field("skaddr", 8, 8), field("newstate", 20, 4)]
        ),
        tp!(
            "ufs_tcp_probe",
            "tcp",
            "tcp_probe",
            Optional,
            "per-connection RTT and congestion window",
            &[
                field("sport", 64, 2),
                field("dport", 66, 2),
                field("family", 68, 2),
                field("data_len", 76, 2),
                field("snd_nxt", 80, 4),
                field("snd_una", 84, 4),
                field("snd_cwnd", 88, 4),
                field("ssthresh", 92, 4),
                field("snd_wnd", 96, 4),
                field("srtt", 100, 4),
                field("rcv_wnd", 104, 4),
                field("sock_cookie", 112, 8),
                field("skaddr", 128, 8)
            ]
        ),
        tp!(
            "ufs_tcp_retransmit_skb",
            "tcp",
            "tcp_retransmit_skb",
            Optional,
            "TCP retransmissions",
            &[
                field("skaddr", 16, 8),
                field("state", 24, 4),
                field("sport", 28, 2),
                field("dport", 30, 2),
                field("family", 32, 2),
                field("err", 76, 4)
            ]
        ),
        tp!(
            "ufs_sched_process_exit",
            "sched",
            "sched_process_exit",
            Optional,
            "thread exits (and per-thread state cleanup)",
            &[
                field("comm", 8, 16),
                field("pid", 24, 4),
                field("group_dead", 32, 1)
            ]
        ),
        tp!(
            "ufs_task_newtask",
            "task",
            "task_newtask",
            Optional,
            "threads created during the recording",
            &[
                field("pid", 8, 4),
                field("comm", 12, 16),
                field("clone_flags", 32, 8)
            ]
        ),
        tp!(
            "ufs_task_rename",
            "task",
            "task_rename",
            Optional,
            "thread names set during the recording (QEMU names its threads late)",
            &[field("pid", 8, 4), field("newcomm", 28, 16)]
        ),
    ];

/// Errors of the BPF side. Each names what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The configuration is unusable.
    #[error("invalid BPF configuration: {0}")]
    Config(String),
    /// No tracefs mount.
    #[error(
        "tracefs is not mounted (looked for /sys/kernel/tracing and /sys/kernel/debug/tracing); \
         mount it with: mount -t tracefs nodev /sys/kernel/tracing"
    )]
    NoTracefs,
    /// aya could not create the maps or parse the object.
    #[error("loading the BPF object failed (uffdscope record needs root, or CAP_BPF and CAP_PERFMON): {0}")]
    Object(#[source] Box<EbpfError>),
    /// A required tracepoint does not exist on this kernel.
    #[error("required tracepoint {tracepoint} does not exist on this kernel ({path} is missing); it is needed for: {purpose}")]
    MissingTracepoint {
        /// `category:name`.
        tracepoint: String,
        /// The id file that is missing.
        path: PathBuf,
        /// What it is needed for.
        purpose: &'static str,
    },
    /// A required tracepoint's layout differs from the one the program reads.
    #[error("required tracepoint {tracepoint} has a layout uffdscope does not know ({details}); its records would be misread")]
    FormatMismatch {
        /// `category:name`.
        tracepoint: String,
        /// What differs.
        details: String,
    },
    /// The object lacks a program listed in [`TRACEPOINTS`] (build mismatch).
    #[error("program {0} is missing from the BPF object; rebuild with make -C ebpf")]
    ProgramNotInObject(&'static str),
    /// A required program failed to load or attach.
    #[error("{action} program {program} for required tracepoint {tracepoint} failed: {source}")]
    Program {
        /// "loading" or "attaching".
        action: &'static str,
        /// Program name.
        program: &'static str,
        /// `category:name`.
        tracepoint: String,
        /// aya's error, with the verifier log for load failures.
        #[source]
        source: Box<ProgramError>,
    },
    /// A map is missing or could not be used.
    #[error("BPF map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// aya's error.
        #[source]
        source: Box<MapError>,
    },
    /// A map the object should define is absent.
    #[error("BPF map {0} is missing from the object; rebuild with make -C ebpf")]
    MapNotInObject(&'static str),
    /// Setting up the ring buffer's epoll instance failed.
    #[error("setting up epoll on the BPF ring buffer: {0}")]
    Epoll(#[source] io::Error),
    /// The kernel has no BTF, so task storage cannot be used.
    #[error(
        "{KERNEL_BTF} is missing: the BPF programs keep per-thread state in task storage, \
         which needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (Linux 5.11 or later)"
    )]
    NoKernelBtf,
    /// Asking the kernel for a program's run statistics failed.
    #[error("reading the run statistics of program {program}: {source}")]
    Stats {
        /// Program name.
        program: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Reading `/proc` failed.
    #[error("reading {path}: {source} (has the target exited?)")]
    Proc {
        /// Path read.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> BpfError {
    move |source| BpfError::Map {
        map,
        source: Box::new(source),
    }
}

/// Settings fixed at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfConfig {
    /// Target processes (tgids), 1 to 8.
    pub targets: Vec<u32>,
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_bytes: u32,
    /// Wake the consumer only when this many bytes wait in the ring; below it
    /// records are submitted without a wake-up and the consumer drains on its
    /// timer.
    pub wakeup_bytes: u64,
    /// Minimum gap between two `tcp_probe` records of one socket.
    pub tcp_probe_interval: Duration,
}

/// Default ring size: 16 MiB.
pub const DEFAULT_RING_BYTES: u32 = 16 << 20;

impl BpfConfig {
    /// Defaults for the given targets: 16 MiB ring, wake-up at a quarter full,
    /// one `tcp_probe` per socket per millisecond.
    pub fn new(targets: Vec<u32>) -> Self {
        BpfConfig {
            targets,
            ring_bytes: DEFAULT_RING_BYTES,
            wakeup_bytes: u64::from(DEFAULT_RING_BYTES / 4),
            tcp_probe_interval: Duration::from_millis(1),
        }
    }

    /// Checks the limits the kernel and the object impose.
    pub fn validate(&self) -> Result<(), BpfError> {
        if self.targets.is_empty() {
            return Err(BpfError::Config("no target process given".into()));
        }
        if self.targets.len() > MAX_TARGETS {
            return Err(BpfError::Config(format!(
                "{} targets given, at most {MAX_TARGETS} are supported",
                self.targets.len()
            )));
        }
        if let Some(t) = self.targets.iter().find(|&&t| t == 0) {
            return Err(BpfError::Config(format!("target pid {t} is not a process")));
        }
        if !self.ring_bytes.is_power_of_two() || self.ring_bytes < 4096 {
            return Err(BpfError::Config(format!(
                "ring buffer size {} is not a power of two of at least 4096 bytes",
                self.ring_bytes
            )));
        }
        if self.wakeup_bytes > u64::from(self.ring_bytes) {
            return Err(BpfError::Config(format!(
                "wake-up threshold {} is larger than the ring ({} bytes)",
                self.wakeup_bytes, self.ring_bytes
            )));
        }
        Ok(())
    }
}

/// What happened to one tracepoint at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachOutcome {
    /// Loaded and attached.
    Attached,
    /// The tracepoint does not exist on this kernel (optional only).
    Missing,
    /// The layout differs from what the program reads; not attached (optional only).
    FormatMismatch(String),
    /// Loading or attaching failed (optional only).
    Failed(String),
}

/// Load/attach result of one tracepoint.
#[derive(Debug, Clone)]
pub struct AttachStatus {
    /// The tracepoint.
    pub tracepoint: &'static Tracepoint,
    /// The outcome.
    pub outcome: AttachOutcome,
}

/// fds found in `/proc/PID/fd`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcFds {
    /// `anon_inode:[userfaultfd]` fds.
    pub uffd: Vec<u32>,
    /// `socket:[inode]` fds, with the inode.
    pub sockets: Vec<(u32, u64)>,
}

/// Lists the uffd and socket fds of a process from `/proc/PID/fd`. fds that
/// close during the scan are skipped.
pub fn scan_proc_fds(tgid: u32) -> Result<ProcFds, BpfError> {
    let dir = PathBuf::from(format!("/proc/{tgid}/fd"));
    let entries = fs::read_dir(&dir).map_err(|source| BpfError::Proc {
        path: dir.clone(),
        source,
    })?;
    let mut out = ProcFds::default();
    for entry in entries {
        let entry = entry.map_err(|source| BpfError::Proc {
            path: dir.clone(),
            source,
        })?;
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // The fd may close between readdir and readlink: not an error.
        let Ok(link) = fs::read_link(entry.path()) else {
            continue;
        };
        let link = link.to_string_lossy();
        if link == "anon_inode:[userfaultfd]" {
            out.uffd.push(fd);
        } else if let Some(inode) = link
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.sockets.push((fd, inode));
        }
    }
    out.uffd.sort_unstable();
    out.sockets.sort_unstable();
    Ok(out)
}

/// Drop and statistics counters, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Ring reservations that failed, per record kind.
    pub drops_by_kind: Vec<(Kind, u64)>,
    /// Sum of `drops_by_kind`.
    pub drops: u64,
    /// `read()` on uffd fds returning `-EAGAIN` (not emitted as records).
    pub read_eagain: u64,
    /// Per-thread/per-fd map updates that failed because a map was full.
    pub map_full: u64,
    /// `sock_*_length` with `-EAGAIN` (not emitted).
    pub sock_eagain: u64,
    /// Tracked sleeps that ended without a uffd-ioctl wake.
    pub sleep_other: u64,
    /// Tracked sleeps whose switch-in was never traced; those a uffd ioctl
    /// ended come out with `fault_flags::RUN_UNSEEN` and no `run_ts`.
    pub run_unseen: u64,
}

/// Run statistics of one attached program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    /// Program name in the object.
    pub program: &'static str,
    /// Kernel program id (as `bpftool prog show` lists it).
    pub id: u32,
    /// Runs (counted while `kernel.bpf_stats_enabled` is 1).
    pub run_cnt: u64,
    /// Total run time in ns (counted while `kernel.bpf_stats_enabled` is 1).
    pub run_time_ns: u64,
    /// Runs skipped because another BPF program was running on that CPU.
    pub recursion_misses: u64,
}

impl ProgramStats {
    /// Mean ns per run, 0 before the first counted run.
    pub fn mean_ns(&self) -> u64 {
        self.run_time_ns.checked_div(self.run_cnt).unwrap_or(0)
    }
}

/// The leading fields of the kernel's `struct bpf_prog_info` up to
/// `recursion_misses` (UAPI, append-only); the kernel fills as much of the
/// struct as it is told is there.
#[repr(C)]
#[derive(Default)]
struct ProgInfoHead {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
    ifindex: u32,
    gpl_compatible: u32,
    netns_dev: u64,
    netns_ino: u64,
    nr_jited_ksyms: u32,
    nr_jited_func_lens: u32,
    jited_ksyms: u64,
    jited_func_lens: u64,
    btf_id: u32,
    func_info_rec_size: u32,
    func_info: u64,
    nr_func_info: u32,
    nr_line_info: u32,
    line_info: u64,
    jited_line_info: u64,
    nr_jited_line_info: u32,
    line_info_rec_size: u32,
    jited_line_info_rec_size: u32,
    nr_prog_tags: u32,
    prog_tags: u64,
    run_time_ns: u64,
    run_cnt: u64,
    recursion_misses: u64,
}

const _: () = assert!(std::mem::offset_of!(ProgInfoHead, run_time_ns) == 192);
const _: () = assert!(std::mem::size_of::<ProgInfoHead>() == 216);

/// `BPF_OBJ_GET_INFO_BY_FD` on a program fd. aya 0.14 keeps the run
/// statistics of `bpf_prog_info` private, so this asks the kernel directly.
fn prog_info(fd: BorrowedFd<'_>) -> io::Result<ProgInfoHead> {
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let mut info = ProgInfoHead::default();
    let mut attr = InfoAttr {
        bpf_fd: u32::try_from(fd.as_raw_fd())
            .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
        info_len: std::mem::size_of::<ProgInfoHead>() as u32,
        info: std::ptr::addr_of_mut!(info) as u64,
    };
    // SAFETY: attr points at a live InfoAttr whose `info` points at a live,
    // writable ProgInfoHead of `info_len` bytes; the kernel writes at most
    // that many bytes and reads nothing else.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            std::ptr::addr_of_mut!(attr),
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// A loaded and attached tracer. Dropping it detaches every program.
pub struct BpfTracer {
    ebpf: Ebpf,
    status: Vec<AttachStatus>,
    targets: Vec<u32>,
}

impl fmt::Debug for BpfTracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BpfTracer")
            .field("targets", &self.targets)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl BpfTracer {
    /// Loads the object for `cfg`, attaches every tracepoint (required ones
    /// must attach; optional ones are reported in [`Self::attach_status`]),
    /// and seeds the fd maps from `/proc` of every target.
    pub fn load(cfg: &BpfConfig) -> Result<BpfTracer, BpfError> {
        cfg.validate()?;
        let tracefs = find_tracefs().ok_or(BpfError::NoTracefs)?;
        if !kernel_btf_present() {
            return Err(BpfError::NoKernelBtf);
        }
        let mut targets = [0u32; MAX_TARGETS];
        targets[..cfg.targets.len()].copy_from_slice(&cfg.targets);
        let n_targets = cfg.targets.len() as u32;
        let probe_ns = u64::try_from(cfg.tcp_probe_interval.as_nanos()).unwrap_or(u64::MAX);

        let mut ebpf = EbpfLoader::new()
            // aya 0.14 has no type for task storage (ufs_task) but creates
            // it all the same; userspace never touches it.
            .allow_unsupported_maps()
            .override_global(names::TARGETS_GLOBAL, &targets, true)
            .override_global(names::N_TARGETS_GLOBAL, &n_targets, true)
            .override_global(names::WAKEUP_BYTES_GLOBAL, &cfg.wakeup_bytes, true)
            .override_global(names::TCP_PROBE_INTERVAL_GLOBAL, &probe_ns, true)
            .map_max_entries(names::EVENTS_MAP, cfg.ring_bytes)
            .load(OBJECT)
            .map_err(|e| BpfError::Object(Box::new(e)))?;

        let mut status = Vec::with_capacity(TRACEPOINTS.len());
        for tp in TRACEPOINTS {
            let outcome = attach_one(&mut ebpf, &tracefs, tp)?;
            status.push(AttachStatus {
                tracepoint: tp,
                outcome,
            });
        }
        let mut tracer = BpfTracer {
            ebpf,
            status,
            targets: cfg.targets.clone(),
        };
        // Scan after attaching: an fd created before the scan is found by it,
        // one created after is learned in the kernel.
        for tgid in cfg.targets.clone() {
            tracer.seed_from_proc(tgid)?;
        }
        Ok(tracer)
    }

    /// Load/attach outcome of every tracepoint, in [`TRACEPOINTS`] order.
    pub fn attach_status(&self) -> &[AttachStatus] {
        &self.status
    }

    /// The target tgids.
    pub fn targets(&self) -> &[u32] {
        &self.targets
    }

    /// Cumulative run counts and times of every attached program, as the
    /// kernel keeps them (`bpf_prog_info`). Times and counts only grow while
    /// `kernel.bpf_stats_enabled` is 1; recursion misses always count.
    pub fn program_stats(&self) -> Result<Vec<ProgramStats>, BpfError> {
        let mut out = Vec::new();
        for st in &self.status {
            if st.outcome != AttachOutcome::Attached {
                continue;
            }
            let name = st.tracepoint.program;
            let prog = self
                .ebpf
                .program(name)
                .ok_or(BpfError::ProgramNotInObject(name))?;
            let fd = prog.fd().map_err(|e| BpfError::Stats {
                program: name,
                source: io::Error::other(e.to_string()),
            })?;
            let info = prog_info(fd.as_fd()).map_err(|source| BpfError::Stats {
                program: name,
                source,
            })?;
            out.push(ProgramStats {
                program: name,
                id: info.id,
                run_cnt: info.run_cnt,
                run_time_ns: info.run_time_ns,
                recursion_misses: info.recursion_misses,
            });
        }
        Ok(out)
    }

    fn fd_map(
        &mut self,
        name: &'static str,
    ) -> Result<BpfHashMap<&mut MapData, u64, u32>, BpfError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(BpfError::MapNotInObject(name))?;
        BpfHashMap::try_from(map).map_err(map_err(name))
    }

    /// Marks `fd` of `tgid` as a userfaultfd.
    pub fn seed_uffd_fd(&mut self, tgid: u32, fd: u32) -> Result<(), BpfError> {
        self.fd_map(names::UFFD_FDS_MAP)?
            .insert(abi::fd_key(tgid, fd), 1, 0)
            .map_err(map_err(names::UFFD_FDS_MAP))
    }

    /// Marks `fd` of `tgid` as a socket whose sends are captured.
    pub fn seed_sock_fd(&mut self, tgid: u32, fd: u32) -> Result<(), BpfError> {
        self.fd_map(names::SOCK_FDS_MAP)?
            .insert(abi::fd_key(tgid, fd), 1, 0)
            .map_err(map_err(names::SOCK_FDS_MAP))
    }

    /// Scans `/proc/PID/fd` and seeds both fd maps. Safe to repeat (QEMU
    /// creates its uffd and return-path socket late).
    pub fn seed_from_proc(&mut self, tgid: u32) -> Result<ProcFds, BpfError> {
        let fds = scan_proc_fds(tgid)?;
        for &fd in &fds.uffd {
            self.seed_uffd_fd(tgid, fd)?;
        }
        for &(fd, _) in &fds.sockets {
            self.seed_sock_fd(tgid, fd)?;
        }
        Ok(fds)
    }

    /// The (tgid, fd) pairs currently known as uffds, sorted.
    pub fn uffd_fds(&self) -> Result<Vec<(u32, u32)>, BpfError> {
        let name = names::UFFD_FDS_MAP;
        let map = self.ebpf.map(name).ok_or(BpfError::MapNotInObject(name))?;
        let map: BpfHashMap<&MapData, u64, u32> =
            BpfHashMap::try_from(map).map_err(map_err(name))?;
        let mut out = map
            .keys()
            .map(|k| k.map(|k| ((k >> 32) as u32, k as u32)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(name))?;
        out.sort_unstable();
        Ok(out)
    }

    fn per_cpu_sums(&self, name: &'static str, len: u32) -> Result<Vec<u64>, BpfError> {
        let map = self.ebpf.map(name).ok_or(BpfError::MapNotInObject(name))?;
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(map_err(name))?;
        (0..len)
            .map(|i| {
                array
                    .get(&i, 0)
                    .map(|per_cpu| per_cpu.iter().sum::<u64>())
                    .map_err(map_err(name))
            })
            .collect()
    }

    /// Total ring reservations that failed, summed over CPUs and kinds.
    pub fn drops(&self) -> Result<u64, BpfError> {
        Ok(self
            .per_cpu_sums(names::DROPS_MAP, Kind::COUNT)?
            .iter()
            .sum())
    }

    /// Drop counters per kind and the other statistics.
    pub fn counters(&self) -> Result<Counters, BpfError> {
        let drops = self.per_cpu_sums(names::DROPS_MAP, Kind::COUNT)?;
        let stats = self.per_cpu_sums(names::STATS_MAP, abi::stat::COUNT)?;
        let stat = |i: u32| stats.get(i as usize).copied().unwrap_or(0);
        let drops_by_kind: Vec<(Kind, u64)> = Kind::ALL
            .iter()
            .map(|&k| (k, drops.get(k as usize).copied().unwrap_or(0)))
            .collect();
        Ok(Counters {
            drops: drops.iter().sum(),
            drops_by_kind,
            read_eagain: stat(abi::stat::READ_EAGAIN),
            map_full: stat(abi::stat::MAP_FULL),
            sock_eagain: stat(abi::stat::SOCK_EAGAIN),
            sleep_other: stat(abi::stat::SLEEP_OTHER),
            run_unseen: stat(abi::stat::RUN_UNSEEN),
        })
    }

    /// Takes the ring buffer out of the tracer. Call once; the tracer must
    /// stay alive (its programs attached) while the drain is used.
    pub fn take_ring(&mut self) -> Result<RingDrain, BpfError> {
        let name = names::EVENTS_MAP;
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(BpfError::MapNotInObject(name))?;
        let ring = RingBuf::try_from(map).map_err(map_err(name))?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .and_then(|ep| {
                ep.add(
                    ring.as_fd(),
                    EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, 0),
                )?;
                Ok(ep)
            })
            .map_err(|e| BpfError::Epoll(io::Error::from(e)))?;
        Ok(RingDrain { ring, epoll })
    }
}

fn attach_one(
    ebpf: &mut Ebpf,
    tracefs: &Path,
    tp: &'static Tracepoint,
) -> Result<AttachOutcome, BpfError> {
    let required = tp.need == Need::Required;
    match check_format(tracefs, tp) {
        FormatCheck::Matches => {}
        FormatCheck::Absent => {
            if required {
                return Err(BpfError::MissingTracepoint {
                    tracepoint: tp.to_string(),
                    path: event_dir(tracefs, tp).join("id"),
                    purpose: tp.purpose,
                });
            }
            return Ok(AttachOutcome::Missing);
        }
        FormatCheck::Differs(details) => {
            let details = details.join("; ");
            if required {
                return Err(BpfError::FormatMismatch {
                    tracepoint: tp.to_string(),
                    details,
                });
            }
            return Ok(AttachOutcome::FormatMismatch(details));
        }
    }
    let program: &mut TracePoint = ebpf
        .program_mut(tp.program)
        .ok_or(BpfError::ProgramNotInObject(tp.program))?
        .try_into()
        .map_err(|e| BpfError::Program {
            action: "loading",
            program: tp.program,
            tracepoint: tp.to_string(),
            source: Box::new(e),
        })?;
    let fail = |action: &'static str, e: ProgramError| {
        if required {
            Err(BpfError::Program {
                action,
                program: tp.program,
                tracepoint: tp.to_string(),
                source: Box::new(e),
            })
        } else {
            log::warn!(
                "{action} optional program {} for {tp} failed: {e}",
                tp.program
            );
            Ok(AttachOutcome::Failed(format!("{action} failed: {e}")))
        }
    };
    if let Err(e) = program.load() {
        return fail("loading", e);
    }
    if let Err(e) = program.attach(tp.category, tp.name) {
        return fail("attaching", e);
    }
    Ok(AttachOutcome::Attached)
}

/// Non-blocking access to the ring buffer.
///
/// Programs submit without waking the consumer until `wakeup_bytes` are
/// waiting, so the intended loop is `wait(~20 ms)` then `drain`: the wait
/// returns early only when the kernel forces a wake-up because the ring is
/// filling up. The wait is edge-triggered (epoll `EPOLLET`): a level-triggered
/// poll would report the ring readable as soon as any record is waiting and
/// turn the timer drain into a drain per event.
pub struct RingDrain {
    ring: RingBuf<MapData>,
    epoll: Epoll,
}

impl fmt::Debug for RingDrain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingDrain")
            .field("fd", &self.ring.as_raw_fd())
            .finish_non_exhaustive()
    }
}

impl RingDrain {
    /// Hands every waiting record's bytes to `f`, without blocking. Returns
    /// the number of records.
    pub fn drain_raw(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            f(&item);
            n += 1;
        }
        n
    }

    /// Decodes every waiting record and hands it to `f`, without blocking.
    /// Returns the number of records (decoded or not).
    pub fn drain(&mut self, mut f: impl FnMut(Result<RawEvent, DecodeError>)) -> usize {
        self.drain_raw(|bytes| f(decode(bytes)))
    }

    /// Appends every waiting record to `out`. Records that do not decode are
    /// counted in the returned [`DrainCount::bad`] and the first error is kept.
    pub fn drain_into(&mut self, out: &mut Vec<RawEvent>) -> DrainCount {
        let mut count = DrainCount::default();
        self.drain(|r| match r {
            Ok(ev) => {
                out.push(ev);
                count.good += 1;
            }
            Err(e) => {
                count.bad += 1;
                count.first_error.get_or_insert(e);
            }
        });
        count
    }

    /// Waits up to `timeout` (at most 65 s) for the kernel to signal the ring,
    /// which it does only once `wakeup_bytes` are waiting. Returns true when
    /// signalled; false on timeout or when a signal interrupted the wait.
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut events = [EpollEvent::empty()];
        match self.epoll.wait(&mut events, PollTimeout::from(ms)) {
            Ok(n) => Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(io::Error::from(e)),
        }
    }
}

impl AsFd for RingDrain {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl AsRawFd for RingDrain {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

/// Result of [`RingDrain::drain_into`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DrainCount {
    /// Records decoded.
    pub good: usize,
    /// Records that did not decode.
    pub bad: usize,
    /// The first decode error.
    pub first_error: Option<DecodeError>,
}

/// The tracefs mount: `/sys/kernel/tracing`, else the debugfs location.
pub fn find_tracefs() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

fn event_dir(tracefs: &Path, tp: &Tracepoint) -> PathBuf {
    tracefs.join("events").join(tp.category).join(tp.name)
}

/// Result of comparing a tracepoint's format file with what its program reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatCheck {
    /// Every field the program reads is where it expects.
    Matches,
    /// The tracepoint does not exist.
    Absent,
    /// Fields that are missing, moved or resized (or the file was unreadable).
    Differs(Vec<String>),
}

/// A parsed `field:` line of a format file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedField {
    /// Field name without array suffix.
    pub name: String,
    /// Offset.
    pub offset: u32,
    /// Size.
    pub size: u32,
}

/// Parses the `field:` lines of a tracepoint format file.
pub fn parse_format(text: &str) -> Vec<ParsedField> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = rest.split(';').map(str::trim);
        let Some(decl) = parts.next() else { continue };
        let name = decl
            .rsplit(|c: char| c.is_whitespace() || c == '*')
            .next()
            .unwrap_or("")
            .split('[')
            .next()
            .unwrap_or("")
            .to_string();
        let mut offset = None;
        let mut size = None;
        for p in parts {
            if let Some(v) = p.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = p.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        if let (false, Some(offset), Some(size)) = (name.is_empty(), offset, size) {
            out.push(ParsedField { name, offset, size });
        }
    }
    out
}

/// Compares the fields a program reads with a parsed format.
pub fn compare_format(expected: &[FormatField], parsed: &[ParsedField]) -> Vec<String> {
    let mut problems = Vec::new();
    for want in expected {
        match parsed.iter().find(|p| p.name == want.name) {
            None => problems.push(format!("field {} is missing", want.name)),
            Some(p) if p.offset != want.offset || p.size != want.size => problems.push(format!(
                "field {} is at offset {} size {}, expected offset {} size {}",
                want.name, p.offset, p.size, want.offset, want.size
            )),
            Some(_) => {}
        }
    }
    problems
}

fn check_format(tracefs: &Path, tp: &Tracepoint) -> FormatCheck {
    let dir = event_dir(tracefs, tp);
    if !dir.join("id").exists() {
        return FormatCheck::Absent;
    }
    match fs::read_to_string(dir.join("format")) {
        Err(e) => FormatCheck::Differs(vec![format!(
            "cannot read {}: {e}",
            dir.join("format").display()
        )]),
        Ok(text) => {
            let problems = compare_format(tp.fields, &parse_format(&text));
            if problems.is_empty() {
                FormatCheck::Matches
            } else {
                FormatCheck::Differs(problems)
            }
        }
    }
}

/// Whether one tracepoint is usable on this host.
#[derive(Debug, Clone)]
pub struct TracepointProbe {
    /// The tracepoint.
    pub tracepoint: &'static Tracepoint,
    /// Presence and layout.
    pub format: FormatCheck,
}

impl TracepointProbe {
    /// True when present with the expected layout.
    pub fn usable(&self) -> bool {
        self.format == FormatCheck::Matches
    }
}

/// Where the kernel publishes its own BTF.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Whether the kernel exposes its BTF ([`KERNEL_BTF`]), which the programs
/// need for per-thread task storage (`bpf_get_current_task_btf`); for
/// `uffdscope check`.
pub fn kernel_btf_present() -> bool {
    Path::new(KERNEL_BTF).exists()
}

/// Probes every tracepoint in [`TRACEPOINTS`] (for `uffdscope check`): does
/// it exist, and are the fields its program reads where it expects them.
/// Needs read access to tracefs (root on most systems).
pub fn probe_tracepoints() -> Result<Vec<TracepointProbe>, BpfError> {
    let tracefs = find_tracefs().ok_or(BpfError::NoTracefs)?;
    Ok(probe_tracepoints_at(&tracefs))
}

/// [`probe_tracepoints`] against a given tracefs root.
pub fn probe_tracepoints_at(tracefs: &Path) -> Vec<TracepointProbe> {
    TRACEPOINTS
        .iter()
        .map(|tp| TracepointProbe {
            tracepoint: tp,
            format: check_format(tracefs, tp),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE_FAULT_USER: &str = "name: page_fault_user
ID: 120
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned long address;\toffset:8;\tsize:8;\tsigned:0;
\tfield:unsigned long ip;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned long error_code;\toffset:24;\tsize:8;\tsigned:0;

print fmt: \"address=%ps\", (void *)REC->address
";

    #[test]
    fn parses_format_fields() {
        let fields = parse_format(PAGE_FAULT_USER);
        assert_eq!(fields.len(), 7, "fields: {fields:?}");
        assert_eq!(
            fields[4],
            ParsedField {
                name: "address".into(),
                offset: 8,
                size: 8
            }
        );
        let tp = TRACEPOINTS
            .iter()
            .find(|t| t.name == "page_fault_user")
            .expect("page_fault_user is in TRACEPOINTS");
        assert!(compare_format(tp.fields, &fields).is_empty());
    }

    #[test]
    fn parses_arrays_and_pointers() {
        let text = "\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
                    \tfield:const struct iovec * vec;\toffset:24;\tsize:8;\tsigned:0;\n\
                    \tfield:__u8 saddr[28];\toffset:8;\tsize:28;\tsigned:0;";
        let names: Vec<_> = parse_format(text).into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["prev_comm", "vec", "saddr"]);
    }

    #[test]
    fn reports_moved_and_missing_fields() {
        let text = "\tfield:unsigned long address;\toffset:16;\tsize:8;\tsigned:0;\n\
                    \tfield:unsigned long ip;\toffset:8;\tsize:8;\tsigned:0;";
        let problems = compare_format(
            &[
                field("address", 8, 8),
                field("ip", 8, 8),
                field("error_code", 24, 8),
            ],
            &parse_format(text),
        );
        assert_eq!(
            problems,
            [
                "field address is at offset 16 size 8, expected offset 8 size 8",
                "field error_code is missing"
            ]
        );
    }

    #[test]
    fn every_program_is_listed_once() {
        let mut names: Vec<_> = TRACEPOINTS.iter().map(|t| t.program).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate program in TRACEPOINTS");
    }

    #[test]
    fn every_listed_program_is_in_the_object() {
        // Section names are "tracepoint/<cat>/<name>"; each must be in the ELF.
        for tp in TRACEPOINTS {
            let section = format!("tracepoint/{}/{}", tp.category, tp.name);
            assert!(
                OBJECT
                    .windows(section.len())
                    .any(|w| w == section.as_bytes()),
                "{section} is not in the BPF object"
            );
            assert!(
                OBJECT
                    .windows(tp.program.len())
                    .any(|w| w == tp.program.as_bytes()),
                "program {} is not in the BPF object",
                tp.program
            );
        }
    }

    #[test]
    fn config_validation() {
        let ok = BpfConfig::new(vec![1]);
        assert!(ok.validate().is_ok());
        for bad in [
            BpfConfig::new(vec![]),
            BpfConfig::new((1..=9).collect()),
            BpfConfig::new(vec![0]),
            BpfConfig {
                ring_bytes: 3 << 20,
                ..ok.clone()
            },
            BpfConfig {
                wakeup_bytes: u64::from(DEFAULT_RING_BYTES) + 1,
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(BpfError::Config(_))),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn scans_own_fds() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let fds = scan_proc_fds(std::process::id()).expect("scan /proc/self/fd");
        let fd = listener.as_raw_fd() as u32;
        assert!(
            fds.sockets.iter().any(|&(f, _)| f == fd),
            "socket fd {fd} not found in {fds:?}"
        );
        assert!(fds.uffd.is_empty(), "no uffd expected: {fds:?}");
    }
}
