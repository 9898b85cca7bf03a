//! The live, Linux-only side of uffdscope.
