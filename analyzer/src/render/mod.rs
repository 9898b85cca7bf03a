//! Renderers for people: plain text for terminals, markdown for bug reports,
//! self-contained HTML. They lay out figures the report already holds.

pub(crate) mod format;
pub mod html;
pub mod markdown;
pub mod text;
