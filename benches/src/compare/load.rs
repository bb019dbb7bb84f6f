//! One timed load run against one target, with what it cost the proxy: the
//! CPU time of its whole process tree over the run divided by the requests
//! (or messages) completed.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use super::targets::Target;
use super::{http, procfs, ws};

/// WebSockets of the echo run.
pub const WS_SOCKETS: usize = 100;

/// The measured load scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// Keep-alive `GET /healthz` with wrk, 50 connections.
    Http50,
    /// The same with 1,000 connections.
    Http1000,
    /// 100 WebSockets, closed-loop echo.
    WsEcho,
}

impl Scenario {
    pub const ALL: [Scenario; 3] = [Scenario::Http50, Scenario::Http1000, Scenario::WsEcho];

    pub fn label(self) -> &'static str {
        match self {
            Scenario::Http50 => "HTTP, 50 connections",
            Scenario::Http1000 => "HTTP, 1000 connections",
            Scenario::WsEcho => "WebSocket echo, 100 sockets",
        }
    }

    pub fn connections(self) -> usize {
        match self {
            Scenario::Http50 => 50,
            Scenario::Http1000 => 1000,
            Scenario::WsEcho => WS_SOCKETS,
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Requests (or echoed messages) per second.
    pub rate: f64,
    /// Latency percentiles, microseconds (NaN when not measured).
    pub p50_us: f64,
    pub p99_us: f64,
    /// Proxy CPU time per request (or message), microseconds.
    pub cpu_us: f64,
    /// Requests or messages completed.
    pub ops: u64,
    /// Failed requests or sockets; with `error` saying what.
    pub errors: u64,
    pub error: Option<String>,
}

fn cpu_per_op(target: &Target, cpu_before: u64, ops: u64) -> f64 {
    let used = procfs::tree_cpu_us(target.pid()).saturating_sub(cpu_before);
    if ops == 0 {
        f64::NAN
    } else {
        used as f64 / ops as f64
    }
}

/// `wrk -c{conns}` for `run`.
pub async fn wrk(
    target: &Target,
    wrk: &Path,
    conns: usize,
    run: Duration,
) -> anyhow::Result<Sample> {
    let cpu = procfs::tree_cpu_us(target.pid());
    let r = http::run_wrk(wrk, target.addr, conns, run).await?;
    Ok(Sample {
        rate: r.requests_per_sec,
        p50_us: r.p50_us,
        p99_us: r.p99_us,
        cpu_us: cpu_per_op(target, cpu, r.requests),
        ops: r.requests,
        errors: r.errors(),
        error: (r.errors() > 0).then(|| r.error_text()),
    })
}

/// Our own keep-alive client, `conns` connections for `run` (no latency
/// figures): the HTTP load of `--smoke`, which needs no wrk.
pub async fn rust_http(target: &Target, conns: usize, run: Duration) -> anyhow::Result<Sample> {
    let cpu = procfs::tree_cpu_us(target.pid());
    let t0 = Instant::now();
    let counts = http::keepalive_load(target.addr, conns, t0 + run).await;
    let secs = t0.elapsed().as_secs_f64();
    Ok(Sample {
        rate: counts.ok as f64 / secs,
        p50_us: f64::NAN,
        p99_us: f64::NAN,
        cpu_us: cpu_per_op(target, cpu, counts.ok),
        ops: counts.ok,
        errors: counts.failed,
        error: (counts.failed > 0).then(|| counts.to_string()),
    })
}

/// `sockets` WebSockets opened first (not measured), then a closed-loop
/// echo on all of them for `run`.
pub async fn ws_echo(target: &Target, sockets: usize, run: Duration) -> anyhow::Result<Sample> {
    let open = ws::open_many(target.addr, sockets, 50).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu = procfs::tree_cpu_us(target.pid());
    let t0 = Instant::now();
    let (r, alive) = ws::echo_load(open, t0 + run).await;
    let secs = t0.elapsed().as_secs_f64();
    let cpu_us = cpu_per_op(target, cpu, r.messages);
    ws::close_all(alive).await;
    Ok(Sample {
        rate: r.messages as f64 / secs,
        p50_us: r.p50_us,
        p99_us: r.p99_us,
        cpu_us,
        ops: r.messages,
        errors: r.failed_sockets,
        error: r.first_error.map(|e| {
            format!(
                "{} of {sockets} sockets failed, first: {e}",
                r.failed_sockets
            )
        }),
    })
}
