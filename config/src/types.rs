//! The validated config: what the balancer builds its runtime from.

use std::net::SocketAddr;
use std::time::Duration;

/// A config that passed validation: every reference resolves, every value is typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    pub pools: Vec<PoolConfig>,
    pub routes: Vec<RouteConfig>,
    pub timeouts: Timeouts,
    /// Peers whose `X-Forwarded-For` is believed (load balancers in front).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The request header that carries the client address the balancer
    /// computed (lower-case); `None`: not sent.
    pub client_ip_header: Option<String>,
    /// How long a removed backend's WebSocket tunnels may stay open.
    pub drain_timeout: Duration,
    /// The WebSocket close code sent to clients whose tunnel the balancer
    /// ends (drain timeout, shutdown): 1001 "going away" or 1012 "service restart".
    pub drain_close_code: u16,
    /// Unix socket over which a new balancer process takes over this one's
    /// listening sockets (zero-downtime binary upgrade); `None`: off.
    pub upgrade_socket: Option<std::path::PathBuf>,
    /// The admin listener (API, later metrics and the status page).
    pub admin: Option<AdminConfig>,
    /// `[limits]`.
    pub limits: crate::Limits,
    /// Where request and response bodies that do not fit in memory are
    /// buffered (`buffer_body_file`, `buffer_response_file`): files
    /// unlinked as they are made; `None`: the system's temporary directory.
    pub buffer_dir: Option<std::path::PathBuf>,
    /// `[pool.processes]` of every supervised pool, in pool order (kept
    /// beside the pools: their backends are in [`PoolConfig::backends`]).
    pub processes: Vec<crate::ProcessesConfig>,
    /// `[[process]]` entries, in file order: each a table of one instance
    /// whose id is the entry's name (its `pool` is the name too).
    pub services: Vec<crate::ProcessesConfig>,
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub address: SocketAddr,
    /// Bearer token required by mutating calls; required off loopback.
    pub token: Option<String>,
    /// Names a request's `Host` may carry besides IP literals and
    /// `localhost`: anything else is refused, so a DNS name an attacker
    /// points at this machine (DNS rebinding) cannot reach the API.
    pub hosts: Vec<HostMatch>,
    /// How long a client may take to send a request's head, and how long an
    /// idle keep-alive connection stays open.
    pub read_timeout: Duration,
    /// Open admin connections above which new ones are closed at once, so
    /// a flood of idle connections cannot take the proxy's descriptors.
    pub max_connections: usize,
    /// `GET /api/status` and `/metrics` need the token too.
    pub protect_reads: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    /// Set when the listener terminates TLS (it has `[[listener.certificate]]`).
    pub tls: Option<crate::ListenerTls>,
    /// A plaintext listener that answers with a redirect to `https://`.
    pub https_redirect: Option<crate::HttpsRedirect>,
    /// Open connections on this listener; `None`: only the global limit.
    pub max_connections: Option<usize>,
    /// `[listener.proxy_protocol]`: connections start with a PROXY header.
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// `[listener.proxy_protocol]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocol {
    /// Peers that send the header (and must); any other peer is closed.
    pub trusted: Vec<ipnet::IpNet>,
    /// The header must arrive within this of the connection.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub name: String,
    pub policy: Policy,
    pub max_idle_per_backend: usize,
    pub backends: Vec<BackendConfig>,
    /// Set exactly when `policy` is [`Policy::Cookie`].
    pub sticky: Option<StickyConfig>,
    /// Set exactly when `policy` is [`Policy::Hash`].
    pub hash_key: Option<HashKey>,
    /// Active health checks; `None`: every backend counts as up.
    pub health: Option<HealthConfig>,
    pub retry: RetryConfig,
    pub ejection: EjectionConfig,
    /// A backend that comes (back) up ramps from 10% to full weight over
    /// this long; zero: off.
    pub slow_start: Duration,
    /// `[pool.tls]`: the balancer speaks TLS to this pool's backends.
    pub tls: Option<crate::PoolTls>,
    /// Request bodies of a known length up to this many bytes are read
    /// whole before a backend is picked, so a slow client holds no backend
    /// connection while it uploads; 0: only for retries.
    pub buffer_body: u64,
    /// Request bodies up to this many bytes past `buffer_body` are read
    /// whole too, the rest going to a file in `buffer_dir`; 0: bodies
    /// over `buffer_body` stream to the backend as they arrive.
    pub buffer_body_file: u64,
    /// A response body is read from the backend ahead of the client by up
    /// to this many bytes in memory...
    pub buffer_response: u64,
    /// ...and then by up to this many in a file in `buffer_dir`, so a
    /// slow reader does not hold the backend connection; 0: no file (the
    /// response then goes at the client's pace once memory is full).
    pub buffer_response_file: u64,
    /// How many requests and tunnels one backend may have open at once,
    /// and the queue that waits for a place: see [`Capacity`].
    pub capacity: Option<Capacity>,
    /// `send_proxy_protocol`: every new connection to the pool's backends
    /// starts with a PROXY header naming the client; `None`: off.
    pub send_proxy_protocol: Option<crate::ProxyVersion>,
}

/// `max_connections_per_backend` and its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub per_backend: usize,
    /// Requests that may wait for a place, pool-wide; one more is a 503.
    pub queue_size: usize,
    /// How long a request waits for a place before it is a 503.
    pub queue_timeout: Duration,
}

/// Default for `pool.buffer_body` (nginx buffers every body by default;
/// this covers the small ones, which is nearly all of a game's).
pub const DEFAULT_BUFFER_BODY: u64 = 64 * 1024;
/// Default for `pool.buffer_body_file` (the default `max_request_body`).
pub const DEFAULT_BUFFER_BODY_FILE: u64 = 16 * 1024 * 1024;
/// Default for `pool.buffer_response`.
pub const DEFAULT_BUFFER_RESPONSE: u64 = 256 * 1024;
/// Default for `pool.buffer_response_file` (nginx's
/// `proxy_max_temp_file_size`).
pub const DEFAULT_BUFFER_RESPONSE_FILE: u64 = 1024 * 1024 * 1024;

/// `[pool.retry]`: when a failed request is tried again on another backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    /// Extra attempts after the first (0 turns retries off).
    pub attempts: u32,
    /// Retries may be at most this share of recent requests (plus a small reserve).
    pub budget_percent: u32,
    /// Request bodies up to this size (known Content-Length) are buffered so
    /// the request can be retried; larger or unknown-length bodies stream
    /// and are not retried.
    pub max_body: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 2,
            budget_percent: 20,
            max_body: 64 * 1024,
        }
    }
}

/// `[pool.ejection]`: passive outlier detection from real traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EjectionConfig {
    /// Consecutive failures (connect errors, resets before the response,
    /// 5xx when `on_5xx`) that eject a backend; 0 turns ejection off.
    pub consecutive_failures: u32,
    /// First ejection time; doubles on each repeat up to `max`.
    pub base: Duration,
    pub max: Duration,
    /// Never eject more than this share of a pool.
    pub max_percent: u32,
    /// Count 5xx responses as failures too.
    pub on_5xx: bool,
}

impl Default for EjectionConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 3,
            base: Duration::from_secs(5),
            max: Duration::from_secs(60),
            max_percent: 50,
            on_5xx: false,
        }
    }
}

/// `[pool.health]`: active checks, one checker per backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub kind: HealthKind,
    /// HTTP path to GET (`type = "http"`).
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Passing status codes, inclusive.
    pub expect: (u16, u16),
    /// Consecutive passes that mark a down backend up.
    pub rise: u32,
    /// Consecutive failures that mark an up backend down.
    pub fall: u32,
    /// New backends start up instead of waiting for their first pass.
    pub assume_up: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthKind {
    /// `GET path`, pass on a status in `expect`.
    Http,
    /// Pass when a TCP connection opens.
    Tcp,
}

/// `[pool.sticky]`: the cookie that pins a client to a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyConfig {
    pub cookie: String,
    /// HMAC key; every balancer of a deployment must share it.
    pub secret: String,
    /// Query parameter accepted in place of the cookie (clients without a jar).
    pub fallback_param: Option<String>,
    pub path: String,
    pub http_only: bool,
    pub secure: bool,
    pub same_site: SameSite,
    /// `None`: a session cookie (no Max-Age).
    pub max_age: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "Strict",
            Self::Lax => "Lax",
            Self::None => "None",
        }
    }
}

/// `[pool.hash] key`: which part of a request picks the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// `header:NAME` (name stored lower-case); the first value.
    Header(String),
    /// `query:NAME`: the first such query parameter, raw (not percent-decoded).
    Query(String),
    /// `cookie:NAME`.
    Cookie(String),
    /// `path_segment:N`: the N-th non-empty path segment, counting from 0.
    PathSegment(usize),
}

/// How a pool picks a backend; the balancer's selection trait implements each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Smooth weighted round robin, as nginx does it.
    RoundRobin,
    /// Fewest open connections (requests + tunnels) relative to weight.
    LeastConnections,
    /// Client IP -> backend by weighted rendezvous hashing.
    IpHash,
    /// A signed cookie names the backend; first pick by least connections.
    Cookie,
    /// A request key -> backend by weighted rendezvous hashing.
    Hash,
}

impl Policy {
    pub const NAMES: &'static [&'static str] = &[
        "round_robin",
        "least_connections",
        "ip_hash",
        "cookie",
        "hash",
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "round_robin" => Some(Self::RoundRobin),
            "least_connections" => Some(Self::LeastConnections),
            "ip_hash" => Some(Self::IpHash),
            "cookie" => Some(Self::Cookie),
            "hash" => Some(Self::Hash),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastConnections => "least_connections",
            Self::IpHash => "ip_hash",
            Self::Cookie => "cookie",
            Self::Hash => "hash",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Stable identity: stickiness and live state follow the id, not the address.
    pub id: String,
    pub address: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub listener: String,
    pub host: Option<HostMatch>,
    pub path_prefix: String,
    pub pool: String,
    /// `upgrades`: the protocols (lower-case names, no version) a request
    /// on this route may upgrade to; default `["websocket"]`, never `h2c`.
    pub upgrades: Vec<String>,
}

/// A route's `host`: `game.example.com` or `*.example.com`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// Lower-case host name, no port.
    Exact(String),
    /// Lower-case suffix including the leading dot (`.example.com`); matches
    /// any host with at least one more label in front of it.
    Wildcard(String),
}

impl HostMatch {
    /// Whether `host` (already lower-case, without port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => h == host,
            Self::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        }
    }
}

/// Every timeout the balancer enforces. Defaults are in [`Timeouts::default`]
/// and in docs/config.md; keep the two in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Opening a TCP connection to a backend.
    pub connect: Duration,
    /// A client sending a full request head (also bounds a slowloris).
    pub request_header: Duration,
    /// A backend sending the response head after the request was sent.
    pub response_header: Duration,
    /// A client keep-alive connection with no request in flight and no bytes moving.
    pub client_idle: Duration,
    /// A pooled idle upstream connection before the balancer closes it.
    pub upstream_idle: Duration,
    /// A WebSocket tunnel with no bytes in either direction; `None` = never.
    pub websocket_idle: Option<Duration>,
    /// A WebSocket tunnel whose client sent nothing for this long gets a
    /// Ping from the balancer (NAT and carrier keep-alive); `None` = never.
    pub websocket_ping: Option<Duration>,
    /// After SIGTERM/SIGINT, how long in-flight requests get to finish.
    pub shutdown_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            request_header: Duration::from_secs(10),
            response_header: Duration::from_secs(60),
            client_idle: Duration::from_secs(60),
            // Below Node.js's default keepAliveTimeout (5 s), so the balancer
            // closes an idle upstream connection before the backend does.
            upstream_idle: Duration::from_secs(4),
            // A half-open tunnel (a phone that went away without a FIN)
            // must not live for ever; game sockets ping far more often.
            websocket_idle: Some(Duration::from_secs(600)),
            // Off: most game libraries ping on their own (Socket.IO every
            // 25 s), and a Ping the client did not expect from its server
            // is a change of protocol behaviour the operator should choose.
            websocket_ping: None,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// `client_ip_header` when the file leaves it out.
pub const DEFAULT_CLIENT_IP_HEADER: &str = "x-real-ip";

/// `admin.address` when the `[admin]` table leaves it out: loopback only.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9900";
/// Default for `admin.read_timeout`.
pub const DEFAULT_ADMIN_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for `admin.max_connections`.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;

/// Shortest accepted `sticky.secret`: shorter keys are guessable.
pub const MIN_SECRET_LEN: usize = 16;

/// Default for `pool.max_idle_per_backend`.
pub const DEFAULT_MAX_IDLE_PER_BACKEND: usize = 256;
/// Largest backend weight (HAProxy's limit too); keeps the round-robin schedule small.
pub const MAX_WEIGHT: u32 = 256;
