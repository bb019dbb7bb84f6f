//! Config -> runtime snapshot, reusing live backends from the previous one.

use std::collections::HashMap;
use std::sync::Arc;

use config::{Config, Timeouts};

use super::backend::UpstreamSettings;
use super::{Backend, Health, Pool, RouteTable};
use crate::select;

/// Everything a request needs, immutable once built.
#[derive(Debug)]
pub struct Snapshot {
    /// Bumped on every successful (re)build; shown in logs and, later, the admin API.
    pub generation: u64,
    pub routes: RouteTable,
    pub pools: HashMap<Arc<str>, Arc<Pool>>,
    pub timeouts: Timeouts,
    /// Peers whose `X-Forwarded-For` names the real client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Close code sent to WebSocket clients whose tunnel the balancer ends.
    pub drain_close_code: u16,
}

impl Snapshot {
    /// Builds a snapshot. A backend whose pool, id, address and upstream
    /// settings are unchanged from `previous` keeps its `Arc<Backend>`, and
    /// with it its counters and pooled connections.
    pub fn build(config: &Config, previous: Option<&Snapshot>) -> Self {
        Self::build_with(config, previous, None)
    }

    /// [`Snapshot::build`], resolving metric handles for new backends and
    /// every pool when `metrics` is given.
    pub fn build_with(
        config: &Config,
        previous: Option<&Snapshot>,
        metrics: Option<&crate::metrics::Metrics>,
    ) -> Self {
        let mut live: HashMap<(&str, &str), &Arc<Backend>> = HashMap::new();
        if let Some(prev) = previous {
            for pool in prev.pools.values() {
                for b in &pool.backends {
                    live.insert((&pool.name, &b.id), b);
                }
            }
        }

        let mut pools = HashMap::new();
        for p in &config.pools {
            let settings = UpstreamSettings {
                connect_timeout: config.timeouts.connect,
                idle_timeout: config.timeouts.upstream_idle,
                max_idle: p.max_idle_per_backend,
            };
            let backends: Vec<Arc<Backend>> = p
                .backends
                .iter()
                .map(|b| match live.get(&(p.name.as_str(), b.id.as_str())) {
                    Some(old) if old.address == b.address && old.settings == settings => {
                        Arc::clone(old)
                    }
                    _ => {
                        let initial = match &p.health {
                            Some(h) if !h.assume_up => Health::Unknown,
                            _ => Health::Up,
                        };
                        let backend = Backend::with_connect_metric(
                            &b.id,
                            b.address,
                            settings,
                            initial,
                            metrics.map(|m| m.connect(&p.name)),
                        );
                        if let Some(m) = metrics {
                            backend.set_metrics(m.backend(&p.name, &b.id));
                        }
                        Arc::new(backend)
                    }
                })
                .collect();
            let weights: Vec<u32> = p.backends.iter().map(|b| b.weight).collect();
            let selection = select::for_pool(p);
            let pool = Arc::new(
                Pool::new(&p.name, backends, weights, selection)
                    .with_failure_policy(p.retry, p.ejection)
                    .with_slow_start(p.slow_start)
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
                    Arc::clone(pool),
                );
            }
        }

        Self {
            generation: previous.map_or(1, |p| p.generation + 1),
            routes: routes.finish(),
            pools,
            timeouts: config.timeouts,
            trusted_proxies: config.trusted_proxies.clone(),
            drain_close_code: config.drain_close_code,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(b2_addr: &str, weight: u32) -> Config {
        config::parse(&format!(
            r#"
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
              address = "{b2_addr}"
              weight = {weight}
            [[route]]
            listener = "l"
            pool = "p"
            "#
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn unchanged_backends_keep_their_live_state() {
        let first = Snapshot::build(&config("127.0.0.1:9002", 1), None);
        let a1 = Arc::clone(&first.pools["p"].backends[0]);
        let b1 = Arc::clone(&first.pools["p"].backends[1]);
        let _guard = a1.open();

        // Weight change: same objects, new weights.
        let second = Snapshot::build(&config("127.0.0.1:9002", 5), Some(&first));
        assert_eq!(second.generation, 2);
        assert!(Arc::ptr_eq(&a1, &second.pools["p"].backends[0]));
        assert!(Arc::ptr_eq(&b1, &second.pools["p"].backends[1]));
        assert_eq!(second.pools["p"].weights, vec![1, 5]);
        assert_eq!(second.pools["p"].backends[0].open_connections(), 1);

        // Address change: a new backend object for b only.
        let third = Snapshot::build(&config("127.0.0.1:9003", 5), Some(&second));
        assert!(Arc::ptr_eq(&a1, &third.pools["p"].backends[0]));
        assert!(!Arc::ptr_eq(&b1, &third.pools["p"].backends[1]));
        assert!(third.routes.find("l", None, "/").is_some());
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
        let snap = Snapshot::build(&config, None);
        let pool = &snap.pools["p"];
        assert_eq!(pool.slow_start_ms, 60_000);
        let b = &pool.backends[1];
        b.set_health(Health::Down);
        b.set_health(Health::Up);
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

#[cfg(test)]
mod reload_properties {
    use proptest::prelude::*;

    use super::*;

    const IDS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

    /// A config with the backends whose bit is set in `mask`; `port_shift`
    /// moves some of them to another port (an address change).
    fn config(mask: u8, weights: u8, port_shift: u8) -> Config {
        let mut text = String::from(
            "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n[[pool]]\nname = \"p\"\npolicy = \"least_connections\"\n",
        );
        for (i, id) in IDS.iter().enumerate() {
            if mask & (1 << i) != 0 {
                let port = 9000 + i as u16 + if port_shift & (1 << i) != 0 { 100 } else { 0 };
                let weight = 1 + u32::from(weights & (1 << i) != 0);
                text.push_str(&format!(
                    "[[pool.backend]]\nid = \"{id}\"\naddress = \"127.0.0.1:{port}\"\nweight = {weight}\n"
                ));
            }
        }
        text.push_str("[[route]]\nlistener = \"l\"\npool = \"p\"\n");
        config::parse(&text).unwrap()
    }

    fn by_id(s: &Snapshot) -> HashMap<String, Arc<Backend>> {
        s.pools["p"]
            .backends
            .iter()
            .map(|b| (b.id.to_string(), Arc::clone(b)))
            .collect()
    }

    proptest! {
        /// Reloading the same config is a no-op: the same backend objects.
        #[test]
        fn same_config_reuses_every_backend(mask in any::<u8>(), weights in any::<u8>()) {
            let c = config(mask, weights, 0);
            let first = Snapshot::build(&c, None);
            let second = Snapshot::build(&c, Some(&first));
            let (a, b) = (by_id(&first), by_id(&second));
            prop_assert_eq!(a.len(), b.len());
            for (id, backend) in &a {
                prop_assert!(Arc::ptr_eq(backend, &b[id]));
            }
        }

        /// Over any sequence of configs, a backend present (same pool, id
        /// and address) in two consecutive ones keeps its object and its
        /// live state (here: open connections).
        #[test]
        fn any_sequence_preserves_backends_present_in_both(
            steps in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 1..12)
        ) {
            let mut snap = Snapshot::build(&config(0xff, 0, 0), None);
            let mut guards = Vec::new();
            for b in snap.pools["p"].backends.iter() {
                guards.push(b.open());
            }
            for (mask, weights, shift) in steps {
                let c = config(mask, weights, shift);
                let next = Snapshot::build(&c, Some(&snap));
                let (before, after) = (by_id(&snap), by_id(&next));
                for (id, old) in &before {
                    if let Some(new) = after.get(id) {
                        if old.address == new.address {
                            prop_assert!(Arc::ptr_eq(old, new), "{} was replaced", id);
                            prop_assert_eq!(old.open_connections(), new.open_connections());
                        } else {
                            prop_assert!(!Arc::ptr_eq(old, new));
                        }
                    }
                }
                prop_assert_eq!(next.generation, snap.generation + 1);
                snap = next;
            }
        }
    }
}
