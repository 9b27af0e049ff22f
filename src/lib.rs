//! Accolade: a real-time achievement server. Events come in over WebSocket (or HTTP), each
//! user's actor applies them to its state with the pure rule core, and XP, level-ups and badge
//! unlocks are pushed back at once.
//!
//! - [`core`]: the pure rule engine (catalogue, state, `apply`, effects). No IO.

pub mod core;
