//! The slow-clients benchmark behind the `slow_clients` binary
//! (`benches/src/bin/slow_clients.rs`, which documents the method): normal
//! keep-alive clients measured alone, then again beside many clients that
//! hold connections open by being slow, while the balancer's connections to
//! its backends are counted.
//!
//! One job per file:
//!
//! * [`attackers`]: the slow clients (slow head, slow body, slow read),
//!   each a loop of paced connections bounded in count and time, and what
//!   became of each connection.
//! * [`normal`]: the normal clients, with every request's latency.
//! * [`backend_conns`]: the balancer's connections to each backend, from
//!   `/proc/net/tcp` and from the admin API's `open` count, sampled.
//!
//! Process start-up and stopping, the keep-alive client and `/proc` readers
//! are the side-by-side harness's ([`crate::compare`]).

pub mod attackers;
pub mod backend_conns;
pub mod normal;
