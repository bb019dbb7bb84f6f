//! Keep-alive connections to one backend, and how new ones are opened.
//!
//! The pool holds only sockets: an idle upstream connection has no buffers
//! and no task. Each worker thread has its own short list behind an
//! uncontended lock (a socket is reused by the thread whose reactor it is
//! registered with). The settings ([`UpstreamSettings`]) come from the
//! runtime snapshot with every call, so a reload that changes them applies
//! to the next connection without replacing the pool: a socket's idle
//! deadline is stamped when it goes idle, and the reaper follows the
//! shortest idle time it has seen.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpStream;

use super::UpstreamError;
use crate::clock::{millis, now_ms};

/// What opening and keeping upstream connections follows; from the
/// config's `[timeouts]` and the pool's `max_idle_per_backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
}

impl UpstreamSettings {
    pub fn new(timeouts: &config::Timeouts, max_idle: usize) -> Self {
        Self {
            connect_timeout: timeouts.connect,
            idle_timeout: timeouts.upstream_idle,
            max_idle,
        }
    }
}

/// Idle sockets with the time ([`now_ms`]) each expires, newest last.
type IdleList = Mutex<Vec<(TcpStream, u64)>>;

/// See the module doc.
#[derive(Debug)]
pub struct ConnectionPool {
    addr: SocketAddr,
    connect_histogram: Option<prometheus::Histogram>,
    /// One list per worker thread (see [`crate::workers`]).
    idle: Box<[IdleList]>,
    /// How often the reaper looks (ms): every second, or half the shortest
    /// idle time seen if that is sooner (never under 100 ms).
    reap_every: AtomicU64,
}

/// The reaper's period before any socket went idle, and its shortest.
const REAP_START_MS: u64 = 1_000;
const REAP_MIN_MS: u64 = 100;

impl ConnectionPool {
    pub fn new(addr: SocketAddr, connect_histogram: Option<prometheus::Histogram>) -> Arc<Self> {
        let pool = Arc::new(Self {
            addr,
            connect_histogram,
            idle: (0..crate::workers::count())
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            reap_every: AtomicU64::new(REAP_START_MS),
        });
        // Idle sockets close at their deadline even when no request comes
        // to notice: a reaper that lives as long as the pool (also while
        // `max_idle` is 0, since a reload may raise it).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(reap(Arc::downgrade(&pool)));
        }
        pool
    }

    /// Idle connections right now.
    pub fn idle_count(&self) -> usize {
        self.idle
            .iter()
            .map(|l| l.lock().map(|v| v.len()).unwrap_or(0))
            .sum()
    }

    /// This thread's idle list.
    fn mine(&self) -> &IdleList {
        &self.idle[crate::workers::current() % self.idle.len()]
    }

    /// The newest idle socket that is still open and not expired, if any.
    pub(super) fn checkout(&self, now: u64) -> Option<TcpStream> {
        loop {
            let (io, expires) = self.mine().lock().ok()?.pop()?;
            if now >= expires || !still_open(&io) {
                continue;
            }
            return Some(io);
        }
    }

    /// A socket whose exchange finished cleanly goes back for the next request.
    pub(super) fn checkin(&self, io: TcpStream, settings: &UpstreamSettings) {
        if settings.max_idle == 0 {
            return;
        }
        let idle_ms = millis(settings.idle_timeout);
        let period = (idle_ms / 2).max(REAP_MIN_MS);
        if period < self.reap_every.load(Ordering::Relaxed) {
            self.reap_every.store(period, Ordering::Relaxed);
        }
        let Ok(mut idle) = self.mine().lock() else {
            return;
        };
        // The cap is per worker list: each worker keeps up to `max_idle`
        // divided among them (at least one).
        let cap = (settings.max_idle / self.idle.len()).max(1);
        if idle.len() < cap {
            idle.push((io, now_ms().saturating_add(idle_ms)));
        }
    }

    /// Closes sockets whose idle time is over at `now`.
    fn reap_expired(&self, now: u64) {
        for list in self.idle.iter() {
            let expired: Vec<(TcpStream, u64)> = match list.lock() {
                Ok(mut idle) => {
                    let (gone, kept) = std::mem::take(&mut *idle)
                        .into_iter()
                        .partition(|(_, expires)| now >= *expires);
                    *idle = kept;
                    gone
                }
                Err(_) => return,
            };
            // Closed outside the lock.
            drop(expired);
        }
    }

    /// Opens a new connection within `settings.connect_timeout`.
    pub(super) async fn connect(
        &self,
        settings: &UpstreamSettings,
    ) -> Result<TcpStream, UpstreamError> {
        let start = std::time::Instant::now();
        let limit = settings.connect_timeout;
        let io = match tokio::time::timeout(limit, TcpStream::connect(self.addr)).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(UpstreamError::ConnectTimeout(limit))
            }
            Ok(Err(source)) => {
                return Err(UpstreamError::Connect {
                    addr: self.addr,
                    source,
                })
            }
            Err(_) => return Err(UpstreamError::ConnectTimeout(limit)),
        };
        let _ = io.set_nodelay(true);
        if let Some(h) = &self.connect_histogram {
            h.observe(start.elapsed().as_secs_f64());
        }
        Ok(io)
    }
}

/// Wakes up every `reap_every` to close expired idle sockets; ends when the
/// pool is gone.
async fn reap(pool: Weak<ConnectionPool>) {
    loop {
        let period = match pool.upgrade() {
            Some(p) => p.reap_every.load(Ordering::Relaxed),
            None => return,
        };
        tokio::time::sleep(Duration::from_millis(period)).await;
        match pool.upgrade() {
            Some(p) => p.reap_expired(now_ms()),
            None => return,
        }
    }
}

/// An idle socket that the backend has not closed (and sent nothing on):
/// a readiness check first, so the common case costs no system call.
fn still_open(io: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match io.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}
