//! `[[process]]` entries: programs the game needs beside its servers (a
//! local `redis-server`, a worker), run by the same [`Runner`] as a pool's
//! instances (restarts with backoff, output in the log, stop signal then
//! SIGKILL), but no backend of any pool.
//!
//! They start first. The pools' instances wait until every entry is ready
//! (accepts TCP on its `port`; without a port, once its process runs) or
//! its `ready_timeout` passed; at shutdown they stop after the pools. A
//! reload starts added entries, stops removed ones, and restarts (stop,
//! then start) one whose settings changed.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::instance::Runner;
use super::{Handle, Instance, Phase, State, Supervisor};

/// Starts every entry, and fires `services_ready` once they are ready.
pub(super) fn start(sup: &Arc<Supervisor>, services: &[config::ProcessesConfig]) {
    let mut waits = Vec::new();
    if let Ok(mut st) = sup.state.lock() {
        for p in services {
            if let Some(handle) = launch(sup, p) {
                waits.push((Arc::clone(&handle.instance), p.ready_timeout));
                st.services.push(handle);
            }
        }
    }
    let ready = sup.services_ready.clone();
    let stop = sup.services_stop.clone();
    tokio::spawn(async move {
        for (instance, timeout) in waits {
            wait_ready(&instance, timeout, &stop).await;
        }
        ready.cancel();
    });
}

fn launch(sup: &Supervisor, p: &config::ProcessesConfig) -> Option<Handle> {
    let inst = p.instances.first()?;
    let slot = inst.slot(0)?;
    let instance = Arc::new(Instance::new(&p.pool, &inst.id, slot.address));
    let stop = sup.services_stop.child_token();
    let runner = Runner {
        instance: Arc::clone(&instance),
        slot: slot.clone(),
        processes: Arc::new(ArcSwap::from_pointee(p.clone())),
        snapshot: Arc::clone(&sup.snapshot),
        stop: stop.clone(),
        after: None,
    };
    let task = sup.service_tasks.spawn(runner.run());
    Some(Handle {
        instance,
        index: inst.index,
        slot_n: 0,
        slot,
        stop,
        task: Some(task),
    })
}

/// Until `instance` accepts TCP on its port (or, without one, runs), for
/// up to `timeout`.
async fn wait_ready(instance: &Instance, timeout: Duration, stop: &CancellationToken) {
    let name = &*instance.id;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let ready = if instance.address.port() == 0 {
            matches!(instance.phase(), Phase::Running { .. })
        } else {
            tokio::net::TcpStream::connect(instance.address)
                .await
                .is_ok()
        };
        if ready {
            tracing::info!(process = name, address = %instance.address, "process ready");
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                process = name,
                timeout_ms = timeout.as_millis() as u64,
                "process not ready within ready_timeout: starting the pools anyway"
            );
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// A reload from `old` to `new` entries (called with the state locked).
pub(super) fn reloaded(
    sup: &Arc<Supervisor>,
    st: &mut State,
    old: &[config::ProcessesConfig],
    new: &[config::ProcessesConfig],
) {
    let same = |p: &config::ProcessesConfig| old.iter().any(|o| o == p);
    // Removed or changed: stop (then start the new settings).
    let mut leaving = Vec::new();
    st.services.retain_mut(|h| {
        let keep = new.iter().any(|p| p.pool == *h.instance.id && same(p));
        if !keep {
            leaving.push((h.stop.clone(), h.task.take(), Arc::clone(&h.instance)));
        }
        keep
    });
    // Names a reload is still stopping or starting are left to it: the
    // next reload after it compares again.
    let starting: Vec<config::ProcessesConfig> = new
        .iter()
        .filter(|p| {
            !st.services.iter().any(|h| *h.instance.id == p.pool)
                && !st.pending_services.contains(&p.pool)
        })
        .cloned()
        .collect();
    if leaving.is_empty() && starting.is_empty() {
        return;
    }
    let names: Vec<String> = leaving
        .iter()
        .map(|(_, _, i)| i.id.to_string())
        .chain(starting.iter().map(|p| p.pool.clone()))
        .collect();
    st.pending_services.extend(names.iter().cloned());
    let sup = Arc::clone(sup);
    sup.service_tasks.clone().spawn(async move {
        for (stop, task, instance) in leaving {
            tracing::info!(process = &*instance.id, "process changed or removed by the config: stopping it");
            stop.cancel();
            if let Some(task) = task {
                let _ = task.await;
            }
        }
        let done = |sup: &Supervisor| {
            if let Ok(mut st) = sup.state.lock() {
                for n in &names {
                    st.pending_services.remove(n);
                }
            }
        };
        if sup.services_stop.is_cancelled() {
            done(&sup);
            return;
        }
        for p in &starting {
            tracing::info!(process = %p.pool, "process added or changed by the config: starting it");
            if let Some(handle) = launch(&sup, p) {
                let instance = Arc::clone(&handle.instance);
                if let Ok(mut st) = sup.state.lock() {
                    st.services.push(handle);
                }
                // The pools run already: this only logs when it is ready.
                let stop = sup.services_stop.clone();
                let timeout = p.ready_timeout;
                tokio::spawn(async move { wait_ready(&instance, timeout, &stop).await });
            }
        }
        done(&sup);
    });
}

impl Supervisor {
    /// The `[[process]]` entries' instances, in file order.
    pub fn services(&self) -> Vec<Arc<Instance>> {
        self.state.lock().map_or_else(
            |_| Vec::new(),
            |st| {
                st.services
                    .iter()
                    .map(|h| Arc::clone(&h.instance))
                    .collect()
            },
        )
    }
}
