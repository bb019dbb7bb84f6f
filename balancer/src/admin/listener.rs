//! The admin listener's accept loop and its connection limits.
//!
//! The admin port shares the process's file descriptors with the proxy, so
//! it must not let a client hold many of them:
//!
//! * at most `admin.max_connections` are open; above that a new connection
//!   is closed as soon as it is accepted (counted in
//!   `balancer_admin_connections_refused_total`, logged at most every
//!   [`WARN_EVERY`]);
//! * a client has `admin.read_timeout` to send each request head, and an
//!   idle keep-alive connection is closed after the same time (hyper's
//!   header timer, which needs the [`TokioTimer`] set here to run at all);
//! * a connection lives at most [`MAX_LIFETIME`]: then it finishes the
//!   response in progress and closes (or is dropped `read_timeout` later),
//!   which bounds a client that sends a request and never reads the answer.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{handle, AdminState};

/// Longest life of one admin connection, however busy.
pub const MAX_LIFETIME: Duration = Duration::from_secs(60);
/// Least time between two warnings about refused connections.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Serves the admin API until `stop` fires.
pub async fn serve_admin(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(state.config.max_connections));
    let mut refusals = RefusalLog::default();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Dropping the stream closes it now: the descriptor is back at once.
            drop(stream);
            if let Some(m) = &state.metrics {
                m.admin().refused.inc();
            }
            if let Some(refused) = refusals.refused(Instant::now()) {
                tracing::warn!(
                    %peer,
                    refused,
                    max_connections = state.config.max_connections,
                    "admin connections at admin.max_connections: closing new ones"
                );
            }
            continue;
        };
        tokio::spawn(serve_connection(stream, Arc::clone(&state), slot));
    }
}

/// One connection, holding its slot until it closes.
async fn serve_connection(stream: TcpStream, state: Arc<AdminState>, _slot: OwnedSemaphorePermit) {
    // The address the client reached: a Host naming it is one of ours.
    let Ok(local) = stream.local_addr().map(|a| a.ip()) else {
        return;
    };
    let open = state.metrics.as_ref().map(|m| m.admin().open);
    if let Some(g) = &open {
        g.inc();
    }
    let read_timeout = state.config.read_timeout;
    let service = {
        let state = Arc::clone(&state);
        service_fn(move |req| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(handle(&state, local, req).await) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = tokio::time::sleep(MAX_LIFETIME) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(read_timeout, conn).await;
        }
    }
    if let Some(g) = &open {
        g.dec();
    }
}

/// Counts refused connections and says when to warn about them: the first
/// one, then at most once per [`WARN_EVERY`], with how many were refused
/// since the last warning.
#[derive(Debug, Default)]
struct RefusalLog {
    last_warned: Option<Instant>,
    since: u64,
}

impl RefusalLog {
    /// Records one refusal at `now`; `Some(count)` when it is time to warn.
    fn refused(&mut self, now: Instant) -> Option<u64> {
        self.since += 1;
        match self.last_warned {
            Some(t) if now.duration_since(t) < WARN_EVERY => None,
            _ => {
                self.last_warned = Some(now);
                Some(std::mem::take(&mut self.since))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_warn_first_then_at_most_every_interval() {
        let mut log = RefusalLog::default();
        let t0 = Instant::now();
        assert_eq!(log.refused(t0), Some(1));
        assert_eq!(log.refused(t0 + Duration::from_secs(1)), None);
        assert_eq!(log.refused(t0 + Duration::from_secs(9)), None);
        assert_eq!(log.refused(t0 + WARN_EVERY), Some(3));
        assert_eq!(
            log.refused(t0 + WARN_EVERY + Duration::from_millis(1)),
            None
        );
    }
}
