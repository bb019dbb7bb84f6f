//! One backend process and its live state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
}

impl Backend {
    pub fn new(id: &str, address: SocketAddr, settings: UpstreamSettings) -> Self {
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
        }
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
