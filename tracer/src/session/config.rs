//! What a recording is asked to do ([`RecordConfig`]), the checks that can
//! refuse it before anything is loaded or written ([`RecordConfig::validate`],
//! [`RecordConfig::preflight`]), and the errors a recording can end with.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use uffdscope_trace::record::{Detail, ProcessInfo, Side};

use crate::bpf::{BpfConfig, BpfError};
use crate::discover::{self, DiscoverError};
use crate::escape::for_terminal;
use crate::side::{Decision, SideError};

/// What to record and how.
#[derive(Debug, Clone)]
pub struct RecordConfig {
    pub pid: u32,
    pub output: PathBuf,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// QMP socket of the destination QEMU: samples `query-migrate`.
    pub qmp: Option<PathBuf>,
    /// Guest serial log file or unix socket to stamp and store.
    pub guest_console: Option<PathBuf>,
    /// Ring buffer size in bytes (see [`BpfConfig::validate`] for the limits).
    pub ring_bytes: u64,
    /// How often the ring buffer is drained.
    pub drain_interval: Duration,
    /// How often QMP is sampled.
    pub qmp_interval: Duration,
    /// Created (empty, must not exist) once everything is attached and the
    /// trace header is written, so a harness can start the migration without
    /// racing the recorder.
    pub ready_file: Option<PathBuf>,
    /// How much to attach and record (`record --detail`).
    pub detail: Detail,
    /// Which end of the migration the target is (`--side`); `None` decides
    /// from `/proc` ([`crate::side`]).
    pub side: Option<Side>,
}

impl Default for RecordConfig {
    fn default() -> Self {
        Self {
            pid: 0,
            output: PathBuf::new(),
            duration: None,
            qmp: None,
            guest_console: None,
            ring_bytes: u64::from(crate::bpf::DEFAULT_RING_BYTES),
            drain_interval: Duration::from_millis(20),
            qmp_interval: Duration::from_millis(100),
            ready_file: None,
            detail: Detail::Standard,
            side: None,
        }
    }
}

/// Why recording could not start or failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "uffdscope record must run as root (it loads BPF programs); try: sudo uffdscope record ..."
    )]
    NotRoot,
    #[error("--duration must be a positive number of seconds, not {0:?}")]
    Duration(f64),
    #[error(transparent)]
    Discover(#[from] DiscoverError),
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Side(#[from] SideError),
    #[error("pid {0} is a migration source: --detail minimal records only a destination's faults; record the source at --detail standard (the default)")]
    MinimalSource(u32),
    #[error("{path} already exists; uffdscope never overwrites a file: choose another {option}")]
    Exists { path: PathBuf, option: &'static str },
    #[error("cannot create {path}: the directory {dir} does not exist (create it, or choose another {option})")]
    NoDirectory {
        path: PathBuf,
        dir: PathBuf,
        option: &'static str,
    },
    #[error("cannot create {path} ({option}): {source}")]
    Create {
        path: PathBuf,
        option: &'static str,
        source: io::Error,
    },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

impl RecordError {
    /// True when the command line asked for something impossible (exit code
    /// 1), rather than the host or the target refusing (exit code 3).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            RecordError::Duration(_)
                | RecordError::Bpf(BpfError::Config(_))
                | RecordError::Side(SideError::NotSource { .. } | SideError::NotDestination { .. })
                | RecordError::MinimalSource(_)
        )
    }

    /// The error for creating `path` (given with `option`) failing with `source`.
    pub(super) fn create(path: &Path, option: &'static str, source: io::Error) -> RecordError {
        match source.kind() {
            io::ErrorKind::AlreadyExists => RecordError::Exists {
                path: path.to_owned(),
                option,
            },
            io::ErrorKind::NotFound => RecordError::NoDirectory {
                path: path.to_owned(),
                dir: parent_dir(path).to_owned(),
                option,
            },
            _ => RecordError::Create {
                path: path.to_owned(),
                option,
                source,
            },
        }
    }
}

/// The directory a relative or absolute file name lands in.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `--duration` seconds as a [`Duration`]: positive and finite.
pub fn duration_from_secs(secs: f64) -> Result<Duration, RecordError> {
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(RecordError::Duration(secs)),
    }
}

/// What the pre-flight found: the target, and what the user should know
/// before recording starts (already escaped for a terminal).
#[derive(Debug, Clone)]
pub struct Preflight {
    pub target: ProcessInfo,
    /// The end of the migration the target is, and why.
    pub side: Decision,
    pub warnings: Vec<String>,
}

impl RecordConfig {
    /// The BPF settings this recording loads with (the destination's
    /// programs until [`Self::side`] says otherwise).
    pub fn bpf_config(&self) -> Result<BpfConfig, BpfError> {
        let mut bpf = BpfConfig::new(vec![self.pid]);
        bpf.side = self.side.unwrap_or(Side::Destination);
        bpf.ring_bytes = BpfConfig::ring_size(self.ring_bytes)?;
        bpf.wakeup_bytes = u64::from(bpf.ring_bytes / 4);
        bpf.detail = self.detail;
        bpf.validate()?;
        Ok(bpf)
    }

    /// Checks that need no I/O: root, and the BPF limits.
    pub fn validate(&self) -> Result<(), RecordError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(RecordError::NotRoot);
        }
        self.bpf_config()?;
        Ok(())
    }

    /// Everything that can refuse the recording before BPF is loaded or a
    /// file written: [`Self::validate`], the target and the parts of its
    /// `/proc` the recording reads, and the output and ready files (each
    /// must not exist, in a directory that does).
    pub fn preflight(&self) -> Result<Preflight, RecordError> {
        self.validate()?;
        let target = discover::process(self.pid, 0)?;
        discover::uffd_ranges(self.pid, 0)?;
        let fds = discover::scan_proc_fds(self.pid)?;
        let side = crate::side::decide(self.pid, self.side)?;
        if side.side == Side::Source && self.detail == Detail::Minimal {
            return Err(RecordError::MinimalSource(self.pid));
        }
        check_new_file(&self.output, "-o")?;
        if let Some(ready) = &self.ready_file {
            check_new_file(ready, "--ready-file")?;
        }
        let mut warnings = Vec::new();
        if !discover::is_qemu(&target) {
            warnings.push(format!(
                "pid {} ({}) is not QEMU: recording its userfaultfd faults without QEMU-specific roles",
                self.pid,
                for_terminal(&target.comm)
            ));
        }
        if fds.uffd.is_empty() && side.side == Side::Destination {
            warnings.push(format!(
                "pid {} has no userfaultfd yet; waiting for one (QEMU creates it at the switch to post-copy)",
                self.pid
            ));
        }
        Ok(Preflight {
            target,
            side,
            warnings,
        })
    }
}

/// `path` must not exist and its directory must.
fn check_new_file(path: &Path, option: &'static str) -> Result<(), RecordError> {
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(RecordError::Exists {
            path: path.to_owned(),
            option,
        });
    }
    let dir = parent_dir(path);
    if !dir.is_dir() {
        return Err(RecordError::NoDirectory {
            path: path.to_owned(),
            dir: dir.to_owned(),
            option,
        });
    }
    Ok(())
}

/// A default output name in the current directory: `uffdscope-PID-YYYYmmdd-HHMMSS.trace`.
pub fn default_output(pid: u32) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, mo, d, h, mi, s) = civil(secs);
    Path::new(".").join(format!(
        "uffdscope-{pid}-{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}.trace"
    ))
}

/// UTC calendar fields of a Unix time (Howard Hinnant's days-from-civil inverse).
fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(1_795_651_200), (2026, 11, 26, 0, 0, 0));
    }

    #[test]
    fn durations_must_be_positive_and_finite() {
        assert_eq!(
            duration_from_secs(1.5).ok(),
            Some(Duration::from_millis(1500))
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e300] {
            assert!(duration_from_secs(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn new_files_name_what_is_wrong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nodir").join("x.trace");
        let err = check_new_file(&missing, "-o").expect_err("missing directory accepted");
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(!err.to_string().contains("must not exist"), "{err}");
        let exists = dir.path().join("x.trace");
        std::fs::write(&exists, b"").expect("write");
        let err = check_new_file(&exists, "-o").expect_err("existing file accepted");
        assert!(err.to_string().contains("already exists"), "{err}");
        assert!(check_new_file(&dir.path().join("new.trace"), "-o").is_ok());
        assert!(check_new_file(Path::new("relative-new.trace"), "-o").is_ok());
    }

    #[test]
    fn ring_sizes_are_checked_once() {
        let cfg = |ring_bytes| RecordConfig {
            pid: 1,
            ring_bytes,
            ..RecordConfig::default()
        };
        assert!(cfg(16 << 20).bpf_config().is_ok());
        for bad in [3 << 20, 0, 1 << 40, 2048] {
            assert!(cfg(bad).bpf_config().is_err(), "{bad} accepted");
        }
    }
}
