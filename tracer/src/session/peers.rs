//! The recording's peers, each on its own thread: the QMP sampler
//! (`query-migrate` and QMP events, then QEMU's final blocktime figures) and
//! the guest-console follower. Both send trace records to the session over a
//! channel and end when the session's stop flag is set.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

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
            handles.push(thread::spawn(move || console_thread(&p, &s, &t)));
        }
        Peers {
            stop,
            rx,
            handles,
            qemu_version,
        }
    }

    /// Tells every peer to stop and waits for them.
    pub(super) fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn note(tx: &mpsc::Sender<Record>, kind: &str, text: String) {
    let _ = tx.send(Record::Note(Note {
        ts: monotonic_ns(),
        kind: kind.into(),
        text,
    }));
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

fn console_thread(path: &Path, stop: &AtomicBool, tx: &mpsc::Sender<Record>) {
    let mut follower = match ConsoleFollower::open(path, StartAt::End) {
        Ok(f) => f,
        Err(e) => {
            let text = format!("cannot follow guest console {}: {e}", path.display());
            note(tx, "console_error", text);
            return;
        }
    };
    let line = |tx: &mpsc::Sender<Record>, l: crate::console::ConsoleLine| {
        let _ = tx.send(Record::GuestLine(GuestLine {
            ts: l.stamp.mono_ns,
            text: l.text,
        }));
    };
    while !stop.load(Ordering::Relaxed) {
        match follower.next_line(Duration::from_millis(50)) {
            Ok(Some(l)) => line(tx, l),
            Ok(None) => {}
            Err(e) => {
                let text = format!("guest console {}: {e}", path.display());
                note(tx, "console_end", text);
                return;
            }
        }
    }
    if let Some(l) = follower.take_partial() {
        line(tx, l);
    }
}
