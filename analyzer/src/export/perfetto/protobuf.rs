//! The Perfetto protobuf encoder of the timeline (`--format perfetto`): a
//! `Trace` of `TracePacket`s carrying TrackEvents on one packet sequence.
//!
//! - Tracks are described before their first event: a process track per
//!   process, a thread track per thread under it, a counter track per
//!   counter; the names of thread and process tracks follow at the end (the
//!   pass learns them last) by describing the same uuids again, with the
//!   JSON's sort indexes as `sibling_order_rank` under explicit ordering.
//! - Fixed event names, categories and argument keys are interned
//!   (`InternedData` packets written before their first use; the first
//!   packet clears the sequence's incremental state); names made per event
//!   are written inline.
//! - Slices are `TYPE_SLICE_BEGIN`/`TYPE_SLICE_END` pairs; a zero-length
//!   slice is an instant. A flow point is an instant carrying the flow id
//!   (`flow_ids`, the last one `terminating_flow_ids`) inside the slice it
//!   binds to.
//! - Timestamps are the trace's monotonic ns. The pass makes events out of
//!   time order (a fault is resolved after its records, a guest interval is
//!   known when its end is printed and may have begun many seconds before),
//!   so events wait in a reorder buffer until the pass is [`HORIZON_NS`] past
//!   them and leave in time order: timestamps are monotonic on the sequence,
//!   and on each track an end at the same moment as a begin comes first,
//!   inner slices end before outer ones. The buffer holds at most
//!   [`MAX_WAITING`] events (about 100 bytes each); past that the oldest
//!   leave early, and an event made after later ones have left (a sleep or
//!   guest interval longer than the horizon, or a dense trace past the
//!   bound) is written with its true time, out of order: Perfetto sorts a
//!   whole file when it loads it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Write};

use super::wire;
use super::{Arg, Args, Encoder, FlowStep, Name, Place};
use crate::drive::Origin;

/// How far behind the pass an event may be made and still be written in
/// time order: a minute (the longest guest interval in the committed real
/// trace began 15 s before its line; a fault is resolved `SETTLE_NS` after
/// its sleep ends).
pub(crate) const HORIZON_NS: u64 = 60_000_000_000;
/// Events held for ordering at most (about 100 bytes each).
const MAX_WAITING: usize = 1 << 20;
/// More counters than this (one per socket pair) share the last track.
const MAX_COUNTERS: u64 = 4_096;

/// The one packet sequence of the file.
const SEQUENCE_ID: u64 = 1;

/// Field numbers of perfetto/trace/trace.proto, trace_packet.proto and
/// track_event/*.proto.
mod field {
    pub const TRACE_PACKET: u32 = 1;
    pub const TIMESTAMP: u32 = 8;
    pub const TRUSTED_PACKET_SEQUENCE_ID: u32 = 10;
    pub const TRACK_EVENT: u32 = 11;
    pub const INTERNED_DATA: u32 = 12;
    pub const SEQUENCE_FLAGS: u32 = 13;
    pub const TRACK_DESCRIPTOR: u32 = 60;
    pub const FIRST_PACKET_ON_SEQUENCE: u32 = 87;
    // TrackEvent
    pub const CATEGORY_IIDS: u32 = 3;
    pub const DEBUG_ANNOTATIONS: u32 = 4;
    pub const TYPE: u32 = 9;
    pub const NAME_IID: u32 = 10;
    pub const TRACK_UUID: u32 = 11;
    pub const NAME: u32 = 23;
    pub const DOUBLE_COUNTER_VALUE: u32 = 44;
    pub const FLOW_IDS: u32 = 47;
    pub const TERMINATING_FLOW_IDS: u32 = 48;
    // TrackDescriptor
    pub const UUID: u32 = 1;
    pub const TRACK_NAME: u32 = 2;
    pub const PROCESS: u32 = 3;
    pub const THREAD: u32 = 4;
    pub const PARENT_UUID: u32 = 5;
    pub const COUNTER: u32 = 8;
    pub const CHILD_ORDERING: u32 = 11;
    pub const SIBLING_ORDER_RANK: u32 = 12;
    // ProcessDescriptor / ThreadDescriptor
    pub const PID: u32 = 1;
    pub const TID: u32 = 2;
    pub const THREAD_NAME: u32 = 5;
    pub const PROCESS_NAME: u32 = 6;
    // InternedData, and its entries (EventCategory, EventName,
    // DebugAnnotationName: iid 1, name 2)
    pub const EVENT_CATEGORIES: u32 = 1;
    pub const EVENT_NAMES: u32 = 2;
    pub const DEBUG_ANNOTATION_NAMES: u32 = 3;
    pub const IID: u32 = 1;
    pub const INTERNED_NAME: u32 = 2;
    // DebugAnnotation
    pub const ARG_NAME_IID: u32 = 1;
    pub const BOOL_VALUE: u32 = 2;
    pub const UINT_VALUE: u32 = 3;
    pub const INT_VALUE: u32 = 4;
    pub const DOUBLE_VALUE: u32 = 5;
    pub const STRING_VALUE: u32 = 6;
    pub const ARG_NAME: u32 = 10;
    pub const DICT_ENTRIES: u32 = 11;
    pub const ARRAY_VALUES: u32 = 12;
}

/// TrackEvent.Type.
const SLICE_BEGIN: u64 = 1;
const SLICE_END: u64 = 2;
const INSTANT: u64 = 3;
const COUNTER: u64 = 4;
/// TrackDescriptor.ChildTracksOrdering: by `sibling_order_rank`.
const CHILD_ORDERING_EXPLICIT: u64 = 3;
/// TracePacket.SequenceFlags.
const SEQ_INCREMENTAL_STATE_CLEARED: u64 = 1;
const SEQ_NEEDS_INCREMENTAL_STATE: u64 = 2;

/// A sort index as a track's `sibling_order_rank` (an int32).
fn order_rank(sort_index: i64) -> i64 {
    sort_index.clamp(i64::from(i32::MIN), i64::from(i32::MAX))
}

/// Track uuids: disjoint ranges for process, thread and counter tracks.
fn process_uuid(pid: u32) -> u64 {
    (1 << 60) | u64::from(pid)
}
fn thread_uuid(pid: u32, tid: u32) -> u64 {
    (1 << 62) | (u64::from(pid) << 32) | u64::from(tid)
}
fn counter_uuid(index: u64) -> u64 {
    (1 << 61) | index
}

/// The order events leave the reorder buffer in: time, then ends before
/// instants before begins, then (ends) inner slices first, (begins) outer
/// slices first, then the order they were made.
type Key = (u64, u8, u64, u64);

/// Maps hash with foldhash (seeded per process, as the engine's).
type FastState = foldhash::fast::RandomState;

/// The interning tables of one kind (names, categories, argument keys).
#[derive(Default)]
struct Interned {
    ids: HashMap<&'static str, u64, FastState>,
}

impl Interned {
    /// The iid of `s`, and whether it is new (to be written out).
    fn id(&mut self, s: &'static str) -> (u64, bool) {
        let next = self.ids.len() as u64 + 1;
        match self.ids.get(s) {
            Some(&id) => (id, false),
            None => {
                self.ids.insert(s, next);
                (next, true)
            }
        }
    }
}

/// Events waiting for time order, in buckets of 2^[`BUCKET_BITS`] ns (about
/// a millisecond) sorted when they leave: events come nearly in order, so
/// this costs far less than one heap over all of them. A bucket keeps its
/// packets' bytes in one buffer.
#[derive(Default)]
struct Reorder {
    buckets: BTreeMap<u64, Bucket>,
    len: usize,
}

#[derive(Default)]
struct Bucket {
    /// Each event's key and its packet's range in `bytes`.
    events: Vec<(Key, usize, usize)>,
    bytes: Vec<u8>,
}

const BUCKET_BITS: u32 = 20;

impl Reorder {
    fn push(&mut self, key: Key, packet: &[u8]) {
        let bucket = self.buckets.entry(key.0 >> BUCKET_BITS).or_default();
        let start = bucket.bytes.len();
        bucket.bytes.extend_from_slice(packet);
        bucket.events.push((key, start, bucket.bytes.len()));
        self.len += 1;
    }

    /// The oldest bucket, its events in order, when all of it is at or
    /// before `until` or more than `max` events wait.
    fn pop_due(&mut self, until: u64, max: usize) -> Option<Bucket> {
        let (&first, _) = self.buckets.first_key_value()?;
        let last = (first << BUCKET_BITS) | ((1 << BUCKET_BITS) - 1);
        if last > until && self.len <= max {
            return None;
        }
        let mut bucket = self.buckets.remove(&first)?;
        self.len -= bucket.events.len();
        bucket.events.sort_unstable_by_key(|(key, ..)| *key);
        Some(bucket)
    }
}

pub(super) struct Protobuf<W: Write> {
    out: W,
    waiting: Reorder,
    made: u64,
    now: u64,
    names: Interned,
    categories: Interned,
    arg_keys: Interned,
    /// Process and thread tracks already described.
    tracks: HashSet<u64, FastState>,
    counters: HashMap<(u32, String), u64, FastState>,
    /// The untimed packet being written.
    packet: Vec<u8>,
    /// The event packet being made, and its argument keys' iids.
    scratch: Vec<u8>,
    keys: Vec<u64>,
}

impl<W: Write> Protobuf<W> {
    /// Writes the first packet, which clears the sequence's incremental
    /// state.
    pub(super) fn start(out: W) -> io::Result<Self> {
        let mut p = Protobuf {
            out,
            waiting: Reorder::default(),
            made: 0,
            now: 0,
            names: Interned::default(),
            categories: Interned::default(),
            arg_keys: Interned::default(),
            tracks: HashSet::default(),
            counters: HashMap::default(),
            packet: Vec::with_capacity(256),
            scratch: Vec::with_capacity(256),
            keys: Vec::new(),
        };
        p.packet.clear();
        wire::uint(
            &mut p.packet,
            field::TRUSTED_PACKET_SEQUENCE_ID,
            SEQUENCE_ID,
        );
        wire::uint(
            &mut p.packet,
            field::SEQUENCE_FLAGS,
            SEQ_INCREMENTAL_STATE_CLEARED,
        );
        wire::uint(&mut p.packet, field::FIRST_PACKET_ON_SEQUENCE, 1);
        p.write_packet()?;
        Ok(p)
    }

    /// Writes `self.packet` as one `Trace.packet`.
    fn write_packet(&mut self) -> io::Result<()> {
        let mut head = Vec::with_capacity(12);
        wire::len_head(&mut head, field::TRACE_PACKET, self.packet.len());
        self.out.write_all(&head)?;
        self.out.write_all(&self.packet)
    }

    /// Writes an untimed packet whose body `body` makes (descriptors,
    /// interned data) now, ahead of every event that uses it.
    fn write_untimed(&mut self, flags: u64, body: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        self.packet.clear();
        wire::uint(
            &mut self.packet,
            field::TRUSTED_PACKET_SEQUENCE_ID,
            SEQUENCE_ID,
        );
        if flags != 0 {
            wire::uint(&mut self.packet, field::SEQUENCE_FLAGS, flags);
        }
        body(&mut self.packet);
        self.write_packet()
    }

    /// The iid of a fixed string of one kind; new ones are written out.
    fn intern(&mut self, kind: u32, s: &'static str) -> io::Result<u64> {
        let table = match kind {
            field::EVENT_CATEGORIES => &mut self.categories,
            field::EVENT_NAMES => &mut self.names,
            _ => &mut self.arg_keys,
        };
        let (id, new) = table.id(s);
        if new {
            self.write_untimed(SEQ_NEEDS_INCREMENTAL_STATE, |p| {
                wire::message(p, field::INTERNED_DATA, |d| {
                    wire::message(d, kind, |e| {
                        wire::uint(e, field::IID, id);
                        wire::string(e, field::INTERNED_NAME, s);
                    });
                });
            })?;
        }
        Ok(id)
    }

    /// A process track; its threads are ordered by their rank.
    fn describe_process(
        &mut self,
        pid: u32,
        name: Option<&str>,
        rank: Option<i64>,
    ) -> io::Result<()> {
        self.write_untimed(0, |p| {
            wire::message(p, field::TRACK_DESCRIPTOR, |d| {
                wire::uint(d, field::UUID, process_uuid(pid));
                wire::uint(d, field::CHILD_ORDERING, CHILD_ORDERING_EXPLICIT);
                if let Some(rank) = rank {
                    wire::int(d, field::SIBLING_ORDER_RANK, order_rank(rank));
                }
                wire::message(d, field::PROCESS, |pr| {
                    wire::int(pr, field::PID, i64::from(pid));
                    if let Some(name) = name {
                        wire::string(pr, field::PROCESS_NAME, name);
                    }
                });
            });
        })
    }

    fn describe_thread(
        &mut self,
        pid: u32,
        tid: u32,
        name: Option<&str>,
        rank: Option<i64>,
    ) -> io::Result<()> {
        self.write_untimed(0, |p| {
            wire::message(p, field::TRACK_DESCRIPTOR, |d| {
                wire::uint(d, field::UUID, thread_uuid(pid, tid));
                wire::uint(d, field::PARENT_UUID, process_uuid(pid));
                if let Some(rank) = rank {
                    wire::int(d, field::SIBLING_ORDER_RANK, order_rank(rank));
                }
                wire::message(d, field::THREAD, |th| {
                    wire::int(th, field::PID, i64::from(pid));
                    wire::int(th, field::TID, i64::from(tid));
                    if let Some(name) = name {
                        wire::string(th, field::THREAD_NAME, name);
                    }
                });
            });
        })
    }

    /// The uuid of a thread's track, described (with its process) on first use.
    fn thread_track(&mut self, pid: u32, tid: u32) -> io::Result<u64> {
        if self.tracks.insert(process_uuid(pid)) {
            self.describe_process(pid, None, None)?;
        }
        let uuid = thread_uuid(pid, tid);
        if self.tracks.insert(uuid) {
            self.describe_thread(pid, tid, None, None)?;
        }
        Ok(uuid)
    }

    fn counter_track(&mut self, pid: u32, name: &str) -> io::Result<u64> {
        if let Some(&uuid) = self.counters.get(&(pid, name.to_owned())) {
            return Ok(uuid);
        }
        let index = self.counters.len() as u64;
        if index >= MAX_COUNTERS {
            return Ok(counter_uuid(MAX_COUNTERS - 1));
        }
        if self.tracks.insert(process_uuid(pid)) {
            self.describe_process(pid, None, None)?;
        }
        let uuid = counter_uuid(index);
        self.counters.insert((pid, name.to_owned()), uuid);
        self.write_untimed(0, |p| {
            wire::message(p, field::TRACK_DESCRIPTOR, |d| {
                wire::uint(d, field::UUID, uuid);
                wire::uint(d, field::PARENT_UUID, process_uuid(pid));
                wire::string(d, field::TRACK_NAME, name);
                wire::message(d, field::COUNTER, |_| {});
            });
        })?;
        Ok(uuid)
    }

    /// The iids of an event's argument keys, into `self.keys` (nested keys
    /// are written inline).
    fn intern_args(&mut self, args: &Args) -> io::Result<()> {
        self.keys.clear();
        for (k, _) in args {
            let id = self.intern(field::DEBUG_ANNOTATION_NAMES, k)?;
            self.keys.push(id);
        }
        Ok(())
    }

    /// Builds one TrackEvent packet at `ts`; `body` writes inside the event.
    fn event(p: &mut Vec<u8>, ts: u64, body: impl FnOnce(&mut Vec<u8>)) {
        p.clear();
        wire::uint(p, field::TIMESTAMP, ts);
        wire::uint(p, field::TRUSTED_PACKET_SEQUENCE_ID, SEQUENCE_ID);
        wire::uint(p, field::SEQUENCE_FLAGS, SEQ_NEEDS_INCREMENTAL_STATE);
        wire::message(p, field::TRACK_EVENT, body);
    }

    /// Makes a named event (begin or instant) with category and args in
    /// `self.scratch`.
    fn named(
        &mut self,
        at: Place,
        kind: u64,
        name: Name<'_>,
        cat: &'static str,
        args: &Args,
        extra: impl FnOnce(&mut Vec<u8>),
    ) -> io::Result<()> {
        let track = self.thread_track(at.pid, at.tid)?;
        let cat = self.intern(field::EVENT_CATEGORIES, cat)?;
        let name_iid = match name {
            Name::Fixed(s) => Some(self.intern(field::EVENT_NAMES, s)?),
            Name::Text(_) => None,
        };
        self.intern_args(args)?;
        let keys = &self.keys;
        Self::event(&mut self.scratch, at.ts, |e| {
            wire::uint(e, field::TYPE, kind);
            wire::uint(e, field::TRACK_UUID, track);
            wire::uint(e, field::CATEGORY_IIDS, cat);
            match name_iid {
                Some(iid) => wire::uint(e, field::NAME_IID, iid),
                None => wire::string(e, field::NAME, name.as_str()),
            }
            for ((_, v), key) in args.iter().zip(keys) {
                if *v != Arg::Null {
                    wire::message(e, field::DEBUG_ANNOTATIONS, |a| {
                        wire::uint(a, field::ARG_NAME_IID, *key);
                        annotation_value(a, v);
                    });
                }
            }
            extra(e);
        });
        Ok(())
    }

    /// Queues the packet made in `self.scratch` for time order, first
    /// writing out what is due.
    fn wait(&mut self, key: Key) -> io::Result<()> {
        self.waiting.push(key, &self.scratch);
        self.flush(self.now.saturating_sub(HORIZON_NS))
    }

    /// Writes every waiting event at or before `until`, and the oldest ones
    /// beyond the bound on waiting events.
    fn flush(&mut self, until: u64) -> io::Result<()> {
        let mut head = Vec::with_capacity(12);
        while let Some(bucket) = self.waiting.pop_due(until, MAX_WAITING) {
            for (_, start, end) in bucket.events {
                let packet = &bucket.bytes[start..end];
                head.clear();
                wire::len_head(&mut head, field::TRACE_PACKET, packet.len());
                self.out.write_all(&head)?;
                self.out.write_all(packet)?;
            }
        }
        Ok(())
    }

    fn next_made(&mut self) -> u64 {
        self.made += 1;
        self.made
    }
}

/// A DebugAnnotation's value (and, for nested ones, its entries).
fn annotation_value(a: &mut Vec<u8>, v: &Arg) {
    match v {
        Arg::Null => {}
        Arg::Bool(b) => wire::uint(a, field::BOOL_VALUE, u64::from(*b)),
        Arg::Int(i) => wire::int(a, field::INT_VALUE, *i),
        Arg::UInt(u) => wire::uint(a, field::UINT_VALUE, *u),
        Arg::Float(f) => wire::double(a, field::DOUBLE_VALUE, *f),
        Arg::Str(s) => wire::string(a, field::STRING_VALUE, s),
        Arg::List(items) => {
            for item in items.iter().filter(|i| **i != Arg::Null) {
                wire::message(a, field::ARRAY_VALUES, |e| annotation_value(e, item));
            }
        }
        Arg::Map(entries) => {
            for (k, item) in entries.iter().filter(|(_, i)| *i != Arg::Null) {
                wire::message(a, field::DICT_ENTRIES, |e| {
                    wire::string(e, field::ARG_NAME, k);
                    annotation_value(e, item);
                });
            }
        }
    }
}

impl<W: Write> Encoder for Protobuf<W> {
    fn advance(&mut self, _origin: Origin, now: u64) -> io::Result<()> {
        self.now = self.now.max(now);
        Ok(())
    }

    fn slice(
        &mut self,
        at: Place,
        end: u64,
        name: Name<'_>,
        cat: &'static str,
        args: &Args,
    ) -> io::Result<()> {
        if end <= at.ts {
            return self.instant(at, name, cat, args);
        }
        let made = self.next_made();
        self.named(at, SLICE_BEGIN, name, cat, args, |_| {})?;
        self.wait((at.ts, 2, u64::MAX - end, made))?;
        let track = thread_uuid(at.pid, at.tid);
        Self::event(&mut self.scratch, end, |e| {
            wire::uint(e, field::TYPE, SLICE_END);
            wire::uint(e, field::TRACK_UUID, track);
        });
        self.wait((end, 0, u64::MAX - at.ts, u64::MAX - made))
    }

    fn instant(
        &mut self,
        at: Place,
        name: Name<'_>,
        cat: &'static str,
        args: &Args,
    ) -> io::Result<()> {
        let made = self.next_made();
        self.named(at, INSTANT, name, cat, args, |_| {})?;
        self.wait((at.ts, 1, 0, made))
    }

    fn counter(
        &mut self,
        pid: u32,
        name: Name<'_>,
        ts: u64,
        _key: &'static str,
        value: f64,
    ) -> io::Result<()> {
        let track = self.counter_track(pid, name.as_str())?;
        let made = self.next_made();
        Self::event(&mut self.scratch, ts, |e| {
            wire::uint(e, field::TYPE, COUNTER);
            wire::uint(e, field::TRACK_UUID, track);
            wire::double(e, field::DOUBLE_COUNTER_VALUE, value);
        });
        self.wait((ts, 1, 0, made))
    }

    fn flow(&mut self, at: Place, id: u64, step: FlowStep) -> io::Result<()> {
        let made = self.next_made();
        let ids = if step == FlowStep::Last {
            field::TERMINATING_FLOW_IDS
        } else {
            field::FLOW_IDS
        };
        let name = Name::Fixed("fault");
        self.named(at, INSTANT, name, "flow", &Args::new(), |e| {
            wire::fixed64(e, ids, id);
        })?;
        self.wait((at.ts, 1, 0, made))
    }

    fn process(&mut self, pid: u32, name: &str, sort_index: i64) -> io::Result<()> {
        self.tracks.insert(process_uuid(pid));
        self.describe_process(pid, Some(name), Some(sort_index))
    }

    fn thread(
        &mut self,
        pid: u32,
        tid: u32,
        name: &str,
        sort_index: Option<i64>,
    ) -> io::Result<()> {
        if self.tracks.insert(process_uuid(pid)) {
            self.describe_process(pid, None, None)?;
        }
        self.tracks.insert(thread_uuid(pid, tid));
        self.describe_thread(pid, tid, Some(name), sort_index)
    }

    fn finish(&mut self) -> io::Result<()> {
        self.flush(u64::MAX)?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys as `slice` and `instant` make them.
    fn begin(start: u64, end: u64, made: u64) -> Key {
        (start, 2, u64::MAX - end, made)
    }
    fn end(start: u64, end: u64, made: u64) -> Key {
        (end, 0, u64::MAX - start, u64::MAX - made)
    }

    #[test]
    fn equal_times_leave_nested_ends_first_and_begins_outer_first() {
        let mut q = Reorder::default();
        // A [10, 20] holds B [10, 20] (made after it); C [20, 30] follows,
        // an instant at 20 sits between; a late bucket comes first.
        let events: [(Key, &[u8]); 7] = [
            (begin(10, 20, 1), b"A("),
            (end(10, 20, 1), b"A)"),
            (begin(10, 20, 2), b"B("),
            (end(10, 20, 2), b"B)"),
            ((20, 1, 0, 3), b"i"),
            (begin(20, 30, 4), b"C("),
            (end(20, 30, 4), b"C)"),
        ];
        for (key, label) in events.iter().rev() {
            q.push(*key, label);
        }
        let mut order = Vec::new();
        while let Some(bucket) = q.pop_due(u64::MAX, MAX_WAITING) {
            for (_, s, e) in bucket.events {
                order.push(String::from_utf8(bucket.bytes[s..e].to_vec()).expect("label"));
            }
        }
        assert_eq!(order, ["A(", "B(", "B)", "A)", "i", "C(", "C)"]);
    }

    #[test]
    fn buckets_wait_for_the_horizon_or_the_bound() {
        let mut q = Reorder::default();
        q.push((5 << BUCKET_BITS, 1, 0, 1), b"x");
        assert!(
            q.pop_due(5 << BUCKET_BITS, MAX_WAITING).is_none(),
            "bucket not over"
        );
        assert!(q.pop_due(0, 0).is_some(), "over the bound of 0 events");
        assert_eq!(q.len, 0);
        q.push((5 << BUCKET_BITS, 1, 0, 2), b"y");
        assert!(
            q.pop_due(6 << BUCKET_BITS, MAX_WAITING).is_some(),
            "bucket over"
        );
    }

    #[test]
    fn sort_indexes_fit_an_int32_rank() {
        assert_eq!(order_rank(-2), -2);
        assert_eq!(order_rank(i64::MAX), i64::from(i32::MAX));
    }
}
