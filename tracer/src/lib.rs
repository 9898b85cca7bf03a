//! The live, Linux-only side of uffdscope.
pub mod console;
pub mod qmp;
