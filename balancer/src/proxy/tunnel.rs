//! WebSocket (and any other HTTP/1.1 upgrade) tunnels: after `101 Switching
//! Protocols`, the client's and the backend's sockets are joined byte for
//! byte until either side closes. The tunnel holds its backend's open-count
//! guard for its whole life, so least-connections and draining see it.

use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::runtime::OpenGuard;
use crate::server::activity::{self, Activity, LastActivity};

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
    let mut client = Activity::new(TokioIo::new(client), last.clone());
    let mut upstream = Activity::new(TokioIo::new(upstream), last.clone());
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    let (outcome, from_client, from_backend) = match idle_timeout {
        None => split(copy.await),
        Some(limit) => {
            let no_requests = AtomicUsize::new(0);
            tokio::select! {
                r = copy => split(r),
                () = activity::idle(&last, &no_requests, limit) => ("idle_timeout", 0, 0),
            }
        }
    };
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

fn split(r: std::io::Result<(u64, u64)>) -> (&'static str, u64, u64) {
    match r {
        Ok((a, b)) => ("closed", a, b),
        // A reset after a close frame is the normal end of many clients.
        Err(_) => ("reset", 0, 0),
    }
}
