//! uffdscope's trace format, shared by the tracer (which writes it) and the
//! analyzer (which reads it): the record model ([`record`]), the record codec
//! ([`codec`]) and the versioned, checksummed container ([`container`]).
//! Portable: no Linux-only dependencies. See ARCHITECTURE.md, "Trace format".

pub mod codec;
pub mod container;
pub mod record;

pub use container::{
    create_exclusive, read_all, write_all, TraceError, TraceMeta, TraceReader, TraceWriter, VERSION,
};
