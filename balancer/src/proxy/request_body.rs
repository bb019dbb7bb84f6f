//! The body sent upstream: the client's body streamed through, recording
//! upload progress so the response timeout counts from the last byte sent,
//! not from the start of a long upload.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::server::activity::LastActivity;

#[derive(Debug)]
pub struct RequestBody {
    inner: Incoming,
    progress: LastActivity,
}

impl RequestBody {
    pub fn new(inner: Incoming, progress: LastActivity) -> Self {
        Self { inner, progress }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if r.is_ready() {
            self.progress.touch();
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
