//! The request path: one client request in, one response out.
//!
//! ```text
//! request ─▶ load snapshot ─▶ route ─▶ pick backend ─▶ rewrite headers ─▶ pooled upstream
//!                 │             │ 404        │ 503                             │ 502 / 504
//!                 │             ▼            ▼                                 ▼
//!                 │          local error response (short body, access log with the cause)
//!                 ▼
//!   response ◀─ strip hop-by-hop ◀─ response head ◀──────────────────────────────┘
//!      │           (101 ⇒ tunnel task joins the two sockets)
//!      ▼
//!   body streams through ProxyBody; access log when it ends
//! ```

mod body;
pub mod client_ip;
pub mod error;
pub mod headers;
mod lazy_copy;
mod request_body;
mod tunnel;
pub mod upstream;
pub mod ws_frames;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;

pub use body::{AccessLog, ProxyBody};
pub use error::ProxyError;
pub use request_body::{ClientBody, RequestBody};
pub use upstream::UpstreamBody;

use crate::runtime::{normalize_host, Backend, Pool, Snapshot};
use crate::select::SelectionContext;
use crate::server::activity::{now_ms, LastActivity};

/// The error type of the bodies the proxy passes on.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
}

/// What the proxy knows about the client connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    /// Requests being handled on this connection; the idle timer waits for zero.
    pub in_flight: AtomicUsize,
    /// Requests that arrived on this connection so far.
    pub requests: AtomicUsize,
    /// HTTP/1.1: hyper's last read found nothing (it waits for the client).
    pub waiting: AtomicBool,
    /// HTTP/1.1: hyper is being stopped between requests; its shutdown of
    /// the socket must leave the socket open.
    pub parking: AtomicBool,
}

/// One request in flight on a connection, from arrival until its response
/// body is done (so a long-poll or a slow stream never counts as idle).
#[derive(Debug)]
pub struct InFlight(Arc<ConnInfo>);

impl InFlight {
    fn new(conn: &Arc<ConnInfo>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        conn.requests.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(conn))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Proxy {
    /// Handles one request; failures become error responses, never panics.
    pub async fn handle(
        &self,
        conn: &Arc<ConnInfo>,
        mut req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let in_flight = InFlight::new(conn);

        let snap = self.snapshot.load_full();
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

        match self.forward(&snap, conn, req, &mut log, in_flight).await {
            Ok(resp) => resp,
            Err(e) => error_response(e, log, request_id),
        }
    }

    async fn forward(
        &self,
        snap: &Snapshot,
        conn: &ConnInfo,
        mut req: Request<Incoming>,
        log: &mut AccessLog,
        in_flight: InFlight,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // Checked before routing: CONNECT's authority-form target has no
        // path a route could match, and the answer is the same anyway.
        if req.method() == Method::CONNECT {
            return Err(ProxyError::MethodNotAllowed);
        }
        // HTTP/2 puts the host in the URI (:authority); HTTP/1.1 in Host.
        let host_value: Option<HeaderValue> = match req.uri().authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None => req.headers().get(header::HOST).cloned(),
        };
        let host = host_value
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(normalize_host);
        let pool = snap
            .routes
            .find(&conn.listener, host.as_deref(), req.uri().path())
            .ok_or(ProxyError::NoRoute)?
            .clone();
        log.pool = Some(Arc::clone(&pool.name));
        log.pool_metrics = pool.metrics.clone();

        let client = client_ip::client_ip(conn.peer.ip(), req.headers(), &snap.trusted_proxies);
        log.client = client;

        let upgrade =
            req.version() == Version::HTTP_11 && headers::is_upgrade_request(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let websocket = upgrade
            && req
                .headers()
                .get(header::UPGRADE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));

        let (mut parts, body) = req.into_parts();
        let from_h2 = parts.version == Version::HTTP_2;
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        // The balancer already answered any `Expect: 100-continue` itself.
        parts.headers.remove(header::EXPECT);
        let forwarded_host = host_value.as_ref().and_then(|v| v.to_str().ok());
        headers::add_forwarded(&mut parts.headers, conn.peer.ip(), "http", forwarded_host);
        if let Some(h) = host_value.clone() {
            parts.headers.insert(header::HOST, h);
        }
        if from_h2 {
            join_cookies(&mut parts.headers);
        }

        let timeouts = snap.timeouts;
        let mut body = client_body(body, &pool.retry, timeouts.request_header).await?;
        let idempotent = is_idempotent(&parts.method);
        pool.retry_budget.deposit();

        // One attempt per backend; a failure that left the request unseen
        // (or unseen enough, for idempotent methods) tries another backend.
        let mut tried: Vec<usize> = Vec::new();
        let mut last_error: Option<ProxyError> = None;
        let (guard, set_cookie, resp) = loop {
            let ctx = SelectionContext {
                client_ip: client,
                headers: &parts.headers,
                uri: &parts.uri,
            };
            let Some((index, backend, set_cookie)) = pool.select(&ctx, &tried) else {
                return Err(last_error.unwrap_or_else(|| ProxyError::NoBackend {
                    pool: pool.name.to_string(),
                }));
            };
            let backend: Arc<Backend> = Arc::clone(backend);
            let set_cookie: Option<HeaderValue> = set_cookie.cloned();
            log.backend = Some(Arc::clone(&backend.id));
            log.backend_ref = Some(Arc::clone(&backend));

            let progress = LastActivity::new();
            let Some((attempt_body, upload)) = body.attempt(progress.clone()) else {
                return Err(last_error
                    .unwrap_or_else(|| ProxyError::Upstream("request body already sent".into())));
            };
            let more_possible = body.replayable() && tried.len() < pool.retry.attempts as usize;
            let mut attempt = Request::new(attempt_body);
            *attempt.method_mut() = parts.method.clone();
            *attempt.uri_mut() = parts.uri.clone();
            *attempt.version_mut() = Version::HTTP_11;
            *attempt.headers_mut() = if more_possible {
                parts.headers.clone()
            } else {
                std::mem::take(&mut parts.headers)
            };

            let guard = backend.open();
            let result = await_response(
                backend.upstream.send(attempt, &backend.authority),
                &progress,
                timeouts.response_header,
            )
            .await;
            match result {
                Ok(resp) => {
                    log.upload = Some(Arc::clone(&upload));
                    if pool.ejection.on_5xx && resp.status().is_server_error() {
                        note_failure(&pool, &backend, log);
                    } else {
                        backend.record_success();
                    }
                    break (guard, set_cookie, resp);
                }
                Err(e) => {
                    drop(guard);
                    // Failures the client caused are not the backend's.
                    if upload.client_failed() {
                        return Err(ProxyError::ClientBody(e.to_string()));
                    }
                    if matches!(e, ProxyError::ResponseTimeout(_)) && !upload.finished() {
                        return Err(ProxyError::ClientTimeout(timeouts.response_header));
                    }
                    note_failure(&pool, &backend, log);
                    let retryable = match &e {
                        // Nothing reached the backend.
                        ProxyError::Connect(_) | ProxyError::ConnectTimeout(_) => true,
                        // The connection broke before any response byte.
                        ProxyError::Upstream(_) => idempotent,
                        _ => false,
                    };
                    if retryable && more_possible {
                        if pool.retry_budget.withdraw() {
                            if let Some(m) = &pool.metrics {
                                m.retries.inc();
                            }
                            tracing::info!(
                                request_id = log.request_id.to_str().unwrap_or("-"),
                                pool = &*pool.name,
                                backend = &*backend.id,
                                error = %e,
                                "retrying on another backend"
                            );
                            tried.push(index);
                            last_error = Some(e);
                            continue;
                        }
                        if let Some(m) = &pool.metrics {
                            m.retries_refused.inc();
                        }
                        tracing::warn!(
                            request_id = log.request_id.to_str().unwrap_or("-"),
                            pool = &*pool.name,
                            "retry budget exhausted: not retrying"
                        );
                    }
                    return Err(e);
                }
            }
        };
        log.status = resp.status();
        if let Some(m) = &pool.metrics {
            m.response_header.observe(log.start.elapsed().as_secs_f64());
        }

        if let (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) =
            (client_upgrade, resp.status())
        {
            let (mut parts, mut body) = resp.into_parts();
            let Some(upstream_upgrade) = body.take_upgrade() else {
                return Err(ProxyError::Upstream("101 without a socket".into()));
            };
            headers::strip_hop_by_hop(&mut parts.headers, true);
            add_request_id(&mut parts.headers, &log.request_id);
            if let Some(c) = &set_cookie {
                parts.headers.append(header::SET_COOKIE, c.clone());
            }
            let end = tunnel::TunnelEnd {
                websocket,
                close_code: snap.drain_close_code,
                shutdown: self.close_tunnels.clone(),
                metrics: pool.metrics.clone(),
            };
            self.tasks.spawn(tunnel::run(
                client_upgrade,
                upstream_upgrade,
                guard,
                timeouts.websocket_idle,
                end,
                log.request_id.to_str().unwrap_or("-").to_string(),
            ));
            log.emit(0, true);
            drop(in_flight);
            return Ok(Response::from_parts(parts, ProxyBody::empty()));
        }

        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, false);
        add_request_id(&mut parts.headers, &log.request_id);
        if let Some(c) = set_cookie {
            parts.headers.append(header::SET_COOKIE, c);
        }
        let log = log.take();
        Ok(Response::from_parts(
            parts,
            ProxyBody::upstream(body, log, guard, in_flight),
        ))
    }
}

/// Methods whose requests may be sent twice (RFC 9110 9.2.2).
pub(crate) fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Buffers a small body of known length (so it can be replayed), or keeps
/// the stream (one attempt only).
async fn client_body(
    body: Incoming,
    retry: &config::RetryConfig,
    limit: Duration,
) -> Result<ClientBody, ProxyError> {
    use http_body::Body as _;
    if body.is_end_stream() {
        return Ok(ClientBody::Empty);
    }
    match body.size_hint().exact() {
        Some(n) if retry.attempts > 0 && n <= retry.max_body => {
            use http_body_util::BodyExt;
            match tokio::time::timeout(limit, body.collect()).await {
                Ok(Ok(c)) => Ok(ClientBody::Full(c.to_bytes())),
                Ok(Err(e)) => Err(ProxyError::ClientBody(e.to_string())),
                Err(_) => Err(ProxyError::ClientTimeout(limit)),
            }
        }
        _ => Ok(ClientBody::Stream(Some(body))),
    }
}

/// Passive outlier detection: one more failure of `backend`.
fn note_failure(pool: &Pool, backend: &Backend, log: &AccessLog) {
    if let Some(duration) = backend.record_failure(&pool.ejection, || pool.may_eject()) {
        // Two backends may cross their thresholds at the same moment; the
        // cap is checked again now that this one is out.
        if pool.ejected_share_exceeded() {
            backend.cancel_ejection();
            return;
        }
        tracing::warn!(
            request_id = log.request_id.to_str().unwrap_or("-"),
            pool = &*pool.name,
            backend = &*backend.id,
            ?duration,
            ejections = backend.ejections_total(),
            "backend ejected"
        );
    }
}

/// Waits for the response head. The timeout counts from the last upload
/// progress, so a long upload to a backend that reads it all first is not
/// cut off while bytes are still moving.
async fn await_response<F>(
    fut: F,
    progress: &LastActivity,
    timeout: Duration,
) -> Result<Response<UpstreamBody>, ProxyError>
where
    F: std::future::Future<Output = Result<Response<UpstreamBody>, ProxyError>>,
{
    tokio::pin!(fut);
    let limit = timeout.as_millis() as u64;
    loop {
        let waited = now_ms().saturating_sub(progress.get());
        let remaining = Duration::from_millis(limit.saturating_sub(waited));
        match tokio::time::timeout(remaining, &mut fut).await {
            Ok(r) => return r,
            Err(_) if now_ms().saturating_sub(progress.get()) >= limit => {
                return Err(ProxyError::ResponseTimeout(timeout))
            }
            Err(_) => continue,
        }
    }
}

/// HTTP/2 may split `cookie` into several fields; HTTP/1.1 needs one (RFC 9113 8.2.3).
fn join_cookies(headers: &mut http::HeaderMap) {
    if headers.get_all(header::COOKIE).iter().count() > 1 {
        let joined = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join("; ");
        if let Ok(v) = HeaderValue::from_str(&joined) {
            headers.insert(header::COOKIE, v);
        }
    }
}

fn add_request_id(headers: &mut http::HeaderMap, id: &HeaderValue) {
    if !headers.contains_key(&headers::X_REQUEST_ID) {
        headers.insert(headers::X_REQUEST_ID.clone(), id.clone());
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
    match &e {
        ProxyError::NoRoute
        | ProxyError::MethodNotAllowed
        | ProxyError::ClientBody(_)
        | ProxyError::ClientTimeout(_) => {
            tracing::debug!(request_id = request_id.to_str().unwrap_or("-"), error = %e, "request refused")
        }
        _ => tracing::warn!(
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
