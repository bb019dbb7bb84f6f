//! Why a request failed, which side the failure came from, how far the
//! request got, and the response the client gets for it. Never a panic:
//! every failure becomes one of these.

use std::time::Duration;

use http::StatusCode;

use crate::upstream::{BodyLimit, Reached, UpstreamError};

/// Where a failure came from (pingora's distinction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: its request, its body, its timing.
    Downstream,
    /// A backend: connecting, the exchange, its answer, its timing.
    Upstream,
    /// The balancer's own state: no usable backend.
    Internal,
}

/// A request that could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matches the listener, host and path.
    #[error("no route for this host and path")]
    NoRoute,
    /// A request without a usable Host (or `:authority`) where one is needed.
    #[error("missing or invalid Host")]
    BadHost,
    /// A method the balancer does not proxy.
    #[error("method not supported")]
    MethodNotAllowed,
    /// The client's request body broke off.
    #[error("client request body failed: {0}")]
    ClientBody(String),
    /// The client's body did not arrive in time.
    #[error("client request body not received within {0:?}")]
    ClientTimeout(Duration),
    /// More header fields than `limits.max_headers` (HTTP/2: hyper
    /// counts them only for HTTP/1.1).
    #[error("more than {0} header fields")]
    TooManyHeaders(usize),
    /// An HTTP/2 connection already has `limits.http2_max_backend_requests`
    /// requests at backends, and none finished within
    /// `limits.http2_backend_queue_timeout`.
    #[error("connection at its limit of requests at backends for {0:?}")]
    ConnectionBusy(Duration),
    /// The request target is longer than `limits.max_request_line`.
    #[error("request target over {0} bytes")]
    UriTooLong(usize),
    /// The request body broke a `[limits]` limit (size, deadline, rate).
    #[error("{0}")]
    BodyLimit(crate::upstream::BodyLimit),
    /// The pool has no usable backend.
    #[error("no backend available in pool {pool}")]
    NoBackend { pool: String },
    /// The picked backend is at `max_connections_per_backend` and the
    /// queue is full, or no place freed within `queue_timeout`.
    #[error("backend {backend} of pool {pool} at capacity")]
    BackendFull { pool: String, backend: String },
    /// The exchange with the backend failed before its response head.
    #[error("backend failed: {0}")]
    Upstream(#[from] UpstreamError),
    /// No response head within `timeouts.response_header`.
    #[error("backend did not answer within {0:?}")]
    ResponseTimeout(Duration),
}

impl ProxyError {
    /// Which side the failure came from.
    pub fn side(&self) -> Side {
        match self {
            Self::NoRoute
            | Self::BadHost
            | Self::MethodNotAllowed
            | Self::ClientBody(_)
            | Self::ClientTimeout(_)
            | Self::UriTooLong(_)
            | Self::TooManyHeaders(_)
            | Self::ConnectionBusy(_)
            | Self::BodyLimit(_) => Side::Downstream,
            Self::NoBackend { .. } | Self::BackendFull { .. } => Side::Internal,
            Self::Upstream(_) | Self::ResponseTimeout(_) => Side::Upstream,
        }
    }

    /// For a failure of the backend: how far the request got. A response
    /// timeout counts as reached (the backend has it and is working on it).
    pub fn reached(&self) -> Option<Reached> {
        match self {
            Self::Upstream(e) => Some(e.reached()),
            Self::ResponseTimeout(_) => Some(Reached::Maybe),
            _ => None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::BadHost => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::ClientBody(_) => StatusCode::BAD_REQUEST,
            Self::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Self::TooManyHeaders(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::ConnectionBusy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BodyLimit(BodyLimit::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyLimit(_) => StatusCode::REQUEST_TIMEOUT,
            Self::NoBackend { .. } | Self::BackendFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream(UpstreamError::ConnectTimeout(_)) | Self::ResponseTimeout(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// Short plain-text body; details stay in the log, not in front of clients.
    pub fn body(&self) -> &'static str {
        match self {
            Self::NoRoute => "404 not found: no route\n",
            Self::BadHost => "400 bad request: missing or invalid Host\n",
            Self::MethodNotAllowed => "405 method not allowed\n",
            Self::ClientBody(_) => "400 bad request: request body incomplete\n",
            Self::ClientTimeout(_) => "408 request timeout: request body too slow\n",
            Self::UriTooLong(_) => "414 URI too long\n",
            Self::TooManyHeaders(_) => "431 request header fields too large\n",
            Self::ConnectionBusy(_) => {
                "503 service unavailable: too many requests on this connection\n"
            }
            Self::BodyLimit(BodyLimit::TooLarge(_)) => {
                "413 content too large: request body over the limit\n"
            }
            Self::BodyLimit(_) => "408 request timeout: request body too slow\n",
            Self::NoBackend { .. } => "503 service unavailable: no backend available\n",
            Self::BackendFull { .. } => "503 service unavailable: backend at capacity\n",
            Self::Upstream(UpstreamError::Connect { .. }) => {
                "502 bad gateway: backend unreachable\n"
            }
            Self::Upstream(UpstreamError::ConnectTimeout(_)) => {
                "504 gateway timeout: backend connect timed out\n"
            }
            Self::Upstream(UpstreamError::Tls { .. }) => {
                "502 bad gateway: TLS to the backend failed\n"
            }
            Self::Upstream(_) => "502 bad gateway: backend failed\n",
            Self::ResponseTimeout(_) => "504 gateway timeout: backend did not answer\n",
        }
    }

    /// Short machine-readable cause for logs and metric labels.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::BadHost => "bad_host",
            Self::MethodNotAllowed => "method",
            Self::ClientBody(_) => "client_body",
            Self::ClientTimeout(_) => "client_timeout",
            Self::UriTooLong(_) => "uri_too_long",
            Self::TooManyHeaders(_) => "too_many_headers",
            Self::ConnectionBusy(_) => "http2_backend_requests",
            Self::BodyLimit(BodyLimit::TooLarge(_)) => "body_too_large",
            Self::BodyLimit(BodyLimit::Deadline(_)) => "upload_timeout",
            Self::BodyLimit(BodyLimit::TooSlow(_)) => "upload_too_slow",
            Self::NoBackend { .. } => "no_backend",
            Self::BackendFull { .. } => "backend_full",
            Self::Upstream(UpstreamError::Connect { .. }) => "connect",
            Self::Upstream(UpstreamError::ConnectTimeout(_)) => "connect_timeout",
            Self::Upstream(UpstreamError::Tls { .. }) => "upstream_tls",
            Self::Upstream(_) => "upstream",
            Self::ResponseTimeout(_) => "response_timeout",
        }
    }
}
