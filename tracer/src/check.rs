//! `uffdscope check`: a doctor that says, line by line, whether recording can
//! work on this host and what will or will not be measured.

use std::path::Path;

use crate::bpf::{self, FormatCheck, Need};

/// Outcome of one requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Recording works, but something will not be measured.
    Warn,
    /// Recording cannot work.
    Fail,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the check.
#[derive(Debug, Clone)]
pub struct Line {
    pub status: Status,
    pub what: String,
    pub detail: String,
}

fn line(status: Status, what: impl Into<String>, detail: impl Into<String>) -> Line {
    Line {
        status,
        what: what.into(),
        detail: detail.into(),
    }
}

/// Kernel release as (major, minor).
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Runs every check.
pub fn run() -> Vec<Line> {
    let mut out = Vec::new();
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    match kernel_version(&release) {
        Some(v) if v >= (5, 8) => out.push(line(
            Status::Ok,
            "kernel",
            format!("{release} (BPF ring buffer needs 5.8+)"),
        )),
        _ => out.push(line(
            Status::Fail,
            "kernel",
            format!("{release}: BPF ring buffer needs Linux 5.8 or newer"),
        )),
    }
    let root = nix::unistd::geteuid().is_root();
    out.push(line(
        if root { Status::Ok } else { Status::Fail },
        "privileges",
        if root {
            "running as root".to_owned()
        } else {
            "not root: `uffdscope record` needs root (CAP_BPF + CAP_PERFMON); `report` does not"
                .to_owned()
        },
    ));
    let btf = bpf::kernel_btf_present();
    out.push(line(
        if btf { Status::Ok } else { Status::Fail },
        "kernel BTF",
        if btf {
            "/sys/kernel/btf/vmlinux present (per-thread state lives in BPF task storage)"
        } else {
            "/sys/kernel/btf/vmlinux missing: BPF task storage needs kernel BTF (CONFIG_DEBUG_INFO_BTF)"
        },
    ));
    let kprobes = Path::new("/sys/kernel/tracing/kprobe_events").exists();
    out.push(line(
        Status::Ok,
        "kprobes",
        if kprobes {
            "available (not used: uffdscope needs tracepoints only)"
        } else {
            "not available (not needed: uffdscope uses tracepoints only)"
        },
    ));
    let Some(tracefs) = tracefs_line(root, &mut out) else {
        return out;
    };
    out.extend(
        bpf::probe_tracepoints_at(&tracefs)
            .iter()
            .map(tracepoint_line),
    );
    out
}

/// One tracepoint's line: present with the expected layout, or what will
/// not be measured (or cannot be recorded) without it.
fn tracepoint_line(p: &bpf::TracepointProbe) -> Line {
    let tp = p.tracepoint;
    let (status, detail) = match (&p.format, tp.need) {
        (FormatCheck::Matches, _) => (Status::Ok, format!("present; {}", tp.purpose)),
        (FormatCheck::Absent, Need::Required) => (
            Status::Fail,
            format!("missing, required for: {}", tp.purpose),
        ),
        (FormatCheck::Absent, Need::Optional) => (
            Status::Warn,
            format!("missing: will not measure {}", tp.purpose),
        ),
        (FormatCheck::Differs(d), Need::Required) => (
            Status::Fail,
            format!(
                "unknown layout ({}), required for: {}",
                d.join("; "),
                tp.purpose
            ),
        ),
        (FormatCheck::Differs(d), Need::Optional) => (
            Status::Warn,
            format!(
                "unknown layout ({}): will not measure {}",
                d.join("; "),
                tp.purpose
            ),
        ),
    };
    line(status, format!("tracepoint {tp}"), detail)
}

/// The tracefs line. As root an unmounted tracefs is mounted, as `record`
/// would; without root the line says that `record` will mount it.
fn tracefs_line(root: bool, out: &mut Vec<Line>) -> Option<std::path::PathBuf> {
    if let Some(p) = bpf::find_tracefs() {
        out.push(line(Status::Ok, "tracefs", p.display().to_string()));
        return Some(p);
    }
    if !root {
        out.push(line(
            Status::Fail,
            "tracefs",
            format!(
                "not mounted; `uffdscope record` (as root) mounts it at {}",
                bpf::TRACEFS
            ),
        ));
        return None;
    }
    match bpf::find_or_mount_tracefs() {
        Ok((p, _)) => {
            out.push(line(
                Status::Ok,
                "tracefs",
                format!(
                    "was not mounted: mounted it at {} (as record would)",
                    p.display()
                ),
            ));
            Some(p)
        }
        Err(e) => {
            out.push(line(Status::Fail, "tracefs", e.to_string()));
            None
        }
    }
}

/// True when recording can work.
pub fn can_record(lines: &[Line]) -> bool {
    lines.iter().all(|l| l.status != Status::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_versions() {
        assert_eq!(kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(kernel_version("5.4.0"), Some((5, 4)));
        assert_eq!(kernel_version("x"), None);
    }

    #[test]
    fn has_a_line_per_tracepoint_and_per_requirement() {
        let lines = run();
        for what in ["kernel", "privileges", "kernel BTF", "tracefs"] {
            assert!(lines.iter().any(|l| l.what == what), "no {what} line");
        }
        if bpf::find_tracefs().is_some() {
            let tps = lines
                .iter()
                .filter(|l| l.what.starts_with("tracepoint "))
                .count();
            assert_eq!(tps, bpf::TRACEPOINTS.len());
        }
    }
}
