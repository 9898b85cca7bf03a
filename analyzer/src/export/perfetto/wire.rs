//! The protobuf wire format, write side, as small as the Perfetto encoder
//! needs: varints, 64-bit fields, length-delimited strings and nested
//! messages. No schema, no code generation; field numbers live with the
//! encoder that uses them.

/// Wire types.
const VARINT: u64 = 0;
const I64: u64 = 1;
const LEN: u64 = 2;

pub(super) fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn key(buf: &mut Vec<u8>, field: u32, wire_type: u64) {
    varint(buf, (u64::from(field) << 3) | wire_type);
}

/// A `uint64`/`uint32`/`bool`/enum field.
pub(super) fn uint(buf: &mut Vec<u8>, field: u32, v: u64) {
    key(buf, field, VARINT);
    varint(buf, v);
}

/// An `int64`/`int32` field (two's complement, as protobuf encodes them).
pub(super) fn int(buf: &mut Vec<u8>, field: u32, v: i64) {
    uint(buf, field, v as u64);
}

pub(super) fn double(buf: &mut Vec<u8>, field: u32, v: f64) {
    key(buf, field, I64);
    buf.extend_from_slice(&v.to_le_bytes());
}

pub(super) fn fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
    key(buf, field, I64);
    buf.extend_from_slice(&v.to_le_bytes());
}

/// The head of a length-delimited field of `len` bytes (the bytes follow).
pub(super) fn len_head(buf: &mut Vec<u8>, field: u32, len: usize) {
    key(buf, field, LEN);
    varint(buf, len as u64);
}

pub(super) fn bytes(buf: &mut Vec<u8>, field: u32, v: &[u8]) {
    len_head(buf, field, v.len());
    buf.extend_from_slice(v);
}

pub(super) fn string(buf: &mut Vec<u8>, field: u32, v: &str) {
    bytes(buf, field, v.as_bytes());
}

/// A nested message written by `body` into the same buffer; its length is
/// put in front of it afterwards.
pub(super) fn message(buf: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    key(buf, field, LEN);
    let start = buf.len();
    body(buf);
    let len = buf.len() - start;
    let mut prefix = Vec::with_capacity(10);
    varint(&mut prefix, len as u64);
    buf.splice(start..start, prefix);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_the_protobuf_spec() {
        let mut b = Vec::new();
        uint(&mut b, 1, 150);
        assert_eq!(b, [0x08, 0x96, 0x01]);
        b.clear();
        int(&mut b, 2, -1);
        assert_eq!(b.len(), 1 + 10, "negative int64 is a 10-byte varint");
        b.clear();
        message(&mut b, 3, |m| string(m, 2, "testing"));
        assert_eq!(
            b,
            [0x1a, 0x09, 0x12, 0x07, b't', b'e', b's', b't', b'i', b'n', b'g']
        );
        b.clear();
        fixed64(&mut b, 47, 1);
        assert_eq!(b[..2], [0xf9, 0x02]);
        assert_eq!(b.len(), 2 + 8);
    }
}
