//! The BPF side of recording, one job per module:
//! - [`catalogue`]: every tracepoint the object attaches to ([`TRACEPOINTS`]);
//! - [`load`]: [`BpfTracer::load`] patches the globals, loads the object,
//!   attaches every program, seeds the fd maps and reads the counters;
//! - [`ring`]: [`RingDrain`], non-blocking drains of the ring buffer;
//! - [`formats`]: tracefs and the format-file check ([`probe_tracepoints`]);
//! - [`stats`]: per-program run statistics.
//!
//! The `/proc` fd scan that seeds the maps lives in [`crate::discover`].

use std::io;
use std::path::{Path, PathBuf};

use aya::maps::MapError;
use aya::programs::ProgramError;
use aya::EbpfError;

pub mod catalogue;
pub mod formats;
pub mod load;
pub mod ring;
pub mod stats;

pub use catalogue::{attaches_on, FormatField, Layout, Need, Tracepoint, TRACEPOINTS};
pub use formats::{
    compare_format, find_or_mount_tracefs, find_tracefs, parse_format, probe_tracepoints,
    probe_tracepoints_at, FormatCheck, ParsedField, TracepointProbe, TRACEFS,
};
pub use load::{
    AttachOutcome, AttachStatus, BpfConfig, BpfTracer, Counters, DEFAULT_RING_BYTES,
    MAX_RING_BYTES, MIN_RING_BYTES,
};
pub use ring::{DrainCount, RingDrain};
pub use stats::ProgramStats;

/// Errors of the BPF side. Each names what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The configuration is unusable.
    #[error("invalid BPF configuration: {0}")]
    Config(String),
    /// No tracefs mount.
    #[error(
        "tracefs is not mounted (looked for /sys/kernel/tracing and /sys/kernel/debug/tracing); \
         mount it with: mount -t tracefs nodev /sys/kernel/tracing"
    )]
    NoTracefs,
    /// tracefs was not mounted and mounting it failed.
    #[error(
        "tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {0} \
         (mount it by hand: mount -t tracefs nodev /sys/kernel/tracing)"
    )]
    MountTracefs(#[source] io::Error),
    /// aya could not create the maps or parse the object.
    #[error("loading the BPF object failed (uffdscope record needs root, or CAP_BPF and CAP_PERFMON): {0}")]
    Object(#[source] Box<EbpfError>),
    /// A required tracepoint does not exist on this kernel.
    #[error("required tracepoint {tracepoint} does not exist on this kernel ({path} is missing); it is needed for: {purpose}")]
    MissingTracepoint {
        /// `category:name`.
        tracepoint: String,
        /// The id file that is missing.
        path: PathBuf,
        /// What it is needed for.
        purpose: &'static str,
    },
    /// A required tracepoint's layout differs from the one the program reads.
    #[error("required tracepoint {tracepoint} has a layout uffdscope does not know ({details}); its records would be misread")]
    FormatMismatch {
        /// `category:name`.
        tracepoint: String,
        /// What differs.
        details: String,
    },
    /// The object lacks a program listed in [`TRACEPOINTS`] (build mismatch).
    #[error("program {0} is missing from the BPF object; rebuild with make -C ebpf")]
    ProgramNotInObject(&'static str),
    /// A required program failed to load or attach.
    #[error("{action} program {program} for required tracepoint {tracepoint} failed: {source}")]
    Program {
        /// "loading" or "attaching".
        action: &'static str,
        /// Program name.
        program: &'static str,
        /// `category:name`.
        tracepoint: String,
        /// aya's error, with the verifier log for load failures.
        #[source]
        source: Box<ProgramError>,
    },
    /// A map is missing or could not be used.
    #[error("BPF map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// aya's error.
        #[source]
        source: Box<MapError>,
    },
    /// A map the object should define is absent.
    #[error("BPF map {0} is missing from the object; rebuild with make -C ebpf")]
    MapNotInObject(&'static str),
    /// Setting up the ring buffer's epoll instance failed.
    #[error("setting up epoll on the BPF ring buffer: {0}")]
    Epoll(#[source] io::Error),
    /// The kernel has no BTF, so task storage cannot be used.
    #[error(
        "{KERNEL_BTF} is missing: the BPF programs keep per-thread state in task storage, \
         which needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (Linux 5.11 or later)"
    )]
    NoKernelBtf,
    /// Asking the kernel for a program's run statistics failed.
    #[error("reading the run statistics of program {program}: {source}")]
    Stats {
        /// Program name.
        program: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Reading the target's `/proc` failed.
    #[error(transparent)]
    Proc(#[from] crate::discover::DiscoverError),
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> BpfError {
    move |source| BpfError::Map {
        map,
        source: Box::new(source),
    }
}

/// Where the kernel publishes its own BTF.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Whether the kernel exposes its BTF ([`KERNEL_BTF`]), which the programs
/// need for per-thread task storage (`bpf_get_current_task_btf`); for
/// `uffdscope check`.
pub fn kernel_btf_present() -> bool {
    Path::new(KERNEL_BTF).exists()
}
