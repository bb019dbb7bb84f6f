//! The request path: one client request in, one response out.
//!
//! ```text
//! Proxy::handle(request of any body type)
//!   └─ the steps (forward.rs): route ─▶ rewrite ─▶ read body ─▶ attempts ─▶ respond
//!        route         (listener, host, path) ─▶ pool            404 NoRoute
//!        rewrite       headers::rewrite_request: hop-by-hop out, X-Forwarded-*, Host (pure)
//!        read body     client_body.rs: buffer a small body, else stream
//!        attempts      pick (select/) ─▶ upstream::ConnectionPool::send ─▶ head
//!                        failed: retry.rs decides (pure): free, from the budget, or give up;
//!                                the backend's ejection state machine learns what happened
//!        respond       strip hop-by-hop, X-Request-Id, Set-Cookie; 101 ⇒ tunnel.rs
//!   errors ─▶ error_response: short body, access log with the cause
//! body streams through ProxyBody (body.rs); access log when it ends
//! ```
//!
//! `handle` is generic over the request body, so the whole path (routing,
//! rewriting, retries, ejection) runs in tests without a client socket.

mod body;
pub mod buffering;
mod client_body;
pub mod client_ip;
pub mod edge;
pub mod error;
mod forward;
pub mod headers;
mod lazy_copy;
pub mod retry;
#[cfg(test)]
mod tests;
mod tunnel;
pub mod ws_frames;
mod ws_ping;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use tokio_util::task::TaskTracker;

pub use body::{AccessLog, ProxyBody};
pub use client_body::ClientBody;
pub use error::{ProxyError, Side};
use forward::{Routed, Upgrade};

use crate::runtime::Snapshot;
use crate::BoxError;

/// Shared by every connection of the process.
#[derive(Debug)]
pub struct Proxy {
    /// The live config; swapped whole on reload, loaded once per request.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Tunnels run as tasks of their own; tracked so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Fired at shutdown: every WebSocket tunnel sends its client a Close frame.
    pub close_tunnels: tokio_util::sync::CancellationToken,
    /// Prometheus metrics (none when they could not be set up).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Open client connections against `[limits]`, process-wide.
    pub connections: Arc<crate::server::conn_limits::ConnLimits>,
    /// Bytes in buffer files, against `limits.buffer_files_total`.
    pub buffer_files: Arc<buffering::FileBudget>,
}

/// What the proxy knows about the client connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    pub listener: Arc<str>,
    /// The client's address: the TCP peer, or the one its PROXY header named.
    pub peer: SocketAddr,
    /// The balancer's end of the connection (what a PROXY header sent to a
    /// backend names as the destination); `None` when unknown.
    pub local: Option<SocketAddr>,
    /// Requests being handled on this connection; the idle timer waits for zero.
    pub in_flight: AtomicUsize,
    /// Requests that arrived on this connection so far.
    pub requests: AtomicUsize,
    /// HTTP/1.1: hyper's last read found nothing (it waits for the client).
    pub waiting: AtomicBool,
    /// HTTP/1.1: hyper is being stopped between requests; its shutdown of
    /// the socket must leave the socket open.
    pub parking: AtomicBool,
    /// The latest request's body has not reached its end (see
    /// `server::body_end`): until it does the connection is never parked,
    /// and a response done first closes the connection.
    pub body_open: AtomicBool,
    /// The listener's per-request settings, as the connection found them.
    pub edge: Arc<edge::Edge>,
    /// The TLS server name the client asked for (TLS listeners).
    pub sni: Option<Arc<str>>,
    /// When ([`crate::clock::now_ms`]) the connection last had no request
    /// in flight: it opened, or its last request finished. HTTP/2's
    /// `client_idle` counts from here, so frames that carry no request
    /// (PING, SETTINGS, WINDOW_UPDATE) never keep a connection open.
    pub quiet_since: AtomicU64,
    /// HTTP/2: the places for requests at backends
    /// (`limits.http2_max_backend_requests`), set when the connection
    /// turns out to be HTTP/2. An HTTP/1.1 connection has one request at a
    /// time and needs none (boxed: a parked HTTP/1.1 connection pays 8
    /// bytes for it, not the semaphore's size).
    pub backend_slots: OnceLock<Box<tokio::sync::Semaphore>>,
}

impl ConnInfo {
    /// A connection on `listener` from `peer`, with nothing in flight yet.
    pub fn new(listener: Arc<str>, peer: SocketAddr) -> Self {
        Self {
            listener,
            peer,
            local: None,
            in_flight: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            waiting: AtomicBool::new(false),
            parking: AtomicBool::new(false),
            body_open: AtomicBool::new(false),
            edge: Arc::new(edge::Edge::default()),
            sni: None,
            quiet_since: AtomicU64::new(crate::clock::now_ms()),
            backend_slots: OnceLock::new(),
        }
    }

    /// With the balancer's end of the connection.
    pub fn with_local(mut self, local: Option<SocketAddr>) -> Self {
        self.local = local;
        self
    }

    /// With the listener's settings and the TLS server name.
    pub fn with_edge(mut self, edge: Arc<edge::Edge>, sni: Option<Arc<str>>) -> Self {
        self.edge = edge;
        self.sni = sni;
        self
    }
}

/// One request in flight on a connection, from arrival until its response
/// body is done (so a long-poll or a slow stream never counts as idle);
/// on HTTP/2 it also holds the request's place at the backends, if it took
/// one, for as long.
#[derive(Debug)]
pub struct InFlight {
    conn: Arc<ConnInfo>,
    /// Holds one of `conn.backend_slots` (given back on drop).
    slot: bool,
}

impl InFlight {
    fn new(conn: &Arc<ConnInfo>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        conn.requests.fetch_add(1, Ordering::Relaxed);
        Self {
            conn: Arc::clone(conn),
            slot: false,
        }
    }

    /// Takes one of the connection's places at the backends (HTTP/2;
    /// always granted on HTTP/1.1), waiting at most `wait` for one. A
    /// stream that has to wait is counted and logged (at most once per
    /// 10 s); one that waits in vain is a 503.
    async fn take_backend_slot(
        &mut self,
        wait: std::time::Duration,
        metrics: Option<&crate::metrics::Metrics>,
    ) -> Result<(), ProxyError> {
        let Some(slots) = self.conn.backend_slots.get() else {
            return Ok(());
        };
        let permit = match slots.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                let conn = &self.conn;
                let trip = |limit: &str| {
                    if let Some(m) = metrics {
                        m.http2_limit(&conn.listener, limit);
                    }
                };
                trip("backend_requests_queued");
                if let Some(unlogged) = H2_SLOTS_WARN.should_warn() {
                    tracing::warn!(
                        listener = &*conn.listener,
                        peer = %conn.peer,
                        queued_since_last_line = unlogged,
                        "HTTP/2 connection at limits.http2_max_backend_requests: streams wait"
                    );
                }
                match tokio::time::timeout(wait, slots.acquire()).await {
                    Ok(Ok(p)) => p,
                    // Timed out (or closed: never, the semaphore lives with
                    // the connection).
                    _ => {
                        trip("backend_requests_refused");
                        return Err(ProxyError::ConnectionBusy(wait));
                    }
                }
            }
        };
        permit.forget();
        self.slot = true;
        Ok(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.slot {
            if let Some(slots) = self.conn.backend_slots.get() {
                slots.add_permits(1);
            }
        }
        if self.conn.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.conn
                .quiet_since
                .store(crate::clock::now_ms(), Ordering::Relaxed);
        }
    }
}

/// The log line of streams waiting for a place at the backends, process
/// wide: at most once per 10 s.
static H2_SLOTS_WARN: crate::logging::WarnEvery = crate::logging::WarnEvery::new();

impl Proxy {
    /// Where this snapshot's buffer files go, and the budget they share.
    pub(crate) fn files(&self, snap: &Snapshot) -> buffering::Files {
        buffering::Files {
            dir: Arc::clone(&snap.buffer_dir),
            budget: Arc::clone(&self.buffer_files),
            total: snap.limits.buffer_files_total,
        }
    }

    /// Handles one request; failures become error responses, never panics.
    pub async fn handle<B>(&self, conn: &Arc<ConnInfo>, mut req: Request<B>) -> Response<ProxyBody>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let mut in_flight = InFlight::new(conn);

        let snap = self.snapshot.load_full();
        // Counted before the balancer adds its own.
        let fields = req.headers().len();
        let request_id = headers::ensure_request_id(req.headers_mut());
        let mut log = AccessLog {
            request_id: request_id.clone(),
            listener: Arc::clone(&conn.listener),
            client: conn.peer.ip(),
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            status: StatusCode::OK,
            pool: None,
            backend: None,
            start: Instant::now(),
            error: None,
            done: false,
            pool_metrics: None,
            backend_ref: None,
            upload: None,
        };

        // Each step returns the error response itself on failure. The
        // steps run here, not in a nested async fn: every level of
        // nesting moves the child future into the parent's state.
        macro_rules! or_respond {
            ($step:expr) => {
                match $step {
                    Ok(v) => v,
                    Err(e) => return error_response(e, log, request_id),
                }
            };
        }
        if let Some(redirect) = &conn.edge.redirect {
            if redirect.redirects(req.uri().path()) {
                let authority = match req.uri().authority() {
                    Some(a) => Some(a.as_str()),
                    None => req
                        .headers()
                        .get(header::HOST)
                        .and_then(|v| v.to_str().ok()),
                };
                let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
                return match edge::redirect_location(redirect, authority, target) {
                    Some(location) => edge::redirect_response(location, log),
                    None => error_response(ProxyError::BadHost, log, request_id),
                };
            }
        }
        let limits = &snap.limits;
        // hyper holds HTTP/1.1 heads to `max_headers` itself; HTTP/2 ones
        // only to their size (`max_header_list_size`).
        if fields > limits.max_headers {
            return error_response(
                ProxyError::TooManyHeaders(limits.max_headers),
                log,
                request_id,
            );
        }
        let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        if target > limits.max_request_line {
            return error_response(
                ProxyError::UriTooLong(limits.max_request_line),
                log,
                request_id,
            );
        }
        // A declared length over the limit is refused before any backend
        // is picked (the unread body then closes the connection).
        if limits.max_request_body > 0 && req.body().size_hint().lower() > limits.max_request_body {
            return error_response(
                ProxyError::BodyLimit(crate::upstream::BodyLimit::TooLarge(
                    limits.max_request_body,
                )),
                log,
                request_id,
            );
        }
        let Routed {
            pool,
            host,
            upgrades,
        } = or_respond!(forward::route(&snap, &conn.listener, &req));
        log.pool = Some(Arc::clone(&pool.name));
        log.pool_metrics = pool.metrics.clone();
        let client = client_ip::client_ip(conn.peer.ip(), req.headers(), &snap.trusted_proxies);
        log.client = client;
        let addrs = forward::ClientAddrs::of(client, conn);
        let upgrade = Upgrade::of(&mut req, &upgrades);
        let (mut parts, body) = req.into_parts();
        let fwd = headers::Forwarding {
            peer: conn.peer.ip(),
            trusted: client_ip::is_trusted(conn.peer.ip(), &snap.trusted_proxies),
            client,
            client_header: snap.client_ip_header.as_ref(),
            proto: conn.edge.proto,
        };
        headers::rewrite_request(&mut parts, &fwd, host.as_ref(), upgrade.client.is_some());
        conn.edge
            .add_connection_facts(&mut parts.headers, conn.sni.as_deref(), fwd.trusted);
        let body = client_body::Limited::new(body, limits);
        let mut body = or_respond!(
            ClientBody::read(
                body,
                &pool.retry,
                client_body::BodyBuffering {
                    memory: pool.buffer_body,
                    file: pool.buffering.body_file,
                    dir: &snap.buffer_dir,
                    budget: &self.buffer_files,
                    total: snap.limits.buffer_files_total,
                    counters: pool
                        .metrics
                        .as_ref()
                        .map(|m| (&m.buffer_files[0], &m.buffer_files_refused[0])),
                },
                snap.timeouts.request_header
            )
            .await
        );
        // HTTP/2: one connection's requests at backends are capped; the
        // place is held until the response is done (with `in_flight`).
        or_respond!(
            in_flight
                .take_backend_slot(limits.http2_backend_queue_timeout, self.metrics.as_deref())
                .await
        );
        // Lent, not moved: the attempts' future stays small.
        let answered = or_respond!(
            self.attempts(&snap, &pool, &mut parts, &mut body, &addrs, &mut log)
                .await
        );
        or_respond!(self.respond(&snap, &pool, answered, upgrade, &mut log, in_flight))
    }
}

fn error_response(
    e: ProxyError,
    mut log: AccessLog,
    request_id: HeaderValue,
) -> Response<ProxyBody> {
    let status = e.status();
    log.status = status;
    log.error = Some(e.cause());
    match e.side() {
        Side::Downstream => {
            tracing::debug!(request_id = request_id.to_str().unwrap_or("-"), error = %e, "request refused")
        }
        Side::Upstream | Side::Internal => tracing::warn!(
            request_id = request_id.to_str().unwrap_or("-"),
            pool = log.pool.as_deref().unwrap_or("-"),
            backend = log.backend.as_deref().unwrap_or("-"),
            error = %e,
            "request failed"
        ),
    }
    let mut resp = Response::new(ProxyBody::local(e.body(), Some(log)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(headers::X_REQUEST_ID.clone(), request_id);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}
