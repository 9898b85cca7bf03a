//! A recording session: discover the target, attach the BPF programs, drain
//! the ring buffer on a timer, fold in QMP samples and guest-console lines,
//! and stream everything into a trace file until told to stop, the target
//! exits, or the duration runs out.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use uffdscope_trace::record::{Drops, GuestLine, Note, Qmp, Record};
use uffdscope_trace::{TraceMeta, TraceWriter};

use crate::bpf::{AttachOutcome, BpfConfig, BpfError, BpfTracer};
use crate::console::{ConsoleFollower, StartAt};
use crate::convert::Records;
use crate::discover::{self, DiscoverError};
use crate::perf::ThreadCounters;
use crate::qmp::QmpClient;

/// What to record and how.
#[derive(Debug, Clone)]
pub struct RecordConfig {
    pub pid: u32,
    pub output: PathBuf,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// QMP socket of the destination QEMU: samples `query-migrate`.
    pub qmp: Option<PathBuf>,
    /// Guest serial log file or unix socket to stamp and store.
    pub guest_console: Option<PathBuf>,
    pub ring_bytes: u32,
    /// How often the ring buffer is drained.
    pub drain_interval: Duration,
    /// How often QMP is sampled.
    pub qmp_interval: Duration,
    /// Created (empty, must not exist) once everything is attached and the
    /// trace header is written, so a harness can start the migration without
    /// racing the recorder.
    pub ready_file: Option<PathBuf>,
}

impl Default for RecordConfig {
    fn default() -> Self {
        Self {
            pid: 0,
            output: PathBuf::new(),
            duration: None,
            qmp: None,
            guest_console: None,
            ring_bytes: crate::bpf::DEFAULT_RING_BYTES,
            drain_interval: Duration::from_millis(20),
            qmp_interval: Duration::from_millis(100),
            ready_file: None,
        }
    }
}

/// Why recording could not start or failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "uffdscope record must run as root (it loads BPF programs); try: sudo uffdscope record ..."
    )]
    NotRoot,
    #[error(transparent)]
    Discover(#[from] DiscoverError),
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(
        "cannot create {path}: {source} (the output file must not exist; it is never overwritten)"
    )]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the ready file {path}: {source} (it must not exist)")]
    ReadyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why a recording ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// SIGINT/SIGTERM or the caller's stop flag.
    Stopped,
    /// The target process exited.
    TargetExited,
    /// `--duration` elapsed.
    Duration,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Stopped => "stopped by signal",
            StopReason::TargetExited => "target exited",
            StopReason::Duration => "duration elapsed",
        }
    }
}

/// Live figures for a status line.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub elapsed: Duration,
    pub events: u64,
    pub events_per_s: f64,
    pub faults: u64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub drops: u64,
    pub bad_records: u64,
}

/// The live status line: elapsed, events/s, faults, p50/p99 so far, drops.
pub fn status_line(p: &Progress) -> String {
    let us = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.0}µs"));
    format!(
        "{:>6.1}s  {:>9.0} ev/s  {} events  {} faults  p50 {}  p99 {}  drops {}{}",
        p.elapsed.as_secs_f64(),
        p.events_per_s,
        p.events,
        p.faults,
        us(p.p50_us),
        us(p.p99_us),
        p.drops,
        if p.bad_records > 0 {
            format!("  undecodable {}", p.bad_records)
        } else {
            String::new()
        }
    )
}

/// What a finished recording produced.
#[derive(Debug, Clone)]
pub struct RecordSummary {
    pub path: PathBuf,
    pub stop: StopReason,
    pub events: u64,
    pub faults: u64,
    pub drops: u64,
    pub bytes: u64,
    pub attached: Vec<String>,
    pub not_attached: Vec<String>,
}

fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or_else(|_| nix::sys::time::TimeSpec::new(0, 0));
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

fn realtime_offset_ns() -> i64 {
    let real = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
        .map_or(0, |t| t.tv_sec() * 1_000_000_000 + t.tv_nsec());
    real - monotonic_ns() as i64
}

fn uname() -> (String, String) {
    match nix::sys::utsname::uname() {
        Ok(u) => (
            u.nodename().to_string_lossy().into_owned(),
            u.release().to_string_lossy().into_owned(),
        ),
        Err(_) => ("unknown".into(), "unknown".into()),
    }
}

/// Samples `query-migrate` and forwards QMP events until `stop`, then reads
/// QEMU's final blocktime figures.
fn qmp_thread(
    path: &Path,
    interval: Duration,
    stop: &AtomicBool,
    tx: &mpsc::Sender<Record>,
    version_tx: &mpsc::Sender<Option<String>>,
) {
    let note = |tx: &mpsc::Sender<Record>, text: String| {
        let _ = tx.send(Record::Note(Note {
            ts: monotonic_ns(),
            kind: "qmp_error".into(),
            text,
        }));
    };
    let mut client = match QmpClient::connect(path, Duration::from_secs(5)) {
        Ok(c) => c,
        Err(e) => {
            let _ = version_tx.send(None);
            note(
                tx,
                format!("cannot connect to QMP at {}: {e}", path.display()),
            );
            return;
        }
    };
    let _ = version_tx.send(client.qemu_version());
    let mut last = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        match client.execute("query-migrate", None) {
            Ok(v) => {
                let json = v.to_string();
                // Only changes are kept: a steady state costs nothing.
                if last.as_ref() != Some(&json) || stopping {
                    let _ = tx.send(Record::Qmp(Qmp {
                        ts: monotonic_ns(),
                        kind: if stopping {
                            "blocktime"
                        } else {
                            "query-migrate"
                        }
                        .into(),
                        json: json.clone(),
                    }));
                    last = Some(json);
                }
            }
            Err(e) => {
                note(tx, format!("query-migrate failed: {e}"));
                return;
            }
        }
        for ev in client.take_events() {
            let _ = tx.send(Record::Qmp(Qmp {
                ts: ev.arrived.mono_ns,
                kind: format!("event:{}", ev.name),
                json: serde_json::json!({"event": ev.name, "data": ev.data}).to_string(),
            }));
        }
        if stopping {
            return;
        }
        let _ = client.poll_events(interval);
    }
}

fn console_thread(path: &Path, stop: &AtomicBool, tx: &mpsc::Sender<Record>) {
    let mut follower = match ConsoleFollower::open(path, StartAt::End) {
        Ok(f) => f,
        Err(e) => {
            let _ = tx.send(Record::Note(Note {
                ts: monotonic_ns(),
                kind: "console_error".into(),
                text: format!("cannot follow guest console {}: {e}", path.display()),
            }));
            return;
        }
    };
    while !stop.load(Ordering::Relaxed) {
        match follower.next_line(Duration::from_millis(50)) {
            Ok(Some(line)) => {
                let _ = tx.send(Record::GuestLine(GuestLine {
                    ts: line.stamp.mono_ns,
                    text: line.text,
                }));
            }
            Ok(None) => {}
            Err(e) => {
                let _ = tx.send(Record::Note(Note {
                    ts: monotonic_ns(),
                    kind: "console_end".into(),
                    text: format!("guest console {}: {e}", path.display()),
                }));
                return;
            }
        }
    }
    if let Some(line) = follower.take_partial() {
        let _ = tx.send(Record::GuestLine(GuestLine {
            ts: line.stamp.mono_ns,
            text: line.text,
        }));
    }
}

/// Ring-buffer records turned into trace records, with the running figures
/// the status line shows.
#[derive(Default)]
struct Drained {
    pending: Vec<Record>,
    service: crate::live_stats::LiveLatency,
    faults: u64,
    /// Records that did not decode or convert.
    bad: u64,
}

impl Drained {
    /// Drains every waiting record into `out`.
    fn drain(
        &mut self,
        ring: &mut crate::bpf::RingDrain,
        out: &mut Writer,
    ) -> Result<(), RecordError> {
        ring.drain(|r| {
            match r
                .map_err(|_| ())
                .and_then(|ev| Records::try_from(&ev).map_err(|_| ()))
            {
                Ok(Records(recs)) => {
                    for rec in recs {
                        if let Record::Sleep(s) = &rec {
                            self.faults += 1;
                            if let Some(f) = &s.fault {
                                self.service.record(s.woken_ts.saturating_sub(f.ts));
                            }
                        }
                        self.pending.push(rec);
                    }
                }
                Err(()) => self.bad += 1,
            }
        });
        for rec in self.pending.drain(..) {
            out.push(&rec)?;
        }
        Ok(())
    }
}

struct Writer {
    w: TraceWriter<std::fs::File>,
    path: PathBuf,
    events: u64,
}

impl Writer {
    fn push(&mut self, r: &Record) -> Result<(), RecordError> {
        self.events += 1;
        self.w.push(r).map_err(|source| RecordError::Write {
            path: self.path.clone(),
            source,
        })
    }

    fn flush(&mut self) -> Result<(), RecordError> {
        self.w.flush_frame().map_err(|source| RecordError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Records `cfg.pid` until `stop` is set, the target exits or the duration
/// elapses. `progress` is called about twice a second.
pub fn record(
    cfg: &RecordConfig,
    stop: &AtomicBool,
    mut progress: impl FnMut(&Progress),
) -> Result<RecordSummary, RecordError> {
    if !is_root() {
        return Err(RecordError::NotRoot);
    }
    let start_ns = monotonic_ns();
    let proc_info = discover::process(cfg.pid, start_ns)?;
    let (host, kernel) = uname();

    // Attach before creating the output, so a failure leaves no empty file,
    // but discover first, so a wrong pid fails before BPF work.
    let mut bpf_cfg = BpfConfig::new(vec![cfg.pid]);
    bpf_cfg.ring_bytes = cfg.ring_bytes;
    bpf_cfg.wakeup_bytes = u64::from(cfg.ring_bytes / 4);
    let mut tracer = BpfTracer::load(&bpf_cfg)?;
    let mut ring = tracer.take_ring()?;
    let (attached, not_attached): (Vec<_>, Vec<_>) = tracer
        .attach_status()
        .iter()
        .partition(|s| s.outcome == AttachOutcome::Attached);
    let attached: Vec<String> = attached.iter().map(|s| s.tracepoint.to_string()).collect();
    let not_attached: Vec<String> = not_attached
        .iter()
        .map(|s| format!("{} ({:?})", s.tracepoint, s.outcome))
        .collect();

    let child_stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<Record>();
    let mut helpers = Vec::new();
    let mut qemu_version = None;
    if let Some(path) = &cfg.qmp {
        let (vtx, vrx) = mpsc::channel();
        let (p, s, t, i) = (
            path.clone(),
            child_stop.clone(),
            tx.clone(),
            cfg.qmp_interval,
        );
        helpers.push(thread::spawn(move || qmp_thread(&p, i, &s, &t, &vtx)));
        qemu_version = vrx.recv_timeout(Duration::from_secs(6)).ok().flatten();
    }
    if let Some(path) = &cfg.guest_console {
        let (p, s, t) = (path.clone(), child_stop.clone(), tx.clone());
        helpers.push(thread::spawn(move || console_thread(&p, &s, &t)));
    }
    drop(tx);

    let meta = TraceMeta {
        tool: format!("uffdscope {}", env!("CARGO_PKG_VERSION")),
        host,
        kernel,
        realtime_offset_ns: realtime_offset_ns(),
        start_ns,
        target_pid: cfg.pid,
        target_comm: proc_info.comm.clone(),
        target_cmdline: proc_info.cmdline.clone(),
        qemu_version,
        features: attached.clone(),
        extra: {
            let mut m = serde_json::Map::new();
            m.insert("not_attached".into(), serde_json::json!(not_attached));
            m.insert(
                "is_qemu".into(),
                serde_json::json!(discover::is_qemu(&proc_info)),
            );
            m
        },
    };
    let w = TraceWriter::create(&cfg.output, &meta).map_err(|source| RecordError::Output {
        path: cfg.output.clone(),
        source,
    })?;
    let mut out = Writer {
        w,
        path: cfg.output.clone(),
        events: 0,
    };
    out.push(&Record::Process(proc_info))?;
    let mut known_tids = std::collections::HashSet::new();
    let mut counters = ThreadCounters::default();
    for t in discover::threads(cfg.pid, start_ns)? {
        known_tids.insert(t.tid);
        counters.add(t.tid);
        out.push(&Record::Thread(t))?;
    }
    for s in counters.sample(monotonic_ns()) {
        out.push(&Record::Perf(s))?;
    }
    for r in discover::uffd_ranges(cfg.pid, start_ns)? {
        out.push(&Record::UffdRange(r))?;
    }
    let mut known_socks = std::collections::HashSet::new();
    // Socket inodes not found in the TCP tables yet, with how many scans
    // looked for them: a socket before connect()/listen(), or not TCP at all.
    let mut unresolved_socks = std::collections::HashMap::<u64, u32>::new();
    let fds = crate::bpf::scan_proc_fds(cfg.pid)?;
    for s in discover::sockets(cfg.pid, &fds.sockets, start_ns) {
        known_socks.insert(s.inode);
        out.push(&Record::Socket(s))?;
    }
    out.push(&Record::Note(Note {
        ts: start_ns,
        kind: "start".into(),
        text: format!(
            "recording pid {}; {} tracepoints attached{}",
            cfg.pid,
            attached.len(),
            if not_attached.is_empty() {
                String::new()
            } else {
                format!("; not attached: {}", not_attached.join(", "))
            }
        ),
    }))?;
    out.flush()?;
    if let Some(path) = &cfg.ready_file {
        uffdscope_trace::create_exclusive(path).map_err(|source| RecordError::ReadyFile {
            path: path.clone(),
            source,
        })?;
    }

    let started = Instant::now();
    let mut drained = Drained::default();
    let mut last_drops = 0u64;
    let mut last_scan = Instant::now();
    let mut last_progress = Instant::now();
    let mut last_flush = Instant::now();
    let mut events_at_progress = 0u64;
    let stop_reason = loop {
        let reason = if stop.load(Ordering::Relaxed) {
            Some(StopReason::Stopped)
        } else if cfg.duration.is_some_and(|d| started.elapsed() >= d) {
            Some(StopReason::Duration)
        } else {
            None
        };
        // Drain timer: never wake per event (ARCHITECTURE.md, "How each moment of a fault is observed"); the kernel only
        // forces a wake-up when the ring fills past the threshold.
        let _ = ring.wait(cfg.drain_interval);
        drained.drain(&mut ring, &mut out)?;
        while let Ok(rec) = rx.try_recv() {
            out.push(&rec)?;
        }
        if last_scan.elapsed() >= Duration::from_millis(500) || reason.is_some() {
            last_scan = Instant::now();
            let now = monotonic_ns();
            // Threads and sockets appear late (post-copy threads, the return path).
            if let Ok(threads) = discover::threads(cfg.pid, now) {
                for t in threads {
                    if known_tids.insert(t.tid) {
                        counters.add(t.tid);
                        out.push(&Record::Thread(t))?;
                    }
                }
            }
            for s in counters.sample(now) {
                out.push(&Record::Perf(s))?;
            }
            if let Ok(fds) = crate::bpf::scan_proc_fds(cfg.pid) {
                for &(fd, _) in &fds.sockets {
                    let _ = tracer.seed_sock_fd(cfg.pid, fd);
                }
                for &fd in &fds.uffd {
                    let _ = tracer.seed_uffd_fd(cfg.pid, fd);
                }
                // Reading /proc/PID/net/tcp{,6} walks the whole established
                // hash (262144 buckets on this VM: ~4 ms per read, in the
                // kernel and not preemptible under PREEMPT_NONE), stalling
                // whichever target thread wakes on that CPU. So the tables
                // are read only for sockets not resolved yet: at every scan
                // during a socket's first 5 s, then every 5 s.
                unresolved_socks.retain(|inode, _| fds.sockets.iter().any(|s| s.1 == *inode));
                let lookup: Vec<(u32, u64)> = fds
                    .sockets
                    .iter()
                    .copied()
                    .filter(|&(_, inode)| {
                        if known_socks.contains(&inode) {
                            return false;
                        }
                        let tries = unresolved_socks.entry(inode).or_insert(0);
                        *tries += 1;
                        *tries <= 10 || tries.is_multiple_of(10)
                    })
                    .collect();
                if !lookup.is_empty() {
                    for s in discover::sockets(cfg.pid, &lookup, now) {
                        unresolved_socks.remove(&s.inode);
                        if known_socks.insert(s.inode) {
                            out.push(&Record::Socket(s))?;
                        }
                    }
                }
            }
            if let Ok(d) = tracer.drops() {
                if d != last_drops {
                    last_drops = d;
                    out.push(&Record::Drops(Drops { ts: now, total: d }))?;
                }
            }
        }
        // A killed recorder must leave a readable trace: close a frame often.
        if last_flush.elapsed() >= Duration::from_secs(1) {
            out.flush()?;
            last_flush = Instant::now();
        }
        if last_progress.elapsed() >= Duration::from_millis(500) {
            let dt = last_progress.elapsed().as_secs_f64();
            progress(&Progress {
                elapsed: started.elapsed(),
                events: out.events,
                events_per_s: (out.events - events_at_progress) as f64 / dt,
                faults: drained.faults,
                p50_us: drained.service.quantile_us(0.5),
                p99_us: drained.service.quantile_us(0.99),
                drops: last_drops,
                bad_records: drained.bad,
            });
            events_at_progress = out.events;
            last_progress = Instant::now();
        }
        if let Some(r) = reason {
            break r;
        }
        if !discover::alive(cfg.pid) {
            // One more pass drains what the target emitted before exiting.
            let _ = ring.wait(Duration::from_millis(1));
            drained.drain(&mut ring, &mut out)?;
            break StopReason::TargetExited;
        }
    };

    child_stop.store(true, Ordering::Relaxed);
    for h in helpers {
        let _ = h.join();
    }
    while let Ok(rec) = rx.try_recv() {
        out.push(&rec)?;
    }
    let end = monotonic_ns();
    let counters = tracer.counters().ok();
    let drops = counters.as_ref().map_or(last_drops, |c| c.drops);
    out.push(&Record::Drops(Drops {
        ts: end,
        total: drops,
    }))?;
    if let Some(c) = &counters {
        out.push(&Record::Note(Note {
            ts: end,
            kind: "counters".into(),
            text: format!(
                "read_eagain {} map_full {} sock_eagain {} sleep_other {} undecodable {}",
                c.read_eagain, c.map_full, c.sock_eagain, c.sleep_other, drained.bad
            ),
        }))?;
    }
    out.push(&Record::Note(Note {
        ts: end,
        kind: "end".into(),
        text: stop_reason.as_str().into(),
    }))?;
    let events = out.events;
    let bytes = out.w.bytes_written();
    let path = out.path.clone();
    out.w.finish().map_err(|source| RecordError::Write {
        path: path.clone(),
        source,
    })?;
    let bytes = std::fs::metadata(&path).map_or(bytes, |m| m.len());
    Ok(RecordSummary {
        path,
        stop: stop_reason,
        events,
        faults: drained.faults,
        drops,
        bytes,
        attached,
        not_attached,
    })
}

/// A default output name in the current directory: `uffdscope-PID-YYYYmmdd-HHMMSS.trace`.
pub fn default_output(pid: u32) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, mo, d, h, mi, s) = civil(secs);
    Path::new(".").join(format!(
        "uffdscope-{pid}-{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}.trace"
    ))
}

/// UTC calendar fields of a Unix time (Howard Hinnant's days-from-civil inverse).
fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(1_795_651_200), (2026, 11, 26, 0, 0, 0));
    }
}
