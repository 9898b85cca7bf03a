//! The one streaming pass over a trace that the report ([`crate::analysis`])
//! and the streamed exports ([`crate::export`]) share: it decodes records,
//! derives once what several consumers need from a record (the return-path
//! messages of a send, the facts of a QMP reply), feeds the lifecycle engine
//! and hands each record, and each fault as soon as the engine resolves it,
//! to one [`Consumer`].
//!
//! It also owns the time origin of every output ([`Origin`]) and the bound on
//! how many records one pass takes ([`Limits`]).

use std::io::Read;

use crate::engine::lifecycle::{Engine, Fault};
use crate::inputs::qmp::{self, QmpFacts};
use crate::inputs::rp::{ReturnPath, RpMessage};
use crate::inputs::validate::Boundary;
use uffdscope_trace::record::{Record, Role};
use uffdscope_trace::{TraceError, TraceMeta, TraceReader};

/// What the driver read out of one record, handed to the consumer with it.
#[derive(Debug, Default)]
pub struct Derived {
    /// The return-path messages of a send, blocks named; empty otherwise.
    pub return_path: Vec<RpMessage>,
    /// The facts of a QMP record that is JSON.
    pub qmp: Option<QmpFacts>,
}

/// What the pass knows when it hands something on.
#[derive(Clone, Copy)]
pub(crate) struct At<'a> {
    pub engine: &'a Engine,
    /// Fixed by the first timestamped record, which comes before any fault.
    pub origin: Origin,
}

/// Receives records and resolved faults in stream order.
pub(crate) trait Consumer {
    /// What ends the pass early (a write error of an export); the report's
    /// consumer cannot fail ([`std::convert::Infallible`]).
    type Error;
    /// A record, before the engine takes it.
    fn record(&mut self, rec: &Record, derived: &Derived, at: At<'_>) -> Result<(), Self::Error>;
    /// A fault the engine resolved.
    fn fault(&mut self, fault: &Fault, at: At<'_>) -> Result<(), Self::Error>;
    /// A thread's role changed (a name, or its first sleep, said more), after
    /// the engine took the record that changed it and handed its faults on.
    fn role_changed(&mut self, _tid: u32, _role: Role) {}
}

/// The time origin of every output: the timestamp of the trace's first
/// timestamped record (the recorder writes its start note first), or the
/// metadata's recording start when no record has a timestamp. Times before
/// it are negative in exports and 0 in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Origin(Option<u64>);

impl Origin {
    /// An origin at `ns` (for tests of the writers).
    #[cfg(test)]
    pub(crate) fn at(ns: u64) -> Self {
        Self(Some(ns))
    }

    fn observe(&mut self, ts: u64) {
        if self.0.is_none() && ts > 0 {
            self.0 = Some(ts);
        }
    }

    /// The origin, monotonic ns; `fallback` before any timestamped record.
    pub fn ns(self, fallback: u64) -> u64 {
        self.0.unwrap_or(fallback)
    }

    /// ns since the origin (negative for a moment before it).
    pub fn rel(self, ts: u64) -> i128 {
        i128::from(ts) - i128::from(self.0.unwrap_or(0))
    }
}

/// Bounds on one pass: a tiny, very compressible trace can decode to far
/// more records than its size suggests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Records taken before the pass stops (`--max-events`).
    pub max_records: u64,
}

impl Limits {
    /// No bound (tests and callers that bound their input themselves).
    pub const NONE: Limits = Limits {
        max_records: u64::MAX,
    };
    /// Records allowed per byte of trace file by default: recorded traces
    /// hold under 0.3 records per byte (zstd frames of varint records).
    pub const RECORDS_PER_BYTE: u64 = 16;
    /// The default never goes below this many records.
    pub const MIN_RECORDS: u64 = 1_000_000;

    /// The default for an input whose size is not known up front (standard
    /// input, a pipe): about the largest traces measured (~100 M records).
    pub const UNSIZED: Limits = Limits {
        max_records: 100_000_000,
    };

    /// The default bound for a trace file of `bytes` bytes.
    pub fn for_file_size(bytes: u64) -> Limits {
        Limits {
            max_records: bytes
                .saturating_mul(Self::RECORDS_PER_BYTE)
                .max(Self::MIN_RECORDS),
        }
    }
}

/// What a pass went through.
#[derive(Debug)]
pub struct Summary {
    pub records: u64,
    pub faults: u64,
    /// Why reading stopped early; everything before it was taken.
    pub damage: Option<TraceError>,
    /// The recorder's end note was read: the recording was closed, not cut.
    pub complete: bool,
    /// The latest timestamp taken, monotonic ns.
    pub last_ts: Option<u64>,
    /// The pass stopped at [`Limits::max_records`]: the rest was not read.
    pub stopped_at_limit: Option<u64>,
    pub origin: Origin,
    /// Records the validation boundary turned away, one line per kind.
    pub warnings: Vec<String>,
}

/// One pass in progress, fed a record at a time: the trace reader's loop in
/// [`drive`], or a live recording ([`crate::live`]). Everything a record goes
/// through on its way to a consumer happens here, once.
pub(crate) struct Driver {
    engine: Engine,
    return_path: ReturnPath,
    boundary: Boundary,
    resolved: Vec<Fault>,
    limits: Limits,
    summary: Summary,
}

impl Driver {
    /// A pass over the trace described by `meta`, bounded by `limits`.
    pub(crate) fn new(meta: &TraceMeta, limits: Limits) -> Self {
        Self {
            engine: Engine::for_trace(meta),
            return_path: ReturnPath::default(),
            boundary: Boundary::new(meta),
            resolved: Vec::new(),
            limits,
            summary: Summary {
                records: 0,
                faults: 0,
                damage: None,
                complete: false,
                last_ts: None,
                stopped_at_limit: None,
                origin: Origin(None),
                warnings: Vec::new(),
            },
        }
    }

    /// What the engine learned so far (threads, requests, placements).
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// True once the pass took [`Limits::max_records`]: later records are skipped.
    pub(crate) fn at_limit(&self) -> bool {
        self.summary.stopped_at_limit.is_some()
    }

    /// Admits one decoded record and hands it, and the faults it resolves,
    /// to `consumer`.
    pub(crate) fn push<C: Consumer>(
        &mut self,
        rec: &Record,
        consumer: &mut C,
    ) -> Result<(), C::Error> {
        if self.at_limit() || !self.boundary.admits(rec) {
            return Ok(());
        }
        let summary = &mut self.summary;
        if summary.records == self.limits.max_records {
            summary.stopped_at_limit = Some(self.limits.max_records);
            return Ok(());
        }
        summary.records += 1;
        let ts = rec.ts();
        summary.origin.observe(ts);
        if ts > 0 {
            summary.last_ts = Some(summary.last_ts.map_or(ts, |t| t.max(ts)));
        }
        if matches!(rec, Record::Note(n) if n.kind == "end") {
            summary.complete = true;
        }
        self.step(rec, consumer)
    }

    /// The engine and the consumer take one admitted record.
    fn step<C: Consumer>(&mut self, rec: &Record, consumer: &mut C) -> Result<(), C::Error> {
        let derived = Derived {
            return_path: match rec {
                Record::SockIo(s) => self.return_path.read(s),
                _ => Vec::new(),
            },
            qmp: match rec {
                Record::Qmp(q) => qmp::parse(&q.kind, &q.json),
                _ => None,
            },
        };
        let origin = self.summary.origin;
        let engine = &mut self.engine;
        consumer.record(rec, &derived, At { engine, origin })?;
        let resolved = &mut self.resolved;
        engine.push_parsed(rec, &derived.return_path, &mut |f| resolved.push(f));
        for f in resolved.drain(..) {
            self.summary.faults += 1;
            consumer.fault(&f, At { engine, origin })?;
        }
        engine.take_role_changes(|tid, role| consumer.role_changed(tid, role));
        Ok(())
    }

    /// Ends the pass: resolves every open fault; returns the engine (for
    /// what it learned about threads) and the summary.
    pub(crate) fn finish<C: Consumer>(
        mut self,
        consumer: &mut C,
    ) -> Result<(Engine, Summary), C::Error> {
        self.summary.warnings = self.boundary.warnings();
        let engine = &mut self.engine;
        engine.take_role_changes(|tid, role| consumer.role_changed(tid, role));
        let resolved = &mut self.resolved;
        engine.finish(&mut |f| resolved.push(f));
        let at = At {
            engine,
            origin: self.summary.origin,
        };
        for f in self.resolved.drain(..) {
            self.summary.faults += 1;
            consumer.fault(&f, at)?;
        }
        Ok((self.engine, self.summary))
    }
}

/// Runs the pass over a whole trace; returns the engine (for what it learned
/// about threads) and the summary. The first consumer error ends the pass.
pub(crate) fn drive<R: Read, C: Consumer>(
    reader: &mut TraceReader<R>,
    consumer: &mut C,
    limits: Limits,
) -> Result<(Engine, Summary), C::Error> {
    let mut pass = Driver::new(reader.meta(), limits);
    let mut failed: Option<C::Error> = None;
    // `for_each` cannot stop early: after a consumer error or at the limit,
    // the remaining records are decoded and skipped.
    let damage = reader.for_each(|rec| {
        if failed.is_some() || pass.at_limit() {
            return;
        }
        if let Err(e) = pass.push(&rec, consumer) {
            failed = Some(e);
        }
    });
    pass.summary.damage = damage;
    if let Some(e) = failed {
        return Err(e);
    }
    pass.finish(consumer)
}
