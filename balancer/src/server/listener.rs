//! One listening socket: accept, then one task per connection. The task
//! tells HTTP/2 (its preface) from HTTP/1.1 and serves the connection with
//! hyper, with upgrades.
//!
//! An HTTP/1.1 keep-alive connection is *parked* between requests, as nginx
//! does: once a response is done and hyper waits for the next request, hyper's
//! connection state (an 8 KiB read buffer, a write buffer, the dispatcher)
//! is dropped and only the socket is kept, waiting for readability. The next
//! request starts a fresh hyper connection on the same socket. So thousands
//! of idle keep-alive clients cost well under a KiB each, not tens of KiB.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::body_end::BodyEnd;
use super::conn_limits::{Admission, Refused, Slot};
use super::h2_frames::FloodMeter;
use super::h2_guard::FloodGuard;
use super::{ClientStream, ListenerSettings};
use crate::clock::instant_of;
use crate::proxy::{ConnInfo, Proxy};
use crate::socket::activity::{self, Activity, LastActivity};
use crate::socket::Prefixed;

/// What a prior-knowledge HTTP/2 (h2c) client sends first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long an idle connection asked to close may take before it is dropped.
const IDLE_CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// Client-side connection settings, from `[timeouts]` and `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnSettings {
    pub request_header: Duration,
    pub client_idle: Duration,
    /// A request head's size and field count (hyper answers 431 above).
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub http2_max_concurrent_streams: u32,
    /// Requests one HTTP/2 connection may have at backends at once.
    pub http2_max_backend_requests: u32,
    /// PING and SETTINGS frames an HTTP/2 client may send a second (0: any).
    pub http2_max_ping_rate: u32,
    pub http2_max_settings_rate: u32,
}

impl ConnSettings {
    pub fn new(t: &config::Timeouts, l: &config::Limits) -> Self {
        Self {
            request_header: t.request_header,
            client_idle: t.client_idle,
            max_header_bytes: l.max_header_bytes,
            max_headers: l.max_headers,
            http2_max_concurrent_streams: l.http2_max_concurrent_streams,
            http2_max_backend_requests: l.http2_max_backend_requests,
            http2_max_ping_rate: l.http2_max_ping_rate,
            http2_max_settings_rate: l.http2_max_settings_rate,
        }
    }

    fn of(snapshot: &crate::runtime::Snapshot) -> Self {
        Self::new(&snapshot.timeouts, &snapshot.limits)
    }
}

/// What every connection of one listener shares: rebuilt when a reload
/// changes the timeouts (connections keep the one they started with).
#[derive(Debug)]
struct Shared {
    proxy: Arc<Proxy>,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    settings: ConnSettings,
    shutdown: CancellationToken,
    /// The listener's open-connections gauge.
    open: Option<prometheus::IntGauge>,
}

impl Shared {
    fn new(
        proxy: &Arc<Proxy>,
        settings: ConnSettings,
        shutdown: &CancellationToken,
        open: Option<prometheus::IntGauge>,
    ) -> Arc<Self> {
        let mut h1 = http1::Builder::new();
        // hyper reads a head into a buffer of at most max_buf_size: a head
        // that does not fit is a 431, as is one with too many fields.
        h1.timer(TokioTimer::new())
            .header_read_timeout(settings.request_header)
            .max_buf_size(
                settings
                    .max_header_bytes
                    .max(config::limits::MIN_HEADER_BYTES as usize),
            )
            .max_headers(settings.max_headers)
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        // h2 answers a header list over this with 431 (and the stream is
        // reset) before a request exists: no backend hears of it.
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(settings.http2_max_concurrent_streams);
        Arc::new(Self {
            proxy: Arc::clone(proxy),
            h1,
            h2,
            settings,
            shutdown: shutdown.clone(),
            open,
        })
    }
}

/// One open client connection's hold on its listener's [`Shared`]; counts
/// the connection in the open-connections gauge, and holds its place under
/// `[limits]`, until it drops.
#[derive(Debug)]
struct Counted {
    shared: Arc<Shared>,
    /// Held for its drop; a PROXY header adds the client's address to it.
    slot: Slot,
}

impl Counted {
    fn new(shared: &Arc<Shared>, slot: Slot) -> Self {
        if let Some(g) = &shared.open {
            g.inc();
        }
        Self {
            shared: Arc::clone(shared),
            slot,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(g) = &self.shared.open {
            g.dec();
        }
    }
}

/// Accepts until `shutdown` fires, then stops accepting (the socket closes)
/// and asks every open connection to finish its in-flight requests and close.
pub async fn serve_listener(
    listener: TcpListener,
    name: Arc<str>,
    proxy: Arc<Proxy>,
    shutdown: CancellationToken,
    settings: Arc<arc_swap::ArcSwap<ListenerSettings>>,
) {
    let open_gauge = proxy.metrics.as_ref().map(|m| m.listener(&name));
    let refused = proxy.metrics.as_ref().map(|m| m.refused(&name));
    let mut shared = Shared::new(
        &proxy,
        ConnSettings::of(&proxy.snapshot.load()),
        &shutdown,
        open_gauge.clone(),
    );

    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the
                    // connections that hold the descriptors will close.
                    tracing::warn!(listener = &*name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Timeouts and limits come from the live config, so a reload
        // applies them to new connections.
        let snap = proxy.snapshot.load();
        let current = ConnSettings::of(&snap);
        if current != shared.settings {
            shared = Shared::new(&proxy, current, &shutdown, open_gauge.clone());
        }
        let listener_settings = settings.load_full();
        if let Some(pp) = &listener_settings.proxy_protocol {
            if !crate::proxy::client_ip::is_trusted(peer.ip(), &pp.trusted) {
                tracing::debug!(listener = &*name, %peer, "PROXY protocol listener: peer not trusted, closed");
                if let Some(m) = &proxy.metrics {
                    m.proxy_protocol(&name, "untrusted");
                }
                continue;
            }
        }
        // A peer that speaks for many clients (a trusted proxy, or a PROXY
        // protocol sender, whose clients are counted once their header
        // is read) is not limited per address.
        let speaks_for_others = listener_settings.proxy_protocol.is_some()
            || crate::proxy::client_ip::is_trusted(peer.ip(), &snap.trusted_proxies);
        let admission = Admission {
            max_total: snap.limits.max_connections,
            max_listener: listener_settings.max_connections,
            max_per_ip: if speaks_for_others {
                0
            } else {
                snap.limits.max_connections_per_ip
            },
        };
        drop(snap);
        let slot = match proxy
            .connections
            .admit(&listener_settings.open, peer.ip(), admission)
        {
            Ok(slot) => slot,
            Err(why) => {
                refuse(
                    stream,
                    &listener_settings,
                    why,
                    &name,
                    peer,
                    &proxy,
                    refused.as_ref(),
                );
                continue;
            }
        };
        // Spawned as is, not wrapped in another async block, which would
        // hold the future twice and double every connection's task size.
        let served = serve_connection(
            stream,
            peer,
            Arc::clone(&name),
            listener_settings,
            Counted::new(&shared, slot),
        );
        proxy.tasks.spawn(served);
    }
    tracing::info!(listener = &*name, "stopped accepting");
}

/// What a plaintext client refused at accept gets before the close.
const REFUSED_503: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 45\r\nRetry-After: 1\r\nConnection: close\r\n\r\n503 service unavailable: too many connections\n";

/// A connection over a `[limits]` limit: a plaintext client gets a 503
/// (if its socket takes it at once), a TLS one just the close; counted,
/// and logged at most once per 10 s.
fn refuse(
    stream: TcpStream,
    settings: &ListenerSettings,
    why: Refused,
    listener: &str,
    peer: std::net::SocketAddr,
    proxy: &Proxy,
    counters: Option<&[prometheus::IntCounter; 3]>,
) {
    if settings.tls.is_none() {
        let _ = stream.try_write(REFUSED_503);
    }
    if let Some(c) = counters {
        if let Some(i) = Refused::ALL.iter().position(|r| *r == why) {
            c[i].inc();
        }
    }
    if let Some(unlogged) = proxy.connections.should_warn() {
        tracing::warn!(
            listener,
            %peer,
            limit = why.as_str(),
            open = proxy.connections.total(),
            refused_since_last_line = unlogged,
            "connection refused: limit reached"
        );
    }
}

/// The client socket as hyper gets it.
type ClientIo = Activity<ClientStream>;

/// Serves one client connection until it closes: the TLS handshake first
/// on a TLS listener, then HTTP.
///
/// This future is the connection's task for its whole life, parked or not,
/// so it is kept small: everything that lives only while a request is
/// served (the handshake, hyper's connection, the first-bytes timer) is
/// boxed.
async fn serve_connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    listener: Arc<str>,
    settings: Arc<ListenerSettings>,
    mut counted: Counted,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok();
    let mut stream = stream;
    let peer = match &settings.proxy_protocol {
        None => peer,
        Some(pp) => {
            match Box::pin(proxied_peer(&mut stream, peer, pp, &listener, &mut counted)).await {
                Some(client) => client,
                None => return,
            }
        }
    };
    let shared = &*counted.shared;
    let (stream, sni, allow_h2) = match &settings.tls {
        None => (ClientStream::Plain(stream), None, true),
        Some(tls) => match Box::pin(tls.handshake(stream)).await {
            Ok((s, facts)) => (
                ClientStream::Tls(Box::new(s)),
                facts.sni,
                tls.settings.http2,
            ),
            Err(failed) => {
                tracing::debug!(
                    %peer,
                    listener = &*listener,
                    outcome = failed.outcome,
                    error = failed.error.as_ref().map(|e| e.to_string()),
                    "TLS handshake failed"
                );
                return;
            }
        },
    };
    let conn = Arc::new(
        ConnInfo::new(listener, peer)
            .with_local(local)
            .with_edge(Arc::clone(&settings.edge), sni),
    );
    drop(settings);
    let last = LastActivity::new();
    let Some((h2, mut prefix, mut io)) =
        Box::pin(first_bytes(stream, last.clone(), &conn, shared, allow_h2)).await
    else {
        return;
    };
    if h2 {
        Box::pin(serve_h2(io, prefix, &conn, shared)).await;
        return;
    }
    // hyper's keep-alive wait (its header timer) and `client_idle` both
    // count from the last byte; the timer and the shutdown wait are made
    // once and kept across parks (each is a registration elsewhere).
    let limit = shared
        .settings
        .request_header
        .min(shared.settings.client_idle);
    let mut idle_timer = pin!(tokio::time::sleep(limit));
    let mut shutdown = pin!(shared.shutdown.cancelled());
    loop {
        let Some((rest, socket)) = Box::pin(serve_h1(io, prefix, &conn, &last, shared)).await
        else {
            return;
        };
        (prefix, io) = (rest, socket);
        if shared.shutdown.is_cancelled() {
            return;
        }
        if !prefix.is_empty() {
            // The client already sent (part of) its next request.
            continue;
        }
        tracing::trace!(peer = %conn.peer, "client connection parked");
        // Parked: only the socket is kept until the client sends again.
        loop {
            tokio::select! {
                biased;
                // Not `readable()`: its waiter node would add 150 bytes to
                // every connection's task.
                r = std::future::poll_fn(|cx| io.get_ref().poll_read_ready(cx)) => {
                    if r.is_err() {
                        return;
                    }
                    break;
                }
                () = shutdown.as_mut() => return,
                () = idle_timer.as_mut() => {
                    let due = instant_of(last.get()) + limit;
                    if due <= std::time::Instant::now() {
                        tracing::debug!(peer = %conn.peer, "closing idle client connection");
                        return;
                    }
                    idle_timer.as_mut().reset(due.into());
                }
            }
        }
    }
}

/// Reads the PROXY header of a connection from a trusted sender: the
/// client it names (or the peer, for `LOCAL`), counted under the
/// per-address limit; `None` when the connection is to be closed.
async fn proxied_peer(
    stream: &mut TcpStream,
    peer: std::net::SocketAddr,
    pp: &config::ProxyProtocol,
    listener: &str,
    counted: &mut Counted,
) -> Option<std::net::SocketAddr> {
    use super::proxy_protocol::{read_header, Header};
    let proxy = &counted.shared.proxy;
    let count = |outcome: &str| {
        if let Some(m) = &proxy.metrics {
            m.proxy_protocol(listener, outcome);
        }
    };
    let client = match read_header(stream, pp.timeout).await {
        Ok(Header::Proxied { source, .. }) => {
            count("proxied");
            source
        }
        Ok(Header::Local) => {
            count("local");
            return Some(peer);
        }
        Err(e) => {
            count(e.reason());
            tracing::debug!(listener, %peer, error = %e, "PROXY protocol header refused: closed");
            return None;
        }
    };
    let max = proxy.snapshot.load().limits.max_connections_per_ip;
    if let Err(why) = counted.slot.add_ip(client.ip(), max) {
        if let Some(unlogged) = proxy.connections.should_warn() {
            tracing::warn!(
                listener,
                client = %client,
                limit = why.as_str(),
                refused_since_last_line = unlogged,
                "connection refused: limit reached"
            );
        }
        if let Some(m) = &proxy.metrics {
            m.refused(listener)[2].inc();
        }
        return None;
    }
    Some(client)
}

/// Waits for the first bytes, which tell HTTP/2 from HTTP/1.1; `None` when
/// the connection is to be closed. A connection that sends nothing within
/// `request_header` is closed. At shutdown the first request is still
/// awaited (the client may be about to send it), then served and the
/// connection closed.
async fn first_bytes(
    stream: ClientStream,
    last: LastActivity,
    conn: &ConnInfo,
    shared: &Shared,
    allow_h2: bool,
) -> Option<(bool, Bytes, ClientIo)> {
    let mut io = Activity::new(stream, last);
    match tokio::time::timeout(shared.settings.request_header, sniff(&mut io)).await {
        Ok(Ok((h2, prefix))) => Some((h2 && allow_h2, prefix, io)),
        Ok(Err(e)) => {
            tracing::debug!(peer = %conn.peer, error = %e, "client connection ended with error");
            None
        }
        Err(_) => {
            tracing::debug!(peer = %conn.peer, "client sent nothing within request_header: closed");
            None
        }
    }
}

/// hyper's service: every request goes to the proxy.
fn service(
    conn: &Arc<ConnInfo>,
    shared: &Shared,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<crate::proxy::ProxyBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<crate::proxy::ProxyBody>, Infallible>>
                 + Send
                 + 'static,
> + Clone {
    let proxy = Arc::clone(&shared.proxy);
    let conn = Arc::clone(conn);
    service_fn(move |req| {
        let proxy = Arc::clone(&proxy);
        let conn = Arc::clone(&conn);
        async move {
            let req = req.map(|body| BodyEnd::new(body, &conn));
            let mut resp = proxy.handle(&conn, req).await;
            conn.edge.finish_response(&mut resp);
            Ok::<_, Infallible>(resp)
        }
    })
}

/// Serves an HTTP/2 connection until it closes, asking it to close
/// gracefully (GOAWAY) at shutdown or when idle for `client_idle`. Idle
/// means no request in flight since the last one ended (or since the
/// connection opened): PING, SETTINGS and other frames that carry no
/// request keep nothing open. The client's bytes go through the PING and
/// SETTINGS flood limits ([`FloodGuard`]), and its requests at backends
/// are capped (`ConnInfo::backend_slots`).
async fn serve_h2(io: ClientIo, prefix: Bytes, conn: &Arc<ConnInfo>, shared: &Shared) {
    let settings = &shared.settings;
    let _ = conn.backend_slots.set(Box::new(tokio::sync::Semaphore::new(
        settings.http2_max_backend_requests as usize,
    )));
    conn.quiet_since
        .store(crate::clock::now_ms(), Ordering::Relaxed);
    let io = FloodGuard::new(
        Rewind::new(prefix, io, Arc::clone(conn)),
        FloodMeter::new(
            settings.http2_max_ping_rate,
            settings.http2_max_settings_rate,
        ),
        Arc::clone(conn),
        shared.proxy.metrics.clone(),
    );
    let io = TokioIo::new(io);
    let mut http = pin!(shared.h2.serve_connection(io, service(conn, shared)));
    let mut draining = false;
    // An idle connection asked to close gets this long to do so (the peer
    // must acknowledge GOAWAY's PING); then it is dropped.
    let mut hard_close = pin!(tokio::time::sleep(Duration::from_secs(3600)));
    let mut idle = pin!(activity::idle(
        &conn.quiet_since,
        &conn.in_flight,
        shared.settings.client_idle
    ));
    loop {
        tokio::select! {
            r = http.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %conn.peer, error = %e, "client connection ended with error");
                }
                return;
            }
            () = shared.shutdown.cancelled(), if !draining => {
                draining = true;
                http.as_mut().graceful_shutdown();
            }
            () = idle.as_mut(), if !draining => {
                tracing::debug!(peer = %conn.peer, "closing idle client connection");
                draining = true;
                http.as_mut().graceful_shutdown();
                hard_close
                    .as_mut()
                    .reset(tokio::time::Instant::now() + IDLE_CLOSE_LIMIT);
            }
            () = hard_close.as_mut(), if draining => {
                if conn.in_flight.load(Ordering::Relaxed) == 0 {
                    tracing::debug!(peer = %conn.peer, "idle client connection did not close in time: dropped");
                    return;
                }
                hard_close
                    .as_mut()
                    .reset(tokio::time::Instant::now() + IDLE_CLOSE_LIMIT);
            }
        }
    }
}

/// Serves HTTP/1.1 requests until the connection closes (`None`) or hyper
/// is between requests: then hyper is dropped and the socket comes back
/// with whatever the client already sent of its next request.
async fn serve_h1(
    io: ClientIo,
    prefix: Bytes,
    conn: &Arc<ConnInfo>,
    last: &LastActivity,
    shared: &Shared,
) -> Option<(Bytes, ClientIo)> {
    let park = Park {
        requests_before: conn.requests.load(Ordering::Relaxed),
    };
    // Readable again (or still reading): that is activity.
    last.touch();
    let io = TokioIo::new(Rewind::new(prefix, io, Arc::clone(conn)));
    let mut http = shared
        .h1
        .serve_connection(io, service(conn, shared))
        .with_upgrades();
    let (mut parking, mut closing) = (false, false);
    // No timers and no shutdown registration per run: hyper's own wakes
    // drive this, and the checks are atomic loads.
    let result = std::future::poll_fn(|cx| {
        // Shutting down: the response in progress says `Connection: close`,
        // then the connection closes. Not before the request has arrived:
        // hyper would close a connection that has not read yet at once.
        if !closing && shared.shutdown.is_cancelled() && park.started(conn) {
            closing = true;
            Pin::new(&mut http).graceful_shutdown();
        }
        if let Poll::Ready(r) = Pin::new(&mut http).poll(cx) {
            return Poll::Ready(r);
        }
        if !parking && !closing && park.between_requests(conn) {
            if conn.body_open.load(Ordering::Relaxed) {
                // The response is done but the body never reached its end
                // (the backend answered early, or the balancer itself): its
                // unread rest must not be taken for the next request. The
                // connection closes, for real.
                tracing::debug!(peer = %conn.peer, "response done before the request body: closing");
                closing = true;
                Pin::new(&mut http).graceful_shutdown();
                return Pin::new(&mut http).poll(cx);
            }
            parking = true;
            conn.parking.store(true, Ordering::Relaxed);
            // hyper closes an idle connection at once (leaving the socket
            // open, see `Rewind::poll_shutdown`).
            Pin::new(&mut http).graceful_shutdown();
            return Pin::new(&mut http).poll(cx);
        }
        Poll::Pending
    })
    .await;
    // An upgraded socket (now a tunnel's) must shut down for real.
    conn.parking.store(false, Ordering::Relaxed);
    if let Err(e) = result {
        tracing::debug!(peer = %conn.peer, error = %e, "client connection ended with error");
        return None;
    }
    if !parking {
        return None;
    }
    let parts = http.into_parts()?;
    Some(parts.io.into_inner().inner.into_parts(&parts.read_buf))
}

/// Reads the first bytes until they are known to be (or not be) the HTTP/2
/// preface; returns `(is_h2, bytes read)`.
async fn sniff(io: &mut ClientIo) -> io::Result<(bool, Bytes)> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut n = 0;
    while n < buf.len() {
        let got = io.read(&mut buf[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
        if buf[..n] != H2_PREFACE[..n] {
            break;
        }
    }
    Ok((
        n == buf.len() && &buf == H2_PREFACE,
        Bytes::copy_from_slice(&buf[..n]),
    ))
}

/// Parking for one run of hyper's HTTP/1.1 connection.
#[derive(Debug)]
struct Park {
    /// The connection's request count when this run started: a run parks
    /// only once it has served a request, so hyper is between requests
    /// (not in the middle of a slow client's request head).
    requests_before: usize,
}

impl Park {
    /// A request arrived in this run.
    fn started(&self, conn: &ConnInfo) -> bool {
        conn.requests.load(Ordering::Relaxed) > self.requests_before
    }

    /// hyper finished a request and is waiting for the client's next one.
    fn between_requests(&self, conn: &ConnInfo) -> bool {
        conn.waiting.load(Ordering::Relaxed)
            && conn.in_flight.load(Ordering::Relaxed) == 0
            && self.started(conn)
    }
}

/// The client socket as hyper sees it: bytes already read put back in
/// front ([`Prefixed`]), and the parking bookkeeping: whether hyper's last
/// read found nothing, and a shutdown that leaves the socket open while the
/// connection parks.
#[derive(Debug)]
struct Rewind<T> {
    inner: Prefixed<T>,
    conn: Arc<ConnInfo>,
}

impl<T> Rewind<T> {
    fn new(prefix: Bytes, inner: T, conn: Arc<ConnInfo>) -> Self {
        Self {
            inner: Prefixed::new(prefix, inner),
            conn,
        }
    }
}

impl<T> Rewind<T> {
    /// A read that found nothing counts as waiting for the client only if
    /// nothing was written after it: hyper reads for the next request once
    /// its response is out. (A response that hyper is still flushing, on a
    /// connection it is about to close, must not look parkable.)
    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        if matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
            self.conn.waiting.store(false, Ordering::Relaxed);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.conn.waiting.store(r.is_pending(), Ordering::Relaxed);
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.conn.parking.load(Ordering::Relaxed) && !self.conn.body_open.load(Ordering::Relaxed)
        {
            // hyper closes an idle connection by shutting it down; a parking
            // connection stays open for the client's next request. Never
            // while a request body is unfinished: that close is real.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
