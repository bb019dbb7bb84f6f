//! What operators see: the JSON of `GET /api/status` and the values a
//! Prometheus scrape reads, both from the live snapshot and the reload
//! state, with one clock reading per call.

use serde_json::json;

use super::AdminState;
use crate::clock::Now;
use crate::metrics::{BackendSample, ProcessSample, ProcessStatesSample, Scrape};
use crate::runtime::Pool;
use crate::runtime::Snapshot;
use crate::supervise::{Instance, Reason};
use crate::upstream::{Backend, Health, Operator};

/// A backend's state in one word, as the status page shows it.
pub(super) fn backend_state(b: &Backend, pool: &Pool, now: &Now) -> &'static str {
    match b.operator() {
        Operator::Draining if b.open_connections() == 0 => return "drained",
        Operator::Draining => return "draining",
        Operator::Disabled => return "disabled",
        Operator::Enabled => {}
    }
    if b.ejection.out(now, &pool.ejection).is_some() {
        return "ejected";
    }
    match b.health() {
        Health::Up => "up",
        Health::Down => "down",
        Health::Unknown => "unknown",
    }
}

pub(super) fn status(state: &AdminState) -> serde_json::Value {
    let snap = state.snapshot.load_full();
    let now = Now::lazy();
    let mut pools: Vec<_> = snap.pools.values().collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    let pools: Vec<_> = pools
        .iter()
        .map(|p| {
            let backends: Vec<_> = p
                .backends
                .iter()
                .zip(&p.weights)
                .map(|(b, w)| {
                    json!({
                        "id": &*b.id,
                        "address": b.address.to_string(),
                        "state": backend_state(b, p, &now),
                        "ejected": b.ejection.out(&now, &p.ejection).map(|o| o.as_str()),
                        "weight": w,
                        "open": b.open_connections(),
                        "in_flight": b.open_connections().saturating_sub(b.tunnels()),
                        "tunnels": b.tunnels(),
                        "tcp_connections": b.connections.sockets().now(),
                        "tcp_connections_peak": b.connections.sockets().peak(),
                        "requests": b.requests_total(),
                        "process": state
                            .supervisor
                            .instance(&p.name, &b.id)
                            .map(|i| i.json(b.is_up())),
                    })
                })
                .collect();
            let m = p.metrics.as_ref();
            let instances: Vec<_> = p
                .backends
                .iter()
                .filter_map(|b| Some((b, state.supervisor.instance(&p.name, &b.id)?)))
                .map(|(b, i)| (b, crate::supervise::Instance::state(i.phase(), b.is_up())))
                .collect();
            let processes = (!instances.is_empty()).then(|| {
                let ids = |want: &str| -> Vec<&str> {
                    instances
                        .iter()
                        .filter(|(_, s)| *s == want)
                        .map(|(b, _)| &*b.id)
                        .collect()
                };
                json!({
                    "instances": instances.len(),
                    "ready": ids("ready").len(),
                    "failed": ids("failed"),
                    "restarting": state.supervisor.is_restarting(&p.name),
                })
            });
            json!({
                "name": &*p.name,
                "backends": backends,
                "processes": processes,
                "errors": m.map(|m| m.errors_total()),
                "latency_p50_seconds": m.and_then(|m| m.duration_quantile(0.5)),
                "latency_p99_seconds": m.and_then(|m| m.duration_quantile(0.99)),
            })
        })
        .collect();
    let draining: Vec<_> = state
        .draining
        .lock()
        .map(|d| {
            d.iter()
                .map(|d| {
                    json!({
                        "pool": &*d.pool,
                        "id": &*d.backend.id,
                        "address": d.backend.address.to_string(),
                        "state": "draining",
                        "open": d.backend.open_connections(),
                        "process": state
                            .supervisor
                            .retiring(&d.pool, &d.backend.id, d.backend.address)
                            .map(|i| i.json(false)),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let reloads = state
        .reloads
        .lock()
        .map(|r| {
            json!({
                "succeeded": r.succeeded,
                "failed": r.failed,
                "last_success_unix": r.last_success_unix,
                "last_errors": r.last_errors,
            })
        })
        .unwrap_or_default();
    let now = crate::certs::now_unix();
    let certificates = state
        .reloads
        .lock()
        .map(|r| {
            json!({
                "served": r.certificates.iter().map(|c| json!({
                    "listener": c.listener,
                    "file": c.file,
                    "names": c.names,
                    "serial": c.serial,
                    "not_after_unix": c.not_after_unix,
                    "expires_in_seconds": c.not_after_unix - now,
                })).collect::<Vec<_>>(),
                "refused": r.certificate_errors,
            })
        })
        .unwrap_or_default();
    json!({
        "generation": snap.generation,
        "pools": pools,
        "draining": draining,
        "processes": state
            .supervisor
            .services()
            .iter()
            .map(|i| {
                // An entry has no health check: `ready` while it runs.
                let mut j = i.json(true);
                if let Some(o) = j.as_object_mut() {
                    o.insert("name".into(), json!(&*i.id));
                }
                j
            })
            .collect::<Vec<_>>(),
        "reloads": reloads,
        "certificates": certificates,
    })
}

/// What a scrape reads, gathered now.
pub(super) fn scrape(state: &AdminState) -> Scrape {
    let snap = state.snapshot.load_full();
    let now = Now::lazy();
    let sample = |pool: &str, b: &Backend, up: bool| BackendSample {
        pool: pool.to_string(),
        backend: b.id.to_string(),
        up,
        in_flight: b.open_connections().saturating_sub(b.tunnels()),
        tunnels: b.tunnels(),
        tcp_connections: b.connections.sockets().now(),
        ejections: b.ejection.total(),
        health_changes: b.health_changes(),
    };
    let mut backends: Vec<BackendSample> = snap
        .pools
        .values()
        .flat_map(|p| {
            p.backends
                .iter()
                .map(|b| sample(&p.name, b, b.is_usable(&now, &p.ejection)))
        })
        .collect();
    // Removed backends still draining: they take nothing new. One replaced
    // by a new address shares its pool and id with its successor, whose
    // series it must not overwrite: it is left out until it is gone.
    if let Some(d) = state.draining.lock().ok().filter(|d| !d.is_empty()) {
        let live: std::collections::HashSet<(&str, &str)> = snap
            .pools
            .values()
            .flat_map(|p| p.backends.iter().map(move |b| (&*p.name, &*b.id)))
            .collect();
        backends.extend(
            d.iter()
                .filter(|d| !live.contains(&(&*d.pool, &*d.backend.id)))
                .map(|d| sample(&d.pool, &d.backend, false)),
        );
    }
    let mut scrape = Scrape {
        generation: snap.generation,
        backends,
        ..Scrape::default()
    };
    (scrape.processes, scrape.process_states) = processes(state, &snap);
    if let Ok(r) = state.reloads.lock() {
        scrape.reloads_succeeded = r.succeeded;
        scrape.reloads_failed = r.failed;
        scrape.last_reload_unix = r.last_success_unix.unwrap_or(0);
        let now = crate::certs::now_unix();
        scrape.certificates = r
            .certificates
            .iter()
            .map(|c| crate::metrics::CertificateSample {
                listener: c.listener.clone(),
                file: c.file.clone(),
                expires_in: c.not_after_unix - now,
            })
            .collect();
    }
    scrape
}

/// The supervised instances of a scrape, and their pools' counts by state.
fn processes(
    state: &AdminState,
    snap: &Snapshot,
) -> (Vec<ProcessSample>, Vec<ProcessStatesSample>) {
    let mut samples = Vec::new();
    let mut pools: Vec<ProcessStatesSample> = Vec::new();
    let services = state.supervisor.services();
    let supervised = state.supervisor.instances();
    for (i, service) in supervised
        .iter()
        .map(|i| (i, false))
        .chain(services.iter().map(|i| (i, true)))
    {
        let phase = i.phase();
        let up = service
            || snap
                .pools
                .get(&*i.pool)
                .and_then(|p| p.backends.iter().find(|b| b.id == i.id))
                .is_some_and(|b| b.is_up());
        let word = Instance::state(phase, up);
        // A [[process]] entry is in no pool: its `pool` label is empty.
        let pool_label = if service { "" } else { &i.pool };
        let pool = state_counts(&mut pools, pool_label);
        count(pool, word);
        let restarts = i.restarts_by_reason();
        samples.push(ProcessSample {
            pool: pool_label.to_string(),
            instance: i.id.to_string(),
            restarts: Reason::ALL
                .iter()
                .map(|r| (r.as_str(), restarts[*r as usize]))
                .collect(),
            usage: Instance::usage(phase).map(|u| (u.rss_bytes, u.cpu_seconds)),
        });
    }
    // Old processes draining beside their replacements: counted, with no
    // series of their own (the instance's id is the replacement's).
    for i in state.supervisor.retiring_instances() {
        let pool = state_counts(&mut pools, &i.pool);
        count(pool, "draining");
    }
    (samples, pools)
}

/// The state counts of `pool`, added (all 0) if it has none yet.
fn state_counts<'a>(
    pools: &'a mut Vec<ProcessStatesSample>,
    pool: &str,
) -> &'a mut ProcessStatesSample {
    let pos = match pools.iter().position(|p| p.pool == pool) {
        Some(pos) => pos,
        None => {
            pools.push(ProcessStatesSample {
                pool: pool.to_string(),
                by_state: Instance::STATES.iter().map(|s| (*s, 0)).collect(),
            });
            pools.len() - 1
        }
    };
    &mut pools[pos]
}

fn count(pool: &mut ProcessStatesSample, word: &str) {
    if let Some((_, n)) = pool.by_state.iter_mut().find(|(s, _)| *s == word) {
        *n += 1;
    }
}
