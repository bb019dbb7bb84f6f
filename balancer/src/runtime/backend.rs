//! One backend process and its live state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::proxy::upstream::UpstreamPool;
use crate::server::activity::now_ms;

/// Settings that, when changed, need a new upstream client (and so a new
/// [`Backend`]); everything else about a backend can change in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
}

/// A backend: identity, address and the state that must survive config
/// reloads. Weight is not here: it belongs to the pool's selection and may
/// change without touching live state.
#[derive(Debug)]
pub struct Backend {
    /// Stable id from the config; stickiness and admin calls use it.
    pub id: Arc<str>,
    pub address: SocketAddr,
    /// `ip:port` pre-parsed once, used to build every upstream URI.
    pub authority: http::uri::Authority,
    pub(crate) settings: UpstreamSettings,
    /// The HTTP/1.1 client to this backend, with its keep-alive pool.
    pub upstream: Arc<UpstreamPool>,
    /// In-flight requests plus open WebSocket tunnels: the load that
    /// least-connections balances and that draining waits for.
    open: AtomicUsize,
    /// Requests sent to this backend since it appeared.
    requests: AtomicU64,
    /// [`Health`] as a byte: written by the health checker, read by every pick.
    health: AtomicU8,
    /// Health state changes so far (for logs now, metrics later).
    health_changes: AtomicU64,
    /// Passive outlier detection: failures in a row from real traffic.
    consecutive_failures: AtomicU32,
    /// Ejected until this time ([`now_ms`]); 0 when not ejected.
    ejected_until: AtomicU64,
    /// Ejections in the current series (the ejection time doubles with each).
    ejections: AtomicU32,
    /// Ejections so far (for logs now, metrics later).
    ejections_total: AtomicU64,
    /// An active checker runs for this backend: an ejection then ends only
    /// with a check that passes after the ejection time.
    checked: AtomicBool,
    /// Ejection time is over (or not) but no passing check came since.
    awaiting_pass: AtomicBool,
    /// When the health checker last brought it up ([`now_ms`]); slow start
    /// ramps from here (or from the end of an ejection, whichever is later).
    up_since: AtomicU64,
    /// Fired when a removed backend's drain time is over: its tunnels close.
    drained: tokio_util::sync::CancellationToken,
    /// [`Operator`] as a byte: set through the admin API, survives reloads.
    operator: AtomicU8,
    /// Open WebSocket tunnels (also counted in `open`).
    tunnels: AtomicUsize,
    /// Metric handles, resolved once when the backend first appears.
    metrics: std::sync::OnceLock<crate::metrics::BackendMetrics>,
    /// Wakes this backend's tunnels when the operator disables it.
    operator_close: tokio::sync::Notify,
}

/// The operator's say about a backend (admin API), separate from health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// Takes traffic (when healthy).
    Enabled = 0,
    /// No new requests or tunnels; open ones stay until they end.
    Draining = 1,
    /// No new requests or tunnels; open tunnels are closed with a Close frame now.
    Disabled = 2,
}

impl Operator {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Draining => "draining",
            Self::Disabled => "disabled",
        }
    }
}

/// What the health checker last concluded about a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Checked, but no verdict yet: takes no traffic.
    Unknown = 0,
    Up = 1,
    Down = 2,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

impl Backend {
    /// A backend starting in `health` (`Up` for pools without checks or
    /// with `assume_up`, else `Unknown` until its first passing check).
    pub fn new(id: &str, address: SocketAddr, settings: UpstreamSettings, health: Health) -> Self {
        Self::with_connect_metric(id, address, settings, health, None)
    }

    /// [`Backend::new`], timing new upstream connections into `connect`.
    pub fn with_connect_metric(
        id: &str,
        address: SocketAddr,
        settings: UpstreamSettings,
        health: Health,
        connect: Option<prometheus::Histogram>,
    ) -> Self {
        let upstream = UpstreamPool::new(address, settings, connect);
        let authority = address
            .to_string()
            .parse()
            // A SocketAddr always prints as a valid authority.
            .unwrap_or_else(|_| http::uri::Authority::from_static("0.0.0.0:0"));
        Self {
            id: id.into(),
            address,
            authority,
            settings,
            upstream,
            open: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            health: AtomicU8::new(health as u8),
            health_changes: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            ejections_total: AtomicU64::new(0),
            checked: AtomicBool::new(false),
            awaiting_pass: AtomicBool::new(false),
            up_since: AtomicU64::new(0),
            drained: tokio_util::sync::CancellationToken::new(),
            operator: AtomicU8::new(Operator::Enabled as u8),
            tunnels: AtomicUsize::new(0),
            metrics: std::sync::OnceLock::new(),
            operator_close: tokio::sync::Notify::new(),
        }
    }

    /// Fires when this backend, removed from the config, has drained for
    /// `drain_timeout`: its remaining tunnels close.
    pub fn drained(&self) -> tokio_util::sync::CancellationToken {
        self.drained.clone()
    }

    /// Ends the drain: remaining tunnels get a Close frame and close.
    pub fn finish_drain(&self) {
        self.drained.cancel();
    }

    /// Slow-start share of its weight (thousandths) at `now` for a ramp of
    /// `window` ms.
    pub fn ramp(&self, now: u64, window: u64) -> u32 {
        let since = self
            .up_since
            .load(Ordering::Relaxed)
            .max(self.ejected_until.load(Ordering::Relaxed));
        crate::select::ramp(now, since, window)
    }

    /// Whether passive outlier detection has this backend out right now.
    /// One atomic load for a backend never ejected; one clock read after.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// [`Backend::is_ejected`] at a given time (tests drive the clock).
    pub fn is_ejected_at(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && (now < until || self.awaiting_pass.load(Ordering::Relaxed))
    }

    /// Whether an active health checker runs for this backend (set by
    /// whoever starts and stops checkers).
    pub fn set_checked(&self, checked: bool) {
        self.checked.store(checked, Ordering::Relaxed);
        if !checked {
            self.awaiting_pass.store(false, Ordering::Relaxed);
        }
    }

    /// A health check passed at `now`: an ejection whose time is over ends.
    pub fn check_passed_at(&self, now: u64) {
        if self.awaiting_pass.load(Ordering::Relaxed)
            && now >= self.ejected_until.load(Ordering::Relaxed)
        {
            self.awaiting_pass.store(false, Ordering::Relaxed);
        }
    }

    pub fn ejections_total(&self) -> u64 {
        self.ejections_total.load(Ordering::Relaxed)
    }

    /// A response came back: the failure streak ends.
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// One more failure from real traffic; `Some(duration)` when it crossed
    /// the threshold and this call ejected the backend. `may_eject` is the
    /// pool's say (its `max_percent` cap).
    pub fn record_failure(
        &self,
        cfg: &config::EjectionConfig,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<std::time::Duration> {
        self.record_failure_at(now_ms(), cfg, may_eject)
    }

    /// [`Backend::record_failure`] at a given time (tests drive the clock).
    pub fn record_failure_at(
        &self,
        now: u64,
        cfg: &config::EjectionConfig,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<std::time::Duration> {
        if cfg.consecutive_failures == 0 || self.is_ejected_at(now) {
            // Failures of requests already in flight when it was ejected do
            // not start the next streak.
            return None;
        }
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < cfg.consecutive_failures || !may_eject() {
            return None;
        }
        let previous_until = self.ejected_until.load(Ordering::Relaxed);
        // A backend that stayed in for `max` since its last ejection starts a
        // new series at `base`.
        let series = if previous_until != 0
            && now.saturating_sub(previous_until) < cfg.max.as_millis() as u64
        {
            self.ejections.load(Ordering::Relaxed) + 1
        } else {
            1
        };
        let factor = 1u32 << (series - 1).min(16);
        let duration = cfg.base.saturating_mul(factor).min(cfg.max);
        let until = now + duration.as_millis() as u64;
        // Only one of several concurrent failures ejects.
        if self
            .ejected_until
            .compare_exchange(previous_until, until, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        // Counted only by the winner, so concurrent failures do not inflate
        // the series.
        self.ejections.store(series, Ordering::Relaxed);
        if self.checked.load(Ordering::Relaxed) {
            self.awaiting_pass.store(true, Ordering::Relaxed);
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.ejections_total.fetch_add(1, Ordering::Relaxed);
        Some(duration)
    }

    /// Takes back an ejection that turned out to break the pool's
    /// `max_percent` cap (another backend was ejected at the same moment).
    pub fn cancel_ejection(&self) {
        self.awaiting_pass.store(false, Ordering::Relaxed);
        self.ejected_until.store(0, Ordering::Relaxed);
        self.ejections_total.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Relaxed) {
            1 => Health::Up,
            2 => Health::Down,
            _ => Health::Unknown,
        }
    }

    /// Whether the health checker has this backend up.
    pub fn is_up(&self) -> bool {
        self.health() == Health::Up
    }

    /// Whether picks may choose this backend: up, not ejected, and enabled
    /// by the operator.
    pub fn is_usable(&self) -> bool {
        self.is_up() && !self.is_ejected() && self.operator() == Operator::Enabled
    }

    /// Open WebSocket tunnels.
    pub fn tunnels(&self) -> usize {
        self.tunnels.load(Ordering::Relaxed)
    }

    /// Counts a tunnel as open until the returned guard drops.
    pub fn tunnel_opened(self: &Arc<Self>) -> TunnelCount {
        self.tunnels.fetch_add(1, Ordering::Relaxed);
        TunnelCount(Arc::clone(self))
    }

    /// Metric handles (none when metrics are off).
    pub fn metrics(&self) -> Option<&crate::metrics::BackendMetrics> {
        self.metrics.get()
    }

    /// Sets the metric handles once.
    pub fn set_metrics(&self, m: crate::metrics::BackendMetrics) {
        let _ = self.metrics.set(m);
    }

    /// What the operator set through the admin API.
    pub fn operator(&self) -> Operator {
        match self.operator.load(Ordering::Relaxed) {
            1 => Operator::Draining,
            2 => Operator::Disabled,
            _ => Operator::Enabled,
        }
    }

    /// Sets the operator state; disabling also closes its tunnels (with a
    /// Close frame) at once.
    pub fn set_operator(&self, state: Operator) {
        self.operator.store(state as u8, Ordering::Relaxed);
        if state == Operator::Disabled {
            self.operator_close.notify_waiters();
        }
    }

    /// Resolves when the operator disables this backend.
    pub async fn disabled(&self) {
        loop {
            let notified = self.operator_close.notified();
            if self.operator() == Operator::Disabled {
                return;
            }
            notified.await;
        }
    }

    /// Records the checker's verdict; true when it changed the state.
    pub fn set_health(&self, h: Health) -> bool {
        let old = self.health.swap(h as u8, Ordering::Relaxed);
        let changed = old != h as u8;
        if changed {
            self.health_changes.fetch_add(1, Ordering::Relaxed);
            if h == Health::Up {
                self.up_since.store(now_ms(), Ordering::Relaxed);
            }
        }
        changed
    }

    pub fn health_changes(&self) -> u64 {
        self.health_changes.load(Ordering::Relaxed)
    }

    /// Current in-flight requests plus open tunnels.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Requests sent to this backend so far.
    pub fn requests_total(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Counts one more request (and open connection) until the guard drops.
    pub fn open(self: &Arc<Self>) -> OpenGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        OpenGuard(self.clone())
    }
}

/// Holds one unit of a backend's tunnel count.
#[derive(Debug)]
pub struct TunnelCount(Arc<Backend>);

impl Drop for TunnelCount {
    fn drop(&mut self) {
        self.0.tunnels.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Holds one unit of a backend's open-connection count; dropping it releases it.
/// A request keeps its guard until the response body is done; a WebSocket
/// tunnel keeps it until the tunnel closes.
#[derive(Debug)]
pub struct OpenGuard(Arc<Backend>);

impl OpenGuard {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn backend() -> Backend {
        let settings = UpstreamSettings {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_idle: 1,
        };
        Backend::new("b", "127.0.0.1:9".parse().unwrap(), settings, Health::Up)
    }

    fn cfg() -> config::EjectionConfig {
        config::EjectionConfig {
            consecutive_failures: 3,
            base: Duration::from_secs(5),
            max: Duration::from_secs(60),
            max_percent: 50,
            on_5xx: false,
        }
    }

    /// Fails `n` times at `now`; returns the ejection, if any.
    fn fail(b: &Backend, now: u64, n: u32) -> Option<Duration> {
        (0..n)
            .filter_map(|_| b.record_failure_at(now, &cfg(), || true))
            .last()
    }

    #[tokio::test]
    async fn ejection_needs_consecutive_failures_and_doubles_up_to_max() {
        let b = backend();
        assert_eq!(fail(&b, 1_000, 2), None);
        b.record_success();
        assert_eq!(fail(&b, 1_000, 2), None, "a success resets the streak");
        assert_eq!(fail(&b, 1_000, 1), Some(Duration::from_secs(5)));
        assert!(b.is_ejected_at(5_999));
        assert!(!b.is_ejected_at(6_000));
        // Each repeat within `max` of the last ejection doubles: 10, 20, 40, 60 (cap), 60.
        let mut now = 6_000;
        for want in [10, 20, 40, 60, 60] {
            assert_eq!(fail(&b, now, 3), Some(Duration::from_secs(want)));
            now += want * 1_000;
        }
        assert_eq!(b.ejections_total(), 6);
        // In again for longer than `max`: the series starts over at `base`.
        now += 61_000;
        assert_eq!(fail(&b, now, 3), Some(Duration::from_secs(5)));
    }

    #[tokio::test]
    async fn with_active_checks_an_ejection_ends_with_a_passing_check() {
        let b = backend();
        b.set_checked(true);
        assert_eq!(fail(&b, 0, 3), Some(Duration::from_secs(5)));
        b.check_passed_at(3_000);
        assert!(
            b.is_ejected_at(6_000),
            "a pass during the ejection does not end it"
        );
        assert!(b.is_ejected_at(60_000), "time alone does not end it");
        b.check_passed_at(60_000);
        assert!(!b.is_ejected_at(60_001));
    }

    #[tokio::test]
    async fn failures_while_ejected_or_vetoed_do_not_eject() {
        let b = backend();
        assert!(fail(&b, 0, 3).is_some());
        assert_eq!(fail(&b, 1_000, 10), None, "already ejected");
        // Failures while ejected do not count towards the next streak.
        assert_eq!(fail(&b, 5_000, 2), None);
        assert!(fail(&b, 5_000, 1).is_some());
        let c = backend();
        assert_eq!(
            (0..5)
                .filter_map(|_| c.record_failure_at(0, &cfg(), || false))
                .count(),
            0
        );
        assert!(!c.is_ejected_at(0));
    }
}
