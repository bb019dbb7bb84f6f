//! Benchmarks of the balancer, kept out of the crates they measure.
//!
//! For now this crate holds only criterion micro benchmarks of the hot pure
//! functions on the request path (`benches/hot_path.rs`: backend selection,
//! route lookup, header rewriting) and of config parsing. A side-by-side load
//! harness that runs the balancer, nginx and HAProxy in front of the same
//! backends comes later and will live here too.
//!
//! Run with `cargo bench -p benches`.
