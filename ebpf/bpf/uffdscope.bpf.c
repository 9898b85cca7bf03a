// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * uffdscope.bpf.c: every BPF program of uffdscope, compiled to one object.
 *
 * Classic tracepoints only (no kprobes, fentry or tp_btf on the hosts this
 * targets). Every program filters by the target tgids in ufs_targets, a
 * read-only global the loader patches before load, so the verifier prunes the
 * unused slots and the filter costs a few compares.
 *
 * The fault lifecycle is joined here, per thread, so that one record leaves
 * the kernel per uffd-resolved block instead of one per switch or fault:
 *   page_fault_user / kvm_page_fault  -> task storage f      (last entry only)
 *   sched_switch out (prev blocks)     -> ufs_sleep[tid] SLEEPING, takes f
 *   sched_waking inside a uffd ioctl   -> stamps it WOKEN
 *   sched_switch in (next)             -> RESUMING, takes the switch-in time
 *   rseq_update (back to user mode)    -> emit ufs_fault_wake, back to IDLE
 * A wake can also reach a faulting thread before its switch-out is traced
 * (the handler won the race: PREWOKEN), and a switch-in can go untraced;
 * see sched_waking and finish_sleep. State a thread keeps about itself is
 * in task storage; only what other threads must find by tid (the waker, the
 * switch-in) is in a hash map, one entry per thread updated in place, so the
 * hot path allocates and frees nothing.
 * Record layouts are in events.h.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "events.h"
#include "tracepoints.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* ---- read-only configuration, patched by the loader (tracer/src/bpf.rs) ---- */

/* Target processes; slots past ufs_n_targets are ignored. */
const volatile __u32 ufs_targets[UFS_MAX_TARGETS] = {};
const volatile __u32 ufs_n_targets = 0;
/* Submit with BPF_RB_NO_WAKEUP while less than this many bytes are waiting in
 * the ring, so the consumer is not woken per event (its wake-ups would
 * preempt the traced threads and create the very switches being measured). */
const volatile __u64 ufs_wakeup_bytes = 1 << 20;
/* Minimum gap between two tcp_probe records of one socket (0 = every probe). */
const volatile __u64 ufs_tcp_probe_interval_ns = 0;
/* record --detail minimal: no syscalls:* programs are attached, and
 * sched_waking reads the placing ioctl from the waker's own registers (see
 * ioctl_from_regs). */
const volatile __u32 ufs_minimal = 0;

/* ---- maps ---- */

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);
} ufs_events SEC(".maps");

/* Reservation failures, index = enum ufs_event_kind. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, UFS_EV_KIND_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} ufs_drops SEC(".maps");

/* Counters, index = enum ufs_stat. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, UFS_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} ufs_stats SEC(".maps");

/* uffd fds of the targets, key UFS_FD_KEY(tgid, fd); seeded by userspace from
 * /proc/PID/fd and kept up to date here. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u32);
} ufs_uffd_fds SEC(".maps");

/* Socket fds of the targets, key UFS_FD_KEY(tgid, fd); seeded by userspace and
 * extended here from socket()/accept()/accept4() returns. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u32);
} ufs_sock_fds SEC(".maps");

/* TCP sockets (struct sock address) a target has sent or received on. tcp_probe
 * and tcp_retransmit_skb often run in softirq on some other task, so they are
 * filtered by socket, not by current tgid. LRU because a freed sock is not
 * always seen closing. */
struct sk_info {
	__u32 tgid;
	__u32 pad;
	__u64 last_probe_ts;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct sk_info);
} ufs_sks SEC(".maps");

/* Last fault entry of a thread, not emitted on its own. */
struct fault_entry {
	__u64 ts; /* 0 = none pending */
	__u64 addr;
	__u64 ip;
	__u64 error_code;
	__u32 vcpu_id;
	__u16 source;
	__u16 flags;
};

/* A thread inside an ioctl on a uffd fd (or USERFAULTFD_IOC_NEW). */
struct ioctl_pending {
	__u64 enter_ts; /* 0 = not inside one */
	__u64 arg;
	__u64 start;
	__u64 src;
	__u64 len;
	__u64 mode;
	__u32 cmd;
	__u32 fd;
	__u32 n_woken;
	__u32 n_wakeups;
	__u32 result_off; /* offset of the out field in the arg struct, 0 = none */
	__u32 pad;
};

struct read_pending {
	__u64 enter_ts; /* 0 = not inside a read of a uffd */
	__u64 buf;
	__u32 fd;
	__u32 pad;
};

/* bytes is twice the capture so the verifier can prove offset + length fits
 * while gathering from several iovecs; only the first UFS_SEND_CAPTURE are
 * emitted. */
struct send_pending {
	__u64 enter_ts; /* 0 = not inside a send on a socket of the target */
	__u64 req_len;
	__u32 fd;
	__u32 iovcnt;
	__u16 syscall;
	__u16 captured;
	__u32 pad;
	__u8 bytes[2 * UFS_SEND_CAPTURE];
};

/* A uffd ioctl of this thread that woke someone, waiting for the thread's
 * next moment (see struct ufs_placer_run). */
struct placer_pending {
	__u64 exit_ts; /* 0 = nothing pending */
	__u64 out_ts;  /* preempted at this switch-out, waiting to run again */
	__u64 start;
	__u32 n_woken;
	__u32 pad;
};

/* Everything a target thread keeps about itself between two of its own
 * events. Task storage, not a hash map keyed by tid: every access is by the
 * thread itself (bpf_get_current_task_btf), a lookup in the task's own
 * storage costs a third of a hash lookup plus update on this kind of host,
 * nothing is allocated per event, and the kernel frees it when the thread
 * exits. */
struct task_state {
	struct fault_entry f;
	struct ioctl_pending io;
	struct read_pending rd;
	struct send_pending snd;
	struct placer_pending pl;
	__u32 known; /* the thread has a sleep entry and its bit in ufs_tids */
	__u32 lean_record_next; /* record this thread's next uffd ioctl (lean rule 4) */
	__u64 sp_scratch; /* see on_task_stack */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_state);
} ufs_task SEC(".maps");

/* sleep_entry.state. The thread itself moves IDLE -> SLEEPING (blocking
 * switch-out) and everything back to IDLE; the waker moves IDLE -> PREWOKEN
 * and SLEEPING -> WOKEN; compare-and-swap settles the one race, a wake on
 * another CPU while the thread is switching out. */
#define SLEEP_IDLE 0
#define SLEEP_SLEEPING 1 /* blocked, not woken by a uffd ioctl yet */
#define SLEEP_PREWOKEN 2 /* woken by a uffd ioctl before its switch-out was traced */
#define SLEEP_WOKEN 3	 /* blocked and woken by a uffd ioctl */
#define SLEEP_RESUMING 4 /* switched in after the wake, on its way back to user
			  * mode; emitted there (rseq_update) or at its next event */

/* The part of a target thread's state that other threads reach by tid: the
 * waker (sched_waking gives only the woken pid) and the switch-in (only
 * next_pid). One entry per thread, created at its first fault or blocking
 * switch-out and updated in place until it exits. Fields are written by one
 * side each: f, blocked_ts and block_state by the thread itself, the wake
 * fields by the waker, seen by sched_wakeup. */
struct sleep_entry {
	struct fault_entry f;
	__u64 blocked_ts;
	__u64 woken_ts;
	__u64 ioctl_start;
	__u64 ioctl_len;
	__u32 ioctl_cmd;
	__u32 waker_tid;
	__u32 ioctl_fd;
	__u32 block_state;
	__u32 seen;  /* PREWOKEN and the wake's sched_wakeup has fired since */
	__u32 run_flags; /* RESUMING: the UFS_FW_* bits the switch-in decided */
	__u64 run_ts;    /* RESUMING: the switch-in */
	__u64 state; /* SLEEP_*, changed with compare-and-swap where two sides race
		      * (64 bits: BPF has no 32-bit cmpxchg before -mcpu=v3) */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct sleep_entry);
} ufs_sleep SEC(".maps");

/* One bit per tid that has a sleep entry (PID_MAX_LIMIT is 4M on 64-bit), so
 * that sched_switch and sched_wakeup, which run for every task on the host,
 * answer "not ours" with an array load instead of a hash lookup. A stale bit
 * (reused tid) costs one lookup. */
#define UFS_TID_WORDS 65536
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, UFS_TID_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} ufs_tids SEC(".maps");

#define EAGAIN 11
#define EEXIST 17

/* ---- helpers ---- */

static __always_inline int is_target(__u32 tgid)
{
#pragma unroll
	for (int i = 0; i < UFS_MAX_TARGETS; i++) {
		if (i >= ufs_n_targets)
			return 0;
		if (ufs_targets[i] == tgid)
			return 1;
	}
	return 0;
}

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&ufs_stats, &idx);

	if (c)
		*c += 1;
}

static __always_inline void *ufs_reserve(__u64 size, __u32 kind)
{
	void *e = bpf_ringbuf_reserve(&ufs_events, size, 0);

	if (!e) {
		__u64 *c = bpf_map_lookup_elem(&ufs_drops, &kind);

		if (c)
			*c += 1;
	}
	return e;
}

static __always_inline void ufs_submit(void *e)
{
	__u64 avail = bpf_ringbuf_query(&ufs_events, BPF_RB_AVAIL_DATA);

	bpf_ringbuf_submit(e, avail < ufs_wakeup_bytes ? BPF_RB_NO_WAKEUP : BPF_RB_FORCE_WAKEUP);
}

static __always_inline void fill_hdr(struct ufs_hdr *h, __u16 kind, __u32 tid, __u64 ts)
{
	h->kind = kind;
	h->cpu = (__u16)bpf_get_smp_processor_id();
	h->tid = tid;
	h->ts = ts;
}

static __always_inline void map_put(void *map, const void *key, const void *val)
{
	if (bpf_map_update_elem(map, key, val, BPF_ANY))
		stat_inc(UFS_STAT_MAP_FULL);
}

/* The current thread's own state; created on first use when create is set. */
static __always_inline struct task_state *task_state(int create)
{
	struct task_struct *t = bpf_get_current_task_btf();

	return bpf_task_storage_get(&ufs_task, t, 0,
				    create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

static __always_inline int tid_known(__u32 tid)
{
	__u32 w = (tid >> 6) & (UFS_TID_WORDS - 1);
	__u64 *bits = bpf_map_lookup_elem(&ufs_tids, &w);

	return bits && (*bits & (1ULL << (tid & 63)));
}

static __always_inline void tid_mark(__u32 tid, int on)
{
	__u32 w = (tid >> 6) & (UFS_TID_WORDS - 1);
	__u64 *bits = bpf_map_lookup_elem(&ufs_tids, &w);

	if (!bits)
		return;
	if (on)
		__sync_fetch_and_or(bits, 1ULL << (tid & 63));
	else
		__sync_fetch_and_and(bits, ~(1ULL << (tid & 63)));
}

/* The current thread's sleep entry, created (IDLE) if it has none yet. */
static __always_inline struct sleep_entry *own_sleep(__u32 tid, struct task_state *ts)
{
	struct sleep_entry *e = bpf_map_lookup_elem(&ufs_sleep, &tid);

	if (e || !ts)
		return e;
	struct sleep_entry s = {};
	long err = bpf_map_update_elem(&ufs_sleep, &tid, &s, BPF_NOEXIST);

	if (err && err != -EEXIST) {
		stat_inc(UFS_STAT_MAP_FULL);
		return 0;
	}
	if (!ts->known) {
		ts->known = 1;
		tid_mark(tid, 1);
	}
	return bpf_map_lookup_elem(&ufs_sleep, &tid);
}

static __always_inline void emit_fault_wake(__u32 tid, const struct fault_entry *f, __u64 blocked_ts,
					    __u32 block_state, __u64 woken_ts, __u64 run_ts,
					    __u64 resume_ts, __u32 waker_tid, __u32 cmd, __u32 fd,
					    __u64 start, __u64 len, __u16 flags)
{
	struct ufs_fault_wake *e = ufs_reserve(sizeof(*e), UFS_EV_FAULT_WAKE);

	if (!e)
		return;
	fill_hdr(&e->hdr, UFS_EV_FAULT_WAKE, tid, run_ts ? run_ts : woken_ts);
	e->fault_ts = f->ts;
	e->fault_addr = f->addr;
	e->fault_ip = f->ip;
	e->fault_error_code = f->error_code;
	e->blocked_ts = blocked_ts;
	e->woken_ts = woken_ts;
	e->run_ts = run_ts;
	e->resume_ts = resume_ts;
	e->ioctl_start = start;
	e->ioctl_len = len;
	e->ioctl_cmd = cmd;
	e->waker_tid = waker_tid;
	e->ioctl_fd = fd;
	e->vcpu_id = f->vcpu_id;
	e->block_state = block_state;
	e->fault_source = f->source;
	e->flags = f->flags | flags;
	ufs_submit(e);
}

/* Moves the thread's pending fault entry into its sleep entry: the fault is
 * the one this sleep (or this pre-wake) belongs to. */
static __always_inline void take_fault(struct sleep_entry *e, struct task_state *ts)
{
	if (ts && ts->f.ts) {
		e->f = ts->f;
		ts->f.ts = 0;
	} else {
		__builtin_memset(&e->f, 0, sizeof(e->f));
	}
}

/* x86-64 struct pt_regs (the user registers saved at syscall entry, at the
 * top of the task's kernel stack); its layout is the ptrace ABI. */
struct ufs_pt_regs {
	__u64 r15, r14, r13, r12, bp, bx, r11, r10, r9, r8;
	__u64 ax, cx, dx, si, di, orig_ax;
	__u64 ip, cs, flags, sp, ss;
};

#define UFS_NR_IOCTL 16 /* __NR_ioctl on x86-64 */

/* The current task's saved user registers. */
static __always_inline const struct ufs_pt_regs *current_regs(void)
{
	return (const struct ufs_pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

/* Whether the program runs on the current task's own kernel stack, i.e. in
 * the task's context and not in an interrupt that arrived while it ran.
 * Kernel stacks are THREAD_SIZE-aligned (16 KiB on x86-64, 32 KiB with KASAN)
 * and a system call's frames stay in the top few KiB of the stack, next to
 * the saved user registers (bpf_task_pt_regs), while an interrupt runs on the
 * CPU's own IRQ stack: a sched_waking whose frame is not in the 16 KiB block
 * of the registers comes from an interrupt. Addresses become plain numbers by
 * a round trip through map memory (loading as root allows the store).
 * The JIT runs a tracing program whose own stack reaches 64 bytes on a
 * private per-CPU stack instead (kernel 6.13 on), where this tells nothing:
 * sched_waking keeps its stack smaller (the verifier log's "stack depth"),
 * which tracer/tests/bpf_load.rs would catch if lost. */
#define UFS_STACK_BLOCK_SHIFT 14

static __always_inline int on_task_stack(struct task_state *ts, const struct ufs_pt_regs *regs)
{
	volatile __u8 here = 0;

	ts->sp_scratch = (__u64)&here;
	__u64 frame = *(volatile __u64 *)&ts->sp_scratch >> UFS_STACK_BLOCK_SHIFT;

	ts->sp_scratch = (__u64)regs;
	return frame == *(volatile __u64 *)&ts->sp_scratch >> UFS_STACK_BLOCK_SHIFT;
}

/* record --detail minimal: no sys_enter_ioctl program noted the placing
 * ioctl, so the waker's saved user registers tell it (system call number,
 * command, fd, argument), and the range is read from the argument, the
 * struct's start and len (uffdio_copy and uffdio_move keep src between
 * them). Only the wake's join needs it. */
static __always_inline int in_uffd_ioctl(const struct ufs_pt_regs *regs)
{
	__u32 cmd = (__u32)regs->si;

	return regs->orig_ax == UFS_NR_IOCTL && ((cmd >> 8) & 0xff) == UFS_UFFD_IOCTL_TYPE &&
	       cmd != UFS_USERFAULTFD_IOC_NEW;
}

static __always_inline void ioctl_from_regs(struct ioctl_pending *io, const struct ufs_pt_regs *regs)
{
	__u32 cmd = (__u32)regs->si;
	const __u8 *uarg = (const __u8 *)regs->dx;
	__u64 len_off = cmd == UFS_UFFDIO_COPY || cmd == UFS_UFFDIO_MOVE ? 16 : 8;

	io->cmd = cmd;
	io->fd = (__u32)regs->di;
	if (bpf_probe_read_user(&io->start, 8, uarg) ||
	    bpf_probe_read_user(&io->len, 8, uarg + len_off)) {
		/* Unreadable: the range check will take the wake on trust. */
		io->start = 0;
		io->len = 0;
	}
}

/* Whether a wake from a uffd ioctl on [start, start + len) is the wake of the
 * fault f (the wake itself came from the ioctl, see on_task_stack): a fault
 * pending at a host address must lie in that range; otherwise the ioctl woke
 * the thread for something else (an mmap_lock or page-lock waiter). A KVM
 * entry holds a guest-physical address, which the range cannot be compared
 * with, and an ioctl whose range was not read (len 0) cannot tell either:
 * those are taken on trust. A thread with no entry may be in a fault taken by
 * get_user_pages (O_DIRECT I/O into guest RAM), which has none, but it may as
 * well be a system call waiting for mmap_lock that the ioctl released
 * (UFFDIO_UNREGISTER takes it for writing): it is taken only from an ioctl
 * that resolves faults. */
static __always_inline int resolves_faults(__u32 cmd)
{
	return cmd == UFS_UFFDIO_COPY || cmd == UFS_UFFDIO_ZEROPAGE || cmd == UFS_UFFDIO_CONTINUE ||
	       cmd == UFS_UFFDIO_WAKE || cmd == UFS_UFFDIO_MOVE || cmd == UFS_UFFDIO_POISON;
}

static __always_inline int wake_matches(const struct fault_entry *f, __u32 cmd, __u64 start,
					__u64 len)
{
	if (!f->ts)
		return resolves_faults(cmd);
	if (f->source == UFS_FAULT_KVM || !len)
		return 1;
	return f->addr >= start && f->addr - start < len;
}

/* Called by the thread itself when it is running, i.e. not through a traced
 * switch-in: at its next fault, switch-out, return to user mode or exit.
 * Whatever its sleep entry still holds is over:
 *  - PREWOKEN: the thread never left the CPU for that wake (it came before
 *    __schedule read the sleeping state): WOKEN_BEFORE_BLOCK, with the fault
 *    still pending in the thread's own state;
 *  - SLEEPING or WOKEN: a sleep whose switch-in the kernel did not report.
 *    Tracepoint programs do not see every switch: some hosts never run them
 *    while the current task is one of their own agent threads, so a switch
 *    from such a task to the woken thread is invisible. A woken one is
 *    emitted with RUN_UNSEEN rather than dropped, and the entry must not
 *    stay stale to swallow the thread's next sleep.
 *  - RESUMING: switched in, but back in user mode without rseq_update (the
 *    thread has no rseq area) or not back at all (it blocked again first):
 *    emitted with resume_ts 0, the analyzer falls back to the switch-in.
 * run_ts is when the caller saw the thread running, an upper bound on the
 * switch-in: its return to user or guest mode (rseq_update, a few µs after
 * the switch-in; resume_ts is then the same moment), else its next
 * switch-out, fault or exit (resume_ts 0). */
static __always_inline void finish_sleep(__u32 tid, struct sleep_entry *e, struct task_state *ts,
					 __u64 run_ts, __u64 resume_ts)
{
	__u64 st = e->state;

	if (st == SLEEP_IDLE)
		return;
	if (st == SLEEP_RESUMING) {
		emit_fault_wake(tid, &e->f, e->blocked_ts, e->block_state, e->woken_ts, e->run_ts,
				resume_ts, e->waker_tid, e->ioctl_cmd, e->ioctl_fd, e->ioctl_start,
				e->ioctl_len, (__u16)e->run_flags);
		e->state = SLEEP_IDLE;
		return;
	}
	if (st == SLEEP_PREWOKEN) {
		/* Without a pending fault the wake was not a fault's. */
		take_fault(e, ts);
		if (wake_matches(&e->f, e->ioctl_cmd, e->ioctl_start, e->ioctl_len))
			emit_fault_wake(tid, &e->f, 0, 0, e->woken_ts, 0, 0, e->waker_tid,
					e->ioctl_cmd, e->ioctl_fd, e->ioctl_start, e->ioctl_len,
					UFS_FW_WOKEN_BEFORE_BLOCK);
		else
			stat_inc(UFS_STAT_WAKE_OUT_OF_RANGE);
		e->state = SLEEP_IDLE;
		return;
	}
	/* A uffd ioctl may be waking a stale SLEEPING entry right now (the
	 * thread is past that sleep but not yet past the window in which a
	 * wake for its next fault could come); whichever state wins is
	 * reported. */
	if (st == SLEEP_SLEEPING &&
	    __sync_val_compare_and_swap(&e->state, SLEEP_SLEEPING, SLEEP_IDLE) == SLEEP_SLEEPING) {
		stat_inc(UFS_STAT_RUN_UNSEEN);
		stat_inc(UFS_STAT_SLEEP_OTHER);
		return;
	}
	stat_inc(UFS_STAT_RUN_UNSEEN);
	emit_fault_wake(tid, &e->f, e->blocked_ts, e->block_state, e->woken_ts, run_ts, resume_ts,
			e->waker_tid, e->ioctl_cmd, e->ioctl_fd, e->ioctl_start, e->ioctl_len,
			UFS_FW_RUN_UNSEEN |
				(e->woken_ts < e->blocked_ts ? UFS_FW_WOKEN_BEFORE_SWITCH : 0));
	e->state = SLEEP_IDLE;
}

/* A thread that faults is running, so any sleep it still has is over. Its
 * first fault gives it a sleep entry, so a waker finds it by tid. */
static __always_inline void put_fault(__u32 tid, struct fault_entry *f)
{
	struct task_state *ts = task_state(1);

	if (!ts)
		return;
	struct sleep_entry *e = own_sleep(tid, ts);

	if (e)
		finish_sleep(tid, e, ts, f->ts, 0);
	ts->f = *f;
}

/* ---- fault entry ---- */

/* A fault of the current thread at a host virtual address. */
static __always_inline void put_host_fault(__u64 addr, __u64 ip, __u64 error_code, __u16 source)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!is_target(id >> 32))
		return;
	struct fault_entry f = {
		.ts = bpf_ktime_get_ns(),
		.addr = addr,
		.ip = ip,
		.error_code = error_code,
		.source = source,
	};
	put_fault((__u32)id, &f);
}

SEC("tracepoint/exceptions/page_fault_user")
int ufs_page_fault_user(struct tp_page_fault_user *ctx)
{
	put_host_fault(ctx->address, ctx->ip, ctx->error_code, UFS_FAULT_USER);
	return 0;
}

/* A fault taken in kernel mode on a user address (copy_to_user and the like
 * into guest RAM): with its entry the fault has a start (service latency)
 * and its wake is checked against the placed range (wake_matches). */
SEC("tracepoint/exceptions/page_fault_kernel")
int ufs_page_fault_kernel(struct tp_page_fault_kernel *ctx)
{
	put_host_fault(ctx->address, ctx->ip, ctx->error_code, UFS_FAULT_KERNEL);
	return 0;
}

SEC("tracepoint/kvm/kvm_page_fault")
int ufs_kvm_page_fault(struct tp_kvm_page_fault *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!is_target(id >> 32))
		return 0;
	__u32 tid = (__u32)id;
	struct fault_entry f = {
		.ts = bpf_ktime_get_ns(),
		.addr = ctx->fault_address,
		.ip = ctx->guest_rip,
		.error_code = ctx->error_code,
		.vcpu_id = ctx->vcpu_id,
		.source = UFS_FAULT_KVM,
	};
	put_fault(tid, &f);
	return 0;
}

static __always_inline void emit_kvm_async(__u32 op, __u64 token, __u64 gva, __u64 gfn)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!is_target(id >> 32))
		return;
	__u32 tid = (__u32)id;
	if (op == UFS_KVM_TRY_ASYNC_GET_PAGE) {
		struct task_state *ts = task_state(0);

		if (ts && ts->f.ts)
			ts->f.flags |= UFS_FW_KVM_ASYNC;
	}
	struct ufs_kvm_async_pf *e = ufs_reserve(sizeof(*e), UFS_EV_KVM_ASYNC_PF);

	if (!e)
		return;
	fill_hdr(&e->hdr, UFS_EV_KVM_ASYNC_PF, tid, bpf_ktime_get_ns());
	e->op = op;
	e->pad = 0;
	e->token = token;
	e->gva = gva;
	e->gfn = gfn;
	ufs_submit(e);
}

SEC("tracepoint/kvm/kvm_try_async_get_page")
int ufs_kvm_try_async_get_page(struct tp_kvm_gva_gfn *ctx)
{
	emit_kvm_async(UFS_KVM_TRY_ASYNC_GET_PAGE, 0, ctx->gva, ctx->gfn);
	return 0;
}

SEC("tracepoint/kvm/kvm_async_pf_not_present")
int ufs_kvm_async_pf_not_present(struct tp_kvm_async_pf *ctx)
{
	emit_kvm_async(UFS_KVM_ASYNC_PF_NOT_PRESENT, ctx->token, ctx->gva, 0);
	return 0;
}

SEC("tracepoint/kvm/kvm_async_pf_ready")
int ufs_kvm_async_pf_ready(struct tp_kvm_async_pf *ctx)
{
	emit_kvm_async(UFS_KVM_ASYNC_PF_READY, ctx->token, ctx->gva, 0);
	return 0;
}

SEC("tracepoint/kvm/kvm_async_pf_repeated_fault")
int ufs_kvm_async_pf_repeated_fault(struct tp_kvm_gva_gfn *ctx)
{
	emit_kvm_async(UFS_KVM_ASYNC_PF_REPEATED, 0, ctx->gva, ctx->gfn);
	return 0;
}

/* ---- the placing thread after a placement that woke someone ---- */

/* QEMU accounts a vCPU's blocktime in the placing thread once UFFDIO_COPY has
 * returned; the wake it just did often preempts that thread on its way out.
 * One record per waking ioctl gives the thread's first moment afterwards: its
 * return to user mode after a preemption, its blocking switch-out, or its next
 * traced syscall. Nothing is armed for ioctls that woke nobody. */
static __always_inline void placer_arm(struct task_state *ts, __u64 exit_ts)
{
	if (!ts->io.n_woken)
		return;
	ts->pl.exit_ts = exit_ts;
	ts->pl.out_ts = 0;
	ts->pl.start = ts->io.start;
	ts->pl.n_woken = ts->io.n_woken;
}

static __always_inline void placer_emit(__u32 tid, struct task_state *ts, __u32 how, __u64 at)
{
	struct ufs_placer_run *e = ufs_reserve(sizeof(*e), UFS_EV_PLACER_RUN);

	if (e) {
		fill_hdr(&e->hdr, UFS_EV_PLACER_RUN, tid, at);
		e->ioctl_exit_ts = ts->pl.exit_ts;
		e->out_ts = ts->pl.out_ts;
		e->ioctl_start = ts->pl.start;
		e->how = how;
		e->n_woken = ts->pl.n_woken;
		ufs_submit(e);
	}
	ts->pl.exit_ts = 0;
}

/* The thread enters a traced syscall: a pending placement ends here, unless
 * it is waiting to run again after a preemption (then this is the first
 * later moment seen). */
static __always_inline void placer_syscall(__u32 tid, struct task_state *ts)
{
	if (ts->pl.exit_ts)
		placer_emit(tid, ts, ts->pl.out_ts ? UFS_PLACER_PREEMPTED : UFS_PLACER_SYSCALL,
			    bpf_ktime_get_ns());
}

/* The thread switches out with prev_state `state` (0 = preempted). */
static __always_inline void placer_switch_out(__u32 tid, struct task_state *ts, __u32 state,
					      __u64 now)
{
	if (!ts || !ts->pl.exit_ts)
		return;
	if (!now)
		now = bpf_ktime_get_ns();
	if (ts->pl.out_ts)
		placer_emit(tid, ts, UFS_PLACER_PREEMPTED, now);
	else if (state)
		placer_emit(tid, ts, UFS_PLACER_BLOCKED, now);
	else {
		ts->pl.out_ts = now;
		/* Its return to user mode is found through its tid's bit. */
		own_sleep(tid, ts);
	}
}

/* ---- block / wake / run join ---- */

/* Bits of sched_switch.prev_state below TASK_REPORT_MAX (0x100): non-zero
 * means the task left the CPU in a sleeping state; 0 or exactly 0x100 ("R+")
 * means it was preempted while runnable. */
#define PREV_STATE_SLEEP_MASK 0xff

/* Switch-out of a target thread (current == prev). */
static __always_inline void switch_out(__u32 prev, __u32 state, __u64 now)
{
	struct task_state *ts = task_state(state != 0);
	struct sleep_entry *e;

	placer_switch_out(prev, ts, state, now);

	if (state)
		e = own_sleep(prev, ts);
	else
		e = tid_known(prev) ? bpf_map_lookup_elem(&ufs_sleep, &prev) : 0;
	if (!e)
		return;
	/* Preempted between its switch-in and its return to user mode: the
	 * resume is still to come, and the preemption is part of the wait. */
	if (!state && e->state == SLEEP_RESUMING)
		return;
	if (e->state == SLEEP_PREWOKEN && state && !e->seen) {
		/* Woken while switching out: prev_state was read before the
		 * wake, and the wake's sched_wakeup comes only after this
		 * switch. This switch-out belongs to that fault. Only this
		 * thread moves an entry out of PREWOKEN. */
		take_fault(e, ts);
		e->blocked_ts = now;
		e->block_state = state;
		if (wake_matches(&e->f, e->ioctl_cmd, e->ioctl_start, e->ioctl_len)) {
			e->state = SLEEP_WOKEN;
			return;
		}
		/* Not its fault's wake: the thread sleeps on with its fault, as
		 * if the wake had not come (no waker moves an entry out of
		 * PREWOKEN, so a plain store is safe). */
		stat_inc(UFS_STAT_WAKE_OUT_OF_RANGE);
		e->state = SLEEP_SLEEPING;
		return;
	}
	/* prev is running, so whatever the entry still holds is over. */
	if (e->state != SLEEP_IDLE)
		finish_sleep(prev, e, ts, now ? now : bpf_ktime_get_ns(), 0);
	if (!state)
		return;
	take_fault(e, ts);
	e->blocked_ts = now;
	e->block_state = state;
	/* A waker on another CPU may be stamping this entry PREWOKEN at this
	 * very moment (its sched_waking ran before this tracepoint); exactly
	 * one of the two moves out of IDLE wins. */
	if (__sync_val_compare_and_swap(&e->state, SLEEP_IDLE, SLEEP_SLEEPING) == SLEEP_PREWOKEN)
		e->state = SLEEP_WOKEN;
}

/* Switch-in of a thread with a sleep entry. */
static __always_inline void switch_in(__u32 next, __u64 now)
{
	struct sleep_entry *e = bpf_map_lookup_elem(&ufs_sleep, &next);

	if (!e)
		return;
	__u64 st = e->state;

	if (st == SLEEP_WOKEN) {
		e->run_ts = now ? now : bpf_ktime_get_ns();
		/* Whichever CPU moved the entry out of IDLE first, the times
		 * tell the order. */
		e->run_flags = e->woken_ts < e->blocked_ts ? UFS_FW_WOKEN_BEFORE_SWITCH : 0;
		e->state = SLEEP_RESUMING;
	} else if (st == SLEEP_SLEEPING) {
		/* Woken by anything but a uffd ioctl. */
		stat_inc(UFS_STAT_SLEEP_OTHER);
		e->state = SLEEP_IDLE;
	}
	/* PREWOKEN: woken while preempted in a sleeping state; the thread
	 * runs on without blocking and finishes the entry itself. */
}

SEC("tracepoint/sched/sched_switch")
int ufs_sched_switch(struct tp_sched_switch *ctx)
{
	__u64 now = 0;

	if (is_target(bpf_get_current_pid_tgid() >> 32)) {
		__u32 state = (__u32)(ctx->prev_state & PREV_STATE_SLEEP_MASK);

		/* A preempted thread needs no time (the clock read is one of
		 * the dearer helpers on a VM). */
		if (state)
			now = bpf_ktime_get_ns();
		switch_out((__u32)ctx->prev_pid, state, now);
	}
	__u32 next = (__u32)ctx->next_pid;

	if (next && tid_known(next))
		switch_in(next, now);
	return 0;
}

SEC("tracepoint/sched/sched_waking")
int ufs_sched_waking(struct tp_sched_waking *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!is_target(id >> 32))
		return 0;
	const struct ufs_pt_regs *regs;
	struct task_state *ts;

	if (ufs_minimal) {
		/* Most wakes of a target's threads are futex and poll wakes:
		 * they leave on the registers alone. */
		regs = current_regs();
		if (!in_uffd_ioctl(regs) || !(ts = task_state(1)))
			return 0;
		ioctl_from_regs(&ts->io, regs);
	} else {
		/* The ioctl's entry noted it in the waker's own state. */
		ts = task_state(0);
		if (!ts || !ts->io.enter_ts || ts->io.cmd == UFS_USERFAULTFD_IOC_NEW)
			return 0;
		regs = current_regs();
	}
	struct ioctl_pending *io = &ts->io;

	if (!on_task_stack(ts, regs)) {
		/* An interrupt's wake (a timer ending a futex or poll sleep), not
		 * the ioctl's. */
		stat_inc(UFS_STAT_WAKE_IN_INTERRUPT);
		return 0;
	}
	io->n_wakeups += 1;

	__u32 pid = (__u32)ctx->pid;

	if (!tid_known(pid))
		return 0;
	struct sleep_entry *e = bpf_map_lookup_elem(&ufs_sleep, &pid);

	if (!e)
		return 0;
	__u64 st = e->state;

	/* Woken before its switch-out was traced (IDLE; the handler won the
	 * race): either the thread never leaves the CPU for this fault (the
	 * wake came before __schedule read its state), or it is switching out
	 * right now with the sleeping state it read before the wake.
	 * sched_switch tells them apart with sched_wakeup, which comes before
	 * the thread can run on in the first case and only after the switch in
	 * the second. PREWOKEN or WOKEN: already woken, a wake counts once. */
	if (st != SLEEP_IDLE && st != SLEEP_SLEEPING)
		return 0;
	/* A blocked thread's fault is in its entry already: check it now. An
	 * IDLE one's is still in its own task storage: it checks at its
	 * switch-out or next event (switch_out, finish_sleep). */
	if (st == SLEEP_SLEEPING && !wake_matches(&e->f, io->cmd, io->start, io->len)) {
		stat_inc(UFS_STAT_WAKE_OUT_OF_RANGE);
		return 0;
	}
	e->woken_ts = bpf_ktime_get_ns();
	e->waker_tid = (__u32)id;
	e->ioctl_cmd = io->cmd;
	e->ioctl_fd = io->fd;
	e->ioctl_start = io->start;
	e->ioctl_len = io->len;
	e->seen = 0;
	/* The thread moves the entry IDLE -> SLEEPING when it switches out,
	 * and a stale SLEEPING entry (switch-in not traced) back to IDLE when
	 * it runs into its next event; retry against what it did. */
#pragma unroll
	for (int i = 0; i < 3; i++) {
		__u64 want = st == SLEEP_SLEEPING ? SLEEP_WOKEN : SLEEP_PREWOKEN;
		__u64 old = __sync_val_compare_and_swap(&e->state, st, want);

		if (old == st) {
			io->n_woken += 1;
			return 0;
		}
		if (old != SLEEP_IDLE && old != SLEEP_SLEEPING)
			return 0;
		st = old;
	}
	return 0;
}

SEC("tracepoint/sched/sched_wakeup")
int ufs_sched_wakeup(struct tp_sched_waking *ctx)
{
	__u32 pid = (__u32)ctx->pid;

	if (!tid_known(pid))
		return 0;
	struct sleep_entry *e = bpf_map_lookup_elem(&ufs_sleep, &pid);

	if (e && e->state == SLEEP_PREWOKEN)
		e->seen = 1;
	return 0;
}

/* A thread with rseq registered (glibc does it for every thread) passes here
 * on its way back to user mode, or into the guest for a KVM vCPU, after each
 * switch-in. Its switch-in has normally finished its sleep already; a sleep
 * still there means the switch-in was not traced, and this is the closest
 * later moment the thread is known to run. */
SEC("tracepoint/rseq/rseq_update")
int ufs_rseq_update(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!is_target(id >> 32))
		return 0;
	__u32 tid = (__u32)id;

	if (!tid_known(tid))
		return 0;
	struct task_state *ts = task_state(0);
	__u64 now = 0;

	if (ts && ts->pl.exit_ts && ts->pl.out_ts) {
		now = bpf_ktime_get_ns();
		placer_emit(tid, ts, UFS_PLACER_PREEMPTED, now);
	}
	struct sleep_entry *e = bpf_map_lookup_elem(&ufs_sleep, &tid);

	if (!e || e->state == SLEEP_IDLE)
		return 0;
	if (!now)
		now = bpf_ktime_get_ns();
	/* RESUMING: the resume this record waited for. Anything else: the
	 * switch-in was not traced, and this is both its bound and the resume. */
	finish_sleep(tid, e, ts, now, now);
	return 0;
}

/* ---- uffd fds ---- */

static __always_inline void emit_uffd_fd(__u32 tid, __u32 tgid, __u32 fd, __u32 op)
{
	struct ufs_uffd_fd *e = ufs_reserve(sizeof(*e), UFS_EV_UFFD_FD);

	if (!e)
		return;
	fill_hdr(&e->hdr, UFS_EV_UFFD_FD, tid, bpf_ktime_get_ns());
	e->fd = fd;
	e->tgid = tgid;
	e->op = op;
	e->pad = 0;
	ufs_submit(e);
}

static __always_inline void add_uffd_fd(__u32 tid, __u32 tgid, __s64 fd, __u32 op)
{
	if (fd < 0)
		return;
	__u64 key = UFS_FD_KEY(tgid, fd);
	__u32 one = 1;

	map_put(&ufs_uffd_fds, &key, &one);
	emit_uffd_fd(tid, tgid, (__u32)fd, op);
}

SEC("tracepoint/syscalls/sys_exit_userfaultfd")
int ufs_sys_exit_userfaultfd(struct tp_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!is_target(id >> 32))
		return 0;
	add_uffd_fd((__u32)id, id >> 32, ctx->ret, UFS_UFFD_FD_SYSCALL);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_close")
int ufs_sys_enter_close(struct tp_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!is_target(id >> 32))
		return 0;
	__u32 fd = (__u32)ctx->args[0];
	__u64 key = UFS_FD_KEY(id >> 32, fd);

	if (bpf_map_delete_elem(&ufs_uffd_fds, &key) == 0)
		emit_uffd_fd((__u32)id, id >> 32, fd, UFS_UFFD_FD_CLOSE);
	bpf_map_delete_elem(&ufs_sock_fds, &key);
	return 0;
}

/* ---- placements counted in bins (events.h, ufs_bin_key) ---- */

/* Count background placements instead of recording them; patched by the loader. */
const volatile __u32 ufs_lean = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct ufs_bin_key);
	__type(value, struct ufs_bin_val);
} ufs_bins SEC(".maps");

/* A page whose uffd message a target read and no recorded placement has
 * covered yet. LRU: a page never placed (the target exited) ages out. */
struct lean_page {
	__u64 page;
	__u32 tgid;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct lean_page);
	__type(value, __u32);
} ufs_lean_pages SEC(".maps");

/* uffd read()s entered and not yet returned, over all targets. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __s64);
} ufs_lean_reads SEC(".maps");

#define UFS_PAGE 4096ULL

static __always_inline void lean_reads_add(__s64 d)
{
	__u32 zero = 0;
	__s64 *n = bpf_map_lookup_elem(&ufs_lean_reads, &zero);

	if (n)
		__sync_fetch_and_add(n, d);
}

static __always_inline int lean_read_in_flight(void)
{
	__u32 zero = 0;
	__s64 *n = bpf_map_lookup_elem(&ufs_lean_reads, &zero);

	return !n || *n > 0;
}

/* A page-fault message was read: its page is pending. */
static __always_inline void lean_page_read(__u32 tgid, const struct ufs_uffd_msg *m)
{
	if (m->event != 0x12)
		return;
	struct lean_page k = { .page = m->arg1 & ~(UFS_PAGE - 1), .tgid = tgid };
	__u32 one = 1;

	map_put(&ufs_lean_pages, &k, &one);
}

/* Whether [start, start + len) covers a pending page; removes them when
 * resolve is set. A placement longer than UFS_LEAN_MAX_PAGES counts as
 * covering one (it is recorded). */
static __always_inline int lean_pages(__u32 tgid, __u64 start, __u64 len, int resolve)
{
	struct lean_page k = { .tgid = tgid };
	int found = 0;

	if (len > UFS_LEAN_MAX_PAGES * UFS_PAGE)
		return 1;
	start &= ~(UFS_PAGE - 1);
#pragma unroll
	for (int i = 0; i < UFS_LEAN_MAX_PAGES; i++) {
		if (i * UFS_PAGE >= len)
			break;
		k.page = start + i * UFS_PAGE;
		if (!bpf_map_lookup_elem(&ufs_lean_pages, &k))
			continue;
		found = 1;
		if (!resolve)
			break;
		bpf_map_delete_elem(&ufs_lean_pages, &k);
	}
	return found;
}

/* Adds a placement to its bin; 0 when the bin map is full (record it). */
static __always_inline int lean_add(__u32 tid, const struct ioctl_pending *p, __u64 enter_ts,
				    __u64 exit_ts)
{
	struct ufs_bin_key k = {
		.bin = exit_ts / UFS_BIN_NS, .len = p->len, .tid = tid, .cmd = p->cmd,
	};
	struct ufs_bin_val *v = bpf_map_lookup_elem(&ufs_bins, &k);

	if (!v) {
		struct ufs_bin_val z = { .first_exit_ts = exit_ts };
		long err = bpf_map_update_elem(&ufs_bins, &k, &z, BPF_NOEXIST);

		if (err && err != -EEXIST) {
			stat_inc(UFS_STAT_MAP_FULL);
			return 0;
		}
		v = bpf_map_lookup_elem(&ufs_bins, &k);
		if (!v)
			return 0;
	}
	/* Only this thread adds to a bin keyed by its tid: no atomics. */
	v->count += 1;
	v->ioctl_ns += exit_ts - enter_ts;
	v->last_exit_ts = exit_ts;
	return 1;
}

/* Decides a uffd ioctl at its exit: 1 when it was counted in a bin (no
 * record), 0 when it must be recorded. The rules, in order, mirror
 * trace/src/lean.rs (LeanFilter::place). */
static __always_inline int lean_count(struct task_state *ts, __u32 tid, __u32 tgid,
				      const struct ioctl_pending *p, __s64 ret, __s64 result,
				      __u64 enter_ts)
{
	int places = p->cmd == UFS_UFFDIO_COPY || p->cmd == UFS_UFFDIO_ZEROPAGE;
	int follows = ts->lean_record_next;

	ts->lean_record_next = 0;
	if (!places || ret != 0 || result != (__s64)p->len) {
		if (places || p->cmd == UFS_UFFDIO_CONTINUE)
			lean_pages(tgid, p->start, p->len, 1);
		return 0;
	}
	if (p->n_woken || lean_pages(tgid, p->start, p->len, 1) || lean_read_in_flight()) {
		ts->lean_record_next = 1;
		return 0;
	}
	if (follows)
		return 0;
	return lean_add(tid, p, enter_ts, bpf_ktime_get_ns());
}

/* ---- ioctl on uffd fds ---- */

SEC("tracepoint/syscalls/sys_enter_ioctl")
int ufs_sys_enter_ioctl(struct tp_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!is_target(id >> 32))
		return 0;
	__u32 fd = (__u32)ctx->args[0];
	__u32 cmd = (__u32)ctx->args[1];
	__u64 arg = ctx->args[2];

	/* USERFAULTFD_IOC_NEW is issued on /dev/userfaultfd, not on a uffd;
	 * the 0xAA ioctl type is reserved for userfaultfd, so the number alone
	 * identifies it. Everything else (KVM_RUN, ...) leaves here. */
	if (((cmd >> 8) & 0xff) != UFS_UFFD_IOCTL_TYPE)
		return 0;
	if (cmd != UFS_USERFAULTFD_IOC_NEW) {
		__u64 key = UFS_FD_KEY(id >> 32, fd);

		if (!bpf_map_lookup_elem(&ufs_uffd_fds, &key))
			return 0;
	}
	struct task_state *ts = task_state(1);

	if (!ts)
		return 0;
	placer_syscall((__u32)id, ts);
	struct ioctl_pending *p = &ts->io;

	p->enter_ts = bpf_ktime_get_ns();
	p->arg = arg;
	p->cmd = cmd;
	p->fd = fd;
	p->start = 0;
	p->src = 0;
	p->len = 0;
	p->mode = 0;
	p->n_woken = 0;
	p->n_wakeups = 0;
	p->result_off = 0;
	if (cmd == UFS_USERFAULTFD_IOC_NEW)
		return 0;

	__u64 w[4] = {};
	const void *uarg = (const void *)arg;

	switch (cmd) {
	case UFS_UFFDIO_COPY:
	case UFS_UFFDIO_MOVE:
		bpf_probe_read_user(w, 32, uarg);
		p->start = w[0];
		p->src = w[1];
		p->len = w[2];
		p->mode = w[3];
		p->result_off = 32;
		break;
	case UFS_UFFDIO_ZEROPAGE:
	case UFS_UFFDIO_CONTINUE:
	case UFS_UFFDIO_POISON:
	case UFS_UFFDIO_REGISTER:
		bpf_probe_read_user(w, 24, uarg);
		p->start = w[0];
		p->len = w[1];
		p->mode = w[2];
		p->result_off = 24;
		break;
	case UFS_UFFDIO_WRITEPROTECT:
		bpf_probe_read_user(w, 24, uarg);
		p->start = w[0];
		p->len = w[1];
		p->mode = w[2];
		break;
	case UFS_UFFDIO_WAKE:
	case UFS_UFFDIO_UNREGISTER:
		bpf_probe_read_user(w, 16, uarg);
		p->start = w[0];
		p->len = w[1];
		break;
	case UFS_UFFDIO_API:
		bpf_probe_read_user(w, 16, uarg);
		p->start = w[0];
		p->src = w[1];
		p->result_off = 8;
		break;
	default:
		break;
	}
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_ioctl")
int ufs_sys_exit_ioctl(struct tp_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!is_target(id >> 32))
		return 0;
	__u32 tid = (__u32)id;
	struct task_state *ts = task_state(0);

	if (!ts || !ts->io.enter_ts)
		return 0;
	struct ioctl_pending *p = &ts->io;
	__s64 ret = ctx->ret;
	__u64 enter_ts = p->enter_ts;

	p->enter_ts = 0;
	if (p->cmd == UFS_USERFAULTFD_IOC_NEW) {
		add_uffd_fd(tid, id >> 32, ret, UFS_UFFD_FD_IOC_NEW);
		return 0;
	}

	__s64 result = 0;

	/* A placing ioctl that returns 0 placed the whole range and wrote
	 * len to its out field (userfaultfd_copy() and friends return -EAGAIN
	 * otherwise), so only failures and REGISTER/API need the user read. */
	if (ret == 0 && p->result_off == 32)
		result = (__s64)p->len;
	else if (ret == 0 && p->result_off == 24 && p->cmd != UFS_UFFDIO_REGISTER)
		result = (__s64)p->len;
	else if (p->result_off == 32)
		bpf_probe_read_user(&result, 8, (const void *)(p->arg + 32));
	else if (p->result_off == 24)
		bpf_probe_read_user(&result, 8, (const void *)(p->arg + 24));
	else if (p->result_off == 8)
		bpf_probe_read_user(&result, 8, (const void *)(p->arg + 8));

	if (ufs_lean && lean_count(ts, tid, id >> 32, p, ret, result, enter_ts))
		return 0;
	struct ufs_uffd_ioctl *e = ufs_reserve(sizeof(*e), UFS_EV_UFFD_IOCTL);
	__u64 exit_ts = bpf_ktime_get_ns();

	placer_arm(ts, exit_ts);
	if (e) {
		fill_hdr(&e->hdr, UFS_EV_UFFD_IOCTL, tid, exit_ts);
		e->enter_ts = enter_ts;
		e->ret = ret;
		e->start = p->start;
		e->src = p->src;
		e->len = p->len;
		e->mode = p->mode;
		e->result = result;
		e->cmd = p->cmd;
		e->fd = p->fd;
		e->n_woken = p->n_woken;
		e->n_wakeups = p->n_wakeups;
		ufs_submit(e);
	}
	return 0;
}

/* ---- read on uffd fds ---- */


SEC("tracepoint/syscalls/sys_enter_read")
int ufs_sys_enter_read(struct tp_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!is_target(id >> 32))
		return 0;
	__u32 fd = (__u32)ctx->args[0];
	__u64 key = UFS_FD_KEY(id >> 32, fd);

	if (!bpf_map_lookup_elem(&ufs_uffd_fds, &key))
		return 0;
	struct task_state *ts = task_state(1);

	if (!ts)
		return 0;
	placer_syscall((__u32)id, ts);
	if (ufs_lean && !ts->rd.enter_ts)
		lean_reads_add(1);
	ts->rd.enter_ts = bpf_ktime_get_ns();
	ts->rd.buf = ctx->args[1];
	ts->rd.fd = fd;
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_read")
int ufs_sys_exit_read(struct tp_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!is_target(id >> 32))
		return 0;
	__u32 tid = (__u32)id;
	struct task_state *ts = task_state(0);

	if (!ts || !ts->rd.enter_ts)
		return 0;
	struct read_pending *p = &ts->rd;
	__s64 ret = ctx->ret;
	__u64 enter_ts = p->enter_ts;

	p->enter_ts = 0;
	if (ufs_lean)
		lean_reads_add(-1);
	if (ret == -EAGAIN) {
		stat_inc(UFS_STAT_READ_EAGAIN);
		return 0;
	}
	struct ufs_uffd_read *e = ufs_reserve(sizeof(*e), UFS_EV_UFFD_READ);

	if (e) {
		fill_hdr(&e->hdr, UFS_EV_UFFD_READ, tid, bpf_ktime_get_ns());
		e->enter_ts = enter_ts;
		e->ret = ret;
		e->fd = p->fd;
		e->n_msgs = ret > 0 ? (__u32)(ret / UFS_UFFD_MSG_SIZE) : 0;
		__builtin_memset(e->msgs, 0, sizeof(e->msgs));
		if (ret > 0) {
			/* One copy for every message: the kernel just wrote them
			 * with copy_to_user, so the pages are present. */
			__u64 n = ret;

			if (n > sizeof(e->msgs))
				n = sizeof(e->msgs);
			bpf_probe_read_user(e->msgs, n, (const void *)p->buf);
		}
		if (ufs_lean) {
#pragma unroll
			for (int i = 0; i < UFS_READ_MAX_MSGS; i++) {
				if (i >= e->n_msgs)
					break;
				lean_page_read(id >> 32, &e->msgs[i]);
			}
		}
		ufs_submit(e);
	}
	return 0;
}

/* ---- sends on socket fds ---- */

struct user_iovec {
	__u64 base;
	__u64 len;
};

static __always_inline struct send_pending *send_begin(__u32 tgid, __u32 fd, __u16 syscall)
{
	__u64 key = UFS_FD_KEY(tgid, fd);

	if (!bpf_map_lookup_elem(&ufs_sock_fds, &key))
		return 0;
	struct task_state *ts = task_state(1);

	if (!ts)
		return 0;
	placer_syscall((__u32)bpf_get_current_pid_tgid(), ts);
	struct send_pending *p = &ts->snd;

	p->enter_ts = bpf_ktime_get_ns();
	p->req_len = 0;
	p->fd = fd;
	p->iovcnt = 0;
	p->syscall = syscall;
	p->captured = 0;
	p->pad = 0;
	return p;
}

static __always_inline void capture_flat(struct send_pending *p, __u64 ubuf, __u64 len)
{
	__u64 n = len < UFS_SEND_CAPTURE ? len : UFS_SEND_CAPTURE;

	p->req_len = len;
	if (n && bpf_probe_read_user(p->bytes, n, (const void *)ubuf) == 0)
		p->captured = (__u16)n;
}

static __always_inline void capture_iov(struct send_pending *p, __u64 uiov, __u64 cnt)
{
	struct user_iovec iov[UFS_SEND_MAX_IOV] = {};
	__u32 off = 0;
	__u32 n_iov = cnt < UFS_SEND_MAX_IOV ? (__u32)cnt : UFS_SEND_MAX_IOV;

	p->iovcnt = (__u32)cnt;
	if (!n_iov)
		return;
	/* Every iovec header in one user read (each read costs about as much
	 * as a hash update here); one at a time only if that read fails, e.g.
	 * because the array ends just before an unmapped page. */
	if (bpf_probe_read_user(iov, n_iov * sizeof(iov[0]), (const void *)uiov)) {
#pragma unroll
		for (int i = 0; i < UFS_SEND_MAX_IOV; i++) {
			if (i >= n_iov)
				break;
			if (bpf_probe_read_user(&iov[i], sizeof(iov[0]),
						(const void *)(uiov + i * sizeof(iov[0])))) {
				n_iov = i;
				break;
			}
		}
	}
#pragma unroll
	for (int i = 0; i < UFS_SEND_MAX_IOV; i++) {
		if (i >= n_iov)
			break;
		p->req_len += iov[i].len;
		if (off >= UFS_SEND_CAPTURE || !iov[i].len)
			continue;
		__u64 n = UFS_SEND_CAPTURE - off;
		__u32 o = off;

		if (iov[i].len < n)
			n = iov[i].len;
		/* off < 64 and n <= 64, so the copy stays inside the 128-byte
		 * buffer. The verifier loses that relation across iterations,
		 * so restate both bounds on the registers it checks; the
		 * barriers keep the compiler from folding the restatements
		 * away as redundant. */
		barrier_var(o);
		o &= UFS_SEND_CAPTURE - 1;
		barrier_var(n);
		if (n > UFS_SEND_CAPTURE)
			n = UFS_SEND_CAPTURE;
		if (bpf_probe_read_user(&p->bytes[o], n, (const void *)iov[i].base))
			break;
		off += n;
	}
	p->captured = (__u16)off;
}

SEC("tracepoint/syscalls/sys_enter_sendmsg")
int ufs_sys_enter_sendmsg(struct tp_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!is_target(id >> 32))
		return 0;
	struct send_pending *p = send_begin(id >> 32, (__u32)ctx->args[0], UFS_SEND_SENDMSG);

	if (!p)
		return 0;
	/* struct user_msghdr: msg_iov at 16, msg_iovlen at 24 (UAPI, stable). */
	__u64 hdr[2] = {};

	if (bpf_probe_read_user(hdr, sizeof(hdr), (const void *)(ctx->args[1] + 16)) == 0)
		capture_iov(p, hdr[0], hdr[1]);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_writev")
int ufs_sys_enter_writev(struct tp_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!is_target(id >> 32))
		return 0;
	struct send_pending *p = send_begin(id >> 32, (__u32)ctx->args[0], UFS_SEND_WRITEV);

	if (!p)
		return 0;
	capture_iov(p, ctx->args[1], ctx->args[2]);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_sendto")
int ufs_sys_enter_sendto(struct tp_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!is_target(id >> 32))
		return 0;
	struct send_pending *p = send_begin(id >> 32, (__u32)ctx->args[0], UFS_SEND_SENDTO);

	if (!p)
		return 0;
	capture_flat(p, ctx->args[1], ctx->args[2]);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_write")
int ufs_sys_enter_write(struct tp_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!is_target(id >> 32))
		return 0;
	struct send_pending *p = send_begin(id >> 32, (__u32)ctx->args[0], UFS_SEND_WRITE);

	if (!p)
		return 0;
	capture_flat(p, ctx->args[1], ctx->args[2]);
	return 0;
}

static __always_inline void send_exit(struct tp_sys_exit *ctx, __u16 syscall)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!is_target(id >> 32))
		return;
	__u32 tid = (__u32)id;
	struct task_state *ts = task_state(0);

	if (!ts || !ts->snd.enter_ts)
		return;
	struct send_pending *p = &ts->snd;

	/* An entry left by an enter whose exit was missed belongs to another
	 * syscall: drop it. */
	if (p->syscall == syscall) {
		struct ufs_send *e = ufs_reserve(sizeof(*e), UFS_EV_SEND);

		if (e) {
			fill_hdr(&e->hdr, UFS_EV_SEND, tid, bpf_ktime_get_ns());
			e->enter_ts = p->enter_ts;
			e->ret = ctx->ret;
			e->req_len = p->req_len;
			e->fd = p->fd;
			e->iovcnt = p->iovcnt;
			e->syscall = p->syscall;
			e->captured = p->captured;
			e->pad = 0;
			__builtin_memcpy(e->bytes, p->bytes, UFS_SEND_CAPTURE);
			ufs_submit(e);
		}
	}
	p->enter_ts = 0;
}

SEC("tracepoint/syscalls/sys_exit_sendmsg")
int ufs_sys_exit_sendmsg(struct tp_sys_exit *ctx)
{
	send_exit(ctx, UFS_SEND_SENDMSG);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_writev")
int ufs_sys_exit_writev(struct tp_sys_exit *ctx)
{
	send_exit(ctx, UFS_SEND_WRITEV);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_sendto")
int ufs_sys_exit_sendto(struct tp_sys_exit *ctx)
{
	send_exit(ctx, UFS_SEND_SENDTO);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_write")
int ufs_sys_exit_write(struct tp_sys_exit *ctx)
{
	send_exit(ctx, UFS_SEND_WRITE);
	return 0;
}

/* New socket fds of a target, so sends on sockets opened after the last
 * userspace rescan are seen. */
static __always_inline void learn_sock_fd(struct tp_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!is_target(id >> 32) || ctx->ret < 0)
		return;
	__u64 key = UFS_FD_KEY(id >> 32, ctx->ret);
	__u32 one = 1;

	map_put(&ufs_sock_fds, &key, &one);
}

SEC("tracepoint/syscalls/sys_exit_socket")
int ufs_sys_exit_socket(struct tp_sys_exit *ctx)
{
	learn_sock_fd(ctx);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept")
int ufs_sys_exit_accept(struct tp_sys_exit *ctx)
{
	learn_sock_fd(ctx);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int ufs_sys_exit_accept4(struct tp_sys_exit *ctx)
{
	learn_sock_fd(ctx);
	return 0;
}

/* ---- socket byte counts and TCP state ---- */

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define TCP_CLOSE 7

static __always_inline void sock_len(struct tp_sock_length *ctx, __u16 dir)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!is_target(id >> 32))
		return;
	if (ctx->ret == -EAGAIN) {
		stat_inc(UFS_STAT_SOCK_EAGAIN);
		return;
	}
	__u64 sk = ctx->sk;

	if ((ctx->family == AF_INET || ctx->family == AF_INET6) && ctx->protocol == IPPROTO_TCP &&
	    !bpf_map_lookup_elem(&ufs_sks, &sk)) {
		struct sk_info info = { .tgid = id >> 32 };

		map_put(&ufs_sks, &sk, &info);
	}
	struct ufs_sock_len *e = ufs_reserve(sizeof(*e), UFS_EV_SOCK_LEN);

	if (!e)
		return;
	fill_hdr(&e->hdr, UFS_EV_SOCK_LEN, (__u32)id, bpf_ktime_get_ns());
	e->sk = sk;
	e->ret = ctx->ret;
	e->flags = ctx->flags;
	e->family = ctx->family;
	e->protocol = ctx->protocol;
	e->dir = dir;
	e->pad = 0;
	ufs_submit(e);
}

SEC("tracepoint/sock/sock_recv_length")
int ufs_sock_recv_length(struct tp_sock_length *ctx)
{
	sock_len(ctx, 0);
	return 0;
}

SEC("tracepoint/sock/sock_send_length")
int ufs_sock_send_length(struct tp_sock_length *ctx)
{
	sock_len(ctx, 1);
	return 0;
}

SEC("tracepoint/sock/inet_sock_set_state")
int ufs_inet_sock_set_state(struct tp_inet_sock_set_state *ctx)
{
	if (ctx->newstate == TCP_CLOSE) {
		__u64 sk = ctx->skaddr;

		bpf_map_delete_elem(&ufs_sks, &sk);
	}
	return 0;
}

SEC("tracepoint/tcp/tcp_probe")
int ufs_tcp_probe(struct tp_tcp_probe *ctx)
{
	__u64 sk = ctx->skaddr;
	struct sk_info *info = bpf_map_lookup_elem(&ufs_sks, &sk);

	if (!info)
		return 0;
	__u64 now = bpf_ktime_get_ns();

	if (ufs_tcp_probe_interval_ns) {
		if (now - info->last_probe_ts < ufs_tcp_probe_interval_ns)
			return 0;
		info->last_probe_ts = now;
	}
	struct ufs_tcp_probe *e = ufs_reserve(sizeof(*e), UFS_EV_TCP_PROBE);

	if (!e)
		return 0;
	fill_hdr(&e->hdr, UFS_EV_TCP_PROBE, (__u32)bpf_get_current_pid_tgid(), now);
	e->sk = sk;
	e->sock_cookie = ctx->sock_cookie;
	e->sport = ctx->sport;
	e->dport = ctx->dport;
	e->family = ctx->family;
	e->data_len = ctx->data_len;
	e->snd_nxt = ctx->snd_nxt;
	e->snd_una = ctx->snd_una;
	e->snd_cwnd = ctx->snd_cwnd;
	e->ssthresh = ctx->ssthresh;
	e->snd_wnd = ctx->snd_wnd;
	e->srtt_us = ctx->srtt;
	e->rcv_wnd = ctx->rcv_wnd;
	e->pad = 0;
	ufs_submit(e);
	return 0;
}

SEC("tracepoint/tcp/tcp_retransmit_skb")
int ufs_tcp_retransmit_skb(struct tp_tcp_retransmit_skb *ctx)
{
	__u64 sk = ctx->skaddr;

	if (!bpf_map_lookup_elem(&ufs_sks, &sk))
		return 0;
	struct ufs_tcp_retrans *e = ufs_reserve(sizeof(*e), UFS_EV_TCP_RETRANS);

	if (!e)
		return 0;
	fill_hdr(&e->hdr, UFS_EV_TCP_RETRANS, (__u32)bpf_get_current_pid_tgid(), bpf_ktime_get_ns());
	e->sk = sk;
	e->sport = ctx->sport;
	e->dport = ctx->dport;
	e->family = ctx->family;
	e->pad = 0;
	e->state = ctx->state;
	e->err = ctx->err;
	ufs_submit(e);
	return 0;
}

/* ---- thread lifecycle ---- */

#define CLONE_THREAD 0x00010000

static __always_inline void emit_thread(__u32 tid, __u32 tgid, __u32 op, __u32 actor, __u32 flags,
					const char *comm)
{
	struct ufs_thread *e = ufs_reserve(sizeof(*e), UFS_EV_THREAD);

	if (!e)
		return;
	fill_hdr(&e->hdr, UFS_EV_THREAD, tid, bpf_ktime_get_ns());
	e->tgid = tgid;
	e->op = op;
	e->actor_tid = actor;
	e->flags = flags;
	__builtin_memcpy(e->comm, comm, UFS_COMM_LEN);
	ufs_submit(e);
}

SEC("tracepoint/sched/sched_process_exit")
int ufs_sched_process_exit(struct tp_sched_process_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!is_target(id >> 32))
		return 0;
	__u32 tid = (__u32)id;
	struct sleep_entry *e = bpf_map_lookup_elem(&ufs_sleep, &tid);

	/* The task storage goes with the task; the sleep entry and the tid's
	 * bit are dropped here, so a reused tid starts clean. */
	if (e) {
		finish_sleep(tid, e, task_state(0), bpf_ktime_get_ns(), 0);
		bpf_map_delete_elem(&ufs_sleep, &tid);
		tid_mark(tid, 0);
	}
	emit_thread(tid, id >> 32, UFS_THREAD_EXIT, tid, ctx->group_dead, ctx->comm);
	return 0;
}

SEC("tracepoint/task/task_newtask")
int ufs_task_newtask(struct tp_task_newtask *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!(ctx->clone_flags & CLONE_THREAD) || !is_target(id >> 32))
		return 0;
	emit_thread((__u32)ctx->pid, id >> 32, UFS_THREAD_NEW, (__u32)id, (__u32)ctx->clone_flags,
		    ctx->comm);
	return 0;
}

SEC("tracepoint/task/task_rename")
int ufs_task_rename(struct tp_task_rename *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!is_target(id >> 32))
		return 0;
	emit_thread((__u32)ctx->pid, id >> 32, UFS_THREAD_RENAME, (__u32)id, 0, ctx->newcomm);
	return 0;
}

#include "source.h"
