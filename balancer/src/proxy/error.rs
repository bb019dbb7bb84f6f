//! Why a request failed, where the failure came from, and the response the
//! client gets for it. Never a panic: every failure becomes one of these.

use std::time::Duration;

use http::StatusCode;

/// A request that could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Downstream: no route matches the listener, host and path.
    #[error("no route for this host and path")]
    NoRoute,
    /// Downstream: a method the balancer does not proxy.
    #[error("method not supported")]
    MethodNotAllowed,
    /// Downstream: the client's request body broke off.
    #[error("client request body failed: {0}")]
    ClientBody(String),
    /// Downstream: the client's (small, buffered) body did not arrive in time.
    #[error("client request body not received within {0:?}")]
    ClientTimeout(Duration),
    /// Internal: the pool has no usable backend.
    #[error("no backend available in pool {pool}")]
    NoBackend { pool: String },
    /// Upstream: the TCP connection was refused or failed.
    #[error("cannot connect to backend: {0}")]
    Connect(String),
    /// Upstream: the TCP connection did not open within `timeouts.connect`.
    #[error("backend connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// Upstream: no response head within `timeouts.response_header`.
    #[error("backend did not answer within {0:?}")]
    ResponseTimeout(Duration),
    /// Upstream: the connection broke or the backend spoke bad HTTP.
    #[error("backend failed: {0}")]
    Upstream(String),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::ClientBody(_) => StatusCode::BAD_REQUEST,
            Self::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::NoBackend { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Connect(_) | Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::ConnectTimeout(_) | Self::ResponseTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Short plain-text body; details stay in the log, not in front of clients.
    pub fn body(&self) -> &'static str {
        match self {
            Self::NoRoute => "404 not found: no route\n",
            Self::MethodNotAllowed => "405 method not allowed\n",
            Self::ClientBody(_) => "400 bad request: request body incomplete\n",
            Self::ClientTimeout(_) => "408 request timeout: request body too slow\n",
            Self::NoBackend { .. } => "503 service unavailable: no backend available\n",
            Self::Connect(_) => "502 bad gateway: backend unreachable\n",
            Self::Upstream(_) => "502 bad gateway: backend failed\n",
            Self::ConnectTimeout(_) => "504 gateway timeout: backend connect timed out\n",
            Self::ResponseTimeout(_) => "504 gateway timeout: backend did not answer\n",
        }
    }

    /// Short machine-readable cause for logs (and, later, metric labels).
    pub fn cause(&self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::MethodNotAllowed => "method",
            Self::ClientBody(_) => "client_body",
            Self::ClientTimeout(_) => "client_timeout",
            Self::NoBackend { .. } => "no_backend",
            Self::Connect(_) => "connect",
            Self::ConnectTimeout(_) => "connect_timeout",
            Self::ResponseTimeout(_) => "response_timeout",
            Self::Upstream(_) => "upstream",
        }
    }
}
