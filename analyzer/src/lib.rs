//! uffdscope's portable analyzer: fault lifecycles, statistics, guest
//! correlation, reports and exports over traces read with `uffdscope-trace`.
//! No Linux-only dependencies.

pub mod analysis;
pub mod blocktime;
pub mod csv;
pub mod export;
mod format;
pub mod guest;
pub mod html;
pub mod lifecycle;
pub mod markdown;
pub mod network;
pub mod perfetto;
pub mod report;
pub mod rp;
pub mod stats;
pub mod text;
