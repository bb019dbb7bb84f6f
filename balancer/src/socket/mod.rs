//! Socket wrappers shared by the client side ([`crate::server`]), the
//! request path ([`crate::proxy`]) and the backend side
//! ([`crate::upstream`]): byte-activity stamps with the idle timer, a
//! socket with bytes already read put back in front, and a socket with or
//! without TLS on it.

pub mod activity;
pub mod maybe_tls;
pub mod prefixed;

pub use activity::{Activity, LastActivity};
pub use maybe_tls::MaybeTls;
pub use prefixed::Prefixed;
