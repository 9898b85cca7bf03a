//! The timeline export for <https://ui.perfetto.dev>: what is drawn, decided
//! once here, and serialized by one of two encoders — Perfetto's native
//! protobuf TrackEvent trace ([`protobuf`], `--format perfetto`) or the
//! Chrome Trace Event JSON that `chrome://tracing` also opens ([`json`],
//! `--format perfetto-json`).
//!
//! Streamed: raw records become events as they are read and each fault is
//! written when the lifecycle engine resolves it, so memory stays bounded by
//! the engine's window however long the trace is.
//!
//! What is drawn:
//! - one track per thread of the target, named `name [role]`;
//! - on a faulting thread, a slice `fault <page>` from entry (or switch-out) to
//!   running again, with its known stages nested inside (queue, request,
//!   network, place, wake);
//! - uffd reads and uffd ioctls (placements) as slices on the threads that made
//!   them, and return-path page requests as slices of their send syscall;
//! - placements counted in bins (lean traces) as a placements-per-second
//!   counter per placing thread and kind;
//! - flow arrows read → request → placement → faulting thread, where known
//!   (flows bind to enclosing slices, so a request is a slice, not an instant);
//! - guest console lines as instants on a `guest` process, and each parsed
//!   guest interval as a slice on a track per guest writer;
//! - QMP migration status changes and recorder notes as instants;
//! - ring-buffer drops and per-socket smoothed RTT as counters.

mod json;
mod protobuf;
mod wire;

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::{self, Read, Write};

use crate::drive::{self, At, Consumer, Derived, Limits, Origin, Summary};
use crate::engine::guest::{self, LineCounts};
use crate::engine::lifecycle::{Engine, Fault};
use crate::engine::network_split::NetworkSplitter;
use crate::inputs::rp::RpMessage;
use uffdscope_trace::record::{IoctlOp, PlacementBin, Record, Role};
use uffdscope_trace::{TraceMeta, TraceReader};

/// Pseudo pid of the guest: above Linux's `PID_MAX_LIMIT` (2^22), so it can
/// never be a real process. Pseudo tids count up from it.
pub const GUEST_PID: u32 = 4_194_305;
const QMP_TID: u32 = GUEST_PID + 1;
const NOTES_TID: u32 = GUEST_PID + 2;
const GUEST_SOURCE_TID0: u32 = GUEST_PID + 16;
/// Guest writers beyond this many share the last track.
const MAX_GUEST_SOURCES: u32 = 64;
/// Longest guest line used as an instant's name (the whole line is in its args).
const MAX_NAME_CHARS: usize = 80;
/// Messages listed in a read slice's args.
const MAX_LISTED: usize = 8;
/// Longest QMP JSON kept in an instant's args.
const MAX_QMP_CHARS: usize = 2_000;

/// An event's name: a fixed one (the protobuf encoder interns it) or text
/// made for this event (written in full).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Name<'a> {
    Fixed(&'static str),
    Text(&'a str),
}

impl Name<'_> {
    pub(crate) fn as_str(&self) -> &str {
        let (Name::Fixed(s) | Name::Text(s)) = *self;
        s
    }
}

/// A value in an event's arguments. `Null` is a value the trace does not
/// show (JSON writes `null`; protobuf leaves the argument out).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    List(Vec<Arg>),
    Map(Args),
}

/// An event's arguments, in order; keys are fixed (interned by protobuf).
pub(crate) type Args = Vec<(&'static str, Arg)>;

/// µs from ns, `Null` when not measured.
fn us(ns: Option<u64>) -> Arg {
    ns.map_or(Arg::Null, |n| Arg::Float(n as f64 / 1e3))
}

/// Where an event is drawn: a thread track of a process, at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Place {
    pub pid: u32,
    pub tid: u32,
    /// Monotonic ns, as in the trace.
    pub ts: u64,
}

/// Where a flow point sits in its arrow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlowStep {
    First,
    Middle,
    Last,
}

/// A serializer of the timeline. Events come in the order the pass makes
/// them (not sorted by time); each encoder deals with that its own way.
pub(crate) trait Encoder {
    /// The pass is at `now` (monotonic ns) with this time origin.
    fn advance(&mut self, origin: Origin, now: u64) -> io::Result<()>;
    /// A slice from `at.ts` to `end` (`end >= at.ts`).
    fn slice(
        &mut self,
        at: Place,
        end: u64,
        name: Name<'_>,
        cat: &'static str,
        args: &Args,
    ) -> io::Result<()>;
    fn instant(
        &mut self,
        at: Place,
        name: Name<'_>,
        cat: &'static str,
        args: &Args,
    ) -> io::Result<()>;
    /// A counter of process `pid` named `name`; `key` names the value.
    fn counter(
        &mut self,
        pid: u32,
        name: Name<'_>,
        ts: u64,
        key: &'static str,
        value: f64,
    ) -> io::Result<()>;
    /// One point of flow `id` (ids count up from 1), bound to the slice
    /// enclosing `at` on its thread.
    fn flow(&mut self, at: Place, id: u64, step: FlowStep) -> io::Result<()>;
    /// Names a process and places it among processes.
    fn process(&mut self, pid: u32, name: &str, sort_index: i64) -> io::Result<()>;
    /// Names a thread track and, with `sort_index`, places it in its process.
    fn thread(&mut self, pid: u32, tid: u32, name: &str, sort_index: Option<i64>)
        -> io::Result<()>;
    /// Writes what is left and flushes.
    fn finish(&mut self) -> io::Result<()>;
}

fn truncate_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The fixed name of a uffd ioctl; `None` for an unknown command.
fn ioctl_name(op: IoctlOp) -> Option<&'static str> {
    Some(match op {
        IoctlOp::Copy => "UFFDIO_COPY",
        IoctlOp::ZeroPage => "UFFDIO_ZEROPAGE",
        IoctlOp::Wake => "UFFDIO_WAKE",
        IoctlOp::Continue => "UFFDIO_CONTINUE",
        IoctlOp::Register => "UFFDIO_REGISTER",
        IoctlOp::Unregister => "UFFDIO_UNREGISTER",
        IoctlOp::Api => "UFFDIO_API",
        IoctlOp::WriteProtect => "UFFDIO_WRITEPROTECT",
        IoctlOp::Other(_) => return None,
    })
}

fn role_order(role: Role) -> i64 {
    match role {
        Role::Fault => 0,
        Role::Listen => 1,
        Role::Preempt => 2,
        Role::Vcpu => 3,
        Role::Other => 4,
        Role::MigSource => 5,
        Role::ReturnPath => 6,
    }
}

/// Why the export ends before the trace does, when it does: the name of an
/// instant at the last exported moment.
fn incomplete(summary: &Summary) -> Option<String> {
    if summary.damage.is_some() {
        Some("trace damaged here: the rest is not exported".to_owned())
    } else if let Some(n) = summary.stopped_at_limit {
        Some(format!("export stopped after {n} records (--max-events)"))
    } else {
        (!summary.complete).then(|| "trace cut here: no end note (recording cut)".to_owned())
    }
}

/// The decisions: which events a record or a fault becomes.
struct Timeline<E: Encoder> {
    enc: E,
    pid: u32,
    last_ts: u64,
    next_flow: u64,
    /// Target threads that got events (named at the end).
    tids: BTreeSet<u32>,
    guest_counts: LineCounts,
    guest_sources: HashMap<String, u32>,
    /// Host time of the last line of each guest writer (by track).
    guest_last_end: HashMap<u32, u64>,
    guest_seen: bool,
    qmp_seen: bool,
    notes_seen: bool,
    last_status: Option<String>,
    drops: Option<u64>,
    /// Takes the network stage of requested faults apart (its slice's args).
    split: NetworkSplitter,
}

impl<E: Encoder> Timeline<E> {
    fn new(enc: E, pid: u32) -> Self {
        Timeline {
            enc,
            pid,
            last_ts: 0,
            next_flow: 0,
            tids: BTreeSet::new(),
            guest_counts: LineCounts::default(),
            guest_sources: HashMap::new(),
            guest_last_end: HashMap::new(),
            guest_seen: false,
            qmp_seen: false,
            notes_seen: false,
            last_status: None,
            drops: None,
            split: NetworkSplitter::default(),
        }
    }

    fn at(&self, tid: u32, ts: u64) -> Place {
        Place {
            pid: self.pid,
            tid,
            ts,
        }
    }

    fn guest_line(&mut self, ts: u64, text: &str) -> io::Result<()> {
        self.guest_seen = true;
        let name = truncate_chars(text, MAX_NAME_CHARS);
        let mut args = Args::new();
        if name.len() < text.len() {
            args.push(("text", Arg::Str(text.to_owned())));
        }
        let console = Place {
            pid: GUEST_PID,
            tid: GUEST_PID,
            ts,
        };
        self.enc
            .instant(console, Name::Text(name), "guest", &args)?;
        let Some(sample) = guest::parse_line(text, &mut self.guest_counts) else {
            return Ok(());
        };
        let next = GUEST_SOURCE_TID0 + self.guest_sources.len() as u32;
        let tid = match self.guest_sources.get(&sample.source) {
            Some(&tid) => tid,
            None if next < GUEST_SOURCE_TID0 + MAX_GUEST_SOURCES => {
                self.guest_sources.insert(sample.source.clone(), next);
                next
            }
            None => GUEST_SOURCE_TID0 + MAX_GUEST_SOURCES - 1,
        };
        // As in the guest correlation: an interval runs from the writer's
        // previous line to this one unless that gap is implausibly long; a
        // first line spans the duration it printed. Never overlap the last.
        let dur_ns = (sample.dur_ms.max(0.0) * 1e6) as u64;
        let last = self.guest_last_end.insert(tid, ts);
        let start = match last {
            Some(p) if p <= ts && ts - p < 4 * dur_ns + 1_000_000_000 => p,
            Some(p) => ts.saturating_sub(dur_ns).max(p),
            None => ts.saturating_sub(dur_ns),
        };
        if start >= ts {
            return Ok(());
        }
        let mut args = vec![("dur_ms", Arg::Float(sample.dur_ms))];
        if let Some(cpu) = sample.cpu {
            args.push(("cpu", Arg::UInt(u64::from(cpu))));
        }
        let at = Place {
            pid: GUEST_PID,
            tid,
            ts: start,
        };
        let name = format!("interval {} ms", sample.dur_ms);
        self.enc.slice(at, ts, Name::Text(&name), "guest", &args)
    }

    /// Background placements counted in a bin (lean traces), as a
    /// placements-per-second counter per thread and kind: the bin's rate from
    /// its start, zero from its end (the next bin's start, written later,
    /// overrides that zero).
    fn placement_bin(&mut self, bin: &PlacementBin) -> io::Result<()> {
        let name = format!(
            "{} counted/s (tid {}, {} B)",
            ioctl_name(bin.op).unwrap_or("uffd ioctl"),
            bin.tid,
            bin.len
        );
        let start = PlacementBin::index(bin.first_exit_ts).saturating_mul(PlacementBin::BIN_NS);
        let rate = bin.count as f64 * 1e9 / PlacementBin::BIN_NS as f64;
        let pid = self.pid;
        self.enc
            .counter(pid, Name::Text(&name), start, "per_s", rate)?;
        let end = start.saturating_add(PlacementBin::BIN_NS);
        self.enc.counter(pid, Name::Text(&name), end, "per_s", 0.0)
    }

    fn send(&mut self, s: &uffdscope_trace::record::SockIo, msgs: &[RpMessage]) -> io::Result<()> {
        if msgs.is_empty() {
            return Ok(());
        }
        let mut requests = Vec::new();
        let mut other = Vec::new();
        for m in msgs {
            match m {
                RpMessage::ReqPages { block, start, len } => {
                    requests.push((block.as_deref().unwrap_or_default(), *start, *len));
                }
                RpMessage::Shut => other.push("SHUT"),
                RpMessage::Pong => other.push("PONG"),
                RpMessage::RecvBitmap => other.push("RECV_BITMAP"),
                RpMessage::ResumeAck => other.push("RESUME_ACK"),
            }
        }
        let mut args = vec![("fd", Arg::Int(i64::from(s.fd))), ("ret", Arg::Int(s.ret))];
        let name = if let Some((block, start, len)) = requests.first() {
            let listed = requests
                .iter()
                .map(|(block, start, len)| {
                    Arg::Map(vec![
                        ("block", Arg::Str((*block).to_owned())),
                        ("offset", Arg::Str(format!("{start:#x}"))),
                        ("len", Arg::UInt(u64::from(*len))),
                    ])
                })
                .collect();
            args.push(("requests", Arg::List(listed)));
            let mut name = String::from("request ");
            if !block.is_empty() {
                let _ = write!(name, "{block}+");
            }
            let _ = write!(name, "{start:#x} ({len} B)");
            if requests.len() > 1 {
                let _ = write!(name, " +{}", requests.len() - 1);
            }
            name
        } else {
            format!("return path {}", other.join(" "))
        };
        self.syscall(
            Name::Text(&name),
            "request",
            s.tid,
            s.enter_ts,
            s.exit_ts,
            &args,
        )
    }

    /// A syscall slice on a target thread, at its true times: one thread is in
    /// one syscall at a time, so its slices nest by themselves.
    fn syscall(
        &mut self,
        name: Name<'_>,
        cat: &'static str,
        tid: u32,
        enter: u64,
        exit: u64,
        args: &Args,
    ) -> io::Result<()> {
        self.tids.insert(tid);
        self.enc
            .slice(self.at(tid, enter), exit.max(enter), name, cat, args)
    }

    fn write_fault(&mut self, f: &Fault) -> io::Result<()> {
        self.tids.insert(f.tid);
        let start = f.entry_ts.map_or(f.blocked_ts, |e| e.min(f.blocked_ts));
        let end = f
            .resumed_ts()
            .unwrap_or(f.woken_ts)
            .max(f.woken_ts)
            .max(start);
        let args = vec![
            ("page", Arg::Str(format!("{:#x}", f.page))),
            ("resolution", Arg::Str(f.resolution.as_str().to_owned())),
            ("already_requested", Arg::Bool(f.already_requested)),
            ("waker_tid", Arg::UInt(u64::from(f.waker_tid))),
            ("service_us", us(f.service_ns())),
            ("blocked_us", us(f.blocked_ns())),
        ];
        let name = format!("fault {:#x}", f.page);
        self.enc.slice(
            self.at(f.tid, start),
            end,
            Name::Text(&name),
            "fault",
            &args,
        )?;
        self.write_stages(f, start, end)?;
        self.write_flow(f, start, end)
    }

    /// The stages inside a fault's slice: siblings must not overlap and must
    /// stay inside it.
    fn write_stages(&mut self, f: &Fault, start: u64, end: u64) -> io::Result<()> {
        let bounds = [
            ("queue", f.entry_ts, f.read_ts.or(f.place_ts)),
            ("request", f.read_ts, f.request_ts),
            ("network", f.request_ts.or(f.read_ts), f.place_ts),
            ("place", f.place_ts, Some(f.woken_ts)),
            ("wake", Some(f.woken_ts), f.resumed_ts()),
        ];
        let network_args = self.split.split(f).map_or_else(Args::new, |p| {
            vec![
                ("wire_us", us(p.wire_ns)),
                ("behind_stream_us", us(p.behind_stream_ns)),
                ("rest_us", us(p.rest_ns)),
                ("paused_us", us(p.paused_ns)),
                (
                    "behind_stream_bytes",
                    p.behind_stream_bytes.map_or(Arg::Null, Arg::UInt),
                ),
            ]
        });
        let none = Args::new();
        let mut cursor = start;
        for (name, from, to) in bounds {
            let (Some(from), Some(to)) = (from, to) else {
                continue;
            };
            let s = from.max(cursor);
            let e = to.min(end);
            if e < s {
                continue;
            }
            let args = if name == "network" {
                &network_args
            } else {
                &none
            };
            self.enc
                .slice(self.at(f.tid, s), e, Name::Fixed(name), "stage", args)?;
            cursor = e;
        }
        Ok(())
    }

    /// The arrow read → request → placement → the faulting thread. Flow
    /// points sit just inside the slices they bind to.
    fn write_flow(&mut self, f: &Fault, start: u64, end: u64) -> io::Result<()> {
        let mut points: Vec<(u32, u64)> = Vec::with_capacity(4);
        if let (Some(tid), Some(ts)) = (f.reader_tid, f.read_ts) {
            points.push((tid, ts.saturating_sub(1)));
        }
        if let (Some(tid), Some(ts)) = (f.requester_tid, f.request_ts) {
            points.push((tid, ts.saturating_sub(1)));
        }
        if let Some(ts) = f.place_ts {
            points.push((f.waker_tid, ts + 1));
        }
        if points.is_empty() {
            return Ok(());
        }
        let woken = if f.woken_ts < end {
            f.woken_ts + 1
        } else {
            f.woken_ts.saturating_sub(1).max(start)
        };
        points.push((f.tid, woken));
        self.next_flow += 1;
        let id = self.next_flow;
        let last = points.len() - 1;
        for (i, (tid, ts)) in points.into_iter().enumerate() {
            let step = match i {
                0 => FlowStep::First,
                i if i == last => FlowStep::Last,
                _ => FlowStep::Middle,
            };
            self.enc.flow(self.at(tid, ts), id, step)?;
        }
        Ok(())
    }

    /// Names every track and ends the output.
    fn finish(&mut self, engine: &Engine, meta: &TraceMeta, summary: &Summary) -> io::Result<()> {
        let pid = self.pid;
        if let Some(d) = self.drops {
            let name = Name::Fixed("ring-buffer drops");
            self.enc
                .counter(pid, name, self.last_ts, "dropped", d as f64)?;
        }
        if let Some(end) = incomplete(summary) {
            self.notes_seen = true;
            let at = self.at(NOTES_TID, self.last_ts);
            self.enc
                .instant(at, Name::Text(&end), "note", &Args::new())?;
        }
        let process = format!("{} (pid {pid})", meta.target_comm);
        self.enc.process(pid, &process, 0)?;
        for &tid in &self.tids {
            let facts = engine.threads.get(&tid);
            let role = facts.map_or(Role::Other, crate::engine::lifecycle::ThreadFacts::role);
            let name = facts
                .and_then(|f| f.name.clone())
                .unwrap_or_else(|| format!("tid {tid}"));
            let sort = role_order(role) * 10_000_000 + i64::from(tid);
            let track = format!("{name} [{}]", role.as_str());
            self.enc.thread(pid, tid, &track, Some(sort))?;
        }
        if self.qmp_seen {
            self.enc
                .thread(pid, QMP_TID, "QMP migration status", Some(-2))?;
        }
        if self.notes_seen {
            self.enc
                .thread(pid, NOTES_TID, "uffdscope recorder", Some(-1))?;
        }
        if self.guest_seen {
            self.enc.process(GUEST_PID, "guest", 1)?;
            self.enc
                .thread(GUEST_PID, GUEST_PID, "guest console", None)?;
            let mut sources: Vec<(&String, u32)> =
                self.guest_sources.iter().map(|(s, t)| (s, *t)).collect();
            // Track order, not hash order: the same trace gives the same file.
            sources.sort_unstable_by_key(|(_, tid)| *tid);
            for (source, tid) in sources {
                let name = format!("guest intervals: {source}");
                self.enc.thread(GUEST_PID, tid, &name, None)?;
            }
        }
        self.enc.finish()
    }

    fn uffd_read(&mut self, r: &uffdscope_trace::record::UffdRead) -> io::Result<()> {
        let addresses = r
            .msgs
            .iter()
            .take(MAX_LISTED)
            .map(|m| Arg::Str(format!("{:#x}", m.address)))
            .collect();
        let args = vec![
            ("fd", Arg::Int(i64::from(r.fd))),
            ("ret", Arg::Int(r.ret)),
            ("messages", Arg::UInt(r.msgs.len() as u64)),
            ("addresses", Arg::List(addresses)),
        ];
        let name = if r.ret < 0 {
            "uffd read (error)"
        } else {
            "uffd read"
        };
        self.syscall(
            Name::Fixed(name),
            "uffd",
            r.tid,
            r.enter_ts,
            r.exit_ts,
            &args,
        )
    }

    fn uffd_ioctl(&mut self, io: &uffdscope_trace::record::UffdIoctl) -> io::Result<()> {
        // Return value and result only when they say something (an error, a
        // short copy): placements are most of the events.
        let mut args = vec![
            ("start", Arg::Str(format!("{:#x}", io.start))),
            ("len", Arg::UInt(io.len)),
            ("woken", Arg::UInt(u64::from(io.woken))),
        ];
        if io.ret != 0 {
            args.push(("ret", Arg::Int(io.ret)));
        }
        if io.result != io.len as i64 && io.op.places_pages() {
            args.push(("result", Arg::Int(io.result)));
        }
        let other = match io.op {
            IoctlOp::Other(cmd) => format!("uffd ioctl {cmd:#x}"),
            _ => String::new(),
        };
        let name = ioctl_name(io.op).map_or(Name::Text(&other), Name::Fixed);
        self.syscall(name, "uffd", io.tid, io.enter_ts, io.exit_ts, &args)
    }

    fn qmp(&mut self, q: &uffdscope_trace::record::Qmp, derived: &Derived) -> io::Result<()> {
        self.qmp_seen = true;
        let Some(status) = derived.qmp.as_ref().and_then(|f| f.status.clone()) else {
            return Ok(());
        };
        if self.last_status.as_deref() == Some(status.as_str()) {
            return Ok(());
        }
        let args = vec![
            ("kind", Arg::Str(q.kind.clone())),
            (
                "json",
                Arg::Str(truncate_chars(&q.json, MAX_QMP_CHARS).to_owned()),
            ),
        ];
        let name = format!("status: {status}");
        let at = self.at(QMP_TID, q.ts);
        self.enc.instant(at, Name::Text(&name), "qmp", &args)?;
        self.last_status = Some(status);
        Ok(())
    }
}

impl<E: Encoder> Consumer for Timeline<E> {
    type Error = io::Error;

    fn record(&mut self, rec: &Record, derived: &Derived, at: At<'_>) -> io::Result<()> {
        self.split.push(rec);
        let ts = rec.ts();
        self.last_ts = self.last_ts.max(ts);
        self.enc.advance(at.origin, self.last_ts)?;
        let pid = self.pid;
        let drops = Name::Fixed("ring-buffer drops");
        if self.drops.is_none() && ts > 0 {
            // Start the drops counter at zero so its track always exists.
            self.drops = Some(0);
            self.enc.counter(pid, drops, ts, "dropped", 0.0)?;
        }
        match rec {
            Record::UffdRead(r) => self.uffd_read(r),
            Record::UffdIoctl(io) => self.uffd_ioctl(io),
            Record::PlacementBin(bin) => self.placement_bin(bin),
            Record::SockIo(s) => self.send(s, &derived.return_path),
            Record::GuestLine(g) => self.guest_line(g.ts, &g.text),
            Record::Qmp(q) => self.qmp(q, derived),
            Record::Note(n) => {
                self.notes_seen = true;
                let args = vec![("text", Arg::Str(n.text.clone()))];
                let name = format!("note: {}", n.kind);
                let at = self.at(NOTES_TID, n.ts);
                self.enc.instant(at, Name::Text(&name), "note", &args)
            }
            Record::Drops(d) => {
                let total = self.drops.unwrap_or(0).max(d.total);
                self.drops = Some(total);
                self.enc.counter(pid, drops, d.ts, "dropped", total as f64)
            }
            Record::TcpProbe(p) => {
                let name = format!("srtt µs :{}→:{}", p.sport, p.dport);
                let srtt = f64::from(p.srtt_us);
                self.enc
                    .counter(pid, Name::Text(&name), p.ts, "srtt_us", srtt)
            }
            _ => Ok(()),
        }
    }

    fn fault(&mut self, fault: &Fault, _: At<'_>) -> io::Result<()> {
        self.write_fault(fault)
    }
}

fn run<R: Read, E: Encoder>(
    reader: &mut TraceReader<R>,
    enc: E,
    limits: Limits,
) -> io::Result<Summary> {
    let meta = reader.meta().clone();
    let mut timeline = Timeline::new(enc, meta.target_pid);
    let (engine, summary) = drive::drive(reader, &mut timeline, limits)?;
    timeline.finish(&engine, &meta, &summary)?;
    Ok(summary)
}

/// Streams the trace as Chrome Trace Event JSON to `out` (wrap it in a
/// `BufWriter`). Damage after the header ends the events early; the JSON is
/// still closed and valid, and the damage is returned in [`Summary::damage`].
pub fn export_json<R: Read, W: Write>(
    reader: &mut TraceReader<R>,
    out: W,
    limits: Limits,
) -> io::Result<Summary> {
    let enc = json::Json::start(out, reader.meta())?;
    run(reader, enc, limits)
}

/// Streams the trace as a Perfetto protobuf trace (TrackEvent packets) to
/// `out` (wrap it in a `BufWriter`). Damage after the header ends the events
/// early; the file is still a whole trace, and the damage is returned in
/// [`Summary::damage`].
pub fn export_protobuf<R: Read, W: Write>(
    reader: &mut TraceReader<R>,
    out: W,
    limits: Limits,
) -> io::Result<Summary> {
    let enc = protobuf::Protobuf::start(out)?;
    run(reader, enc, limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_chars("µµµ", 2), "µµ");
        assert_eq!(truncate_chars("ab", 5), "ab");
    }
}
