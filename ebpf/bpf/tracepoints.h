/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * tracepoints.h: context structs of the classic tracepoints uffdscope
 * attaches to, copied field by field from
 * /sys/kernel/tracing/events/<cat>/<name>/format on Linux 6.18. Classic
 * (perf-event) tracepoint programs receive exactly this record, so no CO-RE is
 * needed; the offsets are pinned by the _Static_asserts below. These structs
 * are the one source of the layouts: ebpf/src/generated.rs is generated from
 * them (ebpf/tests/generated.rs), the tracer's catalogue
 * (tracer/src/bpf/catalogue.rs) names the fields each program reads, and
 * `uffdscope check` compares those against the running kernel's format files.
 */
#ifndef UFFDSCOPE_TRACEPOINTS_H
#define UFFDSCOPE_TRACEPOINTS_H

#include <linux/types.h>

struct tp_common {
	__u16 common_type;
	__u8 common_flags;
	__u8 common_preempt_count;
	__s32 common_pid;
};

/* exceptions:page_fault_user */
struct tp_page_fault_user {
	struct tp_common c;
	__u64 address;
	__u64 ip;
	__u64 error_code;
};

/* exceptions:page_fault_kernel (the same class as page_fault_user) */
struct tp_page_fault_kernel {
	struct tp_common c;
	__u64 address;
	__u64 ip;
	__u64 error_code;
};

/* kvm:kvm_page_fault */
struct tp_kvm_page_fault {
	struct tp_common c;
	__u32 vcpu_id;
	__u32 pad;
	__u64 guest_rip;
	__u64 fault_address;
	__u64 error_code;
};

/* kvm:kvm_try_async_get_page, kvm:kvm_async_pf_repeated_fault */
struct tp_kvm_gva_gfn {
	struct tp_common c;
	__u64 gva;
	__u64 gfn;
};

/* kvm:kvm_async_pf_not_present, kvm:kvm_async_pf_ready */
struct tp_kvm_async_pf {
	struct tp_common c;
	__u64 token;
	__u64 gva;
};

/* sched:sched_switch */
struct tp_sched_switch {
	struct tp_common c;
	char prev_comm[16];
	__s32 prev_pid;
	__s32 prev_prio;
	__s64 prev_state;
	char next_comm[16];
	__s32 next_pid;
	__s32 next_prio;
};

/* sched:sched_waking */
struct tp_sched_waking {
	struct tp_common c;
	char comm[16];
	__s32 pid;
	__s32 prio;
	__s32 target_cpu;
};

/* sched:sched_process_exit */
struct tp_sched_process_exit {
	struct tp_common c;
	char comm[16];
	__s32 pid;
	__s32 prio;
	__u8 group_dead;
};

/* syscalls:sys_enter_* : every argument is an 8-byte slot from offset 16 */
struct tp_sys_enter {
	struct tp_common c;
	__s32 __syscall_nr;
	__u32 pad;
	__u64 args[6];
};

/* syscalls:sys_exit_* */
struct tp_sys_exit {
	struct tp_common c;
	__s32 __syscall_nr;
	__u32 pad;
	__s64 ret;
};

/* sock:sock_recv_length, sock:sock_send_length */
struct tp_sock_length {
	struct tp_common c;
	__u64 sk;
	__u16 family;
	__u16 protocol;
	__s32 ret;
	__s32 flags;
};

/* tcp:tcp_probe */
struct tp_tcp_probe {
	struct tp_common c;
	__u8 saddr[28];
	__u8 daddr[28];
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 pad0;
	__u32 mark;
	__u16 data_len;
	__u16 pad1;
	__u32 snd_nxt;
	__u32 snd_una;
	__u32 snd_cwnd;
	__u32 ssthresh;
	__u32 snd_wnd;
	__u32 srtt;
	__u32 rcv_wnd;
	__u32 pad2;
	__u64 sock_cookie;
	__u64 skbaddr;
	__u64 skaddr;
};

/* tcp:tcp_retransmit_skb */
struct tp_tcp_retransmit_skb {
	struct tp_common c;
	__u64 skbaddr;
	__u64 skaddr;
	__s32 state;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 saddr_v6[16];
	__u8 daddr_v6[16];
	__s32 err;
};

/* sock:inet_sock_set_state */
struct tp_inet_sock_set_state {
	struct tp_common c;
	__u64 skaddr;
	__s32 oldstate;
	__s32 newstate;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 protocol;
};

/* task:task_newtask */
struct tp_task_newtask {
	struct tp_common c;
	__s32 pid;
	char comm[16];
	__u64 clone_flags;
	__s16 oom_score_adj;
};

/* task:task_rename */
struct tp_task_rename {
	struct tp_common c;
	__s32 pid;
	char oldcomm[16];
	char newcomm[16];
	__s16 oom_score_adj;
};

#define TP_OFF(t, f, o) _Static_assert(__builtin_offsetof(struct t, f) == (o), #t "." #f)
TP_OFF(tp_page_fault_user, address, 8);
TP_OFF(tp_page_fault_user, error_code, 24);
TP_OFF(tp_page_fault_kernel, address, 8);
TP_OFF(tp_page_fault_kernel, error_code, 24);
TP_OFF(tp_kvm_page_fault, guest_rip, 16);
TP_OFF(tp_kvm_page_fault, fault_address, 24);
TP_OFF(tp_kvm_page_fault, error_code, 32);
TP_OFF(tp_sched_switch, prev_pid, 24);
TP_OFF(tp_sched_switch, prev_state, 32);
TP_OFF(tp_sched_switch, next_pid, 56);
TP_OFF(tp_sched_waking, pid, 24);
TP_OFF(tp_sched_process_exit, pid, 24);
TP_OFF(tp_sched_process_exit, group_dead, 32);
TP_OFF(tp_sys_enter, args, 16);
TP_OFF(tp_sys_exit, ret, 16);
TP_OFF(tp_sock_length, family, 16);
TP_OFF(tp_sock_length, ret, 20);
TP_OFF(tp_sock_length, flags, 24);
TP_OFF(tp_tcp_probe, sport, 64);
TP_OFF(tp_tcp_probe, data_len, 76);
TP_OFF(tp_tcp_probe, snd_nxt, 80);
TP_OFF(tp_tcp_probe, srtt, 100);
TP_OFF(tp_tcp_probe, rcv_wnd, 104);
TP_OFF(tp_tcp_probe, sock_cookie, 112);
TP_OFF(tp_tcp_probe, skaddr, 128);
TP_OFF(tp_tcp_retransmit_skb, skaddr, 16);
TP_OFF(tp_tcp_retransmit_skb, state, 24);
TP_OFF(tp_tcp_retransmit_skb, family, 32);
TP_OFF(tp_tcp_retransmit_skb, err, 76);
TP_OFF(tp_inet_sock_set_state, newstate, 20);
TP_OFF(tp_task_newtask, comm, 12);
TP_OFF(tp_task_newtask, clone_flags, 32);
TP_OFF(tp_task_rename, newcomm, 28);
#undef TP_OFF

#endif /* UFFDSCOPE_TRACEPOINTS_H */
