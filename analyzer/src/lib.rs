//! uffdscope's portable analyzer: the trace format, the record model, fault
//! lifecycles, statistics and reports. No Linux-only dependencies.

pub mod analysis;
pub mod blocktime;
pub mod codec;
pub mod csv;
pub mod export;
mod format;
pub mod guest;
pub mod html;
pub mod lifecycle;
pub mod markdown;
pub mod network;
pub mod perfetto;
pub mod record;
pub mod report;
pub mod rp;
pub mod stats;
pub mod text;
pub mod trace;
