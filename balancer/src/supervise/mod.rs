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
//! ```
//!
//! An instance is a backend like a listed one (`{pool}-{index}` at
//! `host:port`, built by the same snapshot code), so policies, stickiness
//! and health checks need nothing new: it takes traffic once the pool's
//! health check passes, and the moment its process exits the supervisor
//! marks its backend down (no waiting for the next failed check).
//!
//! The set of instances is fixed while the balancer runs: a reload that
//! changes a `[pool.processes]` table is refused ([`reload_refusal`]);
//! scaling and rolling restarts come later. On shutdown, after client
//! connections are drained, [`Supervisor::shutdown`] stops every instance.

mod backoff;
mod instance;
pub mod output;
pub mod spawn;
mod usage;

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use backoff::{Decision, RestartPolicy, Restarts};
pub use instance::{Exit, Instance, Phase, Reason};
pub use usage::Usage;

use crate::runtime::Snapshot;

/// Every supervised instance of the running config.
#[derive(Debug)]
pub struct Supervisor {
    instances: Vec<Arc<Instance>>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Supervisor {
    /// Starts every instance of `config` (call from the balancer's main
    /// runtime: see [`spawn`] on why the spawning thread matters). Their
    /// backends are looked up in `snapshot` when they exit.
    pub fn start(config: &config::Config, snapshot: Arc<ArcSwap<Snapshot>>) -> Arc<Self> {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut instances = Vec::new();
        for p in &config.processes {
            let processes = Arc::new(p.clone());
            for inst in &p.instances {
                let instance = Arc::new(Instance::new(&p.pool, &inst.id));
                instances.push(Arc::clone(&instance));
                let runner = instance::Runner {
                    instance,
                    config: inst.clone(),
                    processes: Arc::clone(&processes),
                    snapshot: Arc::clone(&snapshot),
                    stop: stop.clone(),
                };
                tasks.spawn(runner.run());
            }
        }
        tasks.close();
        Arc::new(Self {
            instances,
            stop,
            tasks,
        })
    }

    /// Whether no pool is supervised.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// Every instance, pool by pool in config order, by index.
    pub fn instances(&self) -> &[Arc<Instance>] {
        &self.instances
    }

    /// The instance behind backend `id` of `pool`, if it is supervised.
    pub fn instance(&self, pool: &str, id: &str) -> Option<&Arc<Instance>> {
        self.instances
            .iter()
            .find(|i| &*i.pool == pool && &*i.id == id)
    }

    /// Stops every instance (its stop signal, SIGKILL after its
    /// `stop_timeout`) and returns once all are gone.
    pub async fn shutdown(&self) {
        if self.is_empty() {
            return;
        }
        tracing::info!(
            instances = self.instances.len(),
            "stopping supervised instances"
        );
        self.stop.cancel();
        self.tasks.wait().await;
    }
}

/// Why a reload from `old` to `new` must be refused: supervised pools
/// cannot change yet (scaling and rolling restarts are a later step).
pub fn reload_refusal(old: &config::Config, new: &config::Config) -> Option<String> {
    let pools: std::collections::BTreeSet<&str> = old
        .processes
        .iter()
        .chain(&new.processes)
        .map(|p| p.pool.as_str())
        .collect();
    let changed: Vec<&str> = pools
        .into_iter()
        .filter(|pool| {
            let find =
                |c: &'_ config::Config| c.processes.iter().find(|p| p.pool == *pool).cloned();
            find(old) != find(new)
        })
        .collect();
    (!changed.is_empty()).then(|| {
        format!(
            "changing [pool.processes] on reload is not supported yet; restart the balancer (pools: {})",
            changed.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(processes: &str) -> config::Config {
        config::parse(&format!(
            "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
             [[pool]]\nname = \"game\"\n{processes}\n[pool.health]\npath = \"/healthz\"\n\
             [[route]]\nlistener = \"l\"\npool = \"game\"\n"
        ))
        .unwrap()
    }

    const GAME: &str =
        "[pool.processes]\ncommand = [\"backend\", \"{port}\"]\nbase_port = 9001\ninstances = 2";

    #[test]
    fn an_unchanged_processes_table_reloads() {
        let old = config(GAME);
        // Other pool settings may change.
        let new = config(&format!("policy = \"least_connections\"\n{GAME}"));
        assert_eq!(reload_refusal(&old, &new), None);
    }

    #[test]
    fn changing_adding_or_removing_a_processes_table_is_refused() {
        let old = config(GAME);
        let listed = config("[[pool.backend]]\nid = \"a\"\naddress = \"127.0.0.1:9001\"");
        for (old, new) in [
            (
                &old,
                &config(&GAME.replace("instances = 2", "instances = 3")),
            ),
            (&old, &config(&format!("{GAME}\nstop_timeout = \"1s\""))),
            (&old, &listed),
            (&listed, &old),
        ] {
            let why = reload_refusal(old, new).expect("refused");
            assert_eq!(
                why,
                "changing [pool.processes] on reload is not supported yet; restart the balancer (pools: game)"
            );
        }
    }

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
