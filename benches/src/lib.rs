//! Benchmarks of the balancer, kept out of the crates they measure.
//!
//! * Criterion micro benchmarks of the hot pure functions on the request
//!   path (`benches/hot_path.rs`: backend selection, route lookup, header
//!   rewriting) and of config parsing. Run with `cargo bench -p benches`.
//! * [`compare`]: the side-by-side harness that runs the balancer, nginx and
//!   HAProxy in front of the same backends (the `compare` binary, see
//!   `src/bin/compare.rs`). Run with
//!   `cargo run -p benches --release --bin compare -- --quick`.
//! * The `loadgen` binary: the game under load through the balancer.

pub mod compare;
