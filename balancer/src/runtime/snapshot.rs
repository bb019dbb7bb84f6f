//! Config -> runtime snapshot, with the live backends the caller keeps.
//!
//! Which backends carry over is not decided here: the reload plan
//! ([`crate::reload::ReloadPlan`]) decides it once, and the builder reuses
//! exactly the `Arc<Backend>`s it is handed. Everything else (weights,
//! policies, timeouts, ejection, health and pool settings) is read from the
//! config into the new snapshot, so it applies to the next request without
//! touching live state.

use std::collections::HashMap;
use std::sync::Arc;

use config::{Config, Timeouts};

use super::{Pool, RouteTable};
use crate::select;
use crate::upstream::{Backend, Health, UpstreamSettings, UpstreamTls};

/// Each `[pool.tls]` pool's client settings, files loaded, by pool name.
pub type UpstreamTlsByPool = HashMap<String, Arc<UpstreamTls>>;

/// A backend's identity across snapshots: its pool and id.
pub type BackendKey = (Arc<str>, Arc<str>);

/// Everything a request needs, immutable once built.
#[derive(Debug)]
pub struct Snapshot {
    /// Bumped on every successful (re)build; shown in logs and the admin API.
    pub generation: u64,
    pub routes: RouteTable,
    pub pools: HashMap<Arc<str>, Arc<Pool>>,
    pub timeouts: Timeouts,
    /// Peers whose `X-Forwarded-For` names the real client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `[limits]`.
    pub limits: config::Limits,
    /// `buffer_dir`, or the system's temporary directory.
    pub buffer_dir: Arc<std::path::Path>,
    /// `client_ip_header`: where the computed client address is sent.
    pub client_ip_header: Option<http::HeaderName>,
    /// Close code sent to WebSocket clients whose tunnel the balancer ends.
    pub drain_close_code: u16,
    /// What the pools with `[pool.tls]` connect with (kept across reloads
    /// whose TLS settings and files did not change).
    pub upstream_tls: UpstreamTlsByPool,
}

impl Snapshot {
    /// Builds a snapshot. A backend found in `keep` (by pool and id) is
    /// reused with all its live state; every other one is new.
    /// `generation` is the previous snapshot's plus one (1 at start).
    /// Metric handles are resolved for new backends and every pool when
    /// `metrics` is given. `upstream_tls` has the loaded TLS settings of
    /// every pool with `[pool.tls]` (see `reload::certificates::build_upstream`).
    pub fn build(
        config: &Config,
        keep: &HashMap<BackendKey, Arc<Backend>>,
        generation: u64,
        metrics: Option<&crate::metrics::Metrics>,
        upstream_tls: &UpstreamTlsByPool,
    ) -> Self {
        let mut pools = HashMap::new();
        for p in &config.pools {
            let name: Arc<str> = Arc::from(p.name.as_str());
            let backends: Vec<Arc<Backend>> = p
                .backends
                .iter()
                .map(|b| {
                    let key = (Arc::clone(&name), Arc::from(b.id.as_str()));
                    match keep.get(&key) {
                        Some(kept) => {
                            kept.connections.set_tls(upstream_tls.get(&p.name).cloned());
                            Arc::clone(kept)
                        }
                        None => Arc::new(new_backend(
                            p,
                            b,
                            metrics,
                            upstream_tls.get(&p.name).cloned(),
                        )),
                    }
                })
                .collect();
            let weights: Vec<u32> = p.backends.iter().map(|b| b.weight).collect();
            let selection = select::for_pool(p);
            let pool = Arc::new(
                Pool::new(&p.name, backends, weights, selection)
                    .with_failure_policy(p.retry, p.ejection, p.health.is_some())
                    .with_upstream(
                        UpstreamSettings::new(
                            &config.timeouts,
                            // With a cap, idle connections stay within it too.
                            p.capacity.map_or(p.max_idle_per_backend, |c| {
                                p.max_idle_per_backend.min(c.per_backend)
                            }),
                        )
                        .with_proxy_protocol(p.send_proxy_protocol)
                        .with_cap(p.capacity.map(|c| c.per_backend)),
                    )
                    .with_slow_start(p.slow_start)
                    .with_capacity(p)
                    .with_metrics(metrics.map(|m| m.pool(&p.name))),
            );
            pools.insert(Arc::clone(&pool.name), pool);
        }

        let mut routes = RouteTable::default();
        for r in &config.routes {
            // Validation guarantees the pool exists.
            if let Some(pool) = pools.get(r.pool.as_str()) {
                routes.add(
                    &r.listener,
                    r.host.clone(),
                    &r.path_prefix,
                    super::Route {
                        pool: Arc::clone(pool),
                        upgrades: super::Upgrades::new(&r.upgrades),
                    },
                );
            }
        }

        Self {
            generation,
            routes: routes.finish(),
            pools,
            timeouts: config.timeouts,
            trusted_proxies: config.trusted_proxies.clone(),
            limits: config.limits,
            buffer_dir: crate::proxy::buffering::dir_of(config.buffer_dir.as_deref()).into(),
            client_ip_header: config
                .client_ip_header
                .as_deref()
                .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()),
            drain_close_code: config.drain_close_code,
            upstream_tls: upstream_tls.clone(),
        }
    }

    /// Every backend by pool and id.
    pub fn backends(&self) -> HashMap<BackendKey, Arc<Backend>> {
        self.pools
            .values()
            .flat_map(|p| {
                p.backends
                    .iter()
                    .map(|b| ((Arc::clone(&p.name), Arc::clone(&b.id)), Arc::clone(b)))
            })
            .collect()
    }
}

/// A backend that starts `unknown` (no traffic until its first passing
/// check) in a pool with checks, unless `assume_up`; `up` otherwise.
fn new_backend(
    pool: &config::PoolConfig,
    b: &config::BackendConfig,
    metrics: Option<&crate::metrics::Metrics>,
    tls: Option<Arc<UpstreamTls>>,
) -> Backend {
    let initial = match &pool.health {
        Some(h) if !h.assume_up => Health::Unknown,
        _ => Health::Up,
    };
    let backend = Backend::new(
        &b.id,
        b.address,
        initial,
        metrics.map(|m| m.connect(&pool.name)),
        tls,
    );
    if let Some(m) = metrics {
        backend.set_metrics(m.backend(&pool.name, &b.id));
    }
    backend
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(connect: &str, weight: u32) -> Config {
        config::parse(&format!(
            r#"
            [timeouts]
            connect = "{connect}"
            [[listener]]
            name = "l"
            address = "127.0.0.1:0"
            [[pool]]
            name = "p"
              [[pool.backend]]
              id = "a"
              address = "127.0.0.1:9001"
              [[pool.backend]]
              id = "b"
              address = "127.0.0.1:9002"
              weight = {weight}
            [[route]]
            listener = "l"
            pool = "p"
            "#
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn kept_backends_are_reused_and_settings_come_from_the_config() {
        let first = Snapshot::build(
            &config("3s", 1),
            &HashMap::new(),
            1,
            None,
            &Default::default(),
        );
        let a1 = Arc::clone(&first.pools["p"].backends[0]);
        let b1 = Arc::clone(&first.pools["p"].backends[1]);
        let _guard = a1.open();
        // Keep a only: b is new; weights and timeouts are the new ones.
        let keep: HashMap<BackendKey, Arc<Backend>> = first
            .backends()
            .into_iter()
            .filter(|((_, id), _)| &**id == "a")
            .collect();
        let second = Snapshot::build(&config("1s", 5), &keep, 2, None, &Default::default());
        let p = &second.pools["p"];
        assert!(Arc::ptr_eq(&a1, &p.backends[0]));
        assert!(!Arc::ptr_eq(&b1, &p.backends[1]));
        assert_eq!(p.backends[0].open_connections(), 1);
        assert_eq!(p.weights, vec![1, 5]);
        assert_eq!(
            p.upstream.connect_timeout,
            std::time::Duration::from_secs(1)
        );
        assert_eq!(second.generation, 2);
        assert!(second.routes.find("l", None, "/").is_some());
    }
}

#[cfg(test)]
mod slow_start_tests {
    use super::*;
    use crate::select::SelectionContext;

    #[tokio::test]
    async fn a_backend_back_up_takes_a_small_share_while_ramping() {
        let config = config::parse(
            "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
             [[pool]]\nname = \"p\"\npolicy = \"least_connections\"\nslow_start = \"60s\"\n\
             [[pool.backend]]\nid = \"a\"\naddress = \"127.0.0.1:9001\"\n\
             [[pool.backend]]\nid = \"b\"\naddress = \"127.0.0.1:9002\"\n\
             [[route]]\nlistener = \"l\"\npool = \"p\"\n",
        )
        .unwrap();
        let snap = Snapshot::build(&config, &HashMap::new(), 1, None, &Default::default());
        let pool = &snap.pools["p"];
        assert_eq!(pool.slow_start_ms, 60_000);
        let b = &pool.backends[1];
        b.set_health(Health::Down, 1);
        b.set_health(Health::Up, crate::clock::now_ms());
        let headers = http::HeaderMap::new();
        let uri = http::Uri::from_static("/");
        let ctx = SelectionContext {
            client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            headers: &headers,
            uri: &uri,
        };
        let mut guards = Vec::new();
        let mut on_b = 0;
        for _ in 0..22 {
            let (i, backend, _) = pool.select(&ctx, &[]).unwrap();
            on_b += usize::from(i == 1);
            guards.push(backend.open());
        }
        assert!((1..=4).contains(&on_b), "b got {on_b} of 22");
    }
}
