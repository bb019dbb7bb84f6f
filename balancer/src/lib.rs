//! The balancer: a Layer-7 reverse proxy for real-time game backends.
//!
//! Crate map, in the order a request meets it:
//!
//! * [`server`]: listening sockets, one task per client connection (HTTP/1.1
//!   and HTTP/2 on the same port, upgrades on), idle and shutdown handling.
//! * [`proxy`]: the request path: route, pick, rewrite headers, forward on a
//!   pooled upstream connection, stream the response back, join WebSocket
//!   tunnels; every failure becomes a 4xx/5xx response.
//! * [`runtime`]: the immutable snapshot built from the config (route table,
//!   pools, `Arc<Backend>` live state) behind one `ArcSwap`.
//! * [`select`]: load-balancing policies behind the `BackendSelection` trait.
//! * [`health`]: active health checks writing each backend's health atomic.
//! * [`reload`]: hot reload: watch the file, diff, swap the snapshot.
//! * [`upgrade`]: zero-downtime binary upgrade by handing over listening sockets.
//! * [`admin`]: the admin listener: JSON status and reload.
//! * [`app`]: start-up, reload and shutdown: bind listeners, serve, drain, exit.
//!
//! Config parsing and validation live in the `config` crate, shared with
//! `balancer check`.

pub mod admin;
pub mod app;
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
pub mod upgrade;
pub mod upstream;
pub mod workers;

pub use error::{BoxError, Error};
