//! The trace file: a versioned container of checksummed, compressed frames.
//!
//! ```text
//! header  "UFFDSCOP" | u16 version | u16 flags(0) | u32 meta_len | meta JSON | u32 crc32(meta)
//! frame   "UFRM" | u32 payload_len | u32 raw_len | u32 records | u32 crc32(payload) | payload
//! ```
//! All integers are little-endian. `payload` is zstd-compressed record bytes
//! ([`crate::codec`]). A frame is self-contained, so a reader keeps every good
//! frame of a damaged file and reports the byte offset and cause where it stopped.
//! Lengths are checked against fixed caps and the remaining file size before
//! anything is allocated.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::codec::{CodecError, Decoder, Encoder};
use crate::record::Record;

/// File magic.
pub const MAGIC: &[u8; 8] = b"UFFDSCOP";
/// Frame magic.
pub const FRAME_MAGIC: &[u8; 4] = b"UFRM";
/// The format version this build writes. Version 2 added the kernel's own
/// facts to each sleep ([`crate::record::SleepKernel`]); version 3 each
/// sleep's resume time, the placing thread's moment after a waking placement
/// ([`crate::record::PlacerRun`]), KVM async page-fault steps
/// ([`crate::record::KvmAsync`]) and background placements counted in bins
/// ([`crate::record::PlacementBin`]); version 4 the source side's page sends
/// ([`crate::record::PagesSent`]), TCP send sequence state
/// ([`crate::record::TcpSeq`]) and the `side` and `detail` metadata. This
/// build reads versions [`OLDEST_VERSION`]..=`VERSION`.
pub const VERSION: u16 = 4;
/// The oldest format version this build reads.
pub const OLDEST_VERSION: u16 = 1;
/// Largest metadata block accepted.
pub const MAX_META: u32 = 1 << 20;
/// Largest compressed frame accepted.
pub const MAX_PAYLOAD: u32 = 16 << 20;
/// Largest decompressed frame accepted.
pub const MAX_RAW: u32 = 64 << 20;
/// The writer closes a frame once this many raw bytes are buffered.
pub const FRAME_TARGET: usize = 1 << 20;
const FRAME_HEADER: usize = 20;

/// Metadata stored once at the head of a trace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceMeta {
    /// The tool and version that wrote the trace.
    pub tool: String,
    pub host: String,
    pub kernel: String,
    /// `CLOCK_REALTIME - CLOCK_MONOTONIC` at recording start, ns.
    pub realtime_offset_ns: i64,
    /// Monotonic ns when recording started.
    pub start_ns: u64,
    pub target_pid: u32,
    pub target_comm: String,
    #[serde(default)]
    pub target_cmdline: Vec<String>,
    #[serde(default)]
    pub qemu_version: Option<String>,
    /// Tracepoints attached and other capabilities, as found on the host.
    #[serde(default)]
    pub features: Vec<String>,
    /// Which end of the migration was recorded (format 4); `None` in older
    /// traces, which are all destination recordings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side: Option<crate::record::Side>,
    /// The recording's `--detail` level (format 4); `None` in older traces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<crate::record::Detail>,
    /// Anything else the recorder wants to keep.
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl TraceMeta {
    /// Whether the recording attached the system-call and socket tracepoints
    /// ([`crate::record::Detail::records_syscalls`]); traces from before
    /// `--detail` always did.
    pub fn records_syscalls(&self) -> bool {
        self.detail
            .is_none_or(crate::record::Detail::records_syscalls)
    }
}

/// Why a trace could not be read (any further).
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("I/O error at byte {offset}: {source}")]
    Io { offset: u64, source: io::Error },
    #[error("not a uffdscope trace (bad magic at byte 0)")]
    BadMagic,
    #[error("trace format version {found} is newer than this uffdscope supports (up to {VERSION}); upgrade uffdscope")]
    UnsupportedVersion { found: u16 },
    #[error("trace format version {found} does not exist (versions start at {OLDEST_VERSION}): the header is damaged")]
    InvalidVersion { found: u16 },
    #[error("header flags {flags:#06x} at byte 10 are not defined by format version {version}: the header is damaged or from a newer uffdscope")]
    UnknownHeaderFlags { flags: u16, version: u16 },
    #[error("metadata length {len} at byte 12 exceeds the limit of {MAX_META} bytes")]
    MetaTooLarge { len: u32 },
    #[error("metadata checksum mismatch")]
    MetaChecksum,
    #[error("metadata is not valid JSON: {0}")]
    MetaJson(String),
    #[error("file ends inside the header")]
    TruncatedHeader,
    #[error("truncated frame at byte {offset}: {detail}")]
    TruncatedFrame { offset: u64, detail: String },
    #[error("corrupt frame at byte {offset}: {detail}")]
    CorruptFrame { offset: u64, detail: String },
    #[error("bad record in frame at byte {offset}: {source}")]
    Record { offset: u64, source: CodecError },
}

impl TraceError {
    /// True when the error is about the tail of the file, after which the
    /// frames already read remain valid.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            TraceError::TruncatedFrame { .. }
                | TraceError::CorruptFrame { .. }
                | TraceError::Record { .. }
                | TraceError::Io { .. }
        )
    }
}

/// Streams records into frames.
pub struct TraceWriter<W: Write> {
    out: W,
    enc: Encoder,
    raw: Vec<u8>,
    records: u32,
    bytes_written: u64,
    records_written: u64,
}

impl TraceWriter<File> {
    /// Creates `path` for a new trace: never clobbers an existing file and never
    /// follows a symlink (`O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600 on Unix).
    pub fn create(path: &Path, meta: &TraceMeta) -> io::Result<Self> {
        let file = create_exclusive(path)?;
        Self::new(file, meta)
    }
}

/// Opens a new file exclusively, without following symlinks.
pub fn create_exclusive(path: &Path) -> io::Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NOFOLLOW: 0o400000 on x86/arm Linux and 0x100 on BSD/macOS; libc is
        // not a dependency here, so pick per target. create_new already implies
        // O_EXCL, which refuses a dangling symlink too.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        opts.custom_flags(0o400_000);
        #[cfg(any(target_os = "macos", target_os = "freebsd", target_os = "ios"))]
        opts.custom_flags(0x100);
        opts.mode(0o600);
    }
    opts.open(path)
}

impl<W: Write> TraceWriter<W> {
    /// Writes the header and returns a writer for the frames.
    pub fn new(mut out: W, meta: &TraceMeta) -> io::Result<Self> {
        let meta_json = serde_json::to_vec(meta).map_err(io::Error::other)?;
        let meta_len = u32::try_from(meta_json.len())
            .ok()
            .filter(|&l| l <= MAX_META)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "metadata too large"))?;
        let mut head = Vec::with_capacity(24 + meta_json.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&0u16.to_le_bytes());
        head.extend_from_slice(&meta_len.to_le_bytes());
        head.extend_from_slice(&meta_json);
        head.extend_from_slice(&crc32fast::hash(&meta_json).to_le_bytes());
        out.write_all(&head)?;
        Ok(Self {
            out,
            enc: Encoder::new(),
            raw: Vec::with_capacity(FRAME_TARGET + 4096),
            records: 0,
            bytes_written: head.len() as u64,
            records_written: 0,
        })
    }

    /// Appends a record; closes a frame when enough bytes are buffered.
    pub fn push(&mut self, rec: &Record) -> io::Result<()> {
        self.enc.encode(rec, &mut self.raw);
        self.records += 1;
        if self.raw.len() >= FRAME_TARGET {
            self.flush_frame()?;
        }
        Ok(())
    }

    /// Closes the current frame (if any records are buffered) and flushes it to
    /// the output, so a reader sees everything pushed so far.
    pub fn flush_frame(&mut self) -> io::Result<()> {
        if self.records == 0 {
            return self.out.flush();
        }
        let payload = zstd::bulk::compress(&self.raw, 3)?;
        let mut head = [0u8; FRAME_HEADER];
        head[..4].copy_from_slice(FRAME_MAGIC);
        head[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        head[8..12].copy_from_slice(&(self.raw.len() as u32).to_le_bytes());
        head[12..16].copy_from_slice(&self.records.to_le_bytes());
        head[16..20].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        self.out.write_all(&head)?;
        self.out.write_all(&payload)?;
        self.out.flush()?;
        self.bytes_written += (FRAME_HEADER + payload.len()) as u64;
        self.records_written += u64::from(self.records);
        self.raw.clear();
        self.records = 0;
        self.enc = Encoder::new();
        Ok(())
    }

    /// Records buffered but not yet in a frame.
    pub fn pending_records(&self) -> u32 {
        self.records
    }

    /// Bytes written so far (header plus closed frames).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Records in closed frames.
    pub fn records_written(&self) -> u64 {
        self.records_written
    }

    /// Flushes the last frame and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.flush_frame()?;
        Ok(self.out)
    }
}

/// Streams records out of a trace, one frame in memory at a time.
pub struct TraceReader<R: Read> {
    input: R,
    meta: TraceMeta,
    version: u16,
    offset: u64,
    /// Bytes left in the input when known (files), bounding allocations.
    remaining: Option<u64>,
    frame: Vec<u8>,
    frame_offset: u64,
    frame_records: u64,
    frames_read: u64,
    records_read: u64,
    stopped: bool,
}

impl TraceReader<BufReader<File>> {
    /// Opens a trace file, or a pipe.
    pub fn open(path: &Path) -> Result<Self, TraceError> {
        let file = File::open(path).map_err(|source| TraceError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut input = BufReader::with_capacity(1 << 16, file);
        let meta = input
            .get_mut()
            .metadata()
            .map_err(|source| TraceError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        // A pipe (`<(cat t)`, `/dev/stdin`) reports size 0: its length is
        // unknown, not zero; the fixed caps still bound every allocation.
        Self::with_len(input, meta.is_file().then_some(meta.len()))
    }
}

impl<R: Read> TraceReader<R> {
    /// Reads the header from `input` (length unknown: caps still apply).
    pub fn new(input: R) -> Result<Self, TraceError> {
        Self::with_len(input, None)
    }

    /// Reads the header; `len` is the total input size when known.
    pub fn with_len(mut input: R, len: Option<u64>) -> Result<Self, TraceError> {
        let mut head = [0u8; 16];
        read_exact_or(&mut input, &mut head, 0, || TraceError::TruncatedHeader)?;
        if &head[..8] != MAGIC {
            return Err(TraceError::BadMagic);
        }
        let version = u16::from_le_bytes([head[8], head[9]]);
        if version < OLDEST_VERSION {
            return Err(TraceError::InvalidVersion { found: version });
        }
        if version > VERSION {
            return Err(TraceError::UnsupportedVersion { found: version });
        }
        let flags = u16::from_le_bytes([head[10], head[11]]);
        if flags != 0 {
            return Err(TraceError::UnknownHeaderFlags { flags, version });
        }
        let meta_len = u32::from_le_bytes([head[12], head[13], head[14], head[15]]);
        if meta_len > MAX_META || len.is_some_and(|l| u64::from(meta_len) + 20 > l) {
            return Err(if meta_len > MAX_META {
                TraceError::MetaTooLarge { len: meta_len }
            } else {
                TraceError::TruncatedHeader
            });
        }
        let mut meta_buf = vec![0u8; meta_len as usize + 4];
        read_exact_or(&mut input, &mut meta_buf, 16, || {
            TraceError::TruncatedHeader
        })?;
        let (meta_json, crc) = meta_buf.split_at(meta_len as usize);
        if crc32fast::hash(meta_json).to_le_bytes() != crc {
            return Err(TraceError::MetaChecksum);
        }
        let meta: TraceMeta =
            serde_json::from_slice(meta_json).map_err(|e| TraceError::MetaJson(e.to_string()))?;
        let offset = 20 + u64::from(meta_len);
        Ok(Self {
            input,
            meta,
            version,
            offset,
            remaining: len.map(|l| l - offset),
            frame: Vec::new(),
            frame_offset: 0,
            frame_records: 0,
            frames_read: 0,
            records_read: 0,
            stopped: false,
        })
    }

    pub fn meta(&self) -> &TraceMeta {
        &self.meta
    }

    pub fn version(&self) -> u16 {
        self.version
    }

    pub fn frames_read(&self) -> u64 {
        self.frames_read
    }

    pub fn records_read(&self) -> u64 {
        self.records_read
    }

    /// Byte offset of the first byte not yet consumed.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads and verifies the next frame. `Ok(false)` at a clean end of file.
    fn load_frame(&mut self) -> Result<bool, TraceError> {
        let at = self.offset;
        let mut head = [0u8; FRAME_HEADER];
        let got = read_up_to(&mut self.input, &mut head)
            .map_err(|source| TraceError::Io { offset: at, source })?;
        if got == 0 {
            return Ok(false);
        }
        if got < FRAME_HEADER {
            return Err(TraceError::TruncatedFrame {
                offset: at,
                detail: format!("only {got} of {FRAME_HEADER} header bytes"),
            });
        }
        if &head[..4] != FRAME_MAGIC {
            return Err(TraceError::CorruptFrame {
                offset: at,
                detail: "bad frame magic".into(),
            });
        }
        let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let (payload_len, raw_len, records, crc) = (word(4), word(8), word(12), word(16));
        if payload_len > MAX_PAYLOAD || raw_len > MAX_RAW {
            return Err(TraceError::CorruptFrame {
                offset: at,
                detail: format!(
                    "frame claims {payload_len} compressed / {raw_len} raw bytes, over the limits ({MAX_PAYLOAD} / {MAX_RAW})"
                ),
            });
        }
        if let Some(rem) = self.remaining {
            let need = FRAME_HEADER as u64 + u64::from(payload_len);
            if need > rem {
                return Err(TraceError::TruncatedFrame {
                    offset: at,
                    detail: format!(
                        "frame needs {need} bytes but the file has {rem} left (recording interrupted?)"
                    ),
                });
            }
        }
        let mut payload = vec![0u8; payload_len as usize];
        let got = read_up_to(&mut self.input, &mut payload)
            .map_err(|source| TraceError::Io { offset: at, source })?;
        if got < payload.len() {
            return Err(TraceError::TruncatedFrame {
                offset: at,
                detail: format!("only {got} of {payload_len} payload bytes"),
            });
        }
        if crc32fast::hash(&payload) != crc {
            return Err(TraceError::CorruptFrame {
                offset: at,
                detail: "checksum mismatch".into(),
            });
        }
        let raw = zstd::bulk::decompress(&payload, raw_len as usize).map_err(|e| {
            TraceError::CorruptFrame {
                offset: at,
                detail: format!("decompression failed: {e}"),
            }
        })?;
        if raw.len() != raw_len as usize {
            return Err(TraceError::CorruptFrame {
                offset: at,
                detail: format!("decompressed to {} bytes, header says {raw_len}", raw.len()),
            });
        }
        let consumed = FRAME_HEADER as u64 + u64::from(payload_len);
        self.offset += consumed;
        if let Some(rem) = self.remaining.as_mut() {
            *rem -= consumed;
        }
        self.frame = raw;
        self.frame_offset = at;
        self.frame_records = u64::from(records);
        self.frames_read += 1;
        Ok(true)
    }

    /// Reads the next whole frame's records. `Ok(None)` at a clean end.
    /// After an error the reader is finished; everything returned before stays valid.
    pub fn next_frame(&mut self) -> Result<Option<Vec<Record>>, TraceError> {
        if self.stopped {
            return Ok(None);
        }
        let result = self.next_frame_inner();
        if result.is_err() {
            self.stopped = true;
        }
        result
    }

    fn next_frame_inner(&mut self) -> Result<Option<Vec<Record>>, TraceError> {
        let mut out = Vec::new();
        Ok(self.decode_frame(&mut |r| out.push(r))?.then_some(out))
    }

    /// Loads the next frame and hands its records to `f` one by one.
    /// `Ok(false)` at a clean end.
    fn decode_frame(&mut self, f: &mut impl FnMut(Record)) -> Result<bool, TraceError> {
        if !self.load_frame()? {
            return Ok(false);
        }
        let expected = self.frame_records;
        let mut dec = Decoder::new(&self.frame);
        let mut n = 0u64;
        loop {
            match dec.next_record() {
                Ok(Some(r)) => {
                    n += 1;
                    f(r);
                }
                Ok(None) => break,
                Err(source) => {
                    return Err(TraceError::Record {
                        offset: self.frame_offset,
                        source,
                    })
                }
            }
        }
        self.records_read += n;
        if n != expected {
            return Err(TraceError::CorruptFrame {
                offset: self.frame_offset,
                detail: format!("frame holds {n} records, header says {expected}"),
            });
        }
        Ok(true)
    }

    /// Calls `f` on every record; stops at the end or at the first damage.
    /// Returns the error that ended reading, if any. Records of a frame that
    /// turns out damaged part-way are still delivered up to the damage.
    pub fn for_each(&mut self, mut f: impl FnMut(Record)) -> Option<TraceError> {
        if self.stopped {
            return None;
        }
        loop {
            match self.decode_frame(&mut f) {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    self.stopped = true;
                    return Some(e);
                }
            }
        }
    }
}

fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn read_exact_or(
    input: &mut impl Read,
    buf: &mut [u8],
    offset: u64,
    short: impl FnOnce() -> TraceError,
) -> Result<(), TraceError> {
    let got = read_up_to(input, buf).map_err(|source| TraceError::Io { offset, source })?;
    if got < buf.len() {
        return Err(short());
    }
    Ok(())
}

/// Everything in a trace that could be read, and why reading stopped early.
#[derive(Debug)]
pub struct ReadAll {
    pub meta: TraceMeta,
    pub records: Vec<Record>,
    pub damage: Option<TraceError>,
}

/// Reads a whole trace into memory (tests, small traces). Header errors are
/// returned as `Err`; damage after the header is returned in [`ReadAll::damage`].
pub fn read_all(input: &[u8]) -> Result<ReadAll, TraceError> {
    let mut reader = TraceReader::with_len(input, Some(input.len() as u64))?;
    let mut records = Vec::new();
    let damage = reader.for_each(|r| records.push(r));
    Ok(ReadAll {
        meta: reader.meta.clone(),
        records,
        damage,
    })
}

/// Writes records to an in-memory trace (tests, generators).
pub fn write_all(meta: &TraceMeta, records: &[Record]) -> Vec<u8> {
    let mut w = TraceWriter::new(Vec::new(), meta).expect("writing to a Vec cannot fail");
    for r in records {
        w.push(r).expect("writing to a Vec cannot fail");
    }
    w.finish().expect("writing to a Vec cannot fail")
}
