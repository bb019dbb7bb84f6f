//! The client side: listening sockets ([`ListenerSet`]) and one task per
//! client connection serving HTTP/1.1, HTTP/2 (ALPN over TLS, prior
//! knowledge in plaintext) and upgrades, with parking between requests and
//! graceful shutdown; TLS termination ([`tls`]).

mod body_end;
pub mod conn_limits;
pub mod h2_frames;
mod h2_guard;
mod listener;
mod listeners;
pub mod proxy_protocol;
mod stream;
pub mod tls;

pub use listener::{serve_listener, ConnSettings};
pub use listeners::{ListenerSet, ListenerSettings};
pub use stream::ClientStream;
