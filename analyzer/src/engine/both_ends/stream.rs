//! The return path as one byte stream seen from both ends: the destination's
//! sends (one message each, usually) and the source's receives cut the same
//! bytes differently. A receive whose first bytes equal the bytes of a
//! destination message at some stream position votes for the shift between
//! the two cumulative counts (the recordings start at different moments);
//! the shift with the most votes anchors the streams, and then every
//! message's last byte maps to the receive that delivered it (TCP is
//! ordered). See ARCHITECTURE.md, "Clock alignment and the three sub-stages".

use std::collections::HashMap;

use super::source::Receive;

/// Most destination sends kept.
pub const MAX_SENDS: usize = 1_000_000;
/// Bytes a receive's head must match to vote: the stream bytes the
/// candidate lookup keys on (a whole `REQ_PAGES`, header, offset and
/// length, so two different requests cannot both match).
pub const MIN_MATCH: usize = 16;
/// A receive whose first bytes match more positions than this votes for none.
const MAX_CANDIDATES: usize = 16;

/// One destination send on a return-path socket.
#[derive(Debug, Clone)]
pub struct DestSend {
    pub tid: u32,
    pub enter_ts: u64,
    pub exit_ts: u64,
    /// Stream position of its first byte (bytes sent on the fd before it).
    pub pos: u64,
    pub len: u64,
    pub head: Box<[u8]>,
}

impl DestSend {
    /// The payload byte at `i`, when it was captured.
    fn byte(&self, i: u64) -> Option<u8> {
        usize::try_from(i)
            .ok()
            .and_then(|i| self.head.get(i).copied())
    }

    /// Offset just past each return-path message its head holds.
    pub fn message_ends(&self) -> Vec<u64> {
        let mut ends = Vec::new();
        let mut at = 0usize;
        while let Some(b) = self.head.get(at + 2..at + 4) {
            let next = at + 4 + usize::from(u16::from_be_bytes([b[0], b[1]]));
            if next as u64 > self.len {
                break;
            }
            ends.push(next as u64);
            at = next;
        }
        ends
    }
}

/// The destination's sends on one socket, in stream order.
#[derive(Debug, Default)]
pub struct DestStream {
    pub sends: Vec<DestSend>,
}

impl DestStream {
    /// A send of `len > 0` bytes; `false` over [`MAX_SENDS`].
    pub fn push(&mut self, tid: u32, enter_ts: u64, exit_ts: u64, len: u64, head: &[u8]) -> bool {
        if self.sends.len() >= MAX_SENDS {
            return false;
        }
        self.sends.push(DestSend {
            tid,
            enter_ts,
            exit_ts,
            pos: 0,
            len,
            head: head.into(),
        });
        true
    }

    /// Puts the sends in stream order (by entry: a trace need not hold one
    /// socket's sends in order) and numbers their bytes.
    pub fn order(&mut self) {
        self.sends.sort_by_key(|s| (s.enter_ts, s.exit_ts));
        let mut at = 0u64;
        for s in &mut self.sends {
            s.pos = at;
            at = at.saturating_add(s.len);
        }
    }

    /// The send holding stream position `p`.
    fn send_at(&self, p: u64) -> Option<&DestSend> {
        let i = self.sends.partition_point(|s| s.pos + s.len <= p);
        self.sends.get(i).filter(|s| s.pos <= p)
    }

    /// The `n` stream bytes from position `p`, when all were captured.
    fn bytes_at(&self, p: u64, n: usize) -> Option<Vec<u8>> {
        (p..p + n as u64)
            .map(|q| {
                let s = self.send_at(q)?;
                s.byte(q - s.pos)
            })
            .collect()
    }

    /// How many bytes of `bytes` equal the stream from position `p` on, as
    /// far as the captured heads show it; `None` at the first difference.
    fn matches_from(&self, mut p: u64, bytes: &[u8]) -> Option<usize> {
        let mut n = 0;
        for &b in bytes {
            let Some(s) = self.send_at(p) else { break };
            match s.byte(p - s.pos) {
                Some(x) if x == b => n += 1,
                Some(_) => return None,
                None => break,
            }
            p += 1;
        }
        Some(n)
    }
}

/// The anchor of the source's receive stream on the destination's send stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// Destination position minus source position of the same byte, by
    /// most votes.
    pub shift: i128,
    /// Receives whose content voted for it.
    pub votes: u64,
    /// Receives whose content voted for another shift.
    pub against: u64,
    /// Where the shift holds: (destination position of a voting receive's
    /// first byte, its shift), in stream order, each agreeing with a
    /// neighbour. A lost event on either side changes the shift from there
    /// on; mapping takes the shift of the last point before a byte.
    pub points: Vec<(u64, i128)>,
    /// How often the shift changes along the stream (events lost on one side).
    pub reanchors: u64,
}

/// The votes that agree with a neighbour: a lone vote for a shift could be
/// a coincidence of content, two in a row are not.
fn confirmed(points: &[(u64, i128)]) -> Vec<(u64, i128)> {
    let agrees = |i: usize, j: Option<usize>| {
        j.and_then(|j| points.get(j))
            .is_some_and(|q| q.1 == points[i].1)
    };
    (0..points.len())
        .filter(|&i| agrees(i, i.checked_sub(1)) || agrees(i, Some(i + 1)))
        .map(|i| points[i])
        .collect()
}

/// The receives' positions in their own stream (bytes received before each).
pub fn positions(receives: &[Receive]) -> Vec<u64> {
    let mut at = 0u64;
    receives
        .iter()
        .map(|r| {
            let p = at;
            at = at.saturating_add(r.len);
            p
        })
        .collect()
}

/// Votes over `receives` for the shift that aligns them with `dest`.
pub fn anchor(dest: &DestStream, receives: &[Receive]) -> Option<Anchor> {
    // (first 16 stream bytes, position) of every send, sorted: a receive's
    // candidates are one range of it.
    let key = |b: &[u8]| b.get(..MIN_MATCH)?.try_into().ok().map(u128::from_be_bytes);
    let mut by_key: Vec<(u128, u64)> = dest
        .sends
        .iter()
        .filter_map(|s| Some((key(&dest.bytes_at(s.pos, MIN_MATCH)?)?, s.pos)))
        .collect();
    by_key.sort_unstable();
    let mut votes: HashMap<i128, u64> = HashMap::new();
    let mut points = Vec::new();
    let mut voters = 0u64;
    for (r, q) in receives.iter().zip(positions(receives)) {
        let Some(k) = key(&r.head) else {
            continue;
        };
        let from = by_key.partition_point(|e| e.0 < k);
        let cands: Vec<u64> = by_key[from..]
            .iter()
            .take(MAX_CANDIDATES + 1)
            .take_while(|e| e.0 == k)
            .map(|e| e.1)
            .collect();
        if cands.len() > MAX_CANDIDATES {
            continue;
        }
        let shifts: Vec<i128> = cands
            .iter()
            .filter(|&&p| {
                dest.matches_from(p, &r.head)
                    .is_some_and(|n| n >= MIN_MATCH)
            })
            .map(|&p| i128::from(p) - i128::from(q))
            .collect();
        if let [shift] = shifts.as_slice() {
            voters += 1;
            *votes.entry(*shift).or_default() += 1;
            if let Ok(at) = u64::try_from(i128::from(q) + shift) {
                points.push((at, *shift));
            }
        }
    }
    let (shift, n) = votes
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))?;
    points.sort_unstable();
    let points = confirmed(&points);
    let reanchors = points.windows(2).filter(|w| w[0].1 != w[1].1).count() as u64;
    Some(Anchor {
        shift,
        votes: n,
        against: voters - n,
        points,
        reanchors,
    })
}

/// Whether the alignment at destination position `end` is settled: the
/// confirmed votes around it agree. A byte between a lost event and the next
/// matching receive is not; its mapping is a guess, fit for a sub-stage,
/// not for a clock sample.
pub fn settled(anchor: &Anchor, end: u64) -> bool {
    let i = anchor.points.partition_point(|p| p.0 < end);
    let before = i.checked_sub(1).and_then(|j| anchor.points.get(j));
    match (before, anchor.points.get(i)) {
        (Some(a), Some(b)) => a.1 == b.1,
        _ => true,
    }
}

/// The receive that delivered the byte just before destination position
/// `end` (a message's last byte), given the receives' own positions.
pub fn receive_of<'a>(
    anchor: &Anchor,
    receives: &'a [Receive],
    positions: &[u64],
    end: u64,
) -> Option<&'a Receive> {
    let i = anchor.points.partition_point(|p| p.0 < end);
    let shift = i
        .checked_sub(1)
        .and_then(|i| anchor.points.get(i))
        .or(anchor.points.first())
        .map_or(anchor.shift, |p| p.1);
    let last = i128::from(end) - 1 - shift;
    let last = u64::try_from(last).ok()?;
    let i = positions.partition_point(|&p| p <= last).checked_sub(1)?;
    let r = receives.get(i)?;
    (last < positions[i].saturating_add(r.len)).then_some(r)
}
