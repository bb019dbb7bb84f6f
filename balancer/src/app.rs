//! Start-up and shutdown.
//!
//! [`run`] takes a validated config and a shutdown future, like mini-redis's
//! server: the binary passes SIGTERM/SIGINT, tests pass what they like.
//! Shutdown: stop accepting at once, let in-flight requests finish for up to
//! `timeouts.shutdown_grace`, then return.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::health::HealthChecker;
use crate::proxy::Proxy;
use crate::runtime::Snapshot;
use crate::server::{serve_listener, ConnSettings};
use crate::Error;

/// A balancer whose listeners are bound but not yet serving.
#[derive(Debug)]
pub struct App {
    config: config::Config,
    proxy: Arc<Proxy>,
    bound: Vec<(TcpListener, Arc<str>, SocketAddr)>,
}

impl App {
    /// Builds the runtime snapshot and binds every listener. All are bound
    /// before any serves, so a bad address fails the start cleanly.
    pub async fn bind(config: config::Config) -> Result<Self, Error> {
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(&config, None)));
        let proxy = Arc::new(Proxy {
            snapshot,
            tasks: TaskTracker::new(),
        });
        let mut bound = Vec::new();
        for l in &config.listeners {
            let listener = TcpListener::bind(l.address)
                .await
                .map_err(|source| Error::Bind {
                    listener: l.name.clone(),
                    address: l.address,
                    source,
                })?;
            let address = listener.local_addr().unwrap_or(l.address);
            tracing::info!(listener = %l.name, %address, "listening");
            bound.push((listener, Arc::<str>::from(l.name.as_str()), address));
        }
        Ok(Self {
            config,
            proxy,
            bound,
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

    /// Serves until `shutdown` resolves, then drains: stop accepting, let
    /// in-flight requests finish for up to `timeouts.shutdown_grace`.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Self {
            config,
            proxy,
            bound,
        } = self;
        let settings = ConnSettings {
            request_header: config.timeouts.request_header,
            client_idle: config.timeouts.client_idle,
        };
        tracing::info!(
            pools = config.pools.len(),
            routes = config.routes.len(),
            generation = proxy.snapshot.load().generation,
            "balancer started"
        );

        let stop = CancellationToken::new();
        let checkers = TaskTracker::new();
        {
            let snap = proxy.snapshot.load();
            for p in &config.pools {
                let (Some(health), Some(pool)) = (&p.health, snap.pools.get(p.name.as_str()))
                else {
                    continue;
                };
                for backend in &pool.backends {
                    let checker = HealthChecker {
                        pool: Arc::clone(&pool.name),
                        backend: Arc::clone(backend),
                        config: health.clone(),
                    };
                    checkers.spawn(checker.run(stop.clone()));
                }
            }
        }
        checkers.close();
        let listeners = TaskTracker::new();
        for (listener, name, _) in bound {
            listeners.spawn(serve_listener(
                listener,
                name,
                Arc::clone(&proxy),
                settings,
                stop.clone(),
            ));
        }
        listeners.close();

        shutdown.await;
        tracing::info!(
            grace = ?config.timeouts.shutdown_grace,
            "shutting down: no new connections, finishing in-flight requests"
        );
        stop.cancel();
        listeners.wait().await;
        proxy.tasks.close();
        if tokio::time::timeout(config.timeouts.shutdown_grace, proxy.tasks.wait())
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

/// Binds every listener, serves until `shutdown` resolves, then drains.
pub async fn run(config: config::Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    App::bind(config).await?.serve(shutdown).await;
    Ok(())
}
