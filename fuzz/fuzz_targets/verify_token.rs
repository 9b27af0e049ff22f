//! Fuzzes token verification: any string is a principal only if it is a valid HS256 token of
//! a known tenant; everything else is refused, never a panic.
#![no_main]
use accolade::auth::Keys;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static KEYS: OnceLock<Keys> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let keys = KEYS.get_or_init(|| Keys::new(&[("demo".into(), "accolade-demo-secret".into())]));
    if let Ok(token) = std::str::from_utf8(data) {
        if let Ok(p) = keys.verify(token) {
            assert_eq!(p.tenant, "demo");
            assert!(!p.user.is_empty() && p.user.len() <= 128);
        }
    }
});
