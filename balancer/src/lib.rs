//! The balancer: a Layer-7 reverse proxy for real-time game backends.
//!
//! Crate map, in the order a request meets it (every arrow between these
//! modules goes one way; see docs/architecture.md):
//!
//! * [`server`]: listening sockets ([`server::ListenerSet`]) and one task
//!   per client connection (HTTP/1.1 and HTTP/2 on the same port, upgrades
//!   on), parking, idle and shutdown handling.
//! * [`proxy`]: one request's path: route, rewrite, attempts with the retry
//!   decision, respond, WebSocket tunnels; every failure becomes a 4xx/5xx.
//! * [`runtime`]: the immutable snapshot built from the config (route table,
//!   pools with their settings) behind one `ArcSwap`.
//! * [`upstream`]: everything about backends: identity and live state, the
//!   ejection state machine, the connection pool, the HTTP/1.1 codec.
//! * [`select`]: load-balancing policies behind the `BackendSelection` trait.
//! * [`health`]: active health checks writing each backend's health.
//! * [`supervise`]: the backend processes the balancer runs itself
//!   (`[pool.processes]`): spawn, restart with backoff, logs, stop.
//! * [`reload`]: config changes as one planned value, applied once (also
//!   at start-up).
//! * [`admin`] and [`metrics`]: what operators see.
//! * [`app`]: start-up, the serve loop and shutdown; [`upgrade`]: binary
//!   upgrade by handing over listening sockets (the protocol, and the
//!   running process's side).
//! * [`certs`]: certificates and keys from PEM files, verified (used by
//!   TLS listeners, TLS to backends and `balancer check`).
//! * [`socket`], [`clock`], [`workers`]: socket wrappers, the one clock,
//!   the serving threads.
//!
//! Config parsing and validation live in the `config` crate, shared with
//! `balancer check`.

pub mod admin;
pub mod app;
pub mod certs;
pub mod clock;
mod error;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod runtime;
pub mod select;
pub mod server;
pub mod socket;
pub mod supervise;
pub mod upgrade;
pub mod upstream;
pub mod workers;

pub use error::{BoxError, Error};
