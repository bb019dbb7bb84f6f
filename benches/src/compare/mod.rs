//! The side-by-side harness behind the `compare` binary
//! (`benches/src/bin/compare.rs`, which documents the method): the balancer,
//! nginx and HAProxy in front of the same two `backend` processes, measured
//! one after the other under the same load.
//!
//! One job per file:
//!
//! * [`child`]: starting a child process and stopping exactly it (and the
//!   processes it forked, through its process group), also from `Drop`.
//! * [`procfs`]: CPU time, RSS and size of a process tree, from `/proc`.
//! * [`targets`]: the two upstream backends, and each proxy's start-up
//!   (free port, readiness) and config reload; [`configs`] their config
//!   files.
//! * [`tls`]: the certificate every proxy serves on its TLS port
//!   (generated at start) and the client config that trusts it;
//!   [`endpoint`] a port to connect to, plaintext or TLS, and the socket
//!   type of both.
//! * [`http`]: wrk (run and parse) and a small keep-alive HTTP/1.1 client.
//! * [`handshakes`]: new TLS connections in a closed loop, each a full
//!   handshake and one request.
//! * [`ws`]: the WebSocket clients (closed-loop echo, idle tunnels, paced
//!   sessions), over `ws://` or `wss://`.
//! * [`load`]: one timed load run against one target with its CPU cost.
//! * [`memory`]: RSS per idle keep-alive connection and per idle tunnel
//!   (`ws://` and `wss://`).
//! * [`reload`]: config changes under load.
//! * [`plan`]: the order of it all: phases, rounds, interleaving.
//! * [`report`]: medians, the Markdown tables and the machine description;
//!   [`svg`] the bar chart; [`docs`] the generated part of
//!   `docs/benchmarks.md`.

pub mod child;
pub mod configs;
pub mod docs;
pub mod endpoint;
pub mod handshakes;
pub mod http;
pub mod load;
pub mod memory;
pub mod plan;
pub mod procfs;
pub mod reload;
pub mod report;
pub mod svg;
pub mod targets;
pub mod tls;
pub mod ws;

use std::time::Duration;

/// How much to measure: `--smoke`, `--quick` or the full run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A few seconds against the balancer alone, with the Rust clients only.
    Smoke,
    /// 3 rounds of 3 s per run, a 10 s reload test with 5 changes.
    Quick,
    /// 5 rounds of 10 s per run, a 20 s reload test with 10 changes.
    Full,
}

/// The numbers a mode stands for; the command line may override some.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    /// Interleaved rounds of every load run.
    pub rounds: usize,
    /// Length of one load run.
    pub run: Duration,
    /// Length of the reload test.
    pub reload_for: Duration,
    /// Config changes during the reload test, 1.5 s apart.
    pub reload_changes: usize,
    /// Idle connections (and tunnels) opened by the memory tests.
    pub idle: usize,
}

impl Settings {
    pub fn for_mode(mode: Mode) -> Settings {
        let secs = Duration::from_secs;
        match mode {
            Mode::Smoke => Settings {
                mode,
                rounds: 1,
                run: secs(2),
                reload_for: secs(6),
                reload_changes: 2,
                idle: 0,
            },
            Mode::Quick => Settings {
                mode,
                rounds: 3,
                run: secs(3),
                reload_for: secs(10),
                reload_changes: 5,
                idle: 5000,
            },
            Mode::Full => Settings {
                mode,
                rounds: 5,
                run: secs(10),
                reload_for: secs(20),
                reload_changes: 10,
                idle: 5000,
            },
        }
    }
}

/// The median of some numbers (the mean of the middle two for an even
/// count); `None` for none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// The `q` quantile of sorted samples (nearest rank); NaN for none.
pub fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::{median, percentile};

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7], 0.99), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }
}
