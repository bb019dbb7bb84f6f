//! Start-up, reload and shutdown.
//!
//! [`run`] takes a validated config and a shutdown future, like mini-redis's
//! server: the binary passes SIGTERM/SIGINT, tests pass what they like.
//! Shutdown: stop accepting at once, let in-flight requests finish for up to
//! `timeouts.shutdown_grace`, then return.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{serve_admin, AdminState, Draining, ReloadOutcome, ReloadStats};
use crate::health::HealthChecker;
use crate::proxy::Proxy;
use crate::reload::{watch_file, ConfigDiff};
use crate::runtime::Snapshot;
use crate::server::serve_listener;
use crate::{upgrade, Error};

/// A balancer whose listeners are bound but not yet serving.
#[derive(Debug)]
pub struct App {
    config: config::Config,
    proxy: Arc<Proxy>,
    bound: Vec<(TcpListener, Arc<str>, SocketAddr)>,
    path: Option<PathBuf>,
    /// Sockets taken over from a previous process, which waits for "ready".
    inherited: Option<upgrade::Inherited>,
    admin: Option<TcpListener>,
}

impl App {
    /// Builds the runtime snapshot and binds every listener. All are bound
    /// before any serves, so a bad address fails the start cleanly.
    pub async fn bind(config: config::Config) -> Result<Self, Error> {
        Self::bind_with(config, true).await
    }

    /// [`App::bind`], with Prometheus metrics on or off (benchmarks compare
    /// the two; the binary always has them on).
    pub async fn bind_with(config: config::Config, with_metrics: bool) -> Result<Self, Error> {
        let metrics = if with_metrics {
            match crate::metrics::Metrics::new() {
                Ok(m) => Some(Arc::new(m)),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics disabled: cannot set them up");
                    None
                }
            }
        } else {
            None
        };
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build_with(
            &config,
            None,
            metrics.as_deref(),
        )));
        let proxy = Arc::new(Proxy {
            snapshot,
            tasks: TaskTracker::new(),
            close_tunnels: CancellationToken::new(),
            metrics,
        });
        let mut bound = Vec::new();
        // A running balancer on the upgrade socket hands its listening
        // sockets over; otherwise (or for listeners it does not have) bind.
        let mut inherited = match &config.upgrade_socket {
            Some(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || upgrade::take_over(&path))
                    .await
                    .map_err(|e| Error::Upgrade(std::io::Error::other(e)))?
                    .map_err(Error::Upgrade)?
            }
            None => None,
        };
        for l in &config.listeners {
            let taken = inherited.as_mut().and_then(|i| {
                let pos = i
                    .listeners
                    .iter()
                    .position(|(d, _)| d.name == l.name && d.configured == l.address)?;
                Some(i.listeners.swap_remove(pos).1)
            });
            let from_old = taken.is_some();
            let listener = match taken {
                Some(std_listener) => std_listener
                    .set_nonblocking(true)
                    .and_then(|()| TcpListener::from_std(std_listener)),
                None => TcpListener::bind(l.address).await,
            }
            .map_err(|source| Error::Bind {
                listener: l.name.clone(),
                address: l.address,
                source,
            })?;
            let address = listener.local_addr().unwrap_or(l.address);
            tracing::info!(listener = %l.name, %address, inherited = from_old, "listening");
            bound.push((listener, Arc::<str>::from(l.name.as_str()), address));
        }
        let admin = match &config.admin {
            Some(a) => {
                let listener =
                    TcpListener::bind(a.address)
                        .await
                        .map_err(|source| Error::Bind {
                            listener: "admin".into(),
                            address: a.address,
                            source,
                        })?;
                let address = listener.local_addr().unwrap_or(a.address);
                tracing::info!(%address, "admin listening");
                Some(listener)
            }
            None => None,
        };
        Ok(Self {
            admin,
            inherited,
            config,
            proxy,
            bound,
            path: None,
        })
    }

    /// The address a listener got (useful with port 0).
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.bound
            .iter()
            .find(|(_, name, _)| &**name == listener)
            .map(|(_, _, addr)| *addr)
    }

    /// The shared proxy state (live snapshot, tasks), e.g. to inspect backends.
    pub fn proxy(&self) -> Arc<Proxy> {
        Arc::clone(&self.proxy)
    }

    /// Reloads from this file on SIGHUP and whenever it changes on disk.
    pub fn with_config_path(mut self, path: PathBuf) -> Self {
        self.path = Some(path);
        self
    }

    /// Serves until `shutdown` resolves, then drains: stop accepting, send
    /// WebSocket clients a Close frame, let in-flight requests finish for up
    /// to `timeouts.shutdown_grace`. With a config path, reloads on SIGHUP
    /// and on file changes in the meantime.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Self {
            config,
            proxy,
            bound,
            path,
            inherited,
            admin,
        } = self;
        let stop = CancellationToken::new();
        let mut running = Running {
            config,
            proxy: Arc::clone(&proxy),
            stop: stop.clone(),
            listeners: HashMap::new(),
            listener_tasks: TaskTracker::new(),
            checkers: HashMap::new(),
            draining: Arc::new(std::sync::Mutex::new(Vec::new())),
            reloads: Arc::new(std::sync::Mutex::new(ReloadStats::default())),
            last_text: path
                .as_deref()
                .and_then(|p| std::fs::read_to_string(p).ok()),
        };
        for (listener, name, address) in bound {
            running.start_listener(listener, &name, address);
        }
        running.sync_checkers();

        // Listeners are serving: the previous process may stop accepting.
        if let Some(inherited) = inherited {
            match inherited.ready() {
                Ok(()) => tracing::info!("took over the listening sockets of the previous process"),
                Err(e) => tracing::warn!(error = %e, "could not tell the previous process to stop"),
            }
        }
        let control = running.config.upgrade_socket.as_deref().and_then(|p| {
            match upgrade::bind_control(p).and_then(|l| {
                l.set_nonblocking(true)?;
                tokio::net::UnixListener::from_std(l)
            }) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "cannot listen on the upgrade socket: binary upgrade disabled");
                    None
                }
            }
        });

        let (admin_tx, mut admin_rx) = mpsc::channel::<oneshot::Sender<ReloadOutcome>>(4);
        if let Some(listener) = admin {
            let state = Arc::new(AdminState {
                proxy: Arc::clone(&proxy),
                token: running.config.admin.as_ref().and_then(|a| a.token.clone()),
                reload: admin_tx,
                draining: Arc::clone(&running.draining),
                reloads: Arc::clone(&running.reloads),
            });
            tokio::spawn(serve_admin(listener, state, stop.clone()));
        }

        let (reload_tx, mut reload_rx) = mpsc::channel::<()>(1);
        let _watcher = path
            .as_deref()
            .and_then(|p| match watch_file(p, reload_tx.clone()) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP");
                    None
                }
            });
        let (hup_tx, mut hup_rx) = mpsc::channel::<()>(1);
        if path.is_some() {
            spawn_sighup(hup_tx, stop.clone());
        }

        // Only now: a change written after this line is seen.
        tracing::info!(
            pools = running.config.pools.len(),
            routes = running.config.routes.len(),
            generation = proxy.snapshot.load().generation,
            "balancer started"
        );

        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(()) = reload_rx.recv() => {
                    // Editors write in bursts: let the burst settle.
                    tokio::time::sleep(RELOAD_DEBOUNCE).await;
                    while reload_rx.try_recv().is_ok() {}
                    if let Some(p) = &path {
                        running.reload(p, "file", true).await;
                    }
                }
                Some(()) = hup_rx.recv() => {
                    if let Some(p) = &path {
                        running.reload(p, "SIGHUP", false).await;
                    }
                }
                Some(reply) = admin_rx.recv() => {
                    let outcome = match &path {
                        Some(p) => running.reload(p, "admin", false).await,
                        None => ReloadOutcome::Rejected {
                            errors: vec!["this balancer was started without a config file".into()],
                        },
                    };
                    let _ = reply.send(outcome);
                }
                Ok((stream, _)) = async {
                    match &control {
                        Some(c) => c.accept().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if running.hand_over(stream).await {
                        tracing::info!("handed the listening sockets over to a new process");
                        break;
                    }
                }
            }
        }

        let grace = running.config.timeouts.shutdown_grace;
        tracing::info!(
            ?grace,
            "shutting down: no new connections, finishing in-flight requests"
        );
        stop.cancel();
        // WebSocket clients get a Close frame now, so they reconnect at once
        // (to another balancer) instead of timing out.
        proxy.close_tunnels.cancel();
        running.listener_tasks.close();
        running.listener_tasks.wait().await;
        proxy.tasks.close();
        if tokio::time::timeout(grace, proxy.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = proxy.tasks.len(),
                "grace period over: closing the remaining connections"
            );
        }
        tracing::info!("stopped");
    }
}

/// Quiet time after a file event before reloading.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(200);

fn spawn_sighup(tx: mpsc::Sender<()>, stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install a SIGHUP handler; reload by editing the file");
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    let _ = tx.try_send(());
                }
            }
        }
    });
}

/// One listening socket that is serving.
#[derive(Debug)]
struct ListenerEntry {
    /// As written in the config (port 0 stays 0): what a reload compares.
    configured: SocketAddr,
    stop: CancellationToken,
    /// A duplicate of the listening socket, to hand over on upgrade.
    fd: Option<std::os::fd::OwnedFd>,
}

/// The serving state a reload changes.
#[derive(Debug)]
struct Running {
    config: config::Config,
    proxy: Arc<Proxy>,
    stop: CancellationToken,
    listeners: HashMap<String, ListenerEntry>,
    listener_tasks: TaskTracker,
    /// One health checker per backend object (keyed by its address in
    /// memory), kept across reloads while the backend and its checks are.
    checkers: HashMap<
        usize,
        (
            CancellationToken,
            config::HealthConfig,
            Arc<crate::runtime::Backend>,
        ),
    >,
    /// The text of the file last loaded, so a file event that changed
    /// nothing (touch, editor temp files) does not count as a reload.
    last_text: Option<String>,
    /// Removed backends that still have connections (shown by the admin API).
    draining: Arc<std::sync::Mutex<Vec<Draining>>>,
    /// Reload results (shown by the admin API).
    reloads: Arc<std::sync::Mutex<ReloadStats>>,
}

impl Running {
    fn start_listener(&mut self, listener: TcpListener, name: &str, bound: SocketAddr) {
        let configured = self
            .config
            .listeners
            .iter()
            .find(|l| l.name == name)
            .map_or(bound, |l| l.address);
        let stop = self.stop.child_token();
        let fd = {
            use std::os::fd::AsFd;
            listener.as_fd().try_clone_to_owned().ok()
        };
        let workers = crate::server::workers::handles();
        if workers.is_empty() {
            // In process (tests, benches): served on this runtime.
            self.listener_tasks.spawn(serve_listener(
                listener,
                Arc::from(name),
                Arc::clone(&self.proxy),
                stop.clone(),
            ));
        } else {
            // One accept loop per worker, each on its own clone of the socket.
            self.spawn_on_workers(listener, name, &stop, workers);
        }
        self.listeners.insert(
            name.to_string(),
            ListenerEntry {
                configured,
                stop,
                fd,
            },
        );
    }

    fn spawn_on_workers(
        &self,
        listener: TcpListener,
        name: &str,
        stop: &CancellationToken,
        workers: &[tokio::runtime::Handle],
    ) {
        let std = match listener.into_std() {
            Ok(std) => std,
            Err(e) => {
                tracing::error!(listener = name, error = %e, "cannot hand the listening socket to the workers");
                return;
            }
        };
        for handle in workers {
            let clone = match std.try_clone() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(listener = name, error = %e, "cannot share the listening socket with a worker");
                    continue;
                }
            };
            let (name, proxy, stop) = (Arc::from(name), Arc::clone(&self.proxy), stop.clone());
            self.listener_tasks.spawn_on(
                async move {
                    // Registered with the worker's own reactor.
                    match TcpListener::from_std(clone) {
                        Ok(l) => serve_listener(l, name, proxy, stop).await,
                        Err(e) => {
                            tracing::error!(listener = &*name, error = %e, "worker cannot accept")
                        }
                    }
                },
                handle,
            );
        }
    }

    /// Answers a takeover request; true when a new process took over.
    async fn hand_over(&self, stream: tokio::net::UnixStream) -> bool {
        let mut listeners = Vec::new();
        for (name, entry) in &self.listeners {
            if let Some(fd) = entry.fd.as_ref().and_then(|f| f.try_clone().ok()) {
                let described = upgrade::Described {
                    name: name.clone(),
                    configured: entry.configured,
                };
                listeners.push((described, fd));
            }
        }
        let result = tokio::task::spawn_blocking(move || {
            let stream = stream.into_std()?;
            stream.set_nonblocking(false)?;
            let refs: Vec<(upgrade::Described, &std::os::fd::OwnedFd)> =
                listeners.iter().map(|(d, f)| (d.clone(), f)).collect();
            upgrade::hand_over(stream, &refs)
        })
        .await;
        match result {
            Ok(Ok(true)) => true,
            Ok(Ok(false)) => false,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "upgrade handover failed: still serving");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "upgrade handover failed: still serving");
                false
            }
        }
    }

    /// Starts checkers for backends that need one and stops the others.
    fn sync_checkers(&mut self) {
        let snap = self.proxy.snapshot.load_full();
        let mut wanted: HashMap<
            usize,
            (Arc<str>, Arc<crate::runtime::Backend>, config::HealthConfig),
        > = HashMap::new();
        for p in &self.config.pools {
            let (Some(health), Some(pool)) = (&p.health, snap.pools.get(p.name.as_str())) else {
                continue;
            };
            for b in &pool.backends {
                wanted.insert(
                    Arc::as_ptr(b) as usize,
                    (Arc::clone(&pool.name), Arc::clone(b), health.clone()),
                );
            }
        }
        self.checkers.retain(|key, (token, health, backend)| {
            let keep = wanted.get(key).is_some_and(|(_, _, h)| h == health);
            if !keep {
                token.cancel();
                // No checker any more: ejections end with their time alone.
                if !wanted.contains_key(key) {
                    backend.set_checked(false);
                }
            }
            keep
        });
        for (key, (pool, backend, health)) in wanted {
            if self.checkers.contains_key(&key) {
                continue;
            }
            let token = self.stop.child_token();
            let metrics = self
                .proxy
                .metrics
                .as_ref()
                .map(|m| m.check(&pool, &backend.id));
            backend.set_checked(true);
            let checker = HealthChecker {
                pool,
                backend: Arc::clone(&backend),
                config: health.clone(),
                metrics,
            };
            tokio::spawn(checker.run(token.clone()));
            self.checkers.insert(key, (token, health, backend));
        }
    }

    /// Loads `path` and, if it is valid, moves everything to it.
    async fn reload(
        &mut self,
        path: &Path,
        trigger: &'static str,
        skip_if_same: bool,
    ) -> ReloadOutcome {
        let outcome = self.try_reload(path, trigger, skip_if_same).await;
        if let Ok(mut stats) = self.reloads.lock() {
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
        let new = match config::parse(&text) {
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
        let diff = ConfigDiff::between(&self.config, &new);

        // Bind added listeners first: a port that cannot be bound rejects
        // the whole reload, before anything changed.
        let mut added = Vec::new();
        for l in &new.listeners {
            if self
                .listeners
                .get(&l.name)
                .is_some_and(|e| e.configured == l.address)
            {
                continue;
            }
            match TcpListener::bind(l.address).await {
                Ok(listener) => {
                    let address = listener.local_addr().unwrap_or(l.address);
                    added.push((listener, l.name.clone(), address));
                }
                Err(e) => {
                    tracing::error!(trigger, listener = %l.name, address = %l.address, error = %e, "config reload failed: cannot bind; keeping the running config");
                    return ReloadOutcome::Rejected {
                        errors: vec![format!(
                            "listener {:?}: cannot bind {}: {e}",
                            l.name, l.address
                        )],
                    };
                }
            }
        }

        let old_snapshot = self.proxy.snapshot.load_full();
        let snapshot = Arc::new(Snapshot::build_with(
            &new,
            Some(&old_snapshot),
            self.proxy.metrics.as_deref(),
        ));
        let generation = snapshot.generation;
        self.proxy.snapshot.store(Arc::clone(&snapshot));

        // Listeners: stop removed or moved ones (their open connections
        // finish), start added ones; unchanged ones are never re-bound.
        let new_names: HashMap<&str, SocketAddr> = new
            .listeners
            .iter()
            .map(|l| (l.name.as_str(), l.address))
            .collect();
        self.listeners.retain(|name, entry| {
            let keep = new_names.get(name.as_str()) == Some(&entry.configured);
            if !keep {
                entry.stop.cancel();
            }
            keep
        });
        let drain_timeout = new.drain_timeout;
        self.config = new;
        for (listener, name, address) in added {
            tracing::info!(listener = %name, %address, "listening");
            self.start_listener(listener, &name, address);
        }
        self.sync_checkers();
        drain_removed(&old_snapshot, &snapshot, drain_timeout, &self.draining);
        self.last_text = Some(text);
        let changes = diff.summary();
        tracing::info!(trigger, generation, changes = %changes, "config reloaded");
        ReloadOutcome::Reloaded {
            generation,
            changes,
        }
    }
}

/// Backends in `old` but not in `new` take no new requests; they are
/// drained: in-flight requests finish, tunnels stay until they close or
/// `drain_timeout` passes, then get a Close frame.
fn drain_removed(
    old: &Snapshot,
    new: &Snapshot,
    drain_timeout: Duration,
    draining: &Arc<std::sync::Mutex<Vec<Draining>>>,
) {
    let kept: std::collections::HashSet<usize> = new
        .pools
        .values()
        .flat_map(|p| p.backends.iter().map(|b| Arc::as_ptr(b) as usize))
        .collect();
    for pool in old.pools.values() {
        for b in &pool.backends {
            if kept.contains(&(Arc::as_ptr(b) as usize)) {
                continue;
            }
            let backend = Arc::clone(b);
            let pool = Arc::clone(&pool.name);
            if let Ok(mut d) = draining.lock() {
                d.push(Draining {
                    pool: Arc::clone(&pool),
                    backend: Arc::clone(&backend),
                });
            }
            let draining = Arc::clone(draining);
            tracing::info!(
                pool = &*pool,
                backend = &*backend.id,
                open = backend.open_connections(),
                "backend draining"
            );
            tokio::spawn(async move {
                let end = tokio::time::Instant::now() + drain_timeout;
                // Polled, not signalled: a draining backend is rare and the
                // check is one atomic load.
                while backend.open_connections() > 0 && tokio::time::Instant::now() < end {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let left = backend.open_connections();
                backend.finish_drain();
                if let Ok(mut d) = draining.lock() {
                    d.retain(|d| !Arc::ptr_eq(&d.backend, &backend));
                }
                tracing::info!(
                    pool = &*pool,
                    backend = &*backend.id,
                    closed = left,
                    "backend drained"
                );
            });
        }
    }
}

/// Binds every listener, serves until `shutdown` resolves, then drains.
pub async fn run(config: config::Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    App::bind(config).await?.serve(shutdown).await;
    Ok(())
}
