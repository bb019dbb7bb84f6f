//! One backend process: its identity and the live state that must survive
//! config reloads.
//!
//! A backend is known by its pool, its id and its address; nothing else. Settings
//! (timeouts, pool sizes, ejection rules, health check settings) belong to
//! the runtime snapshot and are passed in where they are used, so a reload
//! that edits them keeps every live `Backend`: its health, counters,
//! ejection state, pooled connections and WebSocket tunnels.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use super::connections::ConnectionPool;
use super::ejection::{Ejection, Rules};
use crate::clock::Now;

/// See the module doc. Weight is not here: it belongs to the pool's
/// selection and may change without touching live state.
#[derive(Debug)]
pub struct Backend {
    /// Stable id from the config; stickiness and admin calls use it.
    pub id: Arc<str>,
    pub address: SocketAddr,
    /// `ip:port` pre-parsed once: the `Host` of requests that have none.
    pub authority: http::uri::Authority,
    /// Idle keep-alive connections to this backend.
    pub connections: Arc<ConnectionPool>,
    /// In-flight requests plus open WebSocket tunnels: the load that
    /// least-connections balances and that draining waits for.
    open: Arc<AtomicUsize>,
    /// Requests sent to this backend since it appeared.
    requests: AtomicU64,
    /// [`Health`] as a byte: written by the health checker, read by every pick.
    health: AtomicU8,
    /// Health state changes so far (logs and metrics).
    health_changes: AtomicU64,
    /// Bumped by [`Backend::take_down`]: a check that started before it
    /// says nothing about the process that runs now (see the checker).
    health_epoch: AtomicU64,
    /// Passive ejection: the one state machine (see
    /// [`super::ejection`]); traffic and checks report into it.
    pub ejection: Ejection,
    /// When the health checker last brought it up ([`crate::clock::now_ms`]);
    /// slow start ramps from here (or from the end of an ejection, whichever
    /// is later).
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
    /// Requests queued for a place under `max_connections_per_backend`,
    /// and their wake-up when a place frees.
    waiters: AtomicUsize,
    freed: tokio::sync::Notify,
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
    /// with `assume_up`, else `Unknown` until its first passing check);
    /// new upstream connections are timed into `connect` when given.
    pub fn new(
        id: &str,
        address: SocketAddr,
        health: Health,
        connect: Option<prometheus::Histogram>,
        tls: Option<Arc<super::UpstreamTls>>,
    ) -> Self {
        let authority = address
            .to_string()
            .parse()
            // A SocketAddr always prints as a valid authority.
            .unwrap_or_else(|_| http::uri::Authority::from_static("0.0.0.0:0"));
        let open = Arc::new(AtomicUsize::new(0));
        Self {
            id: id.into(),
            address,
            authority,
            connections: ConnectionPool::new(address, connect, tls, Arc::clone(&open)),
            open,
            requests: AtomicU64::new(0),
            health: AtomicU8::new(health as u8),
            health_changes: AtomicU64::new(0),
            health_epoch: AtomicU64::new(0),
            ejection: Ejection::default(),
            up_since: AtomicU64::new(0),
            drained: tokio_util::sync::CancellationToken::new(),
            operator: AtomicU8::new(Operator::Enabled as u8),
            tunnels: AtomicUsize::new(0),
            metrics: std::sync::OnceLock::new(),
            operator_close: tokio::sync::Notify::new(),
            waiters: AtomicUsize::new(0),
            freed: tokio::sync::Notify::new(),
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

    /// Whether picks may choose this backend at `now`: up, not out, and
    /// enabled by the operator.
    pub fn is_usable(&self, now: &Now, rules: &Rules) -> bool {
        self.is_up()
            && self.operator() == Operator::Enabled
            && self.ejection.out(now, rules).is_none()
    }

    /// Slow-start share of its weight (thousandths) at `now` for a ramp of
    /// `window` ms: from the later of its last coming up and its return
    /// from an ejection.
    pub fn ramp(&self, now: &Now, window: u64, rules: &Rules) -> u32 {
        let now = now.get();
        let since = self
            .up_since
            .load(Ordering::Relaxed)
            .max(self.ejection.load().returned_at(now, rules));
        crate::select::ramp(now, since, window)
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

    /// Records the checker's verdict at `now`; true when it changed the state.
    pub fn set_health(&self, h: Health, now: u64) -> bool {
        let old = self.health.swap(h as u8, Ordering::Relaxed);
        let changed = old != h as u8;
        if changed {
            self.health_changes.fetch_add(1, Ordering::Relaxed);
            if h == Health::Up {
                self.up_since.store(now, Ordering::Relaxed);
            }
        }
        changed
    }

    /// Its process exited (a supervised instance): down at once, and any
    /// health check in flight or passes counted so far no longer count, so
    /// it takes traffic again only after `rise` passes of the new process.
    /// True when it was not down already.
    pub fn take_down(&self, now: u64) -> bool {
        self.health_epoch.fetch_add(1, Ordering::Relaxed);
        self.set_health(Health::Down, now)
    }

    /// Changes with every [`Backend::take_down`].
    pub fn health_epoch(&self) -> u64 {
        self.health_epoch.load(Ordering::Relaxed)
    }

    pub fn health_changes(&self) -> u64 {
        self.health_changes.load(Ordering::Relaxed)
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

    /// Current in-flight requests plus open tunnels.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Requests sent to this backend so far.
    pub fn requests_total(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// [`Backend::open`] if fewer than `cap` are open, else `None`.
    pub fn try_open(self: &Arc<Self>, cap: usize) -> Option<OpenGuard> {
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        Some(OpenGuard(self.clone()))
    }

    /// Waits (at most `timeout`) until fewer than `cap` are open, then
    /// opens; `None` if no place came.
    pub async fn open_within(
        self: &Arc<Self>,
        cap: usize,
        timeout: std::time::Duration,
    ) -> Option<OpenGuard> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.waiters.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiters);
        let wait = async {
            loop {
                // Registered before the check, so a place freed between
                // the two is not missed.
                let freed = self.freed.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                if let Some(g) = self.try_open(cap) {
                    return g;
                }
                freed.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.ok()
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
        if self.0.waiters.load(Ordering::Relaxed) > 0 {
            self.0.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::ejection::{Event, Out};

    fn rules(checked: bool) -> Rules {
        Rules::new(&config::EjectionConfig::default(), checked)
    }

    #[tokio::test]
    async fn usable_needs_up_enabled_and_in() {
        let b = Backend::new("b", "127.0.0.1:9".parse().unwrap(), Health::Up, None, None);
        let r = rules(true);
        let at = Now::at;
        assert!(b.is_usable(&at(1), &r));
        b.set_operator(Operator::Draining);
        assert!(!b.is_usable(&at(1), &r));
        b.set_operator(Operator::Enabled);
        let refused = b.ejection.apply(Event::Refused, &at(10), &r, || false);
        assert_eq!(refused.after.out, Some(Out::Refused));
        assert!(!b.is_usable(&at(1_000_000), &r), "out until a check passes");
        assert_eq!(b.ejection.total(), 1);
        b.ejection
            .apply(Event::CheckPassed { started: 20 }, &at(30), &r, || true);
        assert!(b.is_usable(&at(31), &r));
        b.set_health(Health::Down, 40);
        assert!(!b.is_usable(&at(41), &r));
        assert_eq!(b.health_changes(), 1);
    }
}
