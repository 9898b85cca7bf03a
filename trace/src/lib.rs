//! uffdscope's trace format, shared by the tracer (which writes it) and the
//! analyzer (which reads it): the record model ([`record`]), the record codec
//! ([`codec`]), the versioned, checksummed container ([`container`]) and the
//! kernel's placement filter mirrored in userspace ([`lean`]).
//! Portable: no Linux-only dependencies. See ARCHITECTURE.md, "Trace format".

pub mod codec;
pub mod container;
pub mod lean;
pub mod record;

pub use container::{
    create_exclusive, read_all, write_all, TraceError, TraceMeta, TraceReader, TraceWriter, VERSION,
};
