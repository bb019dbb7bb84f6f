//! Backend selection: which backend of a pool gets the next request.
//!
//! A policy is a [`BackendSelection`]: an algorithm over the pool's member
//! list, fixed for the life of one runtime snapshot. It never decides health
//! or drain state itself; it asks [`Members::usable`], so health checks,
//! ejection and draining (decided elsewhere) combine with any policy without
//! touching it. The proxy path calls [`BackendSelection::select`] and nothing
//! else, so new policies plug in here without changes to the proxy.
//!
//! | policy | module | key |
//! |---|---|---|
//! | `round_robin` | `round_robin.rs` | none: smooth weighted rotation |
//! | `least_connections` | [`least_connections`] | live load of each member |
//! | `ip_hash`, `hash` | [`keyed`] over [`rendezvous`] | client IP / a request key |
//! | `cookie` | [`cookie`] | a signed cookie naming the backend |
//!
//! The sticky policies hash with a fixed function of the key and the backend
//! *id* (never the address or the list order), so independent balancers with
//! the same config agree on every pick, and on every replacement when a
//! backend is unavailable.

pub mod cookie;
pub mod key;
pub mod keyed;
pub mod least_connections;
pub mod rendezvous;
mod round_robin;

use std::fmt::Debug;
use std::net::IpAddr;

pub use cookie::StickyCookie;
pub use keyed::Keyed;
pub use least_connections::LeastConnections;
pub use rendezvous::Rendezvous;
pub use round_robin::SmoothWeightedRoundRobin;

/// What a policy may look at when it picks. Borrowed from the request, so
/// building one costs nothing.
#[derive(Debug, Clone, Copy)]
pub struct SelectionContext<'a> {
    /// The client's address (see `trusted_proxies`), not necessarily the TCP peer.
    pub client_ip: IpAddr,
    pub headers: &'a http::HeaderMap,
    pub uri: &'a http::Uri,
}

/// The live view of a pool's members a policy picks from.
pub trait Members {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether member `i` may take new requests (up, not draining).
    fn usable(&self, i: usize) -> bool;
    /// Open connections of member `i`: in-flight requests plus tunnels.
    fn load(&self, i: usize) -> usize;
    /// Slow start: the share of its weight member `i` gets now, in
    /// thousandths (100 to 1000). Sticky policies ignore it: moving keys
    /// would break stickiness.
    fn ramp(&self, _i: usize) -> u32 {
        FULL_RAMP
    }
}

/// [`Members::ramp`] of a member at full weight.
pub const FULL_RAMP: u32 = 1000;

/// Slow-start share in thousandths: 10% at `since`, rising linearly to 100%
/// after `window`. `since == 0` means never (re)started: full weight.
pub fn ramp(now: u64, since: u64, window: u64) -> u32 {
    if window == 0 || since == 0 || now >= since.saturating_add(window) {
        return FULL_RAMP;
    }
    let elapsed = now.saturating_sub(since);
    (100 + (900 * elapsed / window)) as u32
}

/// A policy's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    /// The request did not carry a valid sticky token for this member: the
    /// response should (re)issue it (cookie policy only).
    pub renew_sticky: bool,
}

impl Pick {
    pub fn plain(index: usize) -> Self {
        Self {
            index,
            renew_sticky: false,
        }
    }
}

/// A load-balancing algorithm over a fixed member list.
pub trait BackendSelection: Send + Sync + Debug {
    /// The chosen member among the usable ones; `None` when none is usable.
    fn select(&self, ctx: &SelectionContext<'_>, members: &dyn Members) -> Option<Pick>;

    /// The `Set-Cookie` value that pins a client to member `i`, for policies
    /// that stick by cookie.
    fn set_cookie(&self, _i: usize) -> Option<&http::HeaderValue> {
        None
    }
}

/// Builds the selection for a pool from its config. `ids` and `weights` are
/// the members' stable ids and weights, in member order.
pub fn for_pool(pool: &config::PoolConfig) -> Box<dyn BackendSelection> {
    let ids: Vec<&str> = pool.backends.iter().map(|b| b.id.as_str()).collect();
    let weights: Vec<u32> = pool.backends.iter().map(|b| b.weight).collect();
    match pool.policy {
        config::Policy::RoundRobin => Box::new(SmoothWeightedRoundRobin::new(&weights)),
        config::Policy::LeastConnections => Box::new(LeastConnections::new(&weights)),
        config::Policy::IpHash => Box::new(Keyed::client_ip(&ids, &weights)),
        config::Policy::Hash => match &pool.hash_key {
            Some(k) => Box::new(Keyed::request_key(k.clone(), &ids, &weights)),
            // Validation requires a key for `hash`; never reached.
            None => Box::new(LeastConnections::new(&weights)),
        },
        config::Policy::Cookie => match &pool.sticky {
            Some(s) => Box::new(StickyCookie::new(&pool.name, s, &ids, &weights)),
            // Validation requires [pool.sticky] for `cookie`; never reached.
            None => Box::new(LeastConnections::new(&weights)),
        },
    }
}

/// Members as plain vectors, for tests and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct StaticMembers {
    pub usable: Vec<bool>,
    pub load: Vec<usize>,
    /// Slow-start shares; empty means all at full weight.
    pub ramp: Vec<u32>,
}

impl StaticMembers {
    /// `n` usable members with no load.
    pub fn new(n: usize) -> Self {
        Self {
            usable: vec![true; n],
            load: vec![0; n],
            ramp: Vec::new(),
        }
    }
}

impl Members for StaticMembers {
    fn len(&self) -> usize {
        self.usable.len()
    }
    fn usable(&self, i: usize) -> bool {
        self.usable.get(i).copied().unwrap_or(false)
    }
    fn load(&self, i: usize) -> usize {
        self.load.get(i).copied().unwrap_or(0)
    }
    fn ramp(&self, i: usize) -> u32 {
        self.ramp.get(i).copied().unwrap_or(FULL_RAMP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_rises_from_ten_percent_to_full() {
        assert_eq!(ramp(1_000, 1_000, 10_000), 100);
        assert_eq!(ramp(6_000, 1_000, 10_000), 550);
        assert_eq!(ramp(11_000, 1_000, 10_000), 1000);
        assert_eq!(ramp(99_000, 1_000, 10_000), 1000);
        assert_eq!(ramp(5, 1_000, 0), 1000, "off");
        assert_eq!(ramp(0, 1_000, 10_000), 100, "clock before since");
        assert_eq!(ramp(50, 0, 10_000), 1000, "never restarted");
    }
}
