//! Per-fault CSV export, streamed: one row per fault as the lifecycle engine
//! resolves it, its columns as [`super::fault_row`] decides them. A cell is
//! empty when the trace does not show that moment, never 0.

use std::fmt::Write as _;
use std::io::{self, Read, Write};

use super::fault_row::{self, Value};
use crate::drive::{self, At, Consumer, Derived, Limits, Origin, Summary};
use crate::engine::lifecycle::Fault;
use crate::engine::network_split::NetworkSplitter;
use uffdscope_trace::record::Record;
use uffdscope_trace::TraceReader;

/// The header row: the names of [`fault_row::COLUMNS`].
pub fn header() -> String {
    let names: Vec<&str> = fault_row::COLUMNS.iter().map(|(name, _)| *name).collect();
    names.join(",")
}

struct Csv<W: Write> {
    out: W,
    line: String,
    /// Takes the network stage of requested faults apart.
    split: NetworkSplitter,
}

/// Appends one cell: empty when the trace does not show the value.
fn cell(line: &mut String, v: &Value<'_>) {
    let _ = match v {
        Value::Int(Some(i)) => write!(line, "{i}"),
        Value::Addr(a) => write!(line, "{a:#x}"),
        Value::Text(Some(t)) => write!(line, "{t}"),
        Value::Flag(Some(b)) => write!(line, "{b}"),
        Value::Float(Some(x)) => write!(line, "{x}"),
        Value::Int(None) | Value::Text(None) | Value::Flag(None) | Value::Float(None) => Ok(()),
    };
}

impl<W: Write> Csv<W> {
    fn row(&mut self, f: &Fault, origin: Origin) -> io::Result<()> {
        let l = &mut self.line;
        l.clear();
        for (i, v) in fault_row::values(f, origin, self.split.split(f))
            .iter()
            .enumerate()
        {
            if i > 0 {
                l.push(',');
            }
            cell(l, v);
        }
        l.push('\n');
        self.out.write_all(l.as_bytes())
    }
}

impl<W: Write> Consumer for Csv<W> {
    type Error = io::Error;

    fn record(&mut self, rec: &Record, _: &Derived, _: At<'_>) -> io::Result<()> {
        self.split.push(rec);
        Ok(())
    }

    fn fault(&mut self, fault: &Fault, at: At<'_>) -> io::Result<()> {
        self.row(fault, at.origin)
    }
}

/// Streams one CSV row per fault of the trace to `out` (wrap it in a
/// `BufWriter`). Damage after the header ends the rows early and is returned
/// in [`Summary::damage`].
pub fn export<R: Read, W: Write>(
    reader: &mut TraceReader<R>,
    out: W,
    limits: Limits,
) -> io::Result<Summary> {
    let mut csv = Csv {
        out,
        line: String::with_capacity(256),
        split: NetworkSplitter::default(),
    };
    csv.out.write_all(header().as_bytes())?;
    csv.out.write_all(b"\n")?;
    let (_, summary) = drive::drive(reader, &mut csv, limits)?;
    csv.out.flush()?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::lifecycle::Resolution;

    #[test]
    fn unknown_moments_are_empty_cells() {
        let mut csv = Csv {
            out: Vec::new(),
            line: String::new(),
            split: NetworkSplitter::default(),
        };
        let f = Fault {
            tid: 7,
            page: 0x7000,
            resolution: Resolution::Background,
            entry_ts: None,
            blocked_ts: 2_000,
            read_ts: None,
            reader_tid: None,
            request_ts: None,
            requester_tid: None,
            already_requested: false,
            place_ts: Some(5_000),
            place_end_ts: Some(5_500),
            woken_ts: 5_400,
            run_ts: Some(6_000),
            resume_ts: None,
            waker_tid: 9,
            place_len: 4096,
        };
        csv.row(&f, Origin::at(1_000)).expect("vec write");
        let row = String::from_utf8(csv.out).expect("utf8");
        assert_eq!(
            row,
            "7,0x7000,background,false,,,9,4096,,1000,,,4000,4500,4400,5000,,,,400,600,,4000,,,,,\n"
        );
        assert_eq!(
            row.trim_end().split(',').count(),
            header().split(',').count(),
            "row and header have the same columns"
        );
    }
}
