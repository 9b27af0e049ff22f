//! The WebSocket wire protocol (JSON text frames, documented in `docs/protocol.md`): decoding
//! client messages into core events, and encoding every server message. Only this module knows
//! the wire's JSON shapes.

use crate::core::catalogue::{BadgeDef, Catalogue};
use crate::core::{Millis, UserState, Value};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;

/// Close codes. Each says whether the client should reconnect (see docs/protocol.md).
pub mod close {
    /// The server is shutting down or restarting: reconnect with backoff.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame over the hard size limit: fix the client; do not resend that message.
    pub const TOO_BIG: u16 = 1009;
    /// The client broke the WebSocket protocol.
    pub const PROTOCOL: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub const BAD_DATA: u16 = 1007;
    /// An internal error (the user's actor restarted): reconnect and resume.
    pub const INTERNAL: u16 = 1011;
    /// The client did not read its pushes fast enough: reconnect and resume.
    pub const SLOW: u16 = 4000;
    /// Bad or missing credentials: get a new token before reconnecting.
    pub const UNAUTHORIZED: u16 = 4001;
    /// No `hello` in time: reconnect.
    pub const AUTH_TIMEOUT: u16 = 4002;
    /// No frame from the client for too long: reconnect.
    pub const IDLE: u16 = 4003;
    /// The user already holds `--connections-per-user` sockets.
    pub const TOO_MANY: u16 = 4004;

    /// The reasons the server closes with. A socket a node holds for a user another node
    /// serves closes with the reason that node gave, which travels as text: it is one of these,
    /// or the last one.
    pub const REASONS: [&str; 9] = [
        "user restarted; reconnect",
        "user unavailable; reconnect",
        "storage failed; reconnect later",
        "too slow reading pushes",
        "too many connections for this user",
        "the user's node is gone; reconnect",
        "the user's node did not answer; reconnect",
        "the user moved to another node; reconnect",
        "the user's node closed the socket; reconnect",
    ];

    /// One of `REASONS`, by its text; the last for any other.
    pub fn reason(text: &str) -> &'static str {
        REASONS.iter().find(|r| **r == text).copied().unwrap_or(REASONS[REASONS.len() - 1])
    }
}

/// Why a client message could not be used. Each maps to a wire error `code`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    InvalidMessage(String),
    #[error("{0}")]
    InvalidEvent(String),
    #[error("message is {0} bytes; the limit is {1}")]
    TooLarge(usize, usize),
}

impl WireError {
    pub fn code(&self) -> &'static str {
        match self {
            WireError::InvalidMessage(_) => "invalid_message",
            WireError::InvalidEvent(_) => "invalid_event",
            WireError::TooLarge(..) => "too_large",
        }
    }
}

/// Where the client is in the user's push stream when it reconnects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Since {
    pub epoch: String,
    pub offset: u64,
}

/// An event as a client sends it: user and tenant come from the token, not from here.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientEvent {
    pub event_id: String,
    pub event_type: String,
    pub occurred_at: Millis,
    pub payload: Vec<(String, Value)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClientMsg {
    Hello { token: String, since: Option<Since> },
    Event(ClientEvent),
    /// Push my `rank` on this board when it changes, and the board's `top` N if asked.
    Watch { board: String, top: Option<usize> },
    Unwatch { board: String },
}


pub const MAX_EVENT_ID: usize = 128;
pub const MAX_FIELDS: usize = 64;
pub const RESERVED_ID_PREFIX: &str = "accolade.";

/// Decodes one text frame. Errors say what is wrong in a sentence the client can show.
pub fn decode(text: &str) -> Result<ClientMsg, WireError> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| WireError::InvalidMessage(format!("not valid JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| WireError::InvalidMessage("a message must be a JSON object".into()))?;
    let ty = obj.get("type").and_then(|t| t.as_str()).ok_or_else(|| WireError::InvalidMessage("missing string field `type`".into()))?;
    match ty {
        "hello" => {
            let token = obj.get("token").and_then(|t| t.as_str()).ok_or_else(|| WireError::InvalidMessage("hello needs a string `token`".into()))?;
            let since = match obj.get("since") {
                None | Some(serde_json::Value::Null) => None,
                Some(s) => Some(serde_json::from_value::<Since>(s.clone()).map_err(|e| WireError::InvalidMessage(format!("since: {e}")))?),
            };
            Ok(ClientMsg::Hello { token: token.to_string(), since })
        }
        "event" => {
            // Over the socket the user and tenant are the token's; an event naming any is
            // refused rather than silently re-addressed.
            if let Some(k) = ["user_id", "tenant_id"].into_iter().find(|k| obj.contains_key(*k)) {
                return Err(WireError::InvalidEvent(format!("`{k}` comes from the token; leave it out of socket events")));
            }
            decode_event(obj).map(ClientMsg::Event)
        }
        "watch" | "unwatch" => {
            let board = obj.get("board").and_then(|t| t.as_str()).ok_or_else(|| WireError::InvalidMessage(format!("{ty} needs a string `board`")))?;
            if ty == "unwatch" {
                return Ok(ClientMsg::Unwatch { board: board.to_string() });
            }
            let top = match obj.get("top") {
                None | Some(serde_json::Value::Null) => None,
                Some(v) => match v.as_u64() {
                    Some(n) if n >= 1 && n <= crate::ranking::MAX_TOP as u64 => Some(n as usize),
                    _ => return Err(WireError::InvalidMessage(format!("top must be a whole number from 1 to {}", crate::ranking::MAX_TOP))),
                },
            };
            Ok(ClientMsg::Watch { board: board.to_string(), top })
        }
        other => Err(WireError::InvalidMessage(format!("unknown message type `{other}` (expected hello, event, watch or unwatch)"))),
    }
}

/// Decodes the event fields shared by the socket and the HTTP API.
pub fn decode_event(obj: &serde_json::Map<String, serde_json::Value>) -> Result<ClientEvent, WireError> {
    let bad = |m: String| WireError::InvalidEvent(m);
    let event_id = obj.get("event_id").and_then(|x| x.as_str()).ok_or_else(|| bad("missing string field `event_id`".into()))?;
    if event_id.is_empty() || event_id.len() > MAX_EVENT_ID || event_id.contains('\0') {
        return Err(bad(format!("event_id must be 1 to {MAX_EVENT_ID} bytes with no NUL")));
    }
    // The server's own log records (notices) use this prefix, so no client id can collide.
    if event_id.starts_with(RESERVED_ID_PREFIX) {
        return Err(bad(format!("event ids starting with `{RESERVED_ID_PREFIX}` are reserved")));
    }
    let event_type = obj.get("event_type").and_then(|x| x.as_str()).ok_or_else(|| bad("missing string field `event_type`".into()))?;
    if event_type.is_empty() || event_type.len() > 64 {
        return Err(bad("event_type must be 1 to 64 bytes".into()));
    }
    let occurred = obj.get("occurred_at").and_then(|x| x.as_str()).ok_or_else(|| bad("missing string field `occurred_at` (RFC 3339)".into()))?;
    let occurred_at = chrono::DateTime::parse_from_rfc3339(occurred)
        .map_err(|_| bad(format!("occurred_at `{occurred}` is not an RFC 3339 time such as 2026-11-22T10:00:00Z")))?
        .timestamp_millis();
    let payload = match obj.get("payload") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Object(m)) => {
            if m.len() > MAX_FIELDS {
                return Err(bad(format!("payload has {} fields; the limit is {MAX_FIELDS}", m.len())));
            }
            m.iter().map(|(k, v)| (k.clone(), Value::from_json(v))).collect()
        }
        Some(_) => return Err(bad("payload must be a JSON object".into())),
    };
    Ok(ClientEvent { event_id: event_id.to_string(), event_type: event_type.to_string(), occurred_at, payload })
}

pub fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A server message ready to write: encoded once, shared by every connection it goes to.
pub type Frame = Arc<str>;

fn frame(v: serde_json::Value) -> Frame {
    v.to_string().into()
}

/// Encodes a frame straight from a struct that borrows its fields. The frames every event
/// answers with (ack, xp, progress, unlock, level_up) are built this way: through a
/// `serde_json::Value` each key and value was first copied into a map, and building and
/// printing those maps was about 8% of the server's samples at saturation (perf; criterion's
/// `wire/encode-ack-and-xp` went from 1.30 to 0.28 µs; bench/README.md, fix 16). Their fields
/// are declared in alphabetical order, the order `json!` maps print in, so the bytes are the
/// same.
fn encode<T: Serialize>(v: &T) -> Frame {
    serde_json::to_string(v).expect("a frame of plain fields always encodes").into()
}

#[derive(Serialize)]
struct BadgeOut<'a> {
    description: &'a str,
    icon: &'a str,
    id: &'a str,
    name: &'a str,
    tier: &'static str,
}

impl<'a> From<&'a BadgeDef> for BadgeOut<'a> {
    fn from(b: &'a BadgeDef) -> Self {
        BadgeOut { description: &b.description, icon: &b.icon, id: &b.id, name: &b.name, tier: b.tier.as_str() }
    }
}

pub fn badge_json(b: &BadgeDef) -> serde_json::Value {
    serde_json::to_value(BadgeOut::from(b)).expect("a badge of plain fields always encodes")
}

/// The welcome: who, where in the push stream, and what the user holds at `now` (a badge
/// whose `valid_for` ran out is left out even before an event has seen it expire).
pub fn welcome(st: &UserState, cat: &Catalogue, epoch: &str, offset: u64, recovered: bool, now: Millis) -> Frame {
    let badges: Vec<serde_json::Value> = st
        .badges
        .iter()
        .filter(|(_, rec)| rec.expires_at.is_none_or(|at| at > now))
        .map(|(id, rec)| {
            let mut b = cat.badge(id).map(badge_json).unwrap_or_else(|| json!({ "id": id, "name": id, "tier": "bronze" }));
            b["count"] = json!(rec.count);
            b["at"] = json!(rfc3339(rec.awarded_at));
            if let Some(at) = rec.expires_at {
                b["expires_at"] = json!(rfc3339(at));
            }
            b
        })
        .collect();
    frame(json!({
        "type": "welcome", "user": st.user_id, "tenant": st.tenant_id, "epoch": epoch, "offset": offset,
        "xp": st.xp, "level": st.level.max(1), "badges": badges, "recovered": recovered,
        "catalogue_version": cat.version,
    }))
}

pub fn ack(event_id: &str, duplicate: bool) -> Frame {
    #[derive(Serialize)]
    struct Ack<'a> {
        duplicate: bool,
        event_id: &'a str,
        r#type: &'static str,
    }
    encode(&Ack { duplicate, event_id, r#type: "ack" })
}

/// An event refused by the connection's rate limit, with the time until the bucket holds a
/// token again: the client resends it then, on the same socket.
pub fn rate_limited(event_id: &str, retry_after_ms: u64) -> Frame {
    frame(json!({ "type": "error", "code": "rate_limited", "message": "too many events; slow down and resend", "event_id": event_id, "retry_after_ms": retry_after_ms }))
}

pub fn error(code: &str, message: &str, event_id: Option<&str>) -> Frame {
    match event_id {
        Some(id) => frame(json!({ "type": "error", "code": code, "message": message, "event_id": id })),
        None => frame(json!({ "type": "error", "code": code, "message": message })),
    }
}

pub fn xp(offset: u64, delta: u64, total: u64, level: u32, event_id: &str) -> Frame {
    #[derive(Serialize)]
    struct Xp<'a> {
        delta: u64,
        event_id: &'a str,
        level: u32,
        offset: u64,
        total: u64,
        r#type: &'static str,
    }
    encode(&Xp { delta, event_id, level, offset, total, r#type: "xp" })
}

pub fn level_up(offset: u64, level: u32, event_id: &str) -> Frame {
    #[derive(Serialize)]
    struct LevelUp<'a> {
        event_id: &'a str,
        level: u32,
        offset: u64,
        r#type: &'static str,
    }
    encode(&LevelUp { event_id, level, offset, r#type: "level_up" })
}

pub fn unlock(offset: u64, b: &BadgeDef, count: u32, key: Option<&str>, xp: u64, at: Millis, event_id: &str) -> Frame {
    #[derive(Serialize)]
    struct Unlock<'a> {
        at: String,
        badge: BadgeOut<'a>,
        count: u32,
        event_id: &'a str,
        key: Option<&'a str>,
        offset: u64,
        r#type: &'static str,
        xp: u64,
    }
    encode(&Unlock { at: rfc3339(at), badge: b.into(), count, event_id, key, offset, r#type: "unlock", xp })
}

/// A badge was taken away: through the API (`cause` = `api`), because its `valid_for` ran
/// out (`expired`) or because an event behind it was retracted (`retracted`). `xp` is what
/// was taken back with it, `total` and `level` the user's after that. `badge` is shown as the
/// catalogue has it (a badge no longer in the catalogue by its id alone).
#[allow(clippy::too_many_arguments)]
pub fn revoked(offset: u64, badge: &str, def: Option<&BadgeDef>, cause: &str, reason: &str, count: u32, xp: u64, total: u64, level: u32, at: Millis, event_id: &str) -> Frame {
    let b = def.map(badge_json).unwrap_or_else(|| json!({ "id": badge, "name": badge }));
    frame(json!({
        "type": "revoked", "offset": offset, "badge": b, "cause": cause, "reason": reason, "count": count,
        "xp": xp, "total": total, "level": level.max(1), "at": rfc3339(at), "event_id": event_id,
    }))
}

/// An unlock as a stored frame says it: the badge's id, when it was awarded and the event id
/// that awarded it; `None` for any other frame. Analytics reads stored log records with it, so
/// that only this module knows the frame's shape.
pub fn unlock_seen(frame: &str) -> Option<(String, Millis, String)> {
    #[derive(Deserialize)]
    struct Id {
        id: String,
    }
    #[derive(Deserialize)]
    struct Seen {
        r#type: String,
        at: String,
        badge: Id,
        event_id: String,
    }
    // Only unlock frames are parsed: a cheap look at the type first.
    if !frame.contains("\"type\":\"unlock\"") {
        return None;
    }
    let s: Seen = serde_json::from_str(frame).ok()?;
    let at = chrono::DateTime::parse_from_rfc3339(&s.at).ok()?.timestamp_millis();
    (s.r#type == "unlock").then_some((s.badge.id, at, s.event_id))
}

pub fn progress(offset: u64, badge: &str, current: f64, target: f64) -> Frame {
    #[derive(Serialize)]
    struct Progress<'a> {
        badge: &'a str,
        // As `json!` would: a number that is not finite is written as null.
        current: Option<f64>,
        offset: u64,
        target: Option<f64>,
        r#type: &'static str,
    }
    let finite = |x: f64| x.is_finite().then_some(x);
    encode(&Progress { badge, current: finite(current), offset, target: finite(target), r#type: "progress" })
}

pub fn goal_assigned(offset: u64, id: &str, title: &str, assigner: &str, due: Option<Millis>, event_id: &str) -> Frame {
    frame(json!({ "type": "goal_assigned", "offset": offset, "goal": { "id": id, "title": title, "assigner": assigner, "due": due.map(rfc3339) }, "event_id": event_id }))
}

/// The assignee met a goal: shown like an unlock.
pub fn goal_completed(offset: u64, id: &str, title: &str, assigner: &str, at: Millis, event_id: &str) -> Frame {
    frame(json!({ "type": "goal_completed", "offset": offset, "goal": { "id": id, "title": title, "assigner": assigner }, "at": rfc3339(at), "event_id": event_id }))
}

pub fn goal_missed(offset: u64, id: &str, title: &str, assigner: &str, at: Millis, event_id: &str) -> Frame {
    frame(json!({ "type": "goal_missed", "offset": offset, "goal": { "id": id, "title": title, "assigner": assigner }, "at": rfc3339(at), "event_id": event_id }))
}

/// A notice to a goal's assigner: how the goal they gave ended.
pub fn notice(offset: u64, kind: &str, id: &str, title: &str, assignee: &str, at: Millis) -> Frame {
    frame(json!({ "type": "notice", "offset": offset, "kind": kind, "goal": { "id": id, "title": title, "assignee": assignee }, "at": rfc3339(at) }))
}

/// A team the user belongs to earned a badge (docs/teams.md): the team, the badge as the
/// team catalogue defines it, how many times the team has it, and when it was earned.
pub fn team_unlock(offset: u64, team: &str, b: &BadgeDef, count: u32, at: Millis) -> Frame {
    #[derive(Serialize)]
    struct TeamUnlock<'a> {
        at: String,
        badge: BadgeOut<'a>,
        count: u32,
        offset: u64,
        team: &'a str,
        r#type: &'static str,
    }
    encode(&TeamUnlock { at: rfc3339(at), badge: b.into(), count, offset, team, r#type: "team_unlock" })
}

/// A team the user belongs to lost a badge (docs/teams.md: expired, or the facts behind it
/// retracted): `count` is the awards it held, as in `revoked`. Kept in her history.
pub fn team_revoked(offset: u64, team: &str, b: &BadgeDef, count: u32, cause: &str, at: Millis) -> Frame {
    frame(json!({ "type": "team_revoked", "offset": offset, "team": team, "badge": badge_json(b), "count": count, "cause": cause, "at": rfc3339(at) }))
}

/// A team of the user's moved toward one of its badges (docs/teams.md). Like `rank`, not part
/// of the recovery history and with no offset: a hint for a progress bar, sent to the member's
/// sockets open at the time; `GET /v1/teams/{id}` says where the team stands.
pub fn team_progress(team: &str, badge: &str, current: f64, target: f64) -> Frame {
    #[derive(Serialize)]
    struct TeamProgress<'a> {
        badge: &'a str,
        current: Option<f64>,
        target: Option<f64>,
        team: &'a str,
        r#type: &'static str,
    }
    let finite = |x: f64| x.is_finite().then_some(x);
    encode(&TeamProgress { badge, current: finite(current), target: finite(target), team, r#type: "team_progress" })
}

/// The user's rank on a board changed. Not part of the recovery history (a reconnecting
/// client that watches again gets its current rank at once).
/// Where a community goal stands (docs/teams.md): to every socket of the tenant while it is
/// open, throttled; like `rank`, no offset and in no history.
pub fn community_progress(goal: &crate::core::catalogue::CommunityGoalDef, current: f64, participants: u64) -> Frame {
    frame(json!({
        "type": "community_progress", "goal": &*goal.id, "name": goal.name, "current": current, "target": goal.target,
        "participants": participants, "ends": rfc3339(goal.ends),
    }))
}

/// How a community goal ended, told to each participant once (stored, with an offset, so one
/// who was offline gets it on reconnect).
/// `(reached, total, target, participants, ends)` are the goal's outcome; `share` the user's.
pub fn community_outcome(offset: u64, goal: &str, name: &str, (reached, total, target, participants, ends): (bool, f64, f64, u64, Millis), share: f64) -> Frame {
    frame(json!({
        "type": "community_outcome", "offset": offset, "goal": goal, "name": name, "reached": reached, "total": total,
        "target": target, "participants": participants, "share": share, "ends": rfc3339(ends),
    }))
}

pub fn rank(board: &str, period: &str, rank: usize, score: f64, of: usize, previous: Option<usize>) -> Frame {
    frame(json!({ "type": "rank", "board": board, "period": period, "rank": rank, "score": score, "of": of, "previous": previous }))
}

/// The board's top N changed (in the watcher's league).
pub fn top(board: &str, period: &str, segment: &str, rows: &[crate::ranking::Row]) -> Frame {
    let segment = if segment.is_empty() { serde_json::Value::Null } else { json!(segment) };
    frame(json!({ "type": "top", "board": board, "period": period, "segment": segment, "entries": rows }))
}

/// The offset a stored push carries, read back without a full decode.
pub fn offset_of(frame: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(frame).ok()?.get("offset")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames built from structs print exactly what the documented `json!` shapes print
    /// (serde_json's maps are ordered by key), so clients see the same bytes.
    #[test]
    fn hot_frames_match_their_json_shapes() {
        let cat = Catalogue::demo();
        let b = &cat.badges[0];
        let badge = json!({ "id": &*b.id, "name": b.name, "description": b.description, "tier": b.tier.as_str(), "icon": b.icon });
        let cases: Vec<(Frame, serde_json::Value)> = vec![
            (ack("e\"1", true), json!({ "type": "ack", "event_id": "e\"1", "duplicate": true })),
            (xp(7, 10, 120, 3, "e2"), json!({ "type": "xp", "offset": 7, "delta": 10, "total": 120, "level": 3, "event_id": "e2" })),
            (level_up(8, 4, "e3"), json!({ "type": "level_up", "offset": 8, "level": 4, "event_id": "e3" })),
            (progress(9, "b", 2.5, 10.0), json!({ "type": "progress", "offset": 9, "badge": "b", "current": 2.5, "target": 10.0 })),
            (progress(9, "b", f64::NAN, f64::INFINITY), json!({ "type": "progress", "offset": 9, "badge": "b", "current": f64::NAN, "target": f64::INFINITY })),
            (unlock(10, b, 2, Some("k"), 50, 1_795_341_600_000, "e4"), json!({ "type": "unlock", "offset": 10, "badge": badge, "count": 2, "key": "k", "xp": 50, "at": "2026-11-22T10:00:00.000Z", "event_id": "e4" })),
            (unlock(11, b, 1, None, 0, 0, "e5"), json!({ "type": "unlock", "offset": 11, "badge": badge, "count": 1, "key": null, "xp": 0, "at": "1970-01-01T00:00:00.000Z", "event_id": "e5" })),
        ];
        for (got, want) in cases {
            assert_eq!(&*got, want.to_string());
        }
        assert_eq!(badge_json(b), badge);
    }

    #[test]
    fn client_messages_decode_or_say_why_not() {
        let ok = decode(r#"{"type":"event","event_id":"e1","event_type":"login","occurred_at":"2026-11-22T10:00:00Z","payload":{"a":1}}"#).unwrap();
        assert!(matches!(ok, ClientMsg::Event(ClientEvent { ref event_id, occurred_at: 1_795_341_600_000, .. }) if event_id == "e1"), "{ok:?}");
        let hello = decode(r#"{"type":"hello","token":"t","since":{"epoch":"x","offset":41}}"#).unwrap();
        assert_eq!(hello, ClientMsg::Hello { token: "t".into(), since: Some(Since { epoch: "x".into(), offset: 41 }) });
        let table = [
            ("{", "invalid_message", "not valid JSON"),
            ("[1]", "invalid_message", "JSON object"),
            (r#"{"type":"bye"}"#, "invalid_message", "unknown message type `bye`"),
            (r#"{"type":"watch"}"#, "invalid_message", "watch needs a string `board`"),
            (r#"{"type":"watch","board":"b","top":0}"#, "invalid_message", "top must be a whole number from 1 to 100"),
            (r#"{"type":"watch","board":"b","top":101}"#, "invalid_message", "top must be"),
            (r#"{"type":"hello"}"#, "invalid_message", "token"),
            (r#"{"type":"event","event_type":"login","occurred_at":"2026-11-22T10:00:00Z"}"#, "invalid_event", "event_id"),
            (r#"{"type":"event","event_id":"e","event_type":"login","occurred_at":"yesterday"}"#, "invalid_event", "RFC 3339"),
            (r#"{"type":"event","event_id":"e","event_type":"login","occurred_at":"2026-11-22T10:00:00Z","payload":[1]}"#, "invalid_event", "payload must be a JSON object"),
            (&format!(r#"{{"type":"event","event_id":"{}","event_type":"login","occurred_at":"2026-11-22T10:00:00Z"}}"#, "x".repeat(129)), "invalid_event", "event_id must be"),
            (r#"{"type":"event","event_id":"accolade.notice:x","event_type":"login","occurred_at":"2026-11-22T10:00:00Z"}"#, "invalid_event", "are reserved"),
        ];
        for (text, code, detail) in table {
            let e = decode(text).unwrap_err();
            assert_eq!(e.code(), code, "{text}");
            assert!(e.to_string().contains(detail), "{text}: {e}");
        }
    }
}
