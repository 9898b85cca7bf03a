//! The per-fault columns of the exports, decided once: their names, kinds
//! and each fault's values. The CSV writes them as text ([`super::csv`]),
//! the Parquet faults table as typed columns ([`super::parquet`]).
//!
//! Timestamps (`t_*_ns`) are ns since the time origin of every output
//! ([`Origin`]: the trace's first record); durations are ns. A value the
//! trace does not show is `None` (an empty cell, a null), never 0.

use crate::drive::Origin;
use crate::engine::lifecycle::{Fault, Stage};
use crate::engine::network_split::NetworkSplit;

/// What a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A signed integer (ids, counts, ns).
    Int,
    /// An address (unsigned 64-bit; hex in text).
    Addr,
    Text,
    Flag,
    /// Used by the Parquet tables beyond the faults.
    #[cfg_attr(not(feature = "parquet"), allow(dead_code))]
    Float,
}

/// One value of a row; `None` where the trace does not show it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Value<'a> {
    Int(Option<i64>),
    Addr(u64),
    Text(Option<&'a str>),
    Flag(Option<bool>),
    #[cfg_attr(not(feature = "parquet"), allow(dead_code))]
    Float(Option<f64>),
}

#[cfg(test)]
impl Value<'_> {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Value::Int(_) => Kind::Int,
            Value::Addr(_) => Kind::Addr,
            Value::Text(_) => Kind::Text,
            Value::Flag(_) => Kind::Flag,
            Value::Float(_) => Kind::Float,
        }
    }
}

/// The columns, in order.
pub(crate) const COLUMNS: [(&str, Kind); 28] = [
    ("tid", Kind::Int),
    ("page", Kind::Addr),
    ("resolution", Kind::Text),
    ("already_requested", Kind::Flag),
    ("reader_tid", Kind::Int),
    ("requester_tid", Kind::Int),
    ("waker_tid", Kind::Int),
    ("place_len", Kind::Int),
    ("t_entry_ns", Kind::Int),
    ("t_blocked_ns", Kind::Int),
    ("t_read_ns", Kind::Int),
    ("t_request_ns", Kind::Int),
    ("t_place_ns", Kind::Int),
    ("t_place_end_ns", Kind::Int),
    ("t_woken_ns", Kind::Int),
    ("t_run_ns", Kind::Int),
    ("queue_ns", Kind::Int),
    ("request_ns", Kind::Int),
    ("network_ns", Kind::Int),
    ("place_ns", Kind::Int),
    ("wake_ns", Kind::Int),
    ("service_ns", Kind::Int),
    ("blocked_ns", Kind::Int),
    ("wire_ns", Kind::Int),
    ("behind_stream_ns", Kind::Int),
    ("rest_ns", Kind::Int),
    ("paused_ns", Kind::Int),
    ("behind_stream_bytes", Kind::Int),
];

/// An unsigned count or duration as a signed 64-bit value; `None` beyond
/// `i64::MAX` (292 years of ns: only a damaged trace gets there).
fn int(v: Option<u64>) -> Value<'static> {
    Value::Int(v.and_then(|v| i64::try_from(v).ok()))
}

/// A fault's values, in [`COLUMNS`] order. `split` is its network stage
/// taken apart, when it was requested.
pub(crate) fn values(
    f: &Fault,
    origin: Origin,
    split: Option<NetworkSplit>,
) -> [Value<'static>; 28] {
    let t = |ts: Option<u64>| Value::Int(ts.and_then(|t| i64::try_from(origin.rel(t)).ok()));
    let stage = |s: Stage| int(f.stage_ns(s));
    let split = split.unwrap_or_default();
    [
        Value::Int(Some(i64::from(f.tid))),
        Value::Addr(f.page),
        Value::Text(Some(f.resolution.as_str())),
        Value::Flag(Some(f.already_requested)),
        Value::Int(f.reader_tid.map(i64::from)),
        Value::Int(f.requester_tid.map(i64::from)),
        Value::Int(Some(i64::from(f.waker_tid))),
        int(Some(f.place_len)),
        t(f.entry_ts),
        t(Some(f.blocked_ts)),
        t(f.read_ts),
        t(f.request_ts),
        t(f.place_ts),
        t(f.place_end_ts),
        t(Some(f.woken_ts)),
        t(f.run_ts),
        stage(Stage::Queue),
        stage(Stage::Request),
        stage(Stage::Network),
        stage(Stage::Place),
        stage(Stage::Wake),
        int(f.service_ns()),
        int(f.blocked_ns()),
        int(split.wire_ns),
        int(split.behind_stream_ns),
        int(split.rest_ns),
        int(split.paused_ns),
        int(split.behind_stream_bytes),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::lifecycle::Resolution;

    #[test]
    fn values_have_the_kinds_of_their_columns() {
        let f = Fault {
            tid: 7,
            page: 0x7000,
            resolution: Resolution::Requested,
            entry_ts: Some(1_000),
            blocked_ts: 2_000,
            read_ts: Some(2_500),
            reader_tid: Some(3),
            request_ts: Some(2_600),
            requester_tid: Some(3),
            already_requested: false,
            place_ts: Some(5_000),
            place_end_ts: Some(5_500),
            woken_ts: 5_400,
            run_ts: Some(6_000),
            resume_ts: None,
            waker_tid: 9,
            place_len: 4096,
        };
        let row = values(&f, Origin::default(), None);
        for ((name, kind), v) in COLUMNS.iter().zip(&row) {
            assert_eq!(*kind, v.kind(), "{name}");
        }
        assert_eq!(row[8], Value::Int(Some(1_000)), "t_entry_ns");
    }
}
