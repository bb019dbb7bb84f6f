//! Normal clients: keep-alive connections each sending `GET` in a closed
//! loop, every request timed from its first byte written to its response
//! read whole. Bounded by a deadline and by a count per connection.
//! Anything but a 200 (a connect error, a reset, an early close, another
//! status, a request over [`http::REQUEST_TIMEOUT`]) is a failed request.

use std::time::Duration;

use tokio::time::Instant;

use crate::compare::endpoint::Endpoint;
use crate::compare::http::{self, Conn, Counts};
use crate::compare::percentile;

/// Requests one connection sends at most in one run.
pub const MAX_PER_CONNECTION: u64 = 2_000_000;

/// What a run of normal clients measured.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    /// Every successful request's latency, microseconds, sorted.
    pub sorted_us: Vec<u32>,
    pub counts: Counts,
    pub secs: f64,
}

impl Latencies {
    pub fn p50_ms(&self) -> f64 {
        percentile(&self.sorted_us, 0.50) / 1e3
    }

    pub fn p99_ms(&self) -> f64 {
        percentile(&self.sorted_us, 0.99) / 1e3
    }

    pub fn max_ms(&self) -> f64 {
        self.sorted_us
            .last()
            .map_or(f64::NAN, |&u| f64::from(u) / 1e3)
    }

    pub fn rate(&self) -> f64 {
        self.counts.ok as f64 / self.secs.max(1e-9)
    }
}

/// `conns` connections sending `GET path` to `endpoint` until `until`.
pub async fn run(endpoint: &Endpoint, conns: usize, path: &str, until: Instant) -> Latencies {
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(one_connection(endpoint.clone(), path.to_string(), until)))
        .collect();
    let mut out = Latencies::default();
    for t in tasks {
        match t.await {
            Ok((us, counts)) => {
                out.sorted_us.extend(us);
                out.counts.merge(counts);
            }
            Err(e) => out.counts.fail(format!("client task: {e}")),
        }
    }
    out.secs = t0.elapsed().as_secs_f64();
    out.sorted_us.sort_unstable();
    out
}

async fn one_connection(endpoint: Endpoint, path: String, until: Instant) -> (Vec<u32>, Counts) {
    let mut counts = Counts::default();
    let mut us = Vec::new();
    let mut conn: Option<Conn> = None;
    for _ in 0..MAX_PER_CONNECTION {
        if Instant::now() >= until {
            break;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => {
                match tokio::time::timeout(http::REQUEST_TIMEOUT, Conn::open(&endpoint)).await {
                    Ok(Ok(c)) => conn.insert(c),
                    Ok(Err(e)) => {
                        counts.fail(format!("connect: {}", e.kind()));
                        // Pacing after a refused connect, not synchronisation.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    Err(_) => {
                        counts.fail("connect: timed out".to_string());
                        continue;
                    }
                }
            }
        };
        let start = Instant::now();
        match tokio::time::timeout(http::REQUEST_TIMEOUT, c.get(&path)).await {
            Ok(Ok(r)) => {
                if r.status == 200 {
                    counts.ok += 1;
                    let micros = start.elapsed().as_micros().min(u128::from(u32::MAX));
                    us.push(micros as u32);
                } else {
                    counts.fail(format!("status {}", r.status));
                }
                if r.close {
                    conn = None;
                }
            }
            Ok(Err(e)) => {
                counts.fail(format!("request: {}", e.kind()));
                conn = None;
            }
            Err(_) => {
                counts.fail("request: timed out".to_string());
                conn = None;
            }
        }
    }
    (us, counts)
}
