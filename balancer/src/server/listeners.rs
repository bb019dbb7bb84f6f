//! The listening sockets that are serving, by name: started (on every
//! worker), stopped one by one on reload, and handed over on a binary
//! upgrade. A listener that stays in the config is never re-bound.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::serve_listener;
use crate::proxy::Proxy;

/// One listening socket that is serving.
#[derive(Debug)]
struct Entry {
    /// As written in the config (port 0 stays 0): what a reload compares
    /// and what a binary upgrade matches on.
    configured: SocketAddr,
    stop: CancellationToken,
    /// A duplicate of the listening socket, to hand over on upgrade.
    fd: Option<OwnedFd>,
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

    /// Serves `listener` as `name` (configured as `configured`): on every
    /// worker, each on its own clone of the socket, or on this runtime
    /// when there are no workers (tests, benches).
    pub fn start(&mut self, listener: TcpListener, name: &str, configured: SocketAddr) {
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
            ));
        } else {
            self.spawn_on_workers(listener, name, &stop, workers);
        }
        self.entries.insert(
            name.to_string(),
            Entry {
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
            self.tasks.spawn_on(
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
