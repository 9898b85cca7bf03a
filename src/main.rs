//! The `uffdscope` command line.
fn main() {}
