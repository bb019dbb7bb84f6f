//! Hot reload: the config file changes (or SIGHUP arrives), and the running
//! balancer moves to the new config with nothing dropped. Start-up is the
//! same path from an empty config.
//!
//! ```text
//! file change (notify, debounced) ─┐
//! SIGHUP, POST /api/reload ────────┼─▶ Reloader::reload: read + config::parse (as `balancer check`)
//!                                  │      │ invalid: log every error, keep the old config
//!                                  │      ▼
//!                                  │   supervised backends get the addresses their processes run on
//!                                  │      (Supervisor::place)
//!                                  │      ▼
//!                                  │   TLS listeners: kept ones re-read their files, changed ones are
//!                                  │      rebuilt (certificates.rs); a bad file refuses the reload
//!                                  │      ▼
//!                                  │   ReloadPlan::between(running, new)       (plan.rs: the one decision)
//!                                  │      ▼
//!                                  │   bind added or moved listeners (a failure refuses the reload)
//!                                  │      ▼
//!                                  │   Snapshot::build(new, plan.kept(old)) ─▶ ArcSwap::store
//!                                  │      ▼
//!                                  └─  apply the plan: listeners started/stopped (kept ones never
//!                                      re-bound), checkers started/restarted/stopped, leaving
//!                                      backends drained (drain.rs); log plan.summary();
//!                                      the supervisor starts, retires and restarts instances
//!                                      (Supervisor::reloaded)
//! supervisor's Swap (rolling restart) ─▶ Reloader::reapply: the same build and apply, from the
//!                                      config in force with the instances' new addresses
//!
//! certificate directory change (notify), poll ─▶ Reloader::refresh_certificates: re-read, swap
//!                                               what loads, log and show what is refused
//! ```

pub mod certificates;
mod drain;
mod outcome;
mod plan;
mod watch;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use certificates::TlsListeners;
pub use drain::{DrainList, Draining};
pub use outcome::{ReloadOutcome, ReloadStats};
pub use plan::{BackendStep, CheckerStep, ListenerStep, ReloadPlan};
pub use watch::{watch_dirs, watch_file};

use crate::clock::now_ms;
use crate::health::Checkers;
use crate::proxy::Proxy;
use crate::runtime::Snapshot;
use crate::server::ListenerSet;
use crate::upstream::Health;

/// The serving state a reload changes, and the one code path that changes it.
#[derive(Debug)]
pub struct Reloader {
    /// The config in force (matches the live snapshot).
    config: config::Config,
    proxy: Arc<Proxy>,
    pub listeners: ListenerSet,
    checkers: Checkers,
    /// Removed backends that still have connections (admin API, metrics).
    draining: DrainList,
    /// Reload results (admin API, metrics).
    stats: Arc<Mutex<ReloadStats>>,
    /// The text of the file last loaded, so a file event that changed
    /// nothing (touch, editor temp files) does not count as a reload.
    last_text: Option<String>,
    /// TLS listeners by name (matches `config`).
    tls: TlsListeners,
    /// Certificate refusals already logged (each is logged once).
    refusals_logged: std::collections::BTreeSet<String>,
    /// The supervised processes, once started (after the first apply).
    supervisor: Option<Arc<crate::supervise::Supervisor>>,
}

impl Reloader {
    /// Starts serving `config`, whose snapshot `proxy` already holds, on
    /// the listeners bound for it: the initial plan, applied.
    pub fn start(
        config: config::Config,
        proxy: Arc<Proxy>,
        stop: CancellationToken,
        bound: HashMap<String, TcpListener>,
        last_text: Option<String>,
        tls: TlsListeners,
    ) -> Self {
        let mut reloader = Self {
            listeners: ListenerSet::new(Arc::clone(&proxy), stop.clone()),
            checkers: Checkers::new(stop, Arc::clone(&proxy.snapshot), proxy.metrics.clone()),
            config: config.clone(),
            proxy,
            draining: Arc::new(Mutex::new(Vec::new())),
            stats: Arc::new(Mutex::new(ReloadStats::default())),
            last_text,
            tls: HashMap::new(),
            refusals_logged: std::collections::BTreeSet::new(),
            supervisor: None,
        };
        let plan = ReloadPlan::initial(&config);
        let snapshot = reloader.proxy.snapshot.load_full();
        reloader.apply(&plan, config, &snapshot, bound, Vec::new(), tls);
        reloader
    }

    /// Re-reads every TLS listener's certificate, key and ticket key files
    /// (a watched directory changed, or the poll came round).
    pub fn refresh_certificates(&mut self) {
        let refused = certificates::refresh(&self.tls, &mut self.refusals_logged);
        if let Ok(mut stats) = self.stats.lock() {
            stats.certificate_errors = refused;
            stats.certificates = certificates::summaries(&self.tls);
        }
    }

    /// From now on, reloads place and tell `supervisor` (see the module doc).
    pub fn set_supervisor(&mut self, supervisor: Arc<crate::supervise::Supervisor>) {
        self.supervisor = Some(supervisor);
    }

    /// The config in force.
    pub fn config(&self) -> &config::Config {
        &self.config
    }

    pub fn draining(&self) -> DrainList {
        Arc::clone(&self.draining)
    }

    pub fn stats(&self) -> Arc<Mutex<ReloadStats>> {
        Arc::clone(&self.stats)
    }

    /// Loads `path` and, if it is valid, moves everything to it.
    pub async fn reload(
        &mut self,
        path: &Path,
        trigger: &'static str,
        skip_if_same: bool,
    ) -> ReloadOutcome {
        let outcome = self.try_reload(path, trigger, skip_if_same).await;
        if let Ok(mut stats) = self.stats.lock() {
            stats.record(&outcome);
        }
        outcome
    }

    async fn try_reload(
        &mut self,
        path: &Path,
        trigger: &'static str,
        skip_if_same: bool,
    ) -> ReloadOutcome {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(trigger, error = %e, "config reload failed: cannot read the file; keeping the running config");
                return ReloadOutcome::Rejected {
                    errors: vec![format!("cannot read {}: {e}", path.display())],
                };
            }
        };
        if skip_if_same && self.last_text.as_deref() == Some(text.as_str()) {
            tracing::debug!(trigger, "config file event without changes");
            return ReloadOutcome::Unchanged;
        }
        let mut new = match config::parse(&text) {
            Ok(c) => c,
            Err(errors) => {
                for e in errors.iter() {
                    tracing::error!(trigger, error = %e, "invalid config");
                }
                tracing::warn!(
                    trigger,
                    problems = errors.len(),
                    "config reload failed: keeping the running config"
                );
                self.last_text = Some(text);
                return ReloadOutcome::Rejected {
                    errors: errors.iter().map(ToString::to_string).collect(),
                };
            }
        };
        if let Some(s) = &self.supervisor {
            s.place(&mut new);
        }
        let built =
            certificates::build(&new, &self.tls, self.proxy.metrics.as_deref()).and_then(|tls| {
                let old = self.proxy.snapshot.load();
                certificates::build_upstream(&new, &old.upstream_tls).map(|u| (tls, u))
            });
        let (tls, upstream_tls) = match built {
            Ok(t) => t,
            Err(errors) => {
                for e in &errors {
                    tracing::error!(trigger, error = %e, "invalid certificate");
                }
                tracing::warn!(
                    trigger,
                    problems = errors.len(),
                    "config reload failed: keeping the running config and certificates"
                );
                self.last_text = Some(text);
                return ReloadOutcome::Rejected { errors };
            }
        };
        let plan = ReloadPlan::between(&self.config, &new);

        // Bind added and moved listeners first: a port that cannot be
        // bound refuses the whole reload, before anything changed.
        let mut bound = HashMap::new();
        for (name, step) in &plan.listeners {
            let (ListenerStep::Add(address) | ListenerStep::Move(address)) = *step else {
                continue;
            };
            match TcpListener::bind(address).await {
                Ok(listener) => {
                    let local = listener.local_addr().unwrap_or(address);
                    bound.insert(name.clone(), (listener, local));
                }
                Err(e) => {
                    tracing::error!(trigger, listener = %name, %address, error = %e, "config reload failed: cannot bind; keeping the running config");
                    return ReloadOutcome::Rejected {
                        errors: vec![format!("listener {name:?}: cannot bind {address}: {e}")],
                    };
                }
            }
        }

        let old = self.proxy.snapshot.load_full();
        let snapshot = self.successor(&old, &new, &plan, &upstream_tls);
        let generation = snapshot.generation;
        let leaving = plan.leaving(&old);
        let mut listeners = HashMap::new();
        for (name, (listener, local)) in bound {
            tracing::info!(listener = %name, address = %local, "listening");
            listeners.insert(name, listener);
        }
        let left = leaving.clone();
        self.apply(&plan, new, &snapshot, listeners, leaving, tls);
        if let Some(s) = &self.supervisor {
            s.reloaded(&self.config, &left);
        }
        self.last_text = Some(text);
        let changes = plan.summary();
        tracing::info!(trigger, generation, changes = %changes, "config reloaded");
        ReloadOutcome::Reloaded {
            generation,
            changes,
        }
    }

    /// A rolling restart moved instance `ready` to its replacement: the
    /// config in force with the instances' addresses placed anew, built and
    /// applied like a reload, `ready` up from the start (the supervisor saw
    /// its check pass).
    pub fn reapply(&mut self, ready: Option<&crate::runtime::BackendKey>) {
        let mut new = self.config.clone();
        if let Some(s) = &self.supervisor {
            s.place(&mut new);
        }
        let plan = ReloadPlan::between(&self.config, &new);
        let old = self.proxy.snapshot.load_full();
        let snapshot = self.successor(&old, &new, &plan, &old.upstream_tls);
        if let Some(b) = ready.and_then(|k| snapshot.backends().get(k).cloned()) {
            b.set_health(Health::Up, now_ms());
        }
        let leaving = plan.leaving(&old);
        let tls = self.tls.clone();
        self.apply(&plan, new, &snapshot, HashMap::new(), leaving, tls);
        tracing::info!(
            generation = snapshot.generation,
            ready = ready.is_some(),
            changes = %plan.summary(),
            "backends moved to their new processes"
        );
    }

    /// The snapshot of `new` after `old`: what `plan` keeps of it, the
    /// next generation.
    fn successor(
        &self,
        old: &Snapshot,
        new: &config::Config,
        plan: &ReloadPlan,
        upstream_tls: &crate::runtime::UpstreamTlsByPool,
    ) -> Arc<Snapshot> {
        Arc::new(Snapshot::build(
            new,
            &plan.kept(old),
            old.generation + 1,
            self.proxy.metrics.as_deref(),
            upstream_tls,
        ))
    }

    /// Moves everything to `config` as `plan` says: the snapshot (one
    /// atomic swap), listeners, checkers, and the backends leaving.
    fn apply(
        &mut self,
        plan: &ReloadPlan,
        config: config::Config,
        snapshot: &Arc<Snapshot>,
        mut bound: HashMap<String, TcpListener>,
        leaving: Vec<(crate::runtime::BackendKey, Arc<crate::upstream::Backend>)>,
        tls: TlsListeners,
    ) {
        self.proxy.snapshot.store(Arc::clone(snapshot));

        for (name, step) in &plan.listeners {
            if let ListenerStep::Remove | ListenerStep::Move(_) = step {
                self.listeners.stop(name);
            }
        }
        for l in &config.listeners {
            let listener_tls = tls.get(&l.name).cloned();
            match plan.listeners.get(&l.name) {
                Some(ListenerStep::Add(_) | ListenerStep::Move(_)) => {
                    if let Some(listener) = bound.remove(&l.name) {
                        self.listeners.start(listener, l, listener_tls);
                    }
                }
                // Kept: new connections get the new settings.
                _ => self.listeners.update(l, listener_tls),
            }
        }
        self.tls = tls;
        self.refusals_logged.clear();
        if let Ok(mut stats) = self.stats.lock() {
            stats.certificate_errors.clear();
            stats.certificates = certificates::summaries(&self.tls);
        }

        let pools: HashMap<&str, &config::PoolConfig> =
            config.pools.iter().map(|p| (p.name.as_str(), p)).collect();
        let backends = snapshot.backends();
        for ((pool, id), step) in &plan.checkers {
            let key = (
                Arc::<str>::from(pool.as_str()),
                Arc::<str>::from(id.as_str()),
            );
            match step {
                CheckerStep::Stop => {
                    self.checkers.stop(&key);
                }
                CheckerStep::StopAndCountUp => {
                    self.checkers.stop(&key);
                    if let Some(b) = backends.get(&key) {
                        b.set_health(Health::Up, now_ms());
                    }
                }
                CheckerStep::Start | CheckerStep::Restart => {
                    let (Some(p), Some(b), Some(live)) = (
                        pools.get(pool.as_str()),
                        backends.get(&key),
                        snapshot.pools.get(pool.as_str()),
                    ) else {
                        continue;
                    };
                    if let Some(health) = &p.health {
                        self.checkers.start(&live.name, b, health);
                    }
                }
            }
        }

        drain::drain(leaving, config.drain_timeout, &self.draining);
        self.config = config;
    }
}
