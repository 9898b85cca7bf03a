//! The two traces joined: while the destination's one pass runs, the
//! return-path sends and each requested fault's raw times are kept (bounded
//! by the fault count); once the pass is over, [`Merger::finish`] anchors
//! the streams, matches each request to the source receive that delivered
//! it and each page to the source's first send of it after that, aligns the
//! clocks and splits each matched fault's network stage into `to_source`,
//! `at_source` and `from_source`, clamped in that order so they add up to
//! the stage exactly.

use std::collections::{BTreeMap, HashMap};

use super::clock::{self, Clock, Sample};
use super::source::{Receive, Run, SourceIndex};
use super::stream::{self, Anchor, DestStream};
use crate::engine::lifecycle::{Engine, Fault, Resolution};
use crate::engine::stats::Hist;
use crate::inputs::rp::RpMessage;
use uffdscope_trace::record::{Direction, Record, SockIo, SocketInfo};

/// Most requested faults kept for the split.
pub const MAX_FAULTS: usize = 1_000_000;
/// Most RAMBlock names told apart.
const MAX_BLOCKS: usize = 64;
/// How far after a request's receive the page's send is looked for
/// (source time), and how many runs at most.
pub const SCAN_NS: u64 = 2_000_000_000;
pub const MAX_SCAN_RUNS: usize = 200_000;
/// Runs visited over all the page lookups of one merge, at most (about a
/// second of work): a crafted source trace cannot make matching hang.
pub const MAX_SCAN_WORK: u64 = 500_000_000;
/// Base candidates tried for a block whose base is not known yet.
const MAX_TRIED_BASES: usize = 4;

/// One page request inside a destination send.
#[derive(Debug, Clone, Copy)]
struct SentRequest {
    block: Option<u16>,
    start: u64,
    len: u64,
    /// Offset just past the message within its send.
    end: u64,
}

/// A destination send's fd and the page requests in it.
type SendRequests = (i32, Box<[SentRequest]>);

/// A requested fault's raw times, kept until the clock is known.
#[derive(Debug, Clone, Copy)]
struct RawFault {
    tid: u32,
    page: u64,
    entry_ts: Option<u64>,
    request_ts: u64,
    place_ts: u64,
    fd: i32,
    /// The request's send: its thread (the send's exit is `request_ts`).
    sender: u32,
    req: SentRequest,
    /// The page's offset in its RAMBlock, when the destination knows the base.
    offset: u64,
}

/// One requested fault's network stage split three ways, ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubStages {
    pub to_source: u64,
    pub at_source: u64,
    pub from_source: u64,
}

/// What the merge says of one requested fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultSplit {
    pub tid: u32,
    pub page: u64,
    pub entry_ts: Option<u64>,
    pub network_ns: u64,
    /// `None` without both matches (request and page).
    pub split: Option<SubStages>,
}

/// How one destination return-path socket was matched.
#[derive(Debug, Clone)]
pub struct Channel {
    pub dest_fd: i32,
    pub source_fd: i32,
    pub anchor: Anchor,
}

/// Everything the merge found.
#[derive(Debug, Default)]
pub struct MergeOutcome {
    pub clock: Option<Clock>,
    pub channels: Vec<Channel>,
    /// Requested faults with their own request and a placement.
    pub faults: u64,
    pub requests_matched: u64,
    pub pages_matched: u64,
    /// Of those, pages that had left the source before it read the request.
    pub pages_sent_before: u64,
    /// Page lookups stopped at [`MAX_SCAN_WORK`]: later faults may be unmatched.
    pub out_of_work: bool,
    pub to_source: Hist,
    pub at_source: Hist,
    pub from_source: Hist,
    /// Summed sub-stages and network stage of the split faults, ns.
    pub sums: [u64; 3],
    pub network_sum: u64,
    pub per_fault: Vec<FaultSplit>,
    pub warnings: Vec<String>,
}

/// The destination's side of the merge, fed by its one pass.
#[derive(Debug, Default)]
pub struct Merger {
    streams: BTreeMap<i32, DestStream>,
    sockets: Vec<SocketInfo>,
    /// By (thread, exit time) of the send: its fd and the requests in it.
    requests: HashMap<(u32, u64), SendRequests>,
    blocks: Vec<String>,
    faults: Vec<RawFault>,
    left_out: u64,
}

impl Merger {
    fn block(&mut self, name: Option<&String>) -> Option<u16> {
        let name = name?;
        if let Some(i) = self.blocks.iter().position(|b| b == name) {
            return u16::try_from(i).ok();
        }
        if self.blocks.len() >= MAX_BLOCKS {
            return None;
        }
        self.blocks.push(name.clone());
        u16::try_from(self.blocks.len() - 1).ok()
    }

    /// A destination record, with the return-path messages the pass read from it.
    pub fn record(&mut self, rec: &Record, messages: &[RpMessage]) {
        match rec {
            Record::Socket(s) if self.sockets.len() < super::source::MAX_SOCKETS => {
                self.sockets.push(s.clone());
            }
            Record::SockIo(s) if s.dir == Direction::Send && s.ret > 0 => self.send(s, messages),
            _ => {}
        }
    }

    fn send(&mut self, s: &SockIo, messages: &[RpMessage]) {
        let stream = self.streams.entry(s.fd).or_default();
        if !stream.push(s.tid, s.enter_ts, s.exit_ts, s.ret.unsigned_abs(), &s.head) {
            self.left_out += 1;
            return;
        }
        let Some(sent) = stream.sends.last() else {
            return;
        };
        let ends = sent.message_ends();
        let mut reqs = Vec::new();
        for (m, end) in messages.iter().zip(ends) {
            if let RpMessage::ReqPages { block, start, len } = m {
                let block = self.block(block.as_ref());
                reqs.push(SentRequest {
                    block,
                    start: *start,
                    len: u64::from(*len),
                    end,
                });
            }
        }
        if !reqs.is_empty() {
            self.requests
                .insert((s.tid, s.exit_ts), (s.fd, reqs.into_boxed_slice()));
        }
    }

    /// A resolved fault: a requested one with its own request is kept.
    pub fn fault(&mut self, f: &Fault, engine: &Engine) {
        if f.resolution != Resolution::Requested {
            return;
        }
        let (Some(request_ts), Some(tid), Some(place_ts)) =
            (f.request_ts, f.requester_tid, f.place_ts)
        else {
            return;
        };
        let Some((fd, reqs)) = self.requests.get(&(tid, request_ts)) else {
            return;
        };
        let base = |r: &SentRequest| {
            let name = self.blocks.get(usize::from(r.block?))?;
            engine.block_bases().get(name).copied()
        };
        let covers = |r: &&SentRequest| {
            base(r).is_some_and(|b| {
                let s = b.saturating_add(r.start);
                s <= f.page && f.page < s.saturating_add(r.len)
            })
        };
        let Some(req) = reqs.iter().find(covers).or(reqs.first()).copied() else {
            return;
        };
        let offset = base(&req).map_or(req.start, |b| f.page.saturating_sub(b));
        if self.faults.len() >= MAX_FAULTS {
            self.left_out += 1;
            return;
        }
        self.faults.push(RawFault {
            tid: f.tid,
            page: f.page,
            entry_ts: f.entry_ts,
            request_ts,
            place_ts,
            fd: *fd,
            sender: tid,
            req,
            offset,
        });
    }
}

/// The source's receives on one connection, anchored.
struct Anchored<'a> {
    channel: Channel,
    receives: &'a [Receive],
    positions: Vec<u64>,
}

fn diff(a: u64, b: u64) -> i64 {
    i64::try_from(i128::from(a) - i128::from(b)).unwrap_or(if a > b { i64::MAX } else { i64::MIN })
}

impl Merger {
    /// Orders each stream and turns each kept request's end into a stream position.
    fn place_requests(&mut self) {
        let mut pos: HashMap<(i32, u32, u64), u64> = HashMap::new();
        for (&fd, stream) in &mut self.streams {
            stream.order();
            for s in &stream.sends {
                pos.insert((fd, s.tid, s.exit_ts), s.pos);
            }
        }
        self.faults
            .retain_mut(|f| match pos.get(&(f.fd, f.sender, f.request_ts)) {
                Some(p) => {
                    f.req.end = f.req.end.saturating_add(*p);
                    true
                }
                None => false,
            });
    }

    /// The source fds whose receives may carry `dest_fd`'s sends: its peer
    /// socket when discovery found one on both ends, else every fd.
    fn candidate_fds(&self, dest_fd: i32, source: &SourceIndex) -> Vec<i32> {
        let peer = self
            .sockets
            .iter()
            .filter(|s| s.fd == dest_fd)
            .find_map(|s| source.peer_of(s))
            .map(|p| p.fd);
        match peer {
            Some(fd) if source.receives.contains_key(&fd) => vec![fd],
            _ => source.receives.keys().copied().collect(),
        }
    }

    fn anchor_all<'a>(&self, source: &'a SourceIndex) -> Vec<Anchored<'a>> {
        let mut out = Vec::new();
        for (&dest_fd, stream) in &self.streams {
            let best = self
                .candidate_fds(dest_fd, source)
                .into_iter()
                .filter_map(|fd| {
                    let receives = source.receives.get(&fd)?;
                    Some((fd, receives, stream::anchor(stream, receives)?))
                })
                .max_by_key(|(_, _, a)| a.votes);
            if let Some((source_fd, receives, anchor)) = best {
                out.push(Anchored {
                    channel: Channel {
                        dest_fd,
                        source_fd,
                        anchor,
                    },
                    receives,
                    positions: stream::positions(receives),
                });
            }
        }
        out
    }
}

/// Which of `addrs` the run covers.
fn covered(r: &Run, addrs: &[u64]) -> Option<usize> {
    let end = r.addr.saturating_add(r.bytes);
    addrs.iter().position(|&a| r.addr <= a && a < end)
}

/// What is left of [`MAX_SCAN_WORK`]; one run visited costs one.
struct Budget(std::cell::Cell<u64>);

impl Budget {
    fn take(&self) -> bool {
        let left = self.0.get();
        self.0.set(left.saturating_sub(1));
        left > 0
    }
}

/// The first run at or after `after` (source time) covering one of
/// `addrs`, with the index of the address it covers.
fn first_send(runs: &[Run], after: u64, addrs: &[u64], budget: &Budget) -> Option<(Run, usize)> {
    let from = runs.partition_point(|r| r.enter_ts < after);
    runs[from..]
        .iter()
        .take(MAX_SCAN_RUNS)
        .take_while(|r| r.enter_ts <= after.saturating_add(SCAN_NS) && budget.take())
        .find_map(|r| covered(r, addrs).map(|i| (*r, i)))
}

/// The last run before `before` (source time) covering one of `addrs`:
/// the page had left the source before it read the request.
fn last_send_before(
    runs: &[Run],
    before: u64,
    addrs: &[u64],
    budget: &Budget,
) -> Option<(Run, usize)> {
    let to = runs.partition_point(|r| r.enter_ts < before);
    runs[..to]
        .iter()
        .rev()
        .take(MAX_SCAN_RUNS)
        .take_while(|r| r.enter_ts.saturating_add(SCAN_NS) >= before && budget.take())
        .find_map(|r| covered(r, addrs).map(|i| (*r, i)))
}

/// The matches of one fault: the receive of its request, the send of its page.
#[derive(Clone, Copy)]
struct Matched<'a> {
    receive: Option<&'a Receive>,
    send: Option<Run>,
    /// The page's send came before the source read the request (it was
    /// already on its way): no clock sample, and `at_source` is 0.
    sent_before: bool,
}

impl Merger {
    /// Joins the kept destination facts with `source`; `given_offset_ns`
    /// replaces the estimated clock (`--source-offset-us`), stated at
    /// `origin` (the destination's time origin).
    pub fn finish(
        mut self,
        source: &SourceIndex,
        given_offset_ns: Option<f64>,
        origin: u64,
    ) -> MergeOutcome {
        let mut out = MergeOutcome::default();
        self.place_requests();
        let anchored = self.anchor_all(source);
        out.channels = anchored.iter().map(|a| a.channel.clone()).collect();
        let receive_of = |fd: i32, end: u64| {
            let a = anchored.iter().find(|a| a.channel.dest_fd == fd)?;
            stream::receive_of(&a.channel.anchor, a.receives, &a.positions, end)
        };
        let settled = |fd: i32, end: u64| {
            anchored
                .iter()
                .find(|a| a.channel.dest_fd == fd)
                .is_some_and(|a| stream::settled(&a.channel.anchor, end))
        };
        let (matched, out_of_work) = self.match_pages(source, &receive_of);
        out.out_of_work = out_of_work;
        let upper = self.upper_samples(&receive_of, &settled);
        let lower: Vec<Sample> = self
            .faults
            .iter()
            .zip(&matched)
            .filter(|(f, _)| settled(f.fd, f.req.end))
            .filter_map(|(f, m)| {
                let send = m.send.filter(|_| !m.sent_before)?;
                Some(Sample {
                    at: f.place_ts,
                    value: diff(send.enter_ts, f.place_ts),
                })
            })
            .collect();
        out.faults = self.faults.len() as u64;
        out.requests_matched = matched.iter().filter(|m| m.receive.is_some()).count() as u64;
        out.pages_matched = matched.iter().filter(|m| m.send.is_some()).count() as u64;
        out.pages_sent_before = matched.iter().filter(|m| m.sent_before).count() as u64;
        out.clock = match given_offset_ns {
            Some(ns) => Some(Clock::given(
                ns,
                origin,
                upper.len() as u64,
                lower.len() as u64,
            )),
            None => clock::estimate(&upper, &lower),
        };
        self.split(&matched, &mut out);
        out.warnings = self.warnings(source, &out);
        out
    }

    /// Every destination send whose last byte a source receive delivered,
    /// where the alignment is settled: `receive exit − send entry = d₁ + θ`.
    fn upper_samples<'a>(
        &self,
        receive_of: &dyn Fn(i32, u64) -> Option<&'a Receive>,
        settled: &dyn Fn(i32, u64) -> bool,
    ) -> Vec<Sample> {
        let mut upper = Vec::new();
        for (&fd, stream) in &self.streams {
            for s in stream.sends.iter().filter(|s| settled(fd, s.pos + s.len)) {
                if let Some(r) = receive_of(fd, s.pos + s.len) {
                    upper.push(Sample {
                        at: s.enter_ts,
                        value: diff(r.exit_ts, s.enter_ts),
                    });
                }
            }
        }
        upper
    }

    /// Each fault's receive and page send. A block's source base is the
    /// candidate (by header votes) whose send of the page came first after
    /// the receive, by majority over the block's faults.
    fn match_pages<'a>(
        &self,
        source: &SourceIndex,
        receive_of: &dyn Fn(i32, u64) -> Option<&'a Receive>,
    ) -> (Vec<Matched<'a>>, bool) {
        let bases: Vec<u64> = source
            .bases()
            .into_iter()
            .take(MAX_TRIED_BASES)
            .map(|(b, _)| b)
            .collect();
        let receives: Vec<Option<&Receive>> = self
            .faults
            .iter()
            .map(|f| receive_of(f.fd, f.req.end))
            .collect();
        let budget = Budget(std::cell::Cell::new(MAX_SCAN_WORK));
        let find = |f: &RawFault, r: &Receive, bases: &[u64]| {
            let addrs: Vec<u64> = bases.iter().map(|b| b.saturating_add(f.offset)).collect();
            first_send(&source.runs, r.exit_ts, &addrs, &budget).map(|(run, i)| (run, bases[i]))
        };
        let mut votes: HashMap<(Option<u16>, u64), u64> = HashMap::new();
        for (f, r) in self.faults.iter().zip(&receives) {
            if let Some((_, base)) = r.and_then(|r| find(f, r, &bases)) {
                *votes.entry((f.req.block, base)).or_default() += 1;
            }
        }
        let mut block_base: HashMap<Option<u16>, (u64, u64)> = HashMap::new();
        for ((block, base), n) in votes {
            let e = block_base.entry(block).or_insert((base, n));
            if n > e.1 || (n == e.1 && base < e.0) {
                *e = (base, n);
            }
        }
        let matched = self
            .faults
            .iter()
            .zip(receives)
            .map(|(f, receive)| {
                let only = block_base.get(&f.req.block).map(|&(b, _)| [b]);
                let tried: &[u64] = only.as_ref().map_or(&bases, |b| b.as_slice());
                let after = receive.and_then(|r| find(f, r, tried)).map(|(run, _)| run);
                let before = || {
                    let r = receive?;
                    let addrs: Vec<u64> =
                        tried.iter().map(|b| b.saturating_add(f.offset)).collect();
                    last_send_before(&source.runs, r.exit_ts, &addrs, &budget).map(|(run, _)| run)
                };
                let send = after.or_else(before);
                Matched {
                    receive,
                    send,
                    sent_before: after.is_none() && send.is_some(),
                }
            })
            .collect();
        (matched, budget.0.get() == 0)
    }
}

/// Splits `network` at the two source moments (destination clock), clamped
/// in order so the parts add up to it.
fn clamp_split(request_ts: u64, network: u64, received: f64, sent: f64) -> SubStages {
    let part = |ns: f64, room: u64| {
        if ns.is_nan() || ns <= 0.0 {
            0
        } else {
            (ns.round() as u64).min(room)
        }
    };
    let to_source = part(received - request_ts as f64, network);
    let at_source = part(sent - received, network - to_source);
    SubStages {
        to_source,
        at_source,
        from_source: network - to_source - at_source,
    }
}

impl Merger {
    fn split(&self, matched: &[Matched<'_>], out: &mut MergeOutcome) {
        out.per_fault.reserve_exact(self.faults.len());
        for (f, m) in self.faults.iter().zip(matched) {
            let network = f.place_ts.saturating_sub(f.request_ts);
            let split = match (out.clock, m.receive, m.send) {
                (Some(c), Some(r), Some(s)) => Some(clamp_split(
                    f.request_ts,
                    network,
                    c.to_dest(r.exit_ts),
                    c.to_dest(s.enter_ts),
                )),
                _ => None,
            };
            if let Some(s) = split {
                out.to_source.record(s.to_source);
                out.at_source.record(s.at_source);
                out.from_source.record(s.from_source);
                for (sum, v) in out
                    .sums
                    .iter_mut()
                    .zip([s.to_source, s.at_source, s.from_source])
                {
                    *sum = sum.saturating_add(v);
                }
                out.network_sum = out.network_sum.saturating_add(network);
            }
            out.per_fault.push(FaultSplit {
                tid: f.tid,
                page: f.page,
                entry_ts: f.entry_ts,
                network_ns: network,
                split,
            });
        }
    }

    fn warnings(&self, source: &SourceIndex, out: &MergeOutcome) -> Vec<String> {
        let mut w = Vec::new();
        if let Some(d) = &source.damage {
            w.push(format!(
                "the source trace is damaged; merged the {} good records before: {d}",
                source.records
            ));
        }
        if source.stopped_at_limit {
            w.push(format!(
                "the source trace was read up to {} records (--max-events): later requests and pages are unmatched",
                source.records
            ));
        }
        w.extend(source.rejected.iter().map(|r| format!("source trace: {r}")));
        for (what, n) in &source.left_out {
            w.push(format!(
                "source trace: {n} {what} over the analyzer's bound were left out"
            ));
        }
        if out.out_of_work {
            w.push(format!(
                "page matching stopped after visiting {MAX_SCAN_WORK} source page runs: the source trace sends far more than the requests need; later requested faults may have null sub-stages"
            ));
        }
        if self.left_out > 0 {
            w.push(format!(
                "{} destination sends or requested faults over the merge's bound were left out of the sub-stages",
                self.left_out
            ));
        }
        for c in out.channels.iter().filter(|c| c.anchor.reanchors > 0) {
            w.push(format!(
                "the return path of destination fd {} and source fd {} moved apart {} times ({} receives agreed with the usual alignment, {} did not): events were lost on one side; each request maps by the alignment of the receives just before it, so a request between a loss and the next matching receive may map to the wrong one",
                c.dest_fd, c.source_fd, c.anchor.reanchors, c.anchor.votes, c.anchor.against
            ));
        }
        match out.clock {
            None if out.faults > 0 => w.push(format!(
                "the clocks could not be aligned: of {} requested faults, {} requests were matched to a source receive and {} pages to a source send after it (both kinds are needed); the sub-stages are null; --source-offset-us sets the offset by hand",
                out.faults, out.requests_matched, out.pages_matched - out.pages_sent_before
            )),
            Some(c) => {
                if let Some(gap) = c.contradiction_ns {
                    w.push(format!(
                        "the clock samples contradict each other by {:.1} µs (some one-way delay would be negative under any offset and drift): a mismatched message or a clock step; the offset is the middle of the contradiction and its bound the half-gap; sub-stages are clamped",
                        gap / 1e3
                    ));
                }
            }
            None => {}
        }
        w
    }
}
