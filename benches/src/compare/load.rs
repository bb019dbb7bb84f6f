//! One timed load run against one target, with what it cost the proxy: the
//! CPU time of its whole process tree over the run divided by the requests
//! (or messages, or new connections) completed.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use super::endpoint::Endpoint;
use super::targets::Target;
use super::{handshakes, http, procfs, ws};

/// WebSockets of the echo runs.
pub const WS_SOCKETS: usize = 100;
/// Clients of the new-connection runs (each one connection at a time).
pub const HANDSHAKE_CLIENTS: usize = 50;

/// The measured load scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// Keep-alive `GET /healthz` with wrk, 50 connections.
    Http50,
    /// The same with 1,000 connections.
    Http1000,
    /// 100 WebSockets, closed-loop echo.
    WsEcho,
    /// TLS port: 50 clients each opening a new connection with a full
    /// handshake for one `GET /healthz` (`Connection: close`), in a loop
    /// ([`handshakes`]).
    TlsHandshake,
    /// TLS port: wrk with `-H "Connection: close"`, 50 connections: a new
    /// connection per request, the handshake resumed (wrk keeps its
    /// sessions).
    HttpsClose,
    /// TLS port: keep-alive `GET /healthz` with wrk, 50 connections.
    Https50,
    /// TLS port: 100 `wss://` WebSockets, closed-loop echo.
    WssEcho,
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::Http50,
        Scenario::Http1000,
        Scenario::WsEcho,
        Scenario::TlsHandshake,
        Scenario::HttpsClose,
        Scenario::Https50,
        Scenario::WssEcho,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Scenario::Http50 => "HTTP, 50 connections",
            Scenario::Http1000 => "HTTP, 1000 connections",
            Scenario::WsEcho => "WebSocket echo, 100 sockets",
            Scenario::TlsHandshake => "TLS, full handshake per request, 50 clients",
            Scenario::HttpsClose => "HTTPS, Connection: close (resumed), 50 connections",
            Scenario::Https50 => "HTTPS keep-alive, 50 connections",
            Scenario::WssEcho => "wss:// echo, 100 sockets",
        }
    }

    pub fn connections(self) -> usize {
        match self {
            Scenario::Http50 | Scenario::Https50 => 50,
            Scenario::Http1000 => 1000,
            Scenario::WsEcho | Scenario::WssEcho => WS_SOCKETS,
            Scenario::TlsHandshake | Scenario::HttpsClose => HANDSHAKE_CLIENTS,
        }
    }

    /// Whether the scenario runs against the proxy's TLS port.
    pub fn is_tls(self) -> bool {
        !matches!(
            self,
            Scenario::Http50 | Scenario::Http1000 | Scenario::WsEcho
        )
    }

    /// Whether it needs wrk (outside `--smoke`, which uses the Rust
    /// clients for what they can do).
    pub fn needs_wrk(self) -> bool {
        matches!(
            self,
            Scenario::Http50 | Scenario::Http1000 | Scenario::HttpsClose | Scenario::Https50
        )
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

/// wrk for `run` as `scenario` says: `-c{connections}` against `/healthz`
/// on the plaintext port, or on the TLS port over `https://`; with
/// `Connection: close` on every request for [`Scenario::HttpsClose`] (wrk
/// then reconnects after each response).
pub async fn wrk(
    target: &Target,
    wrk: &Path,
    scenario: Scenario,
    run: Duration,
) -> anyhow::Result<Sample> {
    let tls = scenario.is_tls();
    let addr = if tls { target.tls_addr } else { target.addr };
    let url = http::healthz_url(addr, tls);
    let headers: &[&str] = if scenario == Scenario::HttpsClose {
        &["Connection: close"]
    } else {
        &[]
    };
    let cpu = procfs::tree_cpu_us(target.pid());
    let r = http::run_wrk(wrk, &url, headers, scenario.connections(), run).await?;
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

/// Our own keep-alive client, `conns` connections to `endpoint` (one of
/// `target`'s ports) for `run` (no latency figures): the HTTP load of
/// `--smoke`, which needs no wrk.
pub async fn rust_http(
    target: &Target,
    endpoint: &Endpoint,
    conns: usize,
    run: Duration,
) -> anyhow::Result<Sample> {
    let cpu = procfs::tree_cpu_us(target.pid());
    let t0 = Instant::now();
    let counts = http::keepalive_load(endpoint, conns, t0 + run).await;
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

/// `clients` loops of new TLS connections (full handshake, one request,
/// close) for `run`; the rate and CPU are per connection.
pub async fn tls_handshakes(
    target: &Target,
    clients: usize,
    run: Duration,
) -> anyhow::Result<Sample> {
    let cpu = procfs::tree_cpu_us(target.pid());
    let t0 = Instant::now();
    let r = handshakes::handshake_load(&target.tls(), clients, t0 + run).await;
    let secs = t0.elapsed().as_secs_f64();
    let c = &r.counts;
    Ok(Sample {
        rate: c.ok as f64 / secs,
        p50_us: r.p50_us,
        p99_us: r.p99_us,
        cpu_us: cpu_per_op(target, cpu, c.ok),
        ops: c.ok,
        errors: c.failed,
        error: (c.failed > 0).then(|| c.to_string()),
    })
}

/// `sockets` WebSockets to `endpoint` (one of `target`'s ports) opened
/// first (not measured), then a closed-loop echo on all of them for `run`.
pub async fn ws_echo(
    target: &Target,
    endpoint: &Endpoint,
    sockets: usize,
    run: Duration,
) -> anyhow::Result<Sample> {
    let open = ws::open_many(endpoint, sockets, 50).await?;
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
