//! The wall clock, read in one place: the shell reads it once per message and passes the time
//! down (the rule core and the plan never read it).

use crate::core::Millis;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}
