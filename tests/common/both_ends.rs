//! Checks of a pair of traces recorded on both ends of one migration, shared
//! by the emulator (`record_emulator.rs`) and real QEMU (`qemu_both_ends.rs`)
//! tests: sides and drops, the return path byte for byte on both ends, the
//! page runs' RAMBlock base, and each request's legs (both recorders read
//! one host's `CLOCK_MONOTONIC` there, so the legs are measured directly).
#![allow(dead_code)] // each test file uses its own subset

use std::collections::HashMap;
use std::path::Path;

use uffdscope_analyzer::inputs::rp::{self, RpMessage};
use uffdscope_trace::record::{Direction, PagesSent, Record, Role, Side, SockIo};
use uffdscope_trace::TraceReader;

/// QEMU's page header flags (migration/ram.c): the page continues the
/// current RAMBlock, and it is a whole page.
pub const CONTINUE_PAGE: u64 = 0x20 | 0x08;
/// Target page size of x86 guests (and the emulator).
pub const PAGE: u64 = 4096;

/// A trace's side and records; panics on damage.
pub fn read(path: &Path) -> (Option<Side>, Vec<Record>) {
    let mut reader = TraceReader::open(path).expect("open the trace");
    let side = reader.meta().side;
    let mut all = Vec::new();
    let damage = reader.for_each(|r| all.push(r));
    assert!(damage.is_none(), "{}: damaged: {damage:?}", path.display());
    (side, all)
}

pub fn drops(records: &[Record]) -> u64 {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Drops(d) => Some(d.total),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

pub fn tids_of(records: &[Record], role: Role) -> Vec<u32> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Thread(t) if t.role == role => Some(t.tid),
            _ => None,
        })
        .collect()
}

pub fn sock_ios(records: &[Record], dir: Direction) -> impl Iterator<Item = &SockIo> {
    records.iter().filter_map(move |r| match r {
        Record::SockIo(s) if s.dir == dir && s.ret > 0 => Some(s),
        _ => None,
    })
}

/// One end's calls on the return path, each with its stream position.
pub type Positioned<'a> = Vec<(u64, &'a SockIo)>;

/// One end's view of the return path: each call's stream position, with the
/// call itself.
pub fn positions<'a>(calls: impl Iterator<Item = &'a SockIo>) -> Positioned<'a> {
    let mut at = 0u64;
    calls
        .map(|s| {
            let here = at;
            at += s.ret.unsigned_abs();
            (here, s)
        })
        .collect()
}

/// The destination's return path: its sends on the one fd that carried
/// page requests.
pub fn destination_return_path(records: &[Record]) -> Vec<&SockIo> {
    let fd = sock_ios(records, Direction::Send)
        .find(|s| {
            rp::parse(&s.head)
                .iter()
                .any(|m| matches!(m, RpMessage::ReqPages { .. }))
        })
        .map(|s| s.fd)
        .expect("the destination sent page requests");
    sock_ios(records, Direction::Send)
        .filter(|s| s.fd == fd)
        .collect()
}

/// The RAMBlock base most `CONTINUE|PAGE` headers agree on, its votes, and
/// all votes.
pub fn base_vote(sends: &[&PagesSent]) -> (u64, usize, usize) {
    let mut votes: HashMap<u64, usize> = HashMap::new();
    for run in sends.iter().flat_map(|s| &s.runs) {
        if let Some(h) = run.header.filter(|h| h & 0xfff == CONTINUE_PAGE) {
            *votes.entry(run.addr.wrapping_sub(h & !0xfff)).or_default() += 1;
        }
    }
    let total = votes.values().sum();
    let (base, n) = votes
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .expect("no run has a CONTINUE|PAGE header");
    (base, n, total)
}

/// Percentiles (p50, p99, max) of `v` in µs.
pub fn spread(mut v: Vec<u64>) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
    format!(
        "p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs ({} samples)",
        at(0.5),
        at(0.99),
        at(1.0),
        v.len()
    )
}

/// A page request as the destination sent it: the stream position of its
/// last byte, the send's entry, the RAMBlock it names (or continues), the
/// offset.
pub struct Request {
    last: u64,
    sent_ts: u64,
    block: Option<String>,
    start: u64,
}

/// Both ends' side, drops and named threads.
pub fn check_sides(dst: &[Record], dst_side: Option<Side>, src: &[Record], src_side: Option<Side>) {
    assert_eq!(dst_side, Some(Side::Destination));
    assert_eq!(src_side, Some(Side::Source));
    assert_eq!(drops(src), 0, "source trace has ring-buffer drops");
    assert_eq!(drops(dst), 0, "destination trace has ring-buffer drops");
    assert!(
        !tids_of(src, Role::MigSource).is_empty(),
        "no migration thread named on the source"
    );
}

/// The return path byte for byte: the source's receives on its return-path
/// thread hold the bytes the destination sent at the same stream positions.
/// Both recorders attached before the stream started, except that a receive
/// already waiting when the source's recorder attached is not seen (its
/// entry was missed): the bytes the source lacks are the stream's first, and
/// the byte comparison proves that anchor. Returns (sent, received), each
/// call with its stream position.
pub fn check_return_path<'a>(
    dst: &'a [Record],
    src: &'a [Record],
) -> (Positioned<'a>, Positioned<'a>) {
    let rp_tids = tids_of(src, Role::ReturnPath);
    assert!(
        !rp_tids.is_empty(),
        "no return-path thread named on the source"
    );
    let sent = positions(destination_return_path(dst).into_iter());
    let mut received =
        positions(sock_ios(src, Direction::Recv).filter(|s| rp_tids.contains(&s.tid)));
    let total = |v: &[(u64, &SockIo)]| v.iter().map(|(_, s)| s.ret.unsigned_abs()).sum::<u64>();
    let missed = total(&sent)
        .checked_sub(total(&received))
        .expect("the source received more than the destination sent on the return path");
    // At most the one receive in progress at attach: a return-path message
    // or a few (QEMU's and the emulator's are 8 to 30 bytes).
    assert!(
        missed <= 64,
        "the source missed {missed} bytes of the return path"
    );
    for (at, _) in &mut received {
        *at += missed;
    }
    let mut known = HashMap::new();
    for (at, s) in &sent {
        for (i, b) in (0u64..).zip(&s.head) {
            known.insert(at + i, *b);
        }
    }
    let (mut compared, mut whole) = (0usize, 0usize);
    for (at, s) in &received {
        for (i, b) in (0u64..).zip(&s.head) {
            if let Some(want) = known.get(&(at + i)) {
                assert_eq!(b, want, "source byte {} of the return path differs", at + i);
                compared += 1;
            }
        }
        whole += usize::from(s.head.len() as u64 == s.ret.unsigned_abs());
    }
    assert!(compared > 0, "no return-path byte seen on both ends");
    eprintln!(
        "return path: {} bytes ({missed} before the source's recorder), {} sends, {} receives ({whole} captured whole), {compared} bytes compared on both ends",
        total(&sent),
        sent.len(),
        received.len()
    );
    (sent, received)
}

/// The page requests of the destination's return-path sends.
pub fn requests(sent: &[(u64, &SockIo)]) -> Vec<Request> {
    let mut out = Vec::new();
    let mut block = None;
    for (at, s) in sent {
        let mut off = *at;
        for m in rp::parse(&s.head) {
            let len = match &m {
                RpMessage::ReqPages { block: Some(b), .. } => 4 + 13 + b.len() as u64,
                RpMessage::ReqPages { .. } => 16,
                _ => 8,
            };
            if let RpMessage::ReqPages {
                block: b, start, ..
            } = m
            {
                if b.is_some() {
                    block = b;
                }
                out.push(Request {
                    last: off + len - 1,
                    sent_ts: s.enter_ts,
                    block: block.clone(),
                    start,
                });
            }
            off += len;
        }
    }
    assert!(!out.is_empty(), "no page requests on the return path");
    out
}

/// The source's sends with their page runs; every `CONTINUE|PAGE` header
/// names the same base (the main RAMBlock's), and none was truncated.
pub fn check_sends(src: &[Record]) -> (Vec<&PagesSent>, u64) {
    let sends: Vec<&PagesSent> = src
        .iter()
        .filter_map(|r| match r {
            Record::PagesSent(p) => Some(p),
            _ => None,
        })
        .collect();
    let (base, agree, votes) = base_vote(&sends);
    assert!(
        agree * 100 >= votes * 99,
        "only {agree} of {votes} CONTINUE|PAGE headers agree on base {base:#x}"
    );
    assert!(sends.iter().all(|s| !s.truncated), "a send was truncated");
    eprintln!(
        "pages: {} PagesSent, {} runs; base {base:#x} from {agree} of {votes} CONTINUE|PAGE headers",
        sends.len(),
        sends.iter().map(|s| s.runs.len()).sum::<usize>()
    );
    (sends, base)
}

/// Each request's legs, ns: destination send entry to source receive exit
/// (`to_source`), that receive's exit to the entry of the first send of the
/// page after it (`at_source`), and for a page that was not sent again, how
/// long before the receive its last send entered (`sent_before`).
#[derive(Debug, Default)]
pub struct Legs {
    pub to_source: Vec<u64>,
    pub at_source: Vec<u64>,
    /// The thread that sent each `at_source` page.
    pub senders: Vec<u32>,
    pub sent_before: Vec<u64>,
}

/// Each request of RAMBlock `block`: the receive that delivered it, then
/// the first send whose runs cover the page, or the last one before it.
pub fn check_requested_pages(
    reqs: &[Request],
    received: &[(u64, &SockIo)],
    sends: &[&PagesSent],
    (block, base): (&str, u64),
) -> Legs {
    let (mut to_source, mut at_source, mut sent_before) = (Vec::new(), Vec::new(), Vec::new());
    let mut senders = Vec::new();
    let main: Vec<&Request> = reqs
        .iter()
        .filter(|r| r.block.as_deref() == Some("pc.ram"))
        .collect();
    for r in &main {
        let recv = received
            .iter()
            .find(|(at, s)| r.last < at + s.ret.unsigned_abs())
            .map(|(_, s)| *s)
            .expect("every request byte was received");
        assert!(
            recv.exit_ts >= r.sent_ts,
            "received before it was sent (one clock)"
        );
        to_source.push(recv.exit_ts - r.sent_ts);
        let addr = base + (r.start & !(PAGE - 1));
        let covers = |p: &&&PagesSent| {
            p.runs.iter().any(|run| {
                addr >= run.addr && addr < run.addr + u64::from(run.page_len) * u64::from(run.pages)
            })
        };
        if let Some(p) = sends
            .iter()
            .find(|p| p.enter_ts >= recv.exit_ts && covers(p))
        {
            at_source.push(p.enter_ts - recv.exit_ts);
            senders.push(p.tid);
        } else if let Some(p) = sends
            .iter()
            .rev()
            .find(|p| p.enter_ts < recv.exit_ts && covers(p))
        {
            sent_before.push(recv.exit_ts - p.enter_ts);
        }
    }
    eprintln!("requests: {} ({} of {block})", reqs.len(), main.len());
    eprintln!(
        "  to_source (dest send entry -> source receive exit): {}",
        spread(to_source.clone())
    );
    eprintln!(
        "  at_source (source receive exit -> the page's send entry): {}",
        spread(at_source.clone())
    );
    eprintln!(
        "  already sent when the request arrived (by): {}",
        spread(sent_before.clone())
    );
    // A requested page the source had already sent (in flight, or queued in
    // the socket buffers) is not sent again: QEMU's dirty bitmap says it
    // went. A zero page goes as a header alone, with no page iovec.
    let covered = at_source.len() + sent_before.len();
    assert!(
        covered * 100 >= main.len() * 95,
        "only {covered} of {} requested pages are in a PagesSent run",
        main.len()
    );
    Legs {
        to_source,
        at_source,
        senders,
        sent_before,
    }
}

/// Every check of a pair of traces recorded on both ends of one migration
/// whose main RAMBlock is `block`; the requests' legs.
pub fn check_pair(destination: &Path, source: &Path, block: &str) -> Legs {
    let (dst_side, dst) = read(destination);
    let (src_side, src) = read(source);
    check_sides(&dst, dst_side, &src, src_side);
    let (sent, received) = check_return_path(&dst, &src);
    let reqs = requests(&sent);
    let (sends, base) = check_sends(&src);
    check_requested_pages(&reqs, &received, &sends, (block, base))
}
