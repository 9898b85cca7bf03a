//! Parsers for what arrives from outside the kernel records: the QEMU
//! return-path messages carried in socket payloads, and QMP replies.

pub mod qmp;
pub mod rp;
