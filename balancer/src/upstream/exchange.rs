//! One request to a backend: written and answered by the task that serves
//! the client (no connection task, no channel hop per request).
//!
//! ```text
//! checkout ─▶ write head (+ body) ─▶ read head (skip 1xx) ─▶ UpstreamBody
//!   │ stale reused socket: once more on a new one        │ body done, keep-alive
//!   ▼                                                    ▼
//! connect (timeouts.connect)                          checkin (max_idle, upstream_idle)
//! ```
//!
//! A pooled socket the backend closed while it was idle fails at once;
//! that costs one more try on a fresh socket, not an error. Only the
//! fresh socket's failure is reported, with how far the request got
//! ([`super::Reached`]).

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};

use super::body::{Sock, Upload, UpstreamBody, READ_CHUNK};
use super::codec::{self, Head, MAX_HEAD};
use super::connections::{ConnectionPool, UpstreamSettings};
use super::{RequestBody, UpstreamError, UpstreamStream};
use crate::clock::now_ms;

impl ConnectionPool {
    /// Sends `req` (origin-form URI, HTTP/1.1) and returns the response
    /// head with its body streaming from the socket.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        authority: &http::uri::Authority,
        settings: &UpstreamSettings,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let (parts, mut body) = req.into_parts();
        let whole = body.take_whole();
        let length = match &whole {
            Some(b) => Some(b.len() as u64),
            None => body.size_hint().exact(),
        };
        let mut head = Vec::with_capacity(256);
        let chunked = codec::encode_head(&parts, authority, length, &mut head);
        let idempotent = codec::is_idempotent(&parts.method);
        let head_request = parts.method == Method::HEAD;

        let mut reused = self.checkout(now_ms(), settings.proxy_header.as_ref());
        let Some(whole) = whole else {
            // Boxed: the streamed upload's state is large and rare, and
            // inline it would grow every request's future (and every move
            // of it) to its size.
            return Box::pin(self.send_stream(
                reused,
                &head,
                body,
                chunked,
                head_request,
                settings,
            ))
            .await;
        };
        loop {
            let fresh = reused.is_none();
            let io = match reused.take() {
                Some(io) => io,
                None => self.connect(settings).await?,
            };
            match exchange_whole(io, &head, &whole).await {
                Ok((io, buf, head)) => {
                    return Ok(self.response(Sock::Whole(io), buf, head, head_request, settings));
                }
                Err(e) if !fresh && e.reached() == super::Reached::No => {
                    tracing::debug!(error = %e, "stale pooled connection: retrying on a new one");
                }
                Err(e) if !fresh && idempotent => {
                    tracing::debug!(error = %e, "pooled connection closed before answering: retrying on a new one");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A body that streams from the client: the upload goes on while the
    /// response comes back (a backend may answer, or echo, before the
    /// upload ends), so the socket is split and the upload is driven by
    /// whoever waits on the backend: this call, then the response body.
    async fn send_stream(
        self: &Arc<Self>,
        mut reused: Option<UpstreamStream>,
        head: &[u8],
        mut body: RequestBody,
        chunked: bool,
        head_request: bool,
        settings: &UpstreamSettings,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let io = loop {
            let fresh = reused.is_none();
            let mut io = match reused.take() {
                Some(io) => io,
                None => self.connect(settings).await?,
            };
            match io.write_all(head).await {
                Ok(()) => break io,
                Err(e) if !fresh => {
                    tracing::debug!(error = %e, "stale pooled connection: retrying on a new one");
                }
                Err(source) => {
                    return Err(UpstreamError::Write {
                        head_sent: false,
                        source,
                    })
                }
            }
        };
        let (mut rd, wr) = tokio::io::split(io);
        let mut upload: Upload = Box::pin(async move {
            let mut wr = wr;
            match write_body(&mut wr, &mut body, chunked).await {
                Ok(()) => Ok(wr),
                Err(e) => {
                    // The backend must learn the body will not come: a
                    // half-close (TLS: close_notify first), so it answers
                    // or gives up now instead of waiting for the rest.
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), wr.shutdown())
                        .await;
                    Err(e)
                }
            }
        });
        let mut buf = BytesMut::new();
        let mut uploaded: Option<Result<WriteHalf<UpstreamStream>, String>> = None;
        let head = {
            let mut head_read = std::pin::pin!(read_head(&mut rd, &mut buf));
            loop {
                tokio::select! {
                    biased;
                    h = &mut head_read => break h,
                    u = &mut upload, if uploaded.is_none() => uploaded = Some(u),
                }
            }
        };
        let head = match head {
            Ok(h) => h,
            Err(e) => {
                return Err(match uploaded {
                    Some(Err(upload_error)) => UpstreamError::Upload(upload_error),
                    _ => e,
                });
            }
        };
        let sock = match uploaded {
            Some(Ok(wr)) => Sock::Split {
                rd,
                wr: Some(wr),
                upload: None,
            },
            // The upload failed: the response may still come, but the
            // socket is not reused.
            Some(Err(_)) => Sock::Split {
                rd,
                wr: None,
                upload: None,
            },
            None => Sock::Split {
                rd,
                wr: None,
                upload: Some(upload),
            },
        };
        Ok(self.response(sock, buf, head, head_request, settings))
    }

    fn response(
        self: &Arc<Self>,
        sock: Sock,
        buf: BytesMut,
        head: Head,
        head_request: bool,
        settings: &UpstreamSettings,
    ) -> Response<UpstreamBody> {
        let framing = head.framing_for(head_request);
        let body = UpstreamBody::new(
            sock,
            buf,
            framing,
            head.keep_alive,
            Arc::clone(self),
            *settings,
        );
        let mut resp = Response::new(body);
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        resp
    }
}

type Exchanged = (UpstreamStream, BytesMut, Head);

/// Writes head and (buffered) body in one go, then reads the response head.
async fn exchange_whole(
    mut io: UpstreamStream,
    head: &[u8],
    body: &Bytes,
) -> Result<Exchanged, UpstreamError> {
    let mut head_sent = false;
    if let Err(source) = write_two(&mut io, head, body, &mut head_sent).await {
        return Err(UpstreamError::Write { head_sent, source });
    }
    let mut buf = BytesMut::new();
    let head = read_head(&mut io, &mut buf).await?;
    Ok((io, buf, head))
}

/// Writes `a` then `b` with vectored writes (one system call when both
/// fit); `a_done` says whether all of `a` went out, also on failure.
async fn write_two(
    io: &mut UpstreamStream,
    a: &[u8],
    b: &[u8],
    a_done: &mut bool,
) -> io::Result<()> {
    let (mut a, mut b) = (a, b);
    while !a.is_empty() {
        let n = io
            .write_vectored(&[io::IoSlice::new(a), io::IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n < a.len() {
            a = &a[n..];
        } else {
            b = &b[n - a.len()..];
            a = &[];
        }
    }
    *a_done = true;
    io.write_all(b).await
}

/// Sends the body's frames, chunk-encoded when its length is unknown.
async fn write_body<W: AsyncWrite + Unpin>(
    wr: &mut W,
    body: &mut RequestBody,
    chunked: bool,
) -> Result<(), String> {
    use http_body_util::BodyExt;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("client request body failed: {e}"))?;
        let Ok(data) = frame.into_data() else {
            // Trailers are not passed on.
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let r = if chunked {
            let size = format!("{:x}\r\n", data.len());
            async {
                wr.write_all(size.as_bytes()).await?;
                wr.write_all(&data).await?;
                wr.write_all(b"\r\n").await
            }
            .await
        } else {
            wr.write_all(&data).await
        };
        r.map_err(|e| format!("writing the request body: {e}"))?;
    }
    if chunked {
        wr.write_all(b"0\r\n\r\n")
            .await
            .map_err(|e| format!("writing the request body: {e}"))?;
    }
    Ok(())
}

/// Reads until a final (non-1xx, or 101) response head is in `buf`, and
/// takes it out of `buf`.
async fn read_head<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> Result<Head, UpstreamError> {
    loop {
        if !buf.is_empty() {
            match codec::parse_head(buf).map_err(UpstreamError::Protocol)? {
                Some(head)
                    if head.status.is_informational()
                        && head.status != StatusCode::SWITCHING_PROTOCOLS =>
                {
                    // 100 Continue, 103 Early Hints: not passed on.
                    continue;
                }
                Some(head) => return Ok(head),
                None => {}
            }
        }
        if buf.len() >= MAX_HEAD {
            return Err(UpstreamError::Protocol(format!(
                "response head over {MAX_HEAD} bytes"
            )));
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(READ_CHUNK);
        }
        match rd.read_buf(buf).await {
            Ok(0) if buf.is_empty() => {
                return Err(UpstreamError::Closed(
                    "connection closed before the response".into(),
                ))
            }
            Ok(0) => {
                return Err(UpstreamError::Closed(
                    "connection closed in the response head".into(),
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(UpstreamError::Closed(format!("reading the response: {e}"))),
        }
    }
}
