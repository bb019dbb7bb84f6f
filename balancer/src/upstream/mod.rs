//! Everything about backends: who they are and what state they are in
//! ([`Backend`], with passive [`ejection`]), the keep-alive connections to
//! them ([`ConnectionPool`], over TCP or [`tls`]), and the HTTP/1.1 spoken to them ([`codec`],
//! [`chunked`], the exchange and the streamed [`UpstreamBody`]).
//!
//! ```text
//! proxy ──▶ ConnectionPool::send(request, settings) ──▶ exchange: checkout or connect,
//!              │                                          write head + body, read head
//!              │ UpstreamError { reached: No | Maybe }    (codec::parse_head, 1xx skipped)
//!              ▼                                               │
//!           retry decision (proxy::retry)                      ▼
//!                                      UpstreamBody: Content-Length / chunked / to the close,
//!                                      socket back to the pool when the body ends cleanly
//! ```
//!
//! Nothing here reads the config or the runtime snapshot: settings come in
//! with each call, so a reload that changes them keeps every live
//! [`Backend`] (see [`backend`]).

pub mod backend;
mod body;
pub mod chunked;
pub mod codec;
mod connections;
pub mod ejection;
mod error;
mod exchange;
pub mod proxy_header;
mod request_body;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
pub mod tls;

pub use backend::{Backend, Health, OpenGuard, Operator, TunnelCount};
pub use body::{UpstreamBody, UpstreamIo};
pub use codec::is_idempotent;
pub use connections::{ConnectionPool, Sockets, UpstreamSettings};
pub use error::{Reached, UpstreamError};
pub use proxy_header::ProxyHeader;
pub use request_body::{AttemptBody, BodyLimit, RequestBody, StreamBody, UploadProgress};
pub use tls::{UpstreamStream, UpstreamTls};
