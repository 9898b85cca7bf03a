//! The tracepoint catalogue: every tracepoint the BPF object attaches to,
//! the program attached to it, whether recording needs it, what it is for,
//! and the format fields its program reads.

use std::fmt;

use uffdscope_trace::record::Side;

/// Whether recording can go on without a tracepoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Without it the fault lifecycle cannot be reconstructed.
    Required,
    /// It adds detail (KVM, network, thread names); recording works without it.
    Optional,
}

use uffdscope_ebpf::generated::tracepoint as tp;
pub use uffdscope_ebpf::layout::FormatField;
use uffdscope_trace::record::Detail;

/// Where the fields a program reads sit in its tracepoint's record: the
/// context layouts come from `ebpf/bpf/tracepoints.h`, through
/// `uffdscope_ebpf::generated`, and nowhere else.
#[derive(Debug, Clone, Copy)]
pub enum Layout {
    /// A context struct of `tracepoints.h`.
    Struct(&'static [FormatField]),
    /// `syscalls:sys_enter_*`: argument `i` is the 8-byte slot `args[i]`,
    /// named by the syscall's own argument name.
    SysEnter,
    /// The program reads no field of the record.
    None,
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
    /// Layout of the record.
    pub layout: Layout,
    /// Names of the fields the program reads (for `sys_enter_*`, the
    /// syscall's arguments in order).
    pub reads: &'static [&'static str],
}

impl Tracepoint {
    /// The least `record --detail` level that attaches this tracepoint.
    /// `minimal` keeps the fault lifecycle's moments that need no system call
    /// tracepoint (faults, scheduler, rseq, threads): any `syscalls:*`
    /// tracepoint puts every system call of every process on the host on the
    /// tracing slow path, and the sockets' tracepoints serve only the network
    /// stage, which needs the request sends anyway.
    pub fn detail(&self) -> Detail {
        match self.category {
            "syscalls" | "sock" | "tcp" => Detail::Standard,
            _ => Detail::Minimal,
        }
    }

    /// The fields the program reads, where the layout puts them; a name the
    /// layout lacks is a catalogue bug (a unit test keeps it out).
    pub fn fields(&self) -> Vec<FormatField> {
        match self.layout {
            Layout::None => Vec::new(),
            Layout::Struct(layout) => self
                .reads
                .iter()
                .filter_map(|name| uffdscope_ebpf::layout::find(layout, name))
                .collect(),
            Layout::SysEnter => {
                let Some(args) = uffdscope_ebpf::layout::find(tp::TP_SYS_ENTER, "args") else {
                    return Vec::new();
                };
                (0u32..)
                    .zip(self.reads)
                    .map(|(i, &name)| FormatField {
                        name,
                        offset: args.offset + 8 * i,
                        size: 8,
                    })
                    .collect()
            }
        }
    }
}

impl fmt::Display for Tracepoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.category, self.name)
    }
}

macro_rules! tp {
    ($prog:literal, $cat:literal, $name:literal, $need:ident, $purpose:literal, $layout:expr, $reads:expr) => {
        Tracepoint {
            program: $prog,
            category: $cat,
            name: $name,
            need: Need::$need,
            purpose: $purpose,
            layout: $layout,
            reads: $reads,
        }
    };
}

/// Every tracepoint uffdscope attaches to, in attach order.
pub static TRACEPOINTS: &[Tracepoint] = &[
    tp!(
        "ufs_page_fault_user",
        "exceptions",
        "page_fault_user",
        Required,
        "fault entry of user/TCG accesses (address, ip, error code)",
        Layout::Struct(tp::TP_PAGE_FAULT_USER),
        &["address", "ip", "error_code"]
    ),
    tp!(
        "ufs_page_fault_kernel",
        "exceptions",
        "page_fault_kernel",
        Required,
        "fault entry of kernel-mode accesses to user memory (tells a fault's uffd wake from an interrupt's)",
        Layout::Struct(tp::TP_PAGE_FAULT_KERNEL),
        &["address", "ip", "error_code"]
    ),
    tp!(
        "ufs_kvm_page_fault",
        "kvm",
        "kvm_page_fault",
        Optional,
        "fault entry of KVM vCPUs (guest physical address, guest rip)",
        Layout::Struct(tp::TP_KVM_PAGE_FAULT),
        &["vcpu_id", "guest_rip", "fault_address", "error_code"]
    ),
    tp!(
        "ufs_kvm_try_async_get_page",
        "kvm",
        "kvm_try_async_get_page",
        Optional,
        "KVM async page fault started (the wait moves to a kworker)",
        Layout::Struct(tp::TP_KVM_GVA_GFN),
        &["gva", "gfn"]
    ),
    tp!(
        "ufs_kvm_async_pf_not_present",
        "kvm",
        "kvm_async_pf_not_present",
        Optional,
        "KVM async page fault injected as not present",
        Layout::Struct(tp::TP_KVM_ASYNC_PF),
        &["token", "gva"]
    ),
    tp!(
        "ufs_kvm_async_pf_ready",
        "kvm",
        "kvm_async_pf_ready",
        Optional,
        "KVM async page fault ready",
        Layout::Struct(tp::TP_KVM_ASYNC_PF),
        &["token", "gva"]
    ),
    tp!(
        "ufs_kvm_async_pf_repeated_fault",
        "kvm",
        "kvm_async_pf_repeated_fault",
        Optional,
        "KVM async page fault repeated",
        Layout::Struct(tp::TP_KVM_GVA_GFN),
        &["gva", "gfn"]
    ),
    tp!(
        "ufs_sched_switch",
        "sched",
        "sched_switch",
        Required,
        "thread blocks and runs again",
        Layout::Struct(tp::TP_SCHED_SWITCH),
        &["prev_pid", "prev_state", "next_pid"]
    ),
    tp!(
        "ufs_sched_waking",
        "sched",
        "sched_waking",
        Required,
        "faulting thread woken from inside a uffd ioctl",
        Layout::Struct(tp::TP_SCHED_WAKING),
        &["pid"]
    ),
    tp!(
        "ufs_sched_wakeup",
        "sched",
        "sched_wakeup",
        Required,
        "tells a wake that raced a fault's switch-out from one that came before it",
        Layout::Struct(tp::TP_SCHED_WAKING),
        &["pid"]
    ),
    tp!(
        "ufs_rseq_update",
        "rseq",
        "rseq_update",
        Optional,
        "thread back in user or guest mode: ends a sleep whose switch-in was not traced",
        Layout::None,
        &[]
    ),
    tp!(
        "ufs_sys_exit_userfaultfd",
        "syscalls",
        "sys_exit_userfaultfd",
        Required,
        "new uffd fds from userfaultfd(2)",
        Layout::Struct(tp::TP_SYS_EXIT),
        &["ret"]
    ),
    tp!(
        "ufs_sys_enter_close",
        "syscalls",
        "sys_enter_close",
        Required,
        "uffd and socket fds going away",
        Layout::SysEnter,
        &["fd"]
    ),
    tp!(
        "ufs_sys_enter_ioctl",
        "syscalls",
        "sys_enter_ioctl",
        Required,
        "page placement (UFFDIO_COPY/ZEROPAGE/CONTINUE/WAKE), registration, USERFAULTFD_IOC_NEW",
        Layout::SysEnter,
        &["fd", "cmd", "arg"]
    ),
    tp!(
        "ufs_sys_exit_ioctl",
        "syscalls",
        "sys_exit_ioctl",
        Required,
        "end of uffd ioctls (result, threads woken)",
        Layout::Struct(tp::TP_SYS_EXIT),
        &["ret"]
    ),
    tp!(
        "ufs_sys_enter_read",
        "syscalls",
        "sys_enter_read",
        Required,
        "fault thread reads uffd messages",
        Layout::SysEnter,
        &["fd", "buf"]
    ),
    tp!(
        "ufs_sys_exit_read",
        "syscalls",
        "sys_exit_read",
        Required,
        "uffd messages decoded (event, flags, address, ptid)",
        Layout::Struct(tp::TP_SYS_EXIT),
        &["ret"]
    ),
    tp!(
        "ufs_sys_enter_sendmsg",
        "syscalls",
        "sys_enter_sendmsg",
        Optional,
        "page requests sent (QEMU return path uses sendmsg)",
        Layout::SysEnter,
        &["fd", "msg"]
    ),
    tp!(
        "ufs_sys_exit_sendmsg",
        "syscalls",
        "sys_exit_sendmsg",
        Optional,
        "page request send result",
        Layout::Struct(tp::TP_SYS_EXIT),
        &["ret"]
    ),
    tp!(
        "ufs_sys_enter_writev",
        "syscalls",
        "sys_enter_writev",
        Optional,
        "page requests sent with writev",
        Layout::SysEnter,
        &["fd", "vec", "vlen"]
    ),
    tp!(
        "ufs_sys_exit_writev",
        "syscalls",
        "sys_exit_writev",
        Optional,
        "writev result",
        Layout::Struct(tp::TP_SYS_EXIT),
        &["ret"]
    ),
    tp!(
        "ufs_sys_enter_sendto",
        "syscalls",
        "sys_enter_sendto",
        Optional,
        "page requests sent with send/sendto",
        Layout::SysEnter,
        &["fd", "buff", "len"]
    ),
    tp!(
        "ufs_sys_exit_sendto",
        "syscalls",
        "sys_exit_sendto",
        Optional,
        "send/sendto result",
        Layout::Struct(tp::TP_SYS_EXIT),
        &["ret"]
    ),
    tp!(
        "ufs_sys_enter_write",
        "syscalls",
        "sys_enter_write",
        Optional,
        "page requests sent with write",
        Layout::SysEnter,
        &["fd", "buf", "count"]
    ),
    tp!(
        "ufs_sys_exit_write",
        "syscalls",
        "sys_exit_write",
        Optional,
        "write result",
        Layout::Struct(tp::TP_SYS_EXIT),
        &["ret"]
    ),
    tp!(
        "ufs_sys_exit_socket",
        "syscalls",
        "sys_exit_socket",
        Optional,
        "socket fds created after the last /proc scan",
        Layout::Struct(tp::TP_SYS_EXIT),
        &["ret"]
    ),
    tp!(
        "ufs_sys_exit_accept",
        "syscalls",
        "sys_exit_accept",
        Optional,
        "socket fds accepted after the last /proc scan",
        Layout::Struct(tp::TP_SYS_EXIT),
        &["ret"]
    ),
    tp!(
        "ufs_sys_exit_accept4",
        "syscalls",
        "sys_exit_accept4",
        Optional,
        "socket fds accepted after the last /proc scan",
        Layout::Struct(tp::TP_SYS_EXIT),
        &["ret"]
    ),
    tp!(
        "ufs_sock_recv_length",
        "sock",
        "sock_recv_length",
        Optional,
        "bytes received per socket",
        Layout::Struct(tp::TP_SOCK_LENGTH),
        &["sk", "family", "protocol", "ret", "flags"]
    ),
    tp!(
        "ufs_sock_send_length",
        "sock",
        "sock_send_length",
        Optional,
        "bytes sent per socket",
        Layout::Struct(tp::TP_SOCK_LENGTH),
        &["sk", "family", "protocol", "ret", "flags"]
    ),
    tp!(
        "ufs_inet_sock_set_state",
        "sock",
        "inet_sock_set_state",
        Optional,
        "forget closed TCP sockets",
        Layout::Struct(tp::TP_INET_SOCK_SET_STATE),
        &["skaddr", "newstate"]
    ),
    tp!(
        "ufs_tcp_probe",
        "tcp",
        "tcp_probe",
        Optional,
        "per-connection RTT and congestion window",
        Layout::Struct(tp::TP_TCP_PROBE),
        &[
            "sport",
            "dport",
            "family",
            "data_len",
            "snd_nxt",
            "snd_una",
            "snd_cwnd",
            "ssthresh",
            "snd_wnd",
            "srtt",
            "rcv_wnd",
            "sock_cookie",
            "skaddr"
        ]
    ),
    tp!(
        "ufs_tcp_retransmit_skb",
        "tcp",
        "tcp_retransmit_skb",
        Optional,
        "TCP retransmissions",
        Layout::Struct(tp::TP_TCP_RETRANSMIT_SKB),
        &["skaddr", "state", "sport", "dport", "family", "err"]
    ),
    tp!(
        "ufs_sched_process_exit",
        "sched",
        "sched_process_exit",
        Optional,
        "thread exits (and per-thread state cleanup)",
        Layout::Struct(tp::TP_SCHED_PROCESS_EXIT),
        &["comm", "pid", "group_dead"]
    ),
    tp!(
        "ufs_task_newtask",
        "task",
        "task_newtask",
        Optional,
        "threads created during the recording",
        Layout::Struct(tp::TP_TASK_NEWTASK),
        &["pid", "comm", "clone_flags"]
    ),
    tp!(
        "ufs_task_rename",
        "task",
        "task_rename",
        Optional,
        "thread names set during the recording (QEMU names its threads late)",
        Layout::Struct(tp::TP_TASK_RENAME),
        &["pid", "newcomm"]
    ),
    // The migration source's programs (ebpf/bpf/source.h): attached instead
    // of the destination's when recording a source (see [`attaches_on`]).
    tp!(
        "ufs_src_enter_recvmsg",
        "syscalls",
        "sys_enter_recvmsg",
        Required,
        "return-path page requests received (source)",
        Layout::SysEnter,
        &["fd", "msg"]
    ),
    tp!(
        "ufs_src_exit_recvmsg",
        "syscalls",
        "sys_exit_recvmsg",
        Required,
        "recvmsg result and the first 64 bytes received (source)",
        Layout::Struct(tp::TP_SYS_EXIT),
        &["ret"]
    ),
    tp!(
        "ufs_src_enter_recvfrom",
        "syscalls",
        "sys_enter_recvfrom",
        Required,
        "return-path page requests received with recv/recvfrom (source)",
        Layout::SysEnter,
        &["fd", "ubuf", "size"]
    ),
    tp!(
        "ufs_src_exit_recvfrom",
        "syscalls",
        "sys_exit_recvfrom",
        Required,
        "recvfrom result and the first 64 bytes received (source)",
        Layout::Struct(tp::TP_SYS_EXIT),
        &["ret"]
    ),
    tp!(
        "ufs_src_enter_read",
        "syscalls",
        "sys_enter_read",
        Required,
        "return-path page requests received with read (source)",
        Layout::SysEnter,
        &["fd", "buf", "count"]
    ),
    tp!(
        "ufs_src_exit_read",
        "syscalls",
        "sys_exit_read",
        Required,
        "read result and the first 64 bytes received (source)",
        Layout::Struct(tp::TP_SYS_EXIT),
        &["ret"]
    ),
    tp!(
        "ufs_src_enter_readv",
        "syscalls",
        "sys_enter_readv",
        Required,
        "return-path page requests received with readv (source)",
        Layout::SysEnter,
        &["fd", "vec", "vlen"]
    ),
    tp!(
        "ufs_src_exit_readv",
        "syscalls",
        "sys_exit_readv",
        Required,
        "readv result and the first 64 bytes received (source)",
        Layout::Struct(tp::TP_SYS_EXIT),
        &["ret"]
    ),
    tp!(
        "ufs_src_enter_sendmsg",
        "syscalls",
        "sys_enter_sendmsg",
        Required,
        "pages sent: the iovecs pointing at whole pages, as runs (source)",
        Layout::SysEnter,
        &["fd", "msg"]
    ),
    tp!(
        "ufs_src_exit_sendmsg",
        "syscalls",
        "sys_exit_sendmsg",
        Required,
        "sendmsg result and the page runs it got through (source)",
        Layout::Struct(tp::TP_SYS_EXIT),
        &["ret"]
    ),
    tp!(
        "ufs_src_enter_writev",
        "syscalls",
        "sys_enter_writev",
        Required,
        "pages sent with writev, as runs (source)",
        Layout::SysEnter,
        &["fd", "vec", "vlen"]
    ),
    tp!(
        "ufs_src_exit_writev",
        "syscalls",
        "sys_exit_writev",
        Required,
        "writev result and the page runs it got through (source)",
        Layout::Struct(tp::TP_SYS_EXIT),
        &["ret"]
    ),
    tp!(
        "ufs_src_enter_sendto",
        "syscalls",
        "sys_enter_sendto",
        Required,
        "sends with send/sendto (source)",
        Layout::SysEnter,
        &["fd", "buff", "len"]
    ),
    tp!(
        "ufs_src_exit_sendto",
        "syscalls",
        "sys_exit_sendto",
        Required,
        "sendto result and the page runs it got through (source)",
        Layout::Struct(tp::TP_SYS_EXIT),
        &["ret"]
    ),
    tp!(
        "ufs_src_enter_write",
        "syscalls",
        "sys_enter_write",
        Required,
        "sends with write (source)",
        Layout::SysEnter,
        &["fd", "buf", "count"]
    ),
    tp!(
        "ufs_src_exit_write",
        "syscalls",
        "sys_exit_write",
        Required,
        "write result and the page runs it got through (source)",
        Layout::Struct(tp::TP_SYS_EXIT),
        &["ret"]
    ),
];

/// The programs only a destination attaches: fault entries, sleeps and
/// wakes, uffd fds, reads and ioctls, and the first bytes of its sends.
const DESTINATION_ONLY: &[&str] = &[
    "ufs_page_fault_user",
    "ufs_page_fault_kernel",
    "ufs_kvm_page_fault",
    "ufs_kvm_try_async_get_page",
    "ufs_kvm_async_pf_not_present",
    "ufs_kvm_async_pf_ready",
    "ufs_kvm_async_pf_repeated_fault",
    "ufs_sched_switch",
    "ufs_sched_waking",
    "ufs_sched_wakeup",
    "ufs_rseq_update",
    "ufs_sys_exit_userfaultfd",
    "ufs_sys_enter_ioctl",
    "ufs_sys_exit_ioctl",
    "ufs_sys_enter_read",
    "ufs_sys_exit_read",
    "ufs_sys_enter_sendmsg",
    "ufs_sys_exit_sendmsg",
    "ufs_sys_enter_writev",
    "ufs_sys_exit_writev",
    "ufs_sys_enter_sendto",
    "ufs_sys_exit_sendto",
    "ufs_sys_enter_write",
    "ufs_sys_exit_write",
];

/// Whether `tp` is attached when recording `side`: the source's programs
/// (`ufs_src_*`) only on a source, [`DESTINATION_ONLY`] only on a
/// destination, the rest (sockets, TCP, threads, close) on both.
pub fn attaches_on(tp: &Tracepoint, side: Side) -> bool {
    match side {
        Side::Source => !DESTINATION_ONLY.contains(&tp.program),
        Side::Destination => !tp.program.starts_with("ufs_src_"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uffdscope_ebpf::OBJECT;

    #[test]
    fn each_side_attaches_its_own_programs() {
        let on = |side| {
            TRACEPOINTS
                .iter()
                .filter(|t| attaches_on(t, side))
                .map(|t| t.program)
                .collect::<Vec<_>>()
        };
        let (src, dst) = (on(Side::Source), on(Side::Destination));
        for name in DESTINATION_ONLY {
            assert!(
                TRACEPOINTS.iter().any(|t| t.program == *name),
                "{name} is not in the catalogue"
            );
            assert!(!src.contains(name) && dst.contains(name), "{name}");
        }
        for sc in [
            "recvmsg", "recvfrom", "read", "readv", "sendmsg", "writev", "sendto", "write",
        ] {
            for dir in ["enter", "exit"] {
                let name = format!("ufs_src_{dir}_{sc}");
                assert!(
                    src.contains(&name.as_str()),
                    "{name} not attached on the source"
                );
                assert!(
                    !dst.contains(&name.as_str()),
                    "{name} attached on the destination"
                );
            }
        }
        for shared in [
            "ufs_tcp_probe",
            "ufs_sock_send_length",
            "ufs_task_rename",
            "ufs_sys_enter_close",
        ] {
            assert!(src.contains(&shared) && dst.contains(&shared), "{shared}");
        }
    }

    #[test]
    fn every_field_read_is_in_its_layout() {
        for t in TRACEPOINTS {
            assert_eq!(
                t.fields().len(),
                t.reads.len(),
                "{t}: a field it reads is not in its layout: {:?}",
                t.reads
            );
        }
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
}
