//! The Chrome Trace Event JSON encoder of the timeline
//! (`--format perfetto-json`): complete slices (`X`), instants, counters,
//! flow events bound to their enclosing slices and `M` metadata naming the
//! tracks, written in the order the timeline makes them (the viewers sort).
//! Timestamps are µs since the time origin of every output
//! ([`crate::drive::Origin`]: the trace's first record).

use std::fmt::Write as _;
use std::io::{self, Write};

use super::{Arg, Args, Encoder, FlowStep, Name, Place};
use crate::drive::Origin;
use uffdscope_trace::TraceMeta;

pub(super) struct Json<W: Write> {
    out: W,
    ev: String,
    first: bool,
    origin: Origin,
}

/// Appends `s` as a JSON string literal.
fn json_str(o: &mut String, s: &str) {
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
}

/// Appends a JSON number; `null` for a value JSON cannot hold (inf, NaN).
fn json_f64(o: &mut String, v: f64) {
    if v.is_finite() {
        let _ = write!(o, "{v}");
    } else {
        o.push_str("null");
    }
}

/// Appends ns as µs with three decimals (exact: no float rounding).
fn push_us(o: &mut String, ns: i128) {
    let sign = if ns < 0 { "-" } else { "" };
    let a = ns.unsigned_abs();
    let _ = write!(o, "{sign}{}.{:03}", a / 1000, a % 1000);
}

fn push_arg(o: &mut String, v: &Arg) {
    match v {
        Arg::Null => o.push_str("null"),
        Arg::Bool(b) => {
            let _ = write!(o, "{b}");
        }
        Arg::Int(i) => {
            let _ = write!(o, "{i}");
        }
        Arg::UInt(u) => {
            let _ = write!(o, "{u}");
        }
        Arg::Float(f) => json_f64(o, *f),
        Arg::Str(s) => json_str(o, s),
        Arg::List(items) => {
            o.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    o.push(',');
                }
                push_arg(o, item);
            }
            o.push(']');
        }
        Arg::Map(entries) => {
            o.push('{');
            push_entries(o, entries);
            o.push('}');
        }
    }
}

fn push_entries(o: &mut String, entries: &Args) {
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        json_str(o, k);
        o.push(':');
        push_arg(o, v);
    }
}

impl<W: Write> Json<W> {
    /// Writes the head (the recording's facts in `otherData`).
    pub(super) fn start(mut out: W, meta: &TraceMeta) -> io::Result<Self> {
        let mut head = String::from(r#"{"displayTimeUnit":"ns","otherData":{"exporter":"#);
        json_str(&mut head, concat!("uffdscope ", env!("CARGO_PKG_VERSION")));
        for (k, v) in [
            ("recorded_by", &meta.tool),
            ("host", &meta.host),
            ("kernel", &meta.kernel),
            ("target", &meta.target_comm),
        ] {
            let _ = write!(head, r#","{k}":"#);
            json_str(&mut head, v);
        }
        let _ = write!(
            head,
            r#","target_pid":{},"time_origin":"the trace's first record"}},"traceEvents":["#,
            meta.target_pid
        );
        head.push('\n');
        out.write_all(head.as_bytes())?;
        Ok(Json {
            out,
            ev: String::with_capacity(512),
            first: true,
            origin: Origin::default(),
        })
    }

    /// Starts an event: the separator and the opening brace.
    fn begin(&mut self) -> &mut String {
        self.ev.clear();
        if !self.first {
            self.ev.push_str(",\n");
        }
        self.first = false;
        self.ev.push('{');
        &mut self.ev
    }

    /// Closes the event, with its args when there are any, and writes it.
    fn end(&mut self, args: &Args) -> io::Result<()> {
        if !args.is_empty() {
            self.ev.push_str(r#","args":{"#);
            push_entries(&mut self.ev, args);
            self.ev.push('}');
        }
        self.ev.push('}');
        self.out.write_all(self.ev.as_bytes())
    }

    /// The common head: phase, name, category, pid, tid, ts.
    fn head(&mut self, ph: char, name: &str, cat: &str, at: Place) {
        let rel = self.origin.rel(at.ts);
        let o = self.begin();
        let _ = write!(o, r#""ph":"{ph}","name":"#);
        json_str(o, name);
        let _ = write!(
            o,
            r#","cat":"{cat}","pid":{},"tid":{},"ts":"#,
            at.pid, at.tid
        );
        push_us(o, rel);
    }

    fn metadata(&mut self, what: &str, pid: u32, tid: u32, args: &Args) -> io::Result<()> {
        let o = self.begin();
        let _ = write!(o, r#""ph":"M","name":"{what}","pid":{pid},"tid":{tid}"#);
        self.end(args)
    }
}

impl<W: Write> Encoder for Json<W> {
    fn advance(&mut self, origin: Origin, _now: u64) -> io::Result<()> {
        self.origin = origin;
        Ok(())
    }

    fn slice(
        &mut self,
        at: Place,
        end: u64,
        name: Name<'_>,
        cat: &'static str,
        args: &Args,
    ) -> io::Result<()> {
        self.head('X', name.as_str(), cat, at);
        self.ev.push_str(r#","dur":"#);
        push_us(&mut self.ev, i128::from(end.saturating_sub(at.ts)));
        self.end(args)
    }

    fn instant(
        &mut self,
        at: Place,
        name: Name<'_>,
        cat: &'static str,
        args: &Args,
    ) -> io::Result<()> {
        self.head('i', name.as_str(), cat, at);
        self.ev.push_str(r#","s":"t""#);
        self.end(args)
    }

    fn counter(
        &mut self,
        pid: u32,
        name: Name<'_>,
        ts: u64,
        key: &'static str,
        value: f64,
    ) -> io::Result<()> {
        let at = Place { pid, tid: pid, ts };
        self.head('C', name.as_str(), "counter", at);
        self.end(&vec![(key, Arg::Float(value))])
    }

    fn flow(&mut self, at: Place, id: u64, step: FlowStep) -> io::Result<()> {
        let ph = match step {
            FlowStep::First => 's',
            FlowStep::Middle => 't',
            FlowStep::Last => 'f',
        };
        self.head(ph, "fault", "flow", at);
        let _ = write!(self.ev, r#","id":{id}"#);
        if step == FlowStep::Last {
            self.ev.push_str(r#","bp":"e""#);
        }
        self.end(&Args::new())
    }

    fn process(&mut self, pid: u32, name: &str, sort_index: i64) -> io::Result<()> {
        let named = vec![("name", Arg::Str(name.to_owned()))];
        self.metadata("process_name", pid, pid, &named)?;
        let sort = vec![("sort_index", Arg::Int(sort_index))];
        self.metadata("process_sort_index", pid, pid, &sort)
    }

    fn thread(
        &mut self,
        pid: u32,
        tid: u32,
        name: &str,
        sort_index: Option<i64>,
    ) -> io::Result<()> {
        let named = vec![("name", Arg::Str(name.to_owned()))];
        self.metadata("thread_name", pid, tid, &named)?;
        match sort_index {
            Some(i) => self.metadata(
                "thread_sort_index",
                pid,
                tid,
                &vec![("sort_index", Arg::Int(i))],
            ),
            None => Ok(()),
        }
    }

    fn finish(&mut self) -> io::Result<()> {
        self.out.write_all(b"\n]}\n")?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut o = String::new();
        json_str(&mut o, "a\"b\\c\nd\u{1}<script>");
        assert_eq!(o, r#""a\"b\\c\nd\u0001<script>""#);
        let v: serde_json::Value = serde_json::from_str(&o).expect("valid JSON string");
        assert_eq!(v, "a\"b\\c\nd\u{1}<script>");
    }

    #[test]
    fn numbers_json_cannot_hold_are_null() {
        let mut o = String::new();
        for v in [1.5, f64::INFINITY, f64::NAN, -0.25] {
            json_f64(&mut o, v);
            o.push(' ');
        }
        assert_eq!(o, "1.5 null null -0.25 ");
    }

    #[test]
    fn microseconds_are_exact() {
        let mut o = String::new();
        push_us(&mut o, 1_234_567);
        o.push(' ');
        push_us(&mut o, -5);
        o.push(' ');
        push_us(&mut o, 0);
        assert_eq!(o, "1234.567 -0.005 0.000");
    }

    #[test]
    fn nested_args_are_json() {
        let mut o = String::new();
        let args = vec![
            (
                "a",
                Arg::List(vec![Arg::Map(vec![("b", Arg::Null)]), Arg::Int(-1)]),
            ),
            ("c", Arg::Bool(true)),
        ];
        push_entries(&mut o, &args);
        assert_eq!(o, r#""a":[{"b":null},-1],"c":true"#);
    }
}
