//! Prometheus metrics, served as text on the admin listener's `/metrics`.
//!
//! Two kinds:
//! * recorded on the request path through handles resolved in advance
//!   ([`BackendMetrics`], [`PoolMetrics`]), built when a snapshot is built,
//!   so recording is an atomic add: no lock, no allocation, no label lookup;
//! * read at scrape time from the atomics the balancer keeps anyway
//!   (backend state, open connections, tunnels, ejections, config
//!   generation and reloads, supervised instances' states and restarts),
//!   so they cost the request path nothing; a supervised instance's memory
//!   and CPU are read from `/proc` by the scrape itself.
//!
//! Labels are bounded: `pool`, `backend`, `instance` (supervised backends),
//! `listener`, method and status classes, error causes, fixed word lists.
//! No paths, no client addresses.

use std::sync::Mutex;

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// What a scrape reads from the running balancer (the admin listener
/// gathers it): plain values, so this module depends on nothing else in
/// the crate.
#[derive(Debug, Default)]
pub struct Scrape {
    pub generation: u64,
    pub backends: Vec<BackendSample>,
    pub reloads_succeeded: u64,
    pub reloads_failed: u64,
    /// Unix time of the last successful reload (0: none yet).
    pub last_reload_unix: u64,
    /// Every certificate a TLS listener serves.
    pub certificates: Vec<CertificateSample>,
    /// Every supervised instance (`[pool.processes]`).
    pub processes: Vec<ProcessSample>,
    /// Supervised pools: how many instances are in each state, every
    /// state listed (0 when none is in it).
    pub process_states: Vec<ProcessStatesSample>,
}

/// One supervised instance as a scrape sees it.
#[derive(Debug)]
pub struct ProcessSample {
    pub pool: String,
    pub instance: String,
    /// Restarts so far by reason (`exit`, `signal`, `clean`, `spawn`).
    pub restarts: Vec<(&'static str, u64)>,
    /// Resident memory and CPU seconds of its process, read from `/proc`
    /// now; `None` when it has no process (its series are then absent).
    pub usage: Option<(u64, f64)>,
}

/// The instances of one supervised pool, counted by state.
#[derive(Debug)]
pub struct ProcessStatesSample {
    pub pool: String,
    pub by_state: Vec<(&'static str, usize)>,
}

/// One served certificate as a scrape sees it.
#[derive(Debug)]
pub struct CertificateSample {
    pub listener: String,
    /// The certificate file.
    pub file: String,
    /// Seconds until it expires (negative once it has).
    pub expires_in: i64,
}

/// One backend as a scrape sees it.
#[derive(Debug)]
pub struct BackendSample {
    pub pool: String,
    pub backend: String,
    /// Takes new requests now.
    pub up: bool,
    pub in_flight: usize,
    pub tunnels: usize,
    /// TCP connections open to it (see [`crate::upstream::Sockets`]).
    pub tcp_connections: usize,
    pub ejections: u64,
    pub health_changes: u64,
}

/// Method classes used as the `method` label.
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "other",
];
/// Status classes used as the `code` label.
pub const CODES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Error causes used as the `cause` label (see `ProxyError::cause`).
pub const CAUSES: [&str; 19] = [
    "no_route",
    "bad_host",
    "method",
    "no_backend",
    "connect",
    "connect_timeout",
    "upstream_tls",
    "response_timeout",
    "upstream",
    "client_body",
    "client_timeout",
    "client_closed",
    "uri_too_long",
    "body_too_large",
    "upload_timeout",
    "upload_too_slow",
    "backend_full",
    "too_many_headers",
    "http2_backend_requests",
];

/// HTTP/2 limits that trip on one client connection (`limit` label of
/// `balancer_http2_limits_total`).
pub const HTTP2_LIMITS: [&str; 4] = [
    "backend_requests_queued",
    "backend_requests_refused",
    "ping_flood",
    "settings_flood",
];

/// TLS handshake outcomes used as the `outcome` label.
pub const HANDSHAKE_OUTCOMES: [&str; 10] = [
    "ok",
    "timeout",
    "eof",
    "plaintext_http",
    "not_tls",
    "unknown_name",
    "incompatible",
    "client_alert",
    "bad_message",
    "error",
];
/// Negotiated TLS versions (`version` label) and ALPN protocols (`alpn`).
pub const TLS_VERSIONS: [&str; 2] = ["1.2", "1.3"];
pub const ALPN: [&str; 3] = ["h2", "http/1.1", "none"];

/// Latency buckets from 0.5 ms to 60 s.
const LATENCY: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// WebSocket session buckets from 1 s to 4 h.
const SESSION: &[f64] = &[1.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0];

/// Every metric family, registered in one registry per process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    response_header: HistogramVec,
    request_duration: HistogramVec,
    tunnel_duration: HistogramVec,
    response_bytes: IntCounterVec,
    request_bytes: IntCounterVec,
    tunnel_bytes: IntCounterVec,
    errors: IntCounterVec,
    retries: IntCounterVec,
    retries_refused: IntCounterVec,
    client_connections: IntGaugeVec,
    connections_refused: IntCounterVec,
    proxy_protocol: IntCounterVec,
    websocket_limit: IntCounterVec,
    websocket_pings: IntCounterVec,
    buffer_files: IntCounterVec,
    buffer_files_refused: IntCounterVec,
    buffer_file_bytes: IntGauge,
    http2_limits: IntCounterVec,
    check_duration: HistogramVec,
    check_failures: IntCounterVec,
    connect_duration: HistogramVec,
    tls_handshakes: IntCounterVec,
    tls_negotiated: IntCounterVec,
    tls_resumed: IntCounterVec,
    tls_handshake_duration: HistogramVec,
    // Read at scrape time.
    tls_certificate_expiry: IntGaugeVec,
    backend_up: IntGaugeVec,
    backend_in_flight: IntGaugeVec,
    backend_tunnels: IntGaugeVec,
    backend_tcp_connections: IntGaugeVec,
    backend_ejections: IntCounterVec,
    backend_health_changes: IntCounterVec,
    generation: IntGauge,
    reloads: IntCounterVec,
    last_reload: IntGauge,
    admin_connections: IntGauge,
    admin_connections_refused: IntCounter,
    process_restarts: IntCounterVec,
    process_instances: IntGaugeVec,
    process_memory: IntGaugeVec,
    /// Seconds, not ticks: a float counter.
    process_cpu: CounterVec,
    /// Scrapes reset and refill the scrape-time families: one at a time.
    scrape: Mutex<()>,
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let v = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(v.clone()))?;
    Ok(v)
}

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let v = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(v.clone()))?;
    Ok(v)
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> prometheus::Result<HistogramVec> {
    let v = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    r.register(Box::new(v.clone()))?;
    Ok(v)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        let build = IntGaugeVec::new(
            Opts::new(
                "balancer_build_info",
                "Build information; the value is always 1.",
            ),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        r.register(Box::new(build))?;
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let generation = IntGauge::new(
            "balancer_config_generation",
            "Generation of the config in force (1 at start, +1 per reload).",
        )?;
        r.register(Box::new(generation.clone()))?;
        let last_reload = IntGauge::new(
            "balancer_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful reload (0: none yet).",
        )?;
        r.register(Box::new(last_reload.clone()))?;
        let admin_connections = IntGauge::new(
            "balancer_admin_connections",
            "Open connections to the admin listener.",
        )?;
        r.register(Box::new(admin_connections.clone()))?;
        let buffer_file_bytes = IntGauge::new(
            "balancer_buffer_file_bytes",
            "Bytes of request and response bodies held in buffer files now (against limits.buffer_files_total).",
        )?;
        r.register(Box::new(buffer_file_bytes.clone()))?;
        let admin_connections_refused = IntCounter::new(
            "balancer_admin_connections_refused_total",
            "Admin connections closed at once because admin.max_connections were open.",
        )?;
        r.register(Box::new(admin_connections_refused.clone()))?;
        Ok(Self {
            requests: counter_vec(&r, "balancer_requests_total", "Requests answered, by pool, backend, method class and status class.", &["pool", "backend", "method", "code"])?,
            response_header: histogram_vec(&r, "balancer_response_header_seconds", "Time from request arrival to the backend's response head.", &["pool"], LATENCY)?,
            request_duration: histogram_vec(&r, "balancer_request_duration_seconds", "Time from request arrival to the end of the response body.", &["pool"], LATENCY)?,
            tunnel_duration: histogram_vec(&r, "balancer_websocket_session_duration_seconds", "Lifetime of WebSocket (upgrade) tunnels.", &["pool"], SESSION)?,
            response_bytes: counter_vec(&r, "balancer_response_bytes_total", "Response body bytes sent to clients.", &["pool", "backend"])?,
            request_bytes: counter_vec(&r, "balancer_request_bytes_total", "Request body bytes sent to backends.", &["pool", "backend"])?,
            tunnel_bytes: counter_vec(&r, "balancer_websocket_bytes_total", "Bytes through WebSocket tunnels, by direction (in: from clients, out: to clients).", &["pool", "backend", "direction"])?,
            errors: counter_vec(&r, "balancer_errors_total", "Requests the balancer answered itself or lost, by cause.", &["pool", "cause"])?,
            retries: counter_vec(&r, "balancer_retries_total", "Requests retried on another backend.", &["pool"])?,
            retries_refused: counter_vec(&r, "balancer_retries_refused_total", "Retries not made because the retry budget was spent (only retries of requests that may have reached a backend spend it).", &["pool"])?,
            client_connections: gauge_vec(&r, "balancer_client_connections", "Open client connections.", &["listener"])?,
            connections_refused: counter_vec(&r, "balancer_connections_refused_total", "Client connections refused as they were accepted, by the limit that was full (max_connections, listener_max_connections, max_connections_per_ip).", &["listener", "reason"])?,
            http2_limits: counter_vec(&r, "balancer_http2_limits_total", "HTTP/2 client connections' limits tripping: backend_requests_queued (a stream waited for a place under http2_max_backend_requests), backend_requests_refused (it waited in vain: 503), ping_flood and settings_flood (the connection was closed).", &["listener", "limit"])?,
            websocket_limit: counter_vec(&r, "balancer_websocket_limit_closes_total", "WebSocket tunnels the balancer closed because the client broke a [limits] limit: message_too_big (close 1009), message_rate (close 1008).", &["pool", "reason"])?,
            websocket_pings: counter_vec(&r, "balancer_websocket_pings_total", "Keep-alive Pings the balancer sent to WebSocket clients that were quiet for timeouts.websocket_ping.", &["pool"])?,
            buffer_files: counter_vec(&r, "balancer_buffer_files_total", "Bodies that went (in part) to a buffer file, by body (request, response).", &["pool", "body"])?,
            buffer_files_refused: counter_vec(&r, "balancer_buffer_files_refused_total", "Bodies that would have gone to a buffer file but streamed because limits.buffer_files_total was reached, by body (request, response).", &["pool", "body"])?,
            buffer_file_bytes,
            proxy_protocol: counter_vec(&r, "balancer_proxy_protocol_total", "PROXY protocol headers on listeners that take them, by outcome (proxied, local, untrusted peer, malformed, timeout, io).", &["listener", "outcome"])?,
            check_duration: histogram_vec(&r, "balancer_health_check_duration_seconds", "Duration of active health checks.", &["pool"], LATENCY)?,
            check_failures: counter_vec(&r, "balancer_health_check_failures_total", "Failed active health checks.", &["pool", "backend"])?,
            connect_duration: histogram_vec(&r, "balancer_upstream_connect_duration_seconds", "Time to open a new TCP connection to a backend (pooled connections are reused without one).", &["pool"], LATENCY)?,
            tls_handshakes: counter_vec(&r, "balancer_tls_handshakes_total", "TLS handshakes by listener and outcome (ok, or why it failed).", &["listener", "outcome"])?,
            tls_negotiated: counter_vec(&r, "balancer_tls_negotiated_total", "Completed TLS handshakes by protocol version and ALPN protocol.", &["listener", "version", "alpn"])?,
            tls_resumed: counter_vec(&r, "balancer_tls_resumed_total", "Completed TLS handshakes that resumed a session (ticket or session id).", &["listener"])?,
            tls_handshake_duration: histogram_vec(&r, "balancer_tls_handshake_duration_seconds", "Time from the first byte of a client to its completed TLS handshake.", &["listener"], LATENCY)?,
            tls_certificate_expiry: gauge_vec(&r, "balancer_tls_certificate_expiry_seconds", "Seconds until each served certificate expires (negative once it has).", &["listener", "certificate"])?,
            backend_up: gauge_vec(&r, "balancer_backend_up", "1 when the backend takes new requests (healthy, not ejected, enabled), else 0.", &["pool", "backend"])?,
            backend_in_flight: gauge_vec(&r, "balancer_backend_in_flight_requests", "HTTP requests in flight to the backend.", &["pool", "backend"])?,
            backend_tunnels: gauge_vec(&r, "balancer_backend_websocket_tunnels", "Open WebSocket tunnels to the backend.", &["pool", "backend"])?,
            backend_tcp_connections: gauge_vec(&r, "balancer_backend_tcp_connections", "TCP connections open to the backend: in use, idle and health checks.", &["pool", "backend"])?,
            backend_ejections: counter_vec(&r, "balancer_backend_ejections_total", "Passive ejections of the backend (consecutive failures or a refused connection).", &["pool", "backend"])?,
            backend_health_changes: counter_vec(&r, "balancer_backend_health_changes_total", "Health state changes of the backend.", &["pool", "backend"])?,
            reloads: counter_vec(&r, "balancer_config_reloads_total", "Config reloads, by result.", &["result"])?,
            process_restarts: counter_vec(&r, "balancer_process_restarts_total", "Restarts of supervised instances, by the reason of the exit before each: exit (nonzero exit code), signal (killed by a signal), clean (exit code 0), spawn (could not be started).", &["pool", "instance", "reason"])?,
            process_instances: gauge_vec(&r, "balancer_process_instances", "Supervised instances per state (starting, ready, backoff, failed, stopping, stopped).", &["pool", "state"])?,
            process_memory: gauge_vec(&r, "balancer_process_resident_memory_bytes", "Resident memory of a supervised instance's process (VmRSS); absent while it has no process.", &["pool", "instance"])?,
            process_cpu: {
                let v = CounterVec::new(Opts::new("balancer_process_cpu_seconds_total", "User and system CPU time of a supervised instance's current process; absent while it has no process, from 0 again after a restart."), &["pool", "instance"])?;
                r.register(Box::new(v.clone()))?;
                v
            },
            generation,
            last_reload,
            admin_connections,
            admin_connections_refused,
            registry: r,
            scrape: Mutex::new(()),
        })
    }

    /// Handles for one backend of one pool.
    pub fn backend(&self, pool: &str, backend: &str) -> BackendMetrics {
        BackendMetrics {
            requests: METHODS
                .map(|m| CODES.map(|c| self.requests.with_label_values(&[pool, backend, m, c]))),
            response_bytes: self.response_bytes.with_label_values(&[pool, backend]),
            request_bytes: self.request_bytes.with_label_values(&[pool, backend]),
            tunnel_in: self.tunnel_bytes.with_label_values(&[pool, backend, "in"]),
            tunnel_out: self.tunnel_bytes.with_label_values(&[pool, backend, "out"]),
        }
    }

    /// Handles for one pool.
    pub fn pool(&self, pool: &str) -> PoolMetrics {
        PoolMetrics {
            response_header: self.response_header.with_label_values(&[pool]),
            request_duration: self.request_duration.with_label_values(&[pool]),
            tunnel_duration: self.tunnel_duration.with_label_values(&[pool]),
            errors: CAUSES.map(|c| self.errors.with_label_values(&[pool, c])),
            retries: self.retries.with_label_values(&[pool]),
            retries_refused: self.retries_refused.with_label_values(&[pool]),
            websocket_limit: ["message_too_big", "message_rate"]
                .map(|r| self.websocket_limit.with_label_values(&[pool, r])),
            websocket_pings: self.websocket_pings.with_label_values(&[pool]),
            buffer_files: ["request", "response"]
                .map(|b| self.buffer_files.with_label_values(&[pool, b])),
            buffer_files_refused: ["request", "response"]
                .map(|b| self.buffer_files_refused.with_label_values(&[pool, b])),
        }
    }

    /// Health check handles for one backend.
    pub fn check(&self, pool: &str, backend: &str) -> CheckMetrics {
        CheckMetrics {
            duration: self.check_duration.with_label_values(&[pool]),
            failures: self.check_failures.with_label_values(&[pool, backend]),
        }
    }

    /// The upstream connect-time histogram of a pool.
    pub fn connect(&self, pool: &str) -> Histogram {
        self.connect_duration.with_label_values(&[pool])
    }

    /// The open-connections gauge of a listener.
    pub fn listener(&self, name: &str) -> IntGauge {
        self.client_connections.with_label_values(&[name])
    }

    /// The refused-connections counters of a listener, by reason, in the
    /// order of [`crate::server::conn_limits::Refused::ALL`].
    pub fn refused(&self, listener: &str) -> [IntCounter; 3] {
        crate::server::conn_limits::Refused::ALL.map(|r| {
            self.connections_refused
                .with_label_values(&[listener, r.as_str()])
        })
    }

    /// Counts one PROXY protocol outcome on `listener`.
    pub fn proxy_protocol(&self, listener: &str, outcome: &str) {
        self.proxy_protocol
            .with_label_values(&[listener, outcome])
            .inc();
    }

    /// `balancer_buffer_file_bytes`.
    pub fn buffer_file_bytes(&self) -> IntGauge {
        self.buffer_file_bytes.clone()
    }

    /// Counts one HTTP/2 limit (one of [`HTTP2_LIMITS`]) tripping on a
    /// connection of `listener`. A label lookup: these are rare by nature
    /// (a flood trips once, then the connection is gone).
    pub fn http2_limit(&self, listener: &str, limit: &str) {
        self.http2_limits
            .with_label_values(&[listener, limit])
            .inc();
    }

    /// The admin listener's connection handles.
    pub fn admin(&self) -> AdminMetrics {
        AdminMetrics {
            open: self.admin_connections.clone(),
            refused: self.admin_connections_refused.clone(),
        }
    }

    /// Handshake handles for one TLS listener.
    pub fn tls(&self, listener: &str) -> TlsMetrics {
        TlsMetrics {
            handshakes: HANDSHAKE_OUTCOMES
                .map(|o| self.tls_handshakes.with_label_values(&[listener, o])),
            negotiated: TLS_VERSIONS
                .map(|v| ALPN.map(|a| self.tls_negotiated.with_label_values(&[listener, v, a]))),
            resumed: self.tls_resumed.with_label_values(&[listener]),
            duration: self.tls_handshake_duration.with_label_values(&[listener]),
        }
    }

    /// The text exposition, with the scrape-time families set from `scrape`.
    pub fn render(&self, scrape: &Scrape) -> String {
        let _one_at_a_time = self.scrape.lock();
        for v in [
            &self.backend_up,
            &self.backend_in_flight,
            &self.backend_tunnels,
            &self.backend_tcp_connections,
        ] {
            v.reset();
        }
        self.backend_ejections.reset();
        self.backend_health_changes.reset();
        for b in &scrape.backends {
            let l = [b.pool.as_str(), b.backend.as_str()];
            self.backend_up.with_label_values(&l).set(i64::from(b.up));
            self.backend_in_flight
                .with_label_values(&l)
                .set(b.in_flight as i64);
            self.backend_tunnels
                .with_label_values(&l)
                .set(b.tunnels as i64);
            self.backend_tcp_connections
                .with_label_values(&l)
                .set(b.tcp_connections as i64);
            self.backend_ejections
                .with_label_values(&l)
                .inc_by(b.ejections);
            self.backend_health_changes
                .with_label_values(&l)
                .inc_by(b.health_changes);
        }
        self.generation.set(scrape.generation as i64);
        self.reloads.reset();
        self.reloads
            .with_label_values(&["success"])
            .inc_by(scrape.reloads_succeeded);
        self.reloads
            .with_label_values(&["failure"])
            .inc_by(scrape.reloads_failed);
        self.last_reload.set(scrape.last_reload_unix as i64);
        self.tls_certificate_expiry.reset();
        for c in &scrape.certificates {
            self.tls_certificate_expiry
                .with_label_values(&[c.listener.as_str(), c.file.as_str()])
                .set(c.expires_in);
        }
        self.process_restarts.reset();
        self.process_memory.reset();
        self.process_cpu.reset();
        for p in &scrape.processes {
            let l = [p.pool.as_str(), p.instance.as_str()];
            for (reason, n) in &p.restarts {
                self.process_restarts
                    .with_label_values(&[l[0], l[1], reason])
                    .inc_by(*n);
            }
            if let Some((rss, cpu)) = p.usage {
                self.process_memory
                    .with_label_values(&l)
                    .set(i64::try_from(rss).unwrap_or(i64::MAX));
                self.process_cpu.with_label_values(&l).inc_by(cpu);
            }
        }
        self.process_instances.reset();
        for p in &scrape.process_states {
            for (state, n) in &p.by_state {
                self.process_instances
                    .with_label_values(&[p.pool.as_str(), state])
                    .set(*n as i64);
            }
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The admin listener's connections: open now, and refused at the cap.
#[derive(Debug, Clone)]
pub struct AdminMetrics {
    pub open: IntGauge,
    pub refused: IntCounter,
}

/// Per-listener TLS handles, recorded once per handshake.
#[derive(Debug, Clone)]
pub struct TlsMetrics {
    handshakes: [IntCounter; HANDSHAKE_OUTCOMES.len()],
    negotiated: [[IntCounter; ALPN.len()]; TLS_VERSIONS.len()],
    resumed: IntCounter,
    duration: Histogram,
}

impl TlsMetrics {
    /// A handshake ended with `outcome` (one of [`HANDSHAKE_OUTCOMES`]).
    pub fn outcome(&self, outcome: &str) {
        let i = HANDSHAKE_OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(HANDSHAKE_OUTCOMES.len() - 1);
        self.handshakes[i].inc();
    }

    /// A handshake completed: what it negotiated and how long it took.
    pub fn completed(&self, version: &str, alpn: &str, resumed: bool, took: std::time::Duration) {
        self.handshakes[0].inc();
        let v = TLS_VERSIONS.iter().position(|x| *x == version).unwrap_or(0);
        let a = ALPN
            .iter()
            .position(|x| *x == alpn)
            .unwrap_or(ALPN.len() - 1);
        self.negotiated[v][a].inc();
        if resumed {
            self.resumed.inc();
        }
        self.duration.observe(took.as_secs_f64());
    }
}

/// Per-backend handles recorded on the request path.
#[derive(Debug, Clone)]
pub struct BackendMetrics {
    requests: [[IntCounter; 5]; 8],
    response_bytes: IntCounter,
    request_bytes: IntCounter,
    tunnel_in: IntCounter,
    tunnel_out: IntCounter,
}

impl BackendMetrics {
    pub fn request(&self, method: &http::Method, status: u16, bytes: u64) {
        let m = match *method {
            http::Method::GET => 0,
            http::Method::HEAD => 1,
            http::Method::POST => 2,
            http::Method::PUT => 3,
            http::Method::DELETE => 4,
            http::Method::OPTIONS => 5,
            http::Method::PATCH => 6,
            _ => 7,
        };
        let c = usize::from((status / 100).clamp(1, 5) - 1);
        self.requests[m][c].inc();
        self.response_bytes.inc_by(bytes);
    }

    pub fn request_bytes(&self, bytes: u64) {
        self.request_bytes.inc_by(bytes);
    }

    pub fn tunnel_bytes(&self, from_client: u64, from_backend: u64) {
        self.tunnel_in.inc_by(from_client);
        self.tunnel_out.inc_by(from_backend);
    }
}

/// Health check handles for one backend.
#[derive(Debug, Clone)]
pub struct CheckMetrics {
    duration: Histogram,
    failures: IntCounter,
}

impl CheckMetrics {
    pub fn record(&self, took: std::time::Duration, passed: bool) {
        self.duration.observe(took.as_secs_f64());
        if !passed {
            self.failures.inc();
        }
    }
}

/// Per-pool handles recorded on the request path.
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    pub response_header: Histogram,
    pub request_duration: Histogram,
    pub tunnel_duration: Histogram,
    errors: [IntCounter; CAUSES.len()],
    pub retries: IntCounter,
    pub retries_refused: IntCounter,
    /// Tunnels closed for a `[limits]` WebSocket limit: message size, rate.
    pub websocket_limit: [IntCounter; 2],
    /// Keep-alive Pings sent to quiet clients (`timeouts.websocket_ping`).
    pub websocket_pings: IntCounter,
    /// Bodies that went to a buffer file: request, response.
    pub buffer_files: [IntCounter; 2],
    /// Bodies that streamed because the buffer files were full: request, response.
    pub buffer_files_refused: [IntCounter; 2],
}

impl PoolMetrics {
    /// Requests the balancer answered itself or lost, all causes.
    pub fn errors_total(&self) -> u64 {
        self.errors.iter().map(IntCounter::get).sum()
    }

    /// The `q` quantile (0..1) of request durations, as the upper bound of
    /// the histogram bucket it falls in; `None` before any request.
    pub fn duration_quantile(&self, q: f64) -> Option<f64> {
        use prometheus::core::Collector;
        let families = self.request_duration.collect();
        let h = families
            .first()?
            .get_metric()
            .first()?
            .get_histogram()
            .clone();
        let count = h.get_sample_count();
        if count == 0 {
            return None;
        }
        let rank = (q * count as f64).ceil() as u64;
        h.get_bucket()
            .iter()
            .find(|b| b.cumulative_count() >= rank)
            .map(|b| b.upper_bound())
            .or(Some(f64::INFINITY))
    }

    pub fn error(&self, cause: &str) {
        if let Some(i) = CAUSES.iter().position(|c| *c == cause) {
            self.errors[i].inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supervised_instances_render_by_reason_and_state_and_usage_only_while_running() {
        let m = Metrics::new().unwrap();
        let text = m.render(&Scrape {
            processes: vec![
                ProcessSample {
                    pool: "game".into(),
                    instance: "game-1".into(),
                    restarts: vec![("exit", 0), ("signal", 2)],
                    usage: Some((12 * 1024 * 1024, 1.5)),
                },
                ProcessSample {
                    pool: "game".into(),
                    instance: "game-2".into(),
                    restarts: vec![("exit", 3), ("signal", 0)],
                    usage: None,
                },
            ],
            process_states: vec![ProcessStatesSample {
                pool: "game".into(),
                by_state: vec![("ready", 1), ("failed", 1), ("stopped", 0)],
            }],
            ..Scrape::default()
        });
        for want in [
            "balancer_process_restarts_total{instance=\"game-1\",pool=\"game\",reason=\"signal\"} 2\n",
            "balancer_process_restarts_total{instance=\"game-1\",pool=\"game\",reason=\"exit\"} 0\n",
            "balancer_process_restarts_total{instance=\"game-2\",pool=\"game\",reason=\"exit\"} 3\n",
            "balancer_process_instances{pool=\"game\",state=\"ready\"} 1\n",
            "balancer_process_instances{pool=\"game\",state=\"stopped\"} 0\n",
            "balancer_process_resident_memory_bytes{instance=\"game-1\",pool=\"game\"} 12582912\n",
            "balancer_process_cpu_seconds_total{instance=\"game-1\",pool=\"game\"} 1.5\n",
            "# TYPE balancer_process_cpu_seconds_total counter\n",
            "# TYPE balancer_process_resident_memory_bytes gauge\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        // No process, no memory or CPU series.
        assert!(!text.contains("resident_memory_bytes{instance=\"game-2\""));
        assert!(!text.contains("cpu_seconds_total{instance=\"game-2\""));

        // A later scrape replaces the values: an instance gone is gone.
        let text = m.render(&Scrape::default());
        assert!(!text.contains("instance=\"game-1\""), "{text}");
    }
}
