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
//! * [`slow_clients`]: normal clients' latency beside many slow clients, and
//!   the balancer's connections to its backends against their cap (the
//!   `slow_clients` binary, see `src/bin/slow_clients.rs`).

pub mod compare;
pub mod slow_clients;

/// Raises this process's open-files limit to at least `need`, within the
/// hard limit; fails naming `what` needs them when the hard limit is lower.
pub fn raise_fd_limit(need: u64, what: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    use rustix::process::{getrlimit, setrlimit, Resource};
    let lim = getrlimit(Resource::Nofile);
    let current = lim.current.unwrap_or(u64::MAX);
    if current >= need {
        return Ok(());
    }
    let max = lim.maximum.unwrap_or(u64::MAX);
    if max < need {
        anyhow::bail!(
            "{what} needs about {need} open files, but `ulimit -n` is {current} (hard limit \
             {max}); raise it"
        );
    }
    let mut new = lim;
    new.current = Some(need);
    setrlimit(Resource::Nofile, new)
        .with_context(|| format!("{what} needs about {need} open files; `ulimit -n` is {current}"))
}
