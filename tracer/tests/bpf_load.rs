//! Root tier: loads and attaches every BPF program against a child process
//! that uses userfaultfd and sockets, then checks the records that come out.
//!
//! The child is this test binary re-executed with `CHILD_ENV` set, running
//! `child_workload`. It creates uffd A before the tracer attaches (so A is
//! found by the /proc scan), waits for "go", then creates uffd B with
//! userfaultfd(2) and uffd C with USERFAULTFD_IOC_NEW (both learned in the
//! kernel), registers region R1 on B and R2 on A, and has a faulting thread
//! touch every page while a handler thread reads the messages and places
//! each page with UFFDIO_COPY. It then sends on a pre-existing and a new TCP
//! connection with sendmsg, writev, write and send.
#![cfg(target_os = "linux")]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use uffdscope_ebpf::abi::{
    self, fault_flags, fault_source, ioctl, send_syscall, thread_op, uffd_event, uffd_fd_op,
};
use uffdscope_ebpf::RawEvent;
use uffdscope_fixtures::tier;
use uffdscope_trace::record::{Detail, Side};
use uffdscope_tracer::bpf::{
    attaches_on, probe_tracepoints, AttachOutcome, BpfConfig, BpfError, BpfTracer, FormatCheck,
    Need, RingDrain, TRACEPOINTS,
};

const CHILD_ENV: &str = "UFFDSCOPE_BPF_LOAD_CHILD";
const PAGE: usize = 4096;
const R1_PAGES: usize = 64;
const R2_PAGES: usize = 4;
/// Offset of the byte the faulting thread writes in each page, so the
/// recorded fault address can be checked exactly.
const TOUCH_OFFSET: usize = 7;
const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdMsg {
    event: u8,
    _reserved: [u8; 7],
    flags: u64,
    address: u64,
    ptid: u64,
}

fn check(ret: libc::c_long, what: &str) -> libc::c_long {
    assert!(
        ret >= 0,
        "{what} failed: {}",
        std::io::Error::last_os_error()
    );
    ret
}

fn uffd_syscall(flags: libc::c_int) -> RawFd {
    // SAFETY: userfaultfd(2) takes only flags and returns a new fd or -1.
    check(
        unsafe { libc::syscall(libc::SYS_userfaultfd, flags) },
        "userfaultfd",
    ) as RawFd
}

fn uffd_api(fd: RawFd) {
    let mut api = UffdioApi {
        api: 0xaa,
        features: UFFD_FEATURE_THREAD_ID,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes a struct uffdio_api we own.
    let r = unsafe { libc::ioctl(fd, libc::c_ulong::from(ioctl::API), &raw mut api) };
    check(r.into(), "UFFDIO_API");
}

fn map_region(pages: usize) -> u64 {
    // SAFETY: anonymous private mapping with no address hint.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            pages * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    p as u64
}

fn uffd_register(fd: RawFd, start: u64, pages: usize) {
    let mut reg = UffdioRegister {
        start,
        len: (pages * PAGE) as u64,
        mode: UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes a struct uffdio_register we own.
    let r = unsafe { libc::ioctl(fd, libc::c_ulong::from(ioctl::REGISTER), &raw mut reg) };
    check(r.into(), "UFFDIO_REGISTER");
}

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// Handler thread: serves `total` faults from `fds` (polling all of them),
/// placing each page with UFFDIO_COPY.
fn serve(fds: &[RawFd], total: usize, src: u64) {
    let mut served = 0;
    while served < total {
        let mut pfds: Vec<libc::pollfd> = fds
            .iter()
            .map(|&fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: pfds is a valid array of pollfd of the given length.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 10_000) };
        assert!(r > 0, "handler: poll timed out or failed ({r})");
        for p in pfds.iter().filter(|p| p.revents & libc::POLLIN != 0) {
            let mut msg = UffdMsg::default();
            // SAFETY: reads at most size_of::<UffdMsg>() bytes into msg.
            let n = unsafe {
                libc::read(
                    p.fd,
                    std::ptr::from_mut(&mut msg).cast(),
                    std::mem::size_of::<UffdMsg>(),
                )
            };
            if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) {
                continue;
            }
            assert_eq!(n, 32, "handler: short uffd read");
            assert_eq!(
                msg.event,
                uffd_event::PAGEFAULT,
                "handler: unexpected event"
            );
            let mut copy = UffdioCopy {
                dst: msg.address & !(PAGE as u64 - 1),
                src,
                len: PAGE as u64,
                mode: 0,
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY reads/writes a struct uffdio_copy we own; src
            // is a mapped page of ours.
            let r = unsafe { libc::ioctl(p.fd, libc::c_ulong::from(ioctl::COPY), &raw mut copy) };
            check(r.into(), "UFFDIO_COPY");
            served += 1;
        }
    }
}

/// Sends `parts` as one sendmsg with one iovec per part.
fn sendmsg_parts(fd: RawFd, parts: &[&[u8]]) {
    let iov: Vec<libc::iovec> = parts
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr().cast_mut().cast(),
            iov_len: p.len(),
        })
        .collect();
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr().cast_mut();
    msg.msg_iovlen = iov.len();
    // SAFETY: msg points at iovecs over live buffers.
    let r = unsafe { libc::sendmsg(fd, &raw const msg, 0) };
    check(r as libc::c_long, "sendmsg");
}

fn writev_parts(fd: RawFd, parts: &[&[u8]]) {
    let iov: Vec<libc::iovec> = parts
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr().cast_mut().cast(),
            iov_len: p.len(),
        })
        .collect();
    // SAFETY: iov describes live buffers.
    let r = unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int) };
    check(r as libc::c_long, "writev");
}

fn write_all_fd(fd: RawFd, data: &[u8]) {
    // SAFETY: writes from a live buffer.
    let r = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    check(r as libc::c_long, "write");
}

/// The child half of `bpf_load_and_join`; does nothing unless re-executed
/// by it.
#[test]
fn child_workload() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let mut out = std::io::stdout();
    // Before attach: uffd A (non-blocking, to produce an EAGAIN read) and a
    // connected TCP pair; both must be found by the tracer's /proc scan.
    let uffd_a = uffd_syscall(libc::O_CLOEXEC | libc::O_NONBLOCK);
    let listener = TcpListener::bind("127.0.0.1:0").expect("child: bind");
    let mut old_client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (mut old_server, _) = listener.accept().expect("accept");
    writeln!(out, "\nUFS ready").expect("stdout");
    out.flush().expect("stdout");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("child: stdin");
    assert_eq!(line.trim(), "go", "child: expected go");

    // Non-blocking: poll(2) on a blocking uffd always reports POLLERR.
    let uffd_b = uffd_syscall(libc::O_CLOEXEC | libc::O_NONBLOCK);
    let uffd_c = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd")
        .ok()
        .map(|dev| {
            // SAFETY: USERFAULTFD_IOC_NEW takes the uffd flags as its argument.
            let fd = unsafe {
                libc::ioctl(
                    dev.as_raw_fd(),
                    libc::c_ulong::from(ioctl::USERFAULTFD_IOC_NEW),
                    libc::O_CLOEXEC,
                )
            };
            check(fd.into(), "USERFAULTFD_IOC_NEW");
            fd
        });
    uffd_api(uffd_a);
    uffd_api(uffd_b);
    let mut eagain = [0u8; 32];
    // SAFETY: reads into a 32-byte buffer; A has no message, so -EAGAIN.
    let n = unsafe { libc::read(uffd_a, eagain.as_mut_ptr().cast(), 32) };
    assert_eq!(n, -1, "child: read on idle uffd A should fail with EAGAIN");
    if let Some(c) = uffd_c {
        // SAFETY: closing an fd we own.
        drop(unsafe { OwnedFd::from_raw_fd(c) });
    }

    let r1 = map_region(R1_PAGES);
    let r2 = map_region(R2_PAGES);
    uffd_register(uffd_b, r1, R1_PAGES);
    uffd_register(uffd_a, r2, R2_PAGES);
    let src = map_region(1);
    // SAFETY: src is a mapped, writable page.
    unsafe { std::ptr::write_bytes(src as *mut u8, 0x5a, PAGE) };

    let (tid_tx, tid_rx) = mpsc::channel();
    let handler = std::thread::Builder::new()
        .name("ufs-handler".into())
        .spawn(move || {
            tid_tx.send(gettid()).expect("send tid");
            serve(&[uffd_b, uffd_a], R1_PAGES + R2_PAGES, src);
        })
        .expect("spawn handler");
    let handler_tid = tid_rx.recv().expect("handler tid");
    let faulter = std::thread::Builder::new()
        .name("ufs-faulter".into())
        .spawn(move || {
            for (base, pages) in [(r1, R1_PAGES), (r2, R2_PAGES)] {
                for i in 0..pages {
                    let p = (base as usize + i * PAGE + TOUCH_OFFSET) as *mut u8;
                    // SAFETY: p is inside a mapped region of ours; the write
                    // faults into userfaultfd and resumes once placed.
                    unsafe { p.write_volatile(1) };
                }
            }
            gettid()
        })
        .expect("spawn faulter");
    let fault_tid = faulter.join().expect("faulter");
    handler.join().expect("handler");

    // Sends: sendmsg on the pre-existing connection, then a new connection
    // (learned from socket()/accept4() in the kernel) with write, writev and
    // send (std's TcpStream::write is send(2), i.e. sendto).
    sendmsg_parts(old_client.as_raw_fd(), &[b"UFS1", b"-sendmsg-payload"]);
    let mut new_client =
        TcpStream::connect(listener.local_addr().expect("addr")).expect("connect 2");
    let (mut new_server, _) = listener.accept().expect("accept 2");
    write_all_fd(new_client.as_raw_fd(), b"UFS2-write");
    writev_parts(new_client.as_raw_fd(), &[b"UFS3", b"-", b"writev"]);
    new_client.write_all(b"UFS4-send").expect("send");
    let mut sink = [0u8; 256];
    let mut got = 0;
    while got < 20 {
        got += old_server.read(&mut sink).expect("read old");
    }
    let mut got = 0;
    while got < 10 + 11 + 9 {
        got += new_server.read(&mut sink).expect("read new");
    }
    old_client.flush().expect("flush");

    writeln!(
        out,
        "\nUFS result fault_tid={fault_tid} handler_tid={handler_tid} r1={r1} r2={r2} uffd_a={uffd_a} \
         uffd_b={uffd_b} uffd_c={} old_client={} new_client={}",
        uffd_c.map_or(-1, i64::from),
        old_client.as_raw_fd(),
        new_client.as_raw_fd()
    )
    .expect("stdout");
    out.flush().expect("stdout");
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // The child normally exits by itself; this only runs on failure.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read_tagged(lines: &mut impl Iterator<Item = std::io::Result<String>>, tag: &str) -> String {
    for line in lines.by_ref() {
        let line = line.expect("child stdout");
        // libtest prints "test child_workload ... " without a newline, so
        // the tag may be preceded by it.
        if let Some(pos) = line.find(tag) {
            return line[pos + tag.len()..].trim().to_string();
        }
    }
    panic!("child exited before printing {tag:?}");
}

fn parse_kv(s: &str) -> BTreeMap<String, i64> {
    s.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let n = v
                .parse()
                .unwrap_or_else(|_| panic!("bad value {v:?} for {k}"));
            (k.to_string(), n)
        })
        .collect()
}

/// What the self-contained workload did, as it reported it, and what the
/// BPF side recorded of it.
struct Observed {
    pid: u32,
    events: Vec<RawEvent>,
    result: BTreeMap<String, i64>,
    fault_tid: u32,
    handler_tid: u32,
    r1: u64,
    r2: u64,
    /// Every page of both registered regions.
    pages: BTreeSet<u64>,
}

#[test]
fn bpf_load_and_join() {
    if std::env::var_os(CHILD_ENV).is_some() || !tier::root_bpf("bpf_load_and_join") {
        return;
    }
    let o = run_workload_traced();
    check_fault_wakes(&o);
    check_reads(&o);
    check_ioctls(&o);
    check_fd_lifecycle(&o);
    check_sends(&o);
    check_threads(&o);
}

/// Re-executes this test binary as a child running the test `name` (with
/// `CHILD_ENV` set); returns it, its stdout lines, and the sender that
/// disarms its watchdog: a safety net against a hung child (not a timing
/// assertion) that kills it after two minutes, which makes the reads of its
/// output fail with a clear message.
fn spawn_child(
    name: &str,
) -> (
    ChildGuard,
    std::io::Lines<BufReader<ChildStdout>>,
    mpsc::Sender<()>,
) {
    let exe = std::env::current_exe().expect("current_exe");
    let child = Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child workload");
    let mut child = ChildGuard(child);
    let pid = child.0.id();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(120)) == Err(mpsc::RecvTimeoutError::Timeout) {
            eprintln!("child workload {pid} hung; killing it");
            // SAFETY: kill(2) on the pid of our own unreaped child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    });
    let stdout: ChildStdout = child.0.stdout.take().expect("child stdout");
    (child, BufReader::new(stdout).lines(), done_tx)
}

/// Spawns the child workload, loads and attaches the tracer to it, lets it
/// run, and drains every record it produced.
fn run_workload_traced() -> Observed {
    let Traced {
        pid,
        tracer,
        mut ring,
        result,
    } = trace_child("child_workload", BpfConfig::new, check_attached);
    // ~230 records stay far below the wake-up threshold, so the kernel must
    // not have woken the consumer even once (no per-event wake-ups).
    assert!(
        !ring.wait(Duration::from_millis(50)).expect("epoll on ring"),
        "ring signalled although the waiting data is below the wake-up threshold"
    );
    let events = drain(&mut ring);
    let early = events
        .iter()
        .filter(|e| matches!(e, RawEvent::FaultWake(w) if w.flags & fault_flags::WOKEN_BEFORE_BLOCK != 0))
        .count();
    println!("fault_wake records woken before they blocked: {early}");

    let counters = tracer.counters().expect("counters");
    println!("counters: {counters:?}");
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &events {
        *by_kind.entry(e.kind().name()).or_default() += 1;
    }
    println!("records by kind: {by_kind:?}");
    assert_eq!(counters.drops, 0, "ring drops: {counters:?}");
    assert_eq!(tracer.drops().expect("drops"), 0);
    assert_eq!(counters.map_full, 0, "map full: {counters:?}");
    assert!(
        counters.read_eagain >= 1,
        "EAGAIN read on uffd A not counted: {counters:?}"
    );

    let fault_tid = result["fault_tid"] as u32;
    let handler_tid = result["handler_tid"] as u32;
    let (r1, r2) = (result["r1"] as u64, result["r2"] as u64);
    let pages: BTreeSet<u64> = (0..R1_PAGES)
        .map(|i| r1 + (i * PAGE) as u64)
        .chain((0..R2_PAGES).map(|i| r2 + (i * PAGE) as u64))
        .collect();
    Observed {
        pid,
        events,
        result,
        fault_tid,
        handler_tid,
        r1,
        r2,
        pages,
    }
}

/// A child test run under the tracer, finished; its ring not drained yet.
struct Traced {
    pid: u32,
    tracer: BpfTracer,
    ring: RingDrain,
    result: BTreeMap<String, i64>,
}

/// Spawns the child test `name`, loads the tracer on it with the config
/// `cfg` makes of its pid, calls `before_go` with it, and lets the child run
/// to its result and exit.
fn trace_child(
    name: &str,
    cfg: impl FnOnce(Vec<u32>) -> BpfConfig,
    before_go: impl FnOnce(&BpfTracer),
) -> Traced {
    let (mut child, mut lines, done_tx) = spawn_child(name);
    let pid = child.0.id();
    read_tagged(&mut lines, "UFS ready");
    let mut tracer =
        BpfTracer::load(&cfg(vec![pid])).unwrap_or_else(|e| panic!("BpfTracer::load: {e}"));
    let ring = tracer.take_ring().expect("take ring");
    before_go(&tracer);
    let mut stdin = child.0.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("write go");
    let result = parse_kv(&read_tagged(&mut lines, "UFS result"));
    // Drain the rest of the child's output so it never blocks on a full pipe.
    let rest = std::thread::spawn(move || lines.count());
    let status = child.0.wait().expect("wait child");
    drop(done_tx);
    assert!(status.success(), "child {name} failed: {status}");
    rest.join().expect("stdout reader");
    Traced {
        pid,
        tracer,
        ring,
        result,
    }
}

/// Every record the ring holds; none may be undecodable.
fn drain(ring: &mut RingDrain) -> Vec<RawEvent> {
    let mut events = Vec::new();
    let count = ring.drain_into(&mut events);
    assert_eq!(count.bad, 0, "undecodable records: {:?}", count.first_error);
    events
}

/// In a child: says it is ready, waits for "go", and returns a blocking uffd
/// with `pages` fresh pages registered (MISSING), and their start.
fn child_ready_uffd(pages: usize) -> (RawFd, u64) {
    let mut out = std::io::stdout();
    writeln!(out, "\nUFS ready").expect("stdout");
    out.flush().expect("stdout");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("child: stdin");
    let uffd = uffd_syscall(libc::O_CLOEXEC);
    uffd_api(uffd);
    let region = map_region(pages);
    uffd_register(uffd, region, pages);
    (uffd, region)
}

/// Pages the placer of `child_interrupt_wakes` places per ioctl (2 MiB).
const BURST_PAGES: usize = 512;
/// Sleeps of the sleeper thread in `child_interrupt_wakes`.
const SHORT_SLEEPS: usize = 3000;

fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        let r = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set);
        check(r.into(), "sched_setaffinity");
    }
}

/// The interrupt case: a placer thread copies 2 MiB bursts into a registered
/// region (nobody faults there) while a sleeper on the same CPU sleeps 3000
/// times for 20 µs, every other time after an ordinary page fault (so both a
/// sleep with an unrelated fault pending and one with none occur). The sleeper's
/// timer fires in interrupt context, often while the placer is inside its
/// UFFDIO_COPY, so `sched_waking` sees a wake "from" a uffd ioctl of a thread
/// that is not in a userfault at all.
#[test]
fn child_interrupt_wakes() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let (uffd, region) = child_ready_uffd(BURST_PAGES);
    let mut out = std::io::stdout();
    let src = map_region(BURST_PAGES);
    // SAFETY: src is a mapped, writable region of BURST_PAGES pages.
    unsafe { std::ptr::write_bytes(src as *mut u8, 0x5a, BURST_PAGES * PAGE) };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let placer_stop = stop.clone();
    let placer = std::thread::spawn(move || {
        pin_to_cpu0();
        let mut bursts = 0u64;
        while !placer_stop.load(std::sync::atomic::Ordering::Relaxed) {
            let mut copy = UffdioCopy {
                dst: region,
                src,
                len: (BURST_PAGES * PAGE) as u64,
                mode: 0,
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY reads and writes a struct uffdio_copy we own.
            let r = unsafe { libc::ioctl(uffd, libc::c_ulong::from(ioctl::COPY), &raw mut copy) };
            check(r.into(), "UFFDIO_COPY");
            // SAFETY: drops the pages just placed so the next copy places them again.
            let r =
                unsafe { libc::madvise(region as *mut _, BURST_PAGES * PAGE, libc::MADV_DONTNEED) };
            check(r.into(), "madvise");
            bursts += 1;
        }
        bursts
    });
    let sleeper = std::thread::spawn(|| {
        pin_to_cpu0();
        let scratch = map_region(SHORT_SLEEPS);
        for i in 0..SHORT_SLEEPS {
            if i % 2 == 0 {
                // SAFETY: inside the scratch mapping; a first touch, an ordinary fault.
                unsafe { ((scratch as usize + i * PAGE) as *mut u8).write_volatile(1) };
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        gettid()
    });
    let sleeper_tid = sleeper.join().expect("sleeper");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let bursts = placer.join().expect("placer");
    writeln!(
        out,
        "\nUFS result sleeper_tid={sleeper_tid} bursts={bursts}"
    )
    .expect("stdout");
    out.flush().expect("stdout");
}

/// A wake that reaches a target thread while another is inside a uffd ioctl
/// is a fault's wake only if the woken thread's pending fault lies in the
/// ioctl's range; an interrupt's wake of a sleeping thread is not a fault.
#[test]
fn interrupt_wakes_are_not_faults() {
    if std::env::var_os(CHILD_ENV).is_some() || !tier::root_bpf("interrupt_wakes_are_not_faults") {
        return;
    }
    interrupt_wakes_at(Detail::Full);
}

/// The same at `--detail minimal`, where no program sees the ioctl's entry
/// and `sched_waking` reads the ioctl from the waker's saved registers.
#[test]
fn interrupt_wakes_are_not_faults_at_minimal() {
    if std::env::var_os(CHILD_ENV).is_some()
        || !tier::root_bpf("interrupt_wakes_are_not_faults_at_minimal")
    {
        return;
    }
    interrupt_wakes_at(Detail::Minimal);
}

fn interrupt_wakes_at(detail: Detail) {
    let Traced {
        tracer,
        mut ring,
        result,
        ..
    } = trace_child(
        "child_interrupt_wakes",
        |pids| BpfConfig {
            detail,
            ..BpfConfig::new(pids)
        },
        |_| {},
    );
    let events = drain(&mut ring);
    let counters = tracer.counters().expect("counters");
    println!("{result:?} counters: {counters:?}");
    assert_eq!(counters.drops, 0, "ring drops: {counters:?}");
    let sleeper = result["sleeper_tid"] as u32;
    let as_faults: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, RawEvent::FaultWake(w) if w.hdr.tid == sleeper))
        .collect();
    // Without the checks about half the timer wakes come out as faults. With
    // them none did in every run but one (of about 30, under load, cause not
    // found: see ARCHITECTURE.md): a handful is tolerated and shown.
    for w in as_faults.iter().take(3) {
        println!("a timer wake recorded as a fault: {w:?}");
    }
    assert!(
        as_faults.len() <= SHORT_SLEEPS / 1000,
        "{} of the sleeper's {SHORT_SLEEPS} timer wakes were recorded as faults, e.g. {:?}",
        as_faults.len(),
        as_faults.first()
    );
    // The case must have happened for the test to mean anything.
    assert!(
        counters.wake_in_interrupt > 0,
        "no timer wake landed inside a UFFDIO_COPY ({} bursts): {counters:?}",
        result["bursts"]
    );
}

/// Every tracepoint attached, and the uffd that existed before attach seeded.
fn check_attached(tracer: &BpfTracer) {
    for st in tracer.attach_status() {
        println!(
            "{:<40} {:?} {:?}",
            st.tracepoint.to_string(),
            st.tracepoint.need,
            st.outcome
        );
        if st.tracepoint.need == Need::Required {
            assert_eq!(st.outcome, AttachOutcome::Attached, "{}", st.tracepoint);
        }
    }
    // Every tracepoint the object uses exists on the hosts this runs on
    // (6.x with kvm loaded); an optional one missing here is worth a look.
    let not_attached: Vec<_> = tracer
        .attach_status()
        .iter()
        .filter(|s| s.outcome != AttachOutcome::Attached)
        .map(|s| format!("{}: {:?}", s.tracepoint, s.outcome))
        .collect();
    assert!(
        not_attached.is_empty() || std::env::var_os("UFFDSCOPE_ALLOW_MISSING_OPTIONAL").is_some(),
        "optional tracepoints not attached: {not_attached:?}"
    );
    let destination = TRACEPOINTS
        .iter()
        .filter(|t| attaches_on(t, Side::Destination))
        .count();
    assert_eq!(tracer.attach_status().len(), destination);
    let seeded = tracer.uffd_fds().expect("read uffd fd map");
    assert_eq!(
        seeded.len(),
        1,
        "uffd A should be seeded from /proc: {seeded:?}"
    );
}

/// One joined fault/wake record per page, for the faulting thread, woken by
/// the handler's UFFDIO_COPY of that page.
fn check_fault_wakes(o: &Observed) {
    let events = &o.events;
    let fault_tid = o.fault_tid;
    let handler_tid = o.handler_tid;
    let pages = &o.pages;
    let total = R1_PAGES + R2_PAGES;
    let wakes: Vec<&abi::FaultWake> = events
        .iter()
        .filter_map(|e| match e {
            RawEvent::FaultWake(w) if w.hdr.tid == fault_tid => Some(w),
            _ => None,
        })
        .collect();
    assert_eq!(
        wakes.len(),
        total,
        "fault_wake records for the faulting thread"
    );
    let mut seen = BTreeSet::new();
    for w in &wakes {
        let page = w.fault_addr & !(PAGE as u64 - 1);
        assert!(
            pages.contains(&page),
            "fault at {:#x} outside the regions: {w:?}",
            w.fault_addr
        );
        assert_eq!(
            w.fault_addr,
            page + TOUCH_OFFSET as u64,
            "exact fault address: {w:?}"
        );
        assert!(seen.insert(page), "two records for page {page:#x}");
        assert_eq!(w.fault_source, fault_source::USER, "{w:?}");
        assert_eq!(w.waker_tid, handler_tid, "{w:?}");
        assert_eq!(w.ioctl_cmd, ioctl::COPY, "{w:?}");
        assert_eq!(w.ioctl_start, page, "{w:?}");
        assert_eq!(w.ioctl_len, PAGE as u64, "{w:?}");
        assert_eq!(w.fault_error_code & 0x2, 0x2, "write fault expected: {w:?}");
        assert!(w.fault_ts > 0 && w.fault_ts <= w.woken_ts, "{w:?}");
        if w.flags & fault_flags::WOKEN_BEFORE_BLOCK != 0 {
            assert_eq!((w.blocked_ts, w.run_ts), (0, 0), "{w:?}");
        } else {
            assert!(w.fault_ts <= w.blocked_ts, "{w:?}");
            // With a switch-in the kernel did not report (RUN_UNSEEN),
            // run_ts is a later sign of the thread running.
            let run_ts = w.run_ts;
            assert_eq!(w.hdr.ts, run_ts, "{w:?}");
            if w.flags & fault_flags::WOKEN_BEFORE_SWITCH != 0 {
                assert!(
                    w.woken_ts <= w.blocked_ts && w.blocked_ts <= run_ts,
                    "{w:?}"
                );
            } else {
                assert!(w.blocked_ts <= w.woken_ts && w.woken_ts <= run_ts, "{w:?}");
            }
            assert_ne!(w.block_state, 0, "{w:?}");
        }
    }
    assert!(
        events
            .iter()
            .all(|e| !matches!(e, RawEvent::FaultWake(w) if w.hdr.tid != fault_tid)),
        "fault_wake for another thread"
    );
}

/// uffd reads by the handler: one 32-byte PAGEFAULT message per page, with
/// the faulting thread's id.
fn check_reads(o: &Observed) {
    let events = &o.events;
    let fault_tid = o.fault_tid;
    let handler_tid = o.handler_tid;
    let pages = &o.pages;
    let total = R1_PAGES + R2_PAGES;
    let reads: Vec<&abi::UffdRead> = events
        .iter()
        .filter_map(|e| match e {
            RawEvent::UffdRead(r) if r.ret > 0 => Some(&**r),
            _ => None,
        })
        .collect();
    assert_eq!(reads.len(), total, "successful uffd reads");
    let mut read_pages = BTreeSet::new();
    for r in &reads {
        assert_eq!(r.hdr.tid, handler_tid, "{r:?}");
        assert_eq!((r.ret, r.n_msgs), (32, 1), "{r:?}");
        let m = r.messages()[0];
        assert!(m.is_pagefault(), "{m:?}");
        assert_eq!(m.ptid(), fault_tid, "ptid (UFFD_FEATURE_THREAD_ID): {m:?}");
        assert_ne!(m.flags() & uffd_event::FLAG_WRITE, 0, "{m:?}");
        assert!(r.enter_ts <= r.hdr.ts, "{r:?}");
        read_pages.insert(m.address());
    }
    assert_eq!(&read_pages, pages, "uffd messages cover every page");
}

/// The handler's COPY per page, both REGISTERs, and UFFDIO_API on A and B.
fn check_ioctls(o: &Observed) {
    let events = &o.events;
    let handler_tid = o.handler_tid;
    let pages = &o.pages;
    let total = R1_PAGES + R2_PAGES;
    let (r1, r2) = (o.r1, o.r2);
    let ioctls: Vec<&abi::UffdIoctl> = events
        .iter()
        .filter_map(|e| match e {
            RawEvent::UffdIoctl(i) => Some(i),
            _ => None,
        })
        .collect();
    let copies: Vec<_> = ioctls.iter().filter(|i| i.cmd == ioctl::COPY).collect();
    assert_eq!(copies.len(), total, "UFFDIO_COPY records");
    let mut copy_pages = BTreeSet::new();
    for c in &copies {
        assert_eq!(c.hdr.tid, handler_tid, "{c:?}");
        assert_eq!(
            (c.ret, c.result, c.len),
            (0, PAGE as i64, PAGE as u64),
            "{c:?}"
        );
        assert_eq!(c.n_woken, 1, "each copy wakes the faulting thread: {c:?}");
        assert!(c.n_wakeups >= 1, "{c:?}");
        assert!(c.enter_ts <= c.hdr.ts, "{c:?}");
        copy_pages.insert(c.start);
    }
    assert_eq!(&copy_pages, pages, "UFFDIO_COPY covers every page");
    let registers: BTreeSet<(u64, u64)> = ioctls
        .iter()
        .filter(|i| i.cmd == ioctl::REGISTER)
        .map(|i| {
            assert_eq!((i.ret, i.mode), (0, UFFDIO_REGISTER_MODE_MISSING), "{i:?}");
            assert_ne!(i.result, 0, "REGISTER returns the allowed ioctls: {i:?}");
            (i.start, i.len)
        })
        .collect();
    assert_eq!(
        registers,
        BTreeSet::from([
            (r1, (R1_PAGES * PAGE) as u64),
            (r2, (R2_PAGES * PAGE) as u64)
        ])
    );
    let apis: Vec<_> = ioctls.iter().filter(|i| i.cmd == ioctl::API).collect();
    assert_eq!(apis.len(), 2, "UFFDIO_API on A and B: {apis:?}");
    for a in apis {
        assert_eq!(
            (a.ret, a.start, a.src),
            (0, 0xaa, UFFD_FEATURE_THREAD_ID),
            "{a:?}"
        );
        assert_ne!(a.result as u64 & UFFD_FEATURE_THREAD_ID, 0, "{a:?}");
    }
}

/// uffd fd lifecycle: B from the syscall, C from /dev/userfaultfd (when the
/// device exists) and then closed.
fn check_fd_lifecycle(o: &Observed) {
    let events = &o.events;
    let (pid, result) = (o.pid, &o.result);
    let fd_events: Vec<(u32, u32)> = events
        .iter()
        .filter_map(|e| match e {
            RawEvent::UffdFd(f) => {
                assert_eq!(f.tgid, pid, "{f:?}");
                Some((f.op, f.fd))
            }
            _ => None,
        })
        .collect();
    let mut want = vec![(uffd_fd_op::SYSCALL, result["uffd_b"] as u32)];
    if result["uffd_c"] >= 0 {
        want.push((uffd_fd_op::IOC_NEW, result["uffd_c"] as u32));
        want.push((uffd_fd_op::CLOSE, result["uffd_c"] as u32));
    } else {
        println!("/dev/userfaultfd missing: USERFAULTFD_IOC_NEW not exercised");
    }
    assert_eq!(fd_events, want, "uffd fd events");
}

/// Sends with their payloads, and socket byte counts for the TCP traffic.
fn check_sends(o: &Observed) {
    let events = &o.events;
    let result = &o.result;
    let sends: Vec<(u16, u32, Vec<u8>, i64)> = events
        .iter()
        .filter_map(|e| match e {
            RawEvent::Send(s) => Some((s.syscall, s.fd, s.payload().to_vec(), s.ret)),
            _ => None,
        })
        .collect();
    let old_client = result["old_client"] as u32;
    let new_client = result["new_client"] as u32;
    let expect_sends = [
        (
            send_syscall::SENDMSG,
            old_client,
            b"UFS1-sendmsg-payload".to_vec(),
            20,
        ),
        (send_syscall::WRITE, new_client, b"UFS2-write".to_vec(), 10),
        (
            send_syscall::WRITEV,
            new_client,
            b"UFS3-writev".to_vec(),
            11,
        ),
        (send_syscall::SENDTO, new_client, b"UFS4-send".to_vec(), 9),
    ];
    for want in &expect_sends {
        assert!(sends.contains(want), "missing send {want:?} in {sends:?}");
    }

    // Socket byte counts for the TCP sends and receives.
    let sock_lens: Vec<&abi::SockLen> = events
        .iter()
        .filter_map(|e| match e {
            RawEvent::SockLen(s) => Some(s),
            _ => None,
        })
        .collect();
    let sent: i64 = sock_lens
        .iter()
        .filter(|s| s.dir == 1 && s.ret > 0)
        .map(|s| i64::from(s.ret))
        .sum();
    let received: i64 = sock_lens
        .iter()
        .filter(|s| s.dir == 0 && s.ret > 0)
        .map(|s| i64::from(s.ret))
        .sum();
    assert_eq!(sent, 50, "bytes sent per sock_send_length: {sock_lens:?}");
    assert_eq!(
        received, 50,
        "bytes received per sock_recv_length: {sock_lens:?}"
    );
}

/// Both workers appear with their names, as new threads, and the process exits.
fn check_threads(o: &Observed) {
    let events = &o.events;
    let fault_tid = o.fault_tid;
    let handler_tid = o.handler_tid;
    let pid = o.pid;
    let named: BTreeMap<u32, String> = events
        .iter()
        .filter_map(|e| match e {
            RawEvent::Thread(t) if t.op == thread_op::RENAME => Some((t.hdr.tid, t.comm_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        named.get(&fault_tid).map(String::as_str),
        Some("ufs-faulter"),
        "{named:?}"
    );
    assert_eq!(
        named.get(&handler_tid).map(String::as_str),
        Some("ufs-handler"),
        "{named:?}"
    );
    let new_threads: BTreeSet<u32> = events
        .iter()
        .filter_map(|e| match e {
            RawEvent::Thread(t) if t.op == thread_op::NEW => Some(t.hdr.tid),
            _ => None,
        })
        .collect();
    assert!(
        new_threads.contains(&fault_tid) && new_threads.contains(&handler_tid),
        "{new_threads:?}"
    );
    let exits: BTreeSet<u32> = events
        .iter()
        .filter_map(|e| match e {
            RawEvent::Thread(t) if t.op == thread_op::EXIT => Some(t.hdr.tid),
            _ => None,
        })
        .collect();
    assert!(
        exits.contains(&pid),
        "process exit of the main thread: {exits:?}"
    );
}

/// With a zero wake-up threshold every submit forces a wake-up, so the edge
/// triggered wait returns as soon as the target emits anything (here its exit).
#[test]
fn forced_wakeup_above_threshold() {
    if std::env::var_os(CHILD_ENV).is_some() || !tier::root_bpf("forced_wakeup_above_threshold") {
        return;
    }
    let child = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn cat");
    let mut child = ChildGuard(child);
    let pid = child.0.id();
    let cfg = BpfConfig {
        wakeup_bytes: 0,
        ..BpfConfig::new(vec![pid])
    };
    let mut tracer = BpfTracer::load(&cfg).unwrap_or_else(|e| panic!("BpfTracer::load: {e}"));
    let mut ring = tracer.take_ring().expect("take ring");
    drop(child.0.stdin.take());
    child.0.wait().expect("wait cat");
    // Generous bound: a safety net against a missing wake-up, not a timing
    // measurement.
    assert!(
        ring.wait(Duration::from_secs(10)).expect("epoll on ring"),
        "no forced wake-up with wakeup_bytes = 0"
    );
    let mut events = Vec::new();
    let count = ring.drain_into(&mut events);
    assert_eq!(count.bad, 0, "{:?}", count.first_error);
    assert!(
        events.iter().any(
            |e| matches!(e, RawEvent::Thread(t) if t.op == thread_op::EXIT && t.hdr.tid == pid)
        ),
        "exit record of {pid} missing: {events:?}"
    );
    assert_eq!(tracer.drops().expect("drops"), 0);
}

/// A target without KVM gets no `kvm:*` program: they would run for every
/// KVM guest on the host.
#[test]
fn no_kvm_programs_for_a_target_without_kvm() {
    if std::env::var_os(CHILD_ENV).is_some()
        || !tier::root_bpf("no_kvm_programs_for_a_target_without_kvm")
    {
        return;
    }
    let me = std::process::id();
    let cfg = BpfConfig {
        kvm: false,
        ..BpfConfig::new(vec![me])
    };
    let tracer = BpfTracer::load(&cfg).expect("load");
    let cats: Vec<&str> = tracer
        .attach_status()
        .iter()
        .map(|s| s.tracepoint.category)
        .collect();
    assert!(!cats.contains(&"kvm"), "{cats:?}");
    assert!(
        cats.contains(&"sched") && cats.contains(&"syscalls"),
        "{cats:?}"
    );
}

/// A target that is gone is reported as such, naming /proc.
#[test]
fn load_reports_a_gone_target() {
    if std::env::var_os(CHILD_ENV).is_some() || !tier::root_bpf("load_reports_a_gone_target") {
        return;
    }
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait true");
    let err = BpfTracer::load(&BpfConfig::new(vec![pid])).expect_err("load against a reaped pid");
    let msg = err.to_string();
    assert!(
        matches!(err, BpfError::Proc { .. }) && msg.contains(&format!("/proc/{pid}/fd")),
        "unexpected error: {msg}"
    );
}

/// Every required tracepoint exists here with the layout the programs read.
#[test]
fn probe_tracepoints_on_this_host() {
    if std::env::var_os(CHILD_ENV).is_some() || !tier::root_bpf("probe_tracepoints_on_this_host") {
        return;
    }
    let probes = probe_tracepoints().unwrap_or_else(|e| panic!("probe_tracepoints: {e}"));
    assert_eq!(probes.len(), TRACEPOINTS.len());
    for p in &probes {
        println!(
            "{:<40} {:?} {:?}",
            p.tracepoint.to_string(),
            p.tracepoint.need,
            p.format
        );
        if p.tracepoint.need == Need::Required {
            assert_eq!(p.format, FormatCheck::Matches, "{}", p.tracepoint);
        }
    }
}

/// Background placements of `child_lean`.
const LEAN_BACKGROUND: usize = 200;

/// Places `LEAN_BACKGROUND` pages nobody waits for, then serves one fault
/// (read, place) and places one more page.
#[test]
fn child_lean() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let (uffd, region) = child_ready_uffd(LEAN_BACKGROUND + 2);
    let mut out = std::io::stdout();
    let src = map_region(1);
    let place = |i: usize| {
        let mut copy = UffdioCopy {
            dst: region + (i * PAGE) as u64,
            src,
            len: PAGE as u64,
            mode: 0,
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads and writes a struct uffdio_copy we own.
        let r = unsafe { libc::ioctl(uffd, libc::c_ulong::from(ioctl::COPY), &raw mut copy) };
        check(r.into(), "UFFDIO_COPY");
    };
    for i in 0..LEAN_BACKGROUND {
        place(i);
    }
    let faulted = region + (LEAN_BACKGROUND * PAGE) as u64;
    let toucher = std::thread::spawn(move || {
        // SAFETY: inside the registered region; the fault waits for the placement.
        unsafe { (faulted as *mut u8).write_volatile(1) };
    });
    let mut msg = UffdMsg::default();
    // SAFETY: reads at most size_of::<UffdMsg>() bytes into msg (blocking uffd).
    let n = unsafe {
        libc::read(
            uffd,
            std::ptr::from_mut(&mut msg).cast(),
            std::mem::size_of::<UffdMsg>(),
        )
    };
    assert_eq!(n, 32, "child: uffd read");
    place(LEAN_BACKGROUND);
    toucher.join().expect("toucher");
    place(LEAN_BACKGROUND + 1);
    writeln!(out, "\nUFS result placer_tid={}", gettid()).expect("stdout");
    out.flush().expect("stdout");
}

/// With `lean` set, the kernel counts background placements in bins and
/// records only the waking placement and the placer's next ioctl.
#[test]
fn lean_counts_background_placements() {
    if std::env::var_os(CHILD_ENV).is_some() || !tier::root_bpf("lean_counts_background_placements")
    {
        return;
    }
    let Traced {
        mut tracer,
        mut ring,
        result,
        ..
    } = trace_child(
        "child_lean",
        |pids| BpfConfig {
            detail: Detail::Standard,
            ..BpfConfig::new(pids)
        },
        |_| {},
    );
    let events = drain(&mut ring);
    let placer = result["placer_tid"] as u32;
    let copies: Vec<&abi::UffdIoctl> = events
        .iter()
        .filter_map(|e| match e {
            RawEvent::UffdIoctl(io) if io.cmd == ioctl::COPY => Some(io),
            _ => None,
        })
        .collect();
    assert_eq!(
        copies.len(),
        2,
        "the wake and the next placement: {copies:?}"
    );
    assert!(
        copies[0].n_woken >= 1 && copies[1].n_woken == 0,
        "{copies:?}"
    );
    let bins = tracer.take_bins(u64::MAX).expect("take bins");
    let counted: u64 = bins.iter().map(|(_, v)| v.count).sum();
    assert_eq!(counted, LEAN_BACKGROUND as u64, "{bins:?}");
    assert!(bins.iter().all(|(k, v)| k.tid == placer
        && k.cmd == ioctl::COPY
        && k.len == PAGE as u64
        && v.first_exit_ts <= v.last_exit_ts
        && v.ioctl_ns > 0));
    assert!(
        tracer.take_bins(u64::MAX).expect("take bins").is_empty(),
        "taken once"
    );
    let counters = tracer.counters().expect("counters");
    assert_eq!((counters.drops, counters.map_full), (0, 0), "{counters:?}");
}
