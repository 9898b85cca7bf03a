/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * events.h: the single ABI between uffdscope's BPF programs and userspace.
 *
 * Every record the kernel side emits on the ring buffer, every key of a map
 * that userspace writes, and every read-only global that userspace patches
 * before load is defined here. The Rust mirror lives in ebpf/src/abi.rs;
 * ebpf/src/generated.rs, generated from this header, holds the ioctl numbers
 * and asserts every field offset and struct size of the mirror.
 *
 * Rules: fixed-width fields only, explicit padding (no implicit holes), no
 * bool, every struct a multiple of 8 bytes. All timestamps are
 * bpf_ktime_get_ns(), i.e. CLOCK_MONOTONIC nanoseconds, so they compare
 * directly with clock_gettime(CLOCK_MONOTONIC) in userspace. A timestamp of 0
 * means "not observed".
 */
#ifndef UFFDSCOPE_EVENTS_H
#define UFFDSCOPE_EVENTS_H

#include <linux/types.h>

/* Read-only globals patched by the loader: see uffdscope.bpf.c. */
#define UFS_MAX_TARGETS 8

/* Capture limits. */
#define UFS_READ_MAX_MSGS 8   /* uffd_msg captured per read() */
#define UFS_UFFD_MSG_SIZE 32  /* sizeof(struct uffd_msg) */
#define UFS_SEND_CAPTURE 64   /* payload bytes captured per send */
#define UFS_SEND_MAX_IOV 4    /* iovecs walked to fill the capture */
#define UFS_COMM_LEN 16

/* userfaultfd ioctl numbers (include/uapi/linux/userfaultfd.h). */
#define UFS_USERFAULTFD_IOC_NEW 0x0000aa00u /* on /dev/userfaultfd; returns a uffd */
#define UFS_UFFDIO_REGISTER 0xc020aa00u     /* {start, len, mode, ioctls(out)} */
#define UFS_UFFDIO_UNREGISTER 0x8010aa01u   /* {start, len} */
#define UFS_UFFDIO_WAKE 0x8010aa02u         /* {start, len} */
#define UFS_UFFDIO_COPY 0xc028aa03u         /* {dst, src, len, mode, copy(out)} */
#define UFS_UFFDIO_ZEROPAGE 0xc020aa04u     /* {start, len, mode, zeropage(out)} */
#define UFS_UFFDIO_MOVE 0xc028aa05u         /* {dst, src, len, mode, move(out)} */
#define UFS_UFFDIO_WRITEPROTECT 0xc018aa06u /* {start, len, mode} */
#define UFS_UFFDIO_CONTINUE 0xc020aa07u     /* {start, len, mode, mapped(out)} */
#define UFS_UFFDIO_POISON 0xc020aa08u       /* {start, len, mode, updated(out)} */
#define UFS_UFFDIO_API 0xc018aa3fu          /* {api, features(in/out), ioctls(out)} */
#define UFS_UFFD_IOCTL_TYPE 0xaau           /* _IOC_TYPE of every uffd ioctl */

/* Kinds of ring-buffer records; the value is ufs_hdr.kind. */
enum ufs_event_kind {
	UFS_EV_FAULT_WAKE = 1,   /* struct ufs_fault_wake */
	UFS_EV_UFFD_READ = 2,    /* struct ufs_uffd_read */
	UFS_EV_UFFD_IOCTL = 3,   /* struct ufs_uffd_ioctl */
	UFS_EV_UFFD_FD = 4,      /* struct ufs_uffd_fd */
	UFS_EV_SEND = 5,         /* struct ufs_send */
	UFS_EV_SOCK_LEN = 6,     /* struct ufs_sock_len */
	UFS_EV_TCP_PROBE = 7,    /* struct ufs_tcp_probe */
	UFS_EV_TCP_RETRANS = 8,  /* struct ufs_tcp_retrans */
	UFS_EV_THREAD = 9,       /* struct ufs_thread */
	UFS_EV_KVM_ASYNC_PF = 10, /* struct ufs_kvm_async_pf */
	UFS_EV_PLACER_RUN = 11,  /* struct ufs_placer_run */
	UFS_EV_RECV = 12,        /* struct ufs_send, a receive (source side) */
	UFS_EV_PAGES_SENT = 13,  /* struct ufs_pages_sent (source side) */
	UFS_EV_KIND_COUNT = 14,  /* entries of the drops map (index = kind) */
};

/* Indices of the per-CPU `ufs_stats` counters. */
enum ufs_stat {
	UFS_STAT_READ_EAGAIN = 0,   /* read() on a uffd fd returned -EAGAIN (not emitted) */
	UFS_STAT_MAP_FULL = 1,      /* a per-thread/per-fd hash map update failed */
	UFS_STAT_SOCK_EAGAIN = 2,   /* sock_recv/send_length with -EAGAIN (not emitted) */
	UFS_STAT_SLEEP_OTHER = 3,   /* tracked sleeps ended without a uffd-ioctl wake */
	UFS_STAT_RUN_UNSEEN = 4,    /* tracked sleeps whose switch-in was never traced */
	UFS_STAT_WAKE_IN_INTERRUPT = 5, /* wakes by an interrupt that arrived while a target
					 * thread was inside a uffd ioctl (not faults) */
	UFS_STAT_WAKE_OUT_OF_RANGE = 6, /* uffd-ioctl wakes of a thread whose pending fault
					 * was not in the ioctl's range (not faults) */
	UFS_STAT_COUNT = 8,
};

/* Common header of every record: 16 bytes. */
struct ufs_hdr {
	__u16 kind;  /* enum ufs_event_kind */
	__u16 cpu;   /* CPU the record was emitted on */
	__u32 tid;   /* thread the record is about (see each record) */
	__u64 ts;    /* emission time */
};

/* ufs_fault_wake.fault_source */
enum ufs_fault_source {
	UFS_FAULT_NONE = 0,  /* no fault entry was pending when the thread blocked */
	UFS_FAULT_USER = 1,  /* exceptions:page_fault_user: addr = host VA, ip = user ip */
	UFS_FAULT_KVM = 2,   /* kvm:kvm_page_fault: addr = guest physical, ip = guest rip */
	UFS_FAULT_KERNEL = 3, /* exceptions:page_fault_kernel: addr = host VA, ip = kernel ip */
};

/* ufs_fault_wake.flags */
#define UFS_FW_WOKEN_BEFORE_BLOCK 0x1  /* woken between fault entry and switch-out and
					* never switched out: blocked_ts = run_ts = 0 */
#define UFS_FW_KVM_ASYNC 0x2           /* kvm_try_async_get_page followed the fault */
#define UFS_FW_WOKEN_BEFORE_SWITCH 0x4 /* woken while switching out to sleep:
					* woken_ts <= blocked_ts <= run_ts */
#define UFS_FW_RUN_UNSEEN 0x8          /* the switch-in was never traced: run_ts is the
					* first traced moment the thread ran after the
					* wake, an upper bound on the switch-in: its
					* return to user or guest mode (rseq:rseq_update,
					* a few us after the switch-in), else its next
					* switch-out, fault or exit */

/*
 * One faulting thread's block/wake interval that ended with a wake done from
 * inside a uffd ioctl, joined in the kernel. hdr.tid = the woken thread,
 * hdr.ts = run_ts (or woken_ts when run_ts is 0).
 * Normally fault_ts <= blocked_ts <= woken_ts <= run_ts <= resume_ts; see the
 * UFS_FW_* flags for the two orders a racing wake produces. A record is
 * emitted when the thread returns to user or guest mode after its switch-in
 * (rseq:rseq_update), else at its next fault, switch-out or exit, so records
 * are not in woken_ts order. resume_ts is the first return to user or guest
 * mode after the switch-in; 0 when not seen (no rseq area, or the thread
 * blocked again first). 120 bytes.
 */
struct ufs_fault_wake {
	struct ufs_hdr hdr;       /*   0 */
	__u64 fault_ts;           /*  16  0 when fault_source == NONE */
	__u64 fault_addr;         /*  24 */
	__u64 fault_ip;           /*  32 */
	__u64 fault_error_code;   /*  40 */
	__u64 blocked_ts;         /*  48  sched_switch out */
	__u64 woken_ts;           /*  56  sched_waking from the ioctl */
	__u64 run_ts;             /*  64  sched_switch in */
	__u64 ioctl_start;        /*  72  dst/start of the waking ioctl */
	__u64 ioctl_len;          /*  80 */
	__u32 ioctl_cmd;          /*  88 */
	__u32 waker_tid;          /*  92 */
	__u32 ioctl_fd;           /*  96 */
	__u32 vcpu_id;            /* 100  KVM only */
	__u32 block_state;        /* 104  prev_state & 0xff at switch-out (1 = S, 2 = D) */
	__u16 fault_source;       /* 108  enum ufs_fault_source */
	__u16 flags;              /* 110  UFS_FW_* */
	__u64 resume_ts;          /* 112  rseq_update after run_ts; 0 = not seen */
};

/* struct uffd_msg as the kernel writes it: 32 bytes. For UFFD_EVENT_PAGEFAULT
 * (0x12): arg0 = flags (WRITE=1, WP=2, MINOR=4), arg1 = address, low 32 bits
 * of arg2 = ptid. FORK: arg0 = new uffd. REMAP: from, to, len. REMOVE and
 * UNMAP: start, end. */
struct ufs_uffd_msg {
	__u8 event;
	__u8 reserved1;
	__u16 reserved2;
	__u32 reserved3;
	__u64 arg0;
	__u64 arg1;
	__u64 arg2;
};

/*
 * read() on a uffd fd that returned anything but -EAGAIN. hdr.tid = reader,
 * hdr.ts = exit. msgs[0 .. min(n_msgs, 8)) are valid. 296 bytes.
 */
struct ufs_uffd_read {
	struct ufs_hdr hdr;                          /*   0 */
	__u64 enter_ts;                              /*  16 */
	__s64 ret;                                   /*  24 */
	__u32 fd;                                    /*  32 */
	__u32 n_msgs;                                /*  36  ret / 32 when ret > 0 */
	struct ufs_uffd_msg msgs[UFS_READ_MAX_MSGS]; /*  40 */
};

/*
 * One ioctl of type 0xAA on a uffd fd. hdr.tid = caller, hdr.ts = exit.
 * Field meaning by cmd:
 *   COPY, MOVE:          start = dst, src, len, mode, result = copy/move
 *   ZEROPAGE, CONTINUE,
 *   POISON:              start, len, mode, result = zeropage/mapped/updated
 *   REGISTER:            start, len, mode, result = ioctls
 *   UNREGISTER, WAKE:    start, len
 *   WRITEPROTECT:        start, len, mode
 *   API:                 start = api, src = features asked, result = features granted
 * 88 bytes.
 */
struct ufs_uffd_ioctl {
	struct ufs_hdr hdr;  /*  0 */
	__u64 enter_ts;      /* 16 */
	__s64 ret;           /* 24 */
	__u64 start;         /* 32 */
	__u64 src;           /* 40 */
	__u64 len;           /* 48 */
	__u64 mode;          /* 56 */
	__s64 result;        /* 64 */
	__u32 cmd;           /* 72 */
	__u32 fd;            /* 76 */
	__u32 n_woken;       /* 80  tracked threads whose uffd sleep this ioctl ended */
	__u32 n_wakeups;     /* 84  every sched_waking done while inside */
};

/* ufs_uffd_fd.op */
enum ufs_uffd_fd_op {
	UFS_UFFD_FD_SYSCALL = 1,  /* userfaultfd(2) returned it */
	UFS_UFFD_FD_IOC_NEW = 2,  /* USERFAULTFD_IOC_NEW on /dev/userfaultfd returned it */
	UFS_UFFD_FD_CLOSE = 3,    /* close() of a known uffd fd */
};

/* A uffd fd appeared or went away in a target. hdr.tid = caller. 32 bytes. */
struct ufs_uffd_fd {
	struct ufs_hdr hdr; /*  0 */
	__u32 fd;           /* 16 */
	__u32 tgid;         /* 20 */
	__u32 op;           /* 24  enum ufs_uffd_fd_op */
	__u32 pad;          /* 28 */
};

/* ufs_send.syscall */
enum ufs_send_syscall {
	UFS_SEND_SENDMSG = 1,
	UFS_SEND_SENDTO = 2,
	UFS_SEND_WRITE = 3,
	UFS_SEND_WRITEV = 4,
};

/*
 * A send on a socket fd of a target. hdr.tid = caller, hdr.ts = exit.
 * req_len = count (write), len (sendto) or the sum of the first 4 iovec
 * lengths (sendmsg, writev). bytes[0 .. captured) is the start of the payload,
 * gathered from up to 4 iovecs. 120 bytes.
 */
struct ufs_send {
	struct ufs_hdr hdr;            /*  0 */
	__u64 enter_ts;                /* 16 */
	__s64 ret;                     /* 24 */
	__u64 req_len;                 /* 32 */
	__u32 fd;                      /* 40 */
	__u32 iovcnt;                  /* 44  0 for write/sendto */
	__u16 syscall;                 /* 48  enum ufs_send_syscall */
	__u16 captured;                /* 50 */
	__u32 pad;                     /* 52 */
	__u8 bytes[UFS_SEND_CAPTURE];  /* 56 */
};

/*
 * sock:sock_recv_length / sock:sock_send_length in a target thread.
 * hdr.tid = caller. 40 bytes.
 */
struct ufs_sock_len {
	struct ufs_hdr hdr; /*  0 */
	__u64 sk;           /* 16  struct sock address (identifies the socket) */
	__s32 ret;          /* 24  bytes, or -errno */
	__s32 flags;        /* 28  MSG_* */
	__u16 family;       /* 32 */
	__u16 protocol;     /* 34 */
	__u16 dir;          /* 36  0 = recv, 1 = send */
	__u16 pad;          /* 38 */
};

/*
 * tcp:tcp_probe on a socket a target has used (see ufs_sks). It may fire in
 * softirq context on any task: hdr.tid is whatever thread was current.
 * 72 bytes.
 */
struct ufs_tcp_probe {
	struct ufs_hdr hdr; /*  0 */
	__u64 sk;           /* 16 */
	__u64 sock_cookie;  /* 24 */
	__u16 sport;        /* 32 */
	__u16 dport;        /* 34 */
	__u16 family;       /* 36 */
	__u16 data_len;     /* 38 */
	__u32 snd_nxt;      /* 40 */
	__u32 snd_una;      /* 44 */
	__u32 snd_cwnd;     /* 48 */
	__u32 ssthresh;     /* 52 */
	__u32 snd_wnd;      /* 56 */
	__u32 srtt_us;      /* 60  smoothed RTT in microseconds */
	__u32 rcv_wnd;      /* 64 */
	__u32 pad;          /* 68 */
};

/* tcp:tcp_retransmit_skb on a socket a target has used. 40 bytes. */
struct ufs_tcp_retrans {
	struct ufs_hdr hdr; /*  0 */
	__u64 sk;           /* 16 */
	__u16 sport;        /* 24 */
	__u16 dport;        /* 26 */
	__u16 family;       /* 28 */
	__u16 pad;          /* 30 */
	__s32 state;        /* 32 */
	__s32 err;          /* 36 */
};

/* ufs_thread.op */
enum ufs_thread_op {
	UFS_THREAD_NEW = 1,     /* task:task_newtask with CLONE_THREAD; actor = creator */
	UFS_THREAD_RENAME = 2,  /* task:task_rename; actor = the thread that renamed it */
	UFS_THREAD_EXIT = 3,    /* sched:sched_process_exit; flags = group_dead */
};

/* Thread lifecycle of a target. hdr.tid = the thread concerned. 48 bytes. */
struct ufs_thread {
	struct ufs_hdr hdr;       /*  0 */
	__u32 tgid;               /* 16 */
	__u32 op;                 /* 20  enum ufs_thread_op */
	__u32 actor_tid;          /* 24 */
	__u32 flags;              /* 28 */
	__u8 comm[UFS_COMM_LEN];  /* 32  new name (NEW, RENAME) or last name (EXIT) */
};

/* ufs_kvm_async_pf.op */
enum ufs_kvm_async_op {
	UFS_KVM_TRY_ASYNC_GET_PAGE = 1, /* gva, gfn */
	UFS_KVM_ASYNC_PF_NOT_PRESENT = 2, /* token, gva */
	UFS_KVM_ASYNC_PF_READY = 3,       /* token, gva */
	UFS_KVM_ASYNC_PF_REPEATED = 4,    /* gva, gfn */
};

/* KVM async page-fault steps of a target vCPU thread. 48 bytes. */
struct ufs_kvm_async_pf {
	struct ufs_hdr hdr; /*  0 */
	__u32 op;           /* 16  enum ufs_kvm_async_op */
	__u32 pad;          /* 20 */
	__u64 token;        /* 24 */
	__u64 gva;          /* 32 */
	__u64 gfn;          /* 40 */
};

/* ufs_placer_run.how: what the placing thread did first after the ioctl. */
enum ufs_placer_how {
	UFS_PLACER_BLOCKED = 1,   /* switched out in a sleeping state: hdr.ts = that switch-out */
	UFS_PLACER_PREEMPTED = 2, /* preempted (runnable); hdr.ts = its return to user mode
				   * (rseq:rseq_update), or its next switch-out or traced
				   * syscall when that was not seen */
	UFS_PLACER_SYSCALL = 3,   /* entered a traced syscall (uffd ioctl, read, send,
				   * close) without leaving the CPU: hdr.ts = that entry */
};

/*
 * The placing thread's first moment after a uffd ioctl that woke at least one
 * tracked thread: when QEMU, which accounts a vCPU's blocktime in the placing
 * thread after UFFDIO_COPY returns, can next have run. One per such ioctl,
 * none for ioctls that woke nobody. hdr.tid = the placing thread. 48 bytes.
 */
struct ufs_placer_run {
	struct ufs_hdr hdr;  /*  0 */
	__u64 ioctl_exit_ts; /* 16  exit of the waking ioctl */
	__u64 out_ts;        /* 24  PREEMPTED: the switch-out; else 0 */
	__u64 ioctl_start;   /* 32  dst/start of the waking ioctl */
	__u32 how;           /* 40  enum ufs_placer_how */
	__u32 n_woken;       /* 44  tracked threads the ioctl woke */
};

/*
 * Key of the ufs_uffd_fds and ufs_sock_fds maps, which userspace seeds:
 * ((__u64)tgid << 32) | fd. The value is a __u32 (1).
 */
#define UFS_FD_KEY(tgid, fd) (((__u64)(tgid) << 32) | (__u32)(fd))

/*
 * Placements counted in the kernel (see ARCHITECTURE.md, "Placements counted
 * in the kernel"): when the loader sets ufs_lean, a successful, complete
 * UFFDIO_COPY or UFFDIO_ZEROPAGE that woke no thread, covered no page read
 * and not yet placed, exited while no uffd read was in flight and did not
 * follow a recorded placement of the same thread is added to a bin of
 * ufs_bins instead of becoming a record. Userspace drains closed bins.
 */
#define UFS_BIN_NS 10000000        /* width of a bin: 10 ms of ioctl exit time */
#define UFS_LEAN_MAX_PAGES 16      /* longer placements are always recorded */

/* Key of ufs_bins. 24 bytes. */
struct ufs_bin_key {
	__u64 bin; /*  0  ioctl exit ns / UFS_BIN_NS */
	__u64 len; /*  8  each placement's length */
	__u32 tid; /* 16  the placing thread */
	__u32 cmd; /* 20  UFS_UFFDIO_COPY or UFS_UFFDIO_ZEROPAGE */
};

/* Value of ufs_bins. 32 bytes. */
struct ufs_bin_val {
	__u64 count;         /*  0  placements counted */
	__u64 ioctl_ns;      /*  8  their summed entry-to-exit time */
	__u64 first_exit_ts; /* 16 */
	__u64 last_exit_ts;  /* 24 */
};

_Static_assert(sizeof(struct ufs_bin_key) == 24, "ufs_bin_key");
_Static_assert(sizeof(struct ufs_bin_val) == 32, "ufs_bin_val");

/* Sizes mirrored by const asserts in ebpf/src/abi.rs. */
_Static_assert(sizeof(struct ufs_hdr) == 16, "ufs_hdr");
_Static_assert(sizeof(struct ufs_fault_wake) == 120, "ufs_fault_wake");
_Static_assert(sizeof(struct ufs_uffd_msg) == UFS_UFFD_MSG_SIZE, "ufs_uffd_msg");
_Static_assert(sizeof(struct ufs_uffd_read) == 296, "ufs_uffd_read");
_Static_assert(sizeof(struct ufs_uffd_ioctl) == 88, "ufs_uffd_ioctl");
_Static_assert(sizeof(struct ufs_uffd_fd) == 32, "ufs_uffd_fd");
_Static_assert(sizeof(struct ufs_send) == 120, "ufs_send");
_Static_assert(sizeof(struct ufs_sock_len) == 40, "ufs_sock_len");
_Static_assert(sizeof(struct ufs_tcp_probe) == 72, "ufs_tcp_probe");
_Static_assert(sizeof(struct ufs_tcp_retrans) == 40, "ufs_tcp_retrans");
_Static_assert(sizeof(struct ufs_thread) == 48, "ufs_thread");
_Static_assert(sizeof(struct ufs_kvm_async_pf) == 48, "ufs_kvm_async_pf");
_Static_assert(sizeof(struct ufs_placer_run) == 48, "ufs_placer_run");

/* ---- the migration source (ebpf/bpf/source.h; ARCHITECTURE.md, "Both ends
 * of the migration") ---- */

#define UFS_SRC_MAX_IOV 64    /* iovecs walked per send: QEMU's MAX_IOV_SIZE */
#define UFS_SRC_MAX_RUNS 32   /* page runs kept per send */
#define UFS_SRC_PAGE 4096     /* a page entry is a multiple of this, at least this long */

/* ufs_send.syscall of a UFS_EV_RECV record: the receive that filled it.
 * hdr.ts = exit; bytes[0 .. captured) are the first min(ret, 64) bytes
 * received (from the first iovec of recvmsg/readv); req_len = the buffer's
 * length (the first iovec's for recvmsg/readv); iovcnt as for sends. */
enum ufs_recv_syscall {
	UFS_RECV_RECVMSG = 5,
	UFS_RECV_RECVFROM = 6,
	UFS_RECV_READ = 7,
	UFS_RECV_READV = 8,
};

/* ufs_page_run.flags */
#define UFS_RUN_HEADER 0x1 /* header holds the 8 bytes before the run's first page */

/* Contiguous page-sized iovecs of one send (header segments between them
 * allowed). 32 bytes. */
struct ufs_page_run {
	__u64 at;         /*  0  payload offset of the first page */
	__u64 addr;       /*  8  sender's address of the first page */
	__u8 header[8];   /* 16  the stream's 8 bytes before the first page, as sent */
	__u32 page_len;   /* 24  length of each entry */
	__u16 pages;      /* 28  entries */
	__u16 flags;      /* 30  UFS_RUN_* */
};

/* ufs_pages_sent.truncated bits */
#define UFS_PS_MORE_IOV 0x1  /* more than UFS_SRC_MAX_IOV iovecs, or the array was unreadable */
#define UFS_PS_MORE_RUNS 0x2 /* more than UFS_SRC_MAX_RUNS runs */

/*
 * A send on a socket fd of a source target (sendmsg, writev, write, sendto).
 * hdr.tid = caller, hdr.ts = exit. runs[0 .. n_runs) are the page runs among
 * the iovecs the send got through (none for write/sendto, or when ret <= 0).
 * 1072 bytes.
 */
struct ufs_pages_sent {
	struct ufs_hdr hdr;                           /*  0 */
	__u64 enter_ts;                               /* 16 */
	__s64 ret;                                    /* 24 */
	__u32 fd;                                     /* 32 */
	__u32 iovcnt;                                 /* 36  0 for write/sendto */
	__u16 syscall;                                /* 40  enum ufs_send_syscall */
	__u16 n_runs;                                 /* 42 */
	__u16 truncated;                              /* 44  UFS_PS_* */
	__u16 pad;                                    /* 46 */
	struct ufs_page_run runs[UFS_SRC_MAX_RUNS];   /* 48 */
};

_Static_assert(sizeof(struct ufs_page_run) == 32, "ufs_page_run");
_Static_assert(sizeof(struct ufs_pages_sent) == 1072, "ufs_pages_sent");

#endif /* UFFDSCOPE_EVENTS_H */
