//! Parsers for what arrives from outside the kernel records: the QEMU
//! return-path messages carried in socket payloads.

pub mod rp;
