//! Fuzzes event validation end to end: any JSON object, decoded as an event and applied to a
//! user under the demo catalogue, is accepted or refused with a reason, never panics; and the
//! same event applied again changes nothing.
#![no_main]
use accolade::core::{apply, Catalogue, Effect, Event, UserState};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static CAT: OnceLock<Catalogue> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let cat = CAT.get_or_init(Catalogue::demo);
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(ev) = accolade::protocol::decode_event(&obj) else { return };
    let event = Event { event_id: ev.event_id, event_type: ev.event_type, user_id: "u".into(), tenant_id: "t".into(), occurred_at: ev.occurred_at, source: "fuzz".into(), payload: ev.payload };
    let mut st = UserState::new("t", "u");
    let now = event.occurred_at;
    let first = apply(&mut st, &event, now, cat);
    let after_first = st.clone();
    let again = apply(&mut st, &event, now, cat);
    if matches!(first.first(), Some(Effect::Accepted { .. })) {
        assert!(matches!(again.first(), Some(Effect::Duplicate { .. })), "a repeated id is a duplicate");
    }
    assert_eq!(st, after_first, "applying an event twice changes nothing the second time");
});
