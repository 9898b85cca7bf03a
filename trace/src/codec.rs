//! Record ⇄ bytes inside one trace frame.
//!
//! Each record is a tag byte followed by LEB128 varints. Timestamps are coded as
//! zig-zag deltas against the previous record's main timestamp, and secondary
//! timestamps against the record's own main one; addresses as deltas against the
//! previous address in the frame. Sequential page placements then cost a few
//! bytes each before compression. The state resets at every frame, so frames
//! decode independently.

use crate::record::{
    Direction, Drops, FaultEntry, FaultSource, GuestLine, IoctlOp, KvmAsync, KvmAsyncOp, NewUffd,
    Note, PageRun, PagesSent, PerfSample, PlacementBin, PlacerHow, PlacerRun, ProcessInfo, Qmp,
    Record, Role, Sleep, SleepFlags, SleepKernel, SockIo, SockLen, SocketInfo, TcpProbe,
    TcpRetransmit, TcpSeq, ThreadInfo, UffdIoctl, UffdMsg, UffdRange, UffdRead,
};

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("record truncated at byte {0} of the frame")]
    Truncated(usize),
    #[error("unknown record tag {tag} at byte {at} of the frame")]
    UnknownTag { tag: u8, at: usize },
    #[error("varint longer than 10 bytes at byte {0} of the frame")]
    VarintOverflow(usize),
    #[error("invalid {what} value {value} at byte {at} of the frame")]
    BadValue {
        what: &'static str,
        value: u64,
        at: usize,
    },
    #[error("invalid UTF-8 string at byte {0} of the frame")]
    BadUtf8(usize),
}

mod tag {
    pub const PROCESS: u8 = 1;
    pub const THREAD: u8 = 2;
    pub const SLEEP: u8 = 3;
    pub const UFFD_READ: u8 = 4;
    pub const UFFD_IOCTL: u8 = 5;
    pub const UFFD_RANGE: u8 = 6;
    pub const NEW_UFFD: u8 = 7;
    pub const SOCK_IO: u8 = 8;
    pub const SOCK_LEN: u8 = 9;
    pub const SOCKET: u8 = 10;
    pub const TCP_PROBE: u8 = 11;
    pub const TCP_RETRANSMIT: u8 = 12;
    pub const DROPS: u8 = 13;
    pub const PERF: u8 = 14;
    pub const QMP: u8 = 15;
    pub const GUEST_LINE: u8 = 16;
    pub const NOTE: u8 = 17;
    /// Format 3.
    pub const PLACER_RUN: u8 = 18;
    /// Format 3.
    pub const KVM_ASYNC: u8 = 19;
    /// Format 3.
    pub const PLACEMENT_BIN: u8 = 20;
    /// Format 4.
    pub const PAGES_SENT: u8 = 21;
    /// Format 4: a `TCP_PROBE` followed by the send sequence state.
    pub const TCP_PROBE_SEQ: u8 = 22;
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Appends `v` as an unsigned LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Encodes records into a frame buffer, keeping the delta state.
#[derive(Debug, Default)]
pub struct Encoder {
    last_ts: u64,
    last_addr: u64,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    fn uv(out: &mut Vec<u8>, v: u64) {
        put_varint(out, v);
    }

    fn iv(out: &mut Vec<u8>, v: i64) {
        Self::uv(out, zigzag(v));
    }

    fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        Self::uv(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    fn ts(&mut self, out: &mut Vec<u8>, ts: u64) {
        Self::iv(out, ts.wrapping_sub(self.last_ts) as i64);
        self.last_ts = ts;
    }

    fn rel(out: &mut Vec<u8>, base: u64, ts: u64) {
        Self::iv(out, base.wrapping_sub(ts) as i64);
    }

    fn addr(&mut self, out: &mut Vec<u8>, addr: u64) {
        Self::iv(out, addr.wrapping_sub(self.last_addr) as i64);
        self.last_addr = addr;
    }

    /// Appends one record to `out`.
    pub fn encode(&mut self, rec: &Record, out: &mut Vec<u8>) {
        match rec {
            Record::Process(r) => {
                out.push(tag::PROCESS);
                self.ts(out, r.ts);
                Self::uv(out, u64::from(r.pid));
                Self::bytes(out, r.comm.as_bytes());
                Self::uv(out, r.cmdline.len() as u64);
                for arg in &r.cmdline {
                    Self::bytes(out, arg.as_bytes());
                }
            }
            Record::Thread(r) => {
                out.push(tag::THREAD);
                self.ts(out, r.ts);
                Self::uv(out, u64::from(r.tid));
                Self::bytes(out, r.name.as_bytes());
                out.push(r.role.code());
            }
            Record::Sleep(r) => self.encode_sleep(r, out),
            Record::UffdRead(r) => {
                out.push(tag::UFFD_READ);
                self.ts(out, r.exit_ts);
                Self::uv(out, u64::from(r.tid));
                Self::rel(out, r.exit_ts, r.enter_ts);
                Self::iv(out, i64::from(r.fd));
                Self::iv(out, r.ret);
                Self::uv(out, r.msgs.len() as u64);
                for m in &r.msgs {
                    out.push(m.event);
                    Self::uv(out, m.flags);
                    self.addr(out, m.address);
                    Self::uv(out, u64::from(m.ptid));
                }
            }
            Record::UffdIoctl(r) => {
                out.push(tag::UFFD_IOCTL);
                self.ts(out, r.exit_ts);
                Self::uv(out, u64::from(r.tid));
                Self::rel(out, r.exit_ts, r.enter_ts);
                Self::iv(out, i64::from(r.fd));
                Self::uv(out, u64::from(r.op.cmd()));
                self.addr(out, r.start);
                Self::uv(out, r.len);
                Self::uv(out, r.mode);
                Self::iv(out, r.ret);
                Self::iv(out, r.result);
                Self::uv(out, u64::from(r.woken));
            }
            Record::PlacementBin(r) => {
                out.push(tag::PLACEMENT_BIN);
                self.ts(out, r.last_exit_ts);
                Self::uv(out, u64::from(r.tid));
                Self::uv(out, u64::from(r.op.cmd()));
                Self::uv(out, r.len);
                Self::rel(out, r.last_exit_ts, r.first_exit_ts);
                Self::uv(out, r.count);
                Self::uv(out, r.ioctl_ns);
            }
            Record::UffdRange(r) => {
                out.push(tag::UFFD_RANGE);
                self.ts(out, r.ts);
                self.addr(out, r.start);
                Self::uv(out, r.len);
                Self::uv(out, r.mode);
            }
            Record::NewUffd(r) => {
                out.push(tag::NEW_UFFD);
                self.ts(out, r.ts);
                Self::uv(out, u64::from(r.tid));
                Self::iv(out, i64::from(r.fd));
            }
            Record::SockIo(r) => {
                out.push(tag::SOCK_IO);
                self.ts(out, r.exit_ts);
                Self::uv(out, u64::from(r.tid));
                Self::rel(out, r.exit_ts, r.enter_ts);
                Self::iv(out, i64::from(r.fd));
                out.push(dir_code(r.dir));
                Self::iv(out, r.ret);
                Self::bytes(out, &r.head[..r.head.len().min(SockIo::MAX_HEAD)]);
            }
            Record::SockLen(r) => {
                out.push(tag::SOCK_LEN);
                self.ts(out, r.ts);
                Self::uv(out, u64::from(r.tid));
                Self::uv(out, r.sk);
                out.push(dir_code(r.dir));
                Self::iv(out, r.len);
            }
            Record::Socket(r) => {
                out.push(tag::SOCKET);
                self.ts(out, r.ts);
                Self::iv(out, i64::from(r.fd));
                Self::uv(out, r.inode);
                Self::bytes(out, r.local.as_bytes());
                Self::bytes(out, r.remote.as_bytes());
                Self::uv(out, u64::from(r.local_port));
                Self::uv(out, u64::from(r.remote_port));
            }
            Record::TcpProbe(r) => {
                out.push(if r.seq.is_some() {
                    tag::TCP_PROBE_SEQ
                } else {
                    tag::TCP_PROBE
                });
                self.ts(out, r.ts);
                Self::uv(out, r.sk);
                Self::uv(out, u64::from(r.sport));
                Self::uv(out, u64::from(r.dport));
                Self::uv(out, u64::from(r.srtt_us));
                Self::uv(out, u64::from(r.cwnd));
                if let Some(q) = r.seq {
                    Self::uv(out, u64::from(q.snd_nxt));
                    Self::uv(out, u64::from(q.snd_una));
                    Self::uv(out, u64::from(q.snd_wnd));
                }
            }
            Record::TcpRetransmit(r) => {
                out.push(tag::TCP_RETRANSMIT);
                self.ts(out, r.ts);
                Self::uv(out, r.sk);
                Self::uv(out, u64::from(r.sport));
                Self::uv(out, u64::from(r.dport));
            }
            Record::Drops(r) => {
                out.push(tag::DROPS);
                self.ts(out, r.ts);
                Self::uv(out, r.total);
            }
            Record::Perf(r) => {
                out.push(tag::PERF);
                self.ts(out, r.ts);
                Self::uv(out, u64::from(r.tid));
                Self::bytes(out, r.counter.as_bytes());
                Self::uv(out, r.value);
            }
            Record::Qmp(r) => {
                out.push(tag::QMP);
                self.ts(out, r.ts);
                Self::bytes(out, r.kind.as_bytes());
                Self::bytes(out, r.json.as_bytes());
            }
            Record::GuestLine(r) => {
                out.push(tag::GUEST_LINE);
                self.ts(out, r.ts);
                Self::bytes(out, r.text.as_bytes());
            }
            Record::Note(r) => {
                out.push(tag::NOTE);
                self.ts(out, r.ts);
                Self::bytes(out, r.kind.as_bytes());
                Self::bytes(out, r.text.as_bytes());
            }
            Record::PlacerRun(r) => {
                out.push(tag::PLACER_RUN);
                self.ts(out, r.ts);
                Self::uv(out, u64::from(r.tid));
                out.push(r.how.code());
                Self::rel(out, r.ts, r.ioctl_exit_ts);
                out.push(u8::from(r.out_ts.is_some()));
                if let Some(o) = r.out_ts {
                    Self::rel(out, r.ts, o);
                }
                self.addr(out, r.ioctl_start);
                Self::uv(out, u64::from(r.woken));
            }
            Record::PagesSent(r) => self.encode_pages_sent(r, out),
            Record::KvmAsync(r) => {
                out.push(tag::KVM_ASYNC);
                self.ts(out, r.ts);
                Self::uv(out, u64::from(r.tid));
                out.push(r.op.code());
                Self::uv(out, r.token);
                Self::uv(out, r.gva);
                Self::uv(out, r.gfn);
            }
        }
    }

    fn encode_pages_sent(&mut self, r: &PagesSent, out: &mut Vec<u8>) {
        out.push(tag::PAGES_SENT);
        self.ts(out, r.exit_ts);
        Self::uv(out, u64::from(r.tid));
        Self::rel(out, r.exit_ts, r.enter_ts);
        Self::iv(out, i64::from(r.fd));
        Self::iv(out, r.ret);
        out.push(u8::from(r.truncated));
        let runs = &r.runs[..r.runs.len().min(PagesSent::MAX_RUNS)];
        Self::uv(out, runs.len() as u64);
        for run in runs {
            Self::uv(out, run.at);
            self.addr(out, run.addr);
            Self::uv(out, u64::from(run.page_len));
            Self::uv(out, u64::from(run.pages));
            out.push(u8::from(run.header.is_some()));
            if let Some(h) = run.header {
                out.extend_from_slice(&h.to_le_bytes());
            }
        }
    }

    fn encode_sleep(&mut self, r: &Sleep, out: &mut Vec<u8>) {
        out.push(tag::SLEEP);
        let main = r.run_ts.unwrap_or(r.woken_ts);
        self.ts(out, main);
        let mut flags = 0u8;
        if r.run_ts.is_some() {
            flags |= 1;
        }
        if let Some(f) = &r.fault {
            flags |= 2;
            match f.source {
                FaultSource::User => {}
                FaultSource::Kvm => flags |= 4,
                FaultSource::Kernel => flags |= SLEEP_KERNEL_MODE_FAULT,
            }
        }
        if r.kernel.is_some() {
            flags |= SLEEP_HAS_KERNEL;
        }
        if r.resume_ts.is_some() {
            flags |= SLEEP_HAS_RESUME;
        }
        out.push(flags);
        Self::uv(out, u64::from(r.tid));
        Self::rel(out, main, r.woken_ts);
        Self::rel(out, main, r.blocked_ts);
        Self::uv(out, u64::from(r.waker_tid));
        Self::uv(out, u64::from(r.wake_op.cmd()));
        self.addr(out, r.wake_start);
        Self::uv(out, r.wake_len);
        if let Some(f) = &r.fault {
            Self::rel(out, main, f.ts);
            self.addr(out, f.addr);
            Self::uv(out, f.ip);
            Self::uv(out, f.error_code);
        }
        if let Some(k) = &r.kernel {
            Self::uv(out, u64::from(k.flags.0));
            Self::uv(out, k.vcpu_id.map_or(0, |v| u64::from(v) + 1));
            Self::uv(out, u64::from(k.block_state));
        }
        if let Some(resume) = r.resume_ts {
            Self::iv(out, resume.wrapping_sub(main) as i64);
        }
    }
}

/// Sleep flag bit (format version 2): the kernel's flags, vCPU id and block
/// state follow the fault entry.
const SLEEP_HAS_KERNEL: u8 = 8;
/// Sleep flag bit (format version 3): the resume time follows, as a delta
/// after the main timestamp.
const SLEEP_HAS_RESUME: u8 = 16;
/// Sleep flag bit (format version 3): the fault entry is a kernel-mode fault
/// (`FaultSource::Kernel`).
const SLEEP_KERNEL_MODE_FAULT: u8 = 32;

fn dir_code(d: Direction) -> u8 {
    match d {
        Direction::Send => 0,
        Direction::Recv => 1,
    }
}

/// Decodes records from one frame's bytes.
#[derive(Debug)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    last_ts: u64,
    last_addr: u64,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            last_ts: 0,
            last_addr: 0,
        }
    }

    /// Byte offset of the next record in the frame.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(CodecError::Truncated(self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    fn uv(&mut self) -> Result<u64, CodecError> {
        // Most values (deltas, small ids) fit one byte.
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
        }
        self.uv_long()
    }

    fn uv_long(&mut self) -> Result<u64, CodecError> {
        let start = self.pos;
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.u8()?;
            if shift == 63 && b > 1 {
                return Err(CodecError::VarintOverflow(start));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::VarintOverflow(start))
    }

    fn iv(&mut self) -> Result<i64, CodecError> {
        self.uv().map(unzigzag)
    }

    fn narrow<T: TryFrom<u64>>(&mut self, what: &'static str) -> Result<T, CodecError> {
        let at = self.pos;
        let v = self.uv()?;
        T::try_from(v).map_err(|_| CodecError::BadValue { what, value: v, at })
    }

    fn fd(&mut self) -> Result<i32, CodecError> {
        let at = self.pos;
        let v = self.iv()?;
        i32::try_from(v).map_err(|_| CodecError::BadValue {
            what: "fd",
            value: v as u64,
            at,
        })
    }

    fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let at = self.pos;
        let len = self.uv()?;
        let remaining = (self.buf.len() - self.pos) as u64;
        if len > remaining {
            return Err(CodecError::Truncated(at));
        }
        let len = len as usize;
        let s = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(s)
    }

    fn string(&mut self) -> Result<String, CodecError> {
        let at = self.pos;
        let b = self.bytes()?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| CodecError::BadUtf8(at))
    }

    fn ts(&mut self) -> Result<u64, CodecError> {
        let d = self.iv()?;
        self.last_ts = self.last_ts.wrapping_add(d as u64);
        Ok(self.last_ts)
    }

    fn rel(&mut self, base: u64) -> Result<u64, CodecError> {
        let d = self.iv()?;
        Ok(base.wrapping_sub(d as u64))
    }

    fn addr(&mut self) -> Result<u64, CodecError> {
        let d = self.iv()?;
        self.last_addr = self.last_addr.wrapping_add(d as u64);
        Ok(self.last_addr)
    }

    fn dir(&mut self) -> Result<Direction, CodecError> {
        let at = self.pos;
        match self.u8()? {
            0 => Ok(Direction::Send),
            1 => Ok(Direction::Recv),
            v => Err(CodecError::BadValue {
                what: "direction",
                value: u64::from(v),
                at,
            }),
        }
    }

    fn flag(&mut self, what: &'static str) -> Result<bool, CodecError> {
        let at = self.pos;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(CodecError::BadValue {
                what,
                value: u64::from(v),
                at,
            }),
        }
    }

    fn u64_le(&mut self) -> Result<u64, CodecError> {
        let end = self.pos.checked_add(8).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(CodecError::Truncated(self.pos))?;
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.buf[self.pos..end]);
        self.pos = end;
        Ok(u64::from_le_bytes(b))
    }

    fn op(&mut self) -> Result<IoctlOp, CodecError> {
        self.narrow::<u32>("ioctl command").map(IoctlOp::from_cmd)
    }

    /// Decodes the next record, or `Ok(None)` at the end of the frame.
    pub fn next_record(&mut self) -> Result<Option<Record>, CodecError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let at = self.pos;
        let t = self.u8()?;
        let rec = match t {
            tag::PROCESS => {
                let ts = self.ts()?;
                let pid = self.narrow("pid")?;
                let comm = self.string()?;
                let n = self.uv()?;
                let mut cmdline = Vec::new();
                for _ in 0..n {
                    // Each arg costs at least one byte, so a lying count fails fast.
                    cmdline.push(self.string()?);
                }
                Record::Process(ProcessInfo {
                    ts,
                    pid,
                    comm,
                    cmdline,
                })
            }
            tag::THREAD => {
                let ts = self.ts()?;
                let tid = self.narrow("tid")?;
                let name = self.string()?;
                let code_at = self.pos;
                let code = self.u8()?;
                let role = Role::from_code(code).ok_or(CodecError::BadValue {
                    what: "role",
                    value: u64::from(code),
                    at: code_at,
                })?;
                Record::Thread(ThreadInfo {
                    ts,
                    tid,
                    name,
                    role,
                })
            }
            tag::SLEEP => self.sleep()?,
            tag::UFFD_READ => {
                let exit_ts = self.ts()?;
                let tid = self.narrow("tid")?;
                let enter_ts = self.rel(exit_ts)?;
                let fd = self.fd()?;
                let ret = self.iv()?;
                let n = self.uv()?;
                let mut msgs = Vec::new();
                for _ in 0..n {
                    let event = self.u8()?;
                    let flags = self.uv()?;
                    let address = self.addr()?;
                    let ptid = self.narrow("ptid")?;
                    msgs.push(UffdMsg {
                        event,
                        flags,
                        address,
                        ptid,
                    });
                }
                Record::UffdRead(UffdRead {
                    tid,
                    enter_ts,
                    exit_ts,
                    fd,
                    ret,
                    msgs,
                })
            }
            tag::UFFD_IOCTL => {
                let exit_ts = self.ts()?;
                let tid = self.narrow("tid")?;
                let enter_ts = self.rel(exit_ts)?;
                let fd = self.fd()?;
                let op = self.op()?;
                let start = self.addr()?;
                let len = self.uv()?;
                let mode = self.uv()?;
                let ret = self.iv()?;
                let result = self.iv()?;
                let woken = self.narrow("woken")?;
                Record::UffdIoctl(UffdIoctl {
                    tid,
                    enter_ts,
                    exit_ts,
                    fd,
                    op,
                    start,
                    len,
                    mode,
                    ret,
                    result,
                    woken,
                })
            }
            tag::PLACEMENT_BIN => self.placement_bin()?,
            tag::UFFD_RANGE => Record::UffdRange(UffdRange {
                ts: self.ts()?,
                start: self.addr()?,
                len: self.uv()?,
                mode: self.uv()?,
            }),
            tag::NEW_UFFD => Record::NewUffd(NewUffd {
                ts: self.ts()?,
                tid: self.narrow("tid")?,
                fd: self.fd()?,
            }),
            tag::SOCK_IO => {
                let exit_ts = self.ts()?;
                let tid = self.narrow("tid")?;
                let enter_ts = self.rel(exit_ts)?;
                let fd = self.fd()?;
                let dir = self.dir()?;
                let ret = self.iv()?;
                let head = self.bytes()?.to_vec();
                Record::SockIo(SockIo {
                    tid,
                    enter_ts,
                    exit_ts,
                    fd,
                    dir,
                    ret,
                    head,
                })
            }
            tag::SOCK_LEN => Record::SockLen(SockLen {
                ts: self.ts()?,
                tid: self.narrow("tid")?,
                sk: self.uv()?,
                dir: self.dir()?,
                len: self.iv()?,
            }),
            tag::SOCKET => Record::Socket(SocketInfo {
                ts: self.ts()?,
                fd: self.fd()?,
                inode: self.uv()?,
                local: self.string()?,
                remote: self.string()?,
                local_port: self.narrow("port")?,
                remote_port: self.narrow("port")?,
            }),
            tag::TCP_PROBE | tag::TCP_PROBE_SEQ => self.tcp_probe(t == tag::TCP_PROBE_SEQ)?,
            tag::PAGES_SENT => self.pages_sent()?,
            tag::TCP_RETRANSMIT => Record::TcpRetransmit(TcpRetransmit {
                ts: self.ts()?,
                sk: self.uv()?,
                sport: self.narrow("port")?,
                dport: self.narrow("port")?,
            }),
            tag::DROPS => Record::Drops(Drops {
                ts: self.ts()?,
                total: self.uv()?,
            }),
            tag::PERF => Record::Perf(PerfSample {
                ts: self.ts()?,
                tid: self.narrow("tid")?,
                counter: self.string()?,
                value: self.uv()?,
            }),
            tag::QMP => Record::Qmp(Qmp {
                ts: self.ts()?,
                kind: self.string()?,
                json: self.string()?,
            }),
            tag::GUEST_LINE => Record::GuestLine(GuestLine {
                ts: self.ts()?,
                text: self.string()?,
            }),
            tag::NOTE => Record::Note(Note {
                ts: self.ts()?,
                kind: self.string()?,
                text: self.string()?,
            }),
            tag::PLACER_RUN => self.placer_run()?,
            tag::KVM_ASYNC => self.kvm_async()?,
            other => return Err(CodecError::UnknownTag { tag: other, at }),
        };
        Ok(Some(rec))
    }

    fn sleep(&mut self) -> Result<Record, CodecError> {
        let main = self.ts()?;
        let flags_at = self.pos;
        let flags = self.u8()?;
        if flags & !(7 | SLEEP_HAS_KERNEL | SLEEP_HAS_RESUME | SLEEP_KERNEL_MODE_FAULT) != 0
            || flags & (4 | SLEEP_KERNEL_MODE_FAULT) == 4 | SLEEP_KERNEL_MODE_FAULT
            || (flags & SLEEP_KERNEL_MODE_FAULT != 0 && flags & 2 == 0)
        {
            return Err(CodecError::BadValue {
                what: "sleep flags",
                value: u64::from(flags),
                at: flags_at,
            });
        }
        let tid = self.narrow("tid")?;
        let woken_ts = self.rel(main)?;
        let blocked_ts = self.rel(main)?;
        let waker_tid = self.narrow("tid")?;
        let wake_op = self.op()?;
        let wake_start = self.addr()?;
        let wake_len = self.uv()?;
        let fault = if flags & 2 != 0 {
            Some(FaultEntry {
                ts: self.rel(main)?,
                addr: self.addr()?,
                ip: self.uv()?,
                error_code: self.uv()?,
                source: if flags & 4 != 0 {
                    FaultSource::Kvm
                } else if flags & SLEEP_KERNEL_MODE_FAULT != 0 {
                    FaultSource::Kernel
                } else {
                    FaultSource::User
                },
            })
        } else {
            None
        };
        let kernel = if flags & SLEEP_HAS_KERNEL != 0 {
            Some(self.sleep_kernel()?)
        } else {
            None
        };
        let resume_ts = if flags & SLEEP_HAS_RESUME != 0 {
            Some(main.wrapping_add(self.iv()? as u64))
        } else {
            None
        };
        Ok(Record::Sleep(Sleep {
            tid,
            fault,
            blocked_ts,
            woken_ts,
            run_ts: (flags & 1 != 0).then_some(main),
            resume_ts,
            waker_tid,
            wake_op,
            wake_start,
            wake_len,
            kernel,
        }))
    }

    fn placer_run(&mut self) -> Result<Record, CodecError> {
        let ts = self.ts()?;
        let tid = self.narrow("tid")?;
        let how_at = self.pos;
        let code = self.u8()?;
        let how = PlacerHow::from_code(code).ok_or(CodecError::BadValue {
            what: "placer how",
            value: u64::from(code),
            at: how_at,
        })?;
        let ioctl_exit_ts = self.rel(ts)?;
        let has_out_at = self.pos;
        let out_ts = match self.u8()? {
            0 => None,
            1 => Some(self.rel(ts)?),
            other => {
                return Err(CodecError::BadValue {
                    what: "placer out flag",
                    value: u64::from(other),
                    at: has_out_at,
                })
            }
        };
        Ok(Record::PlacerRun(PlacerRun {
            ts,
            tid,
            how,
            ioctl_exit_ts,
            out_ts,
            ioctl_start: self.addr()?,
            woken: self.narrow("woken")?,
        }))
    }

    fn kvm_async(&mut self) -> Result<Record, CodecError> {
        let ts = self.ts()?;
        let tid = self.narrow("tid")?;
        let op_at = self.pos;
        let code = self.u8()?;
        let op = KvmAsyncOp::from_code(u32::from(code)).ok_or(CodecError::BadValue {
            what: "kvm async op",
            value: u64::from(code),
            at: op_at,
        })?;
        Ok(Record::KvmAsync(KvmAsync {
            ts,
            tid,
            op,
            token: self.uv()?,
            gva: self.uv()?,
            gfn: self.uv()?,
        }))
    }

    fn tcp_probe(&mut self, with_seq: bool) -> Result<Record, CodecError> {
        let mut probe = TcpProbe {
            ts: self.ts()?,
            sk: self.uv()?,
            sport: self.narrow("port")?,
            dport: self.narrow("port")?,
            srtt_us: self.narrow("srtt")?,
            cwnd: self.narrow("cwnd")?,
            seq: None,
        };
        if with_seq {
            probe.seq = Some(TcpSeq {
                snd_nxt: self.narrow("snd_nxt")?,
                snd_una: self.narrow("snd_una")?,
                snd_wnd: self.narrow("snd_wnd")?,
            });
        }
        Ok(Record::TcpProbe(probe))
    }

    fn pages_sent(&mut self) -> Result<Record, CodecError> {
        let exit_ts = self.ts()?;
        let tid = self.narrow("tid")?;
        let enter_ts = self.rel(exit_ts)?;
        let fd = self.fd()?;
        let ret = self.iv()?;
        let truncated = self.flag("pages_sent truncated")?;
        let n_at = self.pos;
        let n = self.uv()?;
        if n > PagesSent::MAX_RUNS as u64 {
            return Err(CodecError::BadValue {
                what: "page run count",
                value: n,
                at: n_at,
            });
        }
        let mut runs = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let at = self.uv()?;
            let addr = self.addr()?;
            let page_len = self.narrow("page length")?;
            let pages = self.narrow("page count")?;
            let header = if self.flag("page header present")? {
                Some(self.u64_le()?)
            } else {
                None
            };
            runs.push(PageRun {
                at,
                addr,
                page_len,
                pages,
                header,
            });
        }
        Ok(Record::PagesSent(PagesSent {
            tid,
            enter_ts,
            exit_ts,
            fd,
            ret,
            runs,
            truncated,
        }))
    }

    fn placement_bin(&mut self) -> Result<Record, CodecError> {
        let last_exit_ts = self.ts()?;
        let tid = self.narrow("tid")?;
        let op_at = self.pos;
        let op = self.op()?;
        if !matches!(op, IoctlOp::Copy | IoctlOp::ZeroPage) {
            return Err(CodecError::BadValue {
                what: "placement bin ioctl command",
                value: u64::from(op.cmd()),
                at: op_at,
            });
        }
        Ok(Record::PlacementBin(PlacementBin {
            tid,
            op,
            len: self.uv()?,
            first_exit_ts: self.rel(last_exit_ts)?,
            last_exit_ts,
            count: self.uv()?,
            ioctl_ns: self.uv()?,
        }))
    }

    fn sleep_kernel(&mut self) -> Result<SleepKernel, CodecError> {
        let flags_at = self.pos;
        let flags: u16 = self.narrow("sleep kernel flags")?;
        if flags & !SleepFlags::KNOWN != 0 {
            return Err(CodecError::BadValue {
                what: "sleep kernel flags",
                value: u64::from(flags),
                at: flags_at,
            });
        }
        let vcpu_plus_one: u64 = self.uv()?;
        let vcpu_id = match vcpu_plus_one {
            0 => None,
            v => Some(u32::try_from(v - 1).map_err(|_| CodecError::BadValue {
                what: "vcpu id",
                value: v,
                at: flags_at,
            })?),
        };
        Ok(SleepKernel {
            flags: SleepFlags(flags),
            vcpu_id,
            block_state: self.narrow("block state")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_round_trips_extremes() {
        for v in [0i64, 1, -1, i64::MAX, i64::MIN, 4096, -4096] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }

    #[test]
    fn unknown_tag_is_an_error() {
        let mut d = Decoder::new(&[200, 0]);
        assert_eq!(
            d.next_record(),
            Err(CodecError::UnknownTag { tag: 200, at: 0 })
        );
    }

    #[test]
    fn overlong_varint_is_an_error() {
        let buf = [
            tag::DROPS,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x7f,
        ];
        let mut d = Decoder::new(&buf);
        assert_eq!(d.next_record(), Err(CodecError::VarintOverflow(1)));
    }

    #[test]
    fn string_length_beyond_frame_is_truncation_not_allocation() {
        // GuestLine with ts 0 and a string claiming 2^40 bytes.
        let mut buf = vec![tag::GUEST_LINE, 0];
        Encoder::uv(&mut buf, 1 << 40);
        let mut d = Decoder::new(&buf);
        assert_eq!(d.next_record(), Err(CodecError::Truncated(2)));
    }
}
