//! What a reload changes, decided once, as a value.
//!
//! [`ReloadPlan::between`] compares the running config with the new one and
//! says, for every backend, listener and health checker, what happens to
//! it. The log line ([`ReloadPlan::summary`]) and the code that applies the
//! reload ([`super::Reloader`]) read the same value, so what is logged is
//! what is done. Start-up is the plan from an empty config.
//!
//! A backend's identity is its pool, id and address: an edit of anything
//! else (weight, timeouts, pool size, health or ejection settings, policy)
//! keeps the live backend with its health, counters, ejection state,
//! pooled connections and WebSocket tunnels, and the new settings apply to
//! the next request through the new snapshot.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use config::{Config, PoolConfig};

use crate::runtime::{BackendKey, Snapshot};
use crate::upstream::Backend;

/// What happens to one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendStep {
    /// Same pool, id and address: the live backend carries over.
    /// `reweighted`: its weight changed (applies to the next pick).
    Keep { reweighted: bool },
    /// New in the config: a new backend.
    Add,
    /// Gone from the config: it takes no new requests and drains.
    Remove,
    /// Its address changed: the old one drains, a new one starts.
    Replace,
}

/// What happens to one backend's health checker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckerStep {
    /// A checker starts (new backend, or its pool gained checks).
    Start,
    /// The checker is replaced: its settings changed, or its backend did.
    Restart,
    /// The checker stops with its backend.
    Stop,
    /// The pool dropped its checks: the checker stops and the kept backend
    /// counts as up from now on, as every backend of an unchecked pool does.
    StopAndCountUp,
}

/// What happens to one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerStep {
    /// New: bound and served (a port that cannot be bound refuses the reload).
    Add(SocketAddr),
    /// Gone: stops accepting; its open connections finish.
    Remove,
    /// Its address changed: the old socket stops, the new one is bound.
    Move(SocketAddr),
}

/// See the module doc. Entries are in name order, so the plan (and its log
/// line) is the same for the same two configs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReloadPlan {
    /// Every backend that is added, removed, replaced or kept, by (pool, id).
    pub backends: BTreeMap<(String, String), BackendStep>,
    /// Checkers to start, restart or stop; a checker not listed keeps running.
    pub checkers: BTreeMap<(String, String), CheckerStep>,
    /// Listeners to add, remove or move; one not listed is never re-bound.
    pub listeners: BTreeMap<String, ListenerStep>,
    pub routes_changed: bool,
    /// Other settings that changed, by section: `timeouts`, `pool:NAME`,
    /// `trusted_proxies`, `drain`, and `admin` or `upgrade_socket` (which
    /// apply when the next process starts).
    pub settings: Vec<String>,
}

/// A pool's settings apart from its members (what a checker or a pick reads).
fn pool_settings(p: &PoolConfig) -> PoolConfig {
    PoolConfig {
        backends: Vec::new(),
        ..p.clone()
    }
}

impl ReloadPlan {
    /// The plan from `old` to `new`.
    pub fn between(old: &Config, new: &Config) -> Self {
        let mut plan = Self {
            routes_changed: old.routes != new.routes,
            ..Self::default()
        };
        let old_pools: HashMap<&str, &PoolConfig> =
            old.pools.iter().map(|p| (p.name.as_str(), p)).collect();
        let new_pools: HashMap<&str, &PoolConfig> =
            new.pools.iter().map(|p| (p.name.as_str(), p)).collect();

        for p in &new.pools {
            let before = old_pools.get(p.name.as_str()).copied();
            for b in &p.backends {
                let key = (p.name.clone(), b.id.clone());
                let was = before.and_then(|o| o.backends.iter().find(|ob| ob.id == b.id));
                let step = match was {
                    None => BackendStep::Add,
                    Some(o) if o.address != b.address => BackendStep::Replace,
                    Some(o) => BackendStep::Keep {
                        reweighted: o.weight != b.weight,
                    },
                };
                plan.backends.insert(key.clone(), step);
                let checked_before = before.and_then(|o| o.health.as_ref());
                // A checker holds its health settings (it reads the pool's
                // ejection rules from the live snapshot).
                let checker = match (p.health.as_ref(), checked_before, step) {
                    (None, _, _) => None,
                    (Some(_), None, _) | (Some(_), _, BackendStep::Add) => Some(CheckerStep::Start),
                    (Some(_), Some(_), BackendStep::Replace) => Some(CheckerStep::Restart),
                    (Some(n), Some(h), _) => (h != n).then_some(CheckerStep::Restart),
                };
                if let Some(c) = checker {
                    plan.checkers.insert(key, c);
                }
            }
            if let Some(o) = before {
                if pool_settings(o) != pool_settings(p) {
                    plan.settings.push(format!("pool:{}", p.name));
                }
            }
        }
        for o in &old.pools {
            let after = new_pools.get(o.name.as_str()).copied();
            for b in &o.backends {
                let key = (o.name.clone(), b.id.clone());
                let kept = after.is_some_and(|n| n.backends.iter().any(|nb| nb.id == b.id));
                if !kept {
                    plan.backends.insert(key.clone(), BackendStep::Remove);
                    if o.health.is_some() {
                        plan.checkers.insert(key, CheckerStep::Stop);
                    }
                    continue;
                }
                let unchecked_now = after.is_some_and(|n| n.health.is_none());
                if o.health.is_some() && unchecked_now {
                    let step = match plan.backends.get(&key) {
                        Some(BackendStep::Replace) => CheckerStep::Stop,
                        _ => CheckerStep::StopAndCountUp,
                    };
                    plan.checkers.insert(key, step);
                }
            }
        }

        let old_listeners: HashMap<&str, SocketAddr> = old
            .listeners
            .iter()
            .map(|l| (l.name.as_str(), l.address))
            .collect();
        for l in &new.listeners {
            match old_listeners.get(l.name.as_str()) {
                None => {
                    plan.listeners
                        .insert(l.name.clone(), ListenerStep::Add(l.address));
                }
                Some(a) if *a != l.address => {
                    plan.listeners
                        .insert(l.name.clone(), ListenerStep::Move(l.address));
                }
                Some(_) => {
                    let before = old.listeners.iter().find(|o| o.name == l.name);
                    if before.is_some_and(|o| {
                        o.tls != l.tls
                            || o.https_redirect != l.https_redirect
                            || o.max_connections != l.max_connections
                            || o.proxy_protocol != l.proxy_protocol
                    }) {
                        plan.settings.push(format!("listener:{}", l.name));
                    }
                }
            }
        }
        for l in &old.listeners {
            if !new.listeners.iter().any(|n| n.name == l.name) {
                plan.listeners.insert(l.name.clone(), ListenerStep::Remove);
            }
        }

        for (changed, name) in [
            (old.timeouts != new.timeouts, "timeouts"),
            (
                old.trusted_proxies != new.trusted_proxies,
                "trusted_proxies",
            ),
            (
                old.client_ip_header != new.client_ip_header,
                "client_ip_header",
            ),
            (old.limits != new.limits, "limits"),
            (
                old.drain_timeout != new.drain_timeout
                    || old.drain_close_code != new.drain_close_code,
                "drain",
            ),
            // Bound when the process starts: the log says so.
            (old.admin != new.admin, "admin(at the next start)"),
            (
                old.upgrade_socket != new.upgrade_socket,
                "upgrade_socket(at the next start)",
            ),
        ] {
            if changed {
                plan.settings.push(name.into());
            }
        }
        plan.settings.sort();
        plan
    }

    /// The plan that starts a balancer on `config`: everything is new.
    pub fn initial(config: &Config) -> Self {
        let empty = Config {
            listeners: Vec::new(),
            pools: Vec::new(),
            routes: Vec::new(),
            ..config.clone()
        };
        Self::between(&empty, config)
    }

    /// The live backends of `old` that the new snapshot keeps.
    pub fn kept(&self, old: &Snapshot) -> HashMap<BackendKey, Arc<Backend>> {
        old.backends()
            .into_iter()
            .filter(|((pool, id), _)| {
                matches!(
                    self.backends.get(&(pool.to_string(), id.to_string())),
                    Some(BackendStep::Keep { .. })
                )
            })
            .collect()
    }

    /// The live backends of `old` that leave: removed or replaced.
    pub fn leaving(&self, old: &Snapshot) -> Vec<(BackendKey, Arc<Backend>)> {
        let mut leaving: Vec<_> = old
            .backends()
            .into_iter()
            .filter(|((pool, id), _)| {
                matches!(
                    self.backends.get(&(pool.to_string(), id.to_string())),
                    Some(BackendStep::Remove | BackendStep::Replace)
                )
            })
            .collect();
        leaving.sort_by(|a, b| a.0.cmp(&b.0));
        leaving
    }

    /// `+game/game-4 -game/game-2 ~game/game-1(address) ~game/game-3(weight)
    /// +listener:admin routes settings:timeouts,pool:game`, or `no changes`.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        for ((pool, id), step) in &self.backends {
            match step {
                BackendStep::Add => parts.push(format!("+{pool}/{id}")),
                BackendStep::Remove => parts.push(format!("-{pool}/{id}")),
                BackendStep::Replace => parts.push(format!("~{pool}/{id}(address)")),
                BackendStep::Keep { reweighted: true } => {
                    parts.push(format!("~{pool}/{id}(weight)"));
                }
                BackendStep::Keep { reweighted: false } => {}
            }
        }
        for (name, step) in &self.listeners {
            parts.push(match step {
                ListenerStep::Add(_) => format!("+listener:{name}"),
                ListenerStep::Remove => format!("-listener:{name}"),
                ListenerStep::Move(_) => format!("~listener:{name}"),
            });
        }
        if self.routes_changed {
            parts.push("routes".into());
        }
        if !self.settings.is_empty() {
            parts.push(format!("settings:{}", self.settings.join(",")));
        }
        if parts.is_empty() {
            "no changes".into()
        } else {
            parts.join(" ")
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cfg(backends: &str, extra: &str) -> Config {
        config::parse(&format!(
            "{extra}\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n[[pool]]\nname = \"p\"\n{backends}\n[[route]]\nlistener = \"l\"\npool = \"p\"\n"
        ))
        .unwrap()
    }

    const AB: &str = "[[pool.backend]]\nid = \"a\"\naddress = \"127.0.0.1:1\"\n[[pool.backend]]\nid = \"b\"\naddress = \"127.0.0.1:2\"\n";

    #[test]
    fn summarises_each_kind_of_change() {
        let old = cfg(AB, "");
        assert_eq!(ReloadPlan::between(&old, &old).summary(), "no changes");
        let new = config::parse(
            "[timeouts]\nconnect = \"1s\"\n\
             [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
             [[listener]]\nname = \"m\"\naddress = \"127.0.0.1:0\"\n\
             [[pool]]\nname = \"p\"\n\
             [[pool.backend]]\nid = \"a\"\naddress = \"127.0.0.1:1\"\nweight = 3\n\
             [[pool.backend]]\nid = \"c\"\naddress = \"127.0.0.1:3\"\n\
             [[route]]\nlistener = \"l\"\npool = \"p\"\n",
        )
        .unwrap();
        assert_eq!(
            ReloadPlan::between(&old, &new).summary(),
            "~p/a(weight) -p/b +p/c +listener:m settings:timeouts"
        );
    }

    #[test]
    fn settings_edits_keep_backends_and_only_restart_what_reads_them() {
        let health = "[pool.health]\ninterval = \"1s\"\n";
        let old = cfg(&format!("{AB}{health}"), "");
        // Timeouts and pool size: nothing replaced, no checker touched.
        let new = cfg(
            &format!("max_idle_per_backend = 3\n{AB}{health}"),
            "[timeouts]\nconnect = \"1s\"\nupstream_idle = \"2s\"\n",
        );
        let plan = ReloadPlan::between(&old, &new);
        assert!(plan
            .backends
            .values()
            .all(|s| *s == BackendStep::Keep { reweighted: false }));
        assert!(plan.checkers.is_empty(), "{:?}", plan.checkers);
        assert_eq!(plan.settings, vec!["pool:p", "timeouts"]);
        // Health settings: checkers restart, backends stay.
        let new = cfg(&format!("{AB}[pool.health]\ninterval = \"2s\"\n"), "");
        let plan = ReloadPlan::between(&old, &new);
        assert_eq!(plan.checkers.len(), 2);
        assert!(plan.checkers.values().all(|c| *c == CheckerStep::Restart));
        // Checks dropped: checkers stop and the backends count as up.
        let plan = ReloadPlan::between(&old, &cfg(AB, ""));
        assert!(plan
            .checkers
            .values()
            .all(|c| *c == CheckerStep::StopAndCountUp));
        // A new address: replaced, its checker restarted on the new one.
        let moved = AB.replace("127.0.0.1:2", "127.0.0.1:9");
        let plan = ReloadPlan::between(&old, &cfg(&format!("{moved}{health}"), ""));
        let b = ("p".to_string(), "b".to_string());
        assert_eq!(plan.backends[&b], BackendStep::Replace);
        assert_eq!(plan.checkers[&b], CheckerStep::Restart);
        assert_eq!(plan.checkers.len(), 1);
    }

    #[test]
    fn the_initial_plan_adds_everything() {
        let c = cfg(&format!("{AB}[pool.health]\n"), "");
        let plan = ReloadPlan::initial(&c);
        assert_eq!(plan.summary(), "+p/a +p/b +listener:l routes");
        assert!(plan.checkers.values().all(|s| *s == CheckerStep::Start));
    }

    const IDS: [&str; 5] = ["a", "b", "c", "d", "e"];

    /// A config with the backends whose bit is set in `mask`; `moved` shifts
    /// some to another port, `weights` reweighs some; `knobs` edits
    /// settings that are not identity (timeouts, pool size, health,
    /// ejection, policy).
    fn random_config(mask: u8, moved: u8, weights: u8, knobs: u8) -> Config {
        let mut text = String::new();
        if knobs & 1 != 0 {
            text.push_str("[timeouts]\nconnect = \"1s\"\nupstream_idle = \"2s\"\n");
        }
        text.push_str(
            "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n[[pool]]\nname = \"p\"\n",
        );
        if knobs & 2 != 0 {
            text.push_str("max_idle_per_backend = 7\n");
        }
        if knobs & 4 != 0 {
            text.push_str("policy = \"least_connections\"\n");
        }
        for (i, id) in IDS.iter().enumerate() {
            if mask & (1 << i) != 0 {
                let port = 9000 + i as u16 + if moved & (1 << i) != 0 { 100 } else { 0 };
                let weight = 1 + u32::from(weights & (1 << i) != 0);
                text.push_str(&format!(
                    "[[pool.backend]]\nid = \"{id}\"\naddress = \"127.0.0.1:{port}\"\nweight = {weight}\n"
                ));
            }
        }
        if knobs & 8 != 0 {
            let interval = if knobs & 32 != 0 { "2s" } else { "1s" };
            text.push_str(&format!("[pool.health]\ninterval = \"{interval}\"\n"));
        }
        if knobs & 16 != 0 {
            text.push_str("[pool.ejection]\nconsecutive_failures = 5\n");
        }
        text.push_str("[[route]]\nlistener = \"l\"\npool = \"p\"\n");
        config::parse(&text).unwrap()
    }

    fn identities(c: &Config) -> BTreeMap<(String, String), SocketAddr> {
        c.pools
            .iter()
            .flat_map(|p| {
                p.backends
                    .iter()
                    .map(move |b| ((p.name.clone(), b.id.clone()), b.address))
            })
            .collect()
    }

    proptest! {
        /// Replaying any sequence of configs through plans and snapshots:
        /// a backend whose pool, id and address stay keeps its object and
        /// live state whatever else changed; every other one of the old
        /// snapshot leaves (to drain); the plan's steps replayed on the old
        /// identities give the new ones; a checker runs exactly for the
        /// backends of checked pools.
        #[test]
        fn any_sequence_of_configs_replays(
            steps in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()), 1..10)
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let _guard = rt.enter();
            let mut config = random_config(0x1f, 0, 0, 0);
            let plan = ReloadPlan::initial(&config);
            let mut snap = Snapshot::build(&config, &HashMap::new(), 1, None, &Default::default());
            let mut checked: std::collections::BTreeSet<(String, String)> =
                plan.checkers.keys().cloned().collect();
            let mut guards: Vec<_> = snap.pools["p"].backends.iter().map(|b| b.open()).collect();
            for (mask, moved, weights, knobs) in steps {
                let next_config = random_config(mask, moved, weights, knobs);
                let plan = ReloadPlan::between(&config, &next_config);
                let kept = plan.kept(&snap);
                let leaving = plan.leaving(&snap);
                let next = Snapshot::build(&next_config, &kept, snap.generation + 1, None, &Default::default());
                let (before, after) = (identities(&config), identities(&next_config));
                let old_objects = snap.backends();
                let new_objects = next.backends();
                for (key, addr) in &after {
                    let k: BackendKey = (Arc::from(key.0.as_str()), Arc::from(key.1.as_str()));
                    let new = &new_objects[&k];
                    match (before.get(key), old_objects.get(&k)) {
                        (Some(old_addr), Some(old)) if old_addr == addr => {
                            prop_assert!(Arc::ptr_eq(old, new), "{:?} was replaced", key);
                            prop_assert_eq!(old.open_connections(), new.open_connections());
                        }
                        (_, Some(old)) => prop_assert!(!Arc::ptr_eq(old, new)),
                        _ => {}
                    }
                }
                for (k, old) in &old_objects {
                    let stays = new_objects.get(k).is_some_and(|n| Arc::ptr_eq(n, old));
                    let leaves = leaving.iter().any(|(_, l)| Arc::ptr_eq(l, old));
                    prop_assert!(stays != leaves, "{:?}: stays {} leaves {}", k, stays, leaves);
                }
                // Replay the steps on the old identities.
                let mut replayed = before.clone();
                for (key, step) in &plan.backends {
                    match step {
                        BackendStep::Remove => { replayed.remove(key); }
                        BackendStep::Add | BackendStep::Replace => {
                            replayed.insert(key.clone(), after[key]);
                        }
                        BackendStep::Keep { .. } => prop_assert_eq!(before[key], after[key]),
                    }
                }
                prop_assert_eq!(&replayed, &after);
                // Each checker step is the one the two configs call for.
                let health = |c: &Config| c.pools[0].health.clone();
                let (h_old, h_new) = (health(&config), health(&next_config));
                for key in before.keys().chain(after.keys()) {
                    let want = match (plan.backends[key], &h_old, &h_new) {
                        (BackendStep::Remove, Some(_), _) => Some(CheckerStep::Stop),
                        (BackendStep::Remove, None, _) => None,
                        (BackendStep::Add, _, Some(_)) => Some(CheckerStep::Start),
                        (BackendStep::Replace, Some(_), Some(_)) => Some(CheckerStep::Restart),
                        (BackendStep::Replace, Some(_), None) => Some(CheckerStep::Stop),
                        (BackendStep::Keep { .. }, Some(_), None) => Some(CheckerStep::StopAndCountUp),
                        (BackendStep::Keep { .. }, Some(o), Some(n)) if o != n => Some(CheckerStep::Restart),
                        (_, None, Some(_)) => Some(CheckerStep::Start),
                        _ => None,
                    };
                    prop_assert_eq!(plan.checkers.get(key).copied(), want, "{:?}", key);
                }
                // Checkers: apply the steps, compare with what should run.
                for (key, step) in &plan.checkers {
                    match step {
                        CheckerStep::Start | CheckerStep::Restart => { checked.insert(key.clone()); }
                        CheckerStep::Stop | CheckerStep::StopAndCountUp => { checked.remove(key); }
                    }
                }
                let want: std::collections::BTreeSet<_> = next_config
                    .pools
                    .iter()
                    .filter(|p| p.health.is_some())
                    .flat_map(|p| p.backends.iter().map(move |b| (p.name.clone(), b.id.clone())))
                    .collect();
                prop_assert_eq!(&checked, &want);
                prop_assert_eq!(next.generation, snap.generation + 1);
                guards.extend(next.pools["p"].backends.iter().map(|b| b.open()));
                config = next_config;
                snap = next;
            }
        }
    }
}
