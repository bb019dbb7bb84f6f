//! Rolling restart: one instance after the other, each replaced by a new
//! process without a moment in which its backend has none.
//!
//! ```text
//!  surge = 1:  start the replacement on the other port ─▶ wait until it passes the
//!              pool's health check ─▶ swap the backend to it (one snapshot store) ─▶
//!              old one: Close 1012 spread over drain_spread, requests in flight up to
//!              drain_timeout ─▶ stop it ─▶ next instance
//!  surge = 0:  old one held down, drained the same way, stopped ─▶ the replacement
//!              starts on the same port ─▶ ready ─▶ next instance
//! ```
//!
//! A replacement that exits or is not ready within `ready_timeout` stops
//! the rolling restart there (with `surge = 1` the old process never
//! stopped serving); the error is logged and the instances not reached
//! keep their processes.

use std::sync::Arc;
use std::time::Duration;

use super::{Handle, Instance, Phase, Reason, Supervisor, Swap, RESTART_CLOSE_CODE};
use crate::clock::now_ms;
use crate::upstream::{Backend, Health};

/// Restarts `ids` of `pool` (every instance when `None`) in index order.
pub(super) async fn run(
    sup: &Arc<Supervisor>,
    pool: &str,
    ids: Option<Vec<String>>,
    trigger: &'static str,
) {
    let ids = ids.unwrap_or_else(|| {
        sup.state.lock().map_or_else(
            |_| Vec::new(),
            |st| {
                st.running
                    .iter()
                    .filter(|h| &*h.instance.pool == pool)
                    .map(|h| h.instance.id.to_string())
                    .collect()
            },
        )
    });
    tracing::info!(
        pool,
        trigger,
        instances = ids.len(),
        "rolling restart started"
    );
    let start = std::time::Instant::now();
    for id in &ids {
        if sup.stop.is_cancelled() {
            return;
        }
        let reason = if trigger == "memory" {
            Reason::Memory
        } else {
            Reason::Rolling
        };
        if let Err(why) = replace(sup, pool, id, reason).await {
            tracing::error!(
                pool,
                instance = %id,
                error = %why,
                "rolling restart stopped: the instances after this one keep their processes"
            );
            return;
        }
    }
    tracing::info!(
        pool,
        trigger,
        instances = ids.len(),
        elapsed_ms = start.elapsed().as_millis() as u64,
        "rolling restart done"
    );
}

/// What one replacement needs, read under the lock.
struct Plan {
    old: Arc<Instance>,
    old_slot: usize,
    processes: Arc<arc_swap::ArcSwap<config::ProcessesConfig>>,
    instance: config::InstanceConfig,
    health: Option<config::HealthConfig>,
}

async fn replace(
    sup: &Arc<Supervisor>,
    pool: &str,
    id: &str,
    reason: Reason,
) -> Result<(), String> {
    let plan = {
        let st = sup.state.lock().map_err(|_| "state lock poisoned")?;
        let Some(h) = st
            .running
            .iter()
            .find(|h| &*h.instance.pool == pool && &*h.instance.id == id)
        else {
            return Ok(()); // removed meanwhile
        };
        let Some(instance) = st
            .config
            .processes
            .iter()
            .find(|p| p.pool == pool)
            .and_then(|p| p.instances.iter().find(|i| i.id == id))
            .cloned()
        else {
            return Ok(());
        };
        Plan {
            old: Arc::clone(&h.instance),
            old_slot: h.slot_n,
            processes: st
                .pools
                .get(pool)
                .cloned()
                .ok_or("pool has no processes table")?,
            instance,
            health: st
                .config
                .pools
                .iter()
                .find(|p| p.name == pool)
                .and_then(|p| p.health.clone()),
        }
    };
    let settings = plan.processes.load_full();
    let snap = sup.snapshot.load_full();
    let live = snap.pools.get(pool);
    let old_backend = live.and_then(|p| {
        p.backends
            .iter()
            .find(|b| &*b.id == id && b.address == plan.old.address)
            .cloned()
    });
    let probe = Probe {
        health: plan.health.clone(),
        tls: old_backend.as_ref().and_then(|b| b.connections.tls()),
        proxy_header: live.and_then(|p| p.upstream.proxy_header),
        timeout: settings.ready_timeout,
        ready_line: settings.ready_line,
    };
    // The surge port unless the new config puts it where the old process is.
    let surge_slot = 1 - plan.old_slot.min(1);
    let surge = (settings.surge == 1)
        .then(|| plan.instance.slot(surge_slot))
        .flatten()
        .filter(|s| s.address != plan.old.address);

    if let Some(slot) = surge {
        let next = Arc::new(plan.old.successor(slot.address, reason));
        log_step(pool, id, &plan.old, &slot, "replacement starting");
        let handle = sup.launch(
            &plan.processes,
            plan.instance.index,
            surge_slot,
            slot,
            Arc::clone(&next),
        );
        if let Err(why) = probe.wait(sup, id, &next).await {
            stop(handle).await;
            return Err(format!("its replacement on {} {why}", next.address));
        }
        let Some(old) = sup.swap_running(pool, id, &plan.old, handle) else {
            return Ok(()); // removed meanwhile: swap_running stopped the replacement
        };
        let (reply, done) = tokio::sync::oneshot::channel();
        let ready = Some((Arc::from(pool), Arc::from(id)));
        if sup.swap.send(Swap { ready, reply }).await.is_ok() {
            // Answered by the serve loop; at shutdown it reads no more,
            // and dropping its receiver drops the request (and `reply`).
            let _ = done.await;
        }
        tracing::info!(pool, instance = id, from = %plan.old.address, to = %next.address, "backend moved to the replacement");
        sup.retire(old, old_backend, RESTART_CLOSE_CODE, &settings, true)
            .await;
        return Ok(());
    }

    // No room for one more process: the old one goes first.
    let Some(slot) = plan.instance.slot(0) else {
        return Err("no slot to run on".into());
    };
    if let Some(b) = &old_backend {
        b.hold(now_ms());
    }
    log_step(
        pool,
        id,
        &plan.old,
        &slot,
        "draining the old process before its replacement starts (surge = 0)",
    );
    let old = {
        let mut st = sup.state.lock().map_err(|_| "state lock poisoned")?;
        let Some(pos) = st
            .running
            .iter()
            .position(|h| Arc::ptr_eq(&h.instance, &plan.old))
        else {
            if let Some(b) = &old_backend {
                b.release();
            }
            return Ok(());
        };
        st.retiring.push(Arc::clone(&plan.old));
        st.running.remove(pos)
    };
    sup.retire(
        old,
        old_backend.clone(),
        RESTART_CLOSE_CODE,
        &settings,
        false,
    )
    .await;
    // In one step: the old one leaves `retiring`, and the replacement
    // starts from the config in force now (a reload may have changed or
    // removed the instance while the old one drained).
    let next = {
        let mut st = sup.state.lock().map_err(|_| "state lock poisoned")?;
        st.retiring.retain(|i| !Arc::ptr_eq(i, &plan.old));
        if sup.stop.is_cancelled() {
            None
        } else {
            sup.launch_if_wanted(&mut st, pool, id, Some((&plan.old, reason)))
        }
    };
    let Some(next) = next else {
        if let Some(b) = &old_backend {
            b.release();
        }
        return Ok(());
    };
    let ready = probe.wait(sup, id, &next).await;
    match &old_backend {
        Some(b) if b.address == next.address => {
            b.undrain();
            b.release();
            if ready.is_ok() {
                b.set_health(Health::Up, now_ms());
            }
        }
        _ => {
            // Another port (the config changed it): move the backend
            // there, counted up only if the probe passed.
            let (reply, done) = tokio::sync::oneshot::channel();
            let key = (Arc::from(pool), Arc::from(id));
            let swap = Swap {
                ready: ready.is_ok().then_some(key),
                reply,
            };
            if sup.swap.send(swap).await.is_ok() {
                let _ = done.await;
            }
        }
    }
    // Not ready: it keeps running under its restart rules, and the
    // health check brings it in whenever it passes.
    ready.map_err(|why| format!("its replacement on {} {why}", next.address))
}

fn log_step(pool: &str, id: &str, old: &Instance, slot: &config::Slot, what: &str) {
    tracing::info!(
        pool,
        instance = id,
        old_address = %old.address,
        address = %slot.address,
        "rolling restart: {what}"
    );
}

/// Stops a replacement that will not serve.
async fn stop(mut handle: Handle) {
    handle.stop.cancel();
    if let Some(task) = handle.task.take() {
        let _ = task.await;
    }
}

impl Supervisor {
    /// Puts `next` where `old` served `id`, and returns `old`'s handle (now
    /// retiring); `None` (and `next` stopped) when `old` is gone already.
    fn swap_running(
        &self,
        pool: &str,
        id: &str,
        old: &Arc<Instance>,
        next: Handle,
    ) -> Option<Handle> {
        let mut st = self.state.lock().ok()?;
        let Some(pos) = st
            .running
            .iter()
            .position(|h| Arc::ptr_eq(&h.instance, old))
        else {
            tracing::info!(
                pool,
                instance = id,
                "instance removed during its restart: stopping the replacement"
            );
            next.stop.cancel();
            return None;
        };
        st.retiring.push(Arc::clone(old));
        Some(std::mem::replace(&mut st.running[pos], next))
    }
}

/// How a replacement shows it is ready: the pool's health check, probed
/// the way the checker does, until it passes once.
struct Probe {
    health: Option<config::HealthConfig>,
    tls: Option<Arc<crate::upstream::UpstreamTls>>,
    proxy_header: Option<crate::upstream::ProxyHeader>,
    timeout: Duration,
    /// `ready = "line"`: READY=1 first.
    ready_line: bool,
}

impl Probe {
    async fn wait(&self, sup: &Supervisor, id: &str, next: &Instance) -> Result<(), String> {
        if self.ready_line {
            let deadline = tokio::time::Instant::now() + self.timeout;
            loop {
                // Read anew each turn: the runner puts a fresh one in
                // place for each process it starts.
                let announced = next.announced();
                tokio::select! {
                    () = announced.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    () = sup.stop.cancelled() => return Err("shutdown".into()),
                }
                match next.phase() {
                    Phase::Running { .. } | Phase::Starting => {}
                    _ => return Err("exited before it printed READY=1".into()),
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!(
                        "did not print READY=1 within ready_timeout ({:?})",
                        self.timeout
                    ));
                }
            }
        }
        let Some(health) = &self.health else {
            return Ok(());
        };
        let probe = Backend::new(id, next.address, Health::Unknown, None, self.tls.clone());
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut last = String::from("did not answer");
        loop {
            match next.phase() {
                Phase::Running { .. } | Phase::Starting => {}
                _ => return Err(format!("exited before it was ready ({last})")),
            }
            match crate::health::check(&probe, health, self.proxy_header.as_ref()).await {
                Ok(_) => return Ok(()),
                Err(why) => last = why,
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "was not ready within ready_timeout ({:?}): {last}",
                    self.timeout
                ));
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = sup.stop.cancelled() => return Err("shutdown".into()),
            }
        }
    }
}
