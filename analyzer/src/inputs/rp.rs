//! QEMU's post-copy return-path messages (destination → source), parsed from
//! the first bytes of a captured send.
//!
//! Each message is `be16 type | be16 len | body`. `REQ_PAGES_ID` (3) carries
//! `be64 start | be32 len | u8 name_len | name`, naming the RAMBlock; `REQ_PAGES`
//! (4) carries `be64 start | be32 len` for the block named last on that channel.

use std::collections::HashMap;

use uffdscope_trace::record::{Direction, SockIo};

/// Message types of `enum mig_rp_message_type`.
pub mod kind {
    pub const INVALID: u16 = 0;
    pub const SHUT: u16 = 1;
    pub const PONG: u16 = 2;
    pub const REQ_PAGES_ID: u16 = 3;
    pub const REQ_PAGES: u16 = 4;
    pub const RECV_BITMAP: u16 = 5;
    pub const RESUME_ACK: u16 = 6;
    pub const SWITCHOVER_ACK: u16 = 7;
}

/// One return-path message, as far as the captured bytes show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpMessage {
    /// A page request; `block` is `None` for `REQ_PAGES` (same block as last).
    ReqPages {
        block: Option<String>,
        start: u64,
        len: u32,
    },
    Shut,
    Pong,
    RecvBitmap,
    ResumeAck,
}

/// Parses the messages at the start of `head`. Parsing stops at the first
/// message that is cut off by the capture limit or is not a valid return-path
/// message, so random payloads yield nothing rather than garbage.
pub fn parse(head: &[u8]) -> Vec<RpMessage> {
    let mut out = Vec::new();
    let mut rest = head;
    while rest.len() >= 4 {
        let ty = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let Some(body) = rest.get(4..4 + len) else {
            break;
        };
        let msg = match ty {
            kind::REQ_PAGES if len == 12 => RpMessage::ReqPages {
                block: None,
                start: be64(body),
                len: be32(&body[8..]),
            },
            kind::REQ_PAGES_ID if len >= 13 => {
                let name_len = usize::from(body[12]);
                if len != 13 + name_len {
                    break;
                }
                let Ok(name) = std::str::from_utf8(&body[13..]) else {
                    break;
                };
                RpMessage::ReqPages {
                    block: Some(name.to_owned()),
                    start: be64(body),
                    len: be32(&body[8..]),
                }
            }
            kind::SHUT if len == 4 => RpMessage::Shut,
            kind::PONG if len == 4 => RpMessage::Pong,
            kind::RECV_BITMAP if len >= 1 => RpMessage::RecvBitmap,
            kind::RESUME_ACK if len == 4 => RpMessage::ResumeAck,
            _ => break,
        };
        out.push(msg);
        rest = &rest[4 + len..];
    }
    out
}

/// Reads the return path out of the target's sends: parses each send once
/// and names the block of every page request (a `REQ_PAGES` continues the
/// block last named on its channel, the sending thread and fd).
#[derive(Debug, Default)]
pub struct ReturnPath {
    last_block: HashMap<(u32, i32), String>,
}

impl ReturnPath {
    /// The messages of a send, with every request's block named where the
    /// channel named one before (`block: None` when it never did). Nothing
    /// for receives and failed sends.
    pub fn read(&mut self, s: &SockIo) -> Vec<RpMessage> {
        if s.dir != Direction::Send || s.ret <= 0 {
            return Vec::new();
        }
        let mut msgs = parse(&s.head);
        for m in &mut msgs {
            if let RpMessage::ReqPages { block, .. } = m {
                let key = (s.tid, s.fd);
                match block {
                    Some(b) => {
                        self.last_block.insert(key, b.clone());
                    }
                    None => block.clone_from(&self.last_block.get(&key).cloned()),
                }
            }
        }
        msgs
    }
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Encodes a page request the way QEMU does (used by generators and tests).
pub fn encode_req_pages(block: Option<&str>, start: u64, len: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    match block {
        Some(name) => {
            let name = &name.as_bytes()[..name.len().min(255)];
            out.extend_from_slice(&kind::REQ_PAGES_ID.to_be_bytes());
            out.extend_from_slice(&(13 + name.len() as u16).to_be_bytes());
            out.extend_from_slice(&start.to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
            out.push(name.len() as u8);
            out.extend_from_slice(name);
        }
        None => {
            out.extend_from_slice(&kind::REQ_PAGES.to_be_bytes());
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&start.to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_request_bytes() {
        // REQ_PAGES_ID for "pc.ram" offset 0x1000 len 4096, as QEMU 7.2 sends it.
        let bytes = [
            0x00, 0x03, 0x00, 0x13, 0, 0, 0, 0, 0, 0, 0x10, 0x00, 0, 0, 0x10, 0x00, 6, b'p', b'c',
            b'.', b'r', b'a', b'm',
        ];
        assert_eq!(
            parse(&bytes),
            vec![RpMessage::ReqPages {
                block: Some("pc.ram".into()),
                start: 0x1000,
                len: 4096
            }]
        );
        assert_eq!(encode_req_pages(Some("pc.ram"), 0x1000, 4096), bytes);
    }

    #[test]
    fn parses_back_to_back_messages_and_stops_at_a_cut() {
        let mut b = encode_req_pages(None, 0x2000, 4096);
        b.extend(encode_req_pages(None, 0x3000, 4096));
        b.extend(&encode_req_pages(None, 0x4000, 4096)[..7]);
        assert_eq!(parse(&b).len(), 2);
    }

    #[test]
    fn a_request_without_a_name_continues_its_channels_block() {
        let send = |tid, fd, head: Vec<u8>| SockIo {
            tid,
            enter_ts: 0,
            exit_ts: 1,
            fd,
            dir: Direction::Send,
            ret: head.len() as i64,
            head,
        };
        let mut rp = ReturnPath::default();
        let block = |m: &[RpMessage]| match &m[0] {
            RpMessage::ReqPages { block, .. } => block.clone(),
            other => panic!("not a request: {other:?}"),
        };
        assert_eq!(
            block(&rp.read(&send(1, 5, encode_req_pages(None, 0, 4096)))),
            None
        );
        rp.read(&send(1, 5, encode_req_pages(Some("pc.ram"), 0, 4096)));
        let next = rp.read(&send(1, 5, encode_req_pages(None, 0x1000, 4096)));
        assert_eq!(block(&next).as_deref(), Some("pc.ram"));
        let other_fd = rp.read(&send(1, 6, encode_req_pages(None, 0x1000, 4096)));
        assert_eq!(block(&other_fd), None);
    }

    #[test]
    fn random_payloads_yield_nothing() {
        assert!(parse(b"\x00\x04\x00\x0bxxxxxxxxxxx").is_empty());
        assert!(parse(b"GET / HTTP/1.1\r\n").is_empty());
        assert!(parse(&[]).is_empty());
    }
}
