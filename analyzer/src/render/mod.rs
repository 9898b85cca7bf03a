//! Renderers for people: plain text for terminals, markdown for bug reports,
//! self-contained HTML. They lay out the figures of
//! [`crate::report::view::View`]; none decides a figure or calls another.

pub mod compare;
pub mod html;
pub mod markdown;
pub mod text;
