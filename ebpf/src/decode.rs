//! Safe decoding of ring-buffer records into the [`abi`](crate::abi) structs.
//! All byte-to-struct reading of the crate lives here.

use std::mem::size_of;

use crate::abi::{
    BinKey, BinVal, FaultWake, Hdr, Kind, KvmAsyncPf, PageRun, PagesSent, PlacerRun, Send, SockLen,
    TcpProbe, TcpRetrans, Thread, UffdFd, UffdIoctl, UffdRead,
};

/// One decoded ring-buffer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEvent {
    /// A uffd-resolved block of a thread.
    FaultWake(FaultWake),
    /// A `read()` on a uffd fd (boxed: 296 bytes).
    UffdRead(Box<UffdRead>),
    /// An ioctl on a uffd fd.
    UffdIoctl(UffdIoctl),
    /// A uffd fd appeared or was closed.
    UffdFd(UffdFd),
    /// A send on a socket fd.
    Send(Send),
    /// A socket byte count.
    SockLen(SockLen),
    /// A TCP probe sample.
    TcpProbe(TcpProbe),
    /// A TCP retransmission.
    TcpRetrans(TcpRetrans),
    /// Thread lifecycle.
    Thread(Thread),
    /// A KVM async page-fault step.
    KvmAsyncPf(KvmAsyncPf),
    /// The placing thread's first moment after a waking placement.
    PlacerRun(PlacerRun),
    /// A receive on a source's socket fd.
    Recv(Send),
    /// A send of pages by a source (boxed: 1072 bytes).
    PagesSent(Box<PagesSent>),
}

impl RawEvent {
    /// The record's common header.
    pub fn hdr(&self) -> &Hdr {
        match self {
            RawEvent::FaultWake(e) => &e.hdr,
            RawEvent::UffdRead(e) => &e.hdr,
            RawEvent::UffdIoctl(e) => &e.hdr,
            RawEvent::UffdFd(e) => &e.hdr,
            RawEvent::Send(e) | RawEvent::Recv(e) => &e.hdr,
            RawEvent::SockLen(e) => &e.hdr,
            RawEvent::TcpProbe(e) => &e.hdr,
            RawEvent::TcpRetrans(e) => &e.hdr,
            RawEvent::Thread(e) => &e.hdr,
            RawEvent::KvmAsyncPf(e) => &e.hdr,
            RawEvent::PlacerRun(e) => &e.hdr,
            RawEvent::PagesSent(e) => &e.hdr,
        }
    }

    /// The record's kind.
    pub fn kind(&self) -> Kind {
        match self {
            RawEvent::FaultWake(_) => Kind::FaultWake,
            RawEvent::UffdRead(_) => Kind::UffdRead,
            RawEvent::UffdIoctl(_) => Kind::UffdIoctl,
            RawEvent::UffdFd(_) => Kind::UffdFd,
            RawEvent::Send(_) => Kind::Send,
            RawEvent::SockLen(_) => Kind::SockLen,
            RawEvent::TcpProbe(_) => Kind::TcpProbe,
            RawEvent::TcpRetrans(_) => Kind::TcpRetrans,
            RawEvent::Thread(_) => Kind::Thread,
            RawEvent::KvmAsyncPf(_) => Kind::KvmAsyncPf,
            RawEvent::PlacerRun(_) => Kind::PlacerRun,
            RawEvent::Recv(_) => Kind::Recv,
            RawEvent::PagesSent(_) => Kind::PagesSent,
        }
    }
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the 16-byte header.
    #[error("record of {len} bytes is shorter than the {}-byte header", size_of::<Hdr>())]
    Short {
        /// Bytes received.
        len: usize,
    },
    /// The header names a kind this build does not know (the BPF object and
    /// this crate disagree).
    #[error("unknown record kind {kind} ({len} bytes)")]
    UnknownKind {
        /// The raw kind.
        kind: u16,
        /// Bytes received.
        len: usize,
    },
    /// The length does not match the kind's struct (object/crate mismatch).
    #[error("{} record has {got} bytes, expected {expected}", kind.name())]
    Length {
        /// The kind.
        kind: Kind,
        /// Size of the mirrored struct.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
}

/// Marker for the mirrored structs that may be read from raw bytes.
///
/// # Safety
/// Implementors are `#[repr(C)]`, contain only integer fields and arrays of
/// them (no padding the compiler could use, no pointers, no enums), so every
/// bit pattern of `size_of::<Self>()` bytes is a valid value.
unsafe trait Plain: Copy {}

// SAFETY: each of these is a #[repr(C)] struct of integers / integer arrays /
// other Plain structs, with explicit padding fields (see abi.rs and events.h).
unsafe impl Plain for Hdr {}
// SAFETY: as above.
unsafe impl Plain for FaultWake {}
// SAFETY: as above.
unsafe impl Plain for UffdRead {}
// SAFETY: as above.
unsafe impl Plain for UffdIoctl {}
// SAFETY: as above.
unsafe impl Plain for UffdFd {}
// SAFETY: as above.
unsafe impl Plain for Send {}
// SAFETY: as above.
unsafe impl Plain for SockLen {}
// SAFETY: as above.
unsafe impl Plain for TcpProbe {}
// SAFETY: as above.
unsafe impl Plain for TcpRetrans {}
// SAFETY: as above.
unsafe impl Plain for Thread {}
// SAFETY: as above.
unsafe impl Plain for KvmAsyncPf {}
// SAFETY: as above.
unsafe impl Plain for PlacerRun {}
// SAFETY: as above.
unsafe impl Plain for PageRun {}
// SAFETY: as above.
unsafe impl Plain for PagesSent {}

// SAFETY: as above.
unsafe impl Plain for BinKey {}
// SAFETY: as above.
unsafe impl Plain for BinVal {}

/// One entry of the `ufs_bins` map, as the map holds its key and value.
pub fn decode_bin(
    key: &[u8; size_of::<BinKey>()],
    val: &[u8; size_of::<BinVal>()],
) -> (BinKey, BinVal) {
    (read_prefix(key), read_prefix(val))
}

/// Reads a `T` from the start of `bytes`, which must hold at least
/// `size_of::<T>()` bytes (checked by every caller; asserted here).
fn read_prefix<T: Plain>(bytes: &[u8]) -> T {
    assert!(
        bytes.len() >= size_of::<T>(),
        "read_prefix: caller checked the length"
    );
    // SAFETY: the assert above guarantees size_of::<T>() readable bytes at
    // bytes.as_ptr(); read_unaligned has no alignment requirement; T: Plain
    // means any bit pattern is a valid T.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

fn read_exact<T: Plain>(kind: Kind, bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() == size_of::<T>() {
        Ok(read_prefix(bytes))
    } else {
        Err(DecodeError::Length {
            kind,
            expected: size_of::<T>(),
            got: bytes.len(),
        })
    }
}

/// Reads only the header of a record.
pub fn decode_hdr(bytes: &[u8]) -> Result<Hdr, DecodeError> {
    if bytes.len() < size_of::<Hdr>() {
        return Err(DecodeError::Short { len: bytes.len() });
    }
    Ok(read_prefix(bytes))
}

/// Decodes one ring-buffer record. The length must be exactly the size of the
/// struct its kind names: records are reserved at that size, so any other
/// length means the object and this crate were built from different headers.
pub fn decode(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let hdr = decode_hdr(bytes)?;
    let kind = Kind::from_raw(hdr.kind).ok_or(DecodeError::UnknownKind {
        kind: hdr.kind,
        len: bytes.len(),
    })?;
    Ok(match kind {
        Kind::FaultWake => RawEvent::FaultWake(read_exact(kind, bytes)?),
        Kind::UffdRead => RawEvent::UffdRead(Box::new(read_exact(kind, bytes)?)),
        Kind::UffdIoctl => RawEvent::UffdIoctl(read_exact(kind, bytes)?),
        Kind::UffdFd => RawEvent::UffdFd(read_exact(kind, bytes)?),
        Kind::Send => RawEvent::Send(read_exact(kind, bytes)?),
        Kind::SockLen => RawEvent::SockLen(read_exact(kind, bytes)?),
        Kind::TcpProbe => RawEvent::TcpProbe(read_exact(kind, bytes)?),
        Kind::TcpRetrans => RawEvent::TcpRetrans(read_exact(kind, bytes)?),
        Kind::Thread => RawEvent::Thread(read_exact(kind, bytes)?),
        Kind::KvmAsyncPf => RawEvent::KvmAsyncPf(read_exact(kind, bytes)?),
        Kind::PlacerRun => RawEvent::PlacerRun(read_exact(kind, bytes)?),
        Kind::Recv => RawEvent::Recv(read_exact(kind, bytes)?),
        Kind::PagesSent => RawEvent::PagesSent(Box::new(read_exact(kind, bytes)?)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{ioctl, uffd_event, UffdMsg};

    /// Serializes a Plain struct the way the kernel lays it out.
    fn bytes_of<T: Plain>(v: &T) -> Vec<u8> {
        // SAFETY: T: Plain is repr(C) with explicit padding, so all
        // size_of::<T>() bytes behind &T are initialized.
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn hdr(kind: Kind) -> Hdr {
        Hdr {
            kind: kind as u16,
            cpu: 1,
            tid: 4242,
            ts: 123_456_789,
        }
    }

    #[test]
    fn round_trips_every_kind() {
        let mut read = UffdRead {
            hdr: hdr(Kind::UffdRead),
            n_msgs: 2,
            ret: 64,
            ..UffdRead::default()
        };
        read.msgs[0] = UffdMsg {
            event: uffd_event::PAGEFAULT,
            arg0: uffd_event::FLAG_WRITE,
            arg1: 0x7f00_0000_1000,
            arg2: 77,
            ..UffdMsg::default()
        };
        let cases: Vec<(Vec<u8>, RawEvent)> = vec![
            {
                let v = FaultWake {
                    hdr: hdr(Kind::FaultWake),
                    fault_addr: 0x1000,
                    ioctl_cmd: ioctl::COPY,
                    flags: 1,
                    ..FaultWake::default()
                };
                (bytes_of(&v), RawEvent::FaultWake(v))
            },
            (bytes_of(&read), RawEvent::UffdRead(Box::new(read))),
            {
                let v = UffdIoctl {
                    hdr: hdr(Kind::UffdIoctl),
                    cmd: ioctl::ZEROPAGE,
                    result: -17,
                    ..UffdIoctl::default()
                };
                (bytes_of(&v), RawEvent::UffdIoctl(v))
            },
            {
                let v = UffdFd {
                    hdr: hdr(Kind::UffdFd),
                    fd: 9,
                    tgid: 10,
                    op: 1,
                    pad: 0,
                };
                (bytes_of(&v), RawEvent::UffdFd(v))
            },
            {
                let mut v = Send {
                    hdr: hdr(Kind::Send),
                    captured: 3,
                    ..Send::default()
                };
                v.bytes[..3].copy_from_slice(b"abc");
                (bytes_of(&v), RawEvent::Send(v))
            },
            {
                let v = SockLen {
                    hdr: hdr(Kind::SockLen),
                    ret: -11,
                    ..SockLen::default()
                };
                (bytes_of(&v), RawEvent::SockLen(v))
            },
            {
                let v = TcpProbe {
                    hdr: hdr(Kind::TcpProbe),
                    srtt_us: 55,
                    ..TcpProbe::default()
                };
                (bytes_of(&v), RawEvent::TcpProbe(v))
            },
            {
                let v = TcpRetrans {
                    hdr: hdr(Kind::TcpRetrans),
                    err: -1,
                    ..TcpRetrans::default()
                };
                (bytes_of(&v), RawEvent::TcpRetrans(v))
            },
            {
                let mut v = Thread {
                    hdr: hdr(Kind::Thread),
                    op: 2,
                    ..Thread::default()
                };
                v.comm[..4].copy_from_slice(b"CPU ");
                (bytes_of(&v), RawEvent::Thread(v))
            },
            {
                let v = KvmAsyncPf {
                    hdr: hdr(Kind::KvmAsyncPf),
                    gva: 5,
                    ..KvmAsyncPf::default()
                };
                (bytes_of(&v), RawEvent::KvmAsyncPf(v))
            },
            {
                let v = PlacerRun {
                    hdr: hdr(Kind::PlacerRun),
                    how: 2,
                    ..PlacerRun::default()
                };
                (bytes_of(&v), RawEvent::PlacerRun(v))
            },
            {
                let mut v = Send {
                    hdr: hdr(Kind::Recv),
                    captured: 4,
                    ..Send::default()
                };
                v.bytes[..4].copy_from_slice(&[0, 1, 0, 12]);
                (bytes_of(&v), RawEvent::Recv(v))
            },
            {
                let mut v = PagesSent {
                    hdr: hdr(Kind::PagesSent),
                    n_runs: 1,
                    ..PagesSent::default()
                };
                v.runs[0] = PageRun {
                    at: 8,
                    addr: 0x7f00_0000_0000,
                    header: 0x1000_0028_u64.to_be_bytes(),
                    page_len: 4096,
                    pages: 3,
                    flags: 1,
                };
                (bytes_of(&v), RawEvent::PagesSent(Box::new(v)))
            },
        ];
        assert_eq!(cases.len(), Kind::ALL.len(), "one case per kind");
        for (bytes, want) in cases {
            assert_eq!(bytes.len(), want.kind().record_size());
            let got = decode(&bytes)
                .unwrap_or_else(|e| panic!("decoding a {} record failed: {e}", want.kind().name()));
            assert_eq!(got, want);
        }
    }

    #[test]
    fn decodes_at_odd_alignment() {
        let v = UffdIoctl {
            hdr: hdr(Kind::UffdIoctl),
            start: 0xdead_beef_0000,
            ..UffdIoctl::default()
        };
        let mut buf = vec![0u8];
        buf.extend(bytes_of(&v));
        assert_eq!(decode(&buf[1..]), Ok(RawEvent::UffdIoctl(v)));
    }

    #[test]
    fn uffd_read_accessors() {
        let mut r = UffdRead {
            n_msgs: 12,
            ..UffdRead::default()
        };
        r.msgs[0].arg2 = 0xffff_ffff_0000_0007;
        assert_eq!(r.messages().len(), 8, "capture is capped at 8");
        assert_eq!(r.msgs[0].ptid(), 7);
        r.n_msgs = 1;
        assert_eq!(r.messages().len(), 1);
    }

    #[test]
    fn short_buffer_is_an_error() {
        assert_eq!(decode(&[]), Err(DecodeError::Short { len: 0 }));
        assert_eq!(decode(&[1u8; 15]), Err(DecodeError::Short { len: 15 }));
        // A valid header whose body is cut short.
        let bytes = bytes_of(&FaultWake {
            hdr: hdr(Kind::FaultWake),
            ..FaultWake::default()
        });
        assert_eq!(
            decode(&bytes[..100]),
            Err(DecodeError::Length {
                kind: Kind::FaultWake,
                expected: 120,
                got: 100
            })
        );
    }

    #[test]
    fn longer_record_is_an_error() {
        let mut bytes = bytes_of(&UffdFd {
            hdr: hdr(Kind::UffdFd),
            ..UffdFd::default()
        });
        bytes.extend([0u8; 8]);
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::Length {
                kind: Kind::UffdFd,
                expected: 32,
                got: 40
            })
        ));
    }

    #[test]
    fn unknown_kind_is_an_error() {
        for kind in [0u16, 14, 0xffff] {
            let mut bytes = bytes_of(&hdr(Kind::FaultWake));
            bytes[..2].copy_from_slice(&kind.to_ne_bytes());
            assert_eq!(
                decode(&bytes),
                Err(DecodeError::UnknownKind { kind, len: 16 })
            );
        }
    }

    #[test]
    fn error_messages_name_the_problem() {
        let e = DecodeError::Length {
            kind: Kind::Send,
            expected: 120,
            got: 7,
        };
        assert_eq!(e.to_string(), "send record has 7 bytes, expected 120");
    }
}
