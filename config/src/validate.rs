//! Raw file -> typed [`Config`], collecting every error with its key path.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use crate::raw::{
    self, RawBackend, RawEjection, RawFile, RawHash, RawHealth, RawRetry, RawSticky, RawTimeouts,
};
use crate::types::{DEFAULT_MAX_IDLE_PER_BACKEND, MAX_WEIGHT, MIN_SECRET_LEN};
use crate::{
    duration, BackendConfig, Config, ConfigError, ConfigErrors, EjectionConfig, HashKey,
    HealthConfig, HealthKind, HostMatch, ListenerConfig, Policy, PoolConfig, RetryConfig,
    RouteConfig, SameSite, StickyConfig, Timeouts,
};

pub(crate) fn validate(file: RawFile) -> Result<Config, ConfigErrors> {
    let RawFile {
        listener,
        pool,
        route,
        process,
        timeouts,
        trusted_proxies,
        client_ip_header,
        drain_timeout,
        drain_close_code,
        upgrade_socket,
        buffer_dir,
        admin,
        limits,
        mut errors,
    } = file;
    let e = &mut errors;

    let mut listeners = Vec::new();
    let mut listener_names = HashSet::new();
    let mut listener_addrs: HashMap<SocketAddr, String> = HashMap::new();
    for (i, l) in listener {
        let path = format!("listener[{i}]");
        check_name(e, &format!("{path}.name"), &l.name);
        if !listener_names.insert(l.name.clone()) {
            e.push(ConfigError::new(
                format!("{path}.name"),
                format!("duplicate listener name {:?}", l.name),
            ));
        }
        if let Some(address) = socket_addr(e, &format!("{path}.address"), &l.address) {
            // Port 0 asks the OS for a free port, so two of them never clash.
            if address.port() != 0 {
                if let Some(other) = listener_addrs.insert(address, l.name.clone()) {
                    e.push(ConfigError::new(
                        format!("{path}.address"),
                        format!("{address} is already used by listener {other:?}"),
                    ));
                }
            }
            let tls = crate::tls::listener_tls(e, &path, l.certificate, l.tls);
            let https_redirect = l.https_redirect.map(|r| {
                if tls.is_some() {
                    e.push(ConfigError::new(
                        format!("{path}.https_redirect"),
                        "a TLS listener cannot redirect to https:// (it is https://): remove one of the two",
                    ));
                }
                crate::tls::https_redirect(e, &format!("{path}.https_redirect"), r)
            });
            let max_connections = l.max_connections.map(|_| {
                int_in(
                    e,
                    &format!("{path}.max_connections"),
                    l.max_connections,
                    1..=10_000_000,
                    1,
                ) as usize
            });
            let proxy_protocol = l.proxy_protocol.map(|p| {
                let pp = format!("{path}.proxy_protocol");
                if p.trusted.is_empty() {
                    e.push(ConfigError::new(
                        format!("{pp}.trusted"),
                        "list the balancers that send the PROXY header (no one else may connect)",
                    ));
                }
                crate::ProxyProtocol {
                    trusted: p
                        .trusted
                        .iter()
                        .enumerate()
                        .filter_map(|(i, t)| ip_net(e, &format!("{pp}.trusted[{i}]"), t))
                        .collect(),
                    timeout: p
                        .timeout
                        .as_deref()
                        .and_then(|t| positive_duration(e, &format!("{pp}.timeout"), t))
                        .unwrap_or(Duration::from_secs(5)),
                }
            });
            listeners.push(ListenerConfig {
                name: l.name,
                address,
                tls,
                https_redirect,
                max_connections,
                proxy_protocol,
            });
        }
    }

    if listeners.is_empty() && !errors_mention(e, "listener") {
        // Also guards reloads: a file caught half-written must not stop
        // every listener.
        e.push(ConfigError::new(
            "listener",
            "at least one [[listener]] is required",
        ));
    }

    let mut pools = Vec::new();
    let mut pool_names = HashSet::new();
    let mut processes = Vec::new();
    // Addresses a supervised instance may not listen on (listed backends,
    // listeners), checked once every pool is read.
    let mut taken: Vec<crate::processes::Taken> = listeners
        .iter()
        .filter(|l| l.address.port() != 0)
        .map(|l| crate::processes::Taken {
            owner: format!("listener {:?}", l.name),
            address: l.address,
        })
        .collect();
    for (i, p) in pool {
        let path = format!("pool[{i}]");
        check_name(e, &format!("{path}.name"), &p.name);
        if !pool_names.insert(p.name.clone()) {
            e.push(ConfigError::new(
                format!("{path}.name"),
                format!("duplicate pool name {:?}", p.name),
            ));
        }
        let policy = match p.policy.as_deref() {
            None => Policy::RoundRobin,
            Some(name) => Policy::from_name(name).unwrap_or_else(|| {
                e.push(ConfigError::new(
                    format!("{path}.policy"),
                    format!(
                        "unknown policy {name:?} (expected one of: {})",
                        Policy::NAMES.join(", ")
                    ),
                ));
                Policy::RoundRobin
            }),
        };
        let max_idle_per_backend = int_in(
            e,
            &format!("{path}.max_idle_per_backend"),
            p.max_idle_per_backend,
            0..=65_536,
            DEFAULT_MAX_IDLE_PER_BACKEND as i64,
        ) as usize;
        let supervised = p.processes.is_some();
        if supervised {
            if !p.backend.is_empty() {
                e.push(ConfigError::new(
                    format!("{path}.backend"),
                    "a pool with [pool.processes] gets its backends from it: remove its [[pool.backend]] entries",
                ));
            }
            match &p.health {
                None => e.push(ConfigError::new(
                    format!("{path}.health"),
                    "a pool with [pool.processes] needs a [pool.health] table: an instance takes traffic only after the pool's health check passes",
                )),
                Some(h) if h.assume_up == Some(true) => e.push(ConfigError::new(
                    format!("{path}.health.assume_up"),
                    "not with [pool.processes]: an instance takes traffic only after the pool's health check passes",
                )),
                Some(_) => {}
            }
        }
        let supervised_backends: Vec<BackendConfig> = p
            .processes
            .and_then(|v| raw::one(&format!("{path}.processes"), v, e))
            .and_then(|raw| {
                crate::processes::processes_from(e, &format!("{path}.processes"), &p.name, raw)
            })
            .map(|procs| {
                let backends = procs
                    .instances
                    .iter()
                    .map(|inst| BackendConfig {
                        id: inst.id.clone(),
                        address: inst.address,
                        weight: 1,
                    })
                    .collect();
                processes.push((format!("{path}.processes"), procs));
                backends
            })
            .unwrap_or_default();
        for b in &supervised_backends {
            check_name(e, &format!("{path}.processes"), &b.id);
        }
        let raw_backends: Vec<(usize, RawBackend)> =
            raw::elements(&format!("{path}.backend"), toml::Value::Array(p.backend), e);
        let mut backends = supervised_backends;
        let mut ids = HashSet::new();
        for (j, b) in raw_backends {
            let bpath = format!("{path}.backend[{j}]");
            check_name(e, &format!("{bpath}.id"), &b.id);
            if !ids.insert(b.id.clone()) {
                e.push(ConfigError::new(
                    format!("{bpath}.id"),
                    format!("duplicate backend id {:?} in pool {:?}", b.id, p.name),
                ));
            }
            let weight = int_in(
                e,
                &format!("{bpath}.weight"),
                b.weight,
                1..=i64::from(MAX_WEIGHT),
                1,
            ) as u32;
            let address = socket_addr(e, &format!("{bpath}.address"), &b.address);
            if let Some(address) = address {
                if address.port() == 0 {
                    e.push(ConfigError::new(
                        format!("{bpath}.address"),
                        "a backend needs a real port, not 0",
                    ));
                }
                taken.push(crate::processes::Taken {
                    owner: format!("{bpath}.address"),
                    address,
                });
                backends.push(BackendConfig {
                    id: b.id,
                    address,
                    weight,
                });
            }
        }
        let sticky = policy_table(
            e,
            &path,
            policy,
            Policy::Cookie,
            "sticky",
            "`secret`",
            p.sticky,
        )
        .and_then(|s| sticky_from(e, &format!("{path}.sticky"), s));
        let hash_key = policy_table(e, &path, policy, Policy::Hash, "hash", "`key`", p.hash)
            .and_then(|RawHash { key }| hash_key(e, &format!("{path}.hash.key"), &key));
        let health = p
            .health
            .and_then(|h| health_from(e, &format!("{path}.health"), h));
        let buffer_body = int_in(
            e,
            &format!("{path}.buffer_body"),
            p.buffer_body,
            0..=64 * 1024 * 1024,
            crate::types::DEFAULT_BUFFER_BODY as i64,
        ) as u64;
        let bytes = |e: &mut Vec<ConfigError>, key: &str, v, max: i64, default: u64| {
            int_in(e, &format!("{path}.{key}"), v, 0..=max, default as i64) as u64
        };
        let buffer_body_file = bytes(
            e,
            "buffer_body_file",
            p.buffer_body_file,
            i64::MAX,
            crate::types::DEFAULT_BUFFER_BODY_FILE,
        );
        let buffer_response = bytes(
            e,
            "buffer_response",
            p.buffer_response,
            64 * 1024 * 1024,
            crate::types::DEFAULT_BUFFER_RESPONSE,
        );
        let buffer_response_file = bytes(
            e,
            "buffer_response_file",
            p.buffer_response_file,
            i64::MAX,
            crate::types::DEFAULT_BUFFER_RESPONSE_FILE,
        );
        let queue_size = int_in(
            e,
            &format!("{path}.queue_size"),
            p.queue_size,
            0..=1_000_000,
            64,
        );
        let queue_timeout = p
            .queue_timeout
            .as_deref()
            .and_then(|t| positive_duration(e, &format!("{path}.queue_timeout"), t))
            .unwrap_or(Duration::from_secs(1));
        let capacity = p.max_connections_per_backend.map(|_| crate::Capacity {
            per_backend: int_in(
                e,
                &format!("{path}.max_connections_per_backend"),
                p.max_connections_per_backend,
                1..=10_000_000,
                1,
            ) as usize,
            queue_size: queue_size as usize,
            queue_timeout,
        });
        pools.push(PoolConfig {
            buffer_body,
            buffer_body_file,
            buffer_response,
            buffer_response_file,
            capacity,
            name: p.name,
            policy,
            max_idle_per_backend,
            backends,
            sticky,
            hash_key,
            health,
            slow_start: match p.slow_start.as_deref() {
                None => Duration::ZERO,
                Some(v) => duration::parse(v).unwrap_or_else(|msg| {
                    e.push(ConfigError::new(format!("{path}.slow_start"), msg));
                    Duration::ZERO
                }),
            },
            retry: retry_from(e, &format!("{path}.retry"), p.retry),
            ejection: ejection_from(e, &format!("{path}.ejection"), p.ejection),
            tls: p
                .tls
                .map(|t| crate::tls::pool_tls(e, &format!("{path}.tls"), t)),
            send_proxy_protocol: crate::protocols::send_proxy_from(
                e,
                &format!("{path}.send_proxy_protocol"),
                p.send_proxy_protocol.as_deref(),
            ),
        });
    }

    let mut services = Vec::new();
    let mut service_names = HashSet::new();
    for (i, raw) in process {
        let path = format!("process[{i}]");
        check_name(e, &format!("{path}.name"), &raw.name);
        if !service_names.insert(raw.name.clone()) {
            e.push(ConfigError::new(
                format!("{path}.name"),
                format!("duplicate process name {:?}", raw.name),
            ));
        }
        if pool_names.contains(&raw.name) {
            e.push(ConfigError::new(
                format!("{path}.name"),
                format!(
                    "{:?} names a pool already (logs and the status API tell them apart by name)",
                    raw.name
                ),
            ));
        }
        if let Some(p) = crate::processes::process_from(e, &path, raw) {
            services.push((path, p));
        }
    }
    let supervised: Vec<(String, &crate::ProcessesConfig)> = processes
        .iter()
        .chain(&services)
        .map(|(path, p)| (path.clone(), p))
        .collect();
    crate::processes::check_ports(e, &supervised, &taken);
    let processes: Vec<crate::ProcessesConfig> = processes.into_iter().map(|(_, p)| p).collect();
    let services: Vec<crate::ProcessesConfig> = services.into_iter().map(|(_, p)| p).collect();

    let mut routes = Vec::new();
    let mut seen_routes = HashSet::new();
    for (i, r) in route {
        let path = format!("route[{i}]");
        if !listener_names.contains(&r.listener) {
            e.push(ConfigError::new(
                format!("{path}.listener"),
                format!("no listener named {:?}", r.listener),
            ));
        }
        if !pool_names.contains(&r.pool) {
            e.push(ConfigError::new(
                format!("{path}.pool"),
                format!("no pool named {:?}", r.pool),
            ));
        }
        let host = r
            .host
            .as_deref()
            .and_then(|h| host_match(e, &format!("{path}.host"), h));
        let path_prefix = r.path_prefix.unwrap_or_else(|| "/".to_string());
        if !path_prefix.starts_with('/') {
            e.push(ConfigError::new(
                format!("{path}.path_prefix"),
                format!("{path_prefix:?} must start with '/'"),
            ));
        }
        if !seen_routes.insert((r.listener.clone(), host.clone(), path_prefix.clone())) {
            e.push(ConfigError::new(
                path.clone(),
                "duplicate route: an earlier route has the same listener, host and path_prefix",
            ));
        }
        routes.push(RouteConfig {
            listener: r.listener,
            host,
            path_prefix,
            pool: r.pool,
            upgrades: crate::protocols::upgrades_from(e, &format!("{path}.upgrades"), r.upgrades),
        });
    }

    let timeouts = timeouts_from(e, timeouts);
    let trusted_proxies = trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, t)| ip_net(e, &format!("trusted_proxies[{i}]"), t))
        .collect();

    let client_ip_header = match client_ip_header {
        None => Some(crate::types::DEFAULT_CLIENT_IP_HEADER.to_string()),
        Some(h) if h.is_empty() => None,
        Some(h) => header_name(e, "client_ip_header", &h),
    };

    let drain_timeout = drain_timeout
        .and_then(|v| positive_duration(e, "drain_timeout", &v))
        .unwrap_or(Duration::from_secs(300));
    let drain_close_code = match drain_close_code {
        None => 1001,
        Some(c @ (1001 | 1012)) => c as u16,
        Some(c) => {
            e.push(ConfigError::new(
                "drain_close_code",
                format!("{c} is not allowed (1001 going away, or 1012 service restart)"),
            ));
            1001
        }
    };

    let upgrade_socket = upgrade_socket.and_then(|p| {
        // sun_path holds 108 bytes including the terminator.
        if p.is_empty() || p.len() > 100 {
            e.push(ConfigError::new(
                "upgrade_socket",
                "must be a path of 1 to 100 bytes",
            ));
            None
        } else {
            Some(std::path::PathBuf::from(p))
        }
    });

    let buffer_dir = buffer_dir.and_then(|d| {
        let path = std::path::PathBuf::from(&d);
        if path.is_absolute() {
            Some(path)
        } else {
            e.push(ConfigError::new(
                "buffer_dir",
                format!("{d:?} is not an absolute path"),
            ));
            None
        }
    });

    let admin = admin.and_then(|a| admin_from(e, a));

    let limits = crate::limits::limits_from(e, limits);

    if errors.is_empty() {
        Ok(Config {
            listeners,
            pools,
            routes,
            timeouts,
            trusted_proxies,
            client_ip_header,
            drain_timeout,
            drain_close_code,
            upgrade_socket,
            admin,
            limits,
            buffer_dir,
            processes,
            services,
        })
    } else {
        Err(ConfigErrors(errors))
    }
}

fn admin_from(e: &mut Vec<ConfigError>, a: raw::RawAdmin) -> Option<crate::AdminConfig> {
    let address = socket_addr(
        e,
        "admin.address",
        a.address
            .as_deref()
            .unwrap_or(crate::types::DEFAULT_ADMIN_ADDRESS),
    );
    if let Some(t) = &a.token {
        if t.len() < MIN_SECRET_LEN {
            e.push(ConfigError::new(
                "admin.token",
                format!("needs at least {MIN_SECRET_LEN} characters"),
            ));
        }
    } else if let Some(address) = address.filter(|a| !a.ip().is_loopback()) {
        e.push(ConfigError::new(
            "admin.token",
            format!("required when admin.address ({address}) is not a loopback address"),
        ));
    }
    let hosts = a
        .hosts
        .iter()
        .enumerate()
        .filter_map(|(i, h)| host_match(e, &format!("admin.hosts[{i}]"), h))
        .collect();
    let read_timeout = a
        .read_timeout
        .and_then(|v| positive_duration(e, "admin.read_timeout", &v))
        .unwrap_or(crate::types::DEFAULT_ADMIN_READ_TIMEOUT);
    let max_connections = int_in(
        e,
        "admin.max_connections",
        a.max_connections,
        1..=65_536,
        crate::types::DEFAULT_ADMIN_MAX_CONNECTIONS as i64,
    ) as usize;
    let protect_reads = a.protect_reads.unwrap_or(false);
    if protect_reads && a.token.is_none() {
        e.push(ConfigError::new(
            "admin.protect_reads",
            "needs admin.token: reads are protected by that token",
        ));
    }
    Some(crate::AdminConfig {
        address: address?,
        token: a.token,
        hosts,
        read_timeout,
        max_connections,
        protect_reads,
    })
}

fn timeouts_from(e: &mut Vec<ConfigError>, raw: RawTimeouts) -> Timeouts {
    let d = Timeouts::default();
    let mut get = |key: &str, value: Option<String>, default: Duration| match value {
        None => default,
        Some(v) => positive_duration(e, &format!("timeouts.{key}"), &v).unwrap_or(default),
    };
    let connect = get("connect", raw.connect, d.connect);
    let request_header = get("request_header", raw.request_header, d.request_header);
    let response_header = get("response_header", raw.response_header, d.response_header);
    let client_idle = get("client_idle", raw.client_idle, d.client_idle);
    let upstream_idle = get("upstream_idle", raw.upstream_idle, d.upstream_idle);
    let shutdown_grace = get("shutdown_grace", raw.shutdown_grace, d.shutdown_grace);
    let websocket_idle = match raw.websocket_idle.as_deref() {
        None => d.websocket_idle,
        Some("none") => None,
        Some(v) => positive_duration(e, "timeouts.websocket_idle", v),
    };
    let websocket_ping = match raw.websocket_ping.as_deref() {
        None => d.websocket_ping,
        Some("none") => None,
        Some(v) => positive_duration(e, "timeouts.websocket_ping", v),
    };
    if let (Some(ping), Some(idle)) = (websocket_ping, websocket_idle) {
        // The client's Pong is what keeps a quiet tunnel open: a tunnel
        // that closes before its first Ping never gets one.
        if ping >= idle {
            e.push(ConfigError::new(
                "timeouts.websocket_ping",
                format!(
                    "must be shorter than timeouts.websocket_idle ({idle:?}): a quiet tunnel would close before its first ping"
                ),
            ));
        }
    }
    Timeouts {
        connect,
        request_header,
        response_header,
        client_idle,
        upstream_idle,
        websocket_idle,
        websocket_ping,
        shutdown_grace,
    }
}

/// A pool table that belongs to one policy (`[pool.sticky]` to `cookie`,
/// `[pool.hash]` to `hash`): required with it, refused without it.
fn policy_table<T>(
    e: &mut Vec<ConfigError>,
    pool_path: &str,
    policy: Policy,
    owner: Policy,
    table: &str,
    needs: &str,
    value: Option<T>,
) -> Option<T> {
    match (policy == owner, value) {
        (true, Some(v)) => Some(v),
        (true, None) => {
            e.push(ConfigError::new(
                format!("{pool_path}.{table}"),
                format!(
                    "policy \"{}\" needs a [pool.{table}] table with {needs}",
                    owner.name()
                ),
            ));
            None
        }
        (false, Some(_)) => {
            e.push(ConfigError::new(
                format!("{pool_path}.{table}"),
                format!("only used with policy = \"{}\"", owner.name()),
            ));
            None
        }
        (false, None) => None,
    }
}

/// Whether an error about `key` (or inside it) was already reported.
fn errors_mention(e: &[ConfigError], key: &str) -> bool {
    e.iter().any(|err| err.path.starts_with(key))
}

fn sticky_from(e: &mut Vec<ConfigError>, path: &str, raw: RawSticky) -> Option<StickyConfig> {
    let before = e.len();
    let cookie = raw.cookie.unwrap_or_else(|| "lb".to_string());
    if !is_token(&cookie) {
        e.push(ConfigError::new(
            format!("{path}.cookie"),
            format!("invalid cookie name {cookie:?} (letters, digits and !#$%&'*+-.^_`|~)"),
        ));
    }
    let secret = raw.secret.unwrap_or_default();
    if secret.len() < MIN_SECRET_LEN {
        e.push(ConfigError::new(
            format!("{path}.secret"),
            format!(
                "needs at least {MIN_SECRET_LEN} characters (a long random string shared by every balancer of the deployment)"
            ),
        ));
    }
    if let Some(param) = &raw.fallback_param {
        let ok = !param.is_empty()
            && param
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
        if !ok {
            e.push(ConfigError::new(
                format!("{path}.fallback_param"),
                format!("invalid query parameter name {param:?} (letters, digits, - _ . ~)"),
            ));
        }
    }
    let cookie_path = raw.path.unwrap_or_else(|| "/".to_string());
    if !cookie_path.starts_with('/')
        || cookie_path
            .bytes()
            .any(|b| b == b';' || b.is_ascii_control() || b == b' ')
    {
        e.push(ConfigError::new(
            format!("{path}.path"),
            format!("invalid cookie path {cookie_path:?} (must start with '/', no spaces or ';')"),
        ));
    }
    let secure = raw.secure.unwrap_or(false);
    let same_site = match raw
        .same_site
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("lax") => SameSite::Lax,
        Some("strict") => SameSite::Strict,
        Some("none") => SameSite::None,
        Some(other) => {
            e.push(ConfigError::new(
                format!("{path}.same_site"),
                format!("unknown SameSite {other:?} (expected Strict, Lax or None)"),
            ));
            SameSite::Lax
        }
    };
    if same_site == SameSite::None && !secure {
        e.push(ConfigError::new(
            format!("{path}.same_site"),
            "SameSite=None needs secure = true (browsers drop it otherwise)",
        ));
    }
    let max_age = raw
        .max_age
        .as_deref()
        .and_then(|m| positive_duration(e, &format!("{path}.max_age"), m));
    (e.len() == before).then_some(StickyConfig {
        cookie,
        secret,
        fallback_param: raw.fallback_param,
        path: cookie_path,
        http_only: raw.http_only.unwrap_or(true),
        secure,
        same_site,
        max_age,
    })
}

fn health_from(e: &mut Vec<ConfigError>, path: &str, raw: RawHealth) -> Option<HealthConfig> {
    let before = e.len();
    let kind = match raw.kind.as_deref() {
        None | Some("http") => HealthKind::Http,
        Some("tcp") => HealthKind::Tcp,
        Some(other) => {
            e.push(ConfigError::new(
                format!("{path}.type"),
                format!("unknown check type {other:?} (expected http or tcp)"),
            ));
            HealthKind::Http
        }
    };
    let check_path = raw.path.unwrap_or_else(|| "/healthz".to_string());
    if !check_path.starts_with('/')
        || check_path
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ')
    {
        e.push(ConfigError::new(
            format!("{path}.path"),
            format!("{check_path:?} must start with '/' and have no spaces"),
        ));
    }
    let mut dur = |key: &str, v: Option<String>, default: Duration| match v {
        None => default,
        Some(v) => positive_duration(e, &format!("{path}.{key}"), &v).unwrap_or(default),
    };
    let interval = dur("interval", raw.interval, Duration::from_secs(1));
    let timeout = dur("timeout", raw.timeout, Duration::from_secs(1));
    let expect = match raw.expect.as_deref() {
        None => (200, 399),
        Some(text) => match status_range(text) {
            Some(r) => r,
            None => {
                e.push(ConfigError::new(
                    format!("{path}.expect"),
                    format!("invalid status range {text:?} (e.g. \"200-399\" or \"204\")"),
                ));
                (200, 399)
            }
        },
    };
    let rise = int_in(e, &format!("{path}.rise"), raw.rise, 1..=100, 2) as u32;
    let fall = int_in(e, &format!("{path}.fall"), raw.fall, 1..=100, 2) as u32;
    (e.len() == before).then_some(HealthConfig {
        kind,
        path: check_path,
        interval,
        timeout,
        expect,
        rise,
        fall,
        assume_up: raw.assume_up.unwrap_or(false),
    })
}

/// An integer key within `range`, or the default (recording an error).
pub(crate) fn int_in(
    e: &mut Vec<ConfigError>,
    path: &str,
    value: Option<i64>,
    range: std::ops::RangeInclusive<i64>,
    default: i64,
) -> i64 {
    match value {
        None => default,
        Some(n) if range.contains(&n) => n,
        Some(n) => {
            e.push(ConfigError::new(
                path,
                format!("{n} is out of range ({} to {})", range.start(), range.end()),
            ));
            default
        }
    }
}

fn retry_from(e: &mut Vec<ConfigError>, path: &str, raw: Option<RawRetry>) -> RetryConfig {
    let d = RetryConfig::default();
    let Some(raw) = raw else { return d };
    RetryConfig {
        attempts: int_in(
            e,
            &format!("{path}.attempts"),
            raw.attempts,
            0..=10,
            d.attempts.into(),
        ) as u32,
        budget_percent: int_in(
            e,
            &format!("{path}.budget_percent"),
            raw.budget_percent,
            0..=100,
            d.budget_percent.into(),
        ) as u32,
        max_body: int_in(
            e,
            &format!("{path}.max_body"),
            raw.max_body,
            0..=16 * 1024 * 1024,
            d.max_body as i64,
        ) as u64,
    }
}

fn ejection_from(e: &mut Vec<ConfigError>, path: &str, raw: Option<RawEjection>) -> EjectionConfig {
    let d = EjectionConfig::default();
    let Some(raw) = raw else { return d };
    let base = raw
        .base
        .and_then(|v| positive_duration(e, &format!("{path}.base"), &v))
        .unwrap_or(d.base);
    let max = raw
        .max
        .and_then(|v| positive_duration(e, &format!("{path}.max"), &v))
        .unwrap_or(d.max);
    if max < base {
        e.push(ConfigError::new(
            format!("{path}.max"),
            "must not be shorter than base",
        ));
    }
    EjectionConfig {
        consecutive_failures: int_in(
            e,
            &format!("{path}.consecutive_failures"),
            raw.consecutive_failures,
            0..=1000,
            d.consecutive_failures.into(),
        ) as u32,
        base,
        max,
        max_percent: int_in(
            e,
            &format!("{path}.max_percent"),
            raw.max_percent,
            0..=100,
            d.max_percent.into(),
        ) as u32,
        on_5xx: raw.on_5xx.unwrap_or(d.on_5xx),
    }
}

/// `"200-399"` or `"204"`, within 100-599.
fn status_range(text: &str) -> Option<(u16, u16)> {
    let (lo, hi) = match text.split_once('-') {
        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
        None => {
            let s = text.trim().parse().ok()?;
            (s, s)
        }
    };
    (100..=599).contains(&lo).then_some(())?;
    (lo <= hi && hi <= 599).then_some((lo, hi))
}

/// RFC 9110 token characters (cookie and header names).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn hash_key(e: &mut Vec<ConfigError>, path: &str, text: &str) -> Option<HashKey> {
    let bad = |e: &mut Vec<ConfigError>, why: &str| {
        e.push(ConfigError::new(
            path,
            format!(
                "invalid key {text:?}: {why} (expected header:NAME, query:NAME, cookie:NAME or path_segment:N)"
            ),
        ));
        None
    };
    let Some((kind, arg)) = text.split_once(':') else {
        return bad(e, "missing ':'");
    };
    match kind {
        "header" | "cookie" if !is_token(arg) => bad(e, "invalid name"),
        "header" => Some(HashKey::Header(arg.to_ascii_lowercase())),
        "cookie" => Some(HashKey::Cookie(arg.to_string())),
        "query" if arg.is_empty() || arg.contains(['&', '=', '#', ' ']) => bad(e, "invalid name"),
        "query" => Some(HashKey::Query(arg.to_string())),
        "path_segment" => match arg.parse::<usize>() {
            Ok(n) if n < 64 => Some(HashKey::PathSegment(n)),
            _ => bad(e, "N must be a number from 0 to 63"),
        },
        _ => bad(e, "unknown kind"),
    }
}

fn ip_net(e: &mut Vec<ConfigError>, path: &str, text: &str) -> Option<ipnet::IpNet> {
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        return Some(net.trunc());
    }
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Some(ipnet::IpNet::from(ip));
    }
    e.push(ConfigError::new(
        path,
        format!("invalid network {text:?} (expected CIDR like 10.0.0.0/8 or an address)"),
    ));
    None
}

/// A request header the balancer may set: a token of letters, digits and
/// `-`, not one that frames or routes the request. Stored lower-case.
fn header_name(e: &mut Vec<ConfigError>, path: &str, text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    if lower.len() > 64
        || !lower
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        e.push(ConfigError::new(
            path,
            format!("{text:?} is not a header name (letters, digits and '-', at most 64)"),
        ));
        return None;
    }
    const RESERVED: [&str; 9] = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "cookie",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    ];
    if RESERVED.contains(&lower.as_str()) {
        e.push(ConfigError::new(
            path,
            format!("{text:?} is set by the balancer or frames the request: pick another name"),
        ));
        return None;
    }
    Some(lower)
}

pub(crate) fn positive_duration(
    e: &mut Vec<ConfigError>,
    path: &str,
    text: &str,
) -> Option<Duration> {
    match duration::parse(text) {
        Ok(d) if d.is_zero() => {
            e.push(ConfigError::new(path, "must be longer than zero"));
            None
        }
        Ok(d) => Some(d),
        Err(msg) => {
            e.push(ConfigError::new(path, msg));
            None
        }
    }
}

fn socket_addr(e: &mut Vec<ConfigError>, path: &str, text: &str) -> Option<SocketAddr> {
    match text.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            e.push(ConfigError::new(
                path,
                format!(
                    "invalid address {text:?} (expected IP:PORT, e.g. 127.0.0.1:9001 or [::1]:9001)"
                ),
            ));
            None
        }
    }
}

/// Names and ids appear in logs, metrics labels and admin URLs: keep them plain.
fn check_name(e: &mut Vec<ConfigError>, path: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        e.push(ConfigError::new(
            path,
            format!("invalid name {name:?} (1 to 64 of A-Z a-z 0-9 - _ .)"),
        ));
    }
}

fn host_match(e: &mut Vec<ConfigError>, path: &str, text: &str) -> Option<HostMatch> {
    let lower = text.to_ascii_lowercase();
    let (wildcard, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let labels_ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !labels_ok {
        e.push(ConfigError::new(
            path,
            format!(
                "invalid host {text:?} (expected a host name like game.example.com or *.example.com, without port)"
            ),
        ));
        return None;
    }
    Some(if wildcard {
        HostMatch::Wildcard(format!(".{name}"))
    } else {
        HostMatch::Exact(name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use crate::parse;
    use crate::testing::rejected as errors;
    use crate::testing::{assert_exactly, assert_has};

    const GOOD: &str = r#"
        [[listener]]
        name = "public"
        address = "127.0.0.1:8080"

        [[pool]]
        name = "game"
        policy = "round_robin"
          [[pool.backend]]
          id = "game-1"
          address = "127.0.0.1:9001"
          weight = 3
          [[pool.backend]]
          id = "game-2"
          address = "[::1]:9002"

        [[route]]
        listener = "public"
        host = "*.Example.com"
        path_prefix = "/api"
        pool = "game"

        [timeouts]
        connect = "250ms"
        websocket_idle = "5m"
    "#;

    #[test]
    fn client_ip_header_defaults_turns_off_and_refuses_framing_headers() {
        assert_eq!(
            parse(GOOD).unwrap().client_ip_header.as_deref(),
            Some("x-real-ip")
        );
        let with = |v: &str| format!("client_ip_header = {v:?}\n{GOOD}");
        assert_eq!(
            parse(&with("CF-Connecting-IP"))
                .unwrap()
                .client_ip_header
                .as_deref(),
            Some("cf-connecting-ip")
        );
        assert_eq!(parse(&with("")).unwrap().client_ip_header, None);
        for bad in ["Host", "x-forwarded-for", "bad header", "x:y"] {
            let errs = errors(&with(bad));
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert!(errs[0].starts_with("client_ip_header:"), "{bad}: {errs:?}");
        }
    }

    #[test]
    fn accepts_a_good_file() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.listeners[0].address.port(), 8080);
        assert_eq!(c.pools[0].backends[0].weight, 3);
        assert_eq!(c.pools[0].backends[1].weight, 1);
        assert_eq!(
            c.routes[0].host,
            Some(crate::HostMatch::Wildcard(".example.com".into()))
        );
        assert_eq!(c.timeouts.connect.as_millis(), 250);
        assert_eq!(c.timeouts.websocket_idle.unwrap().as_secs(), 300);
        assert_eq!(c.timeouts.request_header.as_secs(), 10);
    }

    #[test]
    fn websocket_ping_is_off_by_default_and_shorter_than_websocket_idle() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.timeouts.websocket_ping, None);
        let with = |t: &str| GOOD.replace("websocket_idle = \"5m\"", t);
        let c = parse(&with("websocket_ping = \"30s\"")).unwrap();
        assert_eq!(
            c.timeouts.websocket_ping,
            Some(std::time::Duration::from_secs(30))
        );
        let c = parse(&with("websocket_ping = \"none\"")).unwrap();
        assert_eq!(c.timeouts.websocket_ping, None);
        // Without an idle limit any interval goes.
        let c = parse(&with("websocket_idle = \"none\"\nwebsocket_ping = \"2h\"")).unwrap();
        assert_eq!(
            c.timeouts.websocket_ping,
            Some(std::time::Duration::from_secs(7200))
        );
        for bad in [
            "websocket_ping = \"0s\"",
            "websocket_ping = \"off\"",
            "websocket_ping = \"10m\"",
            "websocket_idle = \"1s\"\nwebsocket_ping = \"1s\"",
        ] {
            let errs = errors(&with(bad));
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert!(
                errs[0].starts_with("timeouts.websocket_ping:"),
                "{bad}: {errs:?}"
            );
        }
    }

    #[test]
    fn reports_every_error_with_its_path() {
        let errs = errors(
            r#"
            colour = "blue"
            [[listener]]
            name = "public"
            address = "localhost"
            [[pool]]
            name = "game"
            policy = "fastest"
              [[pool.backend]]
              id = "a"
              address = "127.0.0.1:1"
              weight = 0
              [[pool.backend]]
              id = "a"
              address = "127.0.0.1:2"
              [[pool.backend]]
              id = "b"
              adress = "127.0.0.1:3"
            [[route]]
            listener = "private"
            pool = "lobby"
            path_prefix = "api"
            [timeouts]
            connect = "3 parsecs"
            "#,
        );
        let expect = [
            "colour: unknown key",
            "listener[0].address: invalid address \"localhost\"",
            "pool[0].policy: unknown policy \"fastest\"",
            "pool[0].backend[2].adress: unknown field `adress`",
            "pool[0].backend[0].weight: 0 is out of range",
            "pool[0].backend[1].id: duplicate backend id \"a\"",
            "route[0].listener: no listener named \"private\"",
            "route[0].pool: no pool named \"lobby\"",
            "route[0].path_prefix: \"api\" must start with '/'",
            "timeouts.connect: invalid duration \"3 parsecs\"",
        ];
        assert_exactly(&errs, &expect);
    }

    #[test]
    fn syntax_error_names_the_line() {
        let errs = errors("[[listener]\nname = 1");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("TOML syntax error"), "{errs:?}");
        assert!(errs[0].contains("line 1"), "{errs:?}");
    }

    #[test]
    fn missing_required_key() {
        let errs = errors("[[listener]]\nname = \"x\"\n");
        assert_eq!(
            errs,
            vec!["listener[0]: missing field `address`".to_string()]
        );
    }

    #[test]
    fn wrong_type_names_the_key() {
        let errs = errors("[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n[[pool]]\nname = \"p\"\n[[pool.backend]]\nid = \"a\"\naddress = \"127.0.0.1:1\"\nweight = \"heavy\"\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("pool[0].backend[0].weight: invalid type"),
            "{errs:?}"
        );
    }

    #[test]
    fn duplicates_and_bad_hosts() {
        let errs = errors(
            r#"
            [[listener]]
            name = "a"
            address = "127.0.0.1:8080"
            [[listener]]
            name = "a"
            address = "127.0.0.1:8080"
            [[pool]]
            name = "p"
            [[pool]]
            name = "p"
            [[route]]
            listener = "a"
            pool = "p"
            host = "exa mple.com:80"
            [[route]]
            listener = "a"
            pool = "p"
            [[route]]
            listener = "a"
            pool = "p"
            "#,
        );
        assert_has(
            &errs,
            &[
                "listener[1].name: duplicate listener name",
                "listener[1].address: 127.0.0.1:8080 is already used",
                "pool[1].name: duplicate pool name",
                "route[0].host: invalid host",
                "route[2]: duplicate route",
            ],
        );
    }

    proptest::proptest! {
        /// Any text, however broken, gets Ok or errors: never a panic.
        #[test]
        fn never_panics_on_any_text(text in ".{0,400}") {
            let _ = parse(&text);
        }

        /// Structurally plausible files with random values: still no panic,
        /// and every error names a key path or the file.
        #[test]
        fn never_panics_on_plausible_files(
            name in "[a-z\\-\\. ]{0,8}",
            address in "[0-9a-z\\.:\\[\\]]{0,24}",
            weight in proptest::prelude::any::<i64>(),
            duration in "[0-9\\.a-z ]{0,8}",
            prefix in "[/a-z]{0,6}",
        ) {
            let text = format!(
                "[[listener]]\nname = {name:?}\naddress = {address:?}\n\
                 [[pool]]\nname = {name:?}\n[[pool.backend]]\nid = {name:?}\naddress = {address:?}\nweight = {weight}\n\
                 [[route]]\nlistener = {name:?}\npool = {name:?}\npath_prefix = {prefix:?}\n\
                 [timeouts]\nconnect = {duration:?}\n"
            );
            if let Err(errors) = parse(&text) {
                for e in errors.iter() {
                    proptest::prop_assert!(!e.message.is_empty());
                }
            }
        }
    }

    const LISTENER: &str = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n";

    #[test]
    fn admin_defaults() {
        let c = parse(&format!("[admin]\n{LISTENER}")).unwrap();
        let a = c.admin.unwrap();
        assert_eq!(a.address.to_string(), "127.0.0.1:9900");
        assert_eq!(a.token, None);
        assert!(a.hosts.is_empty());
        assert_eq!(a.read_timeout, std::time::Duration::from_secs(10));
        assert_eq!(a.max_connections, 64);
        assert!(!a.protect_reads);
    }

    #[test]
    fn admin_hardening_keys() {
        let c = parse(&format!(
            "[admin]\ntoken = \"0123456789abcdef\"\nhosts = [\"Admin.Example.com\", \"*.ops.example.com\"]\n\
             read_timeout = \"1500ms\"\nmax_connections = 8\nprotect_reads = true\n{LISTENER}"
        ))
        .unwrap();
        let a = c.admin.unwrap();
        assert_eq!(
            a.hosts,
            vec![
                crate::HostMatch::Exact("admin.example.com".into()),
                crate::HostMatch::Wildcard(".ops.example.com".into()),
            ]
        );
        assert_eq!(a.read_timeout, std::time::Duration::from_millis(1500));
        assert_eq!(a.max_connections, 8);
        assert!(a.protect_reads);
    }

    #[test]
    fn admin_bad_values_name_their_key() {
        let errs = errors(&format!(
            "[admin]\nhosts = [\"ok.example.com\", \"bad host:80\"]\nread_timeout = \"0s\"\n\
             max_connections = 0\nprotect_reads = true\n{LISTENER}"
        ));
        let expect = [
            "admin.hosts[1]: invalid host \"bad host:80\"",
            "admin.read_timeout: must be longer than zero",
            "admin.max_connections: 0 is out of range (1 to 65536)",
            "admin.protect_reads: needs admin.token",
        ];
        assert_exactly(&errs, &expect);

        let errs = errors(&format!(
            "[admin]\nread_timeout = \"soon\"\nprotect_reads = \"yes\"\n{LISTENER}"
        ));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("admin.protect_reads: invalid type")),
            "{errs:#?}"
        );
        let errs = errors(&format!(
            "[admin]\nread_timeout = \"soon\"\nmax_connections = 100000\n{LISTENER}"
        ));
        assert_eq!(
            errs.iter()
                .map(|e| e.split(':').next().unwrap())
                .collect::<Vec<_>>(),
            ["admin.read_timeout", "admin.max_connections"],
            "{errs:#?}"
        );
    }

    #[test]
    fn host_matching() {
        let exact = crate::HostMatch::Exact("a.example.com".into());
        let wild = crate::HostMatch::Wildcard(".example.com".into());
        assert!(exact.matches("a.example.com"));
        assert!(!exact.matches("b.example.com"));
        assert!(wild.matches("a.example.com"));
        assert!(wild.matches("x.y.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("badexample.com"));
    }
}
