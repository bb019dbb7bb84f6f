//! A pool: the backends one route sends to, how it picks among them, and
//! the settings its requests to them follow.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use http::HeaderValue;

use crate::clock::Now;
use crate::select::{BackendSelection, Members, SelectionContext};
use crate::upstream::ejection::{self, Out};
use crate::upstream::{Backend, Operator, UpstreamSettings};

#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    pub backends: Vec<Arc<Backend>>,
    /// Weight of each member, parallel to `backends`.
    pub weights: Vec<u32>,
    selection: Box<dyn BackendSelection>,
    pub retry: config::RetryConfig,
    /// Passive ejection, as the backends' state machines read it.
    pub ejection: ejection::Rules,
    /// Count 5xx responses as failures (`ejection.on_5xx`).
    pub on_5xx: bool,
    /// Connect timeout, idle time and pool size for upstream connections.
    pub upstream: UpstreamSettings,
    pub retry_budget: RetryBudget,
    /// Slow-start window in ms (0: off).
    pub slow_start_ms: u64,
    /// Metric handles (none when metrics are off).
    pub metrics: Option<crate::metrics::PoolMetrics>,
    /// `buffer_body`: bodies of a known length up to this are read whole
    /// before a backend is picked.
    pub buffer_body: u64,
    /// `buffer_body_file`, `buffer_response`, `buffer_response_file`.
    pub buffering: Buffering,
    /// `max_connections_per_backend` and its queue.
    pub capacity: Option<config::Capacity>,
    /// Requests waiting in that queue now.
    pub queued: std::sync::atomic::AtomicUsize,
}

/// How far bodies are buffered past `buffer_body` (see `proxy::buffering`).
#[derive(Debug, Clone, Copy)]
pub struct Buffering {
    /// Request body bytes past `buffer_body` that may go to a file.
    pub body_file: u64,
    /// Response bytes read ahead of the client in memory (0: none, the
    /// response streams at the client's pace).
    pub response: u64,
    /// ...and then in a file.
    pub response_file: u64,
}

impl Default for Buffering {
    fn default() -> Self {
        Self {
            body_file: config::DEFAULT_BUFFER_BODY_FILE,
            response: config::DEFAULT_BUFFER_RESPONSE,
            response_file: config::DEFAULT_BUFFER_RESPONSE_FILE,
        }
    }
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
            ejection: ejection::Rules::new(&config::EjectionConfig::default(), false),
            on_5xx: false,
            upstream: UpstreamSettings::new(
                &config::Timeouts::default(),
                config::DEFAULT_MAX_IDLE_PER_BACKEND,
            ),
            retry_budget: RetryBudget::new(config::RetryConfig::default().budget_percent),
            slow_start_ms: 0,
            metrics: None,
            buffer_body: config::DEFAULT_BUFFER_BODY,
            buffering: Buffering::default(),
            capacity: None,
            queued: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Sets body buffering and the per-backend capacity.
    pub fn with_capacity(mut self, p: &config::PoolConfig) -> Self {
        self.buffer_body = p.buffer_body;
        self.buffering = Buffering {
            body_file: p.buffer_body_file,
            response: p.buffer_response,
            response_file: p.buffer_response_file,
        };
        self.capacity = p.capacity;
        self
    }

    /// Sets the metric handles.
    pub fn with_metrics(mut self, m: Option<crate::metrics::PoolMetrics>) -> Self {
        self.metrics = m;
        self
    }

    /// Sets the slow-start window.
    pub fn with_slow_start(mut self, window: std::time::Duration) -> Self {
        self.slow_start_ms = crate::clock::millis(window);
        self
    }

    /// Sets the pool's retry and ejection settings; `checked`: the pool
    /// has active health checks.
    pub fn with_failure_policy(
        mut self,
        retry: config::RetryConfig,
        ejection: config::EjectionConfig,
        checked: bool,
    ) -> Self {
        self.retry_budget = RetryBudget::new(retry.budget_percent);
        self.retry = retry;
        self.ejection = ejection::Rules::new(&ejection, checked);
        self.on_5xx = ejection.on_5xx;
        self
    }

    /// Sets the upstream connection settings.
    pub fn with_upstream(mut self, upstream: UpstreamSettings) -> Self {
        self.upstream = upstream;
        self
    }

    /// What the ejection cap reads at `now`: the backends that could take
    /// traffic but for an ejection for failures (up, enabled, not refusing
    /// connections), and how many of those are out for failures. A backend
    /// that refuses connections or that checks hold down is out whatever
    /// the cap says, and is no share of it: otherwise a pool with one dead
    /// backend could eject its last live one.
    fn cap_counts(&self, now: &Now) -> (usize, usize) {
        let (mut eligible, mut out) = (0, 0);
        for b in &self.backends {
            if !b.is_up() || b.operator() != Operator::Enabled {
                continue;
            }
            match b.ejection.out(now, &self.ejection) {
                Some(Out::Refused) => {}
                Some(Out::Failures) => {
                    eligible += 1;
                    out += 1;
                }
                None => eligible += 1,
            }
        }
        (eligible, out)
    }

    /// Whether one more backend may be ejected for failures at `now`
    /// without passing `ejection.max_percent` of the backends that could
    /// take traffic.
    pub fn may_eject(&self, now: &Now) -> bool {
        let (eligible, out) = self.cap_counts(now);
        (out + 1) * 100 <= eligible * self.ejection.max_percent as usize
    }

    /// Whether more than `ejection.max_percent` of them is out for failures
    /// at `now` (two backends crossed the threshold at once).
    pub fn ejected_share_exceeded(&self, now: &Now) -> bool {
        let (eligible, out) = self.cap_counts(now);
        out * 100 > eligible * self.ejection.max_percent as usize
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
            rules: &self.ejection,
            // Read once per pick, and only if a member is out or ramping.
            now: Now::lazy(),
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
    rules: &'a ejection::Rules,
    now: Now,
}

impl Members for LiveMembers<'_> {
    fn len(&self) -> usize {
        self.backends.len()
    }

    fn usable(&self, i: usize) -> bool {
        // Health checks, passive ejection and the operator decide.
        self.backends
            .get(i)
            .is_some_and(|b| b.is_usable(&self.now, self.rules))
            && !self.exclude.contains(&i)
    }

    fn load(&self, i: usize) -> usize {
        self.backends.get(i).map_or(0, |b| b.open_connections())
    }

    fn ramp(&self, i: usize) -> u32 {
        match self.backends.get(i) {
            Some(b) if self.slow_start_ms > 0 => b.ramp(&self.now, self.slow_start_ms, self.rules),
            _ => crate::select::FULL_RAMP,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::LeastConnections;
    use crate::upstream::ejection::{Change, Event};
    use crate::upstream::Health;

    fn pool_of(n: usize, checked: bool) -> Pool {
        let backends: Vec<Arc<Backend>> = (0..n)
            .map(|i| {
                let addr = format!("127.0.0.1:{}", 9000 + i).parse().unwrap();
                Arc::new(Backend::new(&format!("b{i}"), addr, Health::Up, None, None))
            })
            .collect();
        let ejection = config::EjectionConfig {
            consecutive_failures: 1,
            ..config::EjectionConfig::default()
        };
        Pool::new(
            "p",
            backends,
            vec![1; n],
            Box::new(LeastConnections::new(&vec![1; n])),
        )
        .with_failure_policy(config::RetryConfig::default(), ejection, checked)
    }

    fn fail(pool: &Pool, i: usize, event: Event, now: u64) -> Change {
        let now = Now::at(now);
        pool.backends[i]
            .ejection
            .apply(event, &now, &pool.ejection, || pool.may_eject(&now))
            .change
    }

    #[tokio::test]
    async fn never_ejects_more_than_max_percent_for_failures() {
        let pool = pool_of(4, false);
        let ejected: Vec<bool> = (0..4)
            .map(|i| fail(&pool, i, Event::Failure, 10) != Change::None)
            .collect();
        assert_eq!(ejected, vec![true, true, false, false], "50% of 4 is 2");
    }

    /// The measured failure of issue 13: two backends came back (their
    /// checks passed) and must not hold the cap's slots, and a refusing
    /// backend is out whatever the cap says.
    #[tokio::test]
    async fn recovered_backends_hold_no_slot_and_refusals_ignore_the_cap() {
        let pool = pool_of(4, true);
        assert_ne!(fail(&pool, 0, Event::Failure, 10), Change::None);
        assert_ne!(fail(&pool, 1, Event::Failure, 10), Change::None);
        assert_eq!(
            fail(&pool, 2, Event::Failure, 10),
            Change::None,
            "cap reached"
        );
        // A refusal takes b2 out anyway.
        assert!(matches!(
            fail(&pool, 2, Event::Refused, 11),
            Change::Ejected { .. }
        ));
        assert!(!pool.backends[2].is_usable(&Now::at(12), &pool.ejection));
        // b0 and b1 pass a check: back at once, and the cap is free again.
        for i in 0..2 {
            assert_eq!(
                fail(&pool, i, Event::CheckPassed { started: 20 }, 21),
                Change::Returned
            );
        }
        assert!(pool.may_eject(&Now::at(22)));
        assert_ne!(fail(&pool, 3, Event::Failure, 22), Change::None);
    }

    /// One backend dead (refusing), the other failing: balancing over the
    /// one left beats failing everyone, so it stays in.
    #[tokio::test]
    async fn the_last_backend_that_could_serve_is_not_ejected() {
        let pool = pool_of(2, false);
        assert!(matches!(
            fail(&pool, 0, Event::Refused, 10),
            Change::Ejected { .. }
        ));
        assert_eq!(fail(&pool, 1, Event::Failure, 11), Change::None);
        assert!(pool.backends[1].is_usable(&Now::at(12), &pool.ejection));
        // A backend held down by checks counts no more than a refusing one.
        let pool = pool_of(2, true);
        pool.backends[0].set_health(crate::upstream::Health::Down, 1);
        assert_eq!(fail(&pool, 1, Event::Failure, 11), Change::None);
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
