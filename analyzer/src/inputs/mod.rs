//! What arrives from outside the kernel records: the validation boundary
//! every decoded record passes, the guest log reader, QMP replies, and the
//! QEMU return-path messages carried in socket payloads.

pub mod guest_log;
pub mod qmp;
pub mod rp;
pub mod validate;
