//! The parts of Accolade that the fuzz targets feed, compiled from the server's own source
//! files: the rule core, the wire protocol, token verification and the ranking the protocol
//! names. They are pure (no IO, no runtime), so building them alone skips the server's IO
//! dependencies (tokio, axum, sled, async-nats, reqwest, rustls), which `cargo fuzz` would
//! otherwise compile optimised and instrumented on every clean CI run: about nine minutes of
//! the suite on this machine, for code no target reaches (bench/README.md, "The test suite's
//! own time"). The library is named `accolade`, so a target reads as it would against the
//! server's crate, and a module that starts to need the shell fails to build here.

#[path = "../../src/auth.rs"]
pub mod auth;
#[path = "../../src/core/mod.rs"]
pub mod core;
#[path = "../../src/protocol.rs"]
pub mod protocol;
#[path = "../../src/ranking.rs"]
pub mod ranking;
