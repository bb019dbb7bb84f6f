//! Errors that stop the balancer from starting or running (the request
//! path's errors are [`crate::proxy::ProxyError`], which become responses).

use std::net::SocketAddr;

/// The error type of the bodies the balancer passes on.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file is invalid; every problem is listed.
    #[error("invalid config:\n{0}")]
    Config(#[from] config::ConfigErrors),
    /// A TLS listener's certificates or keys could not be loaded.
    #[error("TLS:\n{}", .0.join("\n"))]
    Tls(Vec<String>),
    /// Taking over the sockets of a running balancer failed.
    #[error("binary upgrade: taking over from the running balancer failed: {0}")]
    Upgrade(std::io::Error),
    /// Supervised pools refuse what they cannot do yet (binary upgrade).
    #[error("{0}")]
    Supervise(String),
    /// A listener's address could not be bound.
    #[error("listener {listener:?}: cannot bind {address}: {source}")]
    Bind {
        listener: String,
        address: SocketAddr,
        source: std::io::Error,
    },
}
