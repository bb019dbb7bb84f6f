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
        }
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
        let ejected = self.backends.iter().filter(|b| b.is_ejected()).count();
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
}
