//! The live, Linux-only side of uffdscope.
#[cfg(target_os = "linux")]
pub mod bpf;
pub mod console;
pub mod qmp;
#[cfg(target_os = "linux")]
pub mod check;
#[cfg(target_os = "linux")]
pub mod convert;
#[cfg(target_os = "linux")]
pub mod discover;
#[cfg(target_os = "linux")]
pub mod session;
