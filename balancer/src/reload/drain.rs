//! Backends a reload removed (or replaced with a new address): they take
//! no new requests (no snapshot has them), in-flight requests finish, and
//! their tunnels stay until they close or `drain_timeout` passes; then
//! each tunnel's client gets a Close frame.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::runtime::BackendKey;
use crate::upstream::Backend;

/// A backend removed by a reload that still has connections (shown by the
/// admin API and the metrics).
#[derive(Debug, Clone)]
pub struct Draining {
    pub pool: Arc<str>,
    pub backend: Arc<Backend>,
}

/// The backends draining now.
pub type DrainList = Arc<Mutex<Vec<Draining>>>;

/// Starts draining each of `leaving`.
pub fn drain(leaving: Vec<(BackendKey, Arc<Backend>)>, drain_timeout: Duration, list: &DrainList) {
    for ((pool, _), backend) in leaving {
        if let Ok(mut d) = list.lock() {
            d.push(Draining {
                pool: Arc::clone(&pool),
                backend: Arc::clone(&backend),
            });
        }
        tracing::info!(
            pool = &*pool,
            backend = &*backend.id,
            open = backend.open_connections(),
            "backend draining"
        );
        let list = Arc::clone(list);
        tokio::spawn(async move {
            let end = tokio::time::Instant::now() + drain_timeout;
            // Polled, not signalled: a draining backend is rare and the
            // check is one atomic load.
            while backend.open_connections() > 0 && tokio::time::Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let left = backend.open_connections();
            backend.finish_drain();
            if let Ok(mut d) = list.lock() {
                d.retain(|d| !Arc::ptr_eq(&d.backend, &backend));
            }
            tracing::info!(
                pool = &*pool,
                backend = &*backend.id,
                closed = left,
                "backend drained"
            );
        });
    }
}
