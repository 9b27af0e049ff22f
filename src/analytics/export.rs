//! The export's rows, pure: the three layers a warehouse wants (the events as received, each
//! record's evaluation outcome, one row per unlock) from stored log records, as NDJSON or CSV
//! lines, each with the opaque cursor that resumes after it. Reading pages from the store and
//! streaming them is the route's (`api/analytics.rs`).

use crate::core::Millis;
use crate::store::StoredEvent;
use serde_json::{json, Value};

/// Which layer an export reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Events,
    Outcomes,
    Unlocks,
}

impl Layer {
    pub fn parse(s: &str) -> Option<Layer> {
        match s {
            "events" => Some(Layer::Events),
            "outcomes" => Some(Layer::Outcomes),
            "unlocks" => Some(Layer::Unlocks),
            _ => None,
        }
    }

    /// The CSV columns, in order; NDJSON objects carry the same fields.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Layer::Events => &["cursor", "user_id", "seq", "event_id", "event_type", "occurred_at", "received_at", "source", "payload"],
            Layer::Outcomes => &["cursor", "user_id", "seq", "event_id", "event_type", "status", "catalogue_version", "pushes", "unlocks"],
            Layer::Unlocks => &["cursor", "user_id", "seq", "event_id", "badge", "at", "backfilled"],
        }
    }
}

/// The cursor of the `row`th row of the log record keyed `key`: opaque to clients (the key in
/// hex, a dot, the row). A record may give several rows (its unlocks), so a cut export resumes
/// inside a record as well as after it.
pub fn cursor_of(key: &[u8], row: usize) -> String {
    let mut s: String = key.iter().map(|b| format!("{b:02x}")).collect();
    s.push('.');
    s.push_str(&row.to_string());
    s
}

/// The record key and row a cursor names, or `None` when it is not one of ours.
pub fn key_of(cursor: &str) -> Option<(Vec<u8>, usize)> {
    let (hex, row) = cursor.split_once('.')?;
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return None;
    }
    let key = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect::<Option<Vec<u8>>>()?;
    Some((key, row.parse().ok()?))
}

/// The rows one log record gives in `layer`, as JSON objects with the layer's columns.
pub fn rows(layer: Layer, key: &[u8], user: &str, seq: u64, e: &StoredEvent) -> Vec<Value> {
    let cursor = cursor_of(key, 0);
    let time = crate::protocol::rfc3339;
    match layer {
        Layer::Events => {
            let payload: serde_json::Map<String, Value> = e.event.payload.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
            vec![json!({
                "cursor": cursor, "user_id": user, "seq": seq, "event_id": e.event.event_id, "event_type": e.event.event_type,
                "occurred_at": time(e.event.occurred_at), "received_at": time(e.received_at), "source": e.event.source, "payload": payload,
            })]
        }
        Layer::Outcomes => {
            let t = e.event.event_type.as_str();
            let status = if t == crate::records::DUPLICATE_EVENT {
                "duplicate"
            } else if t.starts_with("accolade.") {
                "system"
            } else {
                "accepted"
            };
            let unlocks = e.pushes.iter().filter(|(_, f)| crate::protocol::unlock_seen(f).is_some()).count();
            vec![json!({
                "cursor": cursor, "user_id": user, "seq": seq, "event_id": e.event.event_id, "event_type": t, "status": status,
                "catalogue_version": e.catalogue_version, "pushes": e.pushes.len(), "unlocks": unlocks,
            })]
        }
        Layer::Unlocks => e
            .pushes
            .iter()
            .filter_map(|(_, f)| crate::protocol::unlock_seen(f))
            .enumerate()
            .map(|(i, (badge, at, event_id))| {
                json!({ "cursor": cursor_of(key, i), "user_id": user, "seq": seq, "event_id": event_id, "badge": badge, "at": time(at), "backfilled": event_id.starts_with("backfill:") })
            })
            .collect(),
    }
}

/// Whether a record received at `at` is in the range `from..to` (either end open when absent).
pub fn in_range(at: Millis, from: Option<Millis>, to: Option<Millis>) -> bool {
    from.is_none_or(|f| at >= f) && to.is_none_or(|t| at < t)
}

/// One row as a line of NDJSON.
pub fn ndjson(row: &Value) -> String {
    let mut s = row.to_string();
    s.push('\n');
    s
}

/// The CSV header line of `layer`.
pub fn csv_header(layer: Layer) -> String {
    let mut s = layer.columns().join(",");
    s.push_str("\r\n");
    s
}

/// One row as a CSV line (RFC 4180: a field with a comma, quote or line break is quoted, its
/// quotes doubled; objects are written as their JSON).
pub fn csv(layer: Layer, row: &Value) -> String {
    let fields: Vec<String> = layer
        .columns()
        .iter()
        .map(|c| {
            let text = match &row[*c] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text }
        })
        .collect();
    let mut s = fields.join(",");
    s.push_str("\r\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_names_its_key_and_nothing_else_is_one() {
        let key = b"t\0ada\0\0\0\0\0\0\0\0\x07".to_vec();
        assert_eq!(key_of(&cursor_of(&key, 2)), Some((key, 2)));
        assert_eq!(key_of("zz.1"), None);
        assert_eq!(key_of("abc.1"), None);
        assert_eq!(key_of("ab"), None);
        assert_eq!(key_of(""), None);
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let row = json!({"cursor": "00", "user_id": "a,b", "seq": 3, "event_id": "say \"hi\"", "badge": "x", "at": "2026", "backfilled": false});
        assert_eq!(csv(Layer::Unlocks, &row), "00,\"a,b\",3,\"say \"\"hi\"\"\",x,2026,false\r\n");
        assert_eq!(csv_header(Layer::Unlocks), "cursor,user_id,seq,event_id,badge,at,backfilled\r\n");
    }
}
