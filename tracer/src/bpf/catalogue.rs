//! The tracepoint catalogue: every tracepoint the BPF object attaches to,
//! the program attached to it, whether recording needs it, what it is for,
//! and the format fields its program reads.

use std::fmt;

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

pub(crate) const fn field(name: &'static str, offset: u32, size: u32) -> FormatField {
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

#[cfg(test)]
mod tests {
    use super::*;
    use uffdscope_ebpf::OBJECT;

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
