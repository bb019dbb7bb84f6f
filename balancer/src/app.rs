//! Start-up and shutdown.
//!
//! [`run`] takes a validated config and a shutdown future, like mini-redis's
//! server: the binary passes SIGTERM/SIGINT, tests pass what they like.
//! Shutdown: stop accepting at once, let in-flight requests finish for up to
//! `timeouts.shutdown_grace`, then return.

use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proxy::Proxy;
use crate::runtime::Snapshot;
use crate::server::{serve_listener, ConnSettings};
use crate::Error;

/// Binds every listener, serves until `shutdown` resolves, then drains.
pub async fn run(config: config::Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(&config, None)));
    let proxy = Arc::new(Proxy {
        snapshot,
        tasks: TaskTracker::new(),
    });
    let settings = ConnSettings {
        request_header: config.timeouts.request_header,
        client_idle: config.timeouts.client_idle,
    };

    // Bind all before serving any, so a bad address fails the start cleanly.
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
        bound.push((listener, Arc::<str>::from(l.name.as_str())));
    }
    tracing::info!(
        pools = config.pools.len(),
        routes = config.routes.len(),
        generation = proxy.snapshot.load().generation,
        "balancer started"
    );

    let stop = CancellationToken::new();
    let listeners = TaskTracker::new();
    for (listener, name) in bound {
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
    Ok(())
}
