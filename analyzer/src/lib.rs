//! uffdscope's portable analyzer: fault lifecycles, statistics, guest
//! correlation, reports and exports over traces read with `uffdscope-trace`.
//! No Linux-only dependencies. The data flow is inputs → engine → report →
//! render / export; see ARCHITECTURE.md.

pub mod analysis;
pub mod compare;
pub mod drive;
pub mod engine;
pub mod export;
pub mod inputs;
pub mod live;
pub mod render;
pub mod report;
