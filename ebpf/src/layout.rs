//! Tracepoint context layouts: [`FormatField`], and the layout of every
//! tracepoint the programs read ([`crate::generated::tracepoint`], generated
//! from `bpf/tracepoints.h`).

/// A field of a tracepoint's record, as its tracefs `format` file lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatField {
    /// Field name as the format file spells it.
    pub name: &'static str,
    /// Byte offset in the record.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

/// A [`FormatField`].
pub const fn field(name: &'static str, offset: u32, size: u32) -> FormatField {
    FormatField { name, offset, size }
}

/// The field named `name` of `layout`.
pub fn find(layout: &'static [FormatField], name: &str) -> Option<FormatField> {
    layout.iter().copied().find(|f| f.name == name)
}
