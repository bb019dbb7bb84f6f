//! The steps of one request, in the order `Proxy::handle` runs them:
//! [`route`], the head rewritten ([`headers::rewrite_request`]), the body
//! ([`ClientBody::read`]), the
//! attempts on backends (`Proxy::attempts`, with [`super::retry`] deciding
//! after each failure), and the response (`Proxy::respond`, or a tunnel
//! after `101`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;

use super::retry::{self, Decision};
use super::{buffering, headers, tunnel, AccessLog, ClientBody, InFlight, ProxyBody};
use super::{Proxy, ProxyError};
use crate::clock::{now_ms, Now};
use crate::runtime::{normalize_host, Pool, Snapshot, Upgrades};
use crate::select::SelectionContext;
use crate::upstream::ejection::{Change, Event, Out};
use crate::upstream::{
    is_idempotent, Backend, OpenGuard, UploadProgress, UpstreamBody, UpstreamError,
};

/// Where a request goes, and the authority it named.
#[derive(Debug)]
pub(super) struct Routed {
    pub pool: Arc<Pool>,
    /// HTTP/2's `:authority` or HTTP/1.1's `Host`, as sent.
    pub host: Option<HeaderValue>,
    /// The route's `upgrades`.
    pub upgrades: Upgrades,
}

/// Finds the pool for a request on `listener` by host and path.
pub(super) fn route<B>(
    snap: &Snapshot,
    listener: &str,
    req: &Request<B>,
) -> Result<Routed, ProxyError> {
    // Checked before routing: CONNECT's authority-form target has no
    // path a route could match, and the answer is the same anyway.
    if req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    // HTTP/2 puts the host in the URI (:authority); HTTP/1.1 in Host. An
    // HTTP/1.1 request has exactly one Host (RFC 9112 3.2), even with an
    // absolute-form target, whose authority then wins.
    if req.version() == Version::HTTP_11 {
        let mut hosts = req.headers().get_all(header::HOST).iter();
        if hosts.next().is_none() || hosts.next().is_some() {
            return Err(ProxyError::BadHost);
        }
    }
    let host: Option<HeaderValue> = match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    };
    // What routes is what the backend is sent: one validated authority,
    // so `game.example.com:1@evil.example` cannot route as one host and
    // arrive as another.
    if let Some(h) = &host {
        if !valid_authority(h.as_bytes()) {
            return Err(ProxyError::BadHost);
        }
    }
    let normalized = host
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .map(normalize_host);
    let route = snap
        .routes
        .find(listener, normalized.as_deref(), req.uri().path())
        .ok_or(ProxyError::NoRoute)?;
    Ok(Routed {
        pool: Arc::clone(&route.pool),
        host,
        upgrades: route.upgrades.clone(),
    })
}

/// `host[:port]` as RFC 9110 4.2.3 allows it in Host: a reg-name (no
/// userinfo, no `@`), an IPv4 address or a bracketed IPv6 literal, and an
/// optional port of digits.
pub(super) fn valid_authority(a: &[u8]) -> bool {
    let (host, port) = if a.first() == Some(&b'[') {
        let Some(end) = a.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &a[1..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return false;
        }
        match &a[end + 1..] {
            [] => (&a[..0], None),
            [b':', port @ ..] => (&a[..0], Some(port)),
            _ => return false,
        }
    } else {
        match a.iter().rposition(|&b| b == b':') {
            Some(i) => (&a[..i], Some(&a[i + 1..])),
            None => (a, None),
        }
    };
    let host_ok = host.iter().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
            )
    });
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    host_ok && port_ok && (a.first() == Some(&b'[') || !host.is_empty())
}

/// Who a request is from and where it arrived: what a PROXY header to a
/// `send_proxy_protocol` pool names.
#[derive(Debug, Clone, Copy)]
pub(super) struct ClientAddrs {
    /// The client address the balancer computed (`client_ip`: after
    /// trusted proxies and the PROXY header in), with the connection's
    /// port when that address is the peer's; 0 when it came from
    /// `X-Forwarded-For`, which carries none.
    pub source: SocketAddr,
    /// The balancer's address the connection came in on.
    pub destination: SocketAddr,
}

impl ClientAddrs {
    pub(super) fn of(client: IpAddr, conn: &super::ConnInfo) -> Self {
        let port = if client == conn.peer.ip() {
            conn.peer.port()
        } else {
            0
        };
        let unknown = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0);
        Self {
            source: SocketAddr::new(client, port),
            destination: conn.local.unwrap_or(unknown),
        }
    }
}

/// The client's side of an upgrade it asked for. Only the protocols its
/// route allows (`route.upgrades`, WebSocket by default) are honoured: the
/// request goes upstream offering those alone, and any other `Upgrade`
/// token (h2c, a protocol the route does not list) is stripped with the
/// other hop-by-hop headers; with none left, the request goes on as a
/// plain one. So nothing but an allowed handshake can become a tunnel.
pub(super) struct Upgrade {
    /// Resolves to the client's socket once the 101 is sent.
    pub client: Option<OnUpgrade>,
    /// The protocol names (lower-case, without `/version`) the request
    /// goes upstream offering: what a 101 may switch to. Empty: no upgrade.
    offered: Vec<Box<str>>,
    /// The `Sec-WebSocket-Accept` a genuine 101 to this request's
    /// WebSocket handshake carries (when `websocket` is offered).
    accept: Option<HeaderValue>,
}

/// RFC 6455 4.2.2: base64(SHA-1(key + this GUID)).
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn websocket_accept(key: &[u8]) -> Option<HeaderValue> {
    use base64::Engine;
    use sha1::Digest;
    let digest = sha1::Sha1::new()
        .chain_update(key)
        .chain_update(WEBSOCKET_GUID)
        .finalize();
    HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(digest)).ok()
}

/// A protocol in `Upgrade` (RFC 9110 7.8): `name` or `name/version`, both
/// tokens; its name, or `None` when it is not one.
fn protocol_name(token: &str) -> Option<&str> {
    let is_token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let (name, version) = match token.split_once('/') {
        Some((n, v)) => (n, Some(v)),
        None => (token, None),
    };
    (is_token(name) && version.is_none_or(is_token)).then_some(name)
}

impl Upgrade {
    /// What `req` asks for, given its route's `allowed` protocols; the
    /// request's `Upgrade` is rewritten to the allowed protocols alone.
    pub(super) fn of<B>(req: &mut Request<B>, allowed: &Upgrades) -> Self {
        let none = Self {
            client: None,
            offered: Vec::new(),
            accept: None,
        };
        if req.version() != Version::HTTP_11 || !headers::is_upgrade_request(req.headers()) {
            return none;
        }
        let accept = req
            .headers()
            .get(header::SEC_WEBSOCKET_KEY)
            .and_then(|k| websocket_accept(k.as_bytes()));
        let mut kept: Vec<&str> = Vec::new();
        let mut offered: Vec<Box<str>> = Vec::new();
        let tokens = req
            .headers()
            .get_all(header::UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim);
        for token in tokens {
            let Some(name) = protocol_name(token) else {
                continue;
            };
            // A WebSocket handshake is `websocket` with a key, exactly.
            let websocket = name.eq_ignore_ascii_case("websocket");
            if websocket && (token.len() != name.len() || accept.is_none()) {
                continue;
            }
            let lower = name.to_ascii_lowercase();
            if allowed.allows(name) && !offered.iter().any(|o| **o == *lower) {
                kept.push(token);
                offered.push(lower.into());
            }
        }
        if offered.is_empty() {
            return none;
        }
        let Ok(value) = HeaderValue::from_str(&kept.join(", ")) else {
            return none;
        };
        let websocket = offered.iter().any(|o| &**o == "websocket");
        req.headers_mut().insert(header::UPGRADE, value);
        Self {
            client: Some(hyper::upgrade::on(req)),
            offered,
            accept: accept.filter(|_| websocket),
        }
    }

    /// Whether a backend's `101` really answers this request: it asked
    /// for an upgrade, and the 101 names exactly one of the protocols it
    /// offered (by name; a version is not compared); for `websocket`, with
    /// the matching `Sec-WebSocket-Accept`. `Ok(true)`: the tunnel is a
    /// WebSocket (frames, limits, Close on drain); `Ok(false)`: raw bytes.
    pub(super) fn accepts(&self, head: &http::response::Parts) -> Result<bool, &'static str> {
        if self.offered.is_empty() {
            return Err("101 to a request that asked for no upgrade");
        }
        let mut values = head.headers.get_all(header::UPGRADE).iter();
        let token = match (values.next(), values.next()) {
            (Some(v), None) => v.to_str().map(str::trim).unwrap_or(""),
            _ => "",
        };
        let Some(name) = protocol_name(token) else {
            return Err("101 without one protocol in Upgrade");
        };
        if !self.offered.iter().any(|o| o.eq_ignore_ascii_case(name)) {
            return Err("101 to a protocol the request did not ask for");
        }
        if !name.eq_ignore_ascii_case("websocket") {
            return Ok(false);
        }
        if token.len() != name.len() {
            return Err("101 without Upgrade: websocket");
        }
        match &self.accept {
            Some(expected) if head.headers.get(header::SEC_WEBSOCKET_ACCEPT) == Some(expected) => {
                Ok(true)
            }
            _ => Err("101 with a wrong Sec-WebSocket-Accept"),
        }
    }
}

/// A response head from a backend, with what it holds.
pub(super) struct Answered {
    guard: OpenGuard,
    set_cookie: Option<HeaderValue>,
    resp: Response<UpstreamBody>,
}

impl Proxy {
    /// One attempt per backend until one answers with a response head or
    /// [`retry::decide`] gives up.
    pub(super) async fn attempts(
        &self,
        snap: &Snapshot,
        pool: &Pool,
        parts: &mut http::request::Parts,
        body: &mut ClientBody,
        client: &ClientAddrs,
        log: &mut AccessLog,
    ) -> Result<Answered, ProxyError> {
        let timeouts = snap.timeouts;
        let idempotent = is_idempotent(&parts.method);
        pool.retry_budget.deposit();
        let mut tried: Vec<usize> = Vec::new();
        let mut last_error: Option<ProxyError> = None;
        loop {
            let ctx = SelectionContext {
                client_ip: client.source.ip(),
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

            let Some((attempt_body, upload)) = body.attempt() else {
                // A streamed body goes once; `retry::decide` never retries
                // one, so this is the previous attempt's failure.
                return Err(last_error.unwrap_or_else(|| {
                    ProxyError::Upstream(UpstreamError::Upload("request body already sent".into()))
                }));
            };
            let more_possible = body.replayable() && (tried.len() as u32) < pool.retry.attempts;
            let mut attempt = Request::new(attempt_body);
            *attempt.method_mut() = parts.method.clone();
            *attempt.uri_mut() = parts.uri.clone();
            *attempt.version_mut() = Version::HTTP_11;
            *attempt.headers_mut() = if more_possible {
                parts.headers.clone()
            } else {
                std::mem::take(&mut parts.headers)
            };

            let guard = match pool.capacity {
                None => backend.open(),
                Some(cap) => match backend.try_open(cap.per_backend) {
                    Some(g) => g,
                    None => queue_for(pool, &backend, cap).await?,
                },
            };
            // With a PROXY header, the connection is this client's alone.
            let settings = pool.upstream.for_client(client.source, client.destination);
            let sent = backend
                .connections
                .send(attempt, &backend.authority, &settings);
            let result = await_response(sent, &upload, timeouts.response_header)
                .await
                .map_err(|e| {
                    // Failures the client caused are not the backend's. (A
                    // response timeout never is: the clock stops while the
                    // upload waits for the client.)
                    if let Some(limit) = upload.limit() {
                        ProxyError::BodyLimit(limit)
                    } else if upload.client_failed() {
                        ProxyError::ClientBody(e.to_string())
                    } else {
                        e
                    }
                });
            if let Some(event) = retry::event(result.as_ref().map(|r| r.status()), pool.on_5xx) {
                report(pool, &backend, event, log);
            }
            // A body cut off for a limit is the client's failure, even if
            // the backend, seeing the body end early, answered it.
            let result = match (result, upload.limit()) {
                (Ok(_), Some(limit)) => Err(ProxyError::BodyLimit(limit)),
                (r, _) => r,
            };
            let e = match result {
                Ok(resp) => {
                    log.upload = Some(upload);
                    return Ok(Answered {
                        guard,
                        set_cookie,
                        resp,
                    });
                }
                Err(e) => e,
            };
            drop(guard);
            let decision = retry::decide(
                &e,
                retry::Request {
                    idempotent,
                    replayable: body.replayable(),
                    retries: tried.len() as u32,
                    allowed: pool.retry.attempts,
                },
            );
            let from_budget = match decision {
                Decision::GiveUp => return Err(e),
                Decision::RetryFree => false,
                Decision::RetryFromBudget => true,
            };
            if from_budget && !pool.retry_budget.withdraw() {
                if let Some(m) = &pool.metrics {
                    m.retries_refused.inc();
                }
                tracing::warn!(
                    request_id = log.request_id.to_str().unwrap_or("-"),
                    pool = &*pool.name,
                    "retry budget exhausted: not retrying"
                );
                return Err(e);
            }
            if let Some(m) = &pool.metrics {
                m.retries.inc();
            }
            tracing::info!(
                request_id = log.request_id.to_str().unwrap_or("-"),
                pool = &*pool.name,
                backend = &*backend.id,
                error = %e,
                budget = from_budget,
                "retrying on another backend"
            );
            tried.push(index);
            last_error = Some(e);
        }
    }

    /// The response head goes back to the client: hop-by-hop headers out,
    /// `X-Request-Id` and the sticky cookie in; a `101` starts a tunnel.
    pub(super) fn respond(
        &self,
        snap: &Snapshot,
        pool: &Pool,
        answered: Answered,
        upgrade: Upgrade,
        log: &mut AccessLog,
        in_flight: InFlight,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Answered {
            guard,
            set_cookie,
            resp,
        } = answered;
        log.status = resp.status();
        if let Some(m) = &pool.metrics {
            m.response_header.observe(log.start.elapsed().as_secs_f64());
        }

        let (mut parts, mut body) = resp.into_parts();
        let mut websocket = false;
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            // Only a genuine answer to the client's own handshake becomes
            // a tunnel; anything else would hand the client a raw socket
            // to the backend.
            websocket = upgrade
                .accepts(&parts)
                .map_err(|why| ProxyError::Upstream(UpstreamError::Protocol(why.to_string())))?;
        }
        let tunnel = upgrade.client.is_some() && parts.status == StatusCode::SWITCHING_PROTOCOLS;
        headers::rewrite_response(&mut parts, tunnel, &log.request_id, set_cookie);
        if let (true, Some(client_upgrade)) = (tunnel, upgrade.client) {
            let Some(upstream_upgrade) = body.take_upgrade() else {
                return Err(ProxyError::Upstream(UpstreamError::Protocol(
                    "101 without a socket".into(),
                )));
            };
            let end = tunnel::TunnelEnd {
                websocket,
                close_code: snap.drain_close_code,
                shutdown: self.close_tunnels.clone(),
                metrics: pool.metrics.clone(),
                max_message: snap.limits.websocket_max_message,
                max_message_rate: snap.limits.websocket_max_message_rate,
                ping: snap.timeouts.websocket_ping,
            };
            self.tasks.spawn(tunnel::run(
                client_upgrade,
                upstream_upgrade,
                guard,
                snap.timeouts.websocket_idle,
                end,
                log.request_id.to_str().unwrap_or("-").to_string(),
            ));
            log.emit(0, true);
            drop(in_flight);
            return Ok(Response::from_parts(parts, ProxyBody::empty()));
        }

        let log = log.take();
        let ahead = pool.buffering.response;
        if ahead > 0 && !body.is_in_hand() {
            // Read ahead of the client (see `buffering`): the backend's
            // connection and its place are freed once it has sent it all.
            let ahead = buffering::Ahead {
                memory: ahead,
                file: pool.buffering.response_file,
                files: self.files(snap),
            };
            let counters = pool
                .metrics
                .as_ref()
                .map(|m| (m.buffer_files[1].clone(), m.buffer_files_refused[1].clone()));
            let pumped = buffering::pump(body, guard, ahead, counters);
            return Ok(Response::from_parts(
                parts,
                ProxyBody::pumped(pumped, log, in_flight),
            ));
        }
        Ok(Response::from_parts(
            parts,
            ProxyBody::upstream(body, log, guard, in_flight),
        ))
    }
}

/// Waits in the pool's queue for a place on `backend`, which is at
/// `max_connections_per_backend`; a full queue or a wait past
/// `queue_timeout` is a 503.
async fn queue_for(
    pool: &Pool,
    backend: &Arc<Backend>,
    cap: config::Capacity,
) -> Result<OpenGuard, ProxyError> {
    use std::sync::atomic::Ordering;
    struct Queued<'a>(&'a std::sync::atomic::AtomicUsize);
    impl Drop for Queued<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let full = || ProxyError::BackendFull {
        pool: pool.name.to_string(),
        backend: backend.id.to_string(),
    };
    if pool.queued.fetch_add(1, Ordering::Relaxed) >= cap.queue_size {
        pool.queued.fetch_sub(1, Ordering::Relaxed);
        return Err(full());
    }
    let _queued = Queued(&pool.queued);
    backend
        .open_within(cap.per_backend, cap.queue_timeout)
        .await
        .ok_or_else(full)
}

/// What `backend`'s traffic just showed goes into its ejection state
/// machine; an ejection that broke the pool's cap (other backends crossed
/// at the same moment) is taken back. Racing backends may all take theirs
/// back: the pool stays under the cap, and the next failure ejects again.
fn report(pool: &Pool, backend: &Backend, event: Event, log: &AccessLog) {
    let now = Now::lazy();
    let applied = backend
        .ejection
        .apply(event, &now, &pool.ejection, || pool.may_eject(&now));
    let Change::Ejected { cause, for_ } = applied.change else {
        return;
    };
    if cause == Out::Failures && pool.ejected_share_exceeded(&now) {
        backend.ejection.undo(&applied);
        return;
    }
    tracing::warn!(
        request_id = log.request_id.to_str().unwrap_or("-"),
        pool = &*pool.name,
        backend = &*backend.id,
        cause = cause.as_str(),
        until = match for_ {
            Some(d) => format!("{d:?} passed"),
            None => "a check passes".to_string(),
        },
        ejections = backend.ejection.total(),
        "backend ejected"
    );
}

/// Waits for the response head: at most `timeout` of the backend's time
/// ([`UploadProgress::backend_since`]). With the body in hand that is
/// `timeout` from the hand-over to the pool; with a streamed body, the
/// clock stands while the upload waits for the client (the upload limits
/// bound that), runs while the backend is slow to take a piece, and runs
/// from the end of the body without restarting: the client's bytes cannot
/// keep a silent backend's connection.
async fn await_response<F>(
    fut: F,
    upload: &UploadProgress,
    timeout: Duration,
) -> Result<Response<UpstreamBody>, ProxyError>
where
    F: std::future::Future<Output = Result<Response<UpstreamBody>, UpstreamError>>,
{
    tokio::pin!(fut);
    let limit = crate::clock::millis(timeout);
    let overdue = |since: u64| now_ms().saturating_sub(since) >= limit;
    loop {
        // Waiting for the client: look again within `timeout` (a stamp set
        // meanwhile is later than now, so the deadline is never overshot).
        let remaining = upload.backend_since().map_or(limit, |since| {
            limit.saturating_sub(now_ms().saturating_sub(since))
        });
        match tokio::time::timeout(Duration::from_millis(remaining), &mut fut).await {
            Ok(r) => return r.map_err(ProxyError::Upstream),
            Err(_) if upload.backend_since().is_some_and(overdue) => {
                return Err(ProxyError::ResponseTimeout(timeout))
            }
            Err(_) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{valid_authority, websocket_accept, Upgrade};
    use crate::runtime::Upgrades;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn asking(upgrade: &str, key: bool, allowed: &[&str]) -> (Upgrade, http::HeaderMap) {
        let mut req = http::Request::get("/")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", upgrade);
        if key {
            req = req.header("sec-websocket-key", KEY);
        }
        let mut req = req.body(()).unwrap();
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        let u = Upgrade::of(&mut req, &Upgrades::new(&allowed));
        (u, req.headers().clone())
    }

    fn switching(pairs: &[(&str, &str)]) -> http::response::Parts {
        let mut b = http::Response::builder().status(101);
        for (k, v) in pairs {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn only_the_routes_protocols_go_upstream() {
        let both = ["websocket", "mygame"];
        let (u, h) = asking("h2c, MyGame/2, irc", false, &both);
        assert!(u.client.is_some());
        assert_eq!(h["upgrade"], "MyGame/2", "h2c and irc are not offered");
        let (u, _) = asking("h2c", false, &both);
        assert!(u.client.is_none(), "nothing allowed: a plain request");
        let (u, _) = asking("mygame", false, &["websocket"]);
        assert!(u.client.is_none(), "not listed");
        // WebSocket needs its key, and no version.
        assert!(asking("websocket", false, &both).0.client.is_none());
        assert!(asking("websocket/13", true, &both).0.client.is_none());
        assert!(asking("websocket", true, &both).0.client.is_some());
        assert!(asking("websocket", true, &[]).0.client.is_none());
        // Junk tokens are dropped.
        let (u, h) = asking("my game, mygame", false, &both);
        assert!(u.client.is_some());
        assert_eq!(h["upgrade"], "mygame");
        // HTTP/2 requests never upgrade.
        let mut req = http::Request::get("/")
            .version(http::Version::HTTP_2)
            .header("connection", "upgrade")
            .header("upgrade", "mygame")
            .body(())
            .unwrap();
        let allowed = Upgrades::new(&["mygame".into()]);
        assert!(Upgrade::of(&mut req, &allowed).client.is_none());
    }

    #[test]
    fn a_101_must_name_one_offered_protocol() {
        let both = ["websocket", "mygame"];
        let (game, _) = asking("mygame", false, &both);
        assert_eq!(
            game.accepts(&switching(&[("upgrade", "MyGame")])),
            Ok(false)
        );
        assert_eq!(
            game.accepts(&switching(&[("upgrade", "mygame/3")])),
            Ok(false),
            "the version is not compared"
        );
        for bad in [
            &[("upgrade", "othergame")][..],
            &[("upgrade", "websocket"), ("sec-websocket-accept", ACCEPT)],
            &[("upgrade", "mygame, websocket")],
            &[("upgrade", "mygame"), ("upgrade", "mygame")],
            &[],
        ] {
            assert!(game.accepts(&switching(bad)).is_err(), "{bad:?}");
        }
        let (ws, _) = asking("websocket", true, &both);
        assert_eq!(
            ws.accepts(&switching(&[
                ("upgrade", "websocket"),
                ("sec-websocket-accept", ACCEPT)
            ])),
            Ok(true)
        );
        assert!(ws
            .accepts(&switching(&[
                ("upgrade", "websocket"),
                ("sec-websocket-accept", "x")
            ]))
            .is_err());
        assert!(ws.accepts(&switching(&[("upgrade", "mygame")])).is_err());
        let (plain, _) = asking("h2c", false, &both);
        assert!(plain.accepts(&switching(&[("upgrade", "h2c")])).is_err());
    }

    #[test]
    fn the_accept_of_rfc_6455s_example() {
        assert_eq!(
            websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ==").unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn authorities_that_route_are_the_ones_forwarded() {
        for ok in [
            "game.example.com",
            "game.example.com:8080",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "under_score.example",
        ] {
            assert!(valid_authority(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "game.example.com:1@evil.example",
            "user@game.example.com",
            "game.example.com:80:80",
            "game.example.com:http",
            "game.example.com:123456",
            "[::1",
            "[::1]x",
            "[]",
            "a b",
            "",
            ":80",
            "game.example.com/x",
        ] {
            assert!(!valid_authority(bad.as_bytes()), "{bad}");
        }
    }
}
