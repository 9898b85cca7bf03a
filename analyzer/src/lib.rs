//! uffdscope's portable analyzer: the trace format, the record model, fault
//! lifecycles, statistics and reports. No Linux-only dependencies.

pub mod codec;
pub mod record;
pub mod trace;
pub mod lifecycle;
pub mod rp;
