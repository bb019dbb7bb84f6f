//! The response body the balancer sends: the backend's body streamed through
//! (counted, never buffered) or a short local one. When it is done, or dropped
//! because the client went away, it writes the request's access-log line and
//! releases the backend's open-connection count.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use http_body::{Body, Frame, SizeHint};

use super::InFlight;
use crate::upstream::{OpenGuard, UploadProgress, UpstreamBody};
use crate::BoxError;

/// One access-log line, filled in as the request goes and written once.
#[derive(Debug)]
pub struct AccessLog {
    pub request_id: HeaderValue,
    pub listener: Arc<str>,
    pub client: std::net::IpAddr,
    pub method: Method,
    pub path: String,
    pub status: StatusCode,
    pub pool: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
    pub start: Instant,
    /// Why the balancer answered itself, when it did.
    pub error: Option<&'static str>,
    /// Set once the line is written; a log dropped unwritten (the client
    /// left before the response head) writes itself as status 499.
    pub done: bool,
    /// Where the request's metrics go (set once the pool and backend are known).
    pub pool_metrics: Option<crate::metrics::PoolMetrics>,
    pub backend_ref: Option<Arc<crate::upstream::Backend>>,
    /// The answered attempt's upload, for the request-bytes metric.
    pub upload: Option<Arc<UploadProgress>>,
}

impl AccessLog {
    /// Moves the record out (for the response body to write later), leaving
    /// a spent one behind.
    pub fn take(&mut self) -> AccessLog {
        self.done = true;
        AccessLog {
            request_id: self.request_id.clone(),
            listener: Arc::clone(&self.listener),
            client: self.client,
            method: self.method.clone(),
            path: std::mem::take(&mut self.path),
            status: self.status,
            pool: self.pool.take(),
            backend: self.backend.take(),
            start: self.start,
            error: self.error,
            done: false,
            pool_metrics: self.pool_metrics.take(),
            backend_ref: self.backend_ref.take(),
            upload: self.upload.take(),
        }
    }

    pub fn emit(&mut self, bytes: u64, complete: bool) {
        if self.done {
            return;
        }
        self.done = true;
        if let Some(m) = &self.pool_metrics {
            m.request_duration
                .observe(self.start.elapsed().as_secs_f64());
            if let Some(cause) = self.error {
                m.error(cause);
            }
        }
        if let Some(m) = self.backend_ref.as_ref().and_then(|b| b.metrics()) {
            m.request(&self.method, self.status.as_u16(), bytes);
            if let Some(u) = &self.upload {
                m.request_bytes(u.bytes());
            }
        }
        let request_id = self.request_id.to_str().unwrap_or("-");
        tracing::info!(
            target: "access",
            request_id,
            listener = &*self.listener,
            client = %self.client,
            method = %self.method,
            path = %self.path,
            status = self.status.as_u16(),
            pool = self.pool.as_deref().unwrap_or("-"),
            backend = self.backend.as_deref().unwrap_or("-"),
            duration_ms = self.start.elapsed().as_micros() as f64 / 1000.0,
            bytes,
            complete,
            error = self.error.unwrap_or("-"),
        );
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        if !self.done {
            // nginx's convention for "client closed request".
            self.status = StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST);
            self.error = Some("client_closed");
            self.emit(0, false);
        }
    }
}

#[derive(Debug)]
enum Inner {
    Upstream(UpstreamBody),
    /// Read ahead of the client by a pump (see `buffering`).
    Pumped(super::buffering::Pumped),
    /// The backend's body failed; the error waits one poll (see
    /// `ProxyBody::poll_frame`).
    Failed(Option<BoxError>),
    Local(Option<Bytes>),
}

/// See the module doc.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Inner,
    bytes: u64,
    done: bool,
    log: Option<AccessLog>,
    /// Held until the body is finished: the request counts as open on its
    /// backend, and in flight on its client connection, until then.
    _guard: Option<OpenGuard>,
    _in_flight: Option<InFlight>,
}

impl ProxyBody {
    pub fn upstream(
        body: UpstreamBody,
        log: AccessLog,
        guard: OpenGuard,
        in_flight: InFlight,
    ) -> Self {
        Self {
            inner: Inner::Upstream(body),
            bytes: 0,
            done: false,
            log: Some(log),
            _guard: Some(guard),
            _in_flight: Some(in_flight),
        }
    }

    /// A response read ahead of the client; the backend's guard is the
    /// pump's.
    pub fn pumped(body: super::buffering::Pumped, log: AccessLog, in_flight: InFlight) -> Self {
        Self {
            inner: Inner::Pumped(body),
            bytes: 0,
            done: false,
            log: Some(log),
            _guard: None,
            _in_flight: Some(in_flight),
        }
    }

    /// A body made by the balancer itself (errors), logged when sent.
    pub fn local(text: &'static str, log: Option<AccessLog>) -> Self {
        Self {
            inner: Inner::Local(Some(Bytes::from_static(text.as_bytes()))),
            bytes: 0,
            done: false,
            log,
            _guard: None,
            _in_flight: None,
        }
    }

    /// An empty body (e.g. for `101 Switching Protocols`), not logged here.
    pub fn empty() -> Self {
        Self {
            inner: Inner::Local(None),
            bytes: 0,
            done: true,
            log: None,
            _guard: None,
            _in_flight: None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let backend = match &mut this.inner {
            Inner::Upstream(b) => Pin::new(b).poll_frame(cx),
            Inner::Pumped(b) => Pin::new(b).poll_frame(cx),
            Inner::Failed(_) | Inner::Local(_) => Poll::Ready(None),
        };
        let polled = match &mut this.inner {
            Inner::Upstream(_) | Inner::Pumped(_) => match backend {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    // hyper writes the response head together with the first
                    // body bytes and drops what it holds when the body fails:
                    // a backend dying early would leave the client without
                    // even a status line. One Pending first lets hyper flush
                    // the head and what came; then the error closes the
                    // connection, so the client sees a short body, never a
                    // complete-looking one. (The socket it came from is gone.)
                    this.inner = Inner::Failed(Some(e));
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(r) => r,
            },
            Inner::Failed(e) => e.take().map(Err),
            Inner::Local(b) => b.take().map(|b| Ok(Frame::data(b))),
        };
        match &polled {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
            }
            None => this.done = true,
            Some(Err(_)) => {}
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Pumped(b) => b.is_end_stream(),
            Inner::Failed(_) => false,
            Inner::Local(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Pumped(b) => b.size_hint(),
            Inner::Failed(_) => SizeHint::default(),
            Inner::Local(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Local(None) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Some(mut log) = self.log.take() {
            let complete = self.done || self.is_end_stream();
            log.emit(self.bytes, complete);
        }
    }
}
