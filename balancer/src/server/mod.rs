//! Accepting client connections and serving HTTP/1.1, HTTP/2 (h2c prior
//! knowledge) and upgrades on each, with graceful shutdown.

pub mod activity;
mod listener;
pub mod prefixed;
pub mod workers;

pub use listener::{serve_listener, ConnSettings};
