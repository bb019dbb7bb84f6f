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
//!
//! A pool with `send_proxy_protocol` starts every new connection with a
//! PROXY header ([`ProxyHeader`], in the settings) naming the client it is
//! for. Such a connection speaks for that client until it closes, so idle
//! connections are keyed by their header: one is reused only for a
//! request whose header would be the same (the same client address and
//! port, the same balancer address), never for another client.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::net::TcpStream;

use super::{ProxyHeader, UpstreamError, UpstreamStream, UpstreamTls};
use crate::clock::{millis, now_ms};
use crate::socket::MaybeTls;

/// What opening and keeping upstream connections follows; from the
/// config's `[timeouts]` and the pool's `max_idle_per_backend` and
/// `send_proxy_protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
    /// `send_proxy_protocol`: the header a new connection starts with, and
    /// the key an idle one is reused by. The pool's own settings hold
    /// `LOCAL`; a request's hold its client's ([`Self::for_client`]).
    pub proxy_header: Option<ProxyHeader>,
    /// `max_connections_per_backend`: a socket is pooled only while the
    /// idle ones plus the requests open stay within it, so a backend never
    /// has more connections from this process than the cap.
    pub cap: Option<usize>,
}

impl UpstreamSettings {
    pub fn new(timeouts: &config::Timeouts, max_idle: usize) -> Self {
        Self {
            connect_timeout: timeouts.connect,
            idle_timeout: timeouts.upstream_idle,
            max_idle,
            proxy_header: None,
            cap: None,
        }
    }

    /// With `max_connections_per_backend` (`None`: no cap).
    pub fn with_cap(mut self, cap: Option<usize>) -> Self {
        self.cap = cap;
        self
    }

    /// With `send_proxy_protocol` (`None`: off).
    pub fn with_proxy_protocol(mut self, version: Option<config::ProxyVersion>) -> Self {
        self.proxy_header = version.map(ProxyHeader::local);
        self
    }

    /// The settings for a request from `source` that reached the balancer
    /// at `destination`: the same, but for the PROXY header, which names
    /// them (when the pool sends one).
    pub fn for_client(&self, source: SocketAddr, destination: SocketAddr) -> Self {
        Self {
            proxy_header: self.proxy_header.map(|h| h.for_client(source, destination)),
            ..*self
        }
    }
}

/// The TCP connections open to one backend now (requests, tunnels, idle
/// ones and health checks alike), and the most there ever were at once:
/// what the backend sees of this process, exactly, not a sample. Each
/// [`UpstreamStream`] holds a [`Counted`] from its connect until it closes.
#[derive(Debug, Default)]
pub struct Sockets {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Sockets {
    /// Open now.
    pub fn now(&self) -> usize {
        self.now.load(Ordering::Relaxed)
    }

    /// The most open at once since the backend appeared.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    fn count(self: &Arc<Self>) -> Counted {
        let n = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(n, Ordering::Relaxed);
        Counted(Arc::clone(self))
    }
}

/// One socket of [`Sockets`]; dropping it (with the socket) uncounts it.
#[derive(Debug)]
pub struct Counted(Arc<Sockets>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Idle sockets with the time ([`now_ms`]) each expires and the PROXY
/// header each started with, newest last.
type IdleList = Mutex<Vec<(UpstreamStream, u64, Option<ProxyHeader>)>>;

/// See the module doc.
#[derive(Debug)]
pub struct ConnectionPool {
    addr: SocketAddr,
    connect_histogram: Option<prometheus::Histogram>,
    /// The pool's `[pool.tls]`: every new connection is TLS. Swapped when
    /// a reload changes the settings or files (see [`Self::set_tls`]).
    tls: arc_swap::ArcSwapOption<UpstreamTls>,
    /// One list per worker thread (see [`crate::workers`]).
    idle: Box<[IdleList]>,
    /// How often the reaper looks (ms): every second, or half the shortest
    /// idle time seen if that is sooner (never under 100 ms).
    reap_every: AtomicU64,
    /// The backend's requests and tunnels open now (its `open` count).
    open: Arc<AtomicUsize>,
    /// Its TCP connections open now, each counted by its stream.
    sockets: Arc<Sockets>,
}

/// The reaper's period before any socket went idle, and its shortest.
const REAP_START_MS: u64 = 1_000;
const REAP_MIN_MS: u64 = 100;

impl ConnectionPool {
    pub fn new(
        addr: SocketAddr,
        connect_histogram: Option<prometheus::Histogram>,
        tls: Option<Arc<UpstreamTls>>,
        open: Arc<AtomicUsize>,
    ) -> Arc<Self> {
        let pool = Arc::new(Self {
            addr,
            connect_histogram,
            tls: arc_swap::ArcSwapOption::new(tls),
            idle: (0..crate::workers::count())
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            reap_every: AtomicU64::new(REAP_START_MS),
            open,
            sockets: Arc::default(),
        });
        // Idle sockets close at their deadline even when no request comes
        // to notice: a reaper that lives as long as the pool (also while
        // `max_idle` is 0, since a reload may raise it).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(reap(Arc::downgrade(&pool)));
        }
        pool
    }

    /// Closes the oldest idle socket of the first list that has one.
    fn evict_oldest(&self) {
        for list in self.idle.iter() {
            let oldest = match list.lock() {
                Ok(mut l) if !l.is_empty() => l.remove(0),
                _ => continue,
            };
            drop(oldest);
            return;
        }
    }

    /// The TCP connections open to the backend (see [`Sockets`]).
    pub fn sockets(&self) -> &Sockets {
        &self.sockets
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

    /// The newest idle socket that started with `header` (none: no
    /// PROXY header) and is still open and not expired, if any. Without
    /// PROXY headers every socket matches, so this is a pop; with them,
    /// a scan of this worker's short list.
    pub(super) fn checkout(
        &self,
        now: u64,
        header: Option<&ProxyHeader>,
    ) -> Option<UpstreamStream> {
        loop {
            let (mut io, expires, _) = {
                let mut idle = self.mine().lock().ok()?;
                let at = idle.iter().rposition(|(_, _, h)| h.as_ref() == header)?;
                idle.remove(at)
            };
            if now >= expires || !io.still_open() {
                continue;
            }
            return Some(io);
        }
    }

    /// A socket whose exchange finished cleanly goes back for the next request.
    pub(super) fn checkin(&self, io: UpstreamStream, settings: &UpstreamSettings) {
        if settings.max_idle == 0 {
            return;
        }
        if let Some(cap) = settings.cap {
            // `open` still counts the request giving the socket back, and
            // `sockets` the socket itself.
            if self.idle_count() + self.open.load(Ordering::Relaxed) > cap
                || self.sockets.now() > cap
            {
                return;
            }
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
        let header = settings.proxy_header;
        if idle.len() >= cap && header.is_some() {
            // Keyed sockets: each is good for one client only, and the
            // newest client is the likeliest to come back, so the oldest
            // makes room (closed outside the lock).
            let oldest = idle.remove(0);
            idle.push((io, now_ms().saturating_add(idle_ms), header));
            drop(idle);
            drop(oldest);
            return;
        }
        if idle.len() < cap {
            idle.push((io, now_ms().saturating_add(idle_ms), header));
        }
    }

    /// Closes sockets whose idle time is over at `now`.
    pub(super) fn reap_expired(&self, now: u64) {
        for list in self.idle.iter() {
            let expired: Vec<_> = match list.lock() {
                Ok(mut idle) => {
                    let (gone, kept) = std::mem::take(&mut *idle)
                        .into_iter()
                        .partition(|(_, expires, _)| now >= *expires);
                    *idle = kept;
                    gone
                }
                Err(_) => return,
            };
            // Closed outside the lock.
            drop(expired);
        }
    }

    /// Whether connections to this backend are TLS.
    /// Its TLS settings, if it has them (a probe of a replacement process
    /// uses the same).
    pub fn tls(&self) -> Option<Arc<UpstreamTls>> {
        self.tls.load_full()
    }

    pub fn is_tls(&self) -> bool {
        self.tls.load().is_some()
    }

    /// New TLS settings from a reload that kept this backend. Idle
    /// connections made with other settings are closed; connections in
    /// use finish as they are.
    pub fn set_tls(&self, tls: Option<Arc<UpstreamTls>>) {
        let same = match (&*self.tls.load(), &tls) {
            (None, None) => true,
            (Some(a), Some(b)) => a.fingerprint == b.fingerprint,
            _ => false,
        };
        if same {
            return;
        }
        self.tls.store(tls);
        for list in self.idle.iter() {
            let closed = list.lock().map(|mut l| std::mem::take(&mut *l));
            drop(closed);
        }
    }

    /// Opens a new connection (its PROXY header, its TLS session) within
    /// `settings.connect_timeout`, timed into the connect histogram.
    pub async fn connect(
        &self,
        settings: &UpstreamSettings,
    ) -> Result<UpstreamStream, UpstreamError> {
        if let Some(cap) = settings.cap {
            // A socket idle on another worker's list would take this
            // backend over the cap with the new one: it goes first.
            if self.idle_count() + self.open.load(Ordering::Relaxed) > cap
                || self.sockets.now() >= cap
            {
                self.evict_oldest();
            }
        }
        let start = std::time::Instant::now();
        let io = self
            .open(settings.connect_timeout, settings.proxy_header.as_ref())
            .await?;
        if let Some(h) = &self.connect_histogram {
            h.observe(start.elapsed().as_secs_f64());
        }
        Ok(io)
    }

    /// Opens a new connection within `limit`, as requests and health
    /// checks do: TCP, then `proxy_header` (before anything else, TLS
    /// included), then the pool's TLS session if it has one.
    pub async fn open(
        &self,
        limit: Duration,
        proxy_header: Option<&ProxyHeader>,
    ) -> Result<UpstreamStream, UpstreamError> {
        let start = std::time::Instant::now();
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
        // Counted from here: a socket that fails its PROXY header or TLS
        // handshake below is uncounted as it closes.
        let counted = self.sockets.count();
        let mut io = io;
        if let Some(h) = proxy_header {
            use tokio::io::AsyncWriteExt;
            let mut bytes = Vec::with_capacity(64);
            h.encode(&mut bytes);
            let left = limit.saturating_sub(start.elapsed());
            match tokio::time::timeout(left, io.write_all(&bytes)).await {
                Ok(Ok(())) => {}
                // Nothing of the request went: as safe to retry as a
                // failed connect.
                Ok(Err(source)) => {
                    return Err(UpstreamError::Connect {
                        addr: self.addr,
                        source,
                    })
                }
                Err(_) => return Err(UpstreamError::ConnectTimeout(limit)),
            }
        }
        let tls = self.tls.load_full();
        let io = match &tls {
            None => UpstreamStream::new(MaybeTls::Plain(io), counted),
            Some(tls) => {
                let left = limit.saturating_sub(start.elapsed());
                match tokio::time::timeout(left, tls.handshake(io, self.addr)).await {
                    Ok(Ok(s)) => UpstreamStream::new(MaybeTls::Tls(Box::new(s)), counted),
                    Ok(Err(source)) => {
                        return Err(UpstreamError::Tls {
                            addr: self.addr,
                            source,
                        })
                    }
                    Err(_) => return Err(UpstreamError::ConnectTimeout(limit)),
                }
            }
        };
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
