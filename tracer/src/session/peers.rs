//! The recording's peers, each on its own thread: the QMP sampler
//! (`query-migrate` and QMP events, then QEMU's final blocktime figures) and
//! the guest-console follower. Both send trace records to the session over a
//! channel and end when the session's stop flag is set.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use uffdscope_trace::record::{GuestLine, Note, Qmp, Record};

use super::monotonic_ns;
use crate::console::{ConsoleFollower, StartAt};
use crate::qmp::QmpClient;

/// The running peer threads and the channel their records arrive on.
pub(super) struct Peers {
    stop: Arc<AtomicBool>,
    pub(super) rx: mpsc::Receiver<Record>,
    handles: Vec<thread::JoinHandle<()>>,
    /// QEMU's version from the QMP greeting, when QMP answered in time.
    pub(super) qemu_version: Option<String>,
}

impl Peers {
    /// Starts the QMP sampler and the console follower that `qmp` and
    /// `console` ask for; waits (at most 6 s) for QMP's greeting.
    pub(super) fn start(
        qmp: Option<&Path>,
        qmp_interval: Duration,
        console: Option<&Path>,
    ) -> Peers {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Record>();
        let mut handles = Vec::new();
        let mut qemu_version = None;
        if let Some(path) = qmp {
            let (vtx, vrx) = mpsc::channel();
            let (p, s, t) = (path.to_path_buf(), stop.clone(), tx.clone());
            handles.push(thread::spawn(move || {
                qmp_thread(&p, qmp_interval, &s, &t, &vtx);
            }));
            qemu_version = vrx.recv_timeout(Duration::from_secs(6)).ok().flatten();
        }
        if let Some(path) = console {
            let (p, s, t) = (path.to_path_buf(), stop.clone(), tx.clone());
            handles.push(thread::spawn(move || {
                console_thread(&p, ConsoleCaps::default(), &s, &t);
            }));
        }
        Peers {
            stop,
            rx,
            handles,
            qemu_version,
        }
    }

    /// Tells every peer to stop and waits for them, at most [`STOP_WAIT`]
    /// in all: a peer stuck in a call that does not return is left behind
    /// (it ends with the process) rather than holding the recording open.
    pub(super) fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + STOP_WAIT;
        while Instant::now() < deadline && self.handles.iter().any(|h| !h.is_finished()) {
            thread::sleep(Duration::from_millis(10));
        }
        for h in self.handles.drain(..) {
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

/// How long [`Peers::stop`] waits for the peers: a QMP command in flight
/// may take its whole reply timeout.
const STOP_WAIT: Duration = Duration::from_secs(3);

fn note(tx: &mpsc::Sender<Record>, kind: &str, text: String) {
    let _ = tx.send(Record::Note(Note {
        ts: monotonic_ns(),
        kind: kind.into(),
        text,
    }));
}

/// The migration's capabilities and parameters, asked once: every report
/// states them, since a bug report is of little use without them.
fn record_setup(client: &mut QmpClient, tx: &mpsc::Sender<Record>) {
    for command in [Qmp::CAPABILITIES, Qmp::PARAMETERS] {
        match client.execute(command, None) {
            Ok(v) => {
                let _ = tx.send(Record::Qmp(Qmp {
                    ts: monotonic_ns(),
                    kind: command.into(),
                    json: v.to_string(),
                }));
            }
            Err(e) => note(tx, "qmp_error", format!("{command} failed: {e}")),
        }
    }
}

/// Samples `query-migrate` and forwards QMP events until `stop`, then reads
/// QEMU's final blocktime figures.
fn qmp_thread(
    path: &Path,
    interval: Duration,
    stop: &AtomicBool,
    tx: &mpsc::Sender<Record>,
    version_tx: &mpsc::Sender<Option<String>>,
) {
    let mut client = match QmpClient::connect(path, Duration::from_secs(5)) {
        Ok(c) => c,
        Err(e) => {
            let _ = version_tx.send(None);
            note(
                tx,
                "qmp_error",
                format!("cannot connect to QMP at {}: {e}", path.display()),
            );
            return;
        }
    };
    let _ = version_tx.send(client.qemu_version());
    record_setup(&mut client, tx);
    let mut last = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        match client.execute("query-migrate", None) {
            Ok(v) => {
                let json = v.to_string();
                // Only changes are kept: a steady state costs nothing.
                if last.as_ref() != Some(&json) || stopping {
                    let kind = if stopping {
                        "blocktime"
                    } else {
                        "query-migrate"
                    };
                    let _ = tx.send(Record::Qmp(Qmp {
                        ts: monotonic_ns(),
                        kind: kind.into(),
                        json: json.clone(),
                    }));
                    last = Some(json);
                }
            }
            Err(e) => {
                note(tx, "qmp_error", format!("query-migrate failed: {e}"));
                return;
            }
        }
        for ev in client.take_events() {
            let _ = tx.send(Record::Qmp(Qmp {
                ts: ev.arrived.mono_ns,
                kind: format!("event:{}", ev.name),
                json: serde_json::json!({"event": ev.name, "data": ev.data}).to_string(),
            }));
        }
        if stopping {
            return;
        }
        let _ = client.poll_events(interval);
    }
}

/// Limits on what the console follower stores.
#[derive(Debug, Clone, Copy)]
struct ConsoleCaps {
    /// Bytes kept of one line; the rest is cut and counted.
    line: usize,
    /// Bytes kept in all; after that the console is no longer followed.
    total: u64,
}

impl Default for ConsoleCaps {
    fn default() -> Self {
        ConsoleCaps {
            line: 4096,
            total: 16 << 20,
        }
    }
}

/// What the console follower kept and cut.
#[derive(Debug, Default)]
struct ConsoleTally {
    kept: u64,
    cut_bytes: u64,
    cut_lines: u64,
}

impl ConsoleTally {
    /// Cuts `text` to the line cap; false once the total cap is reached.
    fn admit(&mut self, text: &mut String, caps: ConsoleCaps) -> bool {
        if text.len() > caps.line {
            let mut end = caps.line;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            self.cut_bytes += (text.len() - end) as u64;
            self.cut_lines += 1;
            text.truncate(end);
        }
        self.kept += text.len() as u64;
        self.kept <= caps.total
    }

    /// The `console_cut` note's text, when anything was cut.
    fn cut_note(&self, path: &Path, caps: ConsoleCaps, stopped: bool) -> Option<String> {
        let mut parts = Vec::new();
        if self.cut_lines > 0 {
            parts.push(format!(
                "{} bytes cut from {} lines longer than {} bytes",
                self.cut_bytes, self.cut_lines, caps.line
            ));
        }
        if stopped {
            parts.push(format!(
                "stopped following after {} bytes (the limit is {})",
                self.kept, caps.total
            ));
        }
        (!parts.is_empty())
            .then(|| format!("guest console {}: {}", path.display(), parts.join("; ")))
    }
}

fn console_thread(path: &Path, caps: ConsoleCaps, stop: &AtomicBool, tx: &mpsc::Sender<Record>) {
    let mut follower = match ConsoleFollower::open(path, StartAt::End) {
        Ok(f) => f,
        Err(e) => {
            let text = format!("cannot follow guest console {}: {e}", path.display());
            note(tx, "console_error", text);
            return;
        }
    };
    let mut tally = ConsoleTally::default();
    let mut full = false;
    let send = |mut l: crate::console::ConsoleLine, tally: &mut ConsoleTally| {
        let fits = tally.admit(&mut l.text, caps);
        if fits {
            let _ = tx.send(Record::GuestLine(GuestLine {
                ts: l.stamp.mono_ns,
                text: l.text,
            }));
        }
        fits
    };
    while !stop.load(Ordering::Relaxed) {
        match follower.next_line(Duration::from_millis(50)) {
            Ok(Some(l)) => {
                if !send(l, &mut tally) {
                    full = true;
                    break;
                }
            }
            Ok(None) => {}
            Err(e) => {
                let text = format!("guest console {}: {e}", path.display());
                note(tx, "console_end", text);
                break;
            }
        }
    }
    if !full {
        if let Some(l) = follower.take_partial() {
            send(l, &mut tally);
        }
    }
    if let Some(text) = tally.cut_note(path, caps, full) {
        note(tx, "console_cut", text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_console(
        path: &Path,
        caps: ConsoleCaps,
        stop_after: Duration,
    ) -> (Vec<Record>, Duration) {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let (p, s) = (path.to_path_buf(), stop.clone());
        let started = Instant::now();
        let h = thread::spawn(move || console_thread(&p, caps, &s, &tx));
        thread::sleep(stop_after);
        stop.store(true, Ordering::Relaxed);
        h.join().expect("console thread");
        (rx.into_iter().collect(), started.elapsed())
    }

    #[test]
    fn a_fifo_without_writer_stops_when_told() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let (records, took) =
            run_console(&path, ConsoleCaps::default(), Duration::from_millis(100));
        assert!(records.is_empty(), "{records:?}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }

    #[test]
    fn an_endless_console_is_capped_and_the_cut_is_noted() {
        let caps = ConsoleCaps {
            line: 100,
            total: 1000,
        };
        let (records, _) = run_console(Path::new("/dev/zero"), caps, Duration::from_millis(300));
        let lines = records
            .iter()
            .filter(|r| matches!(r, Record::GuestLine(_)))
            .count();
        assert_eq!(lines, 10, "1000 bytes in lines cut to 100");
        let Some(Record::Note(n)) = records.last() else {
            panic!("no note last: {records:?}");
        };
        assert_eq!(n.kind, "console_cut");
        assert!(n.text.contains("stopped following"), "{}", n.text);
        assert!(n.text.contains("cut from 11 lines"), "{}", n.text);
    }

    #[test]
    fn a_missing_console_is_a_note() {
        let (records, _) = run_console(
            Path::new("/nonexistent/console"),
            ConsoleCaps::default(),
            Duration::from_millis(10),
        );
        assert!(
            matches!(&records[..], [Record::Note(n)] if n.kind == "console_error" && n.text.contains("/nonexistent/console")),
            "{records:?}"
        );
    }
}
