//! The listening sockets that are serving, by name: started (on every
//! worker), stopped one by one on reload, and handed over on a binary
//! upgrade. A listener that stays in the config is never re-bound.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::serve_listener;
use super::tls::TlsListener;
use crate::proxy::edge::Edge;
use crate::proxy::Proxy;

/// A listener's behaviour: TLS or not, and what it adds to requests.
/// Swapped whole on reload; each new connection loads it once.
#[derive(Debug)]
pub struct ListenerSettings {
    pub tls: Option<Arc<TlsListener>>,
    pub edge: Arc<Edge>,
    /// `listener.max_connections`.
    pub max_connections: Option<usize>,
    /// `[listener.proxy_protocol]`.
    pub proxy_protocol: Option<config::ProxyProtocol>,
    /// The listener's open connections, on every worker; carried over
    /// when a reload swaps the settings.
    pub open: Arc<std::sync::atomic::AtomicUsize>,
}

impl ListenerSettings {
    pub fn new(cfg: &config::ListenerConfig, tls: Option<Arc<TlsListener>>, port: u16) -> Self {
        Self {
            tls,
            edge: Arc::new(Edge::new(cfg, port)),
            max_connections: cfg.max_connections,
            proxy_protocol: cfg.proxy_protocol.clone(),
            open: Arc::default(),
        }
    }
}

/// One listening socket that is serving.
#[derive(Debug)]
struct Entry {
    /// As written in the config (port 0 stays 0): what a reload compares
    /// and what a binary upgrade matches on.
    configured: SocketAddr,
    stop: CancellationToken,
    /// A duplicate of the listening socket, to hand over on upgrade.
    fd: Option<OwnedFd>,
    /// The port it is bound to (for `X-Forwarded-Port`).
    port: u16,
    settings: Arc<ArcSwap<ListenerSettings>>,
}

/// See the module doc.
#[derive(Debug)]
pub struct ListenerSet {
    proxy: Arc<Proxy>,
    /// Fired at shutdown: every accept loop ends.
    stop: CancellationToken,
    entries: HashMap<String, Entry>,
    tasks: TaskTracker,
}

impl ListenerSet {
    pub fn new(proxy: Arc<Proxy>, stop: CancellationToken) -> Self {
        Self {
            proxy,
            stop,
            entries: HashMap::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Serves `listener` as `cfg` says, with `tls` if it terminates TLS:
    /// on every worker, each on its own clone of the socket, or on this
    /// runtime when there are no workers (tests, benches).
    pub fn start(
        &mut self,
        listener: TcpListener,
        cfg: &config::ListenerConfig,
        tls: Option<Arc<TlsListener>>,
    ) {
        let (name, configured) = (cfg.name.as_str(), cfg.address);
        let port = listener
            .local_addr()
            .map_or(configured.port(), |a| a.port());
        let settings = Arc::new(ArcSwap::from_pointee(ListenerSettings::new(cfg, tls, port)));
        let stop = self.stop.child_token();
        let fd = {
            use std::os::fd::AsFd;
            listener.as_fd().try_clone_to_owned().ok()
        };
        let workers = crate::workers::handles();
        if workers.is_empty() {
            self.tasks.spawn(serve_listener(
                listener,
                Arc::from(name),
                Arc::clone(&self.proxy),
                stop.clone(),
                Arc::clone(&settings),
            ));
        } else {
            self.spawn_on_workers(listener, name, &stop, workers, &settings);
        }
        self.entries.insert(
            name.to_string(),
            Entry {
                configured,
                stop,
                fd,
                port,
                settings,
            },
        );
    }

    /// New settings for a listener that keeps its socket: its next
    /// connections use them; open ones keep theirs.
    pub fn update(&self, cfg: &config::ListenerConfig, tls: Option<Arc<TlsListener>>) {
        if let Some(e) = self.entries.get(&cfg.name) {
            let mut next = ListenerSettings::new(cfg, tls, e.port);
            next.open = Arc::clone(&e.settings.load().open);
            e.settings.store(Arc::new(next));
        }
    }

    fn spawn_on_workers(
        &self,
        listener: TcpListener,
        name: &str,
        stop: &CancellationToken,
        workers: &[tokio::runtime::Handle],
        settings: &Arc<ArcSwap<ListenerSettings>>,
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
            let settings = Arc::clone(settings);
            self.tasks.spawn_on(
                async move {
                    // Registered with the worker's own reactor.
                    match TcpListener::from_std(clone) {
                        Ok(l) => serve_listener(l, name, proxy, stop, settings).await,
                        Err(e) => {
                            tracing::error!(listener = &*name, error = %e, "worker cannot accept")
                        }
                    }
                },
                handle,
            );
        }
    }

    /// Stops accepting on `name`; its open connections finish.
    pub fn stop(&mut self, name: &str) {
        if let Some(e) = self.entries.remove(name) {
            e.stop.cancel();
        }
    }

    /// Duplicates of every listening socket with its name and configured
    /// address, for a new process taking over.
    pub fn duplicates(&self) -> Vec<(String, SocketAddr, OwnedFd)> {
        self.entries
            .iter()
            .filter_map(|(name, e)| {
                let fd = e.fd.as_ref()?.try_clone().ok()?;
                Some((name.clone(), e.configured, fd))
            })
            .collect()
    }

    /// Waits until every accept loop has ended (after shutdown fired).
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}
