//! Socket wrappers shared by the client side ([`crate::server`]), the
//! request path ([`crate::proxy`]) and the backend side
//! ([`crate::upstream`]): byte-activity stamps with the idle timer, and a
//! socket with bytes already read put back in front.

pub mod activity;
pub mod prefixed;

pub use activity::{Activity, LastActivity};
pub use prefixed::Prefixed;
