//! uffdscope's portable analyzer: the trace format, the record model, fault
//! lifecycles, statistics and reports. No Linux-only dependencies.

pub mod codec;
pub mod record;
pub mod trace;
pub mod lifecycle;
pub mod rp;
pub mod analysis;
pub mod guest;
pub mod network;
pub mod report;
pub mod stats;
pub mod text;
