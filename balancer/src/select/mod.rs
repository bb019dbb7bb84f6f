//! Backend selection: which backend of a pool gets the next request.
//!
//! A policy is a [`BackendSelection`]: a pure algorithm over the pool's member
//! list. It never looks at health or drain state itself; the caller passes a
//! `usable` predicate, so health checks, ejection and draining (decided
//! elsewhere) combine with any policy without touching it. The proxy path
//! calls [`BackendSelection::select`] and nothing else, so new policies plug in
//! here without changes to the proxy.

mod round_robin;

use std::fmt::Debug;
use std::net::IpAddr;

pub use round_robin::SmoothWeightedRoundRobin;

/// What a policy may look at when it picks. Borrowed from the request, so
/// building one costs nothing.
#[derive(Debug, Clone, Copy)]
pub struct SelectionContext<'a> {
    pub client_ip: IpAddr,
    pub headers: &'a http::HeaderMap,
    pub uri: &'a http::Uri,
}

/// A load-balancing algorithm over a fixed member list (fixed for the life of
/// one runtime snapshot).
pub trait BackendSelection: Send + Sync + Debug {
    /// Index of the chosen member, skipping members for which `usable` is
    /// false; `None` when no member is usable.
    fn select(&self, ctx: &SelectionContext<'_>, usable: &dyn Fn(usize) -> bool) -> Option<usize>;
}

/// Builds the selection for a pool's policy and member weights.
pub fn for_policy(policy: config::Policy, weights: &[u32]) -> Box<dyn BackendSelection> {
    match policy {
        config::Policy::RoundRobin => Box::new(SmoothWeightedRoundRobin::new(weights)),
    }
}
