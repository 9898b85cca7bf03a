//! The live, Linux-only side of uffdscope.
pub mod console;
pub mod qmp;
#[cfg(target_os = "linux")]
pub mod bpf;
