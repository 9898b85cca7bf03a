//! The HTML report in a real browser. Headless Chromium, driven over the
//! DevTools protocol, opens the report of each committed trace and of a trace
//! whose strings carry markup, a `javascript:` URL and terminal escapes, and
//! checks that the page logs no error or warning, runs no script, violates
//! nothing in its content security policy, draws every plot at the size its
//! `viewBox` declares, and paints a screenshot that is not blank. Two control
//! pages prove the checks can fail. Tier: `fixtures::tier::chromium`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};
use uffdscope_fixtures::synth::{Scenario, FAULT_TID, VCPU_TID0};
use uffdscope_fixtures::tier::{self, KeptOnPanic};
use uffdscope_trace::record::{Qmp, Record};
use uffdscope_trace::TraceMeta;

/// How long any one wait on the browser may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);
/// The viewport the pages are laid out in (CSS px, scale 1).
const VIEWPORT: (u32, u32) = (1280, 900);
/// The tallest screenshot taken; longer pages are cut there.
const MAX_SHOT_HEIGHT: u32 = 12_000;

/// Strings that would run script if a renderer let them through as markup.
const MARKUP: [&str; 4] = [
    "<script>window.__pwned=1</script>",
    "<img src=x onerror=window.__pwned=2>",
    r#"<a href="javascript:window.__pwned=3">link</a>"#,
    "<svg onload=window.__pwned=4>",
];
/// Terminal escapes: set the title, clear the screen, CR, NUL, CSI.
const ESCAPES: &str = "\u{1b}]0;pwned\u{7}\u{1b}[2J\r\0\u{9b}";

/// Installed before any page content: records CSP violations where the probe reads them.
const CSP_LISTENER: &str =
    "window.__csp = []; document.addEventListener('securitypolicyviolation', \
     e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));";

/// Evaluated after load: everything the assertions need, as one JSON value.
const PROBE: &str = r"(() => {
  const attrs = [...document.querySelectorAll('*')]
    .flatMap(e => [...e.attributes].map(a => [e.tagName, a.name, a.value]));
  const plots = [...document.querySelectorAll('svg')].map(s => {
    const r = s.getBoundingClientRect(), p = s.parentElement, cs = getComputedStyle(p);
    return {
      label: s.getAttribute('aria-label'),
      viewbox: [s.viewBox.baseVal.width, s.viewBox.baseVal.height],
      at: [r.left + scrollX, r.top + scrollY],
      size: [r.width, r.height],
      box: p.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight),
      fixed_height: s.style.height ? parseFloat(s.style.height) : null,
    };
  });
  const text = document.body ? document.body.innerText : '';
  return {
    pwned: window.__pwned === undefined ? null : String(window.__pwned),
    scripts: document.scripts.length,
    active: attrs.filter(([, n, v]) => /^on/i.test(n) || /^\s*javascript:/i.test(v))
      .map(a => a.join(' ')),
    csp: window.__csp || ['the CSP listener did not run'],
    csp_meta: document.querySelector('meta[http-equiv=Content-Security-Policy]')?.content ?? null,
    text,
    controls: /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/.test(text),
    overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
    height: document.documentElement.scrollHeight,
    plots,
  };
})()";

/// A headless Chromium with one DevTools connection; killed, with every
/// process it started, on drop.
struct Chromium {
    child: Child,
    ws: WebSocket<TcpStream>,
    next_id: u64,
    /// Events not yet consumed, in arrival order.
    events: Vec<Value>,
}

impl Chromium {
    fn launch(bin: &Path, profile: &Path) -> Self {
        let mut child = Command::new(bin)
            .args([
                "--headless=new",
                // The sandbox needs a setuid helper or user namespaces, which a
                // root CI container lacks; the pages are this test's own files.
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-pings",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--window-size={},{}", VIEWPORT.0, VIEWPORT.1))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let url = match devtools_url(stderr) {
            Ok(url) => url,
            Err(why) => {
                kill_group(&mut child);
                panic!("{why}");
            }
        };
        let ws = connect(&url);
        Self {
            child,
            ws,
            next_id: 0,
            events: Vec::new(),
        }
    }

    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let mut msg = json!({"id": self.next_id, "method": method});
        msg["params"] = params;
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .unwrap_or_else(|e| panic!("send {method} to Chromium: {e}"));
        self.next_id
    }

    /// The next message from the browser, or `None` when `deadline` passed.
    fn receive(&mut self, deadline: Instant) -> Option<Value> {
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    return Some(serde_json::from_str(t.as_str()).unwrap_or_else(|e| {
                        panic!("Chromium sent a message that is not JSON ({e}): {t}")
                    }))
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("DevTools connection to Chromium lost: {e}"),
            }
        }
        None
    }

    /// Sends a command and returns its result; events that arrive meanwhile are kept.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.send(session, method, params);
        let deadline = Instant::now() + WAIT;
        loop {
            let msg = self
                .receive(deadline)
                .unwrap_or_else(|| panic!("Chromium did not answer {method} within {WAIT:?}"));
            if msg["id"] == id {
                if let Some(err) = msg.get("error") {
                    panic!("Chromium refused {method}: {err}");
                }
                return msg["result"].clone();
            }
            self.events.push(msg);
        }
    }

    /// Waits for the event `method` of `session`.
    fn wait_event(&mut self, session: &str, method: &str) {
        let seen = |e: &Value| e["method"] == method && e["sessionId"] == session;
        if self.events.iter().any(seen) {
            return;
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let msg = self
                .receive(deadline)
                .unwrap_or_else(|| panic!("no {method} from Chromium within {WAIT:?}"));
            let done = seen(&msg);
            self.events.push(msg);
            if done {
                return;
            }
        }
    }

    /// Opens `page` in a new tab and returns what the page did.
    fn visit(&mut self, page: &Path) -> Visit {
        let url = format!("file://{}", page.display());
        let target = self.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].clone();
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        let session = attached["sessionId"]
            .as_str()
            .expect("attachToTarget gives a sessionId")
            .to_owned();
        let s = Some(session.as_str());
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            self.call(s, domain, json!({}));
        }
        let metrics = json!({"width": VIEWPORT.0, "height": VIEWPORT.1,
            "deviceScaleFactor": 1, "mobile": false});
        self.call(s, "Emulation.setDeviceMetricsOverride", metrics);
        self.call(
            s,
            "Page.addScriptToEvaluateOnNewDocument",
            json!({"source": CSP_LISTENER}),
        );
        self.events.clear();
        let nav = self.call(s, "Page.navigate", json!({"url": url}));
        assert!(nav.get("errorText").is_none(), "navigate to {url}: {nav}");
        self.wait_event(&session, "Page.loadEventFired");
        let probe = self.evaluate(s, PROBE);
        let screenshot = self.screenshot(s, &probe);
        let errors = self.errors(&session);
        self.call(None, "Target.closeTarget", json!({"targetId": target_id}));
        Visit {
            errors,
            probe,
            screenshot,
        }
    }

    fn evaluate(&mut self, session: Option<&str>, expression: &str) -> Value {
        let r = self.call(
            session,
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "the probe threw: {r}");
        r["result"]["value"].clone()
    }

    /// The whole page (up to [`MAX_SHOT_HEIGHT`]) as PNG bytes.
    fn screenshot(&mut self, session: Option<&str>, probe: &Value) -> Vec<u8> {
        let height = probe["height"]
            .as_f64()
            .map_or(VIEWPORT.1, |h| (h as u32).min(MAX_SHOT_HEIGHT));
        let clip = json!({"x": 0, "y": 0, "width": VIEWPORT.0, "height": height, "scale": 1});
        let r = self.call(
            session,
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true, "clip": clip}),
        );
        let data = r["data"].as_str().expect("captureScreenshot gives data");
        data_encoding::BASE64
            .decode(data.as_bytes())
            .expect("the screenshot is base64")
    }

    /// Console errors and warnings, uncaught exceptions and browser log
    /// errors and warnings, one line each.
    fn errors(&self, session: &str) -> Vec<String> {
        let mut out = Vec::new();
        for e in self.events.iter().filter(|e| e["sessionId"] == session) {
            let p = &e["params"];
            let line = match e["method"].as_str() {
                Some("Runtime.exceptionThrown") => Some(p["exceptionDetails"].to_string()),
                Some("Runtime.consoleAPICalled")
                    if matches!(p["type"].as_str(), Some("error" | "warning" | "assert")) =>
                {
                    Some(format!("console.{}: {}", p["type"], p["args"]))
                }
                Some("Log.entryAdded")
                    if matches!(p["entry"]["level"].as_str(), Some("error" | "warning")) =>
                {
                    Some(format!("log: {}", p["entry"]))
                }
                _ => None,
            };
            out.extend(line);
        }
        out
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// Kills the browser's process group (it was started as the group's leader,
/// so this is every process it started) and reaps the leader.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill has no memory preconditions; -pid names the group this
        // test created with process_group(0).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let _ = child.wait();
}

/// Reads Chromium's stderr until it prints its DevTools address; a thread
/// keeps draining stderr afterwards so the browser never blocks on it.
fn devtools_url(stderr: std::process::ChildStderr) -> Result<String, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if sent {
                continue;
            }
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                sent = tx.send(Ok(url.trim().to_owned())).is_ok();
            } else {
                let _ = tx.send(Err(line));
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    let mut said = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(url)) => return Ok(url),
            Ok(Err(line)) => said.push(line),
            Err(_) => {
                return Err(format!(
                    "Chromium printed no DevTools address within {WAIT:?}; its stderr:\n{}",
                    said.join("\n")
                ))
            }
        }
    }
}

/// Opens the DevTools websocket at `url` (`ws://127.0.0.1:PORT/devtools/browser/ID`).
fn connect(url: &str) -> WebSocket<TcpStream> {
    let host = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("DevTools address {url:?} is not ws://HOST:PORT/..."));
    let addr = host
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("DevTools address {url:?}: no socket address"));
    let stream = TcpStream::connect_timeout(&addr, WAIT)
        .unwrap_or_else(|e| panic!("connect to Chromium at {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("set a read timeout");
    stream
        .set_write_timeout(Some(WAIT))
        .expect("set a write timeout");
    let (ws, _) = tungstenite::client(url, stream)
        .unwrap_or_else(|e| panic!("websocket handshake with Chromium at {url}: {e}"));
    ws
}

/// What one page did in the browser.
struct Visit {
    errors: Vec<String>,
    probe: Value,
    screenshot: Vec<u8>,
}

/// A decoded screenshot, 8-bit samples row by row.
struct Shot {
    width: usize,
    height: usize,
    samples: usize,
    pixels: Vec<u8>,
}

impl Shot {
    fn decode(png_bytes: &[u8]) -> Self {
        let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info().expect("the screenshot is a PNG");
        let mut pixels = vec![0; reader.output_buffer_size().expect("PNG size fits memory")];
        let frame = reader.next_frame(&mut pixels).expect("the PNG decodes");
        pixels.truncate(frame.buffer_size());
        Self {
            width: frame.width as usize,
            height: frame.height as usize,
            samples: frame.color_type.samples(),
            pixels,
        }
    }

    /// The share of pixels in the rectangle (CSS px at scale 1, clipped to the
    /// image) that differ from its top-left pixel, its background.
    fn painted(&self, x: f64, y: f64, w: f64, h: f64) -> f64 {
        let clip = |v: f64, max: usize| (v.max(0.0) as usize).min(max);
        let (x0, y0) = (clip(x, self.width), clip(y, self.height));
        let (x1, y1) = (clip(x + w, self.width), clip(y + h, self.height));
        if x0 >= x1 || y0 >= y1 {
            return 0.0;
        }
        let row = self.width * self.samples;
        let at = |x: usize, y: usize| &self.pixels[y * row + x * self.samples..][..self.samples];
        let background = at(x0, y0);
        let painted = (y0..y1)
            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
            .filter(|&(x, y)| at(x, y) != background)
            .count();
        painted as f64 / ((x1 - x0) * (y1 - y0)) as f64
    }
}

/// The checks every report page must pass; prints what it measured.
fn assert_clean_report(name: &str, v: &Visit, out: &Path) {
    let p = &v.probe;
    assert!(
        v.errors.is_empty(),
        "{name}: the page logged {:#?}",
        v.errors
    );
    assert_eq!(p["pwned"], Value::Null, "{name}: a script ran");
    assert_eq!(p["scripts"], 0, "{name}: the page holds a script element");
    assert_eq!(p["active"], json!([]), "{name}: active attributes");
    assert_eq!(p["csp"], json!([]), "{name}: CSP violations");
    assert!(
        p["csp_meta"]
            .as_str()
            .is_some_and(|c| c.contains("default-src 'none'")),
        "{name}: no content security policy: {}",
        p["csp_meta"]
    );
    assert_eq!(
        p["controls"], false,
        "{name}: control characters in the text"
    );
    assert!(
        p["overflow"].as_f64().is_some_and(|o| o <= 0.0),
        "{name}: the page is wider than the window by {} px",
        p["overflow"]
    );
    let path = out.join(format!("{name}.png"));
    write_new(&path, &v.screenshot);
    let shot = Shot::decode(&v.screenshot);
    let page = shot.painted(0.0, 0.0, f64::INFINITY, f64::INFINITY);
    let plots = assert_plots(name, p, &shot);
    println!(
        "{name}: screenshot {}x{} px, {} bytes, {:.1}% painted; plots (CSS px, % painted): {}",
        shot.width,
        shot.height,
        v.screenshot.len(),
        page * 100.0,
        plots.join(", ")
    );
    assert_eq!(shot.width, VIEWPORT.0 as usize, "{name}: screenshot width");
    assert!(
        shot.height >= VIEWPORT.1 as usize,
        "{name}: screenshot height"
    );
    assert!(
        page > 0.01,
        "{name}: blank screenshot, see {}",
        path.display()
    );
}

/// Every SVG fills its container's width, is as tall as its `viewBox` (or
/// its fixed CSS height) makes it, and is painted in the screenshot.
/// Returns `label WxH painted%` per distinct plot.
fn assert_plots(name: &str, p: &Value, shot: &Shot) -> Vec<String> {
    let plots = p["plots"].as_array().expect("plots");
    assert!(plots.len() >= 4, "{name}: only {} SVGs", plots.len());
    let f = |v: &Value, i: usize| v[i].as_f64().unwrap_or(f64::NAN);
    let mut sizes: Vec<String> = Vec::new();
    for plot in plots {
        let label = plot["label"].as_str().unwrap_or("?");
        let (w, h) = (f(&plot["size"], 0), f(&plot["size"], 1));
        let (vw, vh) = (f(&plot["viewbox"], 0), f(&plot["viewbox"], 1));
        let expected_h = plot["fixed_height"].as_f64().unwrap_or(w * vh / vw);
        let box_w = plot["box"].as_f64().unwrap_or(f64::NAN);
        let painted = shot.painted(f(&plot["at"], 0), f(&plot["at"], 1), w, h);
        let what = format!("{name}: plot {label:?} {plot}");
        assert!(w >= 200.0, "{what}: narrower than 200 px");
        assert!((w - box_w).abs() <= 1.0, "{what}: does not fill its box");
        assert!(
            (h - expected_h).abs() <= 1.0,
            "{what}: height is not {expected_h}"
        );
        assert!(painted > 0.01, "{what}: blank in the screenshot");
        let size = format!("{label} {w:.0}x{h:.0}");
        if !sizes.iter().any(|s| s.starts_with(&size)) {
            sizes.push(format!("{size} {:.0}%", painted * 100.0));
        }
    }
    sizes
}

fn report_html(trace: &Path, out: &Path) {
    let run = Command::new(env!("CARGO_BIN_EXE_uffdscope"))
        .args(["report", "--format", "html", "-o"])
        .arg(out)
        .arg(trace)
        .output()
        .expect("run uffdscope report");
    assert!(
        run.status.success(),
        "uffdscope report {}: {}",
        trace.display(),
        String::from_utf8_lossy(&run.stderr)
    );
}

/// `prefix`, the markup, the escapes and a 300-character word (layout).
fn hostile_string(prefix: &str) -> String {
    format!("{prefix}{}{ESCAPES}{}", MARKUP.concat(), "W".repeat(300))
}

/// The synthetic scenario with the payloads in the trace's metadata, thread
/// names, guest-log sources, a QMP status and the end note.
fn hostile_trace() -> Vec<u8> {
    let evil = hostile_string("");
    let meta = TraceMeta {
        tool: hostile_string("tool "),
        host: evil.clone(),
        kernel: evil.clone(),
        target_comm: evil.clone(),
        qemu_version: Some(evil.clone()),
        ..Scenario::default().meta()
    };
    let mut records = Vec::new();
    Scenario::default().generate(|r| records.push(r.clone()), false);
    let mut status_added = false;
    let mut hostile = Vec::with_capacity(records.len() + 1);
    for mut r in records {
        match &mut r {
            Record::Thread(t) if t.tid == FAULT_TID || t.tid == VCPU_TID0 => {
                t.name.push_str(&evil);
            }
            Record::GuestLine(g) => g.text = g.text.replacen("stress", &evil, 1),
            Record::Note(n) if n.kind == "end" => n.text.clone_from(&evil),
            _ => {}
        }
        let ts = r.ts();
        hostile.push(r);
        if !status_added && matches!(hostile.last(), Some(Record::Qmp(_))) {
            status_added = true;
            hostile.push(Record::Qmp(Qmp {
                ts: ts + 1,
                kind: "query-migrate".into(),
                json: json!({ "status": evil }).to_string(),
            }));
        }
    }
    uffdscope_trace::write_all(&meta, &hostile)
}

fn committed(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/data")
        .join(name)
}

fn write_new(path: &Path, bytes: &[u8]) {
    let mut f = uffdscope_trace::create_exclusive(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(bytes)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

#[test]
fn the_html_report_is_inert_and_drawn_in_chromium() {
    let Some(bin) = tier::chromium("the_html_report_is_inert_and_drawn_in_chromium") else {
        return;
    };
    let started = Instant::now();
    let dir = KeptOnPanic::new("uffdscope-browser-");
    let out = dir.path();
    let hostile = out.join("<img src=x onerror=window.__pwned=5>.trace");
    write_new(&hostile, &hostile_trace());
    let mut pages = Vec::new();
    for (name, trace) in [
        ("synthetic", committed("synthetic-2vcpu.trace")),
        ("qemu", committed("qemu-7.2-tcg-postcopy-1vcpu.trace")),
        ("hostile", hostile),
    ] {
        let html = out.join(format!("{name}.html"));
        report_html(&trace, &html);
        pages.push((name, html));
    }
    let mut browser = Chromium::launch(&bin, &out.join("profile"));
    for (name, html) in &pages {
        let t = Instant::now();
        let visit = browser.visit(html);
        println!("{name}: visited in {:.2} s", t.elapsed().as_secs_f64());
        assert_clean_report(name, &visit, &out);
        if *name == "hostile" {
            let text = visit.probe["text"].as_str().unwrap_or_default();
            for payload in MARKUP {
                assert!(text.contains(payload), "{payload} is not shown as text");
            }
        }
    }
    controls_fail(&mut browser, &out, &pages[0].1);
    drop(browser);
    let took = started.elapsed().as_secs_f64();
    println!("reports, browser and checks took {took:.1} s");
}

/// The checks are not vacuous: an inline script does run in a page without
/// the report's policy, and under the policy it is blocked, reported as a
/// violation and logged as an error.
fn controls_fail(browser: &mut Chromium, out: &Path, report: &Path) {
    let html = std::fs::read_to_string(report).expect("read the report");
    let meta_start = html
        .find(r#"<meta http-equiv="Content-Security-Policy""#)
        .expect("the report declares a CSP");
    let meta_len = html[meta_start..].find('>').expect("the meta tag closes") + 1;
    let meta = &html[meta_start..meta_start + meta_len];
    let script = MARKUP[0];
    let open = out.join("control-open.html");
    write_new(&open, format!("<!DOCTYPE html><p>x</p>{script}").as_bytes());
    let ran = browser.visit(&open);
    assert_eq!(ran.probe["pwned"], "1", "the control script did not run");
    assert_eq!(ran.probe["csp"], json!([]));

    let guarded = out.join("control-csp.html");
    let page = format!("<!DOCTYPE html><html><head>{meta}</head><body><p>x</p>{script}");
    write_new(&guarded, page.as_bytes());
    let blocked = browser.visit(&guarded);
    assert_eq!(
        blocked.probe["pwned"],
        Value::Null,
        "the policy let a script run"
    );
    assert_eq!(blocked.probe["scripts"], 1);
    assert!(
        blocked.probe["csp"].as_array().is_some_and(|v| v
            .iter()
            .any(|s| s.as_str().is_some_and(|s| s.starts_with("script-src")))),
        "no violation seen: {}",
        blocked.probe["csp"]
    );
    assert!(
        !blocked.errors.is_empty(),
        "the blocked script logged no error"
    );
}
