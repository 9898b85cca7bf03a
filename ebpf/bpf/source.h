/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * source.h: the programs that record the migration *source*, included at the
 * end of uffdscope.bpf.c (they use its maps and helpers). See ARCHITECTURE.md,
 * "Both ends of the migration".
 *
 * On the source nothing faults in userfaultfd; what matters is when the
 * return path received each page request and when the migration thread sent
 * each page:
 *   recvmsg/recvfrom/read/readv on a target socket -> ufs_send as UFS_EV_RECV,
 *       with the first min(ret, 64) bytes received (the requests' headers);
 *   sendmsg/writev/write/sendto on a target socket -> ufs_pages_sent: the
 *       iovecs that point at whole pages, folded into runs of contiguous
 *       addresses, each with the 8 stream bytes before its first page (QEMU's
 *       page header, the tail of the buffer segment before the page).
 * The loader sets ufs_source and attaches these instead of the destination's
 * fault, ioctl, uffd-read and send programs; on the destination ufs_source is
 * 0, so the verifier drops every path below and they are not attached.
 */
#ifndef UFFDSCOPE_SOURCE_H
#define UFFDSCOPE_SOURCE_H

/* 1 when recording a migration source (patched by the loader). */
const volatile __u32 ufs_source = 0;

/* A source thread inside a traced receive or send. */
struct src_pending {
	__u64 enter_ts; /* 0 = not inside one */
	__u64 ptr;      /* the buffer (read, recvfrom, write, sendto) or the iovec array */
	__u64 cnt;      /* the buffer's length, or the iovec count */
	__u32 fd;
	__u16 syscall;  /* enum ufs_send_syscall or enum ufs_recv_syscall */
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct src_pending);
} ufs_src_task SEC(".maps");

/* The send being walked and the record being built: both too large for the
 * stack. The walk runs in a bpf_loop callback, verified once rather than per
 * iovec, so its state lives here too. */
struct src_scratch {
	struct user_iovec iov[UFS_SRC_MAX_IOV];
	struct ufs_pages_sent ev;
	__u64 at;   /* payload offset of the iovec being looked at */
	__u64 next; /* address the open run's next page would have */
	__u64 sent; /* bytes the send got through */
	__u32 n;    /* iovecs read */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct src_scratch);
} ufs_src_scratch SEC(".maps");

static __always_inline struct src_scratch *src_scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&ufs_src_scratch, &zero);
}

/* Copies a record built outside the ring into it (ufs_reserve and
 * ufs_submit in one, for records built in map memory). */
static __always_inline void ufs_output(void *data, __u64 size, __u32 kind)
{
	__u64 avail = bpf_ringbuf_query(&ufs_events, BPF_RB_AVAIL_DATA);

	if (bpf_ringbuf_output(&ufs_events, data, size,
			       avail < ufs_wakeup_bytes ? BPF_RB_NO_WAKEUP : BPF_RB_FORCE_WAKEUP)) {
		__u64 *c = bpf_map_lookup_elem(&ufs_drops, &kind);

		if (c)
			*c += 1;
	}
}

static __always_inline int src_enter(__u32 fd, __u64 ptr, __u64 cnt, __u16 syscall)
{
	if (!ufs_source)
		return 0;
	__u64 id = bpf_get_current_pid_tgid();

	if (!is_target(id >> 32))
		return 0;
	__u64 key = UFS_FD_KEY(id >> 32, fd);

	if (!bpf_map_lookup_elem(&ufs_sock_fds, &key))
		return 0;
	struct src_pending *p = bpf_task_storage_get(&ufs_src_task, bpf_get_current_task_btf(), 0,
						     BPF_LOCAL_STORAGE_GET_F_CREATE);

	if (!p)
		return 0;
	p->enter_ts = bpf_ktime_get_ns();
	p->ptr = ptr;
	p->cnt = cnt;
	p->fd = fd;
	p->syscall = syscall;
	p->pad = 0;
	return 0;
}

/* The pending call of this thread if it is a `syscall`; an entry left by an
 * enter whose exit was missed belongs to another call and is dropped. */
static __always_inline struct src_pending *src_exit_pending(__u16 syscall)
{
	if (!ufs_source || !is_target(bpf_get_current_pid_tgid() >> 32))
		return 0;
	struct src_pending *p = bpf_task_storage_get(&ufs_src_task, bpf_get_current_task_btf(), 0, 0);

	if (!p || !p->enter_ts)
		return 0;
	if (p->syscall != syscall) {
		p->enter_ts = 0;
		return 0;
	}
	return p;
}

/* ---- receives: the return path's page requests ---- */

static __always_inline void recv_exit(struct tp_sys_exit *ctx, __u16 syscall, int vectored)
{
	struct src_pending *p = src_exit_pending(syscall);

	if (!p)
		return;
	__s64 ret = ctx->ret;
	__u64 buf = p->ptr;
	__u64 room = p->cnt;

	if (vectored) {
		/* QEMU reads the return path into its QEMUFile buffer: one iovec. */
		struct user_iovec iov = {};

		if (!p->cnt || bpf_probe_read_user(&iov, sizeof(iov), (const void *)p->ptr))
			iov.len = 0;
		buf = iov.base;
		room = iov.len;
	}
	struct ufs_send *e = ufs_reserve(sizeof(*e), UFS_EV_RECV);

	if (e) {
		fill_hdr(&e->hdr, UFS_EV_RECV, (__u32)bpf_get_current_pid_tgid(), bpf_ktime_get_ns());
		e->enter_ts = p->enter_ts;
		e->ret = ret;
		e->req_len = room;
		e->fd = p->fd;
		e->iovcnt = vectored ? (__u32)p->cnt : 0;
		e->syscall = syscall;
		e->captured = 0;
		e->pad = 0;
		__builtin_memset(e->bytes, 0, sizeof(e->bytes));
		__u64 n = ret > 0 ? (__u64)ret : 0;

		if (room < n)
			n = room;
		barrier_var(n);
		if (n > UFS_SEND_CAPTURE)
			n = UFS_SEND_CAPTURE;
		if (n && bpf_probe_read_user(e->bytes, n, (const void *)buf) == 0)
			e->captured = (__u16)n;
		ufs_submit(e);
	}
	p->enter_ts = 0;
}

SEC("tracepoint/syscalls/sys_enter_recvmsg")
int ufs_src_enter_recvmsg(struct tp_sys_enter *ctx)
{
	/* struct user_msghdr: msg_iov at 16, msg_iovlen at 24 (UAPI, stable). */
	__u64 hdr[2] = {};

	if (ufs_source && bpf_probe_read_user(hdr, sizeof(hdr), (const void *)(ctx->args[1] + 16)))
		return 0;
	return src_enter((__u32)ctx->args[0], hdr[0], hdr[1], UFS_RECV_RECVMSG);
}

SEC("tracepoint/syscalls/sys_exit_recvmsg")
int ufs_src_exit_recvmsg(struct tp_sys_exit *ctx)
{
	recv_exit(ctx, UFS_RECV_RECVMSG, 1);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_recvfrom")
int ufs_src_enter_recvfrom(struct tp_sys_enter *ctx)
{
	return src_enter((__u32)ctx->args[0], ctx->args[1], ctx->args[2], UFS_RECV_RECVFROM);
}

SEC("tracepoint/syscalls/sys_exit_recvfrom")
int ufs_src_exit_recvfrom(struct tp_sys_exit *ctx)
{
	recv_exit(ctx, UFS_RECV_RECVFROM, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_read")
int ufs_src_enter_read(struct tp_sys_enter *ctx)
{
	return src_enter((__u32)ctx->args[0], ctx->args[1], ctx->args[2], UFS_RECV_READ);
}

SEC("tracepoint/syscalls/sys_exit_read")
int ufs_src_exit_read(struct tp_sys_exit *ctx)
{
	recv_exit(ctx, UFS_RECV_READ, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_readv")
int ufs_src_enter_readv(struct tp_sys_enter *ctx)
{
	return src_enter((__u32)ctx->args[0], ctx->args[1], ctx->args[2], UFS_RECV_READV);
}

SEC("tracepoint/syscalls/sys_exit_readv")
int ufs_src_exit_readv(struct tp_sys_exit *ctx)
{
	recv_exit(ctx, UFS_RECV_READV, 1);
	return 0;
}

/* ---- sends: the pages ---- */

/* Opens run r at iovec i of s (a page entry at payload offset at), with the
 * 8 bytes before it when the previous iovec holds them. */
static __always_inline void run_open(struct src_scratch *s, __u32 r, __u32 i)
{
	struct ufs_page_run *run = &s->ev.runs[r & (UFS_SRC_MAX_RUNS - 1)];
	struct user_iovec *iov = &s->iov[i & (UFS_SRC_MAX_IOV - 1)];

	run->at = s->at;
	run->addr = iov->base;
	run->page_len = (__u32)iov->len;
	run->pages = 1;
	run->flags = 0;
	if (i == 0)
		return;
	struct user_iovec *prev = &s->iov[(i - 1) & (UFS_SRC_MAX_IOV - 1)];

	if (prev->len >= 8 &&
	    bpf_probe_read_user(run->header, 8, (const void *)(prev->base + prev->len - 8)) == 0)
		run->flags = UFS_RUN_HEADER;
}

/* One iovec of the walk (a bpf_loop callback): a page entry extends the open
 * run when its address follows it, else opens a new one. 1 ends the walk. */
static long walk_one(__u64 index, void *unused)
{
	struct src_scratch *s = src_scratch();

	if (!s || index >= s->n || s->at >= s->sent)
		return 1;
	__u32 i = (__u32)index & (UFS_SRC_MAX_IOV - 1);
	__u64 base = s->iov[i].base, len = s->iov[i].len;

	if (len >= UFS_SRC_PAGE && !(len & (UFS_SRC_PAGE - 1))) {
		__u32 r = s->ev.n_runs;
		struct ufs_page_run *cur = &s->ev.runs[(r - 1) & (UFS_SRC_MAX_RUNS - 1)];

		if (r && base == s->next && len == cur->page_len) {
			cur->pages++;
		} else if (r < UFS_SRC_MAX_RUNS) {
			run_open(s, r, i);
			s->ev.n_runs = (__u16)(r + 1);
		} else {
			s->ev.truncated |= UFS_PS_MORE_RUNS;
			return 1;
		}
		s->next = base + len;
	}
	s->at += len;
	return 0;
}

/* Folds the page entries among the first `cnt` iovecs at `uiov` into runs,
 * up to the `sent` bytes the send got through. */
static __always_inline void walk_iov(struct src_scratch *s, __u64 uiov, __u64 cnt, __u64 sent)
{
	__u32 n = cnt < UFS_SRC_MAX_IOV ? (__u32)cnt : UFS_SRC_MAX_IOV;
	__u32 bytes = n * sizeof(s->iov[0]);

	if (cnt > UFS_SRC_MAX_IOV)
		s->ev.truncated |= UFS_PS_MORE_IOV;
	barrier_var(bytes);
	if (bytes > sizeof(s->iov))
		bytes = sizeof(s->iov);
	if (!bytes || bpf_probe_read_user(s->iov, bytes, (const void *)uiov)) {
		s->ev.truncated |= UFS_PS_MORE_IOV;
		return;
	}
	s->n = n;
	s->at = 0;
	s->next = 0;
	s->sent = sent;
	bpf_loop(UFS_SRC_MAX_IOV, walk_one, 0, 0);
}

static __always_inline void pages_exit(struct tp_sys_exit *ctx, __u16 syscall, int vectored)
{
	struct src_pending *p = src_exit_pending(syscall);

	if (!p)
		return;
	struct src_scratch *s = src_scratch();

	if (s) {
		/* Runs past n_runs keep an earlier send's; userspace reads only
		 * runs[0 .. n_runs). */
		struct ufs_pages_sent *e = &s->ev;

		fill_hdr(&e->hdr, UFS_EV_PAGES_SENT, (__u32)bpf_get_current_pid_tgid(),
			 bpf_ktime_get_ns());
		e->enter_ts = p->enter_ts;
		e->ret = ctx->ret;
		e->fd = p->fd;
		e->iovcnt = vectored ? (__u32)p->cnt : 0;
		e->syscall = syscall;
		e->n_runs = 0;
		e->truncated = 0;
		e->pad = 0;
		if (vectored && ctx->ret > 0)
			walk_iov(s, p->ptr, p->cnt, (__u64)ctx->ret);
		ufs_output(e, sizeof(*e), UFS_EV_PAGES_SENT);
	}
	p->enter_ts = 0;
}

SEC("tracepoint/syscalls/sys_enter_sendmsg")
int ufs_src_enter_sendmsg(struct tp_sys_enter *ctx)
{
	__u64 hdr[2] = {};

	if (ufs_source && bpf_probe_read_user(hdr, sizeof(hdr), (const void *)(ctx->args[1] + 16)))
		return 0;
	return src_enter((__u32)ctx->args[0], hdr[0], hdr[1], UFS_SEND_SENDMSG);
}

SEC("tracepoint/syscalls/sys_exit_sendmsg")
int ufs_src_exit_sendmsg(struct tp_sys_exit *ctx)
{
	pages_exit(ctx, UFS_SEND_SENDMSG, 1);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_writev")
int ufs_src_enter_writev(struct tp_sys_enter *ctx)
{
	return src_enter((__u32)ctx->args[0], ctx->args[1], ctx->args[2], UFS_SEND_WRITEV);
}

SEC("tracepoint/syscalls/sys_exit_writev")
int ufs_src_exit_writev(struct tp_sys_exit *ctx)
{
	pages_exit(ctx, UFS_SEND_WRITEV, 1);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_sendto")
int ufs_src_enter_sendto(struct tp_sys_enter *ctx)
{
	return src_enter((__u32)ctx->args[0], ctx->args[1], ctx->args[2], UFS_SEND_SENDTO);
}

SEC("tracepoint/syscalls/sys_exit_sendto")
int ufs_src_exit_sendto(struct tp_sys_exit *ctx)
{
	pages_exit(ctx, UFS_SEND_SENDTO, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_write")
int ufs_src_enter_write(struct tp_sys_enter *ctx)
{
	return src_enter((__u32)ctx->args[0], ctx->args[1], ctx->args[2], UFS_SEND_WRITE);
}

SEC("tracepoint/syscalls/sys_exit_write")
int ufs_src_exit_write(struct tp_sys_exit *ctx)
{
	pages_exit(ctx, UFS_SEND_WRITE, 0);
	return 0;
}

#endif /* UFFDSCOPE_SOURCE_H */
