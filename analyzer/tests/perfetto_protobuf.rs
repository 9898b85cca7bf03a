//! The Perfetto protobuf export decoded with a small protobuf reader and
//! checked for structure — slices nest per track, flows pair up, timestamps
//! are monotonic on the sequence, every uuid and iid is defined before use —
//! and against the JSON export of the same trace: the same slices, instants,
//! counters, flows and named thread tracks; and Perfetto's own compiled
//! protos (the `perfetto` Python package) parse it with no unknown field.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;
use uffdscope_analyzer::export::perfetto::{export_json, export_protobuf};
use uffdscope_analyzer::export::Limits;
use uffdscope_fixtures::synth::Scenario;
use uffdscope_trace::TraceReader;

/// One protobuf field: number and value (varint / fixed64 as u64, or bytes).
#[derive(Debug, Clone)]
enum Val<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

fn varint(b: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = b[*pos];
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
    }
    panic!("varint longer than 10 bytes at {pos}");
}

/// The fields of one message, in order.
fn fields(b: &[u8]) -> Vec<(u32, Val<'_>)> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < b.len() {
        let key = varint(b, &mut pos);
        let field = (key >> 3) as u32;
        let val = match key & 7 {
            0 => Val::Int(varint(b, &mut pos)),
            1 => {
                let v = u64::from_le_bytes(b[pos..pos + 8].try_into().expect("8 bytes"));
                pos += 8;
                Val::Int(v)
            }
            2 => {
                let len = varint(b, &mut pos) as usize;
                let v = &b[pos..pos + len];
                pos += len;
                Val::Bytes(v)
            }
            t => panic!("wire type {t} is not written by the encoder"),
        };
        out.push((field, val));
    }
    out
}

fn int(fs: &[(u32, Val<'_>)], n: u32) -> Option<u64> {
    fs.iter().find_map(|(f, v)| match v {
        Val::Int(i) if *f == n => Some(*i),
        _ => None,
    })
}

fn all_ints(fs: &[(u32, Val<'_>)], n: u32) -> Vec<u64> {
    fs.iter()
        .filter_map(|(f, v)| match v {
            Val::Int(i) if *f == n => Some(*i),
            _ => None,
        })
        .collect()
}

fn bytes<'a>(fs: &[(u32, Val<'a>)], n: u32) -> Option<&'a [u8]> {
    fs.iter().find_map(|(f, v)| match v {
        Val::Bytes(b) if *f == n => Some(*b),
        _ => None,
    })
}

fn string(fs: &[(u32, Val<'_>)], n: u32) -> Option<String> {
    bytes(fs, n).map(|b| String::from_utf8(b.to_vec()).expect("utf-8 string"))
}

/// What the decoded trace holds, for comparison with the JSON export.
#[derive(Debug, Default)]
struct Decoded {
    /// Slices (begin/end pairs and zero-length instants) per category.
    slices: BTreeMap<String, usize>,
    /// Instants per category (zero-length slices included: JSON cannot tell).
    instants: BTreeMap<String, usize>,
    counters: usize,
    flows: usize,
    /// Instants carrying a flow id (every point of every flow).
    flow_points: usize,
    /// Named thread tracks: (pid, tid) → name.
    threads: BTreeMap<(u64, u64), String>,
    zero_length: BTreeMap<String, usize>,
}

const SLICE_BEGIN: u64 = 1;
const SLICE_END: u64 = 2;
const INSTANT: u64 = 3;
const COUNTER: u64 = 4;

#[derive(Default)]
struct State {
    decoded: Decoded,
    tracks: HashSet<u64>,
    names: HashMap<u64, String>,
    categories: HashMap<u64, String>,
    arg_keys: HashSet<u64>,
    last_ts: u64,
    /// Open slices per track: their begin timestamps.
    open: HashMap<u64, Vec<u64>>,
    flows_open: HashSet<u64>,
    flows_done: HashSet<u64>,
}

impl State {
    fn interned(&mut self, d: &[u8]) {
        for (kind, entry) in fields(d) {
            let Val::Bytes(e) = entry else {
                panic!("interned entry")
            };
            let e = fields(e);
            let iid = int(&e, 1).expect("iid");
            let name = string(&e, 2).expect("interned name");
            let fresh = match kind {
                1 => self.categories.insert(iid, name).is_none(),
                2 => self.names.insert(iid, name).is_none(),
                3 => self.arg_keys.insert(iid),
                k => panic!("interned kind {k}"),
            };
            assert!(fresh, "iid {iid} of kind {kind} interned twice");
        }
    }

    fn descriptor(&mut self, d: &[u8]) {
        let d = fields(d);
        let uuid = int(&d, 1).expect("uuid");
        if let Some(parent) = int(&d, 5) {
            assert!(
                self.tracks.contains(&parent),
                "parent {parent} described first"
            );
        }
        self.tracks.insert(uuid);
        if let Some(t) = bytes(&d, 4) {
            let t = fields(t);
            if let Some(name) = string(&t, 5) {
                let key = (int(&t, 1).expect("pid"), int(&t, 2).expect("tid"));
                self.decoded.threads.insert(key, name);
            }
        }
    }

    fn event(&mut self, ts: u64, e: &[u8]) {
        let e = fields(e);
        let track = int(&e, 11).expect("track_uuid");
        assert!(
            self.tracks.contains(&track),
            "track {track} described before use"
        );
        let kind = int(&e, 9).expect("type");
        let category = all_ints(&e, 3)
            .first()
            .map(|iid| self.categories.get(iid).expect("category interned").clone());
        if let Some(iid) = int(&e, 10) {
            assert!(
                self.names.contains_key(&iid),
                "name iid {iid} interned first"
            );
        }
        for a in e.iter().filter(|(f, _)| *f == 4) {
            let Val::Bytes(a) = a.1 else {
                panic!("annotation")
            };
            let key = int(&fields(a), 1).expect("annotation name_iid");
            assert!(self.arg_keys.contains(&key), "arg key {key} interned first");
        }
        match kind {
            SLICE_BEGIN => {
                self.open.entry(track).or_default().push(ts);
                *self
                    .decoded
                    .slices
                    .entry(category.expect("category"))
                    .or_default() += 1;
            }
            SLICE_END => {
                let begin = self.open.get_mut(&track).and_then(Vec::pop);
                assert!(
                    begin.is_some_and(|b| b <= ts),
                    "end at {ts} without a begin on track {track}"
                );
            }
            INSTANT => self.instant(category.expect("category"), &e),
            COUNTER => self.decoded.counters += 1,
            k => panic!("event type {k}"),
        }
    }

    fn instant(&mut self, category: String, e: &[(u32, Val<'_>)]) {
        if category == "flow" {
            self.decoded.flow_points += 1;
            for id in all_ints(e, 47) {
                assert!(
                    !self.flows_done.contains(&id),
                    "flow {id} continues after its end"
                );
                self.flows_open.insert(id);
            }
            for id in all_ints(e, 48) {
                assert!(
                    self.flows_open.remove(&id),
                    "flow {id} ends without a start"
                );
                assert!(self.flows_done.insert(id), "flow {id} ends twice");
                self.decoded.flows += 1;
            }
            return;
        }
        *self.decoded.instants.entry(category).or_default() += 1;
    }

    fn packet(&mut self, p: &[u8], first: bool) {
        let p = fields(p);
        assert_eq!(int(&p, 10), Some(1), "one trusted packet sequence");
        let flags = int(&p, 13).unwrap_or(0);
        if first {
            assert_eq!(flags & 1, 1, "the first packet clears incremental state");
        } else {
            assert_eq!(
                flags & 1,
                0,
                "only the first packet clears incremental state"
            );
        }
        if let Some(d) = bytes(&p, 12) {
            assert_eq!(flags, 2, "interned data needs incremental state");
            self.interned(d);
        }
        if let Some(d) = bytes(&p, 60) {
            self.descriptor(d);
        }
        if let Some(e) = bytes(&p, 11) {
            assert_eq!(flags, 2, "events use interned data");
            let ts = int(&p, 8).expect("an event has a timestamp");
            assert!(
                ts >= self.last_ts,
                "timestamps go back: {ts} after {}: {:?}",
                self.last_ts,
                fields(e)
            );
            self.last_ts = ts;
            self.event(ts, e);
        }
    }
}

fn decode(trace: &[u8]) -> Decoded {
    let mut state = State::default();
    for (i, (field, packet)) in fields(trace).into_iter().enumerate() {
        assert_eq!(field, 1, "a Trace holds only packets");
        let Val::Bytes(p) = packet else {
            panic!("packet {i} is not a message")
        };
        state.packet(p, i == 0);
    }
    for (track, open) in &state.open {
        assert!(
            open.is_empty(),
            "track {track} ends with open slices at {open:?}"
        );
    }
    assert!(
        state.flows_open.is_empty(),
        "flows never ended: {:?}",
        state.flows_open
    );
    state.decoded
}

/// The same summary of the JSON export.
fn summarize_json(v: &Value) -> Decoded {
    let mut d = Decoded::default();
    for e in v["traceEvents"].as_array().expect("events") {
        let cat = e["cat"].as_str().unwrap_or_default().to_owned();
        match e["ph"].as_str().expect("ph") {
            "X" if e["dur"].as_f64() == Some(0.0) => *d.zero_length.entry(cat).or_default() += 1,
            "X" => *d.slices.entry(cat).or_default() += 1,
            "i" => *d.instants.entry(cat).or_default() += 1,
            "C" => d.counters += 1,
            "f" => d.flows += 1,
            "M" if e["name"] == "thread_name" => {
                let key = (
                    e["pid"].as_u64().expect("pid"),
                    e["tid"].as_u64().expect("tid"),
                );
                d.threads
                    .insert(key, e["args"]["name"].as_str().expect("name").to_owned());
            }
            _ => {}
        }
    }
    d
}

fn both(trace: &[u8]) -> (Decoded, Decoded) {
    let mut proto = Vec::new();
    let mut reader = TraceReader::new(trace).expect("trace header");
    export_protobuf(&mut reader, &mut proto, Limits::NONE).expect("protobuf export");
    let mut json = Vec::new();
    let mut reader = TraceReader::new(trace).expect("trace header");
    export_json(&mut reader, &mut json, Limits::NONE).expect("json export");
    let json: Value = serde_json::from_slice(&json).expect("JSON");
    (decode(&proto), summarize_json(&json))
}

/// The protobuf writes a zero-length slice as an instant; otherwise the two
/// hold the same events.
fn assert_same_timeline(proto: &Decoded, json: &Decoded) {
    assert_eq!(proto.slices, json.slices, "slices per category");
    let mut instants = json.instants.clone();
    for (cat, n) in &json.zero_length {
        *instants.entry(cat.clone()).or_default() += n;
    }
    assert_eq!(proto.instants, instants, "instants per category");
    assert_eq!(proto.counters, json.counters, "counter values");
    assert_eq!(proto.flows, json.flows, "flows");
    assert_eq!(proto.threads, json.threads, "named thread tracks");
}

fn committed(name: &str) -> Vec<u8> {
    let path = uffdscope_fixtures::data_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn real_trace_protobuf_is_well_formed_and_matches_json() {
    let (proto, json) = both(&committed("qemu-7.2-tcg-postcopy-1vcpu.trace"));
    assert!(proto.slices["fault"] > 1_000, "{:?}", proto.slices);
    assert!(proto.flows > 1_000, "{}", proto.flows);
    assert_same_timeline(&proto, &json);
}

#[test]
fn synthetic_scenario_with_guest_qmp_and_drops_matches_json() {
    let scenario = Scenario {
        drops: 7,
        ..Scenario::default()
    };
    let mut records = Vec::new();
    scenario.generate(|r| records.push(r.clone()), false);
    let trace = uffdscope_trace::container::write_all(&scenario.meta(), &records);
    let (proto, json) = both(&trace);
    for cat in ["guest", "qmp", "note"] {
        assert!(
            proto.instants.get(cat).is_some_and(|n| *n > 0),
            "{cat}: {:?}",
            proto.instants
        );
    }
    assert!(proto.counters > 0);
    assert_same_timeline(&proto, &json);
}

#[test]
fn committed_synthetic_trace_matches_json() {
    let (proto, json) = both(&committed("synthetic-2vcpu.trace"));
    assert_same_timeline(&proto, &json);
}

/// Perfetto's own compiled protos (the `perfetto` Python package) parse the
/// export with no unknown field and see the same events and thread names.
const PERFETTO_PARSE: &str = r#"
import json, sys
from google.protobuf import unknown_fields
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent
t = Trace()
t.ParseFromString(open(sys.argv[1], 'rb').read())
types, unknown, threads = {}, 0, {}
for p in t.packet:
    unknown += len(unknown_fields.UnknownFieldSet(p))
    if p.HasField('track_event'):
        unknown += len(unknown_fields.UnknownFieldSet(p.track_event))
        name = TrackEvent.Type.Name(p.track_event.type)
        types[name] = types.get(name, 0) + 1
    d = p.track_descriptor
    if p.HasField('track_descriptor') and d.HasField('thread') and d.thread.thread_name:
        threads[f"{d.thread.pid}/{d.thread.tid}"] = d.thread.thread_name
print(json.dumps({"types": types, "unknown": unknown, "threads": threads}))
"#;

#[test]
fn perfettos_own_protos_parse_the_export() {
    let Some(python) = uffdscope_fixtures::tier::python_module(
        "perfetto_protos",
        "perfetto.protos.perfetto.trace.perfetto_trace_pb2",
        "perfetto",
    ) else {
        return;
    };
    let trace = committed("qemu-7.2-tcg-postcopy-1vcpu.trace");
    let mut proto = Vec::new();
    let mut reader = TraceReader::new(trace.as_slice()).expect("trace header");
    export_protobuf(&mut reader, &mut proto, Limits::NONE).expect("protobuf export");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("timeline.pftrace");
    std::fs::write(&file, &proto).expect("write");
    let out = std::process::Command::new(python)
        .args(["-c", PERFETTO_PARSE])
        .arg(&file)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(got["unknown"], 0, "fields Perfetto does not define");
    let mine = decode(&proto);
    let slices: usize = mine.slices.values().sum();
    let instants: usize = mine.instants.values().sum::<usize>() + mine.flow_points;
    assert_eq!(got["types"]["TYPE_SLICE_BEGIN"], slices);
    assert_eq!(got["types"]["TYPE_SLICE_END"], slices);
    assert_eq!(got["types"]["TYPE_COUNTER"], mine.counters);
    assert_eq!(got["types"]["TYPE_INSTANT"], instants);
    let threads: BTreeMap<(u64, u64), String> = got["threads"]
        .as_object()
        .expect("threads")
        .iter()
        .map(|(k, v)| {
            let (pid, tid) = k.split_once('/').expect("pid/tid");
            let key = (pid.parse().expect("pid"), tid.parse().expect("tid"));
            (key, v.as_str().expect("name").to_owned())
        })
        .collect();
    assert_eq!(threads, mine.threads);
}
