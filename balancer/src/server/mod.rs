//! The client side: listening sockets ([`ListenerSet`]) and one task per
//! client connection serving HTTP/1.1, HTTP/2 (h2c prior knowledge) and
//! upgrades, with parking between requests and graceful shutdown.

mod listener;
mod listeners;

pub use listener::{serve_listener, ConnSettings};
pub use listeners::ListenerSet;
