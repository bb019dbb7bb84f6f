//! See `src/h2_frames.rs` for what it feeds and checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| balancer_fuzz::h2_frames::check(data));
