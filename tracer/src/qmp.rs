//! A small synchronous QMP (QEMU Machine Protocol) client over a unix socket.
//!
//! It owns the wire protocol: the greeting, `qmp_capabilities`, commands
//! matched to their replies by `id`, and asynchronous events, which are
//! queued with their host arrival time while a command waits and handed out
//! separately. Every wait has a deadline: a QEMU that stops answering must
//! never hang a recorder or a test.
//!
//! Replies stay `serde_json::Value`: `query-migrate` and the migration
//! events change fields between QEMU releases (7.2 here), and a recorder
//! should keep what a given QEMU sends rather than fail on a schema. (The
//! `qapi` crate builds here, but its generated types follow one QEMU schema
//! and take about a minute to compile for a dozen commands.)

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::console::HostStamp;

/// Default wait for one command's reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A reply line longer than this is a protocol error (QEMU's largest, such
/// as `query-qmp-schema`, stay well below it).
const MAX_MESSAGE: usize = 16 << 20;

/// Errors of the QMP client.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {path}: {source} (is QEMU running with -qmp unix:{path},server=on,wait=off?)", path = path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("QMP I/O on {path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("QMP on {path}: no answer to {what} within {after:?}", path = path.display())]
    Timeout {
        path: PathBuf,
        what: String,
        after: Duration,
    },
    #[error("QMP on {path}: QEMU closed the connection (QEMU exited?)", path = path.display())]
    Closed { path: PathBuf },
    #[error("QMP on {path}: protocol error: {detail}", path = path.display())]
    Protocol { path: PathBuf, detail: String },
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// One asynchronous QMP event.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QmpEvent {
    /// Event name, e.g. `MIGRATION` or `STOP`.
    pub name: String,
    /// The event's `data` object (`null` when absent).
    pub data: Value,
    /// QEMU's own timestamp (host CLOCK_REALTIME when QEMU emitted it), µs.
    pub qemu_time_us: Option<u64>,
    /// When the event arrived at this client.
    pub arrived: HostStamp,
}

impl QmpEvent {
    fn from_message(msg: &Value, arrived: HostStamp) -> Option<Self> {
        let name = msg.get("event")?.as_str()?.to_string();
        let ts = msg.get("timestamp");
        let secs = ts.and_then(|t| t.get("seconds")).and_then(Value::as_u64);
        let micros = ts
            .and_then(|t| t.get("microseconds"))
            .and_then(Value::as_u64);
        let qemu_time_us = match (secs, micros) {
            (Some(s), Some(u)) => s.checked_mul(1_000_000).and_then(|v| v.checked_add(u)),
            _ => None,
        };
        Some(Self {
            name,
            data: msg.get("data").cloned().unwrap_or(Value::Null),
            qemu_time_us,
            arrived,
        })
    }
}

/// A connected, negotiated QMP session.
pub struct QmpClient {
    path: PathBuf,
    stream: UnixStream,
    buf: Vec<u8>,
    next_id: u64,
    events: VecDeque<QmpEvent>,
    greeting: Value,
    timeout: Duration,
}

impl std::fmt::Debug for QmpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpClient")
            .field("path", &self.path)
            .field("next_id", &self.next_id)
            .field("queued_events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl QmpClient {
    /// Connects to `path`, retrying while the socket does not exist yet or
    /// refuses (QEMU creates it during start-up) until `timeout`, then reads
    /// the greeting and leaves capability negotiation mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match crate::unix_connect::connect_unix(path, left) {
                Ok(s) => break s,
                Err(e)
                    if Instant::now() < deadline
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                        ) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(source) => {
                    return Err(QmpError::Connect {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        };
        Self::handshake(
            stream,
            path,
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(500)),
        )
    }

    /// Runs the handshake on an already connected stream; `path` only names
    /// it in errors.
    pub fn handshake(stream: UnixStream, path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let mut client = Self {
            path: path.to_owned(),
            stream,
            buf: Vec::new(),
            next_id: 1,
            events: VecDeque::new(),
            greeting: Value::Null,
            timeout: DEFAULT_TIMEOUT,
        };
        let deadline = Instant::now() + timeout;
        let (greeting, _) = client.read_message(deadline, "the QMP greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(client.protocol(format!("expected a greeting, got {greeting}")));
        }
        client.greeting = greeting;
        client.execute_until("qmp_capabilities", None, deadline)?;
        Ok(client)
    }

    /// The greeting QEMU sent (`{"QMP": {"version": ..., "capabilities": ...}}`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// QEMU's version from the greeting, as `major.minor.micro`.
    pub fn qemu_version(&self) -> Option<String> {
        let v = self.greeting.get("QMP")?.get("version")?.get("qemu")?;
        Some(format!(
            "{}.{}.{}",
            v.get("major")?.as_u64()?,
            v.get("minor")?.as_u64()?,
            v.get("micro")?.as_u64()?
        ))
    }

    /// The socket path this client talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the per-command reply timeout used by [`Self::execute`].
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Runs `command` with optional `arguments` (a JSON object) and returns
    /// its `return` value, waiting at most the client's timeout.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let deadline = Instant::now() + self.timeout;
        self.execute_until(command, arguments, deadline)
    }

    /// Like [`Self::execute`] with an explicit timeout.
    pub fn execute_timeout(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.execute_until(command, arguments, Instant::now() + timeout)
    }

    fn execute_until(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        deadline: Instant,
    ) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.stream
            .write_all(line.as_bytes())
            .map_err(|source| self.io_error(source))?;
        loop {
            let (msg, stamp) = self.read_message(deadline, command)?;
            if let Some(ev) = QmpEvent::from_message(&msg, stamp) {
                self.events.push_back(ev);
                continue;
            }
            // A reply to an earlier command that timed out is late, not ours.
            if msg.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = msg.get("error") {
                let field = |k: &str| {
                    err.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string()
                };
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(self.protocol(format!(
                "reply to {command} has neither return nor error: {msg}"
            )));
        }
    }

    /// Reads whatever arrives within `timeout`, queueing events; returns how
    /// many events are queued afterwards. Use it to collect events between
    /// commands.
    pub fn poll_events(&mut self, timeout: Duration) -> Result<usize, QmpError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_message(deadline, "events") {
                Ok((msg, stamp)) => {
                    if let Some(ev) = QmpEvent::from_message(&msg, stamp) {
                        self.events.push_back(ev);
                    }
                }
                Err(QmpError::Timeout { .. }) => return Ok(self.events.len()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Hands out every queued event, oldest first.
    pub fn take_events(&mut self) -> Vec<QmpEvent> {
        self.events.drain(..).collect()
    }

    /// Waits for an event named `name` (queued or new), leaving other events
    /// queued.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<QmpEvent, QmpError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = self.events.iter().position(|e| e.name == name) {
                if let Some(ev) = self.events.remove(pos) {
                    return Ok(ev);
                }
            }
            let (msg, stamp) = self.read_message(deadline, &format!("event {name}"))?;
            if let Some(ev) = QmpEvent::from_message(&msg, stamp) {
                self.events.push_back(ev);
            }
        }
    }

    /// Reads one JSON message, waiting until `deadline`.
    fn read_message(
        &mut self,
        deadline: Instant,
        what: &str,
    ) -> Result<(Value, HostStamp), QmpError> {
        let start = Instant::now();
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let stamp = HostStamp::now();
                let text = line.trim_ascii();
                if text.is_empty() {
                    continue;
                }
                let msg: Value = serde_json::from_slice(text).map_err(|e| {
                    self.protocol(format!(
                        "invalid JSON ({e}): {}",
                        String::from_utf8_lossy(&text[..text.len().min(200)])
                    ))
                })?;
                if !msg.is_object() {
                    return Err(self.protocol(format!("message is not an object: {msg}")));
                }
                return Ok((msg, stamp));
            }
            if self.buf.len() > MAX_MESSAGE {
                return Err(self.protocol(format!("message longer than {MAX_MESSAGE} bytes")));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QmpError::Timeout {
                    path: self.path.clone(),
                    what: what.to_string(),
                    after: start.elapsed(),
                });
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|source| self.io_error(source))?;
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(QmpError::Closed {
                        path: self.path.clone(),
                    })
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(source) => return Err(self.io_error(source)),
            }
        }
    }

    fn io_error(&self, source: std::io::Error) -> QmpError {
        if matches!(
            source.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ) {
            return QmpError::Closed {
                path: self.path.clone(),
            };
        }
        QmpError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn protocol(&self, detail: String) -> QmpError {
        QmpError::Protocol {
            path: self.path.clone(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}"#;

    /// A scripted fake QEMU: sends the greeting, then for each expected
    /// command answers with the given lines (`{id}` replaced by the
    /// request's id). Returns the requests it saw.
    fn fake_qemu(
        script: Vec<(&'static str, Vec<&'static str>)>,
    ) -> (
        tempfile::TempDir,
        PathBuf,
        std::thread::JoinHandle<Vec<Value>>,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("bind fake QMP socket");
        let handle = std::thread::spawn(move || {
            let (conn, _) = listener.accept().expect("accept");
            let mut writer = conn.try_clone().expect("clone stream");
            let mut reader = BufReader::new(conn);
            writeln!(writer, "{GREETING}").expect("send greeting");
            let mut seen = Vec::new();
            for (expect_cmd, replies) in script {
                let mut line = String::new();
                if reader.read_line(&mut line).expect("read request") == 0 {
                    break;
                }
                let req: Value = serde_json::from_str(&line).expect("request is JSON");
                assert_eq!(
                    req["execute"], expect_cmd,
                    "fake QEMU got an unexpected command"
                );
                let id = req["id"].to_string();
                for r in replies {
                    writeln!(writer, "{}", r.replace("{id}", &id)).expect("send reply");
                }
                seen.push(req);
            }
            // Keep the connection open briefly so clients can time out.
            std::thread::sleep(Duration::from_millis(300));
            seen
        });
        (dir, path, handle)
    }

    const CAPS_OK: (&str, &[&str]) = ("qmp_capabilities", &[r#"{"return": {}, "id": {id}}"#]);

    fn caps_ok() -> (&'static str, Vec<&'static str>) {
        (CAPS_OK.0, CAPS_OK.1.to_vec())
    }

    #[test]
    fn handshake_and_command_with_interleaved_event() {
        let (_dir, path, server) = fake_qemu(vec![
            caps_ok(),
            (
                "query-migrate",
                vec![
                    r#"{"timestamp": {"seconds": 1700000000, "microseconds": 250}, "event": "MIGRATION", "data": {"status": "active"}}"#,
                    r#"{"return": {"status": "active", "ram": {"transferred": 4096}}, "id": {id}}"#,
                ],
            ),
        ]);
        let mut c = QmpClient::connect(&path, Duration::from_secs(5)).expect("connect");
        assert_eq!(c.qemu_version().as_deref(), Some("7.2.22"));
        let r = c.execute("query-migrate", None).expect("query-migrate");
        assert_eq!(r["status"], "active");
        assert_eq!(r["ram"]["transferred"], 4096);
        let events = c.take_events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].name, "MIGRATION");
        assert_eq!(events[0].data["status"], "active");
        assert_eq!(events[0].qemu_time_us, Some(1_700_000_000_000_250));
        let seen = server.join().expect("server");
        assert_eq!(seen[1]["id"].as_u64(), Some(2), "ids increase per command");
    }

    #[test]
    fn arguments_are_sent_and_errors_reported() {
        let (_dir, path, server) = fake_qemu(vec![
            caps_ok(),
            (
                "migrate-set-capabilities",
                vec![
                    r#"{"error": {"class": "GenericError", "desc": "Postcopy is not supported"}, "id": {id}}"#,
                ],
            ),
        ]);
        let mut c = QmpClient::connect(&path, Duration::from_secs(5)).expect("connect");
        let args = json!({"capabilities": [{"capability": "postcopy-ram", "state": true}]});
        match c.execute("migrate-set-capabilities", Some(args.clone())) {
            Err(QmpError::Command {
                command,
                class,
                desc,
            }) => {
                assert_eq!(command, "migrate-set-capabilities");
                assert_eq!(class, "GenericError");
                assert_eq!(desc, "Postcopy is not supported");
            }
            other => panic!("expected a command error, got {other:?}"),
        }
        let seen = server.join().expect("server");
        assert_eq!(seen[1]["arguments"], args);
    }

    #[test]
    fn stale_reply_is_skipped_and_timeout_reported() {
        let (_dir, path, server) = fake_qemu(vec![
            caps_ok(),
            ("query-status", vec![]),
            (
                "query-status",
                vec![
                    r#"{"return": {"status": "late"}, "id": 2}"#,
                    r#"{"return": {"status": "running"}, "id": {id}}"#,
                ],
            ),
        ]);
        let mut c = QmpClient::connect(&path, Duration::from_secs(5)).expect("connect");
        match c.execute_timeout("query-status", None, Duration::from_millis(100)) {
            Err(QmpError::Timeout { what, .. }) => assert_eq!(what, "query-status"),
            other => panic!("expected a timeout, got {other:?}"),
        }
        let r = c
            .execute("query-status", None)
            .expect("second query-status");
        assert_eq!(
            r["status"], "running",
            "the late reply to id 2 must be skipped"
        );
        server.join().expect("server");
    }

    #[test]
    fn wait_event_keeps_other_events_queued() {
        let (_dir, path, server) = fake_qemu(vec![
            caps_ok(),
            (
                "migrate-start-postcopy",
                vec![
                    r#"{"return": {}, "id": {id}}"#,
                    r#"{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}"#,
                    r#"{"event": "MIGRATION", "data": {"status": "postcopy-active"}, "timestamp": {"seconds": 1, "microseconds": 3}}"#,
                ],
            ),
        ]);
        let mut c = QmpClient::connect(&path, Duration::from_secs(5)).expect("connect");
        c.execute("migrate-start-postcopy", None)
            .expect("start postcopy");
        let ev = c
            .wait_event("MIGRATION", Duration::from_secs(5))
            .expect("MIGRATION event");
        assert_eq!(ev.data["status"], "postcopy-active");
        let rest = c.take_events();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].name, "STOP");
        assert_eq!(rest[0].data, Value::Null);
        server.join().expect("server");
    }

    #[test]
    fn poll_events_collects_until_quiet() {
        let (_dir, path, server) = fake_qemu(vec![
            caps_ok(),
            (
                "cont",
                vec![
                    r#"{"return": {}, "id": {id}}"#,
                    r#"{"event": "RESUME", "timestamp": {"seconds": 5, "microseconds": 0}}"#,
                ],
            ),
        ]);
        let mut c = QmpClient::connect(&path, Duration::from_secs(5)).expect("connect");
        c.execute("cont", None).expect("cont");
        let n = c
            .poll_events(Duration::from_millis(150))
            .expect("poll events");
        assert_eq!(n, 1);
        server.join().expect("server");
    }

    #[test]
    fn closed_connection_is_reported() {
        let (_dir, path, server) = fake_qemu(vec![caps_ok()]);
        let mut c = QmpClient::connect(&path, Duration::from_secs(5)).expect("connect");
        server.join().expect("server");
        match c.execute("query-status", None) {
            Err(QmpError::Closed { .. }) => {}
            other => panic!("expected Closed, got {other:?}"),
        }
    }

    #[test]
    fn non_greeting_is_a_protocol_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            writeln!(conn, r#"{{"hello": 1}}"#).expect("send");
            std::thread::sleep(Duration::from_millis(200));
        });
        match QmpClient::connect(&path, Duration::from_secs(5)) {
            Err(QmpError::Protocol { detail, .. }) => {
                assert!(detail.contains("greeting"), "{detail}");
            }
            other => panic!("expected a protocol error, got {other:?}"),
        }
        server.join().expect("server");
    }

    #[test]
    fn missing_socket_fails_after_timeout_naming_the_path() {
        let err = QmpClient::connect(
            Path::new("/nonexistent/qmp.sock"),
            Duration::from_millis(60),
        )
        .expect_err("no socket");
        assert!(err.to_string().contains("/nonexistent/qmp.sock"), "{err}");
    }
}
