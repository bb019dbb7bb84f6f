//! Idle detection without timers per read: an IO wrapper stamps a shared
//! coarse clock on every byte moved, and one sleeping task per connection
//! checks the stamp when its deadline comes.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::clock::{instant_of, now_ms};

/// Last time (from [`now_ms`]) bytes moved on a connection.
#[derive(Debug, Clone)]
pub struct LastActivity(Arc<AtomicU64>);

impl LastActivity {
    pub fn new() -> Self {
        Self(Arc::new(AtomicU64::new(now_ms())))
    }

    pub fn touch(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// The stamp itself, for [`idle`].
    pub fn stamp(&self) -> &AtomicU64 {
        &self.0
    }
}

impl Default for LastActivity {
    fn default() -> Self {
        Self::new()
    }
}

/// Resolves once `idle` has passed since the stamp `last` (a
/// [`now_ms`] value: bytes moved, or for HTTP/2 the last request ended)
/// while `busy` reads zero.
pub async fn idle(last: &AtomicU64, busy: &AtomicUsize, idle: Duration) {
    let idle_ms = crate::clock::millis(idle);
    let get = || last.load(Ordering::Relaxed);
    loop {
        let due = get().saturating_add(idle_ms);
        tokio::time::sleep_until(instant_of(due).into()).await;
        if busy.load(Ordering::Relaxed) == 0 && now_ms().saturating_sub(get()) >= idle_ms {
            return;
        }
        if busy.load(Ordering::Relaxed) > 0 {
            // A request is in flight: it has its own timeouts. Look again later.
            last.store(now_ms(), Ordering::Relaxed);
        }
    }
}

/// Wraps an IO object and stamps [`LastActivity`] whenever bytes move.
/// Tunnels also count the bytes read and learn when the peer sent EOF.
#[derive(Debug)]
pub struct Activity<T> {
    inner: T,
    last: LastActivity,
    read: Option<Arc<AtomicU64>>,
    eof: Option<Arc<tokio::sync::Notify>>,
}

impl<T> Activity<T> {
    pub fn new(inner: T, last: LastActivity) -> Self {
        Self {
            inner,
            last,
            read: None,
            eof: None,
        }
    }

    /// The wrapped IO object.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The wrapped IO object, to write past the stamp: bytes the balancer
    /// sends on its own (a tunnel's keep-alive Ping) are not the peers'
    /// activity, or a dead peer would never go idle.
    pub fn get_mut_unstamped(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Also counts the bytes read into `read`.
    pub fn count_reads(mut self, read: Arc<AtomicU64>) -> Self {
        self.read = Some(read);
        self
    }

    /// Also signals `eof` when the peer finishes sending.
    pub fn notify_eof(mut self, eof: Arc<tokio::sync::Notify>) -> Self {
        self.eof = Some(eof);
        self
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.last.touch();
            if let Some(read) = &self.read {
                read.fetch_add(n as u64, Ordering::Relaxed);
            }
        } else if matches!(r, Poll::Ready(Ok(()))) && buf.remaining() > 0 {
            if let Some(eof) = &self.eof {
                eof.notify_one();
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.last.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.last.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
