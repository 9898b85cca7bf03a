//! The `uffdscope` command line: parses arguments and calls the crates.
//!
//! Exit codes: 0 success, 1 usage error, 2 unreadable or damaged input,
//! 3 recording could not start or failed (see `record`/`check`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use uffdscope_analyzer::analysis::{self, AnalysisError, Options};
use uffdscope_analyzer::trace::create_exclusive;

const EXAMPLES: &str = "\
Examples:
  # Report the committed sample trace
  uffdscope report fixtures/data/synthetic-2vcpu.trace

  # JSON for scripts, markdown for a bug report
  uffdscope report run.trace --format json > run.json
  uffdscope report run.trace --format markdown -o report.md

  # Correlate with a guest log captured elsewhere (guest clock 1.5 s ahead)
  uffdscope report run.trace --guest-log stress.log --guest-offset 1500
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
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Default)]
enum Format {
    /// Human-readable terminal report.
    #[default]
    Text,
    /// The stable `uffdscope.report/1` JSON object.
    Json,
}

#[derive(clap::Args, Debug)]
struct ReportArgs {
    /// The trace file written by `uffdscope record`.
    trace: PathBuf,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Write to this file (must not exist) instead of stdout.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// A guest log (guestperf lines, `epoch_ms value_ms` lines or JSON lines)
    /// captured outside the trace.
    #[arg(long)]
    guest_log: Option<PathBuf>,
    /// Guest clock minus host realtime clock, in ms (otherwise estimated).
    #[arg(long, allow_hyphen_values = true)]
    guest_offset: Option<f64>,
}

/// Errors that map to exit code 2 (input problems).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct InputError(String);

fn report(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let guest_log = match &args.guest_log {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| InputError(format!("cannot read guest log {}: {e}", p.display())))?,
        ),
        None => None,
    };
    let opts = Options {
        guest_log,
        guest_offset_ms: args.guest_offset,
    };
    let report = analysis::analyze_file(&args.trace, &opts).map_err(|e| match e {
        AnalysisError::Trace(t) => InputError(format!("{}: {t}", args.trace.display())),
    })?;
    let body = match args.format {
        Format::Text => uffdscope_analyzer::text::render_text(&report),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&report).context("serializing the report")?;
            s.push('\n');
            s
        }
    };
    match &args.output {
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
    if let Some(damage) = &report.trace.damage {
        eprintln!(
            "uffdscope: {}: damaged trace, reported the good part: {damage}",
            args.trace.display()
        );
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
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
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("uffdscope: {e:#}");
            if e.downcast_ref::<InputError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
