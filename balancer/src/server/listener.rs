//! One listening socket: accept, then one task per connection running
//! hyper-util's `auto` server (HTTP/1.1 or HTTP/2 by preface) with upgrades.

use std::convert::Infallible;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::activity::{self, Activity, LastActivity};
use crate::proxy::{ConnInfo, Proxy};

/// Bytes hyper-util's `auto` reads to tell HTTP/2 (its preface) from HTTP/1.1.
const PREFACE_LEN: u64 = 24;

/// How long an idle connection asked to close may take before it is dropped.
const IDLE_CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// Client-side connection settings, from `[timeouts]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnSettings {
    pub request_header: Duration,
    pub client_idle: Duration,
}

impl From<&config::Timeouts> for ConnSettings {
    fn from(t: &config::Timeouts) -> Self {
        Self {
            request_header: t.request_header,
            client_idle: t.client_idle,
        }
    }
}

fn http_builder(settings: ConnSettings) -> Arc<auto::Builder<TokioExecutor>> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.request_header)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    Arc::new(builder)
}

/// Accepts until `shutdown` fires, then stops accepting (the socket closes)
/// and asks every open connection to finish its in-flight requests and close.
pub async fn serve_listener(
    listener: TcpListener,
    name: Arc<str>,
    proxy: Arc<Proxy>,
    shutdown: CancellationToken,
) {
    let mut settings = ConnSettings::from(&proxy.snapshot.load().timeouts);
    let open_gauge = proxy.metrics.as_ref().map(|m| m.listener(&name));
    let mut builder = http_builder(settings);

    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the
                    // connections that hold the descriptors will close.
                    tracing::warn!(listener = &*name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Timeouts come from the live config, so a reload applies them to
        // new connections.
        let current = ConnSettings::from(&proxy.snapshot.load().timeouts);
        if current != settings {
            settings = current;
            builder = http_builder(settings);
        }
        let conn = Arc::new(ConnInfo {
            listener: Arc::clone(&name),
            peer,
            in_flight: AtomicUsize::new(0),
        });
        let gauge = open_gauge.clone();
        if let Some(g) = &gauge {
            g.inc();
        }
        let served = serve_connection(
            stream,
            conn,
            Arc::clone(&proxy),
            Arc::clone(&builder),
            settings,
            shutdown.clone(),
        );
        proxy.tasks.spawn(async move {
            served.await;
            if let Some(g) = gauge {
                g.dec();
            }
        });
    }
    tracing::info!(listener = &*name, "stopped accepting");
}

async fn serve_connection(
    stream: TcpStream,
    conn: Arc<ConnInfo>,
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    settings: ConnSettings,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let last = LastActivity::new();
    let received = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Activity::new(stream, last.clone()).count_reads(Arc::clone(&received)));
    let service_conn = Arc::clone(&conn);
    let service = service_fn(move |req| {
        let proxy = Arc::clone(&proxy);
        let conn = Arc::clone(&service_conn);
        async move { Ok::<_, Infallible>(proxy.handle(&conn, req).await) }
    });
    let mut http = pin!(builder.serve_connection_with_upgrades(io, service));
    let mut draining = false;
    // An idle connection asked to close gets this long to do so (an HTTP/2
    // peer must acknowledge GOAWAY's PING); then it is dropped.
    let hard_close = tokio::time::sleep(Duration::from_secs(3600));
    let mut hard_close = pin!(hard_close);
    let idle = activity::idle(&last, &conn.in_flight, settings.client_idle);
    let mut idle = pin!(idle);
    // hyper's header timeout starts with the first byte; a connection that
    // sends nothing at all gets the same `request_header` limit from here.
    let first_byte = tokio::time::sleep(settings.request_header);
    let mut first_byte = pin!(first_byte);
    let mut first_byte_seen = false;
    loop {
        tokio::select! {
            r = http.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %conn.peer, error = %e, "client connection ended with error");
                }
                return;
            }
            () = shutdown.cancelled(), if !draining => {
                // A connection still reading its first bytes (deciding
                // HTTP/1.1 or HTTP/2) would be dropped by graceful_shutdown,
                // losing a request the client is about to send: let that
                // first request arrive (bounded by request_header), then
                // finish it and close.
                let deadline = tokio::time::Instant::now() + settings.request_header;
                while received.load(Ordering::Relaxed) < PREFACE_LEN
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::select! {
                        r = http.as_mut() => {
                            if let Err(e) = r {
                                tracing::debug!(peer = %conn.peer, error = %e, "client connection ended with error");
                            }
                            return;
                        }
                        () = tokio::time::sleep(Duration::from_millis(5)) => {}
                    }
                }
                draining = true;
                http.as_mut().graceful_shutdown();
            }
            () = idle.as_mut(), if !draining => {
                tracing::debug!(peer = %conn.peer, "closing idle client connection");
                draining = true;
                http.as_mut().graceful_shutdown();
                hard_close
                    .as_mut()
                    .reset(tokio::time::Instant::now() + IDLE_CLOSE_LIMIT);
            }
            () = first_byte.as_mut(), if !first_byte_seen => {
                if received.load(Ordering::Relaxed) == 0 {
                    tracing::debug!(peer = %conn.peer, "client sent nothing within request_header: closed");
                    return;
                }
                first_byte_seen = true;
            }
            () = hard_close.as_mut(), if draining => {
                if conn.in_flight.load(Ordering::Relaxed) == 0 {
                    tracing::debug!(peer = %conn.peer, "idle client connection did not close in time: dropped");
                    return;
                }
                hard_close
                    .as_mut()
                    .reset(tokio::time::Instant::now() + IDLE_CLOSE_LIMIT);
            }
        }
    }
}
