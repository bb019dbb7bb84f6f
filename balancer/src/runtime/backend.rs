//! One backend process and its live state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// HTTP/1.1 client with its own bounded keep-alive pool for one backend.
pub type UpstreamClient = Client<HttpConnector, crate::proxy::RequestBody>;

/// Settings that, when changed, need a new upstream client (and so a new
/// [`Backend`]); everything else about a backend can change in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
}

/// A backend: identity, address and the state that must survive config
/// reloads. Weight is not here: it belongs to the pool's selection and may
/// change without touching live state.
#[derive(Debug)]
pub struct Backend {
    /// Stable id from the config; stickiness and admin calls use it.
    pub id: Arc<str>,
    pub address: SocketAddr,
    /// `ip:port` pre-parsed once, used to build every upstream URI.
    pub authority: http::uri::Authority,
    pub(crate) settings: UpstreamSettings,
    /// Pooled keep-alive connections to this backend (cheap to clone).
    pub client: UpstreamClient,
    /// In-flight requests plus open WebSocket tunnels: the load that
    /// least-connections balances and that draining waits for.
    open: AtomicUsize,
    /// Requests sent to this backend since it appeared.
    requests: AtomicU64,
    /// [`Health`] as a byte: written by the health checker, read by every pick.
    health: AtomicU8,
    /// Health state changes so far (for logs now, metrics later).
    health_changes: AtomicU64,
}

/// What the health checker last concluded about a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Checked, but no verdict yet: takes no traffic.
    Unknown = 0,
    Up = 1,
    Down = 2,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

impl Backend {
    /// A backend starting in `health` (`Up` for pools without checks or
    /// with `assume_up`, else `Unknown` until its first passing check).
    pub fn new(id: &str, address: SocketAddr, settings: UpstreamSettings, health: Health) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(settings.idle_timeout)
            .pool_max_idle_per_host(settings.max_idle)
            .build(connector);
        let authority = address
            .to_string()
            .parse()
            // A SocketAddr always prints as a valid authority.
            .unwrap_or_else(|_| http::uri::Authority::from_static("0.0.0.0:0"));
        Self {
            id: id.into(),
            address,
            authority,
            settings,
            client,
            open: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            health: AtomicU8::new(health as u8),
            health_changes: AtomicU64::new(0),
        }
    }

    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Relaxed) {
            1 => Health::Up,
            2 => Health::Down,
            _ => Health::Unknown,
        }
    }

    /// Whether picks may choose this backend.
    pub fn is_up(&self) -> bool {
        self.health() == Health::Up
    }

    /// Records the checker's verdict; true when it changed the state.
    pub fn set_health(&self, h: Health) -> bool {
        let old = self.health.swap(h as u8, Ordering::Relaxed);
        let changed = old != h as u8;
        if changed {
            self.health_changes.fetch_add(1, Ordering::Relaxed);
        }
        changed
    }

    pub fn health_changes(&self) -> u64 {
        self.health_changes.load(Ordering::Relaxed)
    }

    /// Current in-flight requests plus open tunnels.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Requests sent to this backend so far.
    pub fn requests_total(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Counts one more request (and open connection) until the guard drops.
    pub fn open(self: &Arc<Self>) -> OpenGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        OpenGuard(self.clone())
    }
}

/// Holds one unit of a backend's open-connection count; dropping it releases it.
/// A request keeps its guard until the response body is done; a WebSocket
/// tunnel keeps it until the tunnel closes.
#[derive(Debug)]
pub struct OpenGuard(Arc<Backend>);

impl OpenGuard {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}
