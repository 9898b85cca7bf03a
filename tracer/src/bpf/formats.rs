//! The tracefs side: finding the mount, reading a tracepoint's `format`
//! file, and checking that the fields a program reads are where it expects
//! them (for attaching, and for `uffdscope check`).

use std::fs;
use std::path::{Path, PathBuf};

use super::catalogue::{FormatField, Tracepoint, TRACEPOINTS};
use super::BpfError;

/// Where tracefs belongs, and where [`find_or_mount_tracefs`] mounts it.
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// The tracefs mount, mounting tracefs at [`TRACEFS`] when it is nowhere
/// (a fresh host may boot without it; needs root). The flag is true when
/// this call mounted it; the mount stays for later runs.
pub fn find_or_mount_tracefs() -> Result<(PathBuf, bool), BpfError> {
    if let Some(found) = find_tracefs() {
        return Ok((found, false));
    }
    nix::mount::mount(
        Some("nodev"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| BpfError::MountTracefs(std::io::Error::from(e)))?;
    find_tracefs().map(|p| (p, true)).ok_or(BpfError::NoTracefs)
}

/// The tracefs mount: `/sys/kernel/tracing`, else the debugfs location.
pub fn find_tracefs() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

pub(super) fn event_dir(tracefs: &Path, tp: &Tracepoint) -> PathBuf {
    tracefs.join("events").join(tp.category).join(tp.name)
}

/// Result of comparing a tracepoint's format file with what its program reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatCheck {
    /// Every field the program reads is where it expects.
    Matches,
    /// The tracepoint does not exist.
    Absent,
    /// Fields that are missing, moved or resized (or the file was unreadable).
    Differs(Vec<String>),
}

/// A parsed `field:` line of a format file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedField {
    /// Field name without array suffix.
    pub name: String,
    /// Offset.
    pub offset: u32,
    /// Size.
    pub size: u32,
}

/// Parses the `field:` lines of a tracepoint format file.
pub fn parse_format(text: &str) -> Vec<ParsedField> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = rest.split(';').map(str::trim);
        let Some(decl) = parts.next() else { continue };
        let name = decl
            .rsplit(|c: char| c.is_whitespace() || c == '*')
            .next()
            .unwrap_or("")
            .split('[')
            .next()
            .unwrap_or("")
            .to_string();
        let mut offset = None;
        let mut size = None;
        for p in parts {
            if let Some(v) = p.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = p.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        if let (false, Some(offset), Some(size)) = (name.is_empty(), offset, size) {
            out.push(ParsedField { name, offset, size });
        }
    }
    out
}

/// Compares the fields a program reads with a parsed format.
pub fn compare_format(expected: &[FormatField], parsed: &[ParsedField]) -> Vec<String> {
    let mut problems = Vec::new();
    for want in expected {
        match parsed.iter().find(|p| p.name == want.name) {
            None => problems.push(format!("field {} is missing", want.name)),
            Some(p) if p.offset != want.offset || p.size != want.size => problems.push(format!(
                "field {} is at offset {} size {}, expected offset {} size {}",
                want.name, p.offset, p.size, want.offset, want.size
            )),
            Some(_) => {}
        }
    }
    problems
}

pub(super) fn check_format(tracefs: &Path, tp: &Tracepoint) -> FormatCheck {
    let dir = event_dir(tracefs, tp);
    if !dir.join("id").exists() {
        return FormatCheck::Absent;
    }
    match fs::read_to_string(dir.join("format")) {
        Err(e) => FormatCheck::Differs(vec![format!(
            "cannot read {}: {e}",
            dir.join("format").display()
        )]),
        Ok(text) => {
            let problems = compare_format(&tp.fields(), &parse_format(&text));
            if problems.is_empty() {
                FormatCheck::Matches
            } else {
                FormatCheck::Differs(problems)
            }
        }
    }
}

/// Whether one tracepoint is usable on this host.
#[derive(Debug, Clone)]
pub struct TracepointProbe {
    /// The tracepoint.
    pub tracepoint: &'static Tracepoint,
    /// Presence and layout.
    pub format: FormatCheck,
}

impl TracepointProbe {
    /// True when present with the expected layout.
    pub fn usable(&self) -> bool {
        self.format == FormatCheck::Matches
    }
}

/// Probes every tracepoint in [`TRACEPOINTS`] (for `uffdscope check`): does
/// it exist, and are the fields its program reads where it expects them.
/// Needs read access to tracefs (root on most systems).
pub fn probe_tracepoints() -> Result<Vec<TracepointProbe>, BpfError> {
    let tracefs = find_tracefs().ok_or(BpfError::NoTracefs)?;
    Ok(probe_tracepoints_at(&tracefs))
}

/// [`probe_tracepoints`] against a given tracefs root.
pub fn probe_tracepoints_at(tracefs: &Path) -> Vec<TracepointProbe> {
    TRACEPOINTS
        .iter()
        .map(|tp| TracepointProbe {
            tracepoint: tp,
            format: check_format(tracefs, tp),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use uffdscope_ebpf::layout::field;

    const PAGE_FAULT_USER: &str = "name: page_fault_user
ID: 120
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned long address;\toffset:8;\tsize:8;\tsigned:0;
\tfield:unsigned long ip;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned long error_code;\toffset:24;\tsize:8;\tsigned:0;

print fmt: \"address=%ps\", (void *)REC->address
";

    #[test]
    fn parses_format_fields() {
        let fields = parse_format(PAGE_FAULT_USER);
        assert_eq!(fields.len(), 7, "fields: {fields:?}");
        assert_eq!(
            fields[4],
            ParsedField {
                name: "address".into(),
                offset: 8,
                size: 8
            }
        );
        let tp = TRACEPOINTS
            .iter()
            .find(|t| t.name == "page_fault_user")
            .expect("page_fault_user is in TRACEPOINTS");
        assert!(compare_format(&tp.fields(), &fields).is_empty());
    }

    #[test]
    fn parses_arrays_and_pointers() {
        let text = "\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
                    \tfield:const struct iovec * vec;\toffset:24;\tsize:8;\tsigned:0;\n\
                    \tfield:__u8 saddr[28];\toffset:8;\tsize:28;\tsigned:0;";
        let names: Vec<_> = parse_format(text).into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["prev_comm", "vec", "saddr"]);
    }

    #[test]
    fn reports_moved_and_missing_fields() {
        let text = "\tfield:unsigned long address;\toffset:16;\tsize:8;\tsigned:0;\n\
                    \tfield:unsigned long ip;\toffset:8;\tsize:8;\tsigned:0;";
        let problems = compare_format(
            &[
                field("address", 8, 8),
                field("ip", 8, 8),
                field("error_code", 24, 8),
            ],
            &parse_format(text),
        );
        assert_eq!(
            problems,
            [
                "field address is at offset 16 size 8, expected offset 8 size 8",
                "field error_code is missing"
            ]
        );
    }
}
