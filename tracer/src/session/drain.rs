//! The ring drain of a session: ring-buffer records decoded and converted
//! into trace records, the running figures the status line shows, and the
//! records that could not be used, counted by why.

use std::collections::BTreeMap;

use uffdscope_ebpf::DecodeError;
use uffdscope_trace::record::Record;

use crate::bpf::RingDrain;
use crate::convert::{ConvertError, Records};

/// Ring records that did not become trace records, counted per kind of
/// failure. A length mismatch or an unknown kind means the BPF object and
/// this build disagree on the ABI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BadRecords {
    /// `short`, `unknown_kind.N`, `length_mismatch.KIND`, `convert.VARIANT`.
    by_kind: BTreeMap<String, u64>,
}

/// What a bad record says, for the one who must act on it.
pub(super) enum Alarm {
    /// The first record of a kind whose ABI disagrees: rebuild.
    AbiMismatch(String),
}

impl BadRecords {
    /// Counts one decode failure; returns an alarm the first time an ABI
    /// mismatch of its kind is seen.
    pub(super) fn decode(&mut self, e: &DecodeError) -> Option<Alarm> {
        let (key, abi) = match e {
            DecodeError::Short { .. } => ("short".to_owned(), false),
            DecodeError::UnknownKind { kind, .. } => (format!("unknown_kind.{kind}"), true),
            DecodeError::Length { kind, .. } => (format!("length_mismatch.{}", kind.name()), true),
        };
        let first = self.count(key);
        (abi && first).then(|| {
            Alarm::AbiMismatch(format!(
                "{e}: the BPF object and the tracer disagree on the record layout, so these \
                 records are dropped; rebuild both from one checkout (make -C ebpf, then cargo build)"
            ))
        })
    }

    /// Counts one conversion failure.
    pub(super) fn convert(&mut self, e: &ConvertError) {
        let variant = match e {
            ConvertError::FaultSource(_) => "fault_source",
            ConvertError::UffdFdOp(_) => "uffd_fd_op",
            ConvertError::ThreadOp(_) => "thread_op",
            ConvertError::Direction(_) => "direction",
            ConvertError::PlacerHow(_) => "placer_how",
            ConvertError::KvmAsyncOp(_) => "kvm_async_op",
        };
        self.count(format!("convert.{variant}"));
    }

    /// Adds one; true when it is the first of its key.
    fn count(&mut self, key: String) -> bool {
        let n = self.by_kind.entry(key).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Every bad record.
    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }

    /// `length_mismatch.fault_wake 3, convert.thread_op 1`, or empty.
    pub fn summary(&self) -> String {
        self.by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The counts as one JSON object, for the trace's `bad_records` note.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.by_kind).unwrap_or_default()
    }
}

/// Ring-buffer records turned into trace records, with the running figures
/// the status line shows.
#[derive(Default)]
pub(super) struct Drained {
    /// Trace records not written yet (kept between drains for its capacity).
    pub(super) pending: Vec<Record>,
    /// Alarms not said yet.
    pub(super) alarms: Vec<Alarm>,
    pub(super) service: crate::live_stats::LiveLatency,
    pub(super) faults: u64,
    pub(super) bad: BadRecords,
    /// Which send call the return path uses, once seen.
    pub(super) narrowing: super::narrow::SendNarrowing,
}

impl Drained {
    /// Decodes and converts every waiting record into [`Self::pending`],
    /// raising [`Self::alarms`].
    pub(super) fn drain(&mut self, ring: &mut RingDrain) {
        ring.drain(|r| match r {
            Err(e) => {
                if let Some(alarm) = self.bad.decode(&e) {
                    self.alarms.push(alarm);
                }
            }
            Ok(ev) => {
                self.narrowing.see(&ev);
                self.convert(&ev);
            }
        });
    }

    /// Turns one event into records in [`Self::pending`], counting faults.
    fn convert(&mut self, ev: &uffdscope_ebpf::RawEvent) {
        match Records::try_from(ev) {
            Err(e) => self.bad.convert(&e),
            Ok(Records(recs)) => {
                for rec in recs {
                    if let Record::Sleep(s) = &rec {
                        self.faults += 1;
                        if let Some(f) = &s.fault {
                            self.service.record(s.woken_ts.saturating_sub(f.ts));
                        }
                    }
                    self.pending.push(rec);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uffdscope_ebpf::abi::Kind;

    #[test]
    fn counts_each_kind_and_alarms_once_per_mismatch() {
        let mut bad = BadRecords::default();
        let length = DecodeError::Length {
            kind: Kind::FaultWake,
            expected: 112,
            got: 104,
        };
        let alarm = bad.decode(&length);
        assert!(
            matches!(&alarm, Some(Alarm::AbiMismatch(t)) if t.contains("rebuild") && t.contains("fault_wake")),
            "a length mismatch must name the fix"
        );
        assert!(bad.decode(&length).is_none(), "alarmed twice");
        assert!(bad.decode(&DecodeError::Short { len: 3 }).is_none());
        assert!(bad
            .decode(&DecodeError::UnknownKind { kind: 42, len: 16 })
            .is_some());
        bad.convert(&ConvertError::ThreadOp(9));
        assert_eq!(bad.total(), 5);
        assert_eq!(
            bad.summary(),
            "convert.thread_op 1, length_mismatch.fault_wake 2, short 1, unknown_kind.42 1"
        );
        assert_eq!(
            bad.to_json(),
            r#"{"convert.thread_op":1,"length_mismatch.fault_wake":2,"short":1,"unknown_kind.42":1}"#
        );
    }
}
