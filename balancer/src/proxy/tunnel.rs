//! WebSocket (and any other HTTP/1.1 upgrade) tunnels: after `101 Switching
//! Protocols`, the client's and the backend's sockets are joined byte for
//! byte until either side closes. The tunnel holds its backend's open-count
//! guard for its whole life, so least-connections and draining see it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::ws_frames::{close_frame, FrameBoundary};
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
                Some(limit) => activity::idle(&last, &AtomicUsize::new(0), limit).await,
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
    if matches!(log.outcome, "drained" | "shutdown") {
        // The copy stopped; tell the client why, unless that would cut
        // into a frame the backend was halfway through sending.
        if end.websocket && client.boundary.at_boundary() {
            let frame = close_frame(end.close_code);
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                client.write_all(&frame).await?;
                client.shutdown().await
            })
            .await;
            log.outcome = if log.outcome == "drained" {
                "drained_close_sent"
            } else {
                "shutdown_close_sent"
            };
        }
    }
    drop(guard);
}

/// The client side of a tunnel, following frame boundaries in what it
/// writes (see [`FrameBoundary`]).
struct Framed<T> {
    inner: T,
    boundary: FrameBoundary,
}

impl<T> Framed<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            boundary: FrameBoundary::default(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Framed<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
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
