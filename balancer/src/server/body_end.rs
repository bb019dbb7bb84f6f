//! Whether a client request's body reached its end, for parking.
//!
//! A keep-alive HTTP/1.1 connection may be parked (hyper dropped, the
//! socket kept for the next request) only once the request body is fully
//! read: bytes of an unfinished body left on the socket would be parsed as
//! the next request (a desync, the root of request smuggling). So every
//! request body is wrapped here and marks [`ConnInfo::body_open`] until its
//! last frame is read; the listener refuses to park while it is set and
//! closes the connection instead when the response is done first.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::proxy::ConnInfo;

/// A request body that reports its end to its connection.
#[derive(Debug)]
pub struct BodyEnd {
    inner: Incoming,
    /// `None` once the end was seen (or for a body that had none).
    conn: Option<Arc<ConnInfo>>,
}

impl BodyEnd {
    /// Wraps `inner`; marks the connection's body open unless it is empty.
    pub fn new(inner: Incoming, conn: &Arc<ConnInfo>) -> Self {
        let open = !inner.is_end_stream();
        conn.body_open.store(open, Ordering::Relaxed);
        Self {
            inner,
            conn: open.then(|| Arc::clone(conn)),
        }
    }

    fn ended(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.body_open.store(false, Ordering::Relaxed);
        }
    }
}

impl Body for BodyEnd {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.ended(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.ended(),
            // An error is no end: the body stays open and the connection closes.
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
