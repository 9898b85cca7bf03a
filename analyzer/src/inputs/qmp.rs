//! QMP replies and events as the recorder kept them (JSON text): the
//! migration status and QEMU's own blocktime figures. Parsed once per record.

/// What one QMP reply or event says, as far as uffdscope reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QmpFacts {
    /// The migration status (`query-migrate` replies, `MIGRATION` events).
    pub status: Option<String>,
    /// `postcopy-blocktime`, ms.
    pub blocktime_ms: Option<f64>,
    /// `postcopy-vcpu-blocktime`, ms per vCPU.
    pub vcpu_blocktime_ms: Option<Vec<f64>>,
}

/// Parses a reply (`{"return": {...}}`) or an event (`{"data": {...}}`);
/// `None` when the text is not JSON.
pub fn parse(json: &str) -> Option<QmpFacts> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let v = v.get("return").unwrap_or(&v);
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_from_replies_and_events() {
        let status = |j: &str| parse(j).and_then(|f| f.status);
        assert_eq!(
            status(r#"{"return":{"status":"postcopy-active"}}"#).as_deref(),
            Some("postcopy-active")
        );
        assert_eq!(
            status(r#"{"event":"MIGRATION","data":{"status":"completed"}}"#).as_deref(),
            Some("completed")
        );
        assert_eq!(parse("not json"), None);
    }

    #[test]
    fn blocktime_figures() {
        let f = parse(r#"{"return":{"postcopy-blocktime":12,"postcopy-vcpu-blocktime":[5,7]}}"#)
            .expect("json");
        assert_eq!(f.blocktime_ms, Some(12.0));
        assert_eq!(f.vcpu_blocktime_ms, Some(vec![5.0, 7.0]));
        assert_eq!(f.status, None);
    }
}
