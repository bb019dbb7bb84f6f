//! A pool: the backends one route sends to, and how it picks among them.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use http::HeaderValue;

use crate::select::{BackendSelection, Members, SelectionContext};

use super::Backend;

#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    pub backends: Vec<Arc<Backend>>,
    /// Weight of each member, parallel to `backends`.
    pub weights: Vec<u32>,
    selection: Box<dyn BackendSelection>,
    pub retry: config::RetryConfig,
    pub ejection: config::EjectionConfig,
    pub retry_budget: RetryBudget,
    /// Slow-start window in ms (0: off).
    pub slow_start_ms: u64,
    /// Metric handles (none when metrics are off).
    pub metrics: Option<crate::metrics::PoolMetrics>,
}

/// Retries allowed as a share of recent requests: every request deposits
/// `budget_percent` units, a retry costs 100. Starts with a reserve of 10
/// retries so a quiet pool can still retry; holds at most 100.
#[derive(Debug)]
pub struct RetryBudget {
    units: AtomicI64,
    deposit: i64,
}

const RETRY_COST: i64 = 100;
const RETRY_RESERVE: i64 = 10 * RETRY_COST;
const RETRY_CAP: i64 = 100 * RETRY_COST;

impl RetryBudget {
    pub fn new(percent: u32) -> Self {
        Self {
            units: AtomicI64::new(RETRY_RESERVE),
            deposit: i64::from(percent),
        }
    }

    /// Every request earns a fraction of a retry.
    pub fn deposit(&self) {
        if self.deposit > 0 && self.units.load(Ordering::Relaxed) < RETRY_CAP {
            self.units.fetch_add(self.deposit, Ordering::Relaxed);
        }
    }

    /// Takes one retry from the budget, if there is one.
    pub fn withdraw(&self) -> bool {
        self.units
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                (u >= RETRY_COST).then_some(u - RETRY_COST)
            })
            .is_ok()
    }
}

impl Pool {
    pub fn new(
        name: &str,
        backends: Vec<Arc<Backend>>,
        weights: Vec<u32>,
        selection: Box<dyn BackendSelection>,
    ) -> Self {
        Self {
            name: name.into(),
            backends,
            weights,
            selection,
            retry: config::RetryConfig::default(),
            ejection: config::EjectionConfig::default(),
            retry_budget: RetryBudget::new(config::RetryConfig::default().budget_percent),
            slow_start_ms: 0,
            metrics: None,
        }
    }

    /// Sets the metric handles.
    pub fn with_metrics(mut self, m: Option<crate::metrics::PoolMetrics>) -> Self {
        self.metrics = m;
        self
    }

    /// Sets the slow-start window.
    pub fn with_slow_start(mut self, window: std::time::Duration) -> Self {
        self.slow_start_ms = window.as_millis() as u64;
        self
    }

    /// Sets the pool's retry and ejection settings.
    pub fn with_failure_policy(
        mut self,
        retry: config::RetryConfig,
        ejection: config::EjectionConfig,
    ) -> Self {
        self.retry_budget = RetryBudget::new(retry.budget_percent);
        self.retry = retry;
        self.ejection = ejection;
        self
    }

    /// Whether one more backend may be ejected without passing
    /// `ejection.max_percent` of the pool.
    pub fn may_eject(&self) -> bool {
        self.may_eject_at(crate::server::activity::now_ms())
    }

    /// Whether more than `ejection.max_percent` of the pool is ejected now.
    pub fn ejected_share_exceeded(&self) -> bool {
        let now = crate::server::activity::now_ms();
        let ejected = self
            .backends
            .iter()
            .filter(|b| b.is_ejected_at(now))
            .count();
        ejected * 100 > self.backends.len() * self.ejection.max_percent as usize
    }

    /// [`Pool::may_eject`] at a given time (tests drive the clock).
    pub fn may_eject_at(&self, now: u64) -> bool {
        let ejected = self
            .backends
            .iter()
            .filter(|b| b.is_ejected_at(now))
            .count();
        (ejected + 1) * 100 <= self.backends.len() * self.ejection.max_percent as usize
    }

    /// Picks a backend for a request, or `None` when the pool has none
    /// usable; with it, the `Set-Cookie` value to send when the client's
    /// sticky cookie must be (re)issued.
    /// `exclude` lists members already tried by this request (retries go
    /// to a different backend).
    pub fn select(
        &self,
        ctx: &SelectionContext<'_>,
        exclude: &[usize],
    ) -> Option<(usize, &Arc<Backend>, Option<&HeaderValue>)> {
        let members = LiveMembers {
            backends: &self.backends,
            exclude,
            slow_start_ms: self.slow_start_ms,
            // Read the clock once per pick, and only when slow start is on.
            now: if self.slow_start_ms > 0 {
                crate::server::activity::now_ms()
            } else {
                0
            },
        };
        let pick = self.selection.select(ctx, &members)?;
        let backend = self.backends.get(pick.index)?;
        let cookie = pick
            .renew_sticky
            .then(|| self.selection.set_cookie(pick.index))
            .flatten();
        Some((pick.index, backend, cookie))
    }
}

/// The pool's backends as policies see them.
struct LiveMembers<'a> {
    backends: &'a [Arc<Backend>],
    exclude: &'a [usize],
    slow_start_ms: u64,
    now: u64,
}

impl Members for LiveMembers<'_> {
    fn len(&self) -> usize {
        self.backends.len()
    }

    fn usable(&self, i: usize) -> bool {
        // Health checkers and passive ejection decide; draining will join.
        self.backends.get(i).is_some_and(|b| b.is_usable()) && !self.exclude.contains(&i)
    }

    fn load(&self, i: usize) -> usize {
        self.backends.get(i).map_or(0, |b| b.open_connections())
    }

    fn ramp(&self, i: usize) -> u32 {
        match self.backends.get(i) {
            Some(b) if self.slow_start_ms > 0 => b.ramp(self.now, self.slow_start_ms),
            _ => crate::select::FULL_RAMP,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::runtime::backend::UpstreamSettings;
    use crate::runtime::Health;
    use crate::select::LeastConnections;

    #[tokio::test]
    async fn never_ejects_more_than_max_percent() {
        let settings = UpstreamSettings {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_idle: 1,
        };
        let backends: Vec<Arc<Backend>> = (0..4)
            .map(|i| {
                let addr = format!("127.0.0.1:{}", 9000 + i).parse().unwrap();
                Arc::new(Backend::new(&format!("b{i}"), addr, settings, Health::Up))
            })
            .collect();
        let ejection = config::EjectionConfig {
            consecutive_failures: 1,
            ..config::EjectionConfig::default()
        };
        let pool = Pool::new(
            "p",
            backends,
            vec![1; 4],
            Box::new(LeastConnections::new(&[1; 4])),
        )
        .with_failure_policy(config::RetryConfig::default(), ejection);
        let ejected: Vec<bool> = pool
            .backends
            .iter()
            .map(|b| {
                b.record_failure_at(0, &pool.ejection, || pool.may_eject_at(0))
                    .is_some()
            })
            .collect();
        assert_eq!(ejected, vec![true, true, false, false], "50% of 4 is 2");
    }

    #[test]
    fn retry_budget_allows_a_share_of_requests_plus_a_reserve() {
        let budget = RetryBudget::new(20);
        let reserve = (0..100).take_while(|_| budget.withdraw()).count();
        assert_eq!(reserve, 10);
        for _ in 0..50 {
            budget.deposit();
        }
        assert_eq!(
            (0..100).take_while(|_| budget.withdraw()).count(),
            10,
            "20% of 50"
        );
        let none = RetryBudget::new(0);
        for _ in 0..1000 {
            none.deposit();
        }
        assert_eq!(
            (0..100).take_while(|_| none.withdraw()).count(),
            10,
            "only the reserve"
        );
    }
}
