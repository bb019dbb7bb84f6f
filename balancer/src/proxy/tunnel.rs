//! WebSocket tunnels, and raw ones for the other protocols a route allows
//! (`route.upgrades`): after `101 Switching Protocols`, the client's and the backend's sockets are joined byte for
//! byte until either side closes. The tunnel holds its backend's open-count
//! guard for its whole life, so least-connections and draining see it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::ws_frames::{close_frame, FrameBoundary, MessageLimit, MessageMeter};
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
    }
    let mut upstream = Activity::new(upstream, last.clone())
        .count_reads(Arc::clone(&log.from_backend))
        .notify_eof(Arc::clone(&eof));
    let drained = guard.backend().drained();
    let backend_ref = Arc::clone(guard.backend());
    log.outcome = {
        let copy = super::lazy_copy::copy_bidirectional(&mut client, &mut upstream);
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
            () = drained.cancelled() => "drained",
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
            let code = client
                .broken
                .map_or(end.close_code, MessageLimit::close_code);
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
/// rate of the messages it reads ([`MessageMeter`]).
struct Framed<T> {
    inner: T,
    boundary: FrameBoundary,
    /// Boxed: most tunnels have no limits and pay one pointer.
    meter: Option<Box<MessageMeter>>,
    /// The limit the client broke: its bytes were not passed on.
    broken: Option<MessageLimit>,
}

impl<T> Framed<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            boundary: FrameBoundary::default(),
            meter: None,
            broken: None,
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
        let r = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            this.boundary.feed(&buf[..*n]);
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
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
            duration_ms = self.start.elapsed().as_micros() as f64 / 1000.0,
        );
    }
}
