//! Connecting to a unix stream socket without blocking past a deadline: a
//! blocking `connect()` waits for as long as the listener's backlog stays
//! full, which a wedged QEMU (or any peer that never accepts) can make
//! forever. Used for the QMP socket and a guest-console socket.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};

/// How long to wait between two tries while the backlog is full.
const RETRY: Duration = Duration::from_millis(20);

/// Connects to `path`, giving up with `TimedOut` once `timeout` passes with
/// the listener's backlog still full. The stream returned blocks again.
pub fn connect_unix(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    let addr = UnixAddr::new(path).map_err(io::Error::from)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    loop {
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => break,
            Err(Errno::EAGAIN) if Instant::now() < deadline => std::thread::sleep(RETRY),
            Err(Errno::EAGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the listener did not accept within {timeout:?} (its backlog is full)"),
                ))
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(io::Error::from(e)),
        }
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_that_never_accepts_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("full.sock");
        let listener = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        let addr = UnixAddr::new(&path).expect("address");
        nix::sys::socket::bind(listener.as_raw_fd(), &addr).expect("bind");
        nix::sys::socket::listen(
            &listener,
            nix::sys::socket::Backlog::new(0).expect("backlog"),
        )
        .expect("listen");
        // Fill the backlog: connections nobody accepts.
        let mut held = Vec::new();
        let started = Instant::now();
        let err = loop {
            match connect_unix(&path, Duration::from_millis(100)) {
                Ok(s) => held.push(s),
                Err(e) => break e,
            }
            assert!(held.len() < 64, "the backlog never filled");
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_missing_socket_fails_at_once() {
        let err = connect_unix(Path::new("/nonexistent/qmp.sock"), Duration::from_secs(5))
            .expect_err("connected to nothing");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
