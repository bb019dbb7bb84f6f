//! See `src/ws_frames.rs` for what it feeds and checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| balancer_fuzz::ws_frames::check(data));
