//! A recording session: discover the target, attach the BPF programs, drain
//! the ring buffer on a timer, fold in QMP samples and guest-console lines,
//! and stream everything into a trace file until told to stop, the target
//! exits, or the duration runs out.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use uffdscope_trace::record::{Drops, Note, PlacementBin, ProcessInfo, Record};
use uffdscope_trace::{TraceMeta, TraceWriter};

use crate::bpf::{AttachOutcome, BpfTracer};
use crate::discover;
use crate::escape::for_terminal;

mod config;
mod drain;
mod narrow;
mod peers;
mod scan;

pub use config::{default_output, duration_from_secs, Preflight, RecordConfig, RecordError};

pub use drain::BadRecords;
use drain::{Alarm, Drained};
use peers::Peers;
use scan::ProcScan;

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
    /// Ring records that did not become trace records, by why.
    pub bad_records: BadRecords,
    /// Share of one CPU the recorder (all its threads) used since the last
    /// figures; `None` when the kernel would not say.
    pub cpu_ratio: Option<f64>,
}

/// What a recording tells its caller while it runs.
#[derive(Debug, Clone, Copy)]
pub enum Update<'a> {
    /// Live figures, about twice a second.
    Progress(&'a Progress),
    /// Something the user should see now, one line, already escaped for a
    /// terminal (a peer failed, tracefs was mounted, the ABI disagrees).
    Notice(&'a str),
}

/// The live status line: elapsed, events/s, faults, p50/p99 so far, drops.
pub fn status_line(p: &Progress) -> String {
    let us = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.0}µs"));
    format!(
        "{:>6.1}s  {:>9.0} ev/s  {} events  {} faults  p50 {}  p99 {}  drops {}  cpu {}{}",
        p.elapsed.as_secs_f64(),
        p.events_per_s,
        p.events,
        p.faults,
        us(p.p50_us),
        us(p.p99_us),
        p.drops,
        p.cpu_ratio
            .map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0)),
        if p.bad_records.total() > 0 {
            format!(
                "  undecodable {} ({})",
                p.bad_records.total(),
                p.bad_records.summary()
            )
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
    /// Ring records that did not become trace records, by why.
    pub bad_records: BadRecords,
}

pub(crate) fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or_else(|_| nix::sys::time::TimeSpec::new(0, 0));
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// CPU time (user and system, all threads) this process has used.
fn own_cpu_time() -> Option<Duration> {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::TimeValLike;
    let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let us = usage.user_time().num_microseconds() + usage.system_time().num_microseconds();
    u64::try_from(us).ok().map(Duration::from_micros)
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

/// Called with every record the session writes, in trace order, once it is
/// written (live metrics read the recording through it).
pub type RecordTap<'t> = Box<dyn FnMut(&Record) + 't>;

struct Writer<'t> {
    w: TraceWriter<std::fs::File>,
    path: PathBuf,
    events: u64,
    tap: Option<RecordTap<'t>>,
}

impl Writer<'_> {
    fn push(&mut self, r: &Record) -> Result<(), RecordError> {
        self.events += 1;
        self.w.push(r).map_err(|source| RecordError::Write {
            path: self.path.clone(),
            source,
        })?;
        if let Some(tap) = &mut self.tap {
            tap(r);
        }
        Ok(())
    }

    fn push_all(&mut self, recs: impl IntoIterator<Item = Record>) -> Result<(), RecordError> {
        recs.into_iter().try_for_each(|r| self.push(&r))
    }

    fn flush(&mut self) -> Result<(), RecordError> {
        self.w.flush_frame().map_err(|source| RecordError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

/// Records `cfg.pid` until `stop` is set, the target exits or the duration
/// elapses, telling `on_update` how it goes.
pub fn record(
    cfg: &RecordConfig,
    stop: &AtomicBool,
    on_update: impl FnMut(Update<'_>),
) -> Result<RecordSummary, RecordError> {
    record_tapped(cfg, None, stop, on_update)
}

/// [`record`], handing every record written to `tap` as well.
pub fn record_tapped(
    cfg: &RecordConfig,
    tap: Option<RecordTap<'_>>,
    stop: &AtomicBool,
    mut on_update: impl FnMut(Update<'_>),
) -> Result<RecordSummary, RecordError> {
    let mut session = Session::setup(cfg, tap, &mut on_update)?;
    loop {
        if let Some(reason) = session.tick(stop, &mut on_update)? {
            return session.finish(reason, &mut on_update);
        }
    }
}

/// How often the session re-reads `/proc` and the drop counter.
const RESCAN_EVERY: Duration = Duration::from_millis(500);
/// How often a frame is closed, so a killed recorder leaves a readable trace.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often `progress` is called.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// One recording in progress: [`Session::setup`] attaches and writes the
/// trace's head, [`Session::tick`] drains once, [`Session::finish`] writes
/// the tail.
pub struct Session<'c> {
    cfg: &'c RecordConfig,
    tracer: BpfTracer,
    ring: crate::bpf::RingDrain,
    out: Writer<'c>,
    peers: Peers,
    scan: ProcScan,
    drained: Drained,
    attached: Vec<String>,
    not_attached: Vec<String>,
    last_drops: u64,
    started: Instant,
    last_scan: Instant,
    last_flush: Instant,
    last_progress: Instant,
    events_at_progress: u64,
    cpu_at_progress: Option<Duration>,
}

/// `category:name` of the attached tracepoints, and of the others with why.
fn attach_lists(tracer: &BpfTracer) -> (Vec<String>, Vec<String>) {
    let (attached, not_attached): (Vec<_>, Vec<_>) = tracer
        .attach_status()
        .iter()
        .partition(|s| s.outcome == AttachOutcome::Attached);
    (
        attached.iter().map(|s| s.tracepoint.to_string()).collect(),
        not_attached
            .iter()
            .map(|s| format!("{} ({:?})", s.tracepoint, s.outcome))
            .collect(),
    )
}

impl<'c> Session<'c> {
    /// Discovers the target, attaches the BPF programs, starts the peers,
    /// writes the trace's header and discovery records, and creates the
    /// ready file. `tap` sees every record written.
    pub fn setup(
        cfg: &'c RecordConfig,
        tap: Option<RecordTap<'c>>,
        on_update: &mut dyn FnMut(Update<'_>),
    ) -> Result<Self, RecordError> {
        cfg.validate()?;
        let start_ns = monotonic_ns();
        // Discover first, so a wrong pid fails before BPF work; attach before
        // creating the output, so a failure leaves no empty file.
        let proc_info = discover::process(cfg.pid, start_ns)?;
        let (tracefs, mounted) = crate::bpf::find_or_mount_tracefs()?;
        if mounted {
            on_update(Update::Notice(&format!(
                "tracefs was not mounted: mounted it at {} (it stays mounted)",
                tracefs.display()
            )));
        }
        let side = match cfg.side {
            Some(side) => side,
            None => crate::side::decide(cfg.pid, None)?.side,
        };
        let mut bpf = cfg.bpf_config()?;
        bpf.side = side;
        bpf.kvm = discover::scan_proc_fds(cfg.pid)?.kvm;
        let mut tracer = BpfTracer::load(&bpf)?;
        let ring = tracer.take_ring()?;
        let (attached, not_attached) = attach_lists(&tracer);
        let peers = Peers::start(
            cfg.qmp.as_deref(),
            cfg.qmp_interval,
            cfg.guest_console.as_deref(),
        );
        let meta = trace_meta(
            cfg,
            start_ns,
            &proc_info,
            &peers,
            (&attached, &not_attached),
            side,
        );
        let w = TraceWriter::create(&cfg.output, &meta)
            .map_err(|source| RecordError::create(&cfg.output, "-o", source))?;
        let now = Instant::now();
        let mut session = Session {
            cfg,
            tracer,
            ring,
            out: Writer {
                w,
                path: cfg.output.clone(),
                events: 0,
                tap,
            },
            peers,
            scan: ProcScan::default(),
            drained: Drained::default(),
            attached,
            not_attached,
            last_drops: 0,
            started: now,
            last_scan: now,
            last_flush: now,
            last_progress: now,
            events_at_progress: 0,
            cpu_at_progress: own_cpu_time(),
        };
        // From here on the output exists: a failure removes it, so no
        // half-written trace is left to read as a recording.
        if let Err(e) = session.start(proc_info, start_ns) {
            session.abandon();
            return Err(e);
        }
        session.started = Instant::now();
        Ok(session)
    }

    /// Writes the trace's head and creates the ready file.
    fn start(&mut self, proc_info: ProcessInfo, start_ns: u64) -> Result<(), RecordError> {
        self.write_head(proc_info, start_ns)?;
        if let Some(path) = &self.cfg.ready_file {
            uffdscope_trace::create_exclusive(path)
                .map_err(|source| RecordError::create(path, "--ready-file", source))?;
        }
        Ok(())
    }

    /// Stops the peers and removes the output this run created.
    fn abandon(mut self) {
        self.peers.stop();
        let path = self.out.path.clone();
        drop(self.out);
        let _ = std::fs::remove_file(path);
    }

    /// The process, its threads, ranges and sockets, and the start note.
    fn write_head(&mut self, proc_info: ProcessInfo, start_ns: u64) -> Result<(), RecordError> {
        self.out.push(&Record::Process(proc_info))?;
        let mut head = Vec::new();
        self.scan.first(self.cfg.pid, start_ns, &mut head)?;
        self.out.push_all(head)?;
        let not_attached = if self.not_attached.is_empty() {
            String::new()
        } else {
            format!("; not attached: {}", self.not_attached.join(", "))
        };
        self.out.push(&Record::Note(Note {
            ts: start_ns,
            kind: "start".into(),
            text: format!(
                "recording pid {}; {} tracepoints attached{not_attached}",
                self.cfg.pid,
                self.attached.len(),
            ),
        }))?;
        self.out.flush()
    }

    /// One turn: wait for the drain timer, drain the ring and the peers,
    /// rescan and flush when due, report progress. Returns why the recording
    /// ends, once it does.
    pub fn tick(
        &mut self,
        stop: &AtomicBool,
        on_update: &mut dyn FnMut(Update<'_>),
    ) -> Result<Option<StopReason>, RecordError> {
        let reason = if stop.load(Ordering::Relaxed) {
            Some(StopReason::Stopped)
        } else if self
            .cfg
            .duration
            .is_some_and(|d| self.started.elapsed() >= d)
        {
            Some(StopReason::Duration)
        } else {
            None
        };
        // Drain timer: never wake per event (ARCHITECTURE.md, "How each
        // moment of a fault is observed"); the kernel only forces a wake-up
        // when the ring fills past the threshold.
        let _ = self.ring.wait(self.cfg.drain_interval);
        self.drain_ring(on_update)?;
        self.drain_peers(on_update)?;
        if self.last_scan.elapsed() >= RESCAN_EVERY || reason.is_some() {
            self.rescan()?;
        }
        if self.last_flush.elapsed() >= FLUSH_EVERY {
            self.out.flush()?;
            self.last_flush = Instant::now();
        }
        if self.last_progress.elapsed() >= PROGRESS_EVERY {
            on_update(Update::Progress(&self.progress()));
        }
        if reason.is_some() {
            return Ok(reason);
        }
        if !discover::alive(self.cfg.pid) {
            // One more pass drains what the target emitted before exiting.
            let _ = self.ring.wait(Duration::from_millis(1));
            self.drain_ring(on_update)?;
            return Ok(Some(StopReason::TargetExited));
        }
        Ok(None)
    }

    /// Moves what the ring holds into the trace; an ABI mismatch is said
    /// loudly, once per kind, and noted in the trace.
    fn drain_ring(&mut self, on_update: &mut dyn FnMut(Update<'_>)) -> Result<(), RecordError> {
        self.drained.drain(&mut self.ring);
        for Alarm::AbiMismatch(text) in self.drained.alarms.drain(..) {
            on_update(Update::Notice(&format!("WARNING: {text}")));
            self.out.push(&Record::Note(Note {
                ts: monotonic_ns(),
                kind: "abi_mismatch".into(),
                text,
            }))?;
        }
        for rec in self.drained.pending.drain(..) {
            self.out.push(&rec)?;
        }
        self.narrow_sends(on_update)?;
        // Bins a whole bin behind the clock are closed (BpfTracer::take_bins).
        let closed = PlacementBin::index(monotonic_ns()).saturating_sub(1);
        self.take_bins(closed)
    }

    /// Once the return path's send call is known, detaches the other send
    /// calls' programs (`narrow.rs`) and notes it in the trace.
    fn narrow_sends(&mut self, on_update: &mut dyn FnMut(Update<'_>)) -> Result<(), RecordError> {
        let Some((programs, keep)) = self.drained.narrowing.to_detach() else {
            return Ok(());
        };
        self.drained.narrowing.done = true;
        let text = match self.tracer.detach(&programs) {
            Ok(n) => format!(
                "the return path sends with {keep}: detached {n} programs of the other send calls"
            ),
            Err(e) => {
                let text = format!("detaching the unused send programs failed: {e}");
                on_update(Update::Notice(&text));
                text
            }
        };
        self.out.push(&Record::Note(Note {
            ts: monotonic_ns(),
            kind: "narrowed".into(),
            text,
        }))
    }

    /// Writes the kernel's placement bins with an index below `before`.
    fn take_bins(&mut self, before: u64) -> Result<(), RecordError> {
        if !self.cfg.detail.counts_placements() {
            return Ok(());
        }
        for (key, val) in self.tracer.take_bins(before)? {
            if let Some(rec) = crate::convert::placement_bin(&key, &val) {
                self.out.push(&rec)?;
            }
        }
        Ok(())
    }

    /// Moves what the peers sent into the trace; their notes (a QMP or
    /// console failure) are also shown now.
    fn drain_peers(&mut self, on_update: &mut dyn FnMut(Update<'_>)) -> Result<(), RecordError> {
        while let Ok(rec) = self.peers.rx.try_recv() {
            if let Record::Note(n) = &rec {
                on_update(Update::Notice(&for_terminal(&n.text)));
            }
            self.out.push(&rec)?;
        }
        Ok(())
    }

    /// Threads and sockets that appeared, a perf sample, new drops.
    fn rescan(&mut self) -> Result<(), RecordError> {
        self.last_scan = Instant::now();
        let now = monotonic_ns();
        let mut found = Vec::new();
        self.scan
            .again(self.cfg.pid, now, &mut self.tracer, &mut found);
        self.out.push_all(found)?;
        if let Ok(d) = self.tracer.drops() {
            if d != self.last_drops {
                self.last_drops = d;
                self.out.push(&Record::Drops(Drops { ts: now, total: d }))?;
            }
        }
        Ok(())
    }

    /// The figures for the status line since the last call.
    fn progress(&mut self) -> Progress {
        let dt = self.last_progress.elapsed().as_secs_f64();
        let cpu = own_cpu_time();
        let cpu_ratio = match (self.cpu_at_progress, cpu) {
            (Some(before), Some(now)) if dt > 0.0 => {
                Some(now.saturating_sub(before).as_secs_f64() / dt)
            }
            _ => None,
        };
        let p = Progress {
            elapsed: self.started.elapsed(),
            events: self.out.events,
            events_per_s: (self.out.events - self.events_at_progress) as f64 / dt,
            faults: self.drained.faults,
            p50_us: self.drained.service.quantile_us(0.5),
            p99_us: self.drained.service.quantile_us(0.99),
            drops: self.last_drops,
            bad_records: self.drained.bad.clone(),
            cpu_ratio,
        };
        self.events_at_progress = self.out.events;
        self.cpu_at_progress = cpu;
        self.last_progress = Instant::now();
        p
    }

    /// Stops the peers, writes the final drops, counters and end note, and
    /// closes the trace.
    pub fn finish(
        mut self,
        stop: StopReason,
        on_update: &mut dyn FnMut(Update<'_>),
    ) -> Result<RecordSummary, RecordError> {
        self.peers.stop();
        self.drain_peers(on_update)?;
        self.take_bins(u64::MAX)?;
        let end = monotonic_ns();
        let counters = self.tracer.counters().ok();
        let drops = counters.as_ref().map_or(self.last_drops, |c| c.drops);
        self.out.push(&Record::Drops(Drops {
            ts: end,
            total: drops,
        }))?;
        if let Some(c) = &counters {
            self.out.push(&Record::Note(Note {
                ts: end,
                kind: "counters".into(),
                text: format!(
                    "read_eagain {} map_full {} sock_eagain {} sleep_other {} \
                     wake_in_interrupt {} wake_out_of_range {} undecodable {}",
                    c.read_eagain,
                    c.map_full,
                    c.sock_eagain,
                    c.sleep_other,
                    c.wake_in_interrupt,
                    c.wake_out_of_range,
                    self.drained.bad.total()
                ),
            }))?;
        }
        if self.drained.bad.total() > 0 {
            self.out.push(&Record::Note(Note {
                ts: end,
                kind: "bad_records".into(),
                text: self.drained.bad.to_json(),
            }))?;
        }
        self.out.push(&Record::Note(Note {
            ts: end,
            kind: "end".into(),
            text: stop.as_str().into(),
        }))?;
        let Writer {
            w, path, events, ..
        } = self.out;
        let bytes = w.bytes_written();
        w.finish().map_err(|source| RecordError::Write {
            path: path.clone(),
            source,
        })?;
        let bytes = std::fs::metadata(&path).map_or(bytes, |m| m.len());
        Ok(RecordSummary {
            path,
            stop,
            events,
            faults: self.drained.faults,
            drops,
            bytes,
            attached: self.attached,
            not_attached: self.not_attached,
            bad_records: self.drained.bad,
        })
    }
}

/// The trace header: host, kernel, clocks, target, QEMU version, what is
/// attached.
fn trace_meta(
    cfg: &RecordConfig,
    start_ns: u64,
    proc_info: &ProcessInfo,
    peers: &Peers,
    (attached, not_attached): (&[String], &[String]),
    side: uffdscope_trace::record::Side,
) -> TraceMeta {
    let (host, kernel) = uname();
    let mut extra = serde_json::Map::new();
    extra.insert("not_attached".into(), serde_json::json!(not_attached));
    extra.insert(
        "is_qemu".into(),
        serde_json::json!(discover::is_qemu(proc_info)),
    );
    TraceMeta {
        tool: format!("uffdscope {}", env!("CARGO_PKG_VERSION")),
        host,
        kernel,
        realtime_offset_ns: realtime_offset_ns(),
        start_ns,
        target_pid: cfg.pid,
        target_comm: proc_info.comm.clone(),
        target_cmdline: proc_info.cmdline.clone(),
        qemu_version: peers.qemu_version.clone(),
        features: attached.to_vec(),
        side: Some(side),
        detail: Some(cfg.detail),
        extra,
    }
}
