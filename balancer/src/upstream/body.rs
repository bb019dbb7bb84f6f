//! The backend's response body, read from its socket as the client takes
//! it. When it ends cleanly on a keep-alive connection, the socket goes
//! back to the pool; dropped early, the socket is closed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{ReadHalf, WriteHalf};

use super::chunked::{self, Chunk};
use super::codec::Framing;
use super::connections::{ConnectionPool, UpstreamSettings};
use super::UpstreamStream;
use crate::socket::Prefixed;
use crate::BoxError;

/// Read buffer for response heads and bodies; grows only for big heads.
pub(super) const READ_CHUNK: usize = 8 * 1024;
/// Read buffer for the rest of a body longer than this.
const BIG_READ: usize = 64 * 1024;

/// See the module doc.
#[derive(Debug)]
pub struct UpstreamBody {
    io: Option<Sock>,
    /// Bytes read past what was handed out.
    buf: BytesMut,
    framing: Framing,
    reusable: bool,
    pool: Arc<ConnectionPool>,
    /// What the socket goes back to the pool with.
    settings: UpstreamSettings,
}

/// The rest of a streamed upload, driven while the response is read.
pub(super) type Upload =
    Pin<Box<dyn std::future::Future<Output = Result<WriteHalf<UpstreamStream>, String>> + Send>>;

/// The socket a response is read from.
pub(super) enum Sock {
    /// Request sent whole (the common case).
    Whole(UpstreamStream),
    /// Request body streamed: read half here, write half back once the
    /// upload is done (`None` while it runs or after it failed).
    Split {
        rd: ReadHalf<UpstreamStream>,
        wr: Option<WriteHalf<UpstreamStream>>,
        upload: Option<Upload>,
    },
}

impl std::fmt::Debug for Sock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Whole(io) => f.debug_tuple("Whole").field(io).finish(),
            Self::Split { upload, .. } => f
                .debug_struct("Split")
                .field("uploading", &upload.is_some())
                .finish(),
        }
    }
}

impl Sock {
    /// Drives a running upload; false when it failed.
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> bool {
        if let Self::Split { wr, upload, .. } = self {
            if let Some(u) = upload.as_mut() {
                match u.as_mut().poll(cx) {
                    Poll::Pending => {}
                    Poll::Ready(Ok(w)) => {
                        *wr = Some(w);
                        *upload = None;
                    }
                    Poll::Ready(Err(e)) => {
                        tracing::debug!(error = %e, "upload to the backend failed while it answered");
                        *upload = None;
                        return false;
                    }
                }
            }
        }
        true
    }

    /// The whole socket again, if the upload finished.
    fn into_stream(self) -> Option<UpstreamStream> {
        match self {
            Self::Whole(io) => Some(io),
            Self::Split {
                rd,
                wr: Some(wr),
                upload: None,
            } => rd.is_pair_of(&wr).then(|| rd.unsplit(wr)),
            Self::Split { .. } => None,
        }
    }
}

/// The backend side of a tunnel after `101 Switching Protocols`: its socket,
/// with any bytes it sent right after the head put back in front.
pub type UpstreamIo = Prefixed<UpstreamStream>;

impl UpstreamBody {
    pub(super) fn new(
        sock: Sock,
        buf: BytesMut,
        framing: Framing,
        keep_alive: bool,
        pool: Arc<ConnectionPool>,
        settings: UpstreamSettings,
    ) -> Self {
        let reusable = keep_alive && !matches!(framing, Framing::Close | Framing::Upgrade);
        let mut body = Self {
            io: Some(sock),
            buf,
            framing,
            reusable,
            pool,
            settings,
        };
        if framing == Framing::Length(0) {
            // Nothing to read: hyper may never poll an empty body.
            body.finish();
        }
        body
    }

    /// For a `101` response: the socket, now the tunnel's.
    pub fn take_upgrade(&mut self) -> Option<UpstreamIo> {
        if self.framing != Framing::Upgrade {
            return None;
        }
        let io = self.io.take()?.into_stream()?;
        // Copied out: the 8 KiB read buffer is not kept for the tunnel's life.
        let prefix = Prefixed::<UpstreamStream>::owned(&self.buf);
        self.buf = BytesMut::new();
        Some(Prefixed::new(prefix, io))
    }

    /// The body is over: the socket goes back to the pool if it can.
    fn finish(&mut self) {
        self.framing = Framing::Length(0);
        if let Some(sock) = self.io.take() {
            if self.reusable && self.buf.is_empty() {
                if let Some(io) = sock.into_stream() {
                    self.pool.checkin(io, &self.settings);
                }
            }
        }
    }

    /// Whether the rest of the body is already read (a small response
    /// comes with its head): nothing to gain from reading ahead.
    pub fn is_in_hand(&self) -> bool {
        match self.framing {
            Framing::Length(n) => self.buf.len() as u64 >= n,
            Framing::Upgrade => true,
            _ => false,
        }
    }

    fn is_done(&self) -> bool {
        matches!(self.framing, Framing::Length(0) | Framing::Upgrade)
    }

    /// Reads more from the socket into `buf`; `Ok(false)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let Some(sock) = self.io.as_mut() else {
            return Poll::Ready(Ok(false));
        };
        if !sock.poll_upload(cx) {
            self.reusable = false;
        }
        if self.buf.capacity() - self.buf.len() < 1024 {
            // A long body is read in bigger pieces: 8x fewer reads (and
            // pieces to pass on) for a download of megabytes.
            let want = match self.framing {
                Framing::Length(left) if left > BIG_READ as u64 => BIG_READ,
                _ => READ_CHUNK,
            };
            self.buf.reserve(want);
        }
        let read = match sock {
            Sock::Whole(io) => tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut self.buf),
            Sock::Split { rd, .. } => {
                tokio_util::io::poll_read_buf(Pin::new(rd), cx, &mut self.buf)
            }
        };
        match read {
            Poll::Ready(Ok(n)) => Poll::Ready(Ok(n > 0)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Decodes the chunked coding from `buf` (see [`chunked::decode`]).
    fn decode_chunked(&mut self) -> Result<Option<Bytes>, String> {
        let Framing::Chunked(mut state) = self.framing else {
            return Ok(None);
        };
        let data = chunked::decode(&mut state, &mut self.buf)?;
        if state == Chunk::Done {
            self.finish();
        } else {
            self.framing = Framing::Chunked(state);
        }
        Ok(data)
    }
}

fn body_error(msg: impl Into<String>) -> BoxError {
    io::Error::other(msg.into()).into()
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.framing {
                Framing::Length(0) | Framing::Upgrade => return Poll::Ready(None),
                Framing::Length(left) => {
                    if !this.buf.is_empty() {
                        let n = (left.min(this.buf.len() as u64)) as usize;
                        let data = this.buf.split_to(n).freeze();
                        this.framing = Framing::Length(left - n as u64);
                        if left == n as u64 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Chunked(_) => match this.decode_chunked() {
                    Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(None) if this.is_done() => return Poll::Ready(None),
                    Ok(None) => {}
                    Err(e) => {
                        this.io = None;
                        return Poll::Ready(Some(Err(body_error(e))));
                    }
                },
                Framing::Close => {
                    if !this.buf.is_empty() {
                        let data = this.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            match this.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Ok(false)) => {
                    if this.framing == Framing::Close {
                        this.io = None;
                        this.framing = Framing::Length(0);
                        return Poll::Ready(None);
                    }
                    this.io = None;
                    return Poll::Ready(Some(Err(body_error(
                        "backend closed the connection in the middle of the body",
                    ))));
                }
                Poll::Ready(Err(e)) => {
                    this.io = None;
                    return Poll::Ready(Some(Err(body_error(format!(
                        "reading the response body: {e}"
                    )))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Upgrade => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
