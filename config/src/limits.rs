//! `[limits]`: what one client, one connection and one request may take
//! of the balancer and of the backends behind it. Every key has a default
//! that is safe facing the internet; docs/security.md lists them all with
//! the metric and the answer each one gives when it trips.

use std::time::Duration;

use serde::Deserialize;

use crate::ConfigError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<i64>,
    pub max_connections_per_ip: Option<i64>,
    pub max_header_bytes: Option<i64>,
    pub max_headers: Option<i64>,
    pub max_request_line: Option<i64>,
    pub max_request_body: Option<i64>,
    pub upload_timeout: Option<String>,
    pub upload_min_rate: Option<i64>,
    pub http2_max_concurrent_streams: Option<i64>,
    pub http2_max_backend_requests: Option<i64>,
    pub http2_backend_queue_timeout: Option<String>,
    pub http2_max_ping_rate: Option<i64>,
    pub http2_max_settings_rate: Option<i64>,
    pub websocket_max_message: Option<i64>,
    pub websocket_max_message_rate: Option<i64>,
    pub buffer_files_total: Option<i64>,
}

/// See the module doc; defaults in [`Limits::default`] and docs/config.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open client connections of the process, all listeners together.
    pub max_connections: usize,
    /// Open client connections from one client address; 0: no limit.
    pub max_connections_per_ip: usize,
    /// A request head (request line and headers), bytes: above it, 431.
    pub max_header_bytes: usize,
    /// Header fields in a request head: above it, 431.
    pub max_headers: usize,
    /// The request target, bytes: above it, 414.
    pub max_request_line: usize,
    /// A request body, bytes: above it, 413; 0: no limit.
    pub max_request_body: u64,
    /// The whole upload of a request body must end within this.
    pub upload_timeout: Duration,
    /// After [`UPLOAD_GRACE`], an upload slower on average than this many
    /// bytes a second is cut off (408); 0: no minimum.
    pub upload_min_rate: u64,
    /// Concurrent streams one HTTP/2 client connection may open.
    pub http2_max_concurrent_streams: u32,
    /// Requests one HTTP/2 client connection may have at backends at once
    /// (each holds a backend connection: backends speak HTTP/1.1). A
    /// stream past it waits for a place, in arrival order.
    pub http2_max_backend_requests: u32,
    /// How long such a stream waits before it gets a 503.
    pub http2_backend_queue_timeout: Duration,
    /// PING frames one HTTP/2 client connection may send in a second:
    /// above it the connection is closed (GOAWAY `ENHANCE_YOUR_CALM`);
    /// 0: no limit.
    pub http2_max_ping_rate: u32,
    /// The same for SETTINGS frames (not counting acknowledgements).
    pub http2_max_settings_rate: u32,
    /// A WebSocket message from a client, bytes (fragments added up):
    /// above it the tunnel closes with 1009; 0: no limit.
    pub websocket_max_message: u64,
    /// WebSocket messages a client may send a second (a one-second
    /// bucket): above it the tunnel closes with 1008; 0: no limit.
    pub websocket_max_message_rate: u32,
    /// Bytes all buffer files of the process may hold together (request
    /// and response bodies past memory, see `pool.buffer_body_file` and
    /// `pool.buffer_response_file`); past it, bodies stream; 0: no files.
    pub buffer_files_total: u64,
}

/// How long an upload may be slow before `upload_min_rate` applies (a
/// phone's first seconds on a bad link).
pub const UPLOAD_GRACE: Duration = Duration::from_secs(10);

/// hyper's smallest read buffer: a head limit below it cannot be enforced.
pub const MIN_HEADER_BYTES: i64 = 8192;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_request_line: 8 * 1024,
            max_request_body: 16 * 1024 * 1024,
            upload_timeout: Duration::from_secs(300),
            upload_min_rate: 1024,
            http2_max_concurrent_streams: 100,
            http2_max_backend_requests: 16,
            http2_backend_queue_timeout: Duration::from_secs(5),
            http2_max_ping_rate: 20,
            http2_max_settings_rate: 10,
            websocket_max_message: 0,
            websocket_max_message_rate: 0,
            buffer_files_total: 4 * 1024 * 1024 * 1024,
        }
    }
}

pub(crate) fn limits_from(e: &mut Vec<ConfigError>, raw: Option<RawLimits>) -> Limits {
    let d = Limits::default();
    let Some(raw) = raw else { return d };
    let int = |e: &mut Vec<ConfigError>, key: &str, v, range, default: i64| {
        crate::validate::int_in(e, &format!("limits.{key}"), v, range, default)
    };
    Limits {
        max_connections: int(
            e,
            "max_connections",
            raw.max_connections,
            1..=10_000_000,
            d.max_connections as i64,
        ) as usize,
        max_connections_per_ip: int(
            e,
            "max_connections_per_ip",
            raw.max_connections_per_ip,
            0..=10_000_000,
            d.max_connections_per_ip as i64,
        ) as usize,
        max_header_bytes: int(
            e,
            "max_header_bytes",
            raw.max_header_bytes,
            MIN_HEADER_BYTES..=1024 * 1024,
            d.max_header_bytes as i64,
        ) as usize,
        max_headers: int(
            e,
            "max_headers",
            raw.max_headers,
            8..=1000,
            d.max_headers as i64,
        ) as usize,
        max_request_line: int(
            e,
            "max_request_line",
            raw.max_request_line,
            256..=65_534,
            d.max_request_line as i64,
        ) as usize,
        max_request_body: int(
            e,
            "max_request_body",
            raw.max_request_body,
            0..=i64::MAX,
            d.max_request_body as i64,
        ) as u64,
        upload_timeout: raw
            .upload_timeout
            .and_then(|t| crate::validate::positive_duration(e, "limits.upload_timeout", &t))
            .unwrap_or(d.upload_timeout),
        upload_min_rate: int(
            e,
            "upload_min_rate",
            raw.upload_min_rate,
            0..=i64::MAX,
            d.upload_min_rate as i64,
        ) as u64,
        http2_max_concurrent_streams: int(
            e,
            "http2_max_concurrent_streams",
            raw.http2_max_concurrent_streams,
            1..=10_000,
            i64::from(d.http2_max_concurrent_streams),
        ) as u32,
        http2_max_backend_requests: int(
            e,
            "http2_max_backend_requests",
            raw.http2_max_backend_requests,
            1..=10_000,
            i64::from(d.http2_max_backend_requests),
        ) as u32,
        http2_backend_queue_timeout: raw
            .http2_backend_queue_timeout
            .and_then(|t| {
                crate::validate::positive_duration(e, "limits.http2_backend_queue_timeout", &t)
            })
            .unwrap_or(d.http2_backend_queue_timeout),
        http2_max_ping_rate: int(
            e,
            "http2_max_ping_rate",
            raw.http2_max_ping_rate,
            0..=1_000_000,
            i64::from(d.http2_max_ping_rate),
        ) as u32,
        http2_max_settings_rate: int(
            e,
            "http2_max_settings_rate",
            raw.http2_max_settings_rate,
            0..=1_000_000,
            i64::from(d.http2_max_settings_rate),
        ) as u32,
        websocket_max_message: int(
            e,
            "websocket_max_message",
            raw.websocket_max_message,
            0..=i64::MAX,
            0,
        ) as u64,
        websocket_max_message_rate: int(
            e,
            "websocket_max_message_rate",
            raw.websocket_max_message_rate,
            0..=1_000_000,
            0,
        ) as u32,
        buffer_files_total: int(
            e,
            "buffer_files_total",
            raw.buffer_files_total,
            0..=i64::MAX,
            d.buffer_files_total as i64,
        ) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str =
        "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\nmax_connections = 50\n";

    #[test]
    fn defaults_apply_without_the_table() {
        let c = crate::parse(&BASE.replace("max_connections = 50\n", "")).unwrap();
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.listeners[0].max_connections, None);
        let c = crate::parse(BASE).unwrap();
        assert_eq!(c.listeners[0].max_connections, Some(50));
    }

    #[test]
    fn buffering_keys_are_read_and_checked_with_their_paths() {
        const POOL: &str = "[[pool]]\nname = \"p\"\n";
        let c = crate::parse(&format!("{BASE}{POOL}")).unwrap();
        let p = &c.pools[0];
        assert_eq!(
            (
                p.buffer_body_file,
                p.buffer_response,
                p.buffer_response_file
            ),
            (16 << 20, 256 << 10, 1 << 30)
        );
        assert_eq!(c.buffer_dir, None);
        assert_eq!(c.limits.buffer_files_total, 4 << 30);
        let c = crate::parse(&format!(
            "buffer_dir = \"/srv/buffers\"\n{BASE}{POOL}buffer_body_file = 0\nbuffer_response = 0\nbuffer_response_file = 5\n"
        ))
        .unwrap();
        let p = &c.pools[0];
        assert_eq!(
            (
                p.buffer_body_file,
                p.buffer_response,
                p.buffer_response_file
            ),
            (0, 0, 5)
        );
        assert_eq!(
            c.buffer_dir.as_deref(),
            Some(std::path::Path::new("/srv/buffers"))
        );
        let errs = crate::parse(&format!(
            "buffer_dir = \"buffers\"\n{BASE}{POOL}buffer_body_file = -1\nbuffer_response = 100000000\n\
             [limits]\nbuffer_files_total = -5\n"
        ))
        .unwrap_err();
        let mut paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            [
                "buffer_dir",
                "limits.buffer_files_total",
                "pool[0].buffer_body_file",
                "pool[0].buffer_response"
            ]
        );
    }

    #[test]
    fn every_key_is_read_and_checked_with_its_path() {
        let c = crate::parse(&format!(
            "{BASE}[limits]\nmax_connections = 20\nmax_connections_per_ip = 0\nmax_header_bytes = 16384\n\
             max_headers = 50\nmax_request_line = 1024\nmax_request_body = 0\nupload_timeout = \"30s\"\n\
             upload_min_rate = 0\nhttp2_max_concurrent_streams = 10\nbuffer_files_total = 1000\n\
             http2_max_backend_requests = 4\nhttp2_backend_queue_timeout = \"250ms\"\n\
             http2_max_ping_rate = 0\nhttp2_max_settings_rate = 3\n"
        ))
        .unwrap();
        assert_eq!(
            c.limits,
            Limits {
                max_connections: 20,
                max_connections_per_ip: 0,
                max_header_bytes: 16384,
                max_headers: 50,
                max_request_line: 1024,
                max_request_body: 0,
                upload_timeout: Duration::from_secs(30),
                upload_min_rate: 0,
                http2_max_concurrent_streams: 10,
                http2_max_backend_requests: 4,
                http2_backend_queue_timeout: Duration::from_millis(250),
                http2_max_ping_rate: 0,
                http2_max_settings_rate: 3,
                websocket_max_message: 0,
                websocket_max_message_rate: 0,
                buffer_files_total: 1000,
            }
        );
        let errs = crate::parse(&format!(
            "{BASE}[limits]\nmax_connections = 0\nmax_header_bytes = 100\nupload_timeout = \"0s\"\nbogus = 1\n"
        ))
        .unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["limits.bogus"], "shape errors first: {errs:?}");
        let errs = crate::parse(&format!(
            "{BASE}[limits]\nmax_connections = 0\nmax_header_bytes = 100\nupload_timeout = \"0s\"\n\
             http2_max_backend_requests = 0\nhttp2_backend_queue_timeout = \"0s\"\nhttp2_max_ping_rate = -1\n"
        ))
        .unwrap_err();
        let mut paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            [
                "limits.http2_backend_queue_timeout",
                "limits.http2_max_backend_requests",
                "limits.http2_max_ping_rate",
                "limits.max_connections",
                "limits.max_header_bytes",
                "limits.upload_timeout"
            ]
        );
        let errs = crate::parse(&BASE.replace("= 50", "= 0")).unwrap_err();
        assert_eq!(
            errs.iter().next().unwrap().path,
            "listener[0].max_connections"
        );
    }
}
