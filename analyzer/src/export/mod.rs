//! Shared plumbing of the streaming exports ([`crate::export::perfetto`], [`crate::export::csv`]):
//! one pass over a trace through the lifecycle engine, handing each record and
//! each fault (as soon as the engine resolves it) to an exporter. Memory is the
//! engine's bounded window plus one frame, never the whole trace.

pub mod csv;
pub mod perfetto;

use std::io::{self, Read};

use crate::engine::lifecycle::{Engine, Fault};
use crate::inputs::validate::Boundary;
use uffdscope_trace::record::Record;
use uffdscope_trace::{TraceError, TraceMeta, TraceReader};

/// What an export went through.
#[derive(Debug)]
pub struct Summary {
    pub records: u64,
    pub faults: u64,
    /// Why reading stopped early; everything before it was exported.
    pub damage: Option<TraceError>,
    /// Records the validation boundary turned away, one line per kind.
    pub warnings: Vec<String>,
}

/// Receives records and resolved faults in stream order.
pub(crate) trait Exporter {
    fn record(&mut self, rec: &Record, engine: &Engine) -> io::Result<()>;
    fn fault(&mut self, fault: &Fault, engine: &Engine) -> io::Result<()>;
}

/// Runs one pass; returns the engine (for what it learned about threads) and
/// the summary. The first write error ends the export.
pub(crate) fn drive<R: Read>(
    reader: &mut TraceReader<R>,
    exporter: &mut impl Exporter,
) -> io::Result<(Engine, Summary)> {
    let mut engine = Engine::new();
    let mut resolved: Vec<Fault> = Vec::new();
    let mut records = 0u64;
    let mut faults = 0u64;
    let mut failed: Option<io::Error> = None;
    let mut step =
        |rec: &Record, engine: &mut Engine, resolved: &mut Vec<Fault>| -> io::Result<()> {
            exporter.record(rec, engine)?;
            engine.push(rec, &mut |f| resolved.push(f));
            for f in resolved.drain(..) {
                faults += 1;
                exporter.fault(&f, engine)?;
            }
            Ok(())
        };
    // `for_each` cannot stop early: after a write error the remaining records
    // are decoded and skipped.
    let mut boundary = Boundary::new(reader.meta());
    let damage = reader.for_each(|rec| {
        let Some(rec) = boundary.admit(rec) else {
            return;
        };
        if failed.is_none() {
            records += 1;
            if let Err(e) = step(&rec, &mut engine, &mut resolved) {
                failed = Some(e);
            }
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    engine.finish(&mut |f| resolved.push(f));
    for f in resolved.drain(..) {
        faults += 1;
        exporter.fault(&f, &engine)?;
    }
    Ok((
        engine,
        Summary {
            records,
            faults,
            damage,
            warnings: boundary.warnings(),
        },
    ))
}

/// The time origin of an export: the recording start from the metadata, or
/// the first record's timestamp when the metadata has none.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin(Option<u64>);

impl Origin {
    pub(crate) fn new(meta: &TraceMeta) -> Self {
        Self((meta.start_ns > 0).then_some(meta.start_ns))
    }

    /// Fixes the origin at the first record when the metadata had none.
    pub(crate) fn observe(&mut self, ts: u64) {
        if self.0.is_none() && ts > 0 {
            self.0 = Some(ts);
        }
    }

    /// ns since the origin (negative for a record before it).
    pub(crate) fn rel(self, ts: u64) -> i128 {
        i128::from(ts) - i128::from(self.0.unwrap_or(0))
    }
}
