//! Why an exchange with a backend failed, and how far the request got:
//! what a retry decision needs to know.

use std::net::SocketAddr;
use std::time::Duration;

/// How far a failed request got towards the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// Nothing reached it: no connection, or the connection broke before
    /// the request head was written. Sending it elsewhere is always safe.
    No,
    /// The head (and maybe the body) was sent: the backend may have acted
    /// on it.
    Maybe,
}

/// A failed exchange with a backend, before the response head arrived.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TCP connection failed (refused: nothing listens there).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The TLS handshake with the backend failed (its certificate did not
    /// verify, no common protocol, ...).
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The TCP connection did not open within `timeouts.connect`.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The request could not be written.
    #[error("writing the request: {source}")]
    Write {
        /// The whole head was written before the failure.
        head_sent: bool,
        source: std::io::Error,
    },
    /// The connection ended (or failed) after the request, before a
    /// complete response head.
    #[error("{0}")]
    Closed(String),
    /// The backend's response head was not valid HTTP/1.1.
    #[error("invalid response: {0}")]
    Protocol(String),
    /// The streamed request body failed while it was being sent.
    #[error("{0}")]
    Upload(String),
}

impl UpstreamError {
    /// How far the request got (see [`Reached`]).
    pub fn reached(&self) -> Reached {
        match self {
            Self::Connect { .. } | Self::Tls { .. } | Self::ConnectTimeout(_) => Reached::No,
            Self::Write {
                head_sent: false, ..
            } => Reached::No,
            _ => Reached::Maybe,
        }
    }

    /// The connection was refused: nothing listens at the address.
    pub fn is_refused(&self) -> bool {
        matches!(self, Self::Connect { source, .. } if source.kind() == std::io::ErrorKind::ConnectionRefused)
    }
}
