//! The body of one attempt sent upstream: empty, buffered whole (so a failed
//! attempt can be replayed to another backend), or streamed from the client.
//! The upload records whom the attempt is waiting for, so the response-head
//! timeout counts only the backend's time (never restarted by the client's
//! bytes, see [`UploadProgress::backend_since`]), and so a failure the
//! client caused is not blamed on the backend.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;

use crate::clock::now_ms;
use crate::BoxError;

/// A client body that streams, whatever its type.
pub type StreamBody = BoxBody<Bytes, BoxError>;

/// What one attempt sends.
#[derive(Debug)]
pub enum AttemptBody {
    /// No body (GET and friends), or a buffered one already sent.
    Empty,
    /// The whole body, buffered.
    Full(Bytes),
    /// Streamed from the client as it arrives: one attempt only.
    Stream(StreamBody),
}

#[derive(Debug)]
pub struct RequestBody {
    inner: AttemptBody,
    upload: Arc<UploadProgress>,
}

/// A limit a client's request body broke (`[limits]`): the error its
/// body stream ends with, told apart from a broken-off body so the client
/// gets 413 or 408, not 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLimit {
    /// More than `max_request_body` bytes.
    TooLarge(u64),
    /// Not done within `upload_timeout`.
    Deadline(std::time::Duration),
    /// Slower on average than `upload_min_rate` bytes a second.
    TooSlow(u64),
}

impl std::fmt::Display for BodyLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge(n) => write!(f, "request body over {n} bytes"),
            Self::Deadline(d) => write!(f, "request body not done within {d:?}"),
            Self::TooSlow(r) => write!(f, "request body slower than {r} bytes/s"),
        }
    }
}

impl std::error::Error for BodyLimit {}

/// How one attempt's upload went, so a failure the client caused (its body
/// broke off, or stalled) is not blamed on the backend.
#[derive(Debug, Default)]
pub struct UploadProgress {
    client_failed: AtomicBool,
    /// The limit the client's body broke, when that is why it failed.
    limit: std::sync::OnceLock<BodyLimit>,
    finished: AtomicBool,
    /// Body bytes sent to the backend.
    bytes: AtomicU64,
    /// Since when ([`now_ms`]) the attempt has been waiting for the
    /// backend; 0 while it waits for the client's next body bytes.
    backend_since: AtomicU64,
}

impl UploadProgress {
    /// The client's body stream failed (client aborted or sent garbage).
    pub fn client_failed(&self) -> bool {
        self.client_failed.load(Ordering::Relaxed)
    }

    /// The `[limits]` limit the client's body broke, if that is how it failed.
    pub fn limit(&self) -> Option<BodyLimit> {
        self.limit.get().copied()
    }

    /// Body bytes sent to the backend so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The whole body went out.
    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }

    /// Since when ([`now_ms`]) the attempt has been waiting for the
    /// backend, or `None` while a streamed body waits for the client.
    ///
    /// The backend is waited for from the moment the attempt is handed to
    /// its pool (checkout, connect, the head), while a piece of the body
    /// is being written to it (a backend that stops reading), and from the
    /// end of the body on. The stamp is set when each of those starts, so
    /// the client's bytes never move it further than the write they cause,
    /// and after the last one it stays put until the response head.
    pub fn backend_since(&self) -> Option<u64> {
        match self.backend_since.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    fn waiting_on_backend(&self) {
        self.backend_since.store(now_ms(), Ordering::Relaxed);
    }
}

impl RequestBody {
    /// The body of one attempt, about to be handed to a backend's pool
    /// (the backend is waited for from now), and a handle on how its
    /// upload goes.
    pub fn new(inner: AttemptBody) -> (Self, Arc<UploadProgress>) {
        let upload = Arc::new(UploadProgress::default());
        // A buffered or empty body is entirely in hand already.
        if !matches!(inner, AttemptBody::Stream(_)) {
            upload.finished.store(true, Ordering::Relaxed);
        }
        upload.waiting_on_backend();
        let body = Self {
            inner,
            upload: Arc::clone(&upload),
        };
        (body, upload)
    }

    /// The whole body when it is already in hand (empty or buffered), taken
    /// out and counted as sent; `None` for a body that streams.
    pub fn take_whole(&mut self) -> Option<Bytes> {
        if let AttemptBody::Stream(_) = self.inner {
            return None;
        }
        let whole = match std::mem::replace(&mut self.inner, AttemptBody::Empty) {
            AttemptBody::Full(b) => b,
            _ => Bytes::new(),
        };
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
            AttemptBody::Empty => Poll::Ready(None),
            AttemptBody::Full(_) => match std::mem::replace(&mut this.inner, AttemptBody::Empty) {
                AttemptBody::Full(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                _ => Poll::Ready(None),
            },
            AttemptBody::Stream(s) => Pin::new(s).poll_frame(cx),
        };
        if r.is_pending() {
            // Waiting for the client: its time, bounded by its upload
            // limits, not by the backend's response timeout.
            this.upload.backend_since.store(0, Ordering::Relaxed);
        }
        if let Poll::Ready(ready) = &r {
            // A piece to write, or the end: the backend's turn.
            this.upload.waiting_on_backend();
            match ready {
                Some(Err(e)) => {
                    this.upload.client_failed.store(true, Ordering::Relaxed);
                    if let Some(limit) = e.downcast_ref::<BodyLimit>() {
                        let _ = this.upload.limit.set(*limit);
                    }
                }
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
            AttemptBody::Empty => true,
            AttemptBody::Full(_) => false,
            AttemptBody::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            AttemptBody::Empty => SizeHint::with_exact(0),
            AttemptBody::Full(b) => SizeHint::with_exact(b.len() as u64),
            AttemptBody::Stream(s) => s.size_hint(),
        }
    }
}
