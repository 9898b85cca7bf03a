//! The network stage of requested faults taken apart, from the destination's
//! records alone (ARCHITECTURE.md, "The network stage taken apart"):
//!
//! - `wire`: the smoothed RTT (`tcp:tcp_probe`) of the socket the request went
//!   out on, as it stood when the request was sent;
//! - `behind_stream`: the bytes that arrived on the page's channel between the
//!   request and the placement (`sock:sock_recv_length`), divided by that
//!   channel's throughput while it was delivering (over the [`RATE_WINDOW_NS`]
//!   before the placement, pauses left out) — the time the page spent queued
//!   behind the background stream;
//! - `rest`: what is left of the network stage (the source, and whatever the
//!   destination cannot see); within it,
//! - `paused`: the time the page's channel received nothing at all (gaps of at
//!   least [`PAUSE_MIN_NS`]): the source was not sending — a bandwidth limit
//!   pausing the stream between bursts, or a busy source.
//!
//! The parts are clamped so that they add up to the network stage, in that
//! order of trust: the wire first, then the queue, the rest last. A part the
//! records cannot give is `None`, and then so is `rest`.
//!
//! The page's channel is the socket its placing thread last received from
//! before the placement; the request's socket is the one its sending thread
//! last sent on. Memory is bounded by [`RETAIN_NS`] of socket history.

use std::collections::{HashMap, VecDeque};

use crate::engine::lifecycle::{Fault, Resolution, Stage};
use crate::engine::stats::Hist;
use uffdscope_trace::record::{Direction, Record};

/// How much socket history is kept (as the lifecycle engine keeps its indexes).
pub const RETAIN_NS: u64 = crate::engine::lifecycle::RETAIN_NS;
/// The window over which a channel's throughput is measured.
pub const RATE_WINDOW_NS: u64 = 1_000_000_000;
/// A gap between two receives at least this long is a pause of the stream,
/// not the spacing of a busy one (a busy channel delivers every few µs).
pub const PAUSE_MIN_NS: u64 = 1_000_000;

/// One requested fault's network stage, taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetworkSplit {
    pub wire_ns: Option<u64>,
    pub behind_stream_ns: Option<u64>,
    pub rest_ns: Option<u64>,
    /// Bytes that arrived on the page's channel between request and placement.
    pub behind_stream_bytes: Option<u64>,
    /// Within `rest`: the time the page's channel received nothing.
    pub paused_ns: Option<u64>,
}

/// One receive on a socket, with running totals up to and including it.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    ts: u64,
    bytes: u64,
    /// Summed gaps of at least [`PAUSE_MIN_NS`] before this arrival.
    paused: u64,
}

/// A socket's recent history: cumulative bytes received, and RTT samples.
#[derive(Debug, Default)]
struct SocketHistory {
    received: VecDeque<Arrival>,
    /// (time, srtt µs).
    srtt: VecDeque<(u64, u32)>,
}

impl SocketHistory {
    fn prune(&mut self, before: u64) {
        // Keep one entry at or before the cut, as the base of later queries.
        while self.received.len() > 1 && self.received[1].ts < before {
            self.received.pop_front();
        }
        while self.srtt.len() > 1 && self.srtt[1].0 < before {
            self.srtt.pop_front();
        }
    }

    fn arrive(&mut self, ts: u64, len: u64) {
        let (bytes, paused) = match self.received.back() {
            Some(last) => {
                let gap = ts.saturating_sub(last.ts);
                let pause = if gap >= PAUSE_MIN_NS { gap } else { 0 };
                (
                    last.bytes.saturating_add(len),
                    last.paused.saturating_add(pause),
                )
            }
            None => (len, 0),
        };
        self.received.push_back(Arrival { ts, bytes, paused });
    }

    /// The last arrival at or before `ts`; `None` when the history does not
    /// reach back that far (pruned, or the socket was not seen yet).
    fn at(&self, ts: u64) -> Option<Arrival> {
        if ts < self.received.front()?.ts {
            return None;
        }
        let i = self.received.partition_point(|a| a.ts <= ts);
        Some(self.received[i - 1])
    }

    /// Bytes received in `(from, to]`.
    fn bytes_between(&self, from: u64, to: u64) -> Option<u64> {
        Some(self.at(to)?.bytes - self.at(from)?.bytes)
    }

    /// Time in `[from, to]` during which nothing arrived, counting only
    /// gaps of at least [`PAUSE_MIN_NS`] (clipped to the interval).
    fn paused_between(&self, from: u64, to: u64) -> Option<u64> {
        let before = self.at(from)?;
        let last = self.at(to)?;
        let i = self.received.partition_point(|a| a.ts <= from);
        let pause_at = |gap: u64| if gap >= PAUSE_MIN_NS { gap } else { 0 };
        let (head, inner) = match self.received.get(i).filter(|a| a.ts <= to) {
            // The gap that spans `from` counts from `from` on.
            Some(first) => (
                pause_at(first.ts - before.ts).min(first.ts - from),
                last.paused - first.paused,
            ),
            None => (0, 0),
        };
        let tail_gap = to - last.ts.max(from);
        let tail = if to - last.ts >= PAUSE_MIN_NS {
            tail_gap
        } else {
            0
        };
        Some(head + inner + tail)
    }

    /// The receive rate (bytes/ns) while the channel was delivering, over
    /// the window before `end`.
    fn busy_rate_before(&self, end: u64) -> Option<f64> {
        let first = self.received.front()?.ts;
        let start = end.saturating_sub(RATE_WINDOW_NS).max(first);
        let busy = (end - start).checked_sub(self.paused_between(start, end)?)?;
        let bytes = self.bytes_between(start, end)?;
        (busy > 0).then(|| bytes as f64 / busy as f64)
    }

    /// The last RTT sample at or before `ts`, else the first one after it
    /// up to `until`.
    fn srtt_around(&self, ts: u64, until: u64) -> Option<u32> {
        let i = self.srtt.partition_point(|&(t, _)| t <= ts);
        if i > 0 {
            return Some(self.srtt[i - 1].1);
        }
        self.srtt
            .front()
            .filter(|&&(t, _)| t <= until)
            .map(|&(_, s)| s)
    }
}

/// Which socket each thread used last, per direction (changes only).
#[derive(Debug, Default)]
struct ThreadSockets {
    recv: VecDeque<(u64, u64)>,
    send: VecDeque<(u64, u64)>,
}

fn note_use(uses: &mut VecDeque<(u64, u64)>, ts: u64, sk: u64, before: u64) {
    if uses.back().is_none_or(|&(_, last)| last != sk) {
        uses.push_back((ts, sk));
    }
    while uses.len() > 1 && uses[1].0 < before {
        uses.pop_front();
    }
}

fn socket_at(uses: &VecDeque<(u64, u64)>, ts: u64) -> Option<u64> {
    let i = uses.partition_point(|&(t, _)| t <= ts);
    (i > 0).then(|| uses[i - 1].1)
}

/// Streams socket records and splits each requested fault's network stage.
#[derive(Debug, Default)]
pub struct NetworkSplitter {
    sockets: HashMap<u64, SocketHistory>,
    threads: HashMap<u32, ThreadSockets>,
    newest_ts: u64,
}

impl NetworkSplitter {
    pub fn push(&mut self, rec: &Record) {
        match rec {
            Record::SockLen(l) if l.len > 0 => {
                self.newest_ts = self.newest_ts.max(l.ts);
                let cut = self.newest_ts.saturating_sub(RETAIN_NS);
                let uses = self.threads.entry(l.tid).or_default();
                match l.dir {
                    Direction::Recv => {
                        note_use(&mut uses.recv, l.ts, l.sk, cut);
                        let s = self.sockets.entry(l.sk).or_default();
                        s.arrive(l.ts, l.len as u64);
                        s.prune(cut);
                    }
                    Direction::Send => note_use(&mut uses.send, l.ts, l.sk, cut),
                }
            }
            Record::TcpProbe(p) => {
                self.newest_ts = self.newest_ts.max(p.ts);
                let cut = self.newest_ts.saturating_sub(RETAIN_NS);
                let s = self.sockets.entry(p.sk).or_default();
                s.srtt.push_back((p.ts, p.srtt_us));
                s.prune(cut);
            }
            _ => {}
        }
    }

    /// The split of a fault's network stage; `None` for faults that did not
    /// wait on a request of their own (only those have a round trip to split).
    pub fn split(&self, f: &Fault) -> Option<NetworkSplit> {
        if f.resolution != Resolution::Requested {
            return None;
        }
        let (requested, placed) = (f.request_ts?, f.place_ts?);
        let network = f.stage_ns(Stage::Network)?;
        let channel = self
            .threads
            .get(&f.waker_tid)
            .and_then(|t| socket_at(&t.recv, placed));
        let request_socket = f
            .requester_tid
            .and_then(|tid| self.threads.get(&tid))
            .and_then(|t| socket_at(&t.send, requested))
            .or(channel);
        let wire = request_socket
            .and_then(|sk| self.sockets.get(&sk))
            .and_then(|s| s.srtt_around(requested, placed))
            .map(|us| u64::from(us) * 1000);
        let history = channel.and_then(|sk| self.sockets.get(&sk));
        let bytes = history.and_then(|s| s.bytes_between(requested, placed));
        let queued = match (bytes, history.and_then(|s| s.busy_rate_before(placed))) {
            (Some(0), _) => Some(0),
            (Some(b), Some(rate)) if rate > 0.0 => Some((b as f64 / rate) as u64),
            _ => None,
        };
        let paused = history.and_then(|s| s.paused_between(requested, placed));
        Some(apportion(network, wire, queued, bytes, paused))
    }
}

/// Clamps the measured parts into the network stage: wire first, then the
/// queue, and the rest is what remains.
fn apportion(
    network: u64,
    wire: Option<u64>,
    queued: Option<u64>,
    bytes: Option<u64>,
    paused: Option<u64>,
) -> NetworkSplit {
    let wire_ns = wire.map(|w| w.min(network));
    let behind_stream_ns = queued.map(|q| q.min(network - wire_ns.unwrap_or(0)));
    let rest_ns = match (wire_ns, behind_stream_ns) {
        (Some(w), Some(q)) => Some(network - w - q),
        _ => None,
    };
    NetworkSplit {
        wire_ns,
        behind_stream_ns,
        rest_ns,
        behind_stream_bytes: bytes,
        paused_ns: rest_ns.zip(paused).map(|(rest, p)| p.min(rest)),
    }
}

/// Distributions of the split over every requested fault.
#[derive(Debug, Default)]
pub struct NetworkSplitStats {
    pub wire: Hist,
    pub behind_stream: Hist,
    pub rest: Hist,
    pub paused: Hist,
    /// Bytes, recorded as if they were ns (the histogram is unit-free).
    pub behind_stream_bytes: Hist,
    /// Summed ns over the faults whose every part is known: where the
    /// network time of all requested faults went, slow ones weighing most.
    pub totals: SplitTotals,
}

/// Summed parts of the network stage, ns.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SplitTotals {
    pub network: u64,
    pub wire: u64,
    pub behind_stream: u64,
    pub rest: u64,
    pub paused: u64,
}

impl SplitTotals {
    /// Each part's share of the network time; `None` without any.
    pub fn shares(&self) -> Option<[f64; 4]> {
        (self.network > 0).then(|| {
            [self.wire, self.behind_stream, self.rest, self.paused]
                .map(|part| part as f64 / self.network as f64)
        })
    }
}

impl NetworkSplitStats {
    pub fn add(&mut self, s: &NetworkSplit) {
        let parts = [
            (&mut self.wire, s.wire_ns),
            (&mut self.behind_stream, s.behind_stream_ns),
            (&mut self.rest, s.rest_ns),
            (&mut self.paused, s.paused_ns),
            (&mut self.behind_stream_bytes, s.behind_stream_bytes),
        ];
        for (hist, value) in parts {
            if let Some(v) = value {
                hist.record(v);
            }
        }
        if let (Some(w), Some(q), Some(r), Some(p)) =
            (s.wire_ns, s.behind_stream_ns, s.rest_ns, s.paused_ns)
        {
            let t = &mut self.totals;
            t.network = t.network.saturating_add(w + q + r);
            t.wire = t.wire.saturating_add(w);
            t.behind_stream = t.behind_stream.saturating_add(q);
            t.rest = t.rest.saturating_add(r);
            t.paused = t.paused.saturating_add(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uffdscope_trace::record::{SockLen, TcpProbe};

    const SK_MAIN: u64 = 0xaaa;
    const SK_PREEMPT: u64 = 0xbbb;
    const LISTEN: u32 = 20;
    const PREEMPT: u32 = 21;
    const FAULT: u32 = 10;
    const MS: u64 = 1_000_000;

    fn recv(ts: u64, tid: u32, sk: u64, len: i64) -> Record {
        Record::SockLen(SockLen {
            ts,
            tid,
            sk,
            dir: Direction::Recv,
            len,
        })
    }

    fn send(ts: u64, tid: u32, sk: u64) -> Record {
        Record::SockLen(SockLen {
            ts,
            tid,
            sk,
            dir: Direction::Send,
            len: 16,
        })
    }

    fn probe(ts: u64, sk: u64, srtt_us: u32) -> Record {
        Record::TcpProbe(TcpProbe {
            ts,
            sk,
            sport: 1,
            dport: 2,
            srtt_us,
            cwnd: 10,
            seq: None,
        })
    }

    fn requested(request_ts: u64, place_ts: u64, placer: u32) -> Fault {
        Fault {
            tid: 1,
            page: 0x1000,
            resolution: Resolution::Requested,
            entry_ts: Some(request_ts - 100_000),
            blocked_ts: request_ts - 90_000,
            read_ts: Some(request_ts - 50_000),
            reader_tid: Some(FAULT),
            request_ts: Some(request_ts),
            requester_tid: Some(FAULT),
            already_requested: false,
            place_ts: Some(place_ts),
            place_end_ts: Some(place_ts + 5_000),
            woken_ts: place_ts + 3_000,
            run_ts: Some(place_ts + 10_000),
            resume_ts: None,
            waker_tid: placer,
            place_len: 4096,
        }
    }

    /// A stream of 1 MB/ms (1 GB/s, 100 kB every 100 µs) on the main
    /// channel for 2 s.
    fn stream(s: &mut NetworkSplitter) {
        for step in 0..20_000 {
            s.push(&recv(step * MS / 10, LISTEN, SK_MAIN, 100_000));
        }
    }

    #[test]
    fn a_page_behind_the_stream_waits_for_the_bytes_ahead_of_it() {
        let mut s = NetworkSplitter::default();
        s.push(&send(1000 * MS, FAULT, SK_MAIN));
        s.push(&probe(999 * MS, SK_MAIN, 2_000));
        stream(&mut s);
        // Requested at 1000 ms, placed at 1090 ms: 90 MB arrived in between
        // at 1 MB/ms, so 90 ms behind the stream, 2 ms wire, no rest left.
        let f = requested(1000 * MS, 1090 * MS, LISTEN);
        let split = s.split(&f).unwrap();
        assert_eq!(split.behind_stream_bytes, Some(90_000_000));
        assert_eq!(split.wire_ns, Some(2 * MS));
        assert_eq!(split.behind_stream_ns, Some(88 * MS));
        assert_eq!(split.rest_ns, Some(0));
        assert_eq!(split.paused_ns, Some(0));
        let sum = split.wire_ns.unwrap() + split.behind_stream_ns.unwrap() + split.rest_ns.unwrap();
        assert_eq!(sum, f.stage_ns(Stage::Network).unwrap());
    }

    #[test]
    fn a_page_on_its_own_channel_does_not_queue_behind_the_stream() {
        let mut s = NetworkSplitter::default();
        s.push(&send(1000 * MS, FAULT, SK_MAIN));
        s.push(&probe(999 * MS, SK_MAIN, 300));
        stream(&mut s);
        s.push(&recv(1004 * MS, PREEMPT, SK_PREEMPT, 4096 + 32));
        let f = requested(1000 * MS, 1004 * MS + 10_000, PREEMPT);
        let split = s.split(&f).unwrap();
        // The preempt channel had seen no bytes before the request: its
        // history does not reach back, so the queue is unknown, not 0.
        assert_eq!(split.behind_stream_ns, None);
        assert_eq!(split.rest_ns, None);
        assert_eq!(split.wire_ns, Some(300_000));
        // With history before the request, only the page itself is ahead.
        s.push(&recv(2100 * MS, PREEMPT, SK_PREEMPT, 4096 + 32));
        let f = requested(2101 * MS, 2102 * MS, PREEMPT);
        let split = s.split(&f).unwrap();
        assert_eq!(split.behind_stream_bytes, Some(0));
        assert_eq!(split.behind_stream_ns, Some(0));
        assert_eq!(split.rest_ns, Some(MS - 300_000));
    }

    /// A rate-limited stream: 6 MB bursts at 1 GB/s every 100 ms, silent in
    /// between. A page requested just after a burst waits for the next one.
    #[test]
    fn a_page_that_waits_for_the_next_burst_waits_at_the_source() {
        let mut s = NetworkSplitter::default();
        s.push(&probe(0, SK_MAIN, 100));
        for burst in 0..20u64 {
            for step in 0..60 {
                let ts = burst * 100 * MS + step * MS / 10;
                s.push(&recv(ts, LISTEN, SK_MAIN, 100_000));
            }
        }
        // The burst at 1000 ms ends at 1005.9 ms; requested at 1006 ms and
        // placed first thing in the burst at 1100 ms.
        s.push(&send(1006 * MS, FAULT, SK_MAIN));
        let f = requested(1006 * MS, 1100 * MS + 50_000, LISTEN);
        let split = s.split(&f).unwrap();
        assert_eq!(split.behind_stream_bytes, Some(100_000));
        // 100 kB at the busy rate of about 1 MB/ms (a burst's first 100 kB
        // arrives after its pause): about 0.1 ms behind the stream.
        let behind = split.behind_stream_ns.unwrap();
        assert!((97_000..=100_000).contains(&behind), "{behind}");
        assert_eq!(split.wire_ns, Some(100_000));
        assert_eq!(split.rest_ns, Some(94 * MS + 50_000 - 100_000 - behind));
        // The channel was silent from the request to the burst (94 ms): all
        // of the rest, once the wire and the queue are taken out.
        assert_eq!(split.paused_ns, split.rest_ns);
    }

    #[test]
    fn unknown_parts_stay_unknown() {
        let s = NetworkSplitter::default();
        let split = s.split(&requested(1000 * MS, 1010 * MS, LISTEN)).unwrap();
        assert_eq!(split, NetworkSplit::default());
        let mut background = requested(1000 * MS, 1010 * MS, LISTEN);
        background.resolution = Resolution::Background;
        assert_eq!(s.split(&background), None);
    }

    #[test]
    fn history_is_bounded() {
        let mut s = NetworkSplitter::default();
        for ms in 0..20_000 {
            s.push(&recv(ms * MS, LISTEN, SK_MAIN, 1000));
        }
        let kept = s.sockets[&SK_MAIN].received.len() as u64;
        assert!(kept <= RETAIN_NS / MS + 2, "{kept}");
    }
}
