//! The live, Linux-only side of uffdscope.
#[cfg(target_os = "linux")]
pub mod bpf;
pub mod console;
pub mod qmp;
pub mod convert;
