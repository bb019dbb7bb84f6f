//! The body sent upstream. Small bodies of known length are buffered so a
//! failed attempt can be replayed to another backend; everything else
//! streams through. Either way, upload progress is recorded so the response
//! timeout counts from the last byte sent, not from the start of a long
//! upload.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::BoxError;
use crate::server::activity::LastActivity;

#[derive(Debug)]
enum Inner {
    /// No body (GET and friends): replayable.
    Empty,
    /// The whole body, buffered: replayable.
    Full(Option<Bytes>),
    /// Streamed from the client as it arrives: one attempt only.
    Stream(Incoming),
}

#[derive(Debug)]
pub struct RequestBody {
    inner: Inner,
    progress: LastActivity,
    upload: Arc<Upload>,
}

/// How one attempt's upload went, so a failure the client caused (its body
/// broke off, or stalled) is not blamed on the backend.
#[derive(Debug, Default)]
pub struct Upload {
    client_failed: AtomicBool,
    finished: AtomicBool,
    /// Body bytes sent to the backend.
    bytes: std::sync::atomic::AtomicU64,
}

impl Upload {
    /// The client's body stream failed (client aborted or sent garbage).
    pub fn client_failed(&self) -> bool {
        self.client_failed.load(Ordering::Relaxed)
    }

    /// Body bytes sent to the backend so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The whole body went out.
    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }
}

/// What the proxy holds of a client's request body between attempts.
#[derive(Debug)]
pub enum ClientBody {
    Empty,
    Full(Bytes),
    /// Taken by the first attempt.
    Stream(Option<Incoming>),
}

impl ClientBody {
    /// Whether another attempt can send this body again.
    pub fn replayable(&self) -> bool {
        !matches!(self, Self::Stream(_))
    }

    /// The body for one attempt and a handle on how its upload goes;
    /// `None` when a streamed body was already sent.
    pub fn attempt(&mut self, progress: LastActivity) -> Option<(RequestBody, Arc<Upload>)> {
        let inner = match self {
            Self::Empty => Inner::Empty,
            Self::Full(b) => Inner::Full(Some(b.clone())),
            Self::Stream(s) => Inner::Stream(s.take()?),
        };
        let upload = Arc::new(Upload::default());
        // A buffered or empty body is entirely in hand already.
        if !matches!(inner, Inner::Stream(_)) {
            upload.finished.store(true, Ordering::Relaxed);
        }
        let body = RequestBody {
            inner,
            progress,
            upload: Arc::clone(&upload),
        };
        Some((body, upload))
    }
}

impl RequestBody {
    /// The whole body when it is already in hand (empty or buffered), taken
    /// out and counted as sent; `None` for a body that streams.
    pub fn take_whole(&mut self) -> Option<Bytes> {
        let whole = match &mut self.inner {
            Inner::Empty => Bytes::new(),
            Inner::Full(b) => b.take().unwrap_or_default(),
            Inner::Stream(_) => return None,
        };
        self.progress.touch();
        self.upload
            .bytes
            .fetch_add(whole.len() as u64, Ordering::Relaxed);
        self.upload.finished.store(true, Ordering::Relaxed);
        Some(whole)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let r = match &mut this.inner {
            Inner::Empty => Poll::Ready(None),
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Stream(s) => Pin::new(s)
                .poll_frame(cx)
                .map(|o| o.map(|r| r.map_err(BoxError::from))),
        };
        if let Poll::Ready(ready) = &r {
            this.progress.touch();
            match ready {
                Some(Err(_)) => this.upload.client_failed.store(true, Ordering::Relaxed),
                None => this.upload.finished.store(true, Ordering::Relaxed),
                Some(Ok(frame)) => {
                    if let Some(d) = frame.data_ref() {
                        this.upload
                            .bytes
                            .fetch_add(d.len() as u64, Ordering::Relaxed);
                    }
                    if this.is_end_stream() {
                        this.upload.finished.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Empty => true,
            Inner::Full(b) => b.is_none(),
            Inner::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
            Inner::Stream(s) => s.size_hint(),
        }
    }
}
