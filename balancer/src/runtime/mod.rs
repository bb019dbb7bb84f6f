//! The runtime snapshot: the config turned into the objects requests use.
//!
//! One immutable [`Snapshot`] sits behind one `ArcSwap`. A request loads it
//! once and keeps that `Arc` for its whole life, so it never sees half of a
//! change. Live state (open-connection counts, pooled upstream connections)
//! lives in `Arc<Backend>` objects that a new snapshot reuses for every
//! backend that did not change, so rebuilding a snapshot loses nothing.

mod backend;
mod pool;
mod route;
mod snapshot;

pub use backend::{Backend, Health, OpenGuard, Operator, TunnelCount, UpstreamSettings};
pub use pool::Pool;
pub use route::{normalize_host, RouteTable};
pub use snapshot::Snapshot;
