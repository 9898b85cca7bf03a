//! The `uffdscope` command line: parses arguments and calls the crates.
//!
//! Exit codes: 0 success, 1 usage error, 2 unreadable or damaged input,
//! 3 recording could not start or failed, or `check` found a blocker,
//! 4 report written but the trace is incomplete (no end note: the recording
//! was cut) or `--max-events` stopped the pass.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use uffdscope_analyzer::analysis::{self, Options};
use uffdscope_analyzer::drive::Limits;
use uffdscope_analyzer::inputs::guest_log;
use uffdscope_analyzer::{compare, render};
use uffdscope_trace::create_exclusive;
use uffdscope_trace::{TraceError, TraceReader};

const EXAMPLES: &str = "\
Examples:
  # Report the committed real trace (QEMU 7.2 post-copy, recorded with QMP and console)
  uffdscope report fixtures/data/qemu-7.2-tcg-postcopy-1vcpu.trace

  # JSON for scripts, markdown for a bug report
  uffdscope report run.trace --format json > run.json
  uffdscope report run.trace --format markdown -o report.md

  # Correlate with a guest log captured elsewhere (guest clock 1.5 s ahead)
  uffdscope report run.trace --guest-log stress.log --guest-offset 1500

  # Record the destination QEMU of a migration (as root), with QMP and console
  sudo uffdscope record --qemu dst --qmp /run/dst.qmp --guest-console /run/dst.serial -o run.trace

  # The cheapest recording: no system-call tracepoints (service latency, blocked time)
  sudo uffdscope record --qemu dst --detail minimal -o run.trace

  # The source QEMU of the same migration, for `report --source`
  sudo uffdscope record --qemu src --side source -o source.trace

  # Can this host record at all?
  uffdscope check

  # Two runs side by side (ratios and deltas against the first)
  uffdscope compare off.trace on.trace --label preempt-off --label preempt-on

  # Shrink a trace before attaching it to a bug report (same report, fewer records)
  uffdscope lean run.trace -o run.lean.trace

  # Both ends of the migration: the network stage split at the source (clocks aligned
  # from the messages; --source-offset-us sets the source-minus-destination offset by hand)
  uffdscope report dest.trace --source source.trace
  uffdscope report dest.trace --source source.trace --source-offset-us -1500

  # Per-stage latency histograms per second, for HdrHistogram's tools
  uffdscope report run.trace --format hlog -o run.hlog

  # Shell completions and the man page
  uffdscope completions bash > /etc/bash_completion.d/uffdscope
  uffdscope man > uffdscope.1

Exit codes:
  0  success
  1  usage error
  2  unreadable or damaged input (a damaged trace is still reported up to its last good frame),
     or the traces' sides are swapped (--source takes the source's trace)
  3  recording could not start or failed, or `check` found a blocker
  4  report written, but the trace is incomplete: it has no end note (the recording was
     cut), or the pass stopped at --max-events
";

#[derive(Parser, Debug)]
#[command(
    name = "uffdscope",
    version,
    about = "Explain QEMU post-copy live-migration latency: where each userfaultfd fault's time went",
    after_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Analyze a trace and print a report (never needs root).
    #[command(after_help = EXAMPLES)]
    Report(ReportArgs),
    /// Record a running QEMU (or any userfaultfd user) with eBPF; needs root.
    #[cfg(target_os = "linux")]
    #[command(after_help = EXAMPLES)]
    Record(RecordArgs),
    /// Check whether this host can record, and what would be measured.
    #[cfg(target_os = "linux")]
    Check,
    /// Compare the reports of several traces side by side, against the first.
    #[command(after_help = EXAMPLES)]
    Compare(CompareArgs),
    /// Shrink a trace for a bug report: count background placements in
    /// 10 ms bins, as the recorder does in the kernel (the report is the same).
    Lean(LeanArgs),
    /// Print a shell completion script (e.g. `uffdscope completions bash`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to standard output.
    Man,
}

#[cfg(target_os = "linux")]
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["pid", "qemu"])))]
struct RecordArgs {
    /// The process to trace: a migration's destination QEMU, or its source
    /// (see --side).
    #[arg(long)]
    pid: Option<u32>,
    /// Find the QEMU started with `-name NAME` instead of giving a pid.
    #[arg(long, value_name = "NAME")]
    qemu: Option<String>,
    /// Output trace file; must not exist (default: ./uffdscope-PID-DATE.trace).
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// Stop after this many seconds (default: until Ctrl-C or the target exits).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// QMP socket of the target QEMU: sample migration status and blocktime.
    #[arg(long, value_name = "SOCKET")]
    qmp: Option<PathBuf>,
    /// Guest serial console (log file or unix socket) to stamp with host time.
    #[arg(long, value_name = "PATH")]
    guest_console: Option<PathBuf>,
    /// Ring buffer size in MiB (a power of two).
    #[arg(long, default_value_t = 16, value_name = "MIB")]
    ring_mb: u32,
    /// No live status line.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Create this (new, empty) file once recording has started, for scripts
    /// that must not start the migration before the recorder is attached.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
    /// What to attach and record. `standard` (the default) gives every
    /// report section and counts background placements in the kernel (per
    /// thread, 10 ms bins); `full` also records every placement one by one;
    /// `minimal` attaches no system-call or socket tracepoint at all (no
    /// host-wide syscall slow path) and gives service latency, blocked time,
    /// the placing ioctl and blocktime, but no stages before the placement,
    /// no requests and no network.
    #[arg(long, value_enum, default_value = "standard", value_name = "LEVEL")]
    detail: DetailArg,
    /// Same as `--detail standard` (the default since format 4).
    #[arg(long, hide = true, conflicts_with = "detail")]
    lean: bool,
    /// Serve live Prometheus metrics at http://ADDR/metrics while recording
    /// (e.g. 127.0.0.1:9464; loopback only unless --metrics-allow-remote).
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_addr)]
    metrics: Option<std::net::SocketAddr>,
    /// Allow --metrics on an address beyond loopback (the endpoint has no
    /// authentication).
    #[arg(long, requires = "metrics")]
    metrics_allow_remote: bool,
    /// Which end of the migration the target is: `auto` decides from its
    /// threads, userfaultfd and command line and says why.
    #[arg(long, value_enum, default_value_t = SideArg::Auto)]
    side: SideArg,
}

/// `record --side`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum SideArg {
    /// The source when the target has no userfaultfd and runs (or, being a
    /// QEMU without -incoming, will run) a migration thread; else the destination.
    Auto,
    /// The migration source: return-path receives and page sends.
    Source,
    /// The migration destination: faults, requests and placements.
    Destination,
}

/// `--metrics`: an IP address and port.
#[cfg(target_os = "linux")]
fn parse_metrics_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("expected IP:PORT, e.g. 127.0.0.1:9464 (or [::1]:9464), not {s:?}"))
}

/// `record --detail`.
#[cfg(target_os = "linux")]
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum DetailArg {
    /// No system-call or socket tracepoints: service latency, blocked time,
    /// the placing ioctl, blocktime.
    Minimal,
    /// Every report section; background placements counted in the kernel.
    Standard,
    /// Everything, every placement recorded.
    Full,
}

#[cfg(target_os = "linux")]
impl From<DetailArg> for uffdscope_trace::record::Detail {
    fn from(d: DetailArg) -> Self {
        use uffdscope_trace::record::Detail;
        match d {
            DetailArg::Minimal => Detail::Minimal,
            DetailArg::Standard => Detail::Standard,
            DetailArg::Full => Detail::Full,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Default)]
enum Format {
    /// Human-readable terminal report.
    #[default]
    Text,
    /// The stable `uffdscope.report/1` JSON object.
    Json,
    /// A compact GitHub-flavoured markdown summary to paste into a bug.
    Markdown,
    /// One self-contained HTML file with plots (no external resources).
    Html,
    /// Perfetto's native protobuf trace (TrackEvent) for ui.perfetto.dev
    /// (streamed; binary: give -o).
    Perfetto,
    /// The same timeline as Chrome Trace Event JSON (ui.perfetto.dev,
    /// chrome://tracing; streamed).
    PerfettoJson,
    /// One CSV row per fault with its timestamps and stages (streamed).
    Csv,
    /// HdrHistogram interval log: per-stage and service latency histograms
    /// per interval, in ns (streamed).
    Hlog,
    /// Parquet tables for a fleet dataset: -o DIR gets faults/, threads/ and
    /// guest_intervals/, one file per trace named by its SHA-256.
    Parquet,
}

#[derive(clap::Args, Debug)]
struct ReportArgs {
    /// The trace file written by `uffdscope record` (a pipe works; `-` reads
    /// standard input).
    trace: PathBuf,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Write to this file (must not exist) instead of stdout; for parquet, the
    /// dataset directory (created if absent; existing files are kept).
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// A guest log (guestperf lines, `epoch_ms value_ms` lines or JSON lines)
    /// captured outside the trace.
    #[arg(long)]
    guest_log: Option<PathBuf>,
    /// Guest clock minus host realtime clock, in ms (otherwise estimated).
    #[arg(long, allow_hyphen_values = true, value_parser = finite_ms)]
    guest_offset: Option<f64>,
    /// Read at most this many trace records (default: 16 per byte of the
    /// trace file, at least 1000000; recorded traces hold under 1 per byte;
    /// 100000000 for standard input or a pipe, whose size is unknown).
    /// A tiny, very compressible trace can decode to far more records than
    /// its size suggests; past the bound the output is written and exit code
    /// is 4.
    #[arg(long, value_name = "N")]
    max_events: Option<u64>,
    /// Interval length of `--format hlog`, in seconds (default 1).
    #[arg(long, value_name = "SECS", value_parser = interval_secs)]
    interval: Option<std::time::Duration>,
    /// The trace of the same migration recorded on the source (`record
    /// --side source`): splits each requested fault's network stage into
    /// to_source, at_source and from_source (text, json, markdown, html).
    #[arg(long, value_name = "TRACE")]
    source: Option<PathBuf>,
    /// Source clock minus destination clock, in µs, instead of the estimate
    /// from the messages (e.g. when the hosts' PTP says so).
    #[arg(long, requires = "source", allow_hyphen_values = true, value_name = "US", value_parser = finite_us)]
    source_offset_us: Option<f64>,
}

/// The output formats of `compare`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Default)]
enum CompareFormat {
    /// Human-readable terminal tables.
    #[default]
    Text,
    /// The `uffdscope.compare/1` JSON object.
    Json,
    /// GitHub-flavoured markdown tables.
    Markdown,
}

#[derive(clap::Args, Debug)]
struct CompareArgs {
    /// The traces, baseline first (at least two).
    #[arg(required = true, num_args = 2.., value_name = "TRACE")]
    traces: Vec<PathBuf>,
    /// A name for each trace, in the same order (default: the file names).
    #[arg(long, value_name = "NAME")]
    label: Vec<String>,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = CompareFormat::Text)]
    format: CompareFormat,
    /// Write to this file (must not exist) instead of stdout.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
}

impl ReportArgs {
    /// `--max-events`, or the default for the size of the trace file (a
    /// pipe's size is 0: unknown, not empty).
    fn limits(&self) -> Limits {
        limits(&self.trace, self.max_events)
    }
}

/// `--max-events`, or the default for the size of the trace at `path` (a
/// pipe's size is 0: unknown, not empty).
fn limits(path: &Path, max_events: Option<u64>) -> Limits {
    let file_len = std::fs::metadata(path)
        .ok()
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len());
    match (max_events, file_len) {
        (Some(n), _) => Limits { max_records: n },
        (None, Some(len)) => Limits::for_file_size(len),
        (None, None) => Limits::UNSIZED,
    }
}

/// Exit code 4: the output is written but covers only part of the trace.
const INCOMPLETE: u8 = 4;

/// Says on stderr why the output covers only part of the trace, if it does,
/// and gives the exit code for it.
fn incomplete_exit(
    trace: &std::path::Path,
    stopped_at_limit: Option<u64>,
    complete: bool,
) -> ExitCode {
    if let Some(n) = stopped_at_limit {
        eprintln!(
            "uffdscope: {}: stopped after {n} records (--max-events {n}); raise --max-events to read the whole trace",
            trace.display()
        );
        ExitCode::from(INCOMPLETE)
    } else if !complete {
        eprintln!(
            "uffdscope: {}: the trace has no end note: the recording was cut; reported what it holds",
            trace.display()
        );
        ExitCode::from(INCOMPLETE)
    } else {
        ExitCode::SUCCESS
    }
}

#[derive(clap::Args, Debug)]
struct LeanArgs {
    /// The trace to shrink.
    trace: PathBuf,
    /// Output trace file; must not exist.
    #[arg(long, short = 'o')]
    output: PathBuf,
}

/// `uffdscope lean`: writes the lean trace and says what it saved.
fn lean(args: &LeanArgs) -> anyhow::Result<ExitCode> {
    use uffdscope_trace::lean::{lean_file, LeanError};
    let done = match lean_file(&args.trace, &args.output) {
        Ok(done) => done,
        Err(e @ LeanError::Input { .. }) => return Err(InputError(e.to_string()).into()),
        Err(e) => return Err(e.into()),
    };
    eprintln!(
        "uffdscope: {}: {} records → {} ({} placements counted in {} bins), {} bytes",
        args.output.display(),
        done.records_in,
        done.records_out,
        done.stats.counted,
        done.stats.bins,
        done.bytes_out
    );
    if let Some(damage) = done.damage {
        eprintln!(
            "uffdscope: {} is damaged ({damage}); its good part was written",
            args.trace.display()
        );
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

/// `--interval`: a number of seconds between 1 ms and an hour.
fn interval_secs(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|e| format!("{e}: give a number of seconds, e.g. 1 or 0.1"))?;
    std::time::Duration::try_from_secs_f64(secs)
        .map_err(|e| e.to_string())
        .and_then(|d| uffdscope_analyzer::export::hlog::interval(d).map_err(|e| e.to_string()))
}

/// Errors that map to exit code 2 (input problems).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct InputError(String);

/// `--guest-offset`: a finite number of ms.
fn finite_ms(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => Err(format!(
            "{v} is not a finite number of milliseconds (give e.g. 1500 or -250)"
        )),
        Err(e) => Err(format!(
            "{e}: give a number of milliseconds, e.g. 1500 or -250"
        )),
    }
}

/// `--source-offset-us`: a finite number of µs.
fn finite_us(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of microseconds (give e.g. 1500 or -250.5)"
        )),
    }
}

/// Reads the source trace of `--source`, after checking that the
/// destination trace is not one.
fn read_source(
    args: &ReportArgs,
    path: &Path,
    dest: &uffdscope_trace::TraceMeta,
) -> Result<analysis::SourceInput, InputError> {
    use uffdscope_analyzer::engine::both_ends::source::SourceIndex;
    use uffdscope_trace::record::Side;
    if dest.side == Some(Side::Source) {
        return Err(InputError(format!(
            "{} was recorded on the source (its metadata says side source): give the destination's trace first and the source's with --source",
            args.trace.display()
        )));
    }
    let shown = path.display().to_string();
    let reader = open_trace(path)?;
    let index = SourceIndex::read(reader, &shown, limits(path, args.max_events))
        .map_err(|e| InputError(e.to_string()))?;
    Ok(analysis::SourceInput {
        path: shown,
        index: std::sync::Arc::new(index),
        offset_us: args.source_offset_us,
    })
}

/// Opens the trace at `path` (a file or a pipe), or standard input for `-`.
fn open_trace(path: &Path) -> Result<TraceReader<Box<dyn Read>>, InputError> {
    let opened = if path.as_os_str() == "-" {
        let stdin: Box<dyn Read> = Box::new(std::io::BufReader::new(std::io::stdin()));
        TraceReader::new(stdin)
    } else {
        std::fs::File::open(path)
            .and_then(|f| Ok((f.metadata()?, f)))
            .map_err(|source| TraceError::Open {
                path: path.to_path_buf(),
                source,
            })
            .and_then(|(meta, file)| {
                let input: Box<dyn Read> =
                    Box::new(std::io::BufReader::with_capacity(1 << 16, file));
                // A pipe's size is 0: unknown, not empty.
                TraceReader::with_len(input, meta.is_file().then_some(meta.len()))
            })
    };
    opened.map_err(|e| InputError(trace_error_message(path, &e)))
}

/// A trace that cannot be read, said with what to do about it.
fn trace_error_message(path: &Path, e: &TraceError) -> String {
    let shown = if path.as_os_str() == "-" {
        "standard input".to_owned()
    } else {
        path.display().to_string()
    };
    let empty = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0);
    match e {
        TraceError::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            format!("{shown} does not exist: check the path (`uffdscope record -o FILE` writes traces)")
        }
        TraceError::Open { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            format!("cannot read {shown}: permission denied; traces are written mode 0600 by the recording user (root?): read it as that user or `chown` it")
        }
        TraceError::Open { source, .. } => format!("cannot open {shown}: {source}"),
        _ if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) => {
            format!("{shown} is a directory: give the trace file inside it")
        }
        TraceError::TruncatedHeader if empty => format!(
            "{shown} is empty: the recording wrote nothing (stopped before it started?); record again"
        ),
        TraceError::TruncatedHeader if path.as_os_str() == "-" => format!(
            "{shown} is empty or ends inside the trace header: pipe a whole trace in (`uffdscope report - < run.trace`)"
        ),
        TraceError::TruncatedHeader => format!(
            "{shown} ends inside the trace header: it is not a whole trace (copied while the recording started?); copy it again"
        ),
        _ => format!("{shown}: {e}"),
    }
}

/// Reads a guest log, streaming: its size does not matter, only its lines.
fn read_guest_log(
    path: &Path,
    keep_from_ms: Option<f64>,
) -> Result<guest_log::GuestLog, InputError> {
    let file = std::fs::File::open(path).map_err(|e| {
        let fix = match e.kind() {
            std::io::ErrorKind::NotFound => "check the path",
            std::io::ErrorKind::PermissionDenied => "check its permissions",
            _ => "give a readable text file",
        };
        InputError(format!(
            "cannot read guest log {}: {e}: {fix}",
            path.display()
        ))
    })?;
    guest_log::read(
        std::io::BufReader::with_capacity(1 << 16, file),
        keep_from_ms,
    )
    .map_err(|e| {
        InputError(format!(
            "cannot read guest log {}: {e}: give a readable text file",
            path.display()
        ))
    })
}

/// The analysis options of `report` (a guest log is read here).
fn report_options(args: &ReportArgs, meta: &uffdscope_trace::TraceMeta) -> anyhow::Result<Options> {
    let guest_log = match &args.guest_log {
        Some(p) => {
            let from =
                guest_log::keep_from_ms(meta.start_ns, meta.realtime_offset_ns, args.guest_offset);
            Some(read_guest_log(p, from)?)
        }
        None => None,
    };
    let source = match &args.source {
        Some(path) => Some(read_source(args, path, meta)?),
        None => None,
    };
    Ok(Options {
        guest_log,
        guest_offset_ms: args.guest_offset,
        limits: args.limits(),
        source,
    })
}

fn report(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    if args.interval.is_some() && args.format != Format::Hlog {
        eprintln!("uffdscope: note: --interval applies to --format hlog only");
    }
    if args.format == Format::Parquet {
        return parquet_export(args);
    }
    if matches!(
        args.format,
        Format::Perfetto | Format::PerfettoJson | Format::Csv | Format::Hlog
    ) {
        return stream_export(args);
    }
    let reader = open_trace(&args.trace)?;
    let opts = report_options(args, reader.meta())?;
    let report = analysis::analyze(reader, &args.trace.display().to_string(), &opts);
    let body = match args.format {
        Format::Text => uffdscope_analyzer::render::text::render_text(&report),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&report).context("serializing the report")?;
            s.push('\n');
            s
        }
        Format::Markdown => uffdscope_analyzer::render::markdown::render_markdown(&report),
        Format::Html => uffdscope_analyzer::render::html::render_html(&report),
        Format::Perfetto | Format::PerfettoJson | Format::Csv | Format::Hlog => {
            unreachable!("streamed by stream_export")
        }
        Format::Parquet => unreachable!("written by parquet_export"),
    };
    write_output(args.output.as_deref(), &body)?;
    if let Some(damage) = &report.trace.damage {
        eprintln!(
            "uffdscope: {}: damaged trace, reported the good part: {damage}",
            args.trace.display()
        );
        return Ok(ExitCode::from(2));
    }
    let t = &report.trace;
    Ok(incomplete_exit(&args.trace, t.stopped_at_limit, t.complete))
}

/// Writes `body` to a new file at `output`, or to stdout.
fn write_output(output: Option<&Path>, body: &str) -> anyhow::Result<()> {
    match output {
        Some(path) => {
            let mut f = create_exclusive(path)
                .with_context(|| format!("cannot create {} (it must not exist)", path.display()))?;
            f.write_all(body.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        None => {
            let mut out = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error worth a message.
            let _ = out.write_all(body.as_bytes());
        }
    }
    Ok(())
}

/// Parquet support was left out of this build.
#[cfg(not(feature = "parquet"))]
fn parquet_export(_: &ReportArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "this uffdscope was built without Parquet support: rebuild with the default features (cargo feature `parquet`)"
    )
}

/// The Parquet tables of one trace into a dataset directory.
#[cfg(feature = "parquet")]
fn parquet_export(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    use uffdscope_analyzer::export::parquet;
    let Some(dir) = &args.output else {
        anyhow::bail!("--format parquet writes a dataset directory: give it with -o DIR");
    };
    let is_file = std::fs::metadata(&args.trace).is_ok_and(|m| m.is_file());
    if !is_file {
        anyhow::bail!(
            "{}: --format parquet needs a trace file (its SHA-256 names the run); save standard input or the pipe to a file first",
            args.trace.display()
        );
    }
    let mut reader = open_trace(&args.trace)?;
    let run = parquet::Run::of_file(&args.trace, reader.meta())
        .with_context(|| format!("hashing {}", args.trace.display()))?;
    let opts = report_options(args, reader.meta())?;
    let shown = args.trace.display().to_string();
    let exported = parquet::export(&mut reader, &shown, &run, dir, &opts)
        .with_context(|| format!("writing the Parquet tables under {}", dir.display()))?;
    for file in &exported.files {
        println!("{}", file.display());
    }
    for w in &exported.summary.warnings {
        eprintln!("uffdscope: {shown}: {w}");
    }
    if let Some(damage) = &exported.summary.damage {
        eprintln!("uffdscope: {shown}: damaged trace, exported the good part: {damage}");
        return Ok(ExitCode::from(2));
    }
    let s = &exported.summary;
    Ok(incomplete_exit(&args.trace, s.stopped_at_limit, s.complete))
}

/// The streamed exports (perfetto, csv, hlog): one pass over the trace, written as
/// faults resolve, so memory does not grow with the trace.
fn stream_export(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    if args.guest_log.is_some() || args.guest_offset.is_some() {
        eprintln!(
            "uffdscope: note: --guest-log and --guest-offset apply to the text, json, markdown and html reports; this export uses the guest lines recorded in the trace"
        );
    }
    if args.source.is_some() {
        eprintln!(
            "uffdscope: note: --source applies to the text, json, markdown and html reports (the sub-stages are known only once the whole trace is read, after this export has streamed its faults)"
        );
    }
    let mut reader = open_trace(&args.trace)?;
    let (out, dest): (Box<dyn Write>, String) = match &args.output {
        Some(path) => (
            Box::new(create_exclusive(path).with_context(|| {
                format!("cannot create {} (it must not exist)", path.display())
            })?),
            path.display().to_string(),
        ),
        None => (Box::new(std::io::stdout().lock()), "stdout".to_owned()),
    };
    let out = std::io::BufWriter::with_capacity(1 << 16, out);
    let result = match args.format {
        Format::Perfetto => {
            uffdscope_analyzer::export::perfetto::export_protobuf(&mut reader, out, args.limits())
        }
        Format::PerfettoJson => {
            uffdscope_analyzer::export::perfetto::export_json(&mut reader, out, args.limits())
        }
        Format::Hlog => uffdscope_analyzer::export::hlog::export(
            &mut reader,
            out,
            args.interval
                .unwrap_or(uffdscope_analyzer::export::hlog::DEFAULT_INTERVAL),
            args.limits(),
        ),
        _ => uffdscope_analyzer::export::csv::export(&mut reader, out, args.limits()),
    };
    let summary = match result {
        Ok(s) => s,
        // A closed pipe (`| head`) is not an error worth a message.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe && args.output.is_none() => {
            return Ok(ExitCode::SUCCESS)
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("writing {dest}"))),
    };
    for w in &summary.warnings {
        eprintln!("uffdscope: {}: {w}", args.trace.display());
    }
    if let Some(damage) = &summary.damage {
        eprintln!(
            "uffdscope: {}: damaged trace, exported the good part: {damage}",
            args.trace.display()
        );
        return Ok(ExitCode::from(2));
    }
    Ok(incomplete_exit(
        &args.trace,
        summary.stopped_at_limit,
        summary.complete,
    ))
}

/// Traces from this size on get a progress line on stderr.
const LARGE_TRACE_BYTES: u64 = 64 << 20;

/// `compare`: each trace's report, read one after the other, then the
/// comparison. Exit codes as for `report`: 2 when a trace cannot be read
/// or is damaged, 4 when one is incomplete.
fn compare(args: &CompareArgs) -> anyhow::Result<ExitCode> {
    let labels = compare_labels(args)?;
    let mut reports = Vec::with_capacity(args.traces.len());
    for (i, path) in args.traces.iter().enumerate() {
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        if size >= LARGE_TRACE_BYTES {
            eprintln!(
                "uffdscope: reading {} ({} MiB, trace {} of {})",
                path.display(),
                size >> 20,
                i + 1,
                args.traces.len()
            );
        }
        let reader = open_trace(path)?;
        let opts = Options {
            limits: limits(path, None),
            ..Options::default()
        };
        reports.push(analysis::analyze(
            reader,
            &path.display().to_string(),
            &opts,
        ));
    }
    let runs: Vec<compare::Run<'_>> = labels
        .into_iter()
        .zip(&reports)
        .map(|(label, report)| compare::Run { label, report })
        .collect();
    let comparison = compare::compare(&runs);
    let body = match args.format {
        CompareFormat::Text => render::compare::render_text(&comparison),
        CompareFormat::Markdown => render::compare::render_markdown(&comparison),
        CompareFormat::Json => {
            let mut s =
                serde_json::to_string_pretty(&comparison).context("serializing the comparison")?;
            s.push('\n');
            s
        }
    };
    write_output(args.output.as_deref(), &body)?;
    let mut code = ExitCode::SUCCESS;
    for (path, report) in args.traces.iter().zip(&reports) {
        let t = &report.trace;
        if let Some(damage) = &t.damage {
            eprintln!(
                "uffdscope: {}: damaged trace, compared the good part: {damage}",
                path.display()
            );
            code = ExitCode::from(2);
        } else if incomplete_exit(path, t.stopped_at_limit, t.complete) != ExitCode::SUCCESS
            && code == ExitCode::SUCCESS
        {
            code = ExitCode::from(INCOMPLETE);
        }
    }
    Ok(code)
}

/// `--label`s, one per trace, or the file names (made unique with `#N`).
fn compare_labels(args: &CompareArgs) -> anyhow::Result<Vec<String>> {
    if !args.label.is_empty() {
        anyhow::ensure!(
            args.label.len() == args.traces.len(),
            "{} labels for {} traces: give one --label per trace, in the same order, or none",
            args.label.len(),
            args.traces.len()
        );
        return Ok(args.label.clone());
    }
    let names: Vec<String> = args
        .traces
        .iter()
        .map(|path| {
            path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        })
        .collect();
    Ok(names
        .iter()
        .enumerate()
        .map(
            |(i, name)| match names[..i].iter().filter(|n| *n == name).count() {
                0 => name.clone(),
                taken => format!("{name}#{}", taken + 1),
            },
        )
        .collect())
}

/// `man`: the man page of the whole command line, generated from clap.
fn man() -> anyhow::Result<ExitCode> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .context("rendering the man page")?;
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = out.write_all(&page);
    Ok(ExitCode::SUCCESS)
}

/// Errors that map to exit code 3 (recording failed).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct RecordFailed(String);

#[cfg(target_os = "linux")]
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(target_os = "linux")]
extern "C" fn on_signal(_: i32) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// A usage error (exit code 1) or a recording that could not start (3).
#[cfg(target_os = "linux")]
fn record_error(e: uffdscope_tracer::session::RecordError) -> anyhow::Error {
    if e.is_usage() {
        anyhow::Error::new(e)
    } else {
        RecordFailed(e.to_string()).into()
    }
}

#[cfg(target_os = "linux")]
fn record(args: &RecordArgs) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    use uffdscope_trace::record::Side;
    use uffdscope_tracer::{discover, session};

    let pid = match (args.pid, &args.qemu) {
        (Some(pid), _) => pid,
        (None, Some(name)) => discover::find_qemu(name).map_err(|e| RecordFailed(e.to_string()))?,
        (None, None) => unreachable!("clap requires --pid or --qemu"),
    };
    let duration = args
        .duration
        .map(session::duration_from_secs)
        .transpose()
        .map_err(record_error)?;
    let cfg = session::RecordConfig {
        pid,
        output: args
            .output
            .clone()
            .unwrap_or_else(|| session::default_output(pid)),
        duration,
        qmp: args.qmp.clone(),
        guest_console: args.guest_console.clone(),
        ring_bytes: u64::from(args.ring_mb) << 20,
        ready_file: args.ready_file.clone(),
        detail: args.detail.into(),
        side: match args.side {
            SideArg::Auto => None,
            SideArg::Source => Some(Side::Source),
            SideArg::Destination => Some(Side::Destination),
        },
        ..session::RecordConfig::default()
    };
    install_stop_handlers()?;
    let preflight = cfg.preflight().map_err(record_error)?;
    let mut cfg = cfg;
    cfg.side = Some(preflight.side.side);
    eprintln!(
        "uffdscope: recording the {} end of the migration: {}",
        match preflight.side.side {
            Side::Source => "source",
            Side::Destination => "destination",
        },
        preflight.side.why
    );
    for warning in &preflight.warnings {
        eprintln!("uffdscope: {warning}");
    }
    let metrics = args
        .metrics
        .map(|addr| {
            LiveEndpoint::start(
                addr,
                args.metrics_allow_remote,
                &preflight.target,
                cfg.detail,
            )
        })
        .transpose()?;
    let live = !args.quiet && std::io::stderr().is_terminal();
    eprintln!(
        "uffdscope: recording pid {pid} into {} (Ctrl-C to stop)",
        cfg.output.display()
    );
    let tap = metrics.as_ref().map(LiveEndpoint::tap);
    let summary = session::record_tapped(&cfg, tap, &STOP, |update| match update {
        session::Update::Progress(p) => {
            if let Some(m) = &metrics {
                m.progress(p);
            }
            if live {
                eprint!("\r\x1b[2K{}", session::status_line(p));
            }
        }
        session::Update::Notice(text) => {
            if live {
                eprint!("\r\x1b[2K");
            }
            eprintln!("uffdscope: {text}");
        }
    })
    .map_err(|e| RecordFailed(e.to_string()))?;
    if live {
        eprintln!();
    }
    print_summary(&summary);
    Ok(ExitCode::SUCCESS)
}

/// Live metrics while recording: the model the record tap feeds, and the
/// endpoint that serves it.
#[cfg(target_os = "linux")]
struct LiveEndpoint {
    model: std::sync::Arc<std::sync::Mutex<uffdscope_analyzer::live::LiveMetrics>>,
    _server: uffdscope_tracer::metrics_http::MetricsServer,
}

#[cfg(target_os = "linux")]
impl LiveEndpoint {
    /// Listens on `addr` before anything is attached, so a refused address
    /// fails the command early.
    fn start(
        addr: std::net::SocketAddr,
        allow_remote: bool,
        target: &uffdscope_trace::record::ProcessInfo,
        detail: uffdscope_trace::record::Detail,
    ) -> anyhow::Result<Self> {
        use std::sync::{Arc, Mutex};
        use uffdscope_analyzer::live::{LiveMetrics, Target};
        use uffdscope_tracer::{discover, metrics_http::MetricsServer};
        let model = Arc::new(Mutex::new(LiveMetrics::new(&Target {
            pid: target.pid,
            name: discover::qemu_name(&target.cmdline),
            detail: Some(detail),
        })));
        let pid = target.pid;
        let served = Arc::clone(&model);
        let server = MetricsServer::start(addr, allow_remote, move || {
            let blocked = discover::blocked_in_userfaultfd(pid);
            lock(&served).render(blocked.as_deref())
        })
        .map_err(|e| -> anyhow::Error {
            if e.is_usage() {
                e.into()
            } else {
                RecordFailed(e.to_string()).into()
            }
        })?;
        eprintln!(
            "uffdscope: live metrics at http://{}/metrics",
            server.local_addr()
        );
        Ok(Self {
            model,
            _server: server,
        })
    }

    /// The record tap that feeds the model.
    fn tap(&self) -> uffdscope_tracer::session::RecordTap<'static> {
        let model = std::sync::Arc::clone(&self.model);
        Box::new(move |rec| lock(&model).record(rec))
    }

    /// The recorder's own figures, as its status line has them.
    fn progress(&self, p: &uffdscope_tracer::session::Progress) {
        lock(&self.model).set_recorder(uffdscope_analyzer::live::RecorderFigures {
            drops: p.drops,
            cpu_ratio: p.cpu_ratio,
        });
    }
}

/// The model, even if a thread panicked holding it (its counts stay usable).
#[cfg(target_os = "linux")]
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// SIGINT and SIGTERM set [`STOP`]: the recording then finishes its trace.
#[cfg(target_os = "linux")]
fn install_stop_handlers() -> anyhow::Result<()> {
    let handler = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(on_signal),
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    for sig in [nix::sys::signal::SIGINT, nix::sys::signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { nix::sys::signal::sigaction(sig, &handler) }
            .context("installing signal handlers")?;
    }
    Ok(())
}

/// What a finished recording wrote, and what to run next.
#[cfg(target_os = "linux")]
fn print_summary(summary: &uffdscope_tracer::session::RecordSummary) {
    eprintln!(
        "uffdscope: {}: {} events, {} faults, {} drops, {} bytes ({})",
        summary.path.display(),
        summary.events,
        summary.faults,
        summary.drops,
        summary.bytes,
        summary.stop.as_str()
    );
    if summary.bad_records.total() > 0 {
        eprintln!(
            "uffdscope: {} ring records could not be used ({})",
            summary.bad_records.total(),
            summary.bad_records.summary()
        );
    }
    if !summary.not_attached.is_empty() {
        eprintln!(
            "uffdscope: not measured (tracepoints unavailable): {}",
            summary.not_attached.join(", ")
        );
    }
    eprintln!(
        "uffdscope: next: uffdscope report {}",
        summary.path.display()
    );
}

#[cfg(target_os = "linux")]
fn check() -> ExitCode {
    use uffdscope_tracer::check;
    let lines = check::run();
    for l in &lines {
        println!("{:<5} {:<44} {}", l.status.label(), l.what, l.detail);
    }
    if check::can_record(&lines) {
        println!("recording can work on this host");
        ExitCode::SUCCESS
    } else {
        println!("recording cannot work on this host: fix the FAIL lines above");
        ExitCode::from(3)
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = u8::from(e.use_stderr());
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match &cli.command {
        Command::Report(args) => report(args),
        #[cfg(target_os = "linux")]
        Command::Record(args) => record(args),
        #[cfg(target_os = "linux")]
        Command::Check => Ok(check()),
        Command::Compare(args) => compare(args),
        Command::Lean(args) => lean(args),
        Command::Completions { shell } => {
            let mut out = std::io::stdout().lock();
            clap_complete::generate(*shell, &mut Cli::command(), "uffdscope", &mut out);
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => man(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("uffdscope: {e:#}");
            if e.downcast_ref::<InputError>().is_some() {
                ExitCode::from(2)
            } else if e.downcast_ref::<RecordFailed>().is_some() {
                ExitCode::from(3)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
