//! Fuzzes the catalogue loader (TOML and JSON): any document compiles or is refused with an
//! error naming a field, never panics.
#![no_main]
use accolade::core::{Catalogue, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        for format in [Format::Toml, Format::Json] {
            if let Err(e) = Catalogue::parse(text, format) {
                assert!(!e.field.is_empty(), "an error names the field");
            }
        }
    }
});
