//! What arrives from outside: the validation boundary every decoded record
//! passes, the guest log reader, and the QEMU return-path messages carried in
//! socket payloads.

pub mod guest_log;
pub mod rp;
pub mod validate;
