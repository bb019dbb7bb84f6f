//! Memory per idle connection: the RSS of the proxy's whole process tree
//! before and after opening N client connections that each did one
//! exchange and then stay idle; `(after - before) / N`. Tunnels are
//! measured both as `ws://` and as `wss://` (the proxy then also holds
//! each client's TLS session; the tunnel to the backend stays plaintext).
//!
//! Each measurement runs on a freshly started proxy (the caller's job), so
//! memory freed by an earlier test and kept by the allocator cannot hide
//! the cost.

use std::time::Duration;

use anyhow::{bail, Context};

use super::http::{Conn, REQUEST_TIMEOUT};
use super::targets::Target;
use super::{procfs, ws};

/// Connections opened at once.
const PARALLEL: usize = 64;
/// Wait before each RSS reading, for the proxy to finish its work.
const SETTLE: Duration = Duration::from_secs(1);

/// One memory measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Memory {
    /// Idle connections (or tunnels) held open.
    pub n: usize,
    pub before_kib: u64,
    pub after_kib: u64,
}

impl Memory {
    /// `(after - before) / n`, KiB (negative if the RSS went down).
    pub fn per_conn_kib(&self) -> f64 {
        (self.after_kib as f64 - self.before_kib as f64) / self.n.max(1) as f64
    }
}

async fn get_ok(c: &mut Conn) -> anyhow::Result<()> {
    let r = tokio::time::timeout(REQUEST_TIMEOUT, c.get("/healthz"))
        .await
        .context("GET /healthz timed out")??;
    if r.status != 200 {
        bail!("GET /healthz answered {}", r.status);
    }
    Ok(())
}

/// `n` keep-alive connections, each after one `GET /healthz`.
pub async fn idle_http(target: &mut Target, n: usize) -> anyhow::Result<Memory> {
    use futures_util::StreamExt;
    let addr = target.addr;
    let plain = target.plain();
    // Warm up: the first requests allocate the proxy's lasting state (and
    // its upstream pool).
    let mut warm = Conn::open(&plain).await?;
    for _ in 0..20 {
        get_ok(&mut warm).await?;
    }
    drop(warm);
    tokio::time::sleep(SETTLE).await;
    let before = procfs::tree_rss_kib(target.pid());
    let results: Vec<anyhow::Result<Conn>> = futures_util::stream::iter(0..n)
        .map(|_| async {
            let mut c = tokio::time::timeout(REQUEST_TIMEOUT, Conn::open(&plain))
                .await
                .context("connect timed out")??;
            get_ok(&mut c).await?;
            Ok(c)
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let conns = results
        .into_iter()
        .collect::<anyhow::Result<Vec<Conn>>>()
        .with_context(|| format!("opening {n} keep-alive connections to {addr}"))?;
    tokio::time::sleep(SETTLE).await;
    target.check_running()?;
    let after = procfs::tree_rss_kib(target.pid());
    drop(conns);
    Ok(Memory {
        n,
        before_kib: before,
        after_kib: after,
    })
}

/// `n` WebSocket tunnels to `/ws`, each after one echoed message; through
/// the TLS port (`wss://`) if `tls`.
pub async fn idle_ws(target: &mut Target, n: usize, tls: bool) -> anyhow::Result<Memory> {
    let endpoint = if tls { target.tls() } else { target.plain() };
    let warm = ws::open_many(&endpoint, 8, 8).await?;
    ws::close_all(warm).await;
    tokio::time::sleep(SETTLE).await;
    let before = procfs::tree_rss_kib(target.pid());
    let sockets = ws::open_many(&endpoint, n, PARALLEL).await?;
    tokio::time::sleep(SETTLE).await;
    target.check_running()?;
    let after = procfs::tree_rss_kib(target.pid());
    ws::close_all(sockets).await;
    Ok(Memory {
        n,
        before_kib: before,
        after_kib: after,
    })
}
