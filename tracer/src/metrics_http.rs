//! The recorder's metrics endpoint: a minimal HTTP/1.1 server on one thread
//! that answers `GET /metrics` with whatever text its callback returns (the
//! Prometheus exposition, rendered by the caller) and 404 to anything else.
//! Requests are read with a size cap and a deadline, one connection at a
//! time, so a slow or hostile client can delay a scrape but not exhaust the
//! recorder. Nothing is served beyond loopback unless the user asks.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest request head read (request line and headers).
const MAX_HEAD: usize = 8 << 10;
/// How long one client may take to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// How long one write of the answer may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept (out of fds), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The exposition's media type (Prometheus text format 0.0.4).
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "--metrics {addr}: not a loopback address, and the metrics are served without \
         authentication to anyone who can reach it; use 127.0.0.1:PORT, or add \
         --metrics-allow-remote to serve on {addr} anyway"
    )]
    NotLoopback { addr: SocketAddr },
    #[error(
        "--metrics {addr}: cannot listen there: {source} (port in use, or not an address of \
         this host? choose another --metrics ADDR, e.g. 127.0.0.1:9464)"
    )]
    Bind { addr: SocketAddr, source: io::Error },
}

impl MetricsError {
    /// True when the command line asked for something refused (exit code 1),
    /// rather than the host refusing (exit code 3).
    pub fn is_usage(&self) -> bool {
        matches!(self, MetricsError::NotLoopback { .. })
    }
}

/// A running endpoint; dropping it stops the thread.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Listens on `addr` (loopback only unless `allow_remote`) and answers
    /// each `GET /metrics` with `render()`.
    pub fn start(
        addr: SocketAddr,
        allow_remote: bool,
        render: impl Fn() -> String + Send + 'static,
    ) -> Result<Self, MetricsError> {
        if !addr.ip().is_loopback() && !allow_remote {
            return Err(MetricsError::NotLoopback { addr });
        }
        let bind = |source| MetricsError::Bind { addr, source };
        let listener = TcpListener::bind(addr).map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("uffdscope-metrics".into())
            .spawn({
                let stop = Arc::clone(&stop);
                move || serve(&listener, &stop, &render)
            })
            .map_err(bind)?;
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on (the port chosen when `:0` was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept with a connection of our own.
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let woke =
            TcpStream::connect_timeout(&SocketAddr::new(ip, self.addr.port()), WRITE_TIMEOUT);
        if let (Ok(_), Some(thread)) = (woke, self.thread.take()) {
            let _ = thread.join();
        }
    }
}

fn serve(listener: &TcpListener, stop: &AtomicBool, render: &dyn Fn() -> String) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match conn {
            Ok(stream) => {
                let _ = answer(stream, render);
            }
            Err(_) => std::thread::sleep(ACCEPT_BACKOFF),
        }
    }
}

/// The status line and body for a request head.
fn route(head: &[u8], render: &dyn Fn() -> String) -> (&'static str, String) {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return ("400 Bad Request", "bad request\n".into());
    };
    if !version.starts_with(b"HTTP/1.") || parts.next().is_some() {
        return ("400 Bad Request", "bad request\n".into());
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    if method == b"GET" && path == b"/metrics" {
        ("200 OK", render())
    } else {
        ("404 Not Found", "only GET /metrics is served here\n".into())
    }
}

fn answer(mut stream: TcpStream, render: &dyn Fn() -> String) -> io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let (status, body) = match read_head(&mut stream)? {
        Some(head) => route(&head, render),
        None => (
            "400 Bad Request",
            "request head too large or too slow\n".into(),
        ),
    };
    let content_type = if status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// The request head up to its blank line; `None` when it is over
/// [`MAX_HEAD`] bytes or takes over [`REQUEST_DEADLINE`].
fn read_head(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || head.len() > MAX_HEAD {
            return Ok(None);
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((head.len() <= MAX_HEAD).then_some(head))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    /// Sends `request` raw and returns the whole answer.
    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(request).expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("answer");
        out
    }

    #[test]
    fn serves_metrics_and_nothing_else() {
        let server =
            MetricsServer::start(loopback(), false, || "m_total 1\n".into()).expect("start");
        let addr = server.local_addr();
        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4"),
            "{ok}"
        );
        assert!(
            ok.contains("Content-Length: 10\r\n") && ok.ends_with("\r\n\r\nm_total 1\n"),
            "{ok}"
        );
        let query = exchange(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert!(query.starts_with("HTTP/1.1 200 OK"), "{query}");
        for other in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"POST /metrics HTTP/1.1\r\n\r\n",
            b"GET /metricsx HTTP/1.1\r\n\r\n",
        ] {
            let a = exchange(addr, other);
            assert!(a.starts_with("HTTP/1.1 404"), "{a}");
            assert!(!a.contains("m_total"), "{a}");
        }
        for bad in [&b"garbage\r\n\r\n"[..], b"GET /metrics SMTP\r\n\r\n"] {
            let a = exchange(addr, bad);
            assert!(a.starts_with("HTTP/1.1 400"), "{a}");
        }
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 3 * MAX_HEAD));
        huge.extend_from_slice(b"\r\n\r\n");
        // The server may close before reading all of it: only the status matters.
        let mut s = TcpStream::connect(addr).expect("connect");
        let _ = s.write_all(&huge);
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
            "{answer}"
        );
        // Still serving after all that.
        assert!(exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
        drop(server);
        assert!(
            TcpStream::connect(addr).is_err(),
            "still listening after drop"
        );
    }

    #[test]
    fn refuses_remote_and_names_the_fix() {
        let any = SocketAddr::from(([0, 0, 0, 0], 0));
        let e = MetricsServer::start(any, false, String::new)
            .err()
            .expect("refused");
        assert!(e.is_usage());
        assert!(e.to_string().contains("--metrics-allow-remote"), "{e}");
        let taken = TcpListener::bind(loopback()).expect("bind");
        let addr = taken.local_addr().expect("addr");
        let e = MetricsServer::start(addr, false, String::new)
            .err()
            .expect("port in use");
        assert!(!e.is_usage());
        let text = e.to_string();
        assert!(
            text.contains(&addr.to_string()) && text.contains("choose another --metrics"),
            "{text}"
        );
    }
}
