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
    /// Replaced by [`Backend::undrain`] (a supervised instance whose new
    /// process took the same port).
    drained: std::sync::Mutex<tokio_util::sync::CancellationToken>,
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
    /// Set by [`Backend::drain_now`]: the Close code its tunnels send
    /// (0: the config's `drain_close_code`) and the window their Close
    /// frames are spread over.
    drain_code: std::sync::atomic::AtomicU16,
    drain_spread_ms: AtomicU64,
    /// Tunnels that took their turn in the spread so far.
    drain_turns: AtomicU64,
    /// The supervisor holds it down (its process is being replaced):
    /// passing checks do not bring it up.
    held: std::sync::atomic::AtomicBool,
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
            drained: std::sync::Mutex::new(tokio_util::sync::CancellationToken::new()),
            operator: AtomicU8::new(Operator::Enabled as u8),
            tunnels: AtomicUsize::new(0),
            metrics: std::sync::OnceLock::new(),
            operator_close: tokio::sync::Notify::new(),
            waiters: AtomicUsize::new(0),
            freed: tokio::sync::Notify::new(),
            drain_code: std::sync::atomic::AtomicU16::new(0),
            drain_spread_ms: AtomicU64::new(0),
            drain_turns: AtomicU64::new(0),
            held: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Ends the drain now: each tunnel sends Close `code` at its own
    /// moment within `spread` (so its clients do not all reconnect in the
    /// same second), then closes.
    pub fn drain_now(&self, code: u16, spread: std::time::Duration) {
        self.drain_code.store(code, Ordering::Relaxed);
        self.drain_spread_ms
            .store(spread.as_millis() as u64, Ordering::Relaxed);
        self.finish_drain();
    }

    /// The Close code set by [`Backend::drain_now`], if any.
    pub fn drain_code(&self) -> Option<u16> {
        Some(self.drain_code.load(Ordering::Relaxed)).filter(|&c| c != 0)
    }

    /// Resolves when this backend's tunnels are to close: at the end of
    /// its drain, then after this tunnel's share of the spread. The k-th
    /// tunnel waits the fractional part of k times the golden ratio of the
    /// window: any number of them covers it evenly (no two clusters, no
    /// luck involved), the first at once.
    pub async fn drain_turn(&self) {
        self.drain_token().cancelled().await;
        let spread = self.drain_spread_ms.load(Ordering::Relaxed);
        if spread > 0 {
            let k = self.drain_turns.fetch_add(1, Ordering::Relaxed);
            let share = (k as f64 * 0.618_033_988_749_895).fract();
            tokio::time::sleep(std::time::Duration::from_millis(spread).mul_f64(share)).await;
        }
    }

    /// The supervisor replaces its process: down now, and checks do not
    /// bring it up until [`Backend::release`].
    pub fn hold(&self, now: u64) {
        self.held.store(true, Ordering::Relaxed);
        self.take_down(now);
    }

    /// Ends [`Backend::hold`].
    pub fn release(&self) {
        self.held.store(false, Ordering::Relaxed);
    }

    /// Ends the drain: remaining tunnels get a Close frame and close.
    pub fn finish_drain(&self) {
        self.drain_token().cancel();
    }

    fn drain_token(&self) -> tokio_util::sync::CancellationToken {
        self.drained
            .lock()
            .map(|t| t.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Tunnels opened from now on are not drained (those that were go on
    /// closing): the same backend serves again, through a new process.
    pub fn undrain(&self) {
        let mut token = self.drained.lock().unwrap_or_else(|e| e.into_inner());
        *token = tokio_util::sync::CancellationToken::new();
        self.drain_code.store(0, Ordering::Relaxed);
        self.drain_turns.store(0, Ordering::Relaxed);
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
        if h == Health::Up && self.held.load(Ordering::Relaxed) {
            return false;
        }
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
    /// When each of `n` tunnels' turn comes after `drain_now`, in ms.
    async fn turns(b: &Arc<Backend>, n: usize) -> Vec<u64> {
        let start = tokio::time::Instant::now();
        let waits: Vec<_> = (0..n)
            .map(|_| {
                let b = Arc::clone(b);
                tokio::spawn(async move {
                    b.drain_turn().await;
                    start.elapsed().as_millis() as u64
                })
            })
            .collect();
        tokio::task::yield_now().await;
        b.drain_now(1012, std::time::Duration::from_millis(1000));
        let mut at = Vec::new();
        for w in waits {
            at.push(w.await.unwrap());
        }
        at.sort_unstable();
        at
    }

    #[tokio::test(start_paused = true)]
    async fn drained_tunnels_take_turns_spread_over_the_window() {
        let b = Arc::new(Backend::new(
            "b",
            "127.0.0.1:9".parse().unwrap(),
            Health::Up,
            None,
            None,
        ));
        let at = turns(&b, 8).await;
        assert_eq!(b.drain_code(), Some(1012));
        // Golden-ratio turns: 0, 618, 236, 854, 472, 90, 708, 326 ms (the
        // timer may round a sleep up by 1 ms).
        let want = [0, 90, 236, 326, 472, 618, 708, 854];
        assert!(
            at.iter().zip(want).all(|(a, w)| (w..=w + 1).contains(a)),
            "{at:?}"
        );
        // No gap wider than a quarter of the window.
        assert!(at.windows(2).all(|w| w[1] - w[0] <= 250), "{at:?}");
        // A tunnel opened once the backend serves again is not drained.
        b.undrain();
        assert_eq!(b.drain_code(), None);
        let later = tokio::time::timeout(std::time::Duration::from_secs(60), b.drain_turn()).await;
        assert!(later.is_err(), "an undrained backend's tunnels stay");
        let again = turns(&b, 2).await;
        assert!(
            again[0] <= 1 && (618..=619).contains(&again[1]),
            "the turns start over: {again:?}"
        );
    }

    #[test]
    fn a_held_backend_stays_down_until_released() {
        let b = Backend::new("b", "127.0.0.1:9".parse().unwrap(), Health::Up, None, None);
        b.hold(10);
        assert_eq!(b.health(), Health::Down);
        assert!(!b.set_health(Health::Up, 20), "checks cannot bring it up");
        assert_eq!(b.health(), Health::Down);
        b.release();
        assert!(b.set_health(Health::Up, 30));
        assert!(b.is_up());
    }
}
