//! The runtime snapshot: the config turned into the objects requests use.
//!
//! One immutable [`Snapshot`] sits behind one `ArcSwap`. A request loads it
//! once and keeps that `Arc` for its whole life, so it never sees half of a
//! change. Live state (health, ejection, open-connection counts, pooled
//! upstream connections) lives in `Arc<Backend>` objects
//! ([`crate::upstream`]) that a new snapshot reuses for every backend the
//! reload plan keeps, so rebuilding a snapshot loses nothing.

mod pool;
mod route;
mod snapshot;

pub use pool::{Pool, RetryBudget};
pub use route::{normalize_host, Route, RouteTable, Upgrades};
pub use snapshot::{BackendKey, Snapshot, UpstreamTlsByPool};
