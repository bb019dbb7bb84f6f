//! WebSocket (and any other HTTP/1.1 upgrade) tunnels: after `101 Switching
//! Protocols`, the client's and the backend's sockets are joined byte for
//! byte until either side closes. The tunnel holds its backend's open-count
//! guard for its whole life, so least-connections and draining see it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::runtime::OpenGuard;
use crate::server::activity::{self, Activity, LastActivity};

/// After one side finished sending (EOF, passed on as a TCP half-close), how
/// long the other side may keep sending before the tunnel is closed. A
/// WebSocket peer that got a Close frame and EOF has nothing left to say;
/// this stops a client that never closes its socket from holding the tunnel.
const HALF_CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Joins the two upgraded connections; returns when the tunnel closes.
pub async fn run(
    client: OnUpgrade,
    upstream: OnUpgrade,
    guard: OpenGuard,
    idle_timeout: Option<Duration>,
    request_id: String,
) {
    let backend = guard.backend().id.clone();
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(request_id, backend = &*backend, error = %e, "upgrade failed");
            return;
        }
    };
    let mut log = TunnelLog {
        request_id,
        backend,
        start: Instant::now(),
        outcome: "shutdown",
        from_client: Arc::new(AtomicU64::new(0)),
        from_backend: Arc::new(AtomicU64::new(0)),
    };
    let last = LastActivity::new();
    let eof = Arc::new(tokio::sync::Notify::new());
    let mut client = Activity::new(TokioIo::new(client), last.clone())
        .count_reads(Arc::clone(&log.from_client))
        .notify_eof(Arc::clone(&eof));
    let mut upstream = Activity::new(TokioIo::new(upstream), last.clone())
        .count_reads(Arc::clone(&log.from_backend))
        .notify_eof(Arc::clone(&eof));
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
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
    log.outcome = tokio::select! {
        r = copy => if r.is_ok() { "closed" } else { "reset" },
        () = half_closed => "half_closed_timeout",
        () = idle => "idle_timeout",
    };
    drop(guard);
}

/// The tunnel's access-log line, written when the tunnel ends, including
/// when its task is dropped at the end of the shutdown grace period.
struct TunnelLog {
    request_id: String,
    backend: Arc<str>,
    start: Instant,
    outcome: &'static str,
    from_client: Arc<AtomicU64>,
    from_backend: Arc<AtomicU64>,
}

impl Drop for TunnelLog {
    fn drop(&mut self) {
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
