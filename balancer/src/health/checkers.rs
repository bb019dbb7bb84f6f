//! The running health checkers: one task per checked backend, keyed by
//! pool and id, started and stopped as the reload plan says.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::HealthChecker;
use crate::runtime::{BackendKey, Snapshot};
use crate::upstream::Backend;

/// See the module doc.
#[derive(Debug)]
pub struct Checkers {
    /// Fired at shutdown: every checker stops.
    stop: CancellationToken,
    running: HashMap<BackendKey, CancellationToken>,
    /// What checkers read the pool's current ejection rules from.
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Checkers {
    pub fn new(
        stop: CancellationToken,
        snapshot: Arc<ArcSwap<Snapshot>>,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Self {
        Self {
            stop,
            running: HashMap::new(),
            snapshot,
            metrics,
        }
    }

    /// Starts checking `backend` of `pool` (replacing a checker already
    /// running for the same pool and id).
    pub fn start(
        &mut self,
        pool: &Arc<str>,
        backend: &Arc<Backend>,
        health: &config::HealthConfig,
    ) {
        let key = (Arc::clone(pool), Arc::clone(&backend.id));
        self.stop(&key);
        let token = self.stop.child_token();
        let checker = HealthChecker {
            pool: Arc::clone(pool),
            backend: Arc::clone(backend),
            config: health.clone(),
            snapshot: Arc::clone(&self.snapshot),
            metrics: self.metrics.as_ref().map(|m| m.check(pool, &backend.id)),
        };
        tokio::spawn(checker.run(token.clone()));
        self.running.insert(key, token);
    }

    /// Stops the checker of `key`; false when none ran.
    pub fn stop(&mut self, key: &BackendKey) -> bool {
        match self.running.remove(key) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}
