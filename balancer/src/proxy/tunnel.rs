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
    let start = Instant::now();
    let backend = guard.backend().id.clone();
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(request_id, backend = &*backend, error = %e, "upgrade failed");
            return;
        }
    };
    let last = LastActivity::new();
    let from_client = Arc::new(AtomicU64::new(0));
    let from_backend = Arc::new(AtomicU64::new(0));
    let eof = Arc::new(tokio::sync::Notify::new());
    let mut client = Activity::counted(
        TokioIo::new(client),
        last.clone(),
        Arc::clone(&from_client),
        Arc::clone(&eof),
    );
    let mut upstream = Activity::counted(
        TokioIo::new(upstream),
        last.clone(),
        Arc::clone(&from_backend),
        Arc::clone(&eof),
    );
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
    let outcome = tokio::select! {
        r = copy => if r.is_ok() { "closed" } else { "reset" },
        () = half_closed => "half_closed_timeout",
        () = idle => "idle_timeout",
    };
    let from_client = from_client.load(Ordering::Relaxed);
    let from_backend = from_backend.load(Ordering::Relaxed);
    tracing::info!(
        target: "access",
        request_id,
        backend = &*backend,
        event = "tunnel_closed",
        outcome,
        from_client,
        from_backend,
        duration_ms = start.elapsed().as_micros() as f64 / 1000.0,
    );
    drop(guard);
}
