//! The file as written: one struct per TOML table, unknown keys refused.
//!
//! Values stay strings where the validator gives a better message than serde
//! would (addresses, durations, policies). Each array element is deserialized
//! on its own so one bad `[[pool]]` does not hide the errors in the next one.

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::{ConfigError, ConfigErrors};

/// The whole file.
#[derive(Debug, Default)]
pub struct RawFile {
    pub listener: Vec<(usize, RawListener)>,
    pub pool: Vec<(usize, RawPool)>,
    pub route: Vec<(usize, RawRoute)>,
    pub process: Vec<(usize, crate::processes::RawProcess)>,
    pub timeouts: RawTimeouts,
    pub trusted_proxies: Vec<String>,
    pub client_ip_header: Option<String>,
    pub drain_timeout: Option<String>,
    pub upgrade_socket: Option<String>,
    pub buffer_dir: Option<String>,
    pub admin: Option<RawAdmin>,
    pub limits: Option<crate::limits::RawLimits>,
    pub drain_close_code: Option<i64>,
    /// Errors met while reading shapes; validation appends to these.
    pub errors: Vec<ConfigError>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
    /// Host names (besides IP literals and `localhost`) the admin answers to.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub read_timeout: Option<String>,
    #[serde(default)]
    pub max_connections: Option<i64>,
    #[serde(default)]
    pub protect_reads: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub address: String,
    /// One or more: the listener terminates TLS (see [`crate::tls`]).
    #[serde(default)]
    pub certificate: Vec<toml::Value>,
    #[serde(default)]
    pub tls: Option<crate::tls::RawListenerTls>,
    #[serde(default)]
    pub https_redirect: Option<crate::tls::RawHttpsRedirect>,
    /// Open connections on this listener (beside `limits.max_connections`).
    #[serde(default)]
    pub max_connections: Option<i64>,
    /// The PROXY protocol from the balancers in front.
    #[serde(default)]
    pub proxy_protocol: Option<RawProxyProtocol>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxyProtocol {
    pub trusted: Vec<String>,
    #[serde(default)]
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub name: String,
    #[serde(default)]
    pub policy: Option<String>,
    /// Most idle keep-alive connections kept open to each backend of the pool.
    #[serde(default)]
    pub max_idle_per_backend: Option<i64>,
    /// Ramp-up time for a backend that comes (back) up.
    #[serde(default)]
    pub slow_start: Option<String>,
    /// Read element by element, see [`RawBackend`].
    #[serde(default)]
    pub backend: Vec<toml::Value>,
    /// Cookie stickiness settings (`policy = "cookie"`).
    #[serde(default)]
    pub sticky: Option<RawSticky>,
    /// Key hashing settings (`policy = "hash"`).
    #[serde(default)]
    pub hash: Option<RawHash>,
    /// Active health checks.
    #[serde(default)]
    pub health: Option<RawHealth>,
    /// Retries of failed requests on another backend.
    #[serde(default)]
    pub retry: Option<RawRetry>,
    /// Passive outlier detection.
    #[serde(default)]
    pub ejection: Option<RawEjection>,
    /// TLS to the pool's backends.
    #[serde(default)]
    pub tls: Option<crate::tls::RawPoolTls>,
    #[serde(default)]
    pub buffer_body: Option<i64>,
    #[serde(default)]
    pub buffer_body_file: Option<i64>,
    #[serde(default)]
    pub buffer_response: Option<i64>,
    #[serde(default)]
    pub buffer_response_file: Option<i64>,
    #[serde(default)]
    pub max_connections_per_backend: Option<i64>,
    #[serde(default)]
    pub queue_size: Option<i64>,
    #[serde(default)]
    pub queue_timeout: Option<String>,
    /// `"v2"`, `"v1"` or `"off"`: a PROXY header on every new backend connection.
    #[serde(default)]
    pub send_proxy_protocol: Option<String>,
    /// The balancer runs this pool's backends (see [`crate::processes`]).
    /// Read on its own, so a mistake in it does not hide the pool.
    #[serde(default)]
    pub processes: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Option<i64>,
    pub budget_percent: Option<i64>,
    pub max_body: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEjection {
    pub consecutive_failures: Option<i64>,
    pub base: Option<String>,
    pub max: Option<String>,
    pub max_percent: Option<i64>,
    pub on_5xx: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub expect: Option<String>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
    pub assume_up: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    pub cookie: Option<String>,
    pub secret: Option<String>,
    pub fallback_param: Option<String>,
    pub path: Option<String>,
    pub http_only: Option<bool>,
    pub secure: Option<bool>,
    pub same_site: Option<String>,
    pub max_age: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHash {
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub id: String,
    pub address: String,
    #[serde(default)]
    pub weight: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub listener: String,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    pub pool: String,
    /// Upgrade protocols the route lets through (default: websocket).
    #[serde(default)]
    pub upgrades: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<String>,
    pub request_header: Option<String>,
    pub response_header: Option<String>,
    pub client_idle: Option<String>,
    pub upstream_idle: Option<String>,
    pub websocket_idle: Option<String>,
    pub websocket_ping: Option<String>,
    pub shutdown_grace: Option<String>,
}

/// Reads the file's shape. Syntax errors end the parse (there is nothing
/// sound to read past them); shape errors are collected per element.
pub fn parse(text: &str) -> Result<RawFile, ConfigErrors> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        ConfigErrors::single(ConfigError::new(
            "",
            format!("TOML syntax error: {}", e.to_string().trim_end()),
        ))
    })?;

    let mut file = RawFile::default();
    for (key, value) in table {
        match key.as_str() {
            "listener" => file.listener = elements(&key, value, &mut file.errors),
            "pool" => file.pool = elements(&key, value, &mut file.errors),
            "route" => file.route = elements(&key, value, &mut file.errors),
            "process" => file.process = elements(&key, value, &mut file.errors),
            "timeouts" => {
                if let Some(t) = one(&key, value, &mut file.errors) {
                    file.timeouts = t;
                }
            }
            "trusted_proxies" => {
                if let Some(t) = one(&key, value, &mut file.errors) {
                    file.trusted_proxies = t;
                }
            }
            "client_ip_header" => file.client_ip_header = one(&key, value, &mut file.errors),
            "drain_timeout" => file.drain_timeout = one(&key, value, &mut file.errors),
            "upgrade_socket" => file.upgrade_socket = one(&key, value, &mut file.errors),
            "buffer_dir" => file.buffer_dir = one(&key, value, &mut file.errors),
            "admin" => file.admin = one(&key, value, &mut file.errors),
            "limits" => file.limits = one(&key, value, &mut file.errors),
            "drain_close_code" => file.drain_close_code = one(&key, value, &mut file.errors),
            _ => file.errors.push(ConfigError::new(
                key.clone(),
                "unknown key (expected one of: listener, pool, route, process, timeouts, trusted_proxies, client_ip_header, drain_timeout, drain_close_code, upgrade_socket, buffer_dir, admin, limits)",
            )),
        }
    }
    Ok(file)
}

/// Deserializes every element of an array of tables, keeping each one's index.
pub(crate) fn elements<T: DeserializeOwned>(
    path: &str,
    value: toml::Value,
    errors: &mut Vec<ConfigError>,
) -> Vec<(usize, T)> {
    let toml::Value::Array(items) = value else {
        errors.push(ConfigError::new(
            path,
            format!("expected an array of tables ([[{path}]])"),
        ));
        return Vec::new();
    };
    items
        .into_iter()
        .enumerate()
        .filter_map(|(i, item)| one(&format!("{path}[{i}]"), item, errors).map(|t| (i, t)))
        .collect()
}

/// Deserializes one value, recording the full key path of the first error in it.
pub(crate) fn one<T: DeserializeOwned>(
    path: &str,
    value: toml::Value,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(t) => Some(t),
        Err(e) => {
            let inner = e.path().to_string();
            let full = if inner == "." || inner.is_empty() {
                path.to_string()
            } else {
                format!("{path}.{inner}")
            };
            // Some serde messages span lines ("...\nin `weight`"): one line per error.
            let message = e.into_inner().to_string();
            let lines: Vec<&str> = message
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            errors.push(ConfigError::new(full, lines.join(" ")));
            None
        }
    }
}
