//! The live, Linux-only side of uffdscope.
#[cfg(target_os = "linux")]
pub mod bpf;
#[cfg(target_os = "linux")]
pub mod check;
pub mod console;
#[cfg(target_os = "linux")]
pub mod convert;
#[cfg(target_os = "linux")]
pub mod discover;
pub mod escape;
pub mod live_stats;
#[cfg(target_os = "linux")]
pub mod perf;
pub mod qmp;
#[cfg(target_os = "linux")]
pub mod session;
pub mod unix_connect;
