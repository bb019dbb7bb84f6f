//! The processes the balancer runs: every pool with a `[pool.processes]`
//! table gets its backends started, watched, restarted and stopped here
//! (the job of PM2 or Node's cluster module).
//!
//! ```text
//!  config::ProcessesConfig ──Supervisor::start──▶ one Runner task per instance (instance.rs)
//!                                                   │ spawn via `balancer supervise-exec` (spawn.rs)
//!                                                   │ stdout/stderr ─▶ tracing, line by line (output.rs)
//!                                                   │ exit ─▶ Backend::take_down, backoff (backoff.rs)
//!                                                   ▼
//!                                   Instance state ─▶ GET /api/status ("process"), /metrics
//!                                   (+ RSS and CPU from /proc at read time: usage.rs)
//!  reload ──Supervisor::reloaded──▶ start added instances, retire removed ones (drain, stop),
//!                                   rolling restart of changed ones (rolling.rs)
//!  POST /api/pools/P/restart ──────▶ rolling restart of every instance of P
//!  [[process]] entries (services.rs) ─▶ started first, the pools' instances once they are
//!                                   ready; stopped last
//! ```
//!
//! An instance is a backend like a listed one (`{pool}-{index}` at
//! `host:port`, built by the same snapshot code), so policies, stickiness
//! and health checks need nothing new: it takes traffic once the pool's
//! health check passes, and the moment its process exits the supervisor
//! marks its backend down (no waiting for the next failed check).
//!
//! The running processes decide the backends' addresses: a reload's new
//! config gets them written in ([`Supervisor::place`]) before its snapshot
//! is built, so an instance moved to its surge port by a rolling restart
//! stays there, and a new command line or port takes effect through a
//! rolling restart, never by pointing a backend at a port nothing
//! listens on. On shutdown, after client connections are drained,
//! [`Supervisor::shutdown`] stops every instance.

mod backoff;
mod instance;
mod memory;
pub mod output;
mod program;
mod rolling;
mod services;
pub mod spawn;
mod usage;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use backoff::{Decision, RestartPolicy, Restarts};
pub use instance::{Exit, Instance, Phase, Reason};
pub use usage::Usage;

use crate::runtime::{BackendKey, Snapshot};
use crate::upstream::Backend;

/// Close code for the WebSocket clients of an instance a rolling restart
/// replaces ("service restart": come back now).
pub const RESTART_CLOSE_CODE: u16 = 1012;
/// ...and of an instance scaling down removes ("going away").
pub const RETIRE_CLOSE_CODE: u16 = 1001;

/// A request to the serve loop: rebuild the snapshot with the instances'
/// current addresses ([`Supervisor::place`]), `ready` counted up at once
/// (the supervisor checked it), then reply.
#[derive(Debug)]
pub struct Swap {
    pub ready: Option<BackendKey>,
    pub reply: oneshot::Sender<()>,
}

/// Every supervised instance of the running config.
#[derive(Debug)]
pub struct Supervisor {
    state: Mutex<State>,
    /// The pools' instances (and rolling restarts).
    stop: CancellationToken,
    tasks: TaskTracker,
    /// The `[[process]]` entries: stopped after the pools.
    services_stop: CancellationToken,
    service_tasks: TaskTracker,
    /// Fired when the `[[process]]` entries are ready (see services.rs).
    services_ready: CancellationToken,
    snapshot: Arc<ArcSwap<Snapshot>>,
    swap: mpsc::Sender<Swap>,
}

#[derive(Debug)]
struct State {
    /// The instance serving each supervised backend, pool by pool in
    /// config order, by index.
    running: Vec<Handle>,
    /// Processes on their way out (draining, then stopped).
    retiring: Vec<Arc<Instance>>,
    /// One per `[[process]]` entry, in file order.
    services: Vec<Handle>,
    /// Each pool's table, shared with its runners (a reload swaps it).
    pools: HashMap<String, Arc<ArcSwap<config::ProcessesConfig>>>,
    /// The config in force.
    config: Arc<config::Config>,
    /// Pools with a rolling restart under way, and the one asked for
    /// meanwhile (which ids, `None`: all; and why), run when it ends.
    restarting: HashMap<String, Option<Queued>>,
    /// `[[process]]` names a reload is stopping or starting (see services.rs).
    pending_services: std::collections::HashSet<String>,
}

/// A rolling restart asked for while one runs: the ids (`None`: all) and
/// the trigger.
type Queued = (Option<Vec<String>>, &'static str);

/// One running instance and how to stop it.
#[derive(Debug)]
struct Handle {
    instance: Arc<Instance>,
    index: u32,
    /// Which of its slots it runs (0: its port, 1: its surge port), and
    /// the slot itself as it was started.
    slot_n: usize,
    slot: config::Slot,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Supervisor {
    /// Starts every instance of `config` (call from the balancer's main
    /// runtime: see [`spawn`] on why the spawning thread matters). Their
    /// backends are looked up in `snapshot` when they exit. The serve loop
    /// answers the returned receiver's [`Swap`] requests.
    pub fn start(
        config: &config::Config,
        snapshot: Arc<ArcSwap<Snapshot>>,
    ) -> (Arc<Self>, mpsc::Receiver<Swap>) {
        let (swap, swaps) = mpsc::channel(1);
        let sup = Arc::new(Self {
            state: Mutex::new(State {
                running: Vec::new(),
                retiring: Vec::new(),
                services: Vec::new(),
                pools: HashMap::new(),
                config: Arc::new(config.clone()),
                restarting: HashMap::new(),
                pending_services: std::collections::HashSet::new(),
            }),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            services_stop: CancellationToken::new(),
            service_tasks: TaskTracker::new(),
            services_ready: CancellationToken::new(),
            snapshot,
            swap,
        });
        services::start(&sup, &config.services);
        sup.tasks.spawn(memory::watch(Arc::clone(&sup)));
        if let Ok(mut st) = sup.state.lock() {
            for p in &config.processes {
                let shared = Arc::new(ArcSwap::from_pointee(p.clone()));
                st.pools.insert(p.pool.clone(), Arc::clone(&shared));
                for inst in &p.instances {
                    let Some(slot) = inst.slot(0) else { continue };
                    let instance = Arc::new(Instance::new(&p.pool, &inst.id, slot.address));
                    let handle = sup.launch(&shared, inst.index, 0, slot, instance);
                    st.running.push(handle);
                }
            }
        }
        (sup, swaps)
    }

    /// Starts a runner for `instance`, which runs `slot`.
    fn launch(
        &self,
        processes: &Arc<ArcSwap<config::ProcessesConfig>>,
        index: u32,
        slot_n: usize,
        slot: config::Slot,
        instance: Arc<Instance>,
    ) -> Handle {
        let stop = self.stop.child_token();
        let runner = instance::Runner {
            instance: Arc::clone(&instance),
            slot: slot.clone(),
            processes: Arc::clone(processes),
            snapshot: Arc::clone(&self.snapshot),
            stop: stop.clone(),
            after: Some(self.services_ready.clone()),
        };
        let task = self.tasks.spawn(runner.run());
        Handle {
            instance,
            index,
            slot_n,
            slot,
            stop,
            task: Some(task),
        }
    }

    /// Whether nothing is supervised (no pool, no `[[process]]`, nothing
    /// on its way out).
    pub fn is_empty(&self) -> bool {
        self.state.lock().map_or(true, |st| {
            st.running.is_empty() && st.retiring.is_empty() && st.services.is_empty()
        })
    }

    /// Every instance serving a backend now, pool by pool in config order,
    /// by index.
    pub fn instances(&self) -> Vec<Arc<Instance>> {
        self.state.lock().map_or_else(
            |_| Vec::new(),
            |st| st.running.iter().map(|h| Arc::clone(&h.instance)).collect(),
        )
    }

    /// The instance behind backend `id` of `pool`, if it is supervised
    /// (the one on its way out while no replacement runs yet).
    pub fn instance(&self, pool: &str, id: &str) -> Option<Arc<Instance>> {
        let st = self.state.lock().ok()?;
        let running = st
            .running
            .iter()
            .map(|h| &h.instance)
            .find(|i| &*i.pool == pool && &*i.id == id);
        running
            .or_else(|| {
                st.retiring
                    .iter()
                    .find(|i| &*i.pool == pool && &*i.id == id)
            })
            .cloned()
    }

    /// The processes on their way out.
    pub fn retiring_instances(&self) -> Vec<Arc<Instance>> {
        self.state
            .lock()
            .map_or_else(|_| Vec::new(), |st| st.retiring.clone())
    }

    /// A process on its way out that served `id` of `pool` at `address`.
    pub fn retiring(
        &self,
        pool: &str,
        id: &str,
        address: std::net::SocketAddr,
    ) -> Option<Arc<Instance>> {
        let st = self.state.lock().ok()?;
        st.retiring
            .iter()
            .find(|i| &*i.pool == pool && &*i.id == id && i.address == address)
            .cloned()
    }

    /// Writes the address each running instance listens on into the
    /// backends of `config` (see the module doc).
    pub fn place(&self, config: &mut config::Config) {
        let Ok(st) = self.state.lock() else { return };
        for h in &st.running {
            let backend = config
                .pools
                .iter_mut()
                .filter(|p| p.name == *h.instance.pool)
                .flat_map(|p| p.backends.iter_mut())
                .find(|b| b.id == *h.instance.id);
            if let Some(b) = backend {
                b.address = h.instance.address;
            }
        }
    }

    /// A reload moved the balancer to `new` (its backends placed), and
    /// `leaving` left the snapshot: start the instances it added, retire
    /// those it removed (highest index first), and restart those whose
    /// command line, environment, directory, user or program file changed.
    pub fn reloaded(
        self: &Arc<Self>,
        new: &config::Config,
        leaving: &[(BackendKey, Arc<Backend>)],
    ) {
        let mut restart: Vec<(String, Vec<String>)> = Vec::new();
        {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            let old = Arc::clone(&st.config);
            st.config = Arc::new(new.clone());
            services::reloaded(self, &mut st, &old.services, &new.services);
            for p in &new.processes {
                match st.pools.get(&p.pool) {
                    Some(shared) => shared.store(Arc::new(p.clone())),
                    None => {
                        st.pools
                            .insert(p.pool.clone(), Arc::new(ArcSwap::from_pointee(p.clone())));
                    }
                }
            }
            let wanted = |pool: &str, id: &str| {
                new.processes
                    .iter()
                    .find(|p| p.pool == pool)
                    .and_then(|p| p.instances.iter().find(|i| i.id == id).map(|i| (p, i)))
            };
            // Removed: retire, highest index first.
            let mut gone = Vec::new();
            st.running.retain_mut(|h| {
                if wanted(&h.instance.pool, &h.instance.id).is_some() {
                    return true;
                }
                gone.push(Handle {
                    instance: Arc::clone(&h.instance),
                    index: h.index,
                    slot_n: h.slot_n,
                    slot: h.slot.clone(),
                    stop: h.stop.clone(),
                    task: h.task.take(),
                });
                false
            });
            gone.sort_by_key(|h| std::cmp::Reverse(h.index));
            for h in gone {
                let backend = leaving
                    .iter()
                    .find(|((pool, id), b)| {
                        *pool == h.instance.pool
                            && *id == h.instance.id
                            && b.address == h.instance.address
                    })
                    .map(|(_, b)| Arc::clone(b));
                let settings = st.pools.get(&*h.instance.pool).map(|p| p.load_full());
                st.retiring.push(Arc::clone(&h.instance));
                tracing::info!(
                    pool = &*h.instance.pool,
                    instance = &*h.instance.id,
                    "instance removed from the config: draining, then stopping it"
                );
                let sup = Arc::clone(self);
                self.tasks.spawn(async move {
                    if let Some(settings) = settings {
                        sup.retire(h, backend, RETIRE_CLOSE_CODE, &settings, true)
                            .await;
                    }
                });
            }
            // Kept: restart what changed. Added: start.
            for p in &new.processes {
                let Some(shared) = st.pools.get(&p.pool).cloned() else {
                    continue;
                };
                // Where and as whom it runs: a change restarts it too.
                let old_place = old
                    .processes
                    .iter()
                    .find(|o| o.pool == p.pool)
                    .map(|o| (&o.cwd, &o.run_as));
                let mut changed = Vec::new();
                for inst in &p.instances {
                    let running = st
                        .running
                        .iter()
                        .find(|h| *h.instance.pool == p.pool && *h.instance.id == inst.id);
                    match running {
                        Some(h) => {
                            let same_line = inst.slot(h.slot_n).as_ref() == Some(&h.slot);
                            let same_dir = old_place == Some((&p.cwd, &p.run_as));
                            let same_program = program::Stamp::of(&h.slot.argv, p.cwd.as_deref())
                                == h.instance.program();
                            if !(same_line && same_dir && same_program) {
                                changed.push(inst.id.clone());
                            }
                        }
                        // Its old process still drains (scaled down a moment
                        // ago, or a surge = 0 restart): it would hold the
                        // port. Started once that one is gone, if still
                        // wanted and nobody started it meanwhile.
                        None if st
                            .retiring
                            .iter()
                            .any(|i| *i.pool == p.pool && *i.id == inst.id) =>
                        {
                            self.start_after_retired(&p.pool, &inst.id);
                        }
                        None => {
                            let Some(slot) = inst.slot(0) else { continue };
                            let instance = Arc::new(Instance::new(&p.pool, &inst.id, slot.address));
                            tracing::info!(pool = %p.pool, instance = %inst.id, "instance added by the config: starting it");
                            let handle = self.launch(&shared, inst.index, 0, slot, instance);
                            st.running.push(handle);
                        }
                    }
                }
                if !changed.is_empty() {
                    restart.push((p.pool.clone(), changed));
                }
            }
            let order: Vec<&str> = new.processes.iter().map(|p| p.pool.as_str()).collect();
            st.running
                .sort_by_key(|h| (order.iter().position(|p| *p == &*h.instance.pool), h.index));
        }
        for (pool, ids) in restart {
            self.restart(&pool, Some(ids), "reload");
        }
    }

    /// `POST /api/pools/POOL/restart`: a rolling restart of every instance
    /// of `pool`; the number of instances, or why not.
    pub fn request_restart(self: &Arc<Self>, pool: &str) -> Result<usize, String> {
        let count = self.state.lock().map_or(0, |st| {
            st.running
                .iter()
                .filter(|h| &*h.instance.pool == pool)
                .count()
        });
        if count == 0 {
            return Err(format!("pool {pool:?} has no supervised instances"));
        }
        self.restart(pool, None, "admin");
        Ok(count)
    }

    /// Starts a rolling restart of `ids` (all when `None`) of `pool`, or
    /// queues one after the restart under way (requests queued meanwhile
    /// merge: their ids add up, `None` covers all).
    fn restart(self: &Arc<Self>, pool: &str, ids: Option<Vec<String>>, trigger: &'static str) {
        {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            if let Some(queued) = st.restarting.get_mut(pool) {
                tracing::info!(
                    pool,
                    trigger,
                    "rolling restart asked for during one: it runs when this one ends"
                );
                *queued = Some(match (queued.take(), ids) {
                    (None, ids) => (ids, trigger),
                    (Some((Some(mut a), t)), Some(b)) => {
                        for id in b {
                            if !a.contains(&id) {
                                a.push(id);
                            }
                        }
                        (Some(a), t)
                    }
                    (Some((_, t)), _) => (None, t),
                });
                return;
            }
            st.restarting.insert(pool.to_string(), None);
        }
        let sup = Arc::clone(self);
        let pool = pool.to_string();
        self.tasks.spawn(async move {
            let (mut ids, mut trigger) = (ids, trigger);
            loop {
                rolling::run(&sup, &pool, ids.take(), trigger).await;
                let Ok(mut st) = sup.state.lock() else { return };
                match st.restarting.get_mut(&pool).and_then(Option::take) {
                    Some((next, why)) if !sup.stop.is_cancelled() => {
                        (ids, trigger) = (next, why);
                    }
                    _ => {
                        st.restarting.remove(&pool);
                        return;
                    }
                }
            }
        });
    }

    /// Starts instance `id` of `pool` once no old process of it is on its
    /// way out, if the config still has it and nothing runs it by then.
    fn start_after_retired(self: &Arc<Self>, pool: &str, id: &str) {
        let (sup, pool, id) = (Arc::clone(self), pool.to_string(), id.to_string());
        self.tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    () = sup.stop.cancelled() => return,
                }
                let Ok(mut st) = sup.state.lock() else { return };
                if st.retiring.iter().any(|i| *i.pool == pool && *i.id == id) {
                    continue;
                }
                sup.launch_if_wanted(&mut st, &pool, &id, None);
                return;
            }
        });
    }

    /// With the state locked: starts `id` of `pool` on its own port if the
    /// config in force has it and no process serves it; the handle goes
    /// into `running`, in order.
    /// `after`: the process it replaces (its counts go on, one more for
    /// the reason given).
    fn launch_if_wanted(
        &self,
        st: &mut State,
        pool: &str,
        id: &str,
        after: Option<(&Instance, Reason)>,
    ) -> Option<Arc<Instance>> {
        if st
            .running
            .iter()
            .any(|h| &*h.instance.pool == pool && &*h.instance.id == id)
        {
            return None;
        }
        let shared = st.pools.get(pool).cloned()?;
        let inst = st
            .config
            .processes
            .iter()
            .find(|p| p.pool == pool)
            .and_then(|p| p.instances.iter().find(|i| i.id == id))?
            .clone();
        let slot = inst.slot(0)?;
        let instance = Arc::new(match after {
            Some((old, why)) => old.successor(slot.address, why),
            None => Instance::new(pool, id, slot.address),
        });
        tracing::info!(pool, instance = id, address = %slot.address, "instance starting now that its old process is gone");
        let handle = self.launch(&shared, inst.index, 0, slot, Arc::clone(&instance));
        st.running.push(handle);
        let order: Vec<String> = st.config.processes.iter().map(|p| p.pool.clone()).collect();
        st.running
            .sort_by_key(|h| (order.iter().position(|p| **p == *h.instance.pool), h.index));
        Some(instance)
    }

    /// Whether a rolling restart of `pool` is under way.
    pub fn is_restarting(&self, pool: &str) -> bool {
        self.state
            .lock()
            .is_ok_and(|st| st.restarting.contains_key(pool))
    }

    /// Moves `handle`'s clients off (Close `code` spread over
    /// `drain_spread`, then up to `drain_timeout` for requests in flight),
    /// then stops its process; `unlist`: then take it off `retiring` (the
    /// caller does it otherwise, together with what comes next).
    async fn retire(
        &self,
        mut handle: Handle,
        backend: Option<Arc<Backend>>,
        code: u16,
        settings: &config::ProcessesConfig,
        unlist: bool,
    ) {
        let (pool, id) = (&*handle.instance.pool, &*handle.instance.id);
        handle.instance.set_draining();
        if let Some(b) = &backend {
            b.drain_now(code, settings.drain_spread);
            let deadline =
                tokio::time::Instant::now() + settings.drain_spread + settings.drain_timeout;
            while b.open_connections() > 0 && tokio::time::Instant::now() < deadline {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    () = self.stop.cancelled() => break,
                }
            }
            tracing::info!(
                pool,
                instance = id,
                address = %handle.instance.address,
                left = b.open_connections(),
                "instance drained: stopping it"
            );
        }
        handle.stop.cancel();
        if let Some(task) = handle.task.take() {
            let _ = task.await;
        }
        if unlist {
            if let Ok(mut st) = self.state.lock() {
                st.retiring.retain(|i| !Arc::ptr_eq(i, &handle.instance));
            }
        }
    }

    /// Stops every instance (its stop signal, SIGKILL after its
    /// `stop_timeout`) and returns once all are gone.
    pub async fn shutdown(&self) {
        if self.is_empty() {
            return;
        }
        tracing::info!(
            instances = self.instances().len(),
            "stopping supervised instances"
        );
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        // What the game needed beside its servers goes last.
        self.services_stop.cancel();
        self.service_tasks.close();
        self.service_tasks.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_exit_has_its_restart_reason() {
        for (exit, reason) in [
            (Exit::Code(0), "clean"),
            (Exit::Code(3), "exit"),
            (Exit::Signal(9), "signal"),
            (Exit::SpawnFailed("no such file".into()), "spawn"),
        ] {
            assert_eq!(exit.reason().as_str(), reason, "{exit}");
            assert_eq!(Reason::ALL[exit.reason() as usize], exit.reason());
        }
    }

    #[test]
    fn instance_states_for_the_status_api() {
        let now = std::time::Instant::now();
        let running = Phase::Running { pid: 7, since: now };
        assert_eq!(Instance::state(running, false), "starting");
        assert_eq!(Instance::state(running, true), "ready");
        assert_eq!(Instance::state(Phase::Starting, true), "starting");
        assert_eq!(
            Instance::state(Phase::Backoff { until: now }, false),
            "backoff"
        );
        assert_eq!(Instance::state(Phase::Failed, false), "failed");
        assert_eq!(
            Instance::state(Phase::Stopping { pid: 7 }, true),
            "stopping"
        );
        assert_eq!(Instance::state(Phase::Stopped, false), "stopped");
        for phase in [
            running,
            Phase::Starting,
            Phase::Backoff { until: now },
            Phase::Failed,
            Phase::Stopping { pid: 7 },
            Phase::Stopped,
        ] {
            for up in [false, true] {
                assert!(Instance::STATES.contains(&Instance::state(phase, up)));
            }
        }
    }
}
