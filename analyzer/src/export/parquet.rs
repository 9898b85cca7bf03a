//! Parquet for fleets (`report --format parquet -o DIR`): three tables per
//! trace, meant to be read together with the tables of many other traces
//! as one dataset (DuckDB, Spark, Trino):
//!
//! - `DIR/faults/<run>.parquet`: one row per fault, the columns of the CSV
//!   ([`super::fault_row`]) with their types, streamed in row groups as the
//!   lifecycle engine resolves faults (memory: one row group);
//! - `DIR/threads/<run>.parquet`: the report's thread table;
//! - `DIR/guest_intervals/<run>.parquet`: the report's guest intervals (at
//!   most [`crate::engine::guest::MAX_INTERVALS`] per trace, as the report
//!   keeps them).
//!
//! Every row also carries the run's columns ([`Run`]): `run` (the trace
//! file's SHA-256, which names the files too), `host`, `kernel` and
//! `qemu_version`. Nulls are values the trace does not show, never 0.
//!
//! The report runs on the same pass ([`crate::analysis::analyze_with`]), so
//! the thread and guest tables hold the report's own figures. Files are
//! written under a `.partial` name created exclusively and linked to their
//! final name only when complete; an existing file is never replaced.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::{Compression, LogicalType, Repetition, Type as Physical, ZstdLevel};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;
use sha2::{Digest, Sha256};

use super::fault_row::{self, Kind, Value};
use crate::analysis::{self, Options};
use crate::drive::{At, Consumer, Derived, Summary};
use crate::engine::lifecycle::Fault;
use crate::engine::network_split::NetworkSplitter;
use crate::report::Report;
use uffdscope_trace::record::Record;
use uffdscope_trace::{create_exclusive, TraceMeta, TraceReader};

/// Rows per row group of the faults table.
const ROW_GROUP: usize = 1 << 16;

/// The run a table's rows come from: the columns every row carries.
#[derive(Debug, Clone)]
pub struct Run {
    /// SHA-256 of the trace file, hex: names the run and its files.
    pub id: String,
    pub host: String,
    pub kernel: String,
    pub qemu_version: Option<String>,
}

const RUN_COLUMNS: [(&str, Kind); 4] = [
    ("run", Kind::Text),
    ("host", Kind::Text),
    ("kernel", Kind::Text),
    ("qemu_version", Kind::Text),
];

impl Run {
    /// The run of the trace file at `path` (read once to hash it).
    pub fn of_file(path: &Path, meta: &TraceMeta) -> io::Result<Run> {
        let mut file = File::open(path)?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
        }
        let mut id = String::with_capacity(64);
        for b in hash.finalize() {
            let _ = write!(id, "{b:02x}");
        }
        Ok(Run {
            id,
            host: meta.host.clone(),
            kernel: meta.kernel.clone(),
            qemu_version: meta.qemu_version.clone(),
        })
    }

    fn values(&self) -> [Value<'_>; 4] {
        [
            Value::Text(Some(&self.id)),
            Value::Text(Some(&self.host)),
            Value::Text(Some(&self.kernel)),
            Value::Text(self.qemu_version.as_deref()),
        ]
    }
}

fn parquet_error(e: parquet::errors::ParquetError) -> io::Error {
    io::Error::other(e)
}

/// One column's values of the row group being built; `defined` is the
/// definition level of each row (0: null).
enum Buffer {
    Int(Vec<i64>),
    Text(Vec<ByteArray>),
    Flag(Vec<bool>),
    Float(Vec<f64>),
}

struct Column {
    values: Buffer,
    defined: Vec<i16>,
}

impl Column {
    fn new(kind: Kind) -> Column {
        let values = match kind {
            Kind::Int | Kind::Addr => Buffer::Int(Vec::new()),
            Kind::Text => Buffer::Text(Vec::new()),
            Kind::Flag => Buffer::Flag(Vec::new()),
            Kind::Float => Buffer::Float(Vec::new()),
        };
        Column {
            values,
            defined: Vec::new(),
        }
    }

    /// Adds a value; a null, or a value of another kind (never made: the
    /// columns and values come from one table), is a null.
    fn push(&mut self, v: &Value<'_>) {
        match (&mut self.values, *v) {
            (Buffer::Int(b), Value::Int(Some(i))) => b.push(i),
            // Addresses are unsigned 64-bit: stored as their bits, typed
            // UINT_64 in the schema.
            (Buffer::Int(b), Value::Addr(a)) => b.push(a as i64),
            (Buffer::Text(b), Value::Text(Some(t))) => {
                b.push(ByteArray::from(t.as_bytes().to_vec()));
            }
            (Buffer::Flag(b), Value::Flag(Some(f))) => b.push(f),
            (Buffer::Float(b), Value::Float(Some(x))) => b.push(x),
            _ => {
                self.defined.push(0);
                return;
            }
        }
        self.defined.push(1);
    }

    fn clear(&mut self) {
        self.defined.clear();
        match &mut self.values {
            Buffer::Int(b) => b.clear(),
            Buffer::Text(b) => b.clear(),
            Buffer::Flag(b) => b.clear(),
            Buffer::Float(b) => b.clear(),
        }
    }
}

fn schema(name: &str, columns: &[(&str, Kind)]) -> parquet::errors::Result<Type> {
    let fields = columns
        .iter()
        .map(|(name, kind)| {
            let (physical, logical) = match kind {
                Kind::Int => (Physical::INT64, None),
                Kind::Addr => (Physical::INT64, Some(LogicalType::integer(64, false))),
                Kind::Text => (Physical::BYTE_ARRAY, Some(LogicalType::String)),
                Kind::Flag => (Physical::BOOLEAN, None),
                Kind::Float => (Physical::DOUBLE, None),
            };
            Type::primitive_type_builder(name, physical)
                .with_repetition(Repetition::OPTIONAL)
                .with_logical_type(logical)
                .build()
                .map(Arc::new)
        })
        .collect::<parquet::errors::Result<Vec<_>>>()?;
    Type::group_type_builder(name).with_fields(fields).build()
}

/// A file being written under its partial name: removed when dropped
/// before it is complete.
struct Partial {
    path: PathBuf,
    complete: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.complete {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// One table file being written.
struct Table {
    writer: SerializedFileWriter<File>,
    columns: Vec<Column>,
    rows: usize,
    partial: Partial,
    path: PathBuf,
}

/// The final and the partial path of `table` for `run` under `dir`.
fn table_paths(dir: &Path, table: &str, run: &Run) -> (PathBuf, PathBuf) {
    let folder = dir.join(table);
    (
        folder.join(format!("{}.parquet", run.id)),
        folder.join(format!("{}.parquet.partial", run.id)),
    )
}

impl Table {
    fn create(dir: &Path, table: &str, run: &Run, columns: &[(&str, Kind)]) -> io::Result<Table> {
        let (path, partial) = table_paths(dir, table, run);
        std::fs::create_dir_all(dir.join(table))?;
        let file = create_exclusive(&partial).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot create {} ({e}): another export of this trace is running, or one failed; remove the file",
                    partial.display()
                ),
            )
        })?;
        let all: Vec<(&str, Kind)> = columns.iter().chain(&RUN_COLUMNS).copied().collect();
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_created_by(concat!("uffdscope ", env!("CARGO_PKG_VERSION")).to_owned())
            .build();
        let schema = Arc::new(schema(table, &all).map_err(parquet_error)?);
        let writer =
            SerializedFileWriter::new(file, schema, Arc::new(props)).map_err(parquet_error)?;
        Ok(Table {
            writer,
            columns: all.iter().map(|(_, kind)| Column::new(*kind)).collect(),
            rows: 0,
            partial: Partial {
                path: partial,
                complete: false,
            },
            path,
        })
    }

    /// Adds a row: the table's values, then the run's.
    fn push(&mut self, row: &[Value<'_>], run: &Run) -> io::Result<()> {
        for (column, v) in self.columns.iter_mut().zip(row.iter().chain(&run.values())) {
            column.push(v);
        }
        self.rows += 1;
        if self.rows == ROW_GROUP {
            self.write_group()?;
        }
        Ok(())
    }

    fn write_group(&mut self) -> io::Result<()> {
        if self.rows == 0 {
            return Ok(());
        }
        let mut group = self.writer.next_row_group().map_err(parquet_error)?;
        for column in &mut self.columns {
            let Some(mut out) = group.next_column().map_err(parquet_error)? else {
                break;
            };
            let def = Some(column.defined.as_slice());
            let written = match &column.values {
                Buffer::Int(v) => out.typed::<Int64Type>().write_batch(v, def, None),
                Buffer::Text(v) => out.typed::<ByteArrayType>().write_batch(v, def, None),
                Buffer::Flag(v) => out.typed::<BoolType>().write_batch(v, def, None),
                Buffer::Float(v) => out.typed::<DoubleType>().write_batch(v, def, None),
            };
            written.map_err(parquet_error)?;
            out.close().map_err(parquet_error)?;
            column.clear();
        }
        group.close().map_err(parquet_error)?;
        self.rows = 0;
        Ok(())
    }

    /// Writes the last row group and the footer, and gives the file its
    /// final name (never replacing one).
    fn finish(mut self) -> io::Result<PathBuf> {
        self.write_group()?;
        self.writer.close().map_err(parquet_error)?;
        std::fs::hard_link(&self.partial.path, &self.path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot name {} ({e}): it must not exist",
                    self.path.display()
                ),
            )
        })?;
        self.partial.complete = true;
        std::fs::remove_file(&self.partial.path)?;
        Ok(self.path)
    }
}

/// The faults table's consumer of the pass.
struct Faults<'a> {
    table: Table,
    run: &'a Run,
    split: NetworkSplitter,
}

impl Consumer for Faults<'_> {
    type Error = io::Error;

    fn record(&mut self, rec: &Record, _: &Derived, _: At<'_>) -> io::Result<()> {
        self.split.push(rec);
        Ok(())
    }

    fn fault(&mut self, f: &Fault, at: At<'_>) -> io::Result<()> {
        let row = fault_row::values(f, at.origin, self.split.split(f));
        self.table.push(&row, self.run)
    }
}

const THREAD_COLUMNS: [(&str, Kind); 12] = [
    ("tid", Kind::Int),
    ("name", Kind::Text),
    ("role", Kind::Text),
    ("faults", Kind::Int),
    ("blocked_ms", Kind::Float),
    ("service_p50_us", Kind::Float),
    ("service_p99_us", Kind::Float),
    ("uffd_reads", Kind::Int),
    ("placements", Kind::Int),
    ("cpu_ms", Kind::Float),
    ("context_switches", Kind::Int),
    ("page_faults", Kind::Int),
];

fn count(n: u64) -> Value<'static> {
    Value::Int(i64::try_from(n).ok())
}

fn write_threads(report: &Report, dir: &Path, run: &Run) -> io::Result<PathBuf> {
    let mut table = Table::create(dir, "threads", run, &THREAD_COLUMNS)?;
    for t in &report.threads {
        let row = [
            Value::Int(Some(i64::from(t.tid))),
            Value::Text(t.name.as_deref()),
            Value::Text(Some(t.role.as_str())),
            count(t.faults),
            Value::Float(Some(t.blocked_ms)),
            Value::Float(t.service_p50_us),
            Value::Float(t.service_p99_us),
            Value::Int(t.uffd_reads.and_then(|n| i64::try_from(n).ok())),
            Value::Int(t.placements.and_then(|n| i64::try_from(n).ok())),
            Value::Float(t.cpu_ms),
            Value::Int(t.context_switches.and_then(|n| i64::try_from(n).ok())),
            Value::Int(t.page_faults.and_then(|n| i64::try_from(n).ok())),
        ];
        table.push(&row, run)?;
    }
    table.finish()
}

const GUEST_COLUMNS: [(&str, Kind); 5] = [
    ("start_s", Kind::Float),
    ("dur_ms", Kind::Float),
    ("wall_ms", Kind::Float),
    ("vcpu_tid", Kind::Int),
    ("spike", Kind::Flag),
];

fn write_guest(report: &Report, dir: &Path, run: &Run) -> io::Result<PathBuf> {
    let mut table = Table::create(dir, "guest_intervals", run, &GUEST_COLUMNS)?;
    for g in report.guest.iter().flat_map(|s| &s.intervals) {
        let row = [
            Value::Float(Some(g.start_s)),
            Value::Float(Some(g.dur_ms)),
            Value::Float(Some(g.wall_ms)),
            Value::Int(g.vcpu_tid.map(i64::from)),
            Value::Flag(Some(g.spike)),
        ];
        table.push(&row, run)?;
    }
    table.finish()
}

/// What an export wrote.
#[derive(Debug)]
pub struct Exported {
    pub summary: Summary,
    /// The report of the same pass.
    pub report: Report,
    /// The files, in table order (faults, threads, guest intervals).
    pub files: Vec<PathBuf>,
}

/// Writes the three tables of the trace `reader` reads (run `run`, whose
/// file is `path`) under `dir`, created if absent. Fails before reading
/// when a table of this run is already there.
pub fn export<R: Read>(
    reader: &mut TraceReader<R>,
    path: &str,
    run: &Run,
    dir: &Path,
    opts: &Options,
) -> io::Result<Exported> {
    for table in ["faults", "threads", "guest_intervals"] {
        let (done, _) = table_paths(dir, table, run);
        if done.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists: this trace (run {}) is already exported there",
                    done.display(),
                    run.id
                ),
            ));
        }
    }
    let mut faults = Faults {
        table: Table::create(dir, "faults", run, &fault_row::COLUMNS)?,
        run,
        split: NetworkSplitter::default(),
    };
    let (report, summary) = analysis::analyze_with(reader, path, opts, &mut faults)?;
    let files = vec![
        faults.table.finish()?,
        write_threads(&report, dir, run)?,
        write_guest(&report, dir, run)?,
    ];
    Ok(Exported {
        summary,
        report,
        files,
    })
}
