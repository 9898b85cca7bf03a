//! Timeline export in the Chrome Trace Event JSON format, which
//! <https://ui.perfetto.dev> (and `chrome://tracing`) open.
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
//!
//! Timestamps are µs since the time origin of every output
//! ([`crate::drive::Origin`]: the trace's first record).

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

/// Appends `s` as a JSON string literal.
fn json_str(o: &mut String, s: &str) {
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
}

/// Appends a JSON number; `null` for a value JSON cannot hold (inf, NaN).
fn json_f64(o: &mut String, v: f64) {
    if v.is_finite() {
        let _ = write!(o, "{v}");
    } else {
        o.push_str("null");
    }
}

/// Appends ns as µs with three decimals (exact: no float rounding).
fn push_us(o: &mut String, ns: i128) {
    let sign = if ns < 0 { "-" } else { "" };
    let a = ns.unsigned_abs();
    let _ = write!(o, "{sign}{}.{:03}", a / 1000, a % 1000);
}

fn truncate_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn ioctl_name(op: IoctlOp) -> String {
    match op {
        IoctlOp::Copy => "UFFDIO_COPY".into(),
        IoctlOp::ZeroPage => "UFFDIO_ZEROPAGE".into(),
        IoctlOp::Wake => "UFFDIO_WAKE".into(),
        IoctlOp::Continue => "UFFDIO_CONTINUE".into(),
        IoctlOp::Register => "UFFDIO_REGISTER".into(),
        IoctlOp::Unregister => "UFFDIO_UNREGISTER".into(),
        IoctlOp::Api => "UFFDIO_API".into(),
        IoctlOp::WriteProtect => "UFFDIO_WRITEPROTECT".into(),
        IoctlOp::Other(cmd) => format!("uffd ioctl {cmd:#x}"),
    }
}

fn role_order(role: Role) -> i64 {
    match role {
        Role::Fault => 0,
        Role::Listen => 1,
        Role::Preempt => 2,
        Role::Vcpu => 3,
        Role::Other => 4,
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

struct Perfetto<W: Write> {
    out: W,
    ev: String,
    first: bool,
    events: u64,
    pid: u32,
    origin: Origin,
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

impl<W: Write> Perfetto<W> {
    /// Starts an event: the separator and the opening brace.
    fn begin(&mut self) -> &mut String {
        self.ev.clear();
        if !self.first {
            self.ev.push_str(",\n");
        }
        self.first = false;
        self.ev.push('{');
        &mut self.ev
    }

    fn end(&mut self) -> io::Result<()> {
        self.ev.push('}');
        self.events += 1;
        self.out.write_all(self.ev.as_bytes())
    }

    /// The common head: phase, name, category, pid, tid, ts.
    fn head(&mut self, ph: char, name: &str, cat: &str, pid: u32, tid: u32, ts: u64) {
        let rel = self.origin.rel(ts);
        let o = self.begin();
        let _ = write!(o, r#""ph":"{ph}","name":"#);
        json_str(o, name);
        let _ = write!(o, r#","cat":"{cat}","pid":{pid},"tid":{tid},"ts":"#);
        push_us(o, rel);
    }

    /// A complete slice; `args` is a JSON object body (without braces) or empty.
    #[allow(clippy::too_many_arguments)]
    fn slice(
        &mut self,
        name: &str,
        cat: &str,
        pid: u32,
        tid: u32,
        start: u64,
        end: u64,
        args: &str,
    ) -> io::Result<()> {
        self.head('X', name, cat, pid, tid, start);
        let o = &mut self.ev;
        o.push_str(r#","dur":"#);
        push_us(o, i128::from(end.saturating_sub(start)));
        if !args.is_empty() {
            let _ = write!(o, r#","args":{{{args}}}"#);
        }
        self.end()
    }

    fn instant(
        &mut self,
        name: &str,
        cat: &str,
        pid: u32,
        tid: u32,
        ts: u64,
        args: &str,
    ) -> io::Result<()> {
        self.head('i', name, cat, pid, tid, ts);
        let o = &mut self.ev;
        o.push_str(r#","s":"t""#);
        if !args.is_empty() {
            let _ = write!(o, r#","args":{{{args}}}"#);
        }
        self.end()
    }

    fn counter(&mut self, name: &str, ts: u64, key: &str, value: f64) -> io::Result<()> {
        let pid = self.pid;
        self.head('C', name, "counter", pid, pid, ts);
        let o = &mut self.ev;
        o.push_str(r#","args":{"#);
        json_str(o, key);
        o.push(':');
        json_f64(o, value);
        o.push('}');
        self.end()
    }

    /// Background placements counted in a bin, as a placements-per-second
    /// counter per thread and kind: the bin's rate from its start, zero from
    /// its end (the next bin's start, written later, overrides that zero).
    fn placement_bin(&mut self, bin: &PlacementBin) -> io::Result<()> {
        self.touch(bin.tid);
        let name = format!(
            "{} counted/s (tid {}, {} B)",
            ioctl_name(bin.op),
            bin.tid,
            bin.len
        );
        let start = PlacementBin::index(bin.first_exit_ts).saturating_mul(PlacementBin::BIN_NS);
        let rate = bin.count as f64 * 1e9 / PlacementBin::BIN_NS as f64;
        self.counter(&name, start, "per_s", rate)?;
        let end = start.saturating_add(PlacementBin::BIN_NS);
        self.counter(&name, end, "per_s", 0.0)
    }

    fn metadata(
        &mut self,
        what: &str,
        pid: u32,
        tid: u32,
        key: &str,
        value: &str,
    ) -> io::Result<()> {
        let o = self.begin();
        let _ = write!(
            o,
            r#""ph":"M","name":"{what}","pid":{pid},"tid":{tid},"args":{{"{key}":"#
        );
        json_str(o, value);
        o.push('}');
        self.end()
    }

    fn sort_index(&mut self, what: &str, pid: u32, tid: u32, index: i64) -> io::Result<()> {
        let o = self.begin();
        let _ = write!(
            o,
            r#""ph":"M","name":"{what}","pid":{pid},"tid":{tid},"args":{{"sort_index":{index}}}"#
        );
        self.end()
    }

    fn flow_point(&mut self, ph: char, id: u64, tid: u32, ts: u64) -> io::Result<()> {
        let pid = self.pid;
        self.head(ph, "fault", "flow", pid, tid, ts);
        let _ = write!(self.ev, r#","id":{id}"#);
        if ph == 'f' {
            self.ev.push_str(r#","bp":"e""#);
        }
        self.end()
    }

    fn touch(&mut self, tid: u32) {
        self.tids.insert(tid);
    }

    fn guest_line(&mut self, ts: u64, text: &str) -> io::Result<()> {
        self.guest_seen = true;
        let name = truncate_chars(text, MAX_NAME_CHARS);
        let mut args = String::new();
        if name.len() < text.len() {
            args.push_str(r#""text":"#);
            json_str(&mut args, text);
        }
        self.instant(name, "guest", GUEST_PID, GUEST_PID, ts, &args)?;
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
        let mut args = String::from(r#""dur_ms":"#);
        json_f64(&mut args, sample.dur_ms);
        if let Some(cpu) = sample.cpu {
            let _ = write!(args, r#","cpu":{cpu}"#);
        }
        self.slice(
            &format!("interval {} ms", sample.dur_ms),
            "guest",
            GUEST_PID,
            tid,
            start,
            ts,
            &args,
        )
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
        self.touch(s.tid);
        let mut args = format!(r#""fd":{},"ret":{}"#, s.fd, s.ret);
        let name = if let Some((block, start, len)) = requests.first() {
            args.push_str(r#","requests":["#);
            for (i, (block, start, len)) in requests.iter().enumerate() {
                if i > 0 {
                    args.push(',');
                }
                args.push_str(r#"{"block":"#);
                json_str(&mut args, block);
                let _ = write!(args, r#","offset":"{start:#x}","len":{len}}}"#);
            }
            args.push(']');
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
        self.syscall(&name, "request", s.tid, s.enter_ts, s.exit_ts, &args)
    }

    /// A syscall slice on a target thread, at its true times: one thread is in
    /// one syscall at a time, so its slices nest by themselves.
    fn syscall(
        &mut self,
        name: &str,
        cat: &str,
        tid: u32,
        enter: u64,
        exit: u64,
        args: &str,
    ) -> io::Result<()> {
        self.touch(tid);
        self.slice(name, cat, self.pid, tid, enter, exit.max(enter), args)
    }

    fn write_fault(&mut self, f: &Fault) -> io::Result<()> {
        let pid = self.pid;
        self.touch(f.tid);
        let start = f.entry_ts.map_or(f.blocked_ts, |e| e.min(f.blocked_ts));
        let end = f.run_ts.unwrap_or(f.woken_ts).max(f.woken_ts).max(start);
        let mut args = String::new();
        let _ = write!(
            args,
            r#""page":"{:#x}","resolution":"{}","already_requested":{},"waker_tid":{}"#,
            f.page,
            f.resolution.as_str(),
            f.already_requested,
            f.waker_tid
        );
        let us = |ns: Option<u64>| {
            ns.map_or_else(|| "null".to_owned(), |n| format!("{}", n as f64 / 1e3))
        };
        let _ = write!(
            args,
            r#","service_us":{},"blocked_us":{}"#,
            us(f.service_ns()),
            us(f.blocked_ns())
        );
        self.slice(
            &format!("fault {:#x}", f.page),
            "fault",
            pid,
            f.tid,
            start,
            end,
            &args,
        )?;
        let bounds = [
            ("queue", f.entry_ts, f.read_ts.or(f.place_ts)),
            ("request", f.read_ts, f.request_ts),
            ("network", f.request_ts.or(f.read_ts), f.place_ts),
            ("place", f.place_ts, Some(f.woken_ts)),
            ("wake", Some(f.woken_ts), f.run_ts),
        ];
        let network_args = self.split.split(f).map_or_else(String::new, |p| {
            format!(
                r#""wire_us":{},"behind_stream_us":{},"rest_us":{},"paused_us":{},"behind_stream_bytes":{}"#,
                us(p.wire_ns),
                us(p.behind_stream_ns),
                us(p.rest_ns),
                us(p.paused_ns),
                p.behind_stream_bytes
                    .map_or_else(|| "null".to_owned(), |b| b.to_string())
            )
        });
        // Siblings must not overlap and must stay inside the fault slice.
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
                network_args.as_str()
            } else {
                ""
            };
            self.slice(name, "stage", pid, f.tid, s, e, args)?;
            cursor = e;
        }
        // Flow points sit just inside the slices they bind to.
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
            let ph = match i {
                0 => 's',
                i if i == last => 'f',
                _ => 't',
            };
            self.flow_point(ph, id, tid, ts)?;
        }
        Ok(())
    }

    /// Names every track and closes the JSON.
    fn finish(&mut self, engine: &Engine, meta: &TraceMeta, summary: &Summary) -> io::Result<()> {
        let pid = self.pid;
        if let Some(d) = self.drops {
            self.counter("ring-buffer drops", self.last_ts, "dropped", d as f64)?;
        }
        if let Some(end) = incomplete(summary) {
            self.notes_seen = true;
            self.instant(&end, "note", pid, NOTES_TID, self.last_ts, "")?;
        }
        self.metadata(
            "process_name",
            pid,
            pid,
            "name",
            &format!("{} (pid {pid})", meta.target_comm),
        )?;
        self.sort_index("process_sort_index", pid, pid, 0)?;
        let tids: Vec<u32> = self.tids.iter().copied().collect();
        for tid in tids {
            let facts = engine.threads.get(&tid);
            let role = facts.map_or(Role::Other, crate::engine::lifecycle::ThreadFacts::role);
            let name = facts
                .and_then(|f| f.name.clone())
                .unwrap_or_else(|| format!("tid {tid}"));
            self.metadata(
                "thread_name",
                pid,
                tid,
                "name",
                &format!("{name} [{}]", role.as_str()),
            )?;
            self.sort_index(
                "thread_sort_index",
                pid,
                tid,
                role_order(role) * 10_000_000 + i64::from(tid),
            )?;
        }
        if self.qmp_seen {
            self.metadata("thread_name", pid, QMP_TID, "name", "QMP migration status")?;
            self.sort_index("thread_sort_index", pid, QMP_TID, -2)?;
        }
        if self.notes_seen {
            self.metadata("thread_name", pid, NOTES_TID, "name", "uffdscope recorder")?;
            self.sort_index("thread_sort_index", pid, NOTES_TID, -1)?;
        }
        if self.guest_seen {
            self.metadata("process_name", GUEST_PID, GUEST_PID, "name", "guest")?;
            self.sort_index("process_sort_index", GUEST_PID, GUEST_PID, 1)?;
            self.metadata("thread_name", GUEST_PID, GUEST_PID, "name", "guest console")?;
            let mut sources: Vec<(String, u32)> = self
                .guest_sources
                .iter()
                .map(|(s, t)| (s.clone(), *t))
                .collect();
            // Track order, not hash order: the same trace gives the same file.
            sources.sort_unstable_by_key(|(_, tid)| *tid);
            for (source, tid) in sources {
                self.metadata(
                    "thread_name",
                    GUEST_PID,
                    tid,
                    "name",
                    &format!("guest intervals: {source}"),
                )?;
            }
        }
        self.out.write_all(b"\n]}\n")?;
        self.out.flush()
    }
}

impl<W: Write> Consumer for Perfetto<W> {
    type Error = io::Error;

    fn record(&mut self, rec: &Record, derived: &Derived, at: At<'_>) -> io::Result<()> {
        self.split.push(rec);
        let ts = rec.ts();
        self.origin = at.origin;
        self.last_ts = self.last_ts.max(ts);
        if self.drops.is_none() && ts > 0 {
            // Start the drops counter at zero so its track always exists.
            self.drops = Some(0);
            self.counter("ring-buffer drops", ts, "dropped", 0.0)?;
        }
        let pid = self.pid;
        match rec {
            Record::UffdRead(r) => {
                self.touch(r.tid);
                let mut args = format!(
                    r#""fd":{},"ret":{},"messages":{},"addresses":["#,
                    r.fd,
                    r.ret,
                    r.msgs.len()
                );
                for (i, m) in r.msgs.iter().take(MAX_LISTED).enumerate() {
                    if i > 0 {
                        args.push(',');
                    }
                    let _ = write!(args, r#""{:#x}""#, m.address);
                }
                args.push(']');
                let name = if r.ret < 0 {
                    "uffd read (error)"
                } else {
                    "uffd read"
                };
                self.syscall(name, "uffd", r.tid, r.enter_ts, r.exit_ts, &args)
            }
            Record::UffdIoctl(io) => {
                self.touch(io.tid);
                // Return value and result only when they say something (an
                // error, a short copy): placements are most of the events.
                let mut args = format!(
                    r#""start":"{:#x}","len":{},"woken":{}"#,
                    io.start, io.len, io.woken
                );
                if io.ret != 0 {
                    let _ = write!(args, r#","ret":{}"#, io.ret);
                }
                if io.result != io.len as i64 && io.op.places_pages() {
                    let _ = write!(args, r#","result":{}"#, io.result);
                }
                self.syscall(
                    &ioctl_name(io.op),
                    "uffd",
                    io.tid,
                    io.enter_ts,
                    io.exit_ts,
                    &args,
                )
            }
            Record::PlacementBin(bin) => self.placement_bin(bin),
            Record::SockIo(s) => self.send(s, &derived.return_path),
            Record::GuestLine(g) => self.guest_line(g.ts, &g.text),
            Record::Qmp(q) => {
                self.qmp_seen = true;
                let Some(status) = derived.qmp.as_ref().and_then(|f| f.status.clone()) else {
                    return Ok(());
                };
                if self.last_status.as_deref() == Some(status.as_str()) {
                    return Ok(());
                }
                let mut args = String::from(r#""kind":"#);
                json_str(&mut args, &q.kind);
                args.push_str(r#","json":"#);
                json_str(&mut args, truncate_chars(&q.json, MAX_QMP_CHARS));
                self.instant(
                    &format!("status: {status}"),
                    "qmp",
                    pid,
                    QMP_TID,
                    q.ts,
                    &args,
                )?;
                self.last_status = Some(status);
                Ok(())
            }
            Record::Note(n) => {
                self.notes_seen = true;
                let mut args = String::from(r#""text":"#);
                json_str(&mut args, &n.text);
                self.instant(
                    &format!("note: {}", n.kind),
                    "note",
                    pid,
                    NOTES_TID,
                    n.ts,
                    &args,
                )
            }
            Record::Drops(d) => {
                let total = self.drops.unwrap_or(0).max(d.total);
                self.drops = Some(total);
                self.counter("ring-buffer drops", d.ts, "dropped", total as f64)
            }
            Record::TcpProbe(p) => self.counter(
                &format!("srtt µs :{}→:{}", p.sport, p.dport),
                p.ts,
                "srtt_us",
                f64::from(p.srtt_us),
            ),
            _ => Ok(()),
        }
    }

    fn fault(&mut self, fault: &Fault, _: At<'_>) -> io::Result<()> {
        self.write_fault(fault)
    }
}

/// Streams the trace as Chrome Trace Event JSON to `out` (wrap it in a
/// `BufWriter`). Damage after the header ends the events early; the JSON is
/// still closed and valid, and the damage is returned in [`Summary::damage`].
pub fn export<R: Read, W: Write>(
    reader: &mut TraceReader<R>,
    out: W,
    limits: Limits,
) -> io::Result<Summary> {
    let meta = reader.meta().clone();
    let mut p = Perfetto {
        out,
        ev: String::with_capacity(512),
        first: true,
        events: 0,
        pid: meta.target_pid,
        origin: Origin::default(),
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
    };
    let mut head = String::from(r#"{"displayTimeUnit":"ns","otherData":{"exporter":"#);
    json_str(&mut head, concat!("uffdscope ", env!("CARGO_PKG_VERSION")));
    for (k, v) in [
        ("recorded_by", &meta.tool),
        ("host", &meta.host),
        ("kernel", &meta.kernel),
        ("target", &meta.target_comm),
    ] {
        let _ = write!(head, r#","{k}":"#);
        json_str(&mut head, v);
    }
    let _ = write!(
        head,
        r#","target_pid":{},"time_origin":"the trace's first record"}},"traceEvents":["#,
        meta.target_pid
    );
    head.push('\n');
    p.out.write_all(head.as_bytes())?;
    let (engine, summary) = drive::drive(reader, &mut p, limits)?;
    p.finish(&engine, &meta, &summary)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut o = String::new();
        json_str(&mut o, "a\"b\\c\nd\u{1}<script>");
        assert_eq!(o, r#""a\"b\\c\nd\u0001<script>""#);
        let v: serde_json::Value = serde_json::from_str(&o).expect("valid JSON string");
        assert_eq!(v, "a\"b\\c\nd\u{1}<script>");
    }

    #[test]
    fn numbers_json_cannot_hold_are_null() {
        let mut o = String::new();
        for v in [1.5, f64::INFINITY, f64::NAN, -0.25] {
            json_f64(&mut o, v);
            o.push(' ');
        }
        assert_eq!(o, "1.5 null null -0.25 ");
    }

    #[test]
    fn microseconds_are_exact() {
        let mut o = String::new();
        push_us(&mut o, 1_234_567);
        o.push(' ');
        push_us(&mut o, -5);
        o.push(' ');
        push_us(&mut o, 0);
        assert_eq!(o, "1234.567 -0.005 0.000");
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_chars("µµµ", 2), "µµ");
        assert_eq!(truncate_chars("ab", 5), "ab");
    }
}
