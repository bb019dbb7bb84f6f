//! WebSocket tunnels, and raw ones for the other protocols a route allows
//! (`route.upgrades`): after `101 Switching Protocols`, the client's and the backend's sockets are joined byte for
//! byte until either side closes. The tunnel holds its backend's open-count
//! guard for its whole life, so least-connections and draining see it.
//! A WebSocket tunnel may also ping a quiet client (`timeouts.websocket_ping`,
//! see [`super::ws_ping`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::ws_frames::{close_frame, FrameBoundary, MessageLimit, MessageMeter};
use super::ws_ping::Keepalive;
use crate::socket::activity::{self, Activity, LastActivity};
use crate::upstream::{OpenGuard, UpstreamIo};

/// After one side finished sending (EOF, passed on as a TCP half-close), how
/// long the other side may keep sending before the tunnel is closed. A
/// WebSocket peer that got a Close frame and EOF has nothing left to say;
/// this stops a client that never closes its socket from holding the tunnel.
const HALF_CLOSE_LINGER: Duration = Duration::from_secs(5);

/// How a tunnel ends when the balancer ends it (drain timeout, shutdown).
#[derive(Debug, Clone)]
pub struct TunnelEnd {
    /// The upgrade was to `websocket`: a Close frame can be sent.
    pub websocket: bool,
    /// Close code for the client (1001 or 1012).
    pub close_code: u16,
    /// Fires at process shutdown.
    pub shutdown: CancellationToken,
    /// The pool's metric handles.
    pub metrics: Option<crate::metrics::PoolMetrics>,
    /// `limits.websocket_max_message` and `websocket_max_message_rate`.
    pub max_message: u64,
    pub max_message_rate: u32,
    /// `timeouts.websocket_ping` (WebSocket tunnels only).
    pub ping: Option<Duration>,
}

/// Joins the two upgraded connections; returns when the tunnel closes.
pub async fn run(
    client: OnUpgrade,
    upstream: UpstreamIo,
    guard: OpenGuard,
    idle_timeout: Option<Duration>,
    end: TunnelEnd,
    request_id: String,
) {
    let backend = guard.backend().id.clone();
    let client = match client.await {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(request_id, backend = &*backend, error = %e, "upgrade failed");
            return;
        }
    };
    let _counted = guard.backend().tunnel_opened();
    let mut log = TunnelLog {
        metrics: end.metrics.clone(),
        backend_ref: Arc::clone(guard.backend()),
        request_id,
        backend,
        start: Instant::now(),
        outcome: "shutdown",
        from_client: Arc::new(AtomicU64::new(0)),
        from_backend: Arc::new(AtomicU64::new(0)),
        pings: None,
    };
    let last = LastActivity::new();
    let eof = Arc::new(tokio::sync::Notify::new());
    let mut client = Framed::new(
        Activity::new(TokioIo::new(client), last.clone())
            .count_reads(Arc::clone(&log.from_client))
            .notify_eof(Arc::clone(&eof)),
    );
    if end.websocket {
        let meter = MessageMeter::new(end.max_message, end.max_message_rate);
        client.meter = meter.active().then(|| Box::new(meter));
        if let Some(interval) = end.ping {
            let sent = Arc::new(AtomicU64::new(0));
            log.pings = Some(Arc::clone(&sent));
            let metric = end.metrics.as_ref().map(|m| m.websocket_pings.clone());
            client.keepalive = Some(Box::new(Keepalive::new(interval, metric, sent)));
        }
    }
    let mut upstream = Activity::new(upstream, last.clone())
        .count_reads(Arc::clone(&log.from_backend))
        .notify_eof(Arc::clone(&eof));
    let backend_ref = Arc::clone(guard.backend());
    log.outcome = {
        let copy = super::lazy_copy::copy_bidirectional(&mut client, &mut upstream, |cx, c| {
            c.poll_keepalive(cx)
        });
        let half_closed = async {
            eof.notified().await;
            tokio::time::sleep(HALF_CLOSE_LINGER).await;
        };
        let idle = async {
            match idle_timeout {
                Some(limit) => activity::idle(last.stamp(), &AtomicUsize::new(0), limit).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = copy => if r.is_ok() { "closed" } else { "reset" },
            () = half_closed => "half_closed_timeout",
            () = idle => "idle_timeout",
            () = backend_ref.drain_turn() => "drained",
            () = backend_ref.disabled() => "drained",
            () = end.shutdown.cancelled() => "shutdown",
        }
    };
    if let Some(limit) = client.broken {
        log.outcome = limit.as_str();
        if let Some(m) = &end.metrics {
            m.websocket_limit[usize::from(limit == MessageLimit::TooFast)].inc();
        }
        tracing::info!(request_id = %log.request_id, backend = &*log.backend, limit = limit.as_str(), "websocket client broke a limit: tunnel closed");
    }
    if matches!(
        log.outcome,
        "drained" | "shutdown" | "message_too_big" | "message_rate"
    ) {
        // The copy stopped; tell the client why, unless that would cut
        // into a frame the backend was halfway through sending.
        if end.websocket && client.boundary.at_boundary() {
            // The Close is the last frame: no Ping after it (one in
            // progress is finished first).
            if let Some(k) = client.keepalive.as_mut() {
                k.stop();
            }
            // A supervised instance being replaced says 1012 (see
            // `Backend::drain_now`).
            let drain_code = match log.outcome {
                "drained" => backend_ref.drain_code().unwrap_or(end.close_code),
                _ => end.close_code,
            };
            let code = client.broken.map_or(drain_code, MessageLimit::close_code);
            let frame = close_frame(code);
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                client.write_all(&frame).await?;
                client.shutdown().await
            })
            .await;
            log.outcome = match log.outcome {
                "drained" => "drained_close_sent",
                "shutdown" => "shutdown_close_sent",
                other => other,
            };
        }
    }
    drop(guard);
}

/// The client side of a tunnel, following frame boundaries in what it
/// writes (see [`FrameBoundary`]) and, with WebSocket limits, the size and
/// rate of the messages it reads ([`MessageMeter`]); with pings on, it
/// also writes the balancer's own Pings between the backend's frames.
struct Framed<T> {
    inner: Activity<T>,
    /// Frames of the backend's stream to the client (the balancer's Pings
    /// are not fed: they go whole, between two of the backend's frames).
    boundary: FrameBoundary,
    /// Boxed: most tunnels have no limits and pay one pointer.
    meter: Option<Box<MessageMeter>>,
    /// The limit the client broke: its bytes were not passed on.
    broken: Option<MessageLimit>,
    /// `timeouts.websocket_ping`; boxed like `meter`.
    keepalive: Option<Box<Keepalive>>,
}

impl<T> Framed<T> {
    fn new(inner: Activity<T>) -> Self {
        Self {
            inner,
            boundary: FrameBoundary::default(),
            meter: None,
            broken: None,
            keepalive: None,
        }
    }
}

impl<T: AsyncWrite + Unpin> Framed<T> {
    /// The copy's side task: a due Ping goes out as soon as the backend's
    /// stream is at a frame boundary, even if no more bytes come from it.
    fn poll_keepalive(&mut self, cx: &mut std::task::Context<'_>) -> std::io::Result<()> {
        let Some(k) = self.keepalive.as_mut() else {
            return Ok(());
        };
        let at_boundary = self.boundary.at_boundary();
        match k.poll_ping(cx, self.inner.get_mut_unstamped(), at_boundary) {
            std::task::Poll::Ready(r) => r,
            // The client's socket is full; its waker brings the copy back.
            std::task::Poll::Pending => Ok(()),
        }
    }

    /// Finishes a Ping in progress: nothing else may go out before it ends.
    fn poll_ping_written(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.keepalive.as_mut() {
            Some(k) => k.poll_finish(cx, self.inner.get_mut_unstamped()),
            None => std::task::Poll::Ready(Ok(())),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Framed<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(k) = this.keepalive.as_mut() {
            if buf.filled().len() > before {
                k.heard(crate::clock::now_ms());
            }
        }
        if let (std::task::Poll::Ready(Ok(())), Some(meter)) = (&r, this.meter.as_mut()) {
            if let Some(limit) = meter.feed(&buf.filled()[before..], Instant::now()) {
                this.broken = Some(limit);
                buf.set_filled(before);
                return std::task::Poll::Ready(Err(std::io::Error::other(limit.as_str())));
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Framed<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let Some(k) = this.keepalive.as_mut() else {
            let r = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
            if let std::task::Poll::Ready(Ok(n)) = &r {
                this.boundary.feed(&buf[..*n]);
            }
            return r;
        };
        // A Ping in progress, or one due at this boundary, goes first.
        let at_boundary = this.boundary.at_boundary();
        std::task::ready!(k.poll_ping(cx, this.inner.get_mut_unstamped(), at_boundary))?;
        // A Ping due inside a frame: only the rest of that frame now, so
        // the next write (or the copy's side task) finds the boundary.
        let len = match k.due() {
            true => match this.boundary.to_boundary(buf) {
                0 => buf.len(),
                n => n,
            },
            false => buf.len(),
        };
        let r = std::pin::Pin::new(&mut this.inner).poll_write(cx, &buf[..len]);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            this.boundary.feed_frames(&buf[..*n], |head| {
                // After the backend's Close no Ping may follow it.
                if head.opcode == 8 {
                    k.stop();
                }
                true
            });
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_ping_written(cx))?;
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_ping_written(cx))?;
        if let Some(k) = self.keepalive.as_mut() {
            k.stop();
        }
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The tunnel's access-log line, written when the tunnel ends, including
/// when its task is dropped at the end of the shutdown grace period.
struct TunnelLog {
    metrics: Option<crate::metrics::PoolMetrics>,
    backend_ref: Arc<crate::upstream::Backend>,
    request_id: String,
    backend: Arc<str>,
    start: Instant,
    outcome: &'static str,
    from_client: Arc<AtomicU64>,
    from_backend: Arc<AtomicU64>,
    /// Keep-alive Pings sent, with `timeouts.websocket_ping`.
    pings: Option<Arc<AtomicU64>>,
}

impl Drop for TunnelLog {
    fn drop(&mut self) {
        if let Some(m) = &self.metrics {
            m.tunnel_duration
                .observe(self.start.elapsed().as_secs_f64());
        }
        if let Some(m) = self.backend_ref.metrics() {
            m.tunnel_bytes(
                self.from_client.load(Ordering::Relaxed),
                self.from_backend.load(Ordering::Relaxed),
            );
        }
        tracing::info!(
            target: "access",
            request_id = %self.request_id,
            backend = &*self.backend,
            event = "tunnel_closed",
            outcome = self.outcome,
            from_client = self.from_client.load(Ordering::Relaxed),
            from_backend = self.from_backend.load(Ordering::Relaxed),
            pings = self.pings.as_ref().map(|p| p.load(Ordering::Relaxed)),
            duration_ms = self.start.elapsed().as_micros() as f64 / 1000.0,
        );
    }
}
