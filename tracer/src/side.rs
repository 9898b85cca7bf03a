//! Which end of a migration the target is (`record --side`): the
//! destination, where vCPUs fault in userfaultfd, or the source, whose
//! return path receives page requests and whose migration thread sends the
//! pages. Decided once, before anything is loaded, from what `/proc` shows
//! (see ARCHITECTURE.md, "Both ends of the migration").

use uffdscope_trace::record::{ProcessInfo, Role, Side, ThreadInfo};

use crate::discover::{self, DiscoverError};
use crate::escape::for_terminal;

/// The side a recording takes, and the sentence that says why (escaped for
/// a terminal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub side: Side,
    pub why: String,
}

/// Why the side could not be decided or the given one is wrong; each says
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum SideError {
    #[error(transparent)]
    Discover(#[from] DiscoverError),
    #[error("pid {pid} is not a migration destination: {why}; record it with --side source (or leave --side auto)")]
    NotDestination { pid: u32, why: String },
    #[error("pid {pid} is not a migration source: it has a userfaultfd (a destination's); record it with --side destination (or leave --side auto)")]
    NotSource { pid: u32 },
}

/// What `/proc` shows about the target that tells the sides apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SideFacts {
    pub comm: String,
    pub is_qemu: bool,
    /// QEMU started with `-incoming` (a destination before its userfaultfd).
    pub incoming: bool,
    /// It has a userfaultfd fd or a registered range.
    pub has_uffd: bool,
    /// The name of a source migration thread (`live_migration`, `mig/src/main`,
    /// `return path`, ...), when one runs.
    pub source_thread: Option<String>,
    /// The name of a destination post-copy thread, when one runs.
    pub destination_thread: Option<String>,
}

impl SideFacts {
    /// Reads the facts of `pid` from `/proc`.
    pub fn read(pid: u32) -> Result<SideFacts, DiscoverError> {
        let process = discover::process(pid, 0)?;
        let has_uffd = !discover::scan_proc_fds(pid)?.uffd.is_empty()
            || !discover::uffd_ranges(pid, 0)?.is_empty();
        Ok(SideFacts::from_parts(
            &process,
            &discover::threads(pid, 0)?,
            has_uffd,
        ))
    }

    /// The facts of a process, its threads and whether it has a userfaultfd.
    pub fn from_parts(process: &ProcessInfo, threads: &[ThreadInfo], has_uffd: bool) -> Self {
        let named = |roles: &[Role]| {
            threads
                .iter()
                .find(|t| roles.contains(&t.role))
                .map(|t| t.name.clone())
        };
        let is_qemu = discover::is_qemu(process);
        SideFacts {
            comm: process.comm.clone(),
            is_qemu,
            incoming: is_qemu && process.cmdline.iter().any(|a| a == "-incoming"),
            has_uffd,
            source_thread: named(&[Role::MigSource, Role::ReturnPath]),
            destination_thread: named(&[Role::Fault, Role::Listen, Role::Preempt]),
        }
    }

    /// The side these facts show, and why (a destination when they show
    /// neither, as recording always did, with the way out in the reason).
    pub fn auto(&self) -> Decision {
        let decision = |side, why: String| Decision { side, why };
        if self.has_uffd {
            return decision(Side::Destination, "it has a userfaultfd".into());
        }
        if let Some(name) = &self.destination_thread {
            return decision(
                Side::Destination,
                format!("it runs the post-copy thread `{}`", for_terminal(name)),
            );
        }
        if let Some(name) = &self.source_thread {
            return decision(
                Side::Source,
                format!(
                    "it runs the migration thread `{}` and has no userfaultfd",
                    for_terminal(name)
                ),
            );
        }
        if self.incoming {
            return decision(
                Side::Destination,
                "it is a QEMU started with -incoming (its userfaultfd comes at the switch to post-copy)"
                    .into(),
            );
        }
        if self.is_qemu {
            return decision(
                Side::Source,
                "it is a QEMU not started with -incoming (its migration threads start at `migrate`)"
                    .into(),
            );
        }
        // What recording did before there were sides: a process that may
        // create its userfaultfd later (an emulator, a test program).
        decision(
            Side::Destination,
            format!(
                "{} shows neither end (no userfaultfd, no migration thread, not a QEMU), so it is \
                 recorded as a destination; give --side source if it is a migration source",
                for_terminal(&self.comm)
            ),
        )
    }

    /// The side for `--side` (`None` = auto) on `pid`.
    pub fn decide(&self, pid: u32, forced: Option<Side>) -> Result<Decision, SideError> {
        let auto = self.auto();
        match forced {
            None => Ok(auto),
            Some(Side::Source) if self.has_uffd => Err(SideError::NotSource { pid }),
            Some(Side::Destination) if auto.side == Side::Source => {
                Err(SideError::NotDestination { pid, why: auto.why })
            }
            Some(side) => Ok(Decision {
                side,
                why: "given with --side".into(),
            }),
        }
    }
}

/// The side of `pid` for `--side` (`None` = auto), read from `/proc`.
pub fn decide(pid: u32, forced: Option<Side>) -> Result<Decision, SideError> {
    SideFacts::read(pid)?.decide(pid, forced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(comm: &str, cmdline: &[&str], threads: &[&str], has_uffd: bool) -> SideFacts {
        let process = ProcessInfo {
            ts: 0,
            pid: 7,
            comm: comm.into(),
            cmdline: cmdline.iter().map(|s| (*s).to_owned()).collect(),
        };
        let threads: Vec<ThreadInfo> = threads
            .iter()
            .zip(1..)
            .map(|(name, tid)| ThreadInfo {
                ts: 0,
                tid,
                name: (*name).into(),
                role: Role::from_thread_name(name).unwrap_or(Role::Other),
            })
            .collect();
        SideFacts::from_parts(&process, &threads, has_uffd)
    }

    #[test]
    fn auto_tells_the_ends_apart() {
        let q = "qemu-system-x86";
        let cases = [
            (
                facts(q, &[q, "-incoming", "defer"], &[], false),
                Side::Destination,
            ),
            (
                facts(q, &[q], &["live_migration", "return path"], false),
                Side::Source,
            ),
            (
                facts(q, &[q], &["mig/src/main", "mig/src/rp-thr"], false),
                Side::Source,
            ),
            (facts(q, &[q], &["mig/src/return"], false), Side::Source),
            (facts(q, &[q], &[], false), Side::Source),
            (
                facts(q, &[q, "-incoming", "tcp:0:4444"], &["mig/dst/fault"], true),
                Side::Destination,
            ),
            (
                facts(
                    "uffdscope-emu",
                    &["uffdscope-emu"],
                    &["fault-default"],
                    false,
                ),
                Side::Destination,
            ),
            (
                facts(
                    "uffdscope-emu",
                    &["uffdscope-emu"],
                    &["mig/src/main"],
                    false,
                ),
                Side::Source,
            ),
        ];
        for (f, want) in cases {
            let got = f.decide(7, None).expect("decided");
            assert_eq!(got.side, want, "{f:?}: {}", got.why);
        }
    }

    #[test]
    fn errors_name_the_fix() {
        let none = facts("sleep", &["sleep", "100"], &[], false);
        let d = none.decide(7, None).expect("neither end is a destination");
        assert_eq!(d.side, Side::Destination);
        assert!(d.why.contains("--side source"), "{}", d.why);
        assert_eq!(
            none.decide(7, Some(Side::Destination)).map(|d| d.side).ok(),
            Some(Side::Destination),
            "forcing a side the facts do not contradict is allowed"
        );

        let src = facts(
            "qemu-system-x86",
            &["qemu-system-x86"],
            &["live_migration"],
            false,
        );
        let e = src
            .decide(7, Some(Side::Destination))
            .expect_err("source forced to destination");
        assert!(e.to_string().contains("--side source"), "{e}");
        assert!(e.to_string().contains("live_migration"), "{e}");

        let dst = facts(
            "qemu-system-x86",
            &["qemu-system-x86", "-incoming", "defer"],
            &[],
            true,
        );
        let e = dst
            .decide(7, Some(Side::Source))
            .expect_err("destination forced to source");
        assert!(e.to_string().contains("--side destination"), "{e}");
    }
}
