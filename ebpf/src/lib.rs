//! uffdscope's compiled BPF object and the Rust mirror of `bpf/events.h`.
//!
//! - [`OBJECT`]: the committed `uffdscope.bpf.o`, 8-byte aligned, ready for
//!   `aya::EbpfLoader::load`.
//! - [`abi`]: the record structs, kinds and constants of `events.h`.
//! - [`generated`]: the ioctl numbers and tracepoint layouts generated from
//!   the C headers, and the offset checks of every record field;
//! - [`layout`]: tracepoint context layouts;
//! - [`decode()`]: safe decoding of ring-buffer records into [`RawEvent`].
//!
//! This crate is portable: it only holds bytes and plain data, so a trace can
//! be decoded on any OS.

pub mod abi;
mod decode;
#[rustfmt::skip]
pub mod generated;
pub mod layout;

pub use decode::{decode, decode_bin, decode_hdr, DecodeError, RawEvent};

/// Holds bytes at the alignment of `A` (the ELF parser wants at least 4).
#[repr(C)]
pub struct AlignedAs<A, B: ?Sized> {
    _align: [A; 0],
    /// The bytes.
    pub bytes: B,
}

/// Like `include_bytes!`, but 8-byte aligned.
macro_rules! include_bytes_aligned {
    ($path:literal) => {{
        static ALIGNED: &AlignedAs<u64, [u8]> = &AlignedAs {
            _align: [],
            bytes: *include_bytes!($path),
        };
        &ALIGNED.bytes
    }};
}

/// The compiled BPF object (`ebpf/uffdscope.bpf.o`, built by `make -C ebpf`).
pub static OBJECT: &[u8] = include_bytes_aligned!("../uffdscope.bpf.o");

/// Names shared with the object: programs, maps and read-only globals.
pub mod names {
    /// The ring buffer map.
    pub const EVENTS_MAP: &str = "ufs_events";
    /// Per-CPU reservation failures, indexed by kind.
    pub const DROPS_MAP: &str = "ufs_drops";
    /// Per-CPU counters, indexed by [`crate::abi::stat`].
    pub const STATS_MAP: &str = "ufs_stats";
    /// uffd fds of the targets, key [`crate::abi::fd_key`].
    pub const UFFD_FDS_MAP: &str = "ufs_uffd_fds";
    /// Socket fds of the targets, key [`crate::abi::fd_key`].
    pub const SOCK_FDS_MAP: &str = "ufs_sock_fds";
    /// `const volatile __u32 ufs_targets[8]`.
    pub const TARGETS_GLOBAL: &str = "ufs_targets";
    /// `const volatile __u32 ufs_n_targets`.
    pub const N_TARGETS_GLOBAL: &str = "ufs_n_targets";
    /// `const volatile __u64 ufs_wakeup_bytes`.
    pub const WAKEUP_BYTES_GLOBAL: &str = "ufs_wakeup_bytes";
    /// `const volatile __u64 ufs_tcp_probe_interval_ns`.
    pub const TCP_PROBE_INTERVAL_GLOBAL: &str = "ufs_tcp_probe_interval_ns";
    /// `const volatile __u32 ufs_lean`: count background placements in bins.
    pub const LEAN_GLOBAL: &str = "ufs_lean";
    /// `const volatile __u32 ufs_minimal`: `record --detail minimal`, the
    /// placing ioctl read from the waker's registers at `sched_waking`.
    pub const MINIMAL_GLOBAL: &str = "ufs_minimal";
    /// `const volatile __u32 ufs_source`: record a migration source
    /// (`bpf/source.h`).
    pub const SOURCE_GLOBAL: &str = "ufs_source";
    /// Background placements counted in the kernel, key
    /// [`crate::abi::BinKey`], value [`crate::abi::BinVal`].
    pub const BINS_MAP: &str = "ufs_bins";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_is_an_aligned_bpf_elf() {
        assert_eq!(
            OBJECT.as_ptr() as usize % 8,
            0,
            "object must be 8-byte aligned"
        );
        assert!(OBJECT.len() > 64, "object is too small to be an ELF file");
        assert_eq!(&OBJECT[..4], b"\x7fELF", "object is not an ELF file");
        // e_machine (offset 18, little endian) = EM_BPF (247).
        assert_eq!(
            u16::from_le_bytes([OBJECT[18], OBJECT[19]]),
            247,
            "not a BPF object"
        );
    }
}
