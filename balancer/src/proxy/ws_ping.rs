//! Keep-alive Pings from the balancer to quiet WebSocket clients
//! (`timeouts.websocket_ping`).
//!
//! A game socket can sit silent for minutes (a lobby, a paused match), and
//! NATs and mobile carriers drop mappings that carry nothing for a while
//! (often 30 s to a few minutes), after which neither end hears the other.
//! When a tunnel's client has sent nothing for the interval, the tunnel
//! writes [`PING_FRAME`] into the client-bound stream; the client's Pong
//! is traffic like any other: it keeps the mapping and, through the
//! tunnel's activity stamp, `websocket_idle` at bay. A client that does not
//! answer gets a Ping each interval and is closed at `websocket_idle` as
//! before, because the Pings themselves are written past the stamp.
//!
//! The Ping must never land inside a frame the backend is sending: the
//! tunnel asks here only at a frame boundary of the backend's stream (its
//! [`super::ws_frames::FrameBoundary`]), and while a Ping is due it writes
//! the backend's bytes only up to the end of the current frame. The Pong
//! goes on to the backend with the rest of the client's bytes: an
//! unsolicited Pong needs no answer (RFC 6455 5.5.3).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::AsyncWrite;
use tokio::time::Sleep;

use super::ws_frames::PING_FRAME;
use crate::clock::{instant_of, millis, now_ms};

/// One tunnel's keep-alive schedule and the Ping it may be writing.
#[derive(Debug)]
pub struct Keepalive {
    interval_ms: u64,
    /// [`now_ms`] of the client's last byte (the tunnel's start before
    /// any): the silence a Ping answers is measured from here.
    heard: u64,
    /// [`now_ms`] of the last Ping (0: none yet), so an unanswered client
    /// gets one each interval, not one on every poll.
    pinged: u64,
    /// Fires when the next Ping may be due. Boxed once per tunnel, only
    /// for tunnels with pings on.
    timer: Pin<Box<Sleep>>,
    /// The interval has passed; the Ping waits for a frame boundary.
    due: bool,
    /// Bytes of [`PING_FRAME`] written of the Ping in progress. A Ping,
    /// once begun, is finished before any other byte goes to the client.
    writing: Option<usize>,
    /// No new Pings: the backend sent a Close frame, or the tunnel shut
    /// the client's write side.
    stopped: bool,
    /// Pings sent: the tunnel log's `pings`.
    sent: Arc<AtomicU64>,
    /// `balancer_websocket_pings_total` of the pool.
    metric: Option<IntCounter>,
}

/// What the schedule says at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The client has been quiet for the interval since its last byte and
    /// since the last Ping.
    PingNow,
    /// Look again at this [`now_ms`] time.
    WaitUntil(u64),
}

/// The schedule as a pure function of the times involved.
pub fn next(now: u64, heard: u64, pinged: u64, interval_ms: u64) -> Next {
    let at = heard.max(pinged).saturating_add(interval_ms);
    if now >= at {
        Next::PingNow
    } else {
        Next::WaitUntil(at)
    }
}

impl Keepalive {
    /// Pings after `interval` of client silence, counted from now.
    pub fn new(interval: Duration, metric: Option<IntCounter>, sent: Arc<AtomicU64>) -> Self {
        let now = now_ms();
        let interval_ms = millis(interval).max(1);
        Self {
            interval_ms,
            heard: now,
            pinged: 0,
            timer: Box::pin(tokio::time::sleep_until(
                instant_of(now.saturating_add(interval_ms)).into(),
            )),
            due: false,
            writing: None,
            stopped: false,
            sent,
            metric,
        }
    }

    /// The client sent bytes at `now`.
    pub fn heard(&mut self, now: u64) {
        self.heard = now;
    }

    /// No Pings from now on (a Ping in progress is still finished).
    pub fn stop(&mut self) {
        self.stopped = true;
        self.due = false;
    }

    /// A Ping is waiting for the backend's current frame to end.
    pub fn due(&self) -> bool {
        self.due
    }

    /// Writes the rest of a Ping in progress, if any, into `raw` and
    /// flushes it.
    pub fn poll_finish<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        raw: &mut W,
    ) -> Poll<io::Result<()>> {
        while let Some(done) = self.writing {
            if done == PING_FRAME.len() {
                ready!(Pin::new(&mut *raw).poll_flush(cx))?;
                self.writing = None;
                self.sent.fetch_add(1, Ordering::Relaxed);
                if let Some(m) = &self.metric {
                    m.inc();
                }
                break;
            }
            let n = ready!(Pin::new(&mut *raw).poll_write(cx, &PING_FRAME[done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.writing = Some(done + n);
        }
        Poll::Ready(Ok(()))
    }

    /// Finishes a Ping in progress, checks the schedule and, when a Ping
    /// is due and the client-bound stream is `at_boundary`, writes one
    /// into `raw`. Pending only while `raw` cannot take the Ping's bytes
    /// (its waker is registered); otherwise the timer's is.
    pub fn poll_ping<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        raw: &mut W,
        at_boundary: bool,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_finish(cx, raw))?;
        if self.stopped {
            return Poll::Ready(Ok(()));
        }
        if !self.due && self.timer.as_mut().poll(cx).is_ready() {
            match next(now_ms(), self.heard, self.pinged, self.interval_ms) {
                Next::PingNow => self.due = true,
                Next::WaitUntil(at) => {
                    // The client spoke since: wait out its silence. The
                    // new deadline is in the future, so this registers
                    // the waker; should the timer still be ready (a clock
                    // that does not advance), ping rather than spin.
                    self.timer.as_mut().reset(instant_of(at).into());
                    if self.timer.as_mut().poll(cx).is_ready() {
                        self.due = true;
                    }
                }
            }
        }
        if self.due && at_boundary {
            self.due = false;
            self.pinged = now_ms();
            let at = self.pinged.saturating_add(self.interval_ms);
            self.timer.as_mut().reset(instant_of(at).into());
            // Register the timer's waker for the next Ping (ready only if
            // the clock jumped: then the next poll pings again).
            if self.timer.as_mut().poll(cx).is_ready() {
                self.due = true;
            }
            self.writing = Some(0);
            ready!(self.poll_finish(cx, raw))?;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_after_the_interval_of_silence_and_then_each_interval() {
        // Tunnel opened at 1000 with a 200 ms interval.
        assert_eq!(next(1100, 1000, 0, 200), Next::WaitUntil(1200));
        assert_eq!(next(1200, 1000, 0, 200), Next::PingNow);
        // Pinged at 1200, no answer: the next one at 1400.
        assert_eq!(next(1300, 1000, 1200, 200), Next::WaitUntil(1400));
        assert_eq!(next(1400, 1000, 1200, 200), Next::PingNow);
        // The client answered at 1250: 200 ms after that.
        assert_eq!(next(1400, 1250, 1200, 200), Next::WaitUntil(1450));
        // No overflow at the end of time.
        assert_eq!(next(5, u64::MAX - 1, 0, 200), Next::WaitUntil(u64::MAX));
    }

    /// A writer that takes `per_call` bytes a call and says Pending every
    /// other call: Pings written in pieces come out whole and in order.
    struct Trickle {
        got: Vec<u8>,
        per_call: usize,
        flip: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.flip = !self.flip;
            if self.flip {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(self.per_call);
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_due_ping_waits_for_the_boundary_and_is_written_whole() {
        let sent = Arc::new(AtomicU64::new(0));
        let mut k = Keepalive::new(Duration::from_millis(20), None, Arc::clone(&sent));
        let mut w = Trickle {
            got: Vec::new(),
            per_call: 1,
            flip: false,
        };
        // Mid-frame: the Ping becomes due (the timer wakes the task) but
        // is not written.
        let due = std::future::poll_fn(|cx| match k.poll_ping(cx, &mut w, false) {
            Poll::Ready(Ok(())) if k.due() => Poll::Ready(()),
            Poll::Ready(Err(e)) => panic!("{e}"),
            _ => Poll::Pending,
        });
        tokio::time::timeout(Duration::from_secs(5), due)
            .await
            .expect("due within 5 s");
        assert!(w.got.is_empty(), "written inside a frame");
        // At a boundary: written in four pieces through Pending.
        std::future::poll_fn(|cx| k.poll_ping(cx, &mut w, true))
            .await
            .unwrap();
        assert_eq!(w.got, PING_FRAME);
        assert_eq!(sent.load(Ordering::Relaxed), 1);
        assert!(!k.due());
        k.stop();
        assert!(!k.due());
    }
}
