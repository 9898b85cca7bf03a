//! The source trace read into a bounded index (ARCHITECTURE.md, "Clock
//! alignment and the three sub-stages"): the return path's receives with
//! their first bytes, the page runs the source sent, the RAMBlock bases its
//! page headers vote for, the send-window state of its sockets, its threads.
//!
//! A source trace is untrusted input like any trace: records pass the same
//! validation boundary as the destination's, every collection has a cap
//! (what is over it is counted, never kept), and damage is reported with its
//! offset by the reader.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use crate::drive::Limits;
use crate::inputs::validate::Boundary;
use uffdscope_trace::record::{Direction, PagesSent, Record, Side, SocketInfo, TcpProbe};
use uffdscope_trace::{TraceError, TraceReader};

/// Most receives kept (each holds up to 64 bytes of payload).
pub const MAX_RECEIVES: usize = 1_000_000;
/// Most page runs kept.
pub const MAX_RUNS: usize = 4_000_000;
/// Most distinct RAMBlock base candidates counted.
pub const MAX_BASES: usize = 64;
/// Most sockets and threads kept.
pub const MAX_SOCKETS: usize = 256;
pub const MAX_THREADS: usize = 4096;

/// QEMU's page header flags (`RAM_SAVE_FLAG_*`, the low bits of the be64).
pub const FLAG_ZERO: u64 = 0x02;
pub const FLAG_PAGE: u64 = 0x08;
pub const FLAG_CONTINUE: u64 = 0x20;
/// The offset bits of a header for 4 KiB target pages.
const OFFSET_MASK: u64 = !0xfff;

/// One receive on a source socket.
#[derive(Debug, Clone)]
pub struct Receive {
    pub enter_ts: u64,
    pub exit_ts: u64,
    pub fd: i32,
    pub tid: u32,
    /// Bytes received (> 0).
    pub len: u64,
    pub head: Box<[u8]>,
}

/// One page run of one send: `pages` pages from `addr` on.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub enter_ts: u64,
    pub addr: u64,
    pub bytes: u64,
    pub fd: i32,
}

/// What one source thread did.
#[derive(Debug, Clone, Default)]
pub struct SourceThread {
    pub name: Option<String>,
    pub receives: u64,
    pub page_sends: u64,
    pub pages: u64,
}

/// What went through one source fd.
#[derive(Debug, Clone, Copy, Default)]
pub struct FdCounts {
    pub receives: u64,
    pub page_sends: u64,
    pub pages: u64,
}

/// Send-window samples of one socket (by its local port).
#[derive(Debug, Clone, Copy, Default)]
pub struct WindowSamples {
    /// `tcp_probe` samples with the sequence state.
    pub samples: u64,
    /// Of those, samples whose bytes in flight filled the peer's window
    /// (at least [`WINDOW_FULL`] of it): the source could not send more.
    pub full: u64,
}

/// Bytes in flight over the peer's advertised window at which a send queue
/// counts as full (the last segment rarely fits exactly).
pub const WINDOW_FULL: f64 = 0.9;

/// Why a source trace cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("{path} was recorded on the destination (its metadata says side {side}); --source takes the trace recorded on the source with `uffdscope record --side source`")]
    NotSource { path: String, side: &'static str },
}

/// The source trace, indexed.
#[derive(Debug, Default)]
pub struct SourceIndex {
    pub pid: Option<u32>,
    pub threads: BTreeMap<u32, SourceThread>,
    pub sockets: Vec<SocketInfo>,
    /// Receives in stream order per fd.
    pub receives: BTreeMap<i32, Vec<Receive>>,
    /// Page runs by send entry time.
    pub runs: Vec<Run>,
    /// RAMBlock host-base candidates and their votes (`addr − header offset`
    /// of runs whose header says `CONTINUE|PAGE`).
    pub base_votes: HashMap<u64, u64>,
    pub windows: BTreeMap<u16, WindowSamples>,
    pub per_fd: BTreeMap<i32, FdCounts>,
    pub records: u64,
    /// Page sends (records) read.
    pub page_sends: u64,
    /// What was over a cap and left out, by what.
    pub left_out: BTreeMap<&'static str, u64>,
    /// Why reading stopped early.
    pub damage: Option<TraceError>,
    /// Records the validation boundary turned away.
    pub rejected: Vec<String>,
    pub stopped_at_limit: bool,
}

fn side_name(side: Option<Side>) -> &'static str {
    match side {
        Some(Side::Source) => "source",
        Some(Side::Destination) => "destination",
        None => "unset (a trace before format 4, recorded on the destination)",
    }
}

impl SourceIndex {
    /// Reads the trace at `path` (named in errors) from `reader`.
    pub fn read<R: Read>(
        mut reader: TraceReader<R>,
        path: &str,
        limits: Limits,
    ) -> Result<Self, SourceError> {
        let side = reader.meta().side;
        if side != Some(Side::Source) {
            return Err(SourceError::NotSource {
                path: path.to_owned(),
                side: side_name(side),
            });
        }
        let mut boundary = Boundary::new(reader.meta());
        let mut index = SourceIndex::default();
        let damage = reader.for_each(|rec| {
            if index.stopped_at_limit || !boundary.admits(&rec) {
                return;
            }
            if index.records >= limits.max_records {
                index.stopped_at_limit = true;
                return;
            }
            index.records += 1;
            index.push(rec);
        });
        index.damage = damage;
        index.rejected = boundary.warnings();
        index.runs.sort_by_key(|r| r.enter_ts);
        for list in index.receives.values_mut() {
            list.sort_by_key(|r| r.enter_ts);
        }
        Ok(index)
    }

    fn leave_out(&mut self, what: &'static str) {
        *self.left_out.entry(what).or_default() += 1;
    }

    fn fd(&mut self, fd: i32) -> Option<&mut FdCounts> {
        if self.per_fd.len() >= MAX_SOCKETS && !self.per_fd.contains_key(&fd) {
            self.leave_out("fds");
            return None;
        }
        Some(self.per_fd.entry(fd).or_default())
    }

    fn thread(&mut self, tid: u32) -> Option<&mut SourceThread> {
        if self.threads.len() >= MAX_THREADS && !self.threads.contains_key(&tid) {
            self.leave_out("threads");
            return None;
        }
        Some(self.threads.entry(tid).or_default())
    }

    fn push(&mut self, rec: Record) {
        match rec {
            Record::Process(p) => self.pid = Some(p.pid),
            Record::Thread(t) => {
                if let Some(th) = self.thread(t.tid) {
                    th.name = Some(t.name);
                }
            }
            Record::Socket(s) if self.sockets.len() < MAX_SOCKETS => self.sockets.push(s),
            Record::Socket(_) => self.leave_out("sockets"),
            Record::SockIo(s) if s.dir == Direction::Recv && s.ret > 0 => {
                if let Some(th) = self.thread(s.tid) {
                    th.receives += 1;
                }
                if let Some(c) = self.fd(s.fd) {
                    c.receives += 1;
                }
                let kept: usize = self.receives.values().map(Vec::len).sum();
                if kept >= MAX_RECEIVES {
                    return self.leave_out("receives");
                }
                let mut head = s.head;
                head.truncate(uffdscope_trace::record::SockIo::MAX_HEAD);
                let head = head.into_boxed_slice();
                self.receives.entry(s.fd).or_default().push(Receive {
                    enter_ts: s.enter_ts,
                    exit_ts: s.exit_ts,
                    fd: s.fd,
                    tid: s.tid,
                    len: s.ret.unsigned_abs(),
                    head,
                });
            }
            Record::PagesSent(p) => self.push_pages(&p),
            Record::TcpProbe(t) => self.push_probe(&t),
            _ => {}
        }
    }

    fn push_pages(&mut self, p: &PagesSent) {
        self.page_sends += 1;
        let pages: u64 = p.runs.iter().map(|r| u64::from(r.pages)).sum();
        if let Some(th) = self.thread(p.tid) {
            th.page_sends += 1;
            th.pages = th.pages.saturating_add(pages);
        }
        if let Some(c) = self.fd(p.fd) {
            c.page_sends += 1;
            c.pages = c.pages.saturating_add(pages);
        }
        if p.ret <= 0 {
            return;
        }
        for r in &p.runs {
            if r.pages == 0 || r.page_len == 0 || !r.page_len.is_power_of_two() {
                continue;
            }
            let bytes = u64::from(r.pages) * u64::from(r.page_len);
            if r.addr.checked_add(bytes).is_none() {
                continue;
            }
            if let Some(h) = r.header {
                self.vote_base(r.addr, h);
            }
            if self.runs.len() >= MAX_RUNS {
                self.leave_out("page runs");
                continue;
            }
            self.runs.push(Run {
                enter_ts: p.enter_ts,
                addr: r.addr,
                bytes,
                fd: p.fd,
            });
        }
    }

    /// A run whose header says "a page, continuing the current RAMBlock"
    /// votes for that block's host base: its address less the header's offset.
    fn vote_base(&mut self, addr: u64, header: u64) {
        if header & (FLAG_CONTINUE | FLAG_PAGE) != FLAG_CONTINUE | FLAG_PAGE
            || header & FLAG_ZERO != 0
        {
            return;
        }
        let Some(base) = addr.checked_sub(header & OFFSET_MASK) else {
            return;
        };
        if self.base_votes.len() >= MAX_BASES && !self.base_votes.contains_key(&base) {
            return self.leave_out("RAMBlock base candidates");
        }
        *self.base_votes.entry(base).or_default() += 1;
    }

    fn push_probe(&mut self, t: &TcpProbe) {
        let Some(seq) = t.seq else {
            return;
        };
        if self.windows.len() >= MAX_SOCKETS && !self.windows.contains_key(&t.sport) {
            return self.leave_out("socket window samples");
        }
        let w = self.windows.entry(t.sport).or_default();
        w.samples += 1;
        let full =
            seq.snd_wnd > 0 && f64::from(seq.in_flight()) >= WINDOW_FULL * f64::from(seq.snd_wnd);
        w.full += u64::from(full);
    }

    /// Base candidates, most votes first (ties: lower address first).
    pub fn bases(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self.base_votes.iter().map(|(b, n)| (*b, *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    /// The source socket of the connection whose destination end is `dest`
    /// (local and remote swapped).
    pub fn peer_of(&self, dest: &SocketInfo) -> Option<&SocketInfo> {
        self.sockets
            .iter()
            .find(|s| s.local == dest.remote && s.remote == dest.local)
    }
}
