//! A stream of answers the crash tests send, resend after a failure and check the final state
//! of: what a client was acknowledged and shown, and what the rule core says the stream adds
//! up to.

use super::Client;
use accolade::core::value::{b, n, s};
use accolade::core::{apply, Catalogue, Event, UserState};
use futures_util::SinkExt;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use tokio_tungstenite::tungstenite::Message;

/// Answers over three exercises, mostly right, so streak badges (per exercise, counted) and XP
/// thresholds unlock along the way: (id, exercise, correct).
pub fn answers(prefix: &str, count: usize) -> Vec<(String, String, bool)> {
    (0..count).map(|i| (format!("{prefix}-{i}"), format!("ex-{}", (i / 25) % 3), i % 17 != 0)).collect()
}

/// One answer as the socket message, occurring at `at`.
pub fn answer_msg((id, ex, ok): &(String, String, bool), at: &str) -> String {
    json!({ "type": "event", "event_id": id, "event_type": "problem.answered", "occurred_at": at, "payload": { "exercise": ex, "correct": ok, "seconds": 3 } }).to_string()
}

/// What a client learnt: the ids acknowledged, and the awards announced.
#[derive(Default)]
pub struct Seen {
    pub acked: HashSet<String>,
    pub unlocks: Vec<(String, u64)>,
}

impl Seen {
    pub fn note(&mut self, m: &Value) {
        match m["type"].as_str() {
            Some("ack") => {
                self.acked.insert(m["event_id"].as_str().unwrap().to_string());
            }
            Some("unlock") => self.unlocks.push((m["badge"]["id"].as_str().unwrap().into(), m["count"].as_u64().unwrap())),
            _ => {}
        }
    }
}

/// Sends every answer on `c` without waiting.
pub async fn send_all(c: &mut Client, events: &[(String, String, bool)], at: &str) {
    for e in events {
        c.ws.feed(Message::text(answer_msg(e, at))).await.unwrap();
    }
    c.ws.flush().await.unwrap();
}

/// Resends the whole stream, in order, as accolade.js does after a reconnect, and reads every
/// reply: an event acknowledged before must come back a duplicate. Announced awards are added
/// to `seen`.
pub async fn resend_all(c: &mut Client, events: &[(String, String, bool)], at: &str, seen: &mut Seen) {
    send_all(c, events, at).await;
    let mut replies = 0;
    while replies < events.len() {
        let m = c.next().await;
        match m["type"].as_str() {
            Some("ack") => {
                replies += 1;
                let id = m["event_id"].as_str().unwrap();
                if seen.acked.contains(id) {
                    assert_eq!(m["duplicate"], true, "acked event {id} was counted again");
                }
            }
            Some("unlock") => seen.unlocks.push((m["badge"]["id"].as_str().unwrap().into(), m["count"].as_u64().unwrap())),
            Some("error") => panic!("unexpected error {m}"),
            _ => {}
        }
    }
}

/// Checks a welcome against the rule core's answer for the stream applied once, in order: the
/// same XP and badges, every announced award among them, and none announced twice.
pub fn assert_exact(welcome: &Value, user: &str, events: &[(String, String, bool)], at: &str, seen: &Seen) {
    let unique: HashSet<_> = seen.unlocks.iter().cloned().collect();
    assert_eq!(unique.len(), seen.unlocks.len(), "a badge award was announced twice: {:?}", seen.unlocks);
    let cat = Catalogue::demo();
    let mut reference = UserState::default();
    let when = chrono::DateTime::parse_from_rfc3339(at).unwrap().timestamp_millis();
    for (id, ex, ok) in events {
        let mut e = Event::new(id, "problem.answered", when, &[("exercise", s(ex)), ("correct", b(*ok)), ("seconds", n(3.0))]);
        e.user_id = user.into();
        e.tenant_id = "demo".into();
        apply(&mut reference, &e, when, &cat);
    }
    assert_eq!(welcome["xp"].as_u64(), Some(reference.xp));
    let got: BTreeMap<String, u64> = welcome["badges"].as_array().unwrap().iter().map(|b| (b["id"].as_str().unwrap().to_string(), b["count"].as_u64().unwrap())).collect();
    let want: BTreeMap<String, u64> = reference.badges.iter().map(|(k, r)| (k.clone(), r.count as u64)).collect();
    assert_eq!(got, want);
    for (badge, count) in &unique {
        assert!(got.get(badge).is_some_and(|c| c >= count), "shown {badge} x{count} but the state has {got:?}");
    }
}
