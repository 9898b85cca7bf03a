//! QMP replies and events as the recorder kept them (JSON text): the
//! migration status, QEMU's own blocktime and (10.1+) latency figures, and
//! the migration's capabilities and parameters. Parsed once per record.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use uffdscope_trace::record::Qmp;

/// What one QMP reply or event says, as far as uffdscope reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QmpFacts {
    /// The migration status (`query-migrate` replies, `MIGRATION` events).
    pub status: Option<String>,
    /// `postcopy-blocktime`, ms.
    pub blocktime_ms: Option<f64>,
    /// `postcopy-vcpu-blocktime`, ms per vCPU.
    pub vcpu_blocktime_ms: Option<Vec<f64>>,
    /// QEMU 10.1's latency figures, when the reply has them.
    pub latency: Option<QemuLatency>,
    /// `query-migrate-capabilities`: capability → on.
    pub capabilities: Option<BTreeMap<String, bool>>,
    /// `query-migrate-parameters`: the reply as QEMU sent it.
    pub parameters: Option<Map<String, Value>>,
}

/// QEMU 10.1's post-copy latency figures (`query-migrate`, with the
/// destination's postcopy-blocktime capability on). Units as QEMU's: ns, and
/// counts per log2 µs bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QemuLatency {
    pub latency_ns: Option<u64>,
    pub vcpu_latency_ns: Option<Vec<u64>>,
    pub non_vcpu_latency_ns: Option<u64>,
    pub dist: Option<Vec<u64>>,
}

impl QemuLatency {
    fn from_reply(v: &Value) -> Option<Self> {
        let u64s = |key: &str| {
            v.get(key)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_u64).collect::<Vec<u64>>())
        };
        let l = Self {
            latency_ns: v.get("postcopy-latency").and_then(Value::as_u64),
            vcpu_latency_ns: u64s("postcopy-vcpu-latency"),
            non_vcpu_latency_ns: v.get("postcopy-non-vcpu-latency").and_then(Value::as_u64),
            dist: u64s("postcopy-latency-dist"),
        };
        (l != Self::default()).then_some(l)
    }
}

/// `[{"capability": NAME, "state": BOOL}, ...]` as a map.
fn capabilities(v: &Value) -> Option<BTreeMap<String, bool>> {
    let list = v.as_array()?;
    let caps: BTreeMap<String, bool> = list
        .iter()
        .filter_map(|c| {
            Some((
                c.get("capability")?.as_str()?.to_owned(),
                c.get("state")?.as_bool()?,
            ))
        })
        .collect();
    (!caps.is_empty()).then_some(caps)
}

/// Parses a reply (`{"return": {...}}`) or an event (`{"data": {...}}`) of
/// the recorder's record `kind`; `None` when the text is not JSON.
pub fn parse(kind: &str, json: &str) -> Option<QmpFacts> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let v = v.get("return").unwrap_or(&v);
    if kind == Qmp::PARAMETERS {
        return Some(QmpFacts {
            parameters: v.as_object().cloned(),
            ..QmpFacts::default()
        });
    }
    let status = v
        .get("status")
        .or_else(|| v.get("data").and_then(|d| d.get("status")))
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    Some(QmpFacts {
        status,
        blocktime_ms: v
            .get("postcopy-blocktime")
            .and_then(serde_json::Value::as_f64),
        vcpu_blocktime_ms: v
            .get("postcopy-vcpu-blocktime")
            .and_then(serde_json::Value::as_array)
            .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect()),
        latency: QemuLatency::from_reply(v),
        capabilities: capabilities(v),
        parameters: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_from_replies_and_events() {
        let status = |j: &str| parse("query-migrate", j).and_then(|f| f.status);
        assert_eq!(
            status(r#"{"return":{"status":"postcopy-active"}}"#).as_deref(),
            Some("postcopy-active")
        );
        assert_eq!(
            status(r#"{"event":"MIGRATION","data":{"status":"completed"}}"#).as_deref(),
            Some("completed")
        );
        assert_eq!(parse("query-migrate", "not json"), None);
    }

    #[test]
    fn blocktime_figures() {
        let f = parse(
            "query-migrate",
            r#"{"return":{"postcopy-blocktime":12,"postcopy-vcpu-blocktime":[5,7]}}"#,
        )
        .expect("json");
        assert_eq!(f.blocktime_ms, Some(12.0));
        assert_eq!(f.vcpu_blocktime_ms, Some(vec![5.0, 7.0]));
        assert_eq!(f.status, None);
    }

    /// A 10.1 reply written from the QAPI schema (no 10.1 binary here).
    #[test]
    fn qemu_10_1_latency_figures() {
        let mut dist = vec![0u64; 24];
        dist[8] = 3;
        let reply = serde_json::json!({"return": {
            "status": "postcopy-active",
            "postcopy-blocktime": 40,
            "postcopy-vcpu-blocktime": [20, 20],
            "postcopy-latency": 300_000,
            "postcopy-vcpu-latency": [280_000, 320_000],
            "postcopy-non-vcpu-latency": 0,
            "postcopy-latency-dist": dist,
        }});
        let f = parse("query-migrate", &reply.to_string()).expect("json");
        let l = f.latency.expect("10.1 figures");
        assert_eq!(l.latency_ns, Some(300_000));
        assert_eq!(l.vcpu_latency_ns, Some(vec![280_000, 320_000]));
        assert_eq!(l.non_vcpu_latency_ns, Some(0));
        assert_eq!(l.dist.as_ref().map(|d| d[8]), Some(3));
        // A 7.2 reply has none of them.
        let old = parse("query-migrate", r#"{"return":{"postcopy-blocktime":1}}"#).expect("json");
        assert_eq!(old.latency, None);
    }

    #[test]
    fn capabilities_and_parameters() {
        let caps = r#"{"return":[{"capability":"postcopy-ram","state":true},{"capability":"postcopy-preempt","state":false}]}"#;
        let f = parse("query-migrate-capabilities", caps).expect("json");
        let c = f.capabilities.expect("capabilities");
        assert_eq!(c.get("postcopy-ram"), Some(&true));
        assert_eq!(c.get("postcopy-preempt"), Some(&false));
        let params = r#"{"return":{"max-postcopy-bandwidth":67108864,"multifd-channels":2}}"#;
        let f = parse(Qmp::PARAMETERS, params).expect("json");
        assert_eq!(
            f.parameters
                .and_then(|p| p.get("multifd-channels").cloned()),
            Some(serde_json::json!(2))
        );
    }
}
