//! See `src/chunked.rs` for what it feeds and checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| balancer_fuzz::chunked::check(data));
