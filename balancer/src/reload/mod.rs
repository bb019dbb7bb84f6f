//! Hot reload: the config file changes (or SIGHUP arrives), and the running
//! balancer moves to the new config with nothing dropped.
//!
//! ```text
//! file change (notify, debounced) ─┐
//! SIGHUP ──────────────────────────┼─▶ load + validate (same code as `balancer check`)
//!                                  │      │ invalid: log every error, keep the old config
//!                                  │      ▼
//!                                  │   bind added listeners (a failure rejects the reload)
//!                                  │      ▼
//!                                  │   Snapshot::build(new, Some(old)) ─▶ ArcSwap::store
//!                                  │      ▼
//!                                  └─  listeners: start added, stop removed (never re-bind kept ones)
//!                                      checkers: start for new backends, stop for removed ones
//!                                      removed backends: drain (tunnels get a Close frame at drain_timeout)
//!                                      one log line with the diff and the new generation
//! ```

mod diff;
mod watch;

pub use diff::ConfigDiff;
pub use watch::watch_file;
