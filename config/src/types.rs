//! The validated config: what the balancer builds its runtime from.

use std::net::SocketAddr;
use std::time::Duration;

/// A config that passed validation: every reference resolves, every value is typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    pub pools: Vec<PoolConfig>,
    pub routes: Vec<RouteConfig>,
    pub timeouts: Timeouts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub name: String,
    pub policy: Policy,
    pub max_idle_per_backend: usize,
    pub backends: Vec<BackendConfig>,
}

/// How a pool picks a backend. More policies arrive with the routing work;
/// the balancer's selection trait is where they plug in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Smooth weighted round robin, as nginx does it.
    RoundRobin,
}

impl Policy {
    pub const NAMES: &'static [&'static str] = &["round_robin"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "round_robin" => Some(Self::RoundRobin),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Stable identity: stickiness and live state follow the id, not the address.
    pub id: String,
    pub address: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub listener: String,
    pub host: Option<HostMatch>,
    pub path_prefix: String,
    pub pool: String,
}

/// A route's `host`: `game.example.com` or `*.example.com`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// Lower-case host name, no port.
    Exact(String),
    /// Lower-case suffix including the leading dot (`.example.com`); matches
    /// any host with at least one more label in front of it.
    Wildcard(String),
}

impl HostMatch {
    /// Whether `host` (already lower-case, without port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => h == host,
            Self::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        }
    }
}

/// Every timeout the balancer enforces. Defaults are in [`Timeouts::default`]
/// and in docs/config.md; keep the two in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Opening a TCP connection to a backend.
    pub connect: Duration,
    /// A client sending a full request head (also bounds a slowloris).
    pub request_header: Duration,
    /// A backend sending the response head after the request was sent.
    pub response_header: Duration,
    /// A client keep-alive connection with no request in flight and no bytes moving.
    pub client_idle: Duration,
    /// A pooled idle upstream connection before the balancer closes it.
    pub upstream_idle: Duration,
    /// A WebSocket tunnel with no bytes in either direction; `None` = never.
    pub websocket_idle: Option<Duration>,
    /// After SIGTERM/SIGINT, how long in-flight requests get to finish.
    pub shutdown_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            request_header: Duration::from_secs(10),
            response_header: Duration::from_secs(60),
            client_idle: Duration::from_secs(60),
            // Below Node.js's default keepAliveTimeout (5 s), so the balancer
            // closes an idle upstream connection before the backend does.
            upstream_idle: Duration::from_secs(4),
            websocket_idle: None,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Default for `pool.max_idle_per_backend`.
pub const DEFAULT_MAX_IDLE_PER_BACKEND: usize = 256;
/// Largest backend weight (HAProxy's limit too); keeps the round-robin schedule small.
pub const MAX_WEIGHT: u32 = 256;
