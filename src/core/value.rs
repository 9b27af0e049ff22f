//! Scalar payload values, the event contract as the core sees it, and small parsing helpers
//! (durations, stable hashes) shared by the catalogue compiler and the engine.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Milliseconds since the Unix epoch, UTC. The core never reads a clock: every instant it sees
/// arrives as one of these.
pub type Millis = i64;

pub const SECOND: Millis = 1_000;
pub const MINUTE: Millis = 60 * SECOND;
pub const HOUR: Millis = 60 * MINUTE;
pub const DAY: Millis = 24 * HOUR;

/// Whether two strings are equal, without calling `memcmp` for short ones. Rule evaluation
/// compares short keys ("exercise-3") all the time, and for those a library call costs more
/// than the comparison.
#[inline]
pub fn same_str(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    // Two overlapping loads cover 4 to 16 bytes; shorter strings compare bytewise.
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"));
    let half = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4 bytes"));
    match n {
        0..4 => a.iter().zip(b).all(|(x, y)| x == y),
        4..8 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        _ => a == b,
    }
}

/// One payload value. Payloads are flat: rules can only look at scalars, so nested JSON is kept
/// as `Other`, which is accepted but matches no predicate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    Num(f64),
    /// Shared, so copying a value into the cache or an effect never allocates.
    Str(Arc<str>),
    Other,
}

impl Value {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Num(n) => Some(*n),
            _ => None,
        }
    }

    /// The text used when this value keys a per-key stat ("per exercise"). Strings key as
    /// themselves; numbers and booleans by their canonical text so `3` and `3.0` share a key.
    pub fn key(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            Value::Str(s) => Some(std::borrow::Cow::Borrowed(s)),
            Value::Num(n) => Some(std::borrow::Cow::Owned(fmt_num(*n))),
            Value::Bool(b) => Some(std::borrow::Cow::Borrowed(if *b { "true" } else { "false" })),
            Value::Null | Value::Other => None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Num(_) => "number",
            Value::Str(_) => "string",
            Value::Other => "object or array",
        }
    }

    /// Converts a JSON value; used by the catalogue compiler and by the shell's decoder.
    pub fn from_json(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => n.as_f64().map(Value::Num).unwrap_or(Value::Other),
            serde_json::Value::String(s) => Value::Str(s.as_str().into()),
            _ => Value::Other,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null | Value::Other => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Num(n) => serde_json::Number::from_f64(*n)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Str(s) => serde_json::Value::String(s.to_string()),
        }
    }
}

impl PartialEq for Value {
    #[inline]
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Str(a), Value::Str(b)) => Arc::ptr_eq(a, b) || same_str(a, b),
            (Value::Num(a), Value::Num(b)) => a == b,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Null, Value::Null) | (Value::Other, Value::Other) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Num(n) => f.write_str(&fmt_num(*n)),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Other => f.write_str("<object>"),
        }
    }
}

fn fmt_num(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 { format!("{}", n as i64) } else { format!("{n}") }
}

/// An event as the rule core receives it: already authenticated and decoded by the shell, with
/// `occurred_at` parsed from RFC 3339. The payload is a flat list of named values; the core
/// checks it against the catalogue's declaration of the event type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: String,
    pub event_type: String,
    pub user_id: String,
    pub tenant_id: String,
    pub occurred_at: Millis,
    pub source: String,
    pub payload: Vec<(String, Value)>,
}

impl Event {
    /// A convenience constructor for tests and tools.
    pub fn new(id: &str, ty: &str, at: Millis, payload: &[(&str, Value)]) -> Event {
        Event {
            event_id: id.to_string(),
            event_type: ty.to_string(),
            user_id: "u".into(),
            tenant_id: "t".into(),
            occurred_at: at,
            source: "test".into(),
            payload: payload.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        }
    }
}

/// Shorthands that keep rule tables readable.
pub fn s(v: &str) -> Value {
    Value::Str(v.into())
}
pub fn n(v: f64) -> Value {
    Value::Num(v)
}
pub fn b(v: bool) -> Value {
    Value::Bool(v)
}

/// Parses "90s", "15m", "36h", "7d", "250ms" (or a bare number of seconds) into milliseconds.
pub fn parse_duration(text: &str) -> Result<Millis, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("`{text}` is not a duration like 90s, 15m, 36h or 7d"))?;
    let scale = match unit.trim() {
        "ms" => 1.0,
        "" | "s" => SECOND as f64,
        "m" | "min" => MINUTE as f64,
        "h" => HOUR as f64,
        "d" => DAY as f64,
        "w" => 7.0 * DAY as f64,
        other => return Err(format!("`{text}`: unknown unit `{other}` (use ms, s, m, h, d or w)")),
    };
    if value < 0.0 || !value.is_finite() {
        return Err(format!("`{text}` must be a positive duration"));
    }
    Ok((value * scale).round() as Millis)
}

/// A duration as a sentence shows it: `7 days`, `1 hour`, `90 seconds`.
pub fn human_duration(ms: Millis) -> String {
    let (n, unit) = match ms {
        m if m != 0 && m % DAY == 0 => (m / DAY, "day"),
        m if m != 0 && m % HOUR == 0 => (m / HOUR, "hour"),
        m if m != 0 && m % MINUTE == 0 => (m / MINUTE, "minute"),
        m => (m / SECOND, "second"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// FNV-1a, 64 bit: a hash that is the same in every process and on every machine, used for
/// stat identities and the dedup ring so that persisted state never depends on a random seed.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &x in bytes {
        h ^= x as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_str_agrees_with_equality_at_every_length() {
        // Lengths around the word boundaries (7, 8, 9, 15, 16, 17), differing in every position.
        for n in 0..40 {
            let a: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            assert!(same_str(&a, &a.clone()), "length {n}");
            for i in 0..n {
                let mut b = a.clone().into_bytes();
                b[i] = b'Z';
                let b = String::from_utf8(b).unwrap();
                assert!(!same_str(&a, &b), "length {n}, differing at {i}");
            }
            assert!(!same_str(&a, &format!("{a}x")));
        }
        assert_eq!(Value::Str("exercise-3".into()), Value::Str("exercise-3".into()));
        assert_ne!(Value::Str("exercise-3".into()), Value::Str("exercise-4".into()));
        assert_ne!(Value::Num(1.0), Value::Bool(true));
    }

    #[test]
    fn durations_parse_with_units() {
        for (text, ms) in [("90s", 90_000), ("15m", 900_000), ("36h", 129_600_000), ("7d", 604_800_000), ("250ms", 250), ("2", 2000), ("1.5h", 5_400_000)] {
            assert_eq!(parse_duration(text), Ok(ms), "{text}");
        }
        assert!(parse_duration("ten minutes").is_err());
        assert!(parse_duration("5y").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn numbers_key_canonically() {
        assert_eq!(n(3.0).key().unwrap(), "3");
        assert_eq!(n(2.5).key().unwrap(), "2.5");
        assert_eq!(Value::Null.key(), None);
    }
}
