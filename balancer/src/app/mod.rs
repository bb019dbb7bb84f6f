//! Start-up, the serve loop and shutdown.
//!
//! [`App::bind`] takes a validated config, builds the first snapshot and
//! binds every listener (all before any serves, so a bad address fails the
//! start cleanly). [`App::serve`] takes a shutdown future, like
//! mini-redis's server: the binary passes SIGTERM/SIGINT, tests pass what
//! they like. It hands reload triggers (file changes, SIGHUP, the admin
//! API) to the [`Reloader`], and a takeover request to
//! [`upgrade::handover`].
//! Shutdown: stop accepting at once, send WebSocket clients a Close frame,
//! let in-flight requests finish for up to `timeouts.shutdown_grace`, stop
//! the supervised instances ([`crate::supervise`]), then return.

mod signals;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{serve_admin, AdminState, Guard};
use crate::proxy::Proxy;
use crate::reload::{certificates, watch_dirs, watch_file, ReloadOutcome, Reloader, TlsListeners};
use crate::runtime::Snapshot;
use crate::{upgrade, Error};

/// A balancer whose listeners are bound but not yet serving.
#[derive(Debug)]
pub struct App {
    config: config::Config,
    proxy: Arc<Proxy>,
    /// Bound listeners by name, with the address each got.
    bound: Vec<(TcpListener, String, SocketAddr)>,
    path: Option<PathBuf>,
    /// Sockets taken over from a previous process, which waits for "ready".
    inherited: Option<upgrade::Inherited>,
    admin: Option<TcpListener>,
    /// TLS listeners, certificates loaded.
    tls: TlsListeners,
}

impl App {
    /// Builds the runtime snapshot and binds every listener.
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
        // Certificates first: a bad one stops the start before any bind.
        let tls = certificates::build(&config, &HashMap::new(), metrics.as_deref())
            .map_err(Error::Tls)?;
        for w in certificates::warnings(&tls) {
            tracing::warn!(warning = %w, "certificate expires soon");
        }
        let upstream_tls =
            certificates::build_upstream(&config, &HashMap::new()).map_err(Error::Tls)?;
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(
            &config,
            &HashMap::new(),
            1,
            metrics.as_deref(),
            &upstream_tls,
        )));
        let buffer_files = Arc::new(crate::proxy::buffering::FileBudget::new(
            metrics.as_ref().map(|m| m.buffer_file_bytes()),
        ));
        let proxy = Arc::new(Proxy {
            snapshot,
            tasks: TaskTracker::new(),
            close_tunnels: CancellationToken::new(),
            metrics,
            connections: Arc::default(),
            buffer_files,
        });
        // A running balancer on the upgrade socket hands its listening
        // sockets over; otherwise (or for listeners it does not have) bind.
        let mut inherited = match &config.upgrade_socket {
            // The running balancer's instances would hold the ports, and
            // nobody would supervise them once it exits.
            Some(path)
                if !config.processes.is_empty()
                    && std::os::unix::net::UnixStream::connect(path).is_ok() =>
            {
                return Err(Error::Supervise(
                    "binary upgrade with supervised pools ([pool.processes]) is not supported yet: stop the running balancer, then start this one".into(),
                ));
            }
            Some(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || upgrade::take_over(&path))
                    .await
                    .map_err(|e| Error::Upgrade(std::io::Error::other(e)))?
                    .map_err(Error::Upgrade)?
            }
            None => None,
        };
        let mut bound = Vec::new();
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
            bound.push((listener, l.name.clone(), address));
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
            tls,
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
            .find(|(_, name, _)| name == listener)
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
            tls,
        } = self;
        let stop = CancellationToken::new();
        let last_text = path
            .as_deref()
            .and_then(|p| std::fs::read_to_string(p).ok());
        let bound: HashMap<String, TcpListener> =
            bound.into_iter().map(|(l, name, _)| (name, l)).collect();
        let mut reloader = Reloader::start(
            config,
            Arc::clone(&proxy),
            stop.clone(),
            bound,
            last_text,
            tls,
        );

        // Listeners are serving: the previous process may stop accepting.
        if let Some(inherited) = inherited {
            match inherited.ready() {
                Ok(()) => tracing::info!("took over the listening sockets of the previous process"),
                Err(e) => tracing::warn!(error = %e, "could not tell the previous process to stop"),
            }
        }
        let control =
            upgrade::handover::control_socket(reloader.config().upgrade_socket.as_deref());
        let (supervisor, mut swaps) =
            crate::supervise::Supervisor::start(reloader.config(), Arc::clone(&proxy.snapshot));
        reloader.set_supervisor(Arc::clone(&supervisor));

        let (admin_tx, mut admin_rx) = mpsc::channel::<oneshot::Sender<ReloadOutcome>>(4);
        if let Some((listener, config)) = admin.zip(reloader.config().admin.clone()) {
            let bound = listener.local_addr().unwrap_or(config.address);
            let state = Arc::new(AdminState {
                snapshot: Arc::clone(&proxy.snapshot),
                metrics: proxy.metrics.clone(),
                guard: Guard::new(bound, &config),
                config,
                reload: admin_tx,
                draining: reloader.draining(),
                reloads: reloader.stats(),
                supervisor: Arc::clone(&supervisor),
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
        // Certificate files: their directories are watched, and polled in
        // case the filesystem sends no events.
        let (cert_tx, mut cert_rx) = mpsc::channel::<()>(1);
        let mut cert_dirs = certificates::directories(reloader.config());
        let mut _cert_watcher = watch_certificates(&cert_dirs, &cert_tx);
        let mut cert_poll = tokio::time::interval(CERTIFICATE_POLL);
        cert_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (hup_tx, mut hup_rx) = mpsc::channel::<()>(1);
        if path.is_some() {
            signals::forward_sighup(hup_tx, stop.clone());
        }

        // Only now: a change written after this line is seen.
        tracing::info!(
            pools = reloader.config().pools.len(),
            routes = reloader.config().routes.len(),
            generation = proxy.snapshot.load().generation,
            "balancer started"
        );

        tokio::pin!(shutdown);
        loop {
            let dirs = certificates::directories(reloader.config());
            if dirs != cert_dirs {
                _cert_watcher = watch_certificates(&dirs, &cert_tx);
                cert_dirs = dirs;
            }
            tokio::select! {
                () = &mut shutdown => break,
                Some(()) = cert_rx.recv() => {
                    // certbot writes several files: let it finish.
                    tokio::time::sleep(RELOAD_DEBOUNCE).await;
                    while cert_rx.try_recv().is_ok() {}
                    reloader.refresh_certificates();
                }
                _ = cert_poll.tick() => reloader.refresh_certificates(),
                Some(()) = reload_rx.recv() => {
                    // Editors write in bursts: let the burst settle.
                    tokio::time::sleep(RELOAD_DEBOUNCE).await;
                    while reload_rx.try_recv().is_ok() {}
                    if let Some(p) = &path {
                        reloader.reload(p, "file", true).await;
                    }
                }
                Some(swap) = swaps.recv() => {
                    reloader.reapply(swap.ready.as_ref());
                    let _ = swap.reply.send(());
                }
                Some(()) = hup_rx.recv() => {
                    if let Some(p) = &path {
                        reloader.reload(p, "SIGHUP", false).await;
                    }
                }
                Some(reply) = admin_rx.recv() => {
                    let outcome = match &path {
                        Some(p) => reloader.reload(p, "admin", false).await,
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
                    if !supervisor.is_empty() {
                        // Its instances would stop with this process.
                        tracing::error!("binary upgrade refused: supervised pools ([pool.processes]) cannot be handed over yet; stop this balancer, then start the new one");
                        drop(stream);
                        continue;
                    }
                    if upgrade::handover::answer_takeover(&reloader.listeners, stream).await {
                        tracing::info!("handed the listening sockets over to a new process");
                        break;
                    }
                }
            }
        }

        let grace = reloader.config().timeouts.shutdown_grace;
        tracing::info!(
            ?grace,
            "shutting down: no new connections, finishing in-flight requests"
        );
        stop.cancel();
        // WebSocket clients get a Close frame now, so they reconnect at once
        // (to another balancer) instead of timing out.
        proxy.close_tunnels.cancel();
        reloader.listeners.wait().await;
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
        // Players are drained: now the processes that served them. Nothing
        // answers a rolling restart's Swap any more: dropping the receiver
        // drops what it holds, so no restart waits on an answer.
        drop(swaps);
        supervisor.shutdown().await;
        tracing::info!("stopped");
    }
}

/// Quiet time after a file event before reloading.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(200);

/// How often certificate files are re-read when no event says they changed.
const CERTIFICATE_POLL: Duration = Duration::from_secs(5);

fn watch_certificates(
    dirs: &[PathBuf],
    tx: &mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    if dirs.is_empty() {
        return None;
    }
    match watch_dirs(dirs, tx.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the certificate directories; they are polled every 5 s");
            None
        }
    }
}

/// Binds every listener, serves until `shutdown` resolves, then drains.
pub async fn run(config: config::Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    App::bind(config).await?.serve(shutdown).await;
    Ok(())
}
