//! Fuzzes the WebSocket message decoder: any text a client sends must decode or be refused
//! with an error, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match accolade::protocol::decode(text) {
            Ok(_) => {}
            Err(e) => assert!(!e.to_string().is_empty(), "an error always says why"),
        }
    }
});
