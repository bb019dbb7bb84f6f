//! What each fuzz target feeds and checks, one module per target (named as
//! the target is). The targets in `fuzz_targets/` hand libFuzzer's input to
//! `<module>::check`; `tests/corpus.rs` hands it every file of the committed
//! corpus, so `cargo test` replays the corpus on stable without cargo-fuzz.
//!
//! `check` panics when an invariant does not hold, and returns on input
//! the parser rightly refuses.

pub mod chunked;
pub mod client_ip;
pub mod config;
pub mod h2_frames;
pub mod hash_key;
pub mod https_redirect;
pub mod proxy_protocol;
pub mod response_head;
pub mod sticky_cookie;
pub mod tls_tickets;
pub mod ws_frames;
