//! The streamed exports ([`perfetto`], [`csv`], [`hlog`], [`parquet`]): consumers of the one pass
//! over a trace ([`crate::drive`]) that write each record and each fault as
//! the lifecycle engine resolves it. Memory is the engine's bounded window
//! plus one frame, never the whole trace.

pub mod csv;
mod fault_row;
pub mod hlog;
#[cfg(feature = "parquet")]
pub mod parquet;
pub mod perfetto;

pub use crate::drive::{Limits, Summary};
