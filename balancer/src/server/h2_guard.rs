//! The socket of an HTTP/2 client connection as hyper sees it, with the
//! flood limits (`limits.http2_max_ping_rate`, `http2_max_settings_rate`)
//! enforced on the bytes the client sends.
//!
//! Every byte read goes through a [`FrameHeads`] tracker and its frame
//! headers to a [`FloodMeter`]. When a client breaks a limit, the bytes
//! just read are not handed to h2; the balancer writes a GOAWAY
//! (`ENHANCE_YOUR_CALM`, the limit's name as debug data) itself, if h2's
//! output is between frames and the socket takes it at once, and then
//! every read and write fails, so hyper ends the connection and the
//! socket closes. Nothing waits on the client: a flooder that does not
//! read its socket gets the close without the GOAWAY.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::h2_frames::{goaway, Flood, FloodMeter, FrameHeads, ENHANCE_YOUR_CALM};
use crate::proxy::ConnInfo;

/// See the module doc.
#[derive(Debug)]
pub struct FloodGuard<T> {
    inner: T,
    /// What the client sent so far, frame by frame.
    from_client: FrameHeads,
    /// What h2 wrote so far: a GOAWAY of ours must start at a boundary.
    to_client: FrameHeads,
    meter: FloodMeter,
    /// The limit the client broke; from then on the connection is over.
    flood: Option<Flood>,
    conn: Arc<ConnInfo>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// Flood closes, process wide: logged at most once per 10 s.
static FLOOD_WARN: crate::logging::WarnEvery = crate::logging::WarnEvery::new();

impl<T> FloodGuard<T> {
    pub fn new(
        inner: T,
        meter: FloodMeter,
        conn: Arc<ConnInfo>,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Self {
        Self {
            inner,
            from_client: FrameHeads::client(),
            to_client: FrameHeads::server(),
            meter,
            flood: None,
            conn,
            metrics,
        }
    }

    fn closed(flood: Flood) -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("HTTP/2 client closed for {}", flood.as_str()),
        )
    }

    /// Counts and logs the flood, once per connection.
    fn report(&self, flood: Flood) {
        if let Some(m) = &self.metrics {
            m.http2_limit(&self.conn.listener, flood.as_str());
        }
        if let Some(unlogged) = FLOOD_WARN.should_warn() {
            tracing::warn!(
                listener = &*self.conn.listener,
                peer = %self.conn.peer,
                limit = flood.as_str(),
                closed_since_last_line = unlogged,
                "HTTP/2 client over its PING or SETTINGS rate: connection closed"
            );
        }
    }
}

impl<T: AsyncWrite + Unpin> FloodGuard<T> {
    /// Writes the GOAWAY for `flood` if h2's output is between frames and
    /// the socket takes it now; never waits.
    fn try_goaway(&mut self, cx: &mut Context<'_>, flood: Flood) {
        if !self.to_client.at_boundary() {
            return;
        }
        let frame = goaway(
            self.meter.last_stream(),
            ENHANCE_YOUR_CALM,
            flood.as_str().as_bytes(),
        );
        let mut sent = 0;
        while sent < frame.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &frame[sent..]) {
                Poll::Ready(Ok(n)) if n > 0 => sent += n,
                _ => return,
            }
        }
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for FloodGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(flood) = this.flood {
            return Poll::Ready(Err(Self::closed(flood)));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if !this.meter.is_on() {
            return r;
        }
        let now = crate::clock::now_ms();
        let (meter, mut flood) = (&mut this.meter, None);
        this.from_client.feed(&buf.filled()[before..], |head| {
            flood = meter.frame(head, now);
            flood.is_none()
        });
        let Some(flood) = flood else {
            return r;
        };
        // h2 never sees these bytes.
        buf.set_filled(before);
        this.flood = Some(flood);
        this.report(flood);
        this.try_goaway(cx, flood);
        Poll::Ready(Err(Self::closed(flood)))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FloodGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(flood) = this.flood {
            return Poll::Ready(Err(Self::closed(flood)));
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.to_client.feed(&buf[..n.min(buf.len())], |_| true);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(flood) = this.flood {
            return Poll::Ready(Err(Self::closed(flood)));
        }
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            let mut left = n;
            for b in bufs {
                if left == 0 {
                    break;
                }
                let take = left.min(b.len());
                this.to_client.feed(&b[..take], |_| true);
                left -= take;
            }
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
