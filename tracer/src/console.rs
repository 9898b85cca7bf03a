//! Guest-console tap: follows a serial log file (tail -f) or a unix socket
//! and yields each complete line stamped with the host time it arrived.
//!
//! Host arrival stamps are how guest output is put on the trace's clock
//! without trusting the guest's clock (which drifts by seconds under TCG),
//! so a line is stamped when the `read()` that brought its last byte
//! returned. Lines end at `\n`; a trailing `\r` (serial consoles send
//! `\r\n`) is dropped and invalid UTF-8 is replaced, never fatal.
//!
//! File mode wakes on inotify and also polls, so it works where inotify does
//! not (some network or overlay filesystems). It handles a file that is
//! truncated (restarts at its start) or replaced (reopens the path).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A line longer than this is cut and yielded in pieces, so a console that
/// never sends a newline cannot grow memory without bound.
pub const MAX_LINE: usize = 64 * 1024;

/// Most bytes one look at a followed file reads, so an endless source
/// (`/dev/zero`, a flooding pipe) cannot keep the caller from its deadline.
const READ_BUDGET: usize = 1 << 20;

/// Longest wait for a console socket's listener to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest sleep between looks at a followed file when inotify is silent.
const FILE_POLL: Duration = Duration::from_millis(50);

/// Errors of the console tap.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot open guest console {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to guest console socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading guest console {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("guest console socket {path} was closed by its peer")]
    Closed { path: PathBuf },
}

/// Host clock readings taken at one moment.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct HostStamp {
    /// CLOCK_MONOTONIC in ns (the trace's clock: BPF's `bpf_ktime_get_ns`).
    pub mono_ns: u64,
    /// CLOCK_REALTIME in ns since the Unix epoch.
    pub real_ns: u64,
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer and both clocks exist on every Linux.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl HostStamp {
    /// Reads both clocks back to back (monotonic first).
    pub fn now() -> Self {
        let mono_ns = clock_ns(libc::CLOCK_MONOTONIC);
        let real_ns = clock_ns(libc::CLOCK_REALTIME);
        Self { mono_ns, real_ns }
    }
}

/// One console line with its host arrival time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConsoleLine {
    pub stamp: HostStamp,
    /// The line without its terminator.
    pub text: String,
}

/// Where a followed file starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Every line already in the file, then new ones.
    Beginning,
    /// Only lines that start after now; a partly written last line is skipped.
    End,
}

struct FileState {
    file: File,
    ino: u64,
    offset: u64,
    /// inotify instance watching the path; None when inotify is unavailable.
    inotify: Option<OwnedFd>,
}

enum Source {
    File(FileState),
    Socket(UnixStream),
}

/// Follows one guest console and yields stamped lines.
pub struct ConsoleFollower {
    path: PathBuf,
    source: Source,
    pending: Vec<u8>,
    /// Drop bytes up to the first newline (started inside a line).
    skip_to_newline: bool,
    ready: VecDeque<ConsoleLine>,
    closed: bool,
}

fn inotify_watch(path: &Path) -> Option<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: inotify_init1 takes flags only; the result is checked.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd was just returned by inotify_init1 and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mask = libc::IN_MODIFY | libc::IN_ATTRIB | libc::IN_MOVE_SELF | libc::IN_DELETE_SELF;
    // SAFETY: owned is a live inotify fd and c_path a valid C string.
    let wd = unsafe { libc::inotify_add_watch(owned.as_raw_fd(), c_path.as_ptr(), mask) };
    (wd >= 0).then_some(owned)
}

/// Opens `path` for reading without blocking: opening a FIFO with no writer
/// returns at once instead of waiting for one.
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// Waits until `fd` is readable or `timeout` passes; true when readable.
fn wait_readable(fd: i32, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: pfd is one valid pollfd.
    let rc = unsafe { libc::poll(&raw mut pfd, 1, ms) };
    rc > 0
}

fn drain_inotify(fd: i32) {
    let mut buf = [0u8; 4096];
    // SAFETY: buf is valid for its length; the fd is non-blocking.
    while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

impl ConsoleFollower {
    /// Opens `path`: a unix socket is connected to, anything else is followed
    /// as a file from `start`.
    pub fn open(path: &Path, start: StartAt) -> Result<Self, ConsoleError> {
        let meta = std::fs::metadata(path).map_err(|source| ConsoleError::Open {
            path: path.to_owned(),
            source,
        })?;
        if meta.file_type().is_socket() {
            Self::connect_socket(path)
        } else {
            Self::follow_file(path, start)
        }
    }

    /// Follows a regular file that another process appends to.
    pub fn follow_file(path: &Path, start: StartAt) -> Result<Self, ConsoleError> {
        let open_err = |source| ConsoleError::Open {
            path: path.to_owned(),
            source,
        };
        let mut file = open_nonblocking(path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let mut skip_to_newline = false;
        let offset = match start {
            StartAt::End if meta.is_file() && meta.len() > 0 => {
                // Starting inside a line would yield its tail as a line.
                file.seek(SeekFrom::Start(meta.len() - 1))
                    .map_err(open_err)?;
                let mut last = [0u8; 1];
                file.read_exact(&mut last).map_err(open_err)?;
                skip_to_newline = last[0] != b'\n';
                meta.len()
            }
            // From the start, or an empty file where start and end agree.
            StartAt::Beginning | StartAt::End => 0,
        };
        Ok(Self {
            path: path.to_owned(),
            source: Source::File(FileState {
                inotify: inotify_watch(path),
                file,
                ino: meta.ino(),
                offset,
            }),
            pending: Vec::new(),
            skip_to_newline,
            ready: VecDeque::new(),
            closed: false,
        })
    }

    /// Connects to a unix stream socket (QEMU `-chardev socket,server=on`).
    pub fn connect_socket(path: &Path) -> Result<Self, ConsoleError> {
        let stream =
            crate::unix_connect::connect_unix(path, CONNECT_TIMEOUT).map_err(|source| {
                ConsoleError::Connect {
                    path: path.to_owned(),
                    source,
                }
            })?;
        Ok(Self {
            path: path.to_owned(),
            source: Source::Socket(stream),
            pending: Vec::new(),
            skip_to_newline: false,
            ready: VecDeque::new(),
            closed: false,
        })
    }

    /// The followed path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Next complete line, waiting at most `timeout`. `Ok(None)` means no
    /// line arrived in time. A socket closed by its peer first yields its
    /// unterminated tail (if any) and then `ConsoleError::Closed`.
    pub fn next_line(&mut self, timeout: Duration) -> Result<Option<ConsoleLine>, ConsoleError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.ready.pop_front() {
                return Ok(Some(line));
            }
            if self.closed {
                return Err(ConsoleError::Closed {
                    path: self.path.clone(),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let got = match &mut self.source {
                Source::Socket(_) => self.read_socket(left)?,
                Source::File(_) => self.read_file(left)?,
            };
            if !got && Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// The bytes after the last newline, as a line, if any (for a final
    /// flush when the caller stops following).
    pub fn take_partial(&mut self) -> Option<ConsoleLine> {
        if self.pending.is_empty() || self.skip_to_newline {
            return None;
        }
        let bytes = std::mem::take(&mut self.pending);
        Some(make_line(&bytes, HostStamp::now()))
    }

    /// Reads what the socket has within `wait`; true when bytes arrived.
    fn read_socket(&mut self, wait: Duration) -> Result<bool, ConsoleError> {
        let Source::Socket(stream) = &mut self.source else {
            return Ok(false);
        };
        if !wait_readable(stream.as_raw_fd(), wait) {
            return Ok(false);
        }
        let mut buf = [0u8; 8192];
        match stream.read(&mut buf) {
            Ok(0) => {
                let stamp = HostStamp::now();
                if !self.pending.is_empty() && !self.skip_to_newline {
                    let bytes = std::mem::take(&mut self.pending);
                    self.ready.push_back(make_line(&bytes, stamp));
                }
                self.closed = true;
                Ok(true)
            }
            Ok(n) => {
                let stamp = HostStamp::now();
                self.push_bytes(&buf[..n], stamp);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(false),
            Err(source) => Err(ConsoleError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Reads new file bytes, waiting up to `wait` for some; true when bytes
    /// arrived.
    fn read_file(&mut self, wait: Duration) -> Result<bool, ConsoleError> {
        if self.read_file_now()? {
            return Ok(true);
        }
        self.check_replaced()?;
        let Source::File(state) = &self.source else {
            return Ok(false);
        };
        let nap = wait.min(FILE_POLL);
        if let Some(fd) = &state.inotify {
            if wait_readable(fd.as_raw_fd(), nap) {
                drain_inotify(fd.as_raw_fd());
            }
        } else {
            std::thread::sleep(nap);
        }
        self.read_file_now()
    }

    fn read_file_now(&mut self) -> Result<bool, ConsoleError> {
        let Self {
            path,
            source,
            pending,
            skip_to_newline,
            ready,
            ..
        } = self;
        let Source::File(state) = source else {
            return Ok(false);
        };
        let read_err = |source| ConsoleError::Read {
            path: path.clone(),
            source,
        };
        let meta = state.file.metadata().map_err(read_err)?;
        if meta.is_file() && meta.len() < state.offset {
            // Truncated (copytruncate, or a new run reusing the file).
            state.offset = 0;
            pending.clear();
            *skip_to_newline = false;
        }
        if meta.is_file() {
            state
                .file
                .seek(SeekFrom::Start(state.offset))
                .map_err(read_err)?;
        }
        let mut got = false;
        let mut budget = READ_BUDGET;
        let mut buf = [0u8; 16384];
        while budget > 0 {
            let n = match state.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(read_err(e)),
            };
            let stamp = HostStamp::now();
            state.offset += n as u64;
            budget = budget.saturating_sub(n);
            got = true;
            push_into(pending, skip_to_newline, ready, &buf[..n], stamp);
        }
        Ok(got)
    }

    /// Reopens the path from its start when the file we hold was replaced.
    fn check_replaced(&mut self) -> Result<(), ConsoleError> {
        let Source::File(state) = &mut self.source else {
            return Ok(());
        };
        let Ok(meta) = std::fs::metadata(&self.path) else {
            return Ok(()); // Gone for now; keep the old file until a new one appears.
        };
        if meta.ino() == state.ino {
            return Ok(());
        }
        let file = open_nonblocking(&self.path).map_err(|source| ConsoleError::Open {
            path: self.path.clone(),
            source,
        })?;
        state.file = file;
        state.ino = meta.ino();
        state.offset = 0;
        state.inotify = inotify_watch(&self.path);
        self.pending.clear();
        self.skip_to_newline = false;
        Ok(())
    }

    fn push_bytes(&mut self, bytes: &[u8], stamp: HostStamp) {
        push_into(
            &mut self.pending,
            &mut self.skip_to_newline,
            &mut self.ready,
            bytes,
            stamp,
        );
    }
}

fn make_line(bytes: &[u8], stamp: HostStamp) -> ConsoleLine {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    ConsoleLine {
        stamp,
        text: String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Splits `bytes` into lines after what is pending; complete lines go to
/// `ready`, the rest stays pending.
fn push_into(
    pending: &mut Vec<u8>,
    skip_to_newline: &mut bool,
    ready: &mut VecDeque<ConsoleLine>,
    mut bytes: &[u8],
    stamp: HostStamp,
) {
    if *skip_to_newline {
        match bytes.iter().position(|&b| b == b'\n') {
            Some(pos) => {
                *skip_to_newline = false;
                bytes = &bytes[pos + 1..];
            }
            None => return,
        }
    }
    for &b in bytes {
        if b == b'\n' {
            ready.push_back(make_line(pending, stamp));
            pending.clear();
        } else {
            pending.push(b);
            if pending.len() >= MAX_LINE {
                ready.push_back(make_line(pending, stamp));
                pending.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const WAIT: Duration = Duration::from_secs(5);
    const SHORT: Duration = Duration::from_millis(80);

    fn append(path: &Path, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .expect("open test file for append");
        f.write_all(bytes).expect("append to test file");
    }

    fn text(f: &mut ConsoleFollower) -> String {
        f.next_line(WAIT)
            .expect("read console")
            .expect("a line within the wait")
            .text
    }

    #[test]
    fn file_from_beginning_waits_for_line_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        append(&path, b"first\nsecond\r\npart");
        let mut f = ConsoleFollower::open(&path, StartAt::Beginning).expect("follow");
        assert_eq!(text(&mut f), "first");
        assert_eq!(text(&mut f), "second");
        assert!(
            f.next_line(SHORT).expect("read").is_none(),
            "partial line must wait"
        );
        append(&path, b"ial\n");
        assert_eq!(text(&mut f), "partial");
    }

    #[test]
    fn file_from_end_skips_old_lines_and_the_cut_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        append(&path, b"old\nhalf");
        let mut f = ConsoleFollower::follow_file(&path, StartAt::End).expect("follow");
        assert!(f.next_line(SHORT).expect("read").is_none());
        append(&path, b"way\nnew\n");
        assert_eq!(text(&mut f), "new");
    }

    #[test]
    fn file_from_end_at_a_line_boundary_keeps_the_next_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        append(&path, b"old\n");
        let mut f = ConsoleFollower::follow_file(&path, StartAt::End).expect("follow");
        append(&path, b"next\n");
        assert_eq!(text(&mut f), "next");
    }

    #[test]
    fn truncated_file_restarts_at_its_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        append(&path, b"one long first line\n");
        let mut f = ConsoleFollower::open(&path, StartAt::Beginning).expect("follow");
        assert_eq!(text(&mut f), "one long first line");
        std::fs::write(&path, b"x\n").expect("truncate and rewrite");
        assert_eq!(text(&mut f), "x");
    }

    #[test]
    fn replaced_file_is_reopened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        append(&path, b"a\n");
        let mut f = ConsoleFollower::open(&path, StartAt::Beginning).expect("follow");
        assert_eq!(text(&mut f), "a");
        let tmp = dir.path().join("new.log");
        std::fs::write(&tmp, b"fresh\n").expect("write replacement");
        std::fs::rename(&tmp, &path).expect("replace");
        assert_eq!(text(&mut f), "fresh");
    }

    #[test]
    fn stamps_are_host_times_in_arrival_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        let before = HostStamp::now();
        append(&path, b"a\n");
        let mut f = ConsoleFollower::open(&path, StartAt::Beginning).expect("follow");
        let a = f.next_line(WAIT).expect("read").expect("line a");
        std::thread::sleep(Duration::from_millis(20));
        append(&path, b"b\n");
        let b = f.next_line(WAIT).expect("read").expect("line b");
        assert!(
            a.stamp.mono_ns >= before.mono_ns,
            "stamp taken after the write"
        );
        assert!(b.stamp.mono_ns > a.stamp.mono_ns, "later line, later stamp");
        assert!(
            b.stamp.real_ns > 1_600_000_000_000_000_000,
            "realtime is epoch-based"
        );
    }

    #[test]
    fn overlong_line_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        let mut data = vec![b'x'; MAX_LINE + 10];
        data.push(b'\n');
        append(&path, &data);
        let mut f = ConsoleFollower::open(&path, StartAt::Beginning).expect("follow");
        assert_eq!(text(&mut f).len(), MAX_LINE);
        assert_eq!(text(&mut f).len(), 10);
    }

    #[test]
    fn socket_lines_then_tail_then_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            conn.write_all(b"l1\r\nl2\n").expect("write");
            std::thread::sleep(Duration::from_millis(30));
            conn.write_all(b"\xfftail").expect("write tail");
        });
        let mut f = ConsoleFollower::open(&path, StartAt::End).expect("connect");
        assert_eq!(text(&mut f), "l1");
        assert_eq!(text(&mut f), "l2");
        assert_eq!(text(&mut f), "\u{fffd}tail");
        server.join().expect("server thread");
        match f.next_line(WAIT) {
            Err(ConsoleError::Closed { .. }) => {}
            other => panic!("expected Closed after peer hung up, got {other:?}"),
        }
    }

    #[test]
    fn missing_path_names_it() {
        let err = ConsoleFollower::open(Path::new("/nonexistent/uffdscope/console"), StartAt::End)
            .err()
            .expect("open must fail");
        assert!(
            err.to_string().contains("/nonexistent/uffdscope/console"),
            "{err}"
        );
    }

    #[test]
    fn fifo_without_writer_does_not_block() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.fifo");
        nix::unistd::mkfifo(
            &path,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .expect("mkfifo");
        let started = Instant::now();
        let mut f =
            ConsoleFollower::open(&path, StartAt::End).expect("open a FIFO without a writer");
        assert!(f.next_line(SHORT).expect("read").is_none());
        assert!(
            started.elapsed() < WAIT,
            "opening and reading a FIFO blocked"
        );
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("writer");
        w.write_all(b"late\n").expect("write");
        assert_eq!(text(&mut f), "late");
    }

    #[test]
    fn endless_source_returns_within_the_wait() {
        let mut f = ConsoleFollower::open(Path::new("/dev/zero"), StartAt::End).expect("open");
        let started = Instant::now();
        // Every look reads at most READ_BUDGET bytes: a line comes back.
        let line = f.next_line(SHORT).expect("read").expect("a 64 KiB piece");
        assert_eq!(line.text.len(), MAX_LINE);
        assert!(started.elapsed() < WAIT);
    }
}
