//! The HTTP/1.1 client the balancer speaks to its backends with.
//!
//! Built for the proxy's hot path rather than taken from hyper-util: the
//! request is written and the response read by the task that serves the
//! client (no connection task, no channel hop per request), and the pool of
//! idle connections is a short list per backend behind an uncontended lock
//! that holds only sockets: an idle upstream connection has no buffers.
//!
//! ```text
//! checkout ─▶ write head (+ body) ─▶ read head (skip 1xx) ─▶ UpstreamBody
//!   │ stale reused socket: once more on a new one        │ body done, keep-alive
//!   ▼                                                    ▼
//! connect (timeouts.connect)                          checkin (max_idle, upstream_idle)
//! ```
//!
//! Framing follows RFC 9112 section 6: no body for HEAD, 1xx, 204 and 304;
//! chunked when the backend says so; `Content-Length`; otherwise the body
//! ends when the backend closes (and the connection is not reused).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::BoxError;
use super::{ProxyError, RequestBody};
use crate::runtime::UpstreamSettings;
use crate::server::activity::now_ms;
use crate::server::prefixed::Prefixed;

/// The most header fields a backend's response head may have.
const MAX_HEADERS: usize = 128;
/// The largest response head accepted from a backend.
const MAX_HEAD: usize = 64 * 1024;
/// Read buffer for response heads and bodies; grows only for big heads.
const READ_CHUNK: usize = 8 * 1024;

/// Idle sockets with the time (in [`now_ms`]) each went idle, newest last.
type IdleList = Mutex<Vec<(TcpStream, u64)>>;

/// Keep-alive connections to one backend, and how to open new ones.
#[derive(Debug)]
pub struct UpstreamPool {
    addr: SocketAddr,
    settings: UpstreamSettings,
    connect_histogram: Option<prometheus::Histogram>,
    /// One list per worker thread (see [`crate::server::workers`]): a
    /// socket is reused by the thread whose reactor it is registered with.
    /// Newest last; entries are (socket, when it went idle in [`now_ms`]).
    idle: Box<[IdleList]>,
}

impl UpstreamPool {
    pub fn new(
        addr: SocketAddr,
        settings: UpstreamSettings,
        connect_histogram: Option<prometheus::Histogram>,
    ) -> Arc<Self> {
        let pool = Arc::new(Self {
            addr,
            settings,
            connect_histogram,
            idle: (0..crate::server::workers::count())
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
        });
        // Idle sockets close after `upstream_idle` even when no request
        // comes to notice: a reaper that lives as long as the pool.
        if settings.max_idle > 0 {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(reap(Arc::downgrade(&pool), settings.idle_timeout));
            }
        }
        pool
    }

    /// Idle connections right now.
    pub fn idle_count(&self) -> usize {
        self.idle
            .iter()
            .map(|l| l.lock().map(|v| v.len()).unwrap_or(0))
            .sum()
    }

    /// This thread's idle list.
    fn mine(&self) -> &IdleList {
        &self.idle[crate::server::workers::current() % self.idle.len()]
    }

    /// The newest idle socket that is still open, if any.
    fn checkout(&self) -> Option<TcpStream> {
        let limit = self.settings.idle_timeout.as_millis() as u64;
        let now = now_ms();
        loop {
            let (io, since) = self.mine().lock().ok()?.pop()?;
            if now.saturating_sub(since) >= limit || !still_open(&io) {
                continue;
            }
            return Some(io);
        }
    }

    /// A socket whose exchange finished cleanly goes back for the next request.
    fn checkin(&self, io: TcpStream) {
        if self.settings.max_idle == 0 {
            return;
        }
        let Ok(mut idle) = self.mine().lock() else {
            return;
        };
        // The cap is per worker list: each worker keeps up to `max_idle`
        // divided among them (at least one).
        let cap = (self.settings.max_idle / self.idle.len()).max(1);
        if idle.len() < cap {
            idle.push((io, now_ms()));
        }
    }

    /// Closes sockets idle for longer than `upstream_idle`.
    fn reap_expired(&self) {
        let limit = self.settings.idle_timeout.as_millis() as u64;
        let now = now_ms();
        for list in self.idle.iter() {
            let expired: Vec<(TcpStream, u64)> = match list.lock() {
                Ok(mut idle) => {
                    let keep = idle
                        .iter()
                        .position(|(_, since)| now.saturating_sub(*since) < limit);
                    let n = keep.unwrap_or(idle.len());
                    idle.drain(..n).collect()
                }
                Err(_) => return,
            };
            // Closed outside the lock.
            drop(expired);
        }
    }

    async fn connect(&self) -> Result<TcpStream, ProxyError> {
        let start = std::time::Instant::now();
        let limit = self.settings.connect_timeout;
        let io = match tokio::time::timeout(limit, TcpStream::connect(self.addr)).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(ProxyError::ConnectTimeout(limit))
            }
            Ok(Err(e)) => return Err(ProxyError::Connect(format!("{}: {e}", self.addr))),
            Err(_) => return Err(ProxyError::ConnectTimeout(limit)),
        };
        let _ = io.set_nodelay(true);
        if let Some(h) = &self.connect_histogram {
            h.observe(start.elapsed().as_secs_f64());
        }
        Ok(io)
    }

    /// Sends `req` (origin-form URI, HTTP/1.1) and returns the response
    /// head with its body streaming from the socket.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        authority: &http::uri::Authority,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let (parts, mut body) = req.into_parts();
        let whole = body.take_whole();
        let length = match &whole {
            Some(b) => Some(b.len() as u64),
            None => body.size_hint().exact(),
        };
        let mut head = Vec::with_capacity(256);
        let chunked = encode_head(&parts, authority, length, &mut head);
        let idempotent = super::is_idempotent(&parts.method);
        let no_body = parts.method == Method::HEAD;

        // A reused socket the backend closed while it was idle fails at once;
        // that costs one more try on a fresh socket, not an error.
        let mut reused = self.checkout();
        let Some(whole) = whole else {
            return self
                .send_stream(reused, &head, body, chunked, no_body)
                .await;
        };
        loop {
            let fresh = reused.is_none();
            let io = match reused.take() {
                Some(io) => io,
                None => self.connect().await?,
            };
            match exchange_whole(io, &head, &whole).await {
                Ok((io, buf, head)) => {
                    return Ok(self.response(Sock::Whole(io), buf, head, no_body));
                }
                Err(Failed {
                    error,
                    written: false,
                }) if !fresh => {
                    tracing::debug!(backend = %self.addr, error = %error, "stale pooled connection: retrying on a new one");
                }
                Err(Failed { error, .. }) if !fresh && idempotent => {
                    tracing::debug!(backend = %self.addr, error = %error, "pooled connection closed before answering: retrying on a new one");
                }
                Err(Failed { error, .. }) => return Err(ProxyError::Upstream(error)),
            }
        }
    }

    /// A body that streams from the client: the upload goes on while the
    /// response comes back (a backend may answer, or echo, before the
    /// upload ends), so the socket is split and the upload is driven by
    /// whoever waits on the backend: this call, then the response body.
    async fn send_stream(
        self: &Arc<Self>,
        mut reused: Option<TcpStream>,
        head: &[u8],
        mut body: RequestBody,
        chunked: bool,
        no_body: bool,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let io = loop {
            let fresh = reused.is_none();
            let mut io = match reused.take() {
                Some(io) => io,
                None => self.connect().await?,
            };
            match io.write_all(head).await {
                Ok(()) => break io,
                Err(e) if !fresh => {
                    tracing::debug!(backend = %self.addr, error = %e, "stale pooled connection: retrying on a new one");
                }
                Err(e) => return Err(ProxyError::Upstream(format!("writing the request: {e}"))),
            }
        };
        let (mut rd, wr) = io.into_split();
        let mut upload: Upload = Box::pin(async move {
            let mut wr = wr;
            write_body(&mut wr, &mut body, chunked).await.map(|()| wr)
        });
        let mut buf = BytesMut::new();
        let mut uploaded: Option<Result<OwnedWriteHalf, String>> = None;
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
                let why = match uploaded {
                    Some(Err(upload_error)) => upload_error,
                    _ => e,
                };
                return Err(ProxyError::Upstream(why));
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
        Ok(self.response(sock, buf, head, no_body))
    }

    fn response(
        self: &Arc<Self>,
        sock: Sock,
        buf: BytesMut,
        head: Head,
        no_body: bool,
    ) -> Response<UpstreamBody> {
        let status = head.status;
        let framing = if status == StatusCode::SWITCHING_PROTOCOLS {
            Framing::Upgrade
        } else if no_body || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
        {
            Framing::Length(0)
        } else {
            head.framing
        };
        let reusable = head.keep_alive && !matches!(framing, Framing::Close | Framing::Upgrade);
        let mut body = UpstreamBody {
            io: Some(sock),
            buf,
            framing,
            reusable,
            pool: Arc::clone(self),
        };
        if framing == Framing::Length(0) {
            // Nothing to read: hyper may never poll an empty body.
            body.finish();
        }
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        resp
    }
}

/// Wakes up every `idle_timeout / 2` (at least 100 ms) to close expired idle
/// sockets; ends when the pool is gone.
async fn reap(pool: Weak<UpstreamPool>, idle_timeout: Duration) {
    let period = (idle_timeout / 2).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(p) => p.reap_expired(),
            None => return,
        }
    }
}

/// An idle socket that the backend has not closed (and sent nothing on):
/// a readiness check first, so the common case costs no system call.
fn still_open(io: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match io.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}

/// Writes the request line and headers into `out`; returns whether the
/// body goes chunked (`length` unknown).
fn encode_head(
    parts: &http::request::Parts,
    authority: &http::uri::Authority,
    length: Option<u64>,
    out: &mut Vec<u8>,
) -> bool {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(if pq.is_empty() { b"/" } else { pq.as_bytes() });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut has_host = false;
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        has_host |= name == header::HOST;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !has_host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(authority.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let chunked = match length {
        Some(0)
            if !matches!(parts.method, Method::POST | Method::PUT | Method::PATCH)
                && !parts.headers.contains_key(header::CONTENT_LENGTH) =>
        {
            false
        }
        Some(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
            false
        }
        None => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            true
        }
    };
    out.extend_from_slice(b"\r\n");
    chunked
}

/// A failed exchange: what went wrong, and whether any of the request
/// reached the socket.
struct Failed {
    error: String,
    written: bool,
}

type Exchanged = (TcpStream, BytesMut, Head);

/// Writes head and (buffered) body in one go, then reads the response head.
async fn exchange_whole(mut io: TcpStream, head: &[u8], body: &Bytes) -> Result<Exchanged, Failed> {
    let written = if body.is_empty() {
        io.write_all(head).await
    } else {
        write_two(&mut io, head, body).await
    };
    if let Err(e) = written {
        return Err(Failed {
            error: format!("writing the request: {e}"),
            written: false,
        });
    }
    let mut buf = BytesMut::new();
    match read_head(&mut io, &mut buf).await {
        Ok(h) => Ok((io, buf, h)),
        Err(error) => Err(Failed {
            error,
            written: true,
        }),
    }
}

/// Writes `a` then `b` with vectored writes (one system call when both fit).
async fn write_two(io: &mut TcpStream, a: &[u8], b: &[u8]) -> io::Result<()> {
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

/// A parsed response head.
#[derive(Debug)]
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

/// Reads until a final (non-1xx, or 101) response head is in `buf`, and
/// takes it out of `buf`.
async fn read_head<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut) -> Result<Head, String> {
    loop {
        if !buf.is_empty() {
            match parse_head(buf)? {
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
            return Err(format!("response head over {MAX_HEAD} bytes"));
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(READ_CHUNK);
        }
        match rd.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Err("connection closed before the response".into()),
            Ok(0) => return Err("connection closed in the response head".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading the response: {e}")),
        }
    }
}

/// Parses a complete head at the start of `buf` (taking it out), `None`
/// when more bytes are needed.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, String> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("invalid response head: {e}")),
    };
    let code = resp.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| format!("invalid response status {code}"))?;
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut other_coding = false;
    let mut close = version == Version::HTTP_10;
    let mut keep_alive_10 = false;
    // Names now, values as ranges of the head: once the head is split off,
    // they share its bytes instead of being copied.
    let base = buf.as_ptr() as usize;
    let mut parsed: Vec<(HeaderName, usize, usize)> = Vec::with_capacity(resp.headers.len());
    for f in resp.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| format!("invalid response header name {:?}", f.name))?;
        let value = std::str::from_utf8(f.value).unwrap_or("");
        if name == header::CONTENT_LENGTH {
            let n = value
                .trim()
                .parse::<u64>()
                .map_err(|_| "invalid content-length from the backend".to_string())?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting content-length from the backend".into());
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            // Only the last coding decides the framing (RFC 9112 6.3).
            let last_chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
            chunked = last_chunked;
            other_coding = !last_chunked;
        } else if name == header::CONNECTION {
            for token in value.split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive_10 = true;
                }
            }
        }
        let start = f.value.as_ptr() as usize - base;
        parsed.push((name, start, start + f.value.len()));
    }
    let raw = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(parsed.len());
    for (name, start, end) in parsed {
        let value = HeaderValue::from_maybe_shared(raw.slice(start..end))
            .map_err(|_| format!("invalid value for response header {name}"))?;
        headers.append(name, value);
    }
    if version == Version::HTTP_10 && keep_alive_10 {
        close = false;
    }
    let framing = if other_coding {
        Framing::Close
    } else if chunked {
        Framing::Chunked(Chunk::Size)
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    Ok(Some(Head {
        status,
        version,
        headers,
        framing,
        keep_alive: !close,
    }))
}

/// How the response body is delimited, and how much of it is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes left.
    Length(u64),
    /// Chunked, in this state.
    Chunked(Chunk),
    /// Until the backend closes.
    Close,
    /// 101: no body; the socket becomes the tunnel's.
    Upgrade,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many data bytes left in the chunk.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

/// The backend's response body, read from its socket as the client takes
/// it. When it ends cleanly on a keep-alive connection, the socket goes
/// back to the pool; dropped early, the socket is closed.
#[derive(Debug)]
pub struct UpstreamBody {
    io: Option<Sock>,
    /// Bytes read past what was handed out.
    buf: BytesMut,
    framing: Framing,
    reusable: bool,
    pool: Arc<UpstreamPool>,
}

/// The rest of a streamed upload, driven while the response is read.
type Upload = Pin<Box<dyn std::future::Future<Output = Result<OwnedWriteHalf, String>> + Send>>;

/// The socket a response is read from.
enum Sock {
    /// Request sent whole (the common case).
    Whole(TcpStream),
    /// Request body streamed: read half here, write half back once the
    /// upload is done (`None` while it runs or after it failed).
    Split {
        rd: OwnedReadHalf,
        wr: Option<OwnedWriteHalf>,
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
    fn into_stream(self) -> Option<TcpStream> {
        match self {
            Self::Whole(io) => Some(io),
            Self::Split {
                rd,
                wr: Some(wr),
                upload: None,
            } => rd.reunite(wr).ok(),
            Self::Split { .. } => None,
        }
    }
}

/// The backend side of a tunnel after `101 Switching Protocols`: its socket,
/// with any bytes it sent right after the head put back in front.
pub type UpstreamIo = Prefixed<TcpStream>;

impl UpstreamBody {
    /// For a `101` response: the socket, now the tunnel's.
    pub fn take_upgrade(&mut self) -> Option<UpstreamIo> {
        if self.framing != Framing::Upgrade {
            return None;
        }
        let io = self.io.take()?.into_stream()?;
        // Copied out: the 8 KiB read buffer is not kept for the tunnel's life.
        let prefix = Prefixed::<TcpStream>::owned(&self.buf);
        self.buf = BytesMut::new();
        Some(Prefixed::new(prefix, io))
    }

    /// The body is over: the socket goes back to the pool if it can.
    fn finish(&mut self) {
        self.framing = Framing::Length(0);
        if let Some(sock) = self.io.take() {
            if self.reusable && self.buf.is_empty() {
                if let Some(io) = sock.into_stream() {
                    self.pool.checkin(io);
                }
            }
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
            self.buf.reserve(READ_CHUNK);
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

    /// Decodes chunked framing from `buf`: `Some(data)` for a piece of
    /// body, `None` when more bytes are needed (or the body ended).
    fn decode_chunked(&mut self) -> Result<Option<Bytes>, String> {
        loop {
            let Framing::Chunked(state) = self.framing else {
                return Ok(None);
            };
            match state {
                Chunk::Size => {
                    let Some(end) = find_crlf(&self.buf) else {
                        if self.buf.len() > 4096 {
                            return Err("chunk size line too long".into());
                        }
                        return Ok(None);
                    };
                    let line = &self.buf[..end];
                    let digits = line
                        .iter()
                        .position(|b| *b == b';' || *b == b' ' || *b == b'\t')
                        .map_or(line, |i| &line[..i]);
                    let size = std::str::from_utf8(digits)
                        .ok()
                        .filter(|s| !s.is_empty() && s.len() <= 16)
                        .and_then(|s| u64::from_str_radix(s, 16).ok())
                        .ok_or_else(|| "invalid chunk size".to_string())?;
                    self.buf.advance(end + 2);
                    self.framing = Framing::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
                Chunk::Data(left) => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    let n = (left.min(self.buf.len() as u64)) as usize;
                    let data = self.buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.framing = Framing::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                    return Ok(Some(data));
                }
                Chunk::DataEnd => {
                    if self.buf.len() < 2 {
                        return Ok(None);
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF".into());
                    }
                    self.buf.advance(2);
                    self.framing = Framing::Chunked(Chunk::Size);
                }
                Chunk::Trailers => {
                    let Some(end) = find_crlf(&self.buf) else {
                        if self.buf.len() > MAX_HEAD {
                            return Err("trailers too long".into());
                        }
                        return Ok(None);
                    };
                    self.buf.advance(end + 2);
                    if end == 0 {
                        self.finish();
                        return Ok(None);
                    }
                }
            }
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::proxy::ClientBody;
    use crate::server::activity::LastActivity;

    /// A backend on loopback that answers each request head it reads with
    /// the next of `answers` (on whichever connection it came), counting
    /// connections; an answer of "" closes the connection instead, and one
    /// ending in `<close>` closes it after writing the rest.
    async fn backend(answers: Vec<&'static str>) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&conns);
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                let answers = Arc::clone(&answers);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    loop {
                        let mut chunk = [0u8; 4096];
                        let n = match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        seen.extend_from_slice(&chunk[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let answer = answers.lock().unwrap().next().unwrap_or("");
                            if answer.is_empty() {
                                return;
                            }
                            let (answer, close) = match answer.strip_suffix("<close>") {
                                Some(a) => (a, true),
                                None => (answer, false),
                            };
                            if s.write_all(answer.as_bytes()).await.is_err() || close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, conns)
    }

    fn pool(addr: SocketAddr) -> Arc<UpstreamPool> {
        let settings = UpstreamSettings {
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            max_idle: 4,
        };
        UpstreamPool::new(addr, settings, None)
    }

    async fn request(
        pool: &Arc<UpstreamPool>,
        method: Method,
    ) -> Result<(StatusCode, Bytes), ProxyError> {
        let (body, _upload) = ClientBody::Empty.attempt(LastActivity::new()).unwrap();
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = http::Uri::from_static("/x?y=1");
        let authority = http::uri::Authority::from_static("backend:80");
        let resp = pool.send(req, &authority).await?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ProxyError::Upstream(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }

    #[tokio::test]
    async fn chunked_body_with_extensions_and_trailers_then_the_socket_is_reused() {
        let (addr, conns) = backend(vec![
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ])
        .await;
        let p = pool(addr);
        let (status, body) = request(&p, Method::GET).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(&body[..], b"hello world");
        assert_eq!(p.idle_count(), 1);
        let (_, body) = request(&p, Method::GET).await.unwrap();
        assert_eq!(&body[..], b"ok");
        assert_eq!(conns.load(Ordering::Relaxed), 1, "one connection for both");
    }

    #[tokio::test]
    async fn bodiless_answers_informational_heads_and_close() {
        let (addr, conns) = backend(vec![
            // HEAD: a length, but no body follows.
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes",
            // Connection: close and no length: the body runs to the close.
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close<close>",
        ])
        .await;
        let p = pool(addr);
        assert_eq!(request(&p, Method::HEAD).await.unwrap().1.len(), 0);
        assert_eq!(request(&p, Method::GET).await.unwrap().0, 204);
        let (status, body) = request(&p, Method::GET).await.unwrap();
        assert_eq!((status.as_u16(), &body[..]), (200, &b"yes"[..]));
        assert_eq!(conns.load(Ordering::Relaxed), 1);
        // The backend closes after this answer, which ends the body.
        let (status, body) = request(&p, Method::GET).await.unwrap();
        assert_eq!((status.as_u16(), &body[..]), (200, &b"until close"[..]));
        assert_eq!(p.idle_count(), 0, "a close-delimited socket is not reused");
    }

    #[tokio::test]
    async fn a_pooled_socket_the_backend_closed_costs_a_retry_not_an_error() {
        let (addr, conns) = backend(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
            // The next request on that socket: the backend hangs up.
            "",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb",
        ])
        .await;
        let p = pool(addr);
        assert_eq!(&request(&p, Method::GET).await.unwrap().1[..], b"a");
        assert_eq!(&request(&p, Method::GET).await.unwrap().1[..], b"b");
        assert_eq!(conns.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn bad_heads_and_lengths_are_upstream_errors() {
        for answer in [
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 999999 Huh\r\n\r\n",
            "NOT HTTP\r\n\r\n",
        ] {
            let (addr, _) = backend(vec![answer]).await;
            let e = request(&pool(addr), Method::GET).await.unwrap_err();
            assert!(matches!(e, ProxyError::Upstream(_)), "{answer:?}: {e}");
        }
        // A body cut short by the backend is an error of the body, not a
        // clean end, and the socket is not reused.
        let (addr, _) = backend(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort<close>",
        ])
        .await;
        let p = pool(addr);
        let e = request(&p, Method::GET).await.unwrap_err();
        assert!(e.to_string().contains("middle of the body"), "{e}");
        assert_eq!(p.idle_count(), 0);
    }

    #[tokio::test]
    async fn idle_sockets_close_after_upstream_idle_and_max_idle_caps_the_pool() {
        let (addr, _) = backend(vec!["HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"; 8]).await;
        let settings = UpstreamSettings {
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_millis(200),
            max_idle: 1,
        };
        let p = UpstreamPool::new(addr, settings, None);
        // Two at once: two sockets, of which the pool keeps one.
        let (a, b) = tokio::join!(request(&p, Method::GET), request(&p, Method::GET));
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(p.idle_count(), 1);
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while p.idle_count() > 0 {
            assert!(std::time::Instant::now() < end, "idle socket never reaped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn the_request_head_has_host_and_framing() {
        let mut req = Request::new(());
        *req.method_mut() = Method::POST;
        *req.uri_mut() = http::Uri::from_static("http://a.example/p?q");
        req.headers_mut()
            .insert(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        let (parts, ()) = req.into_parts();
        let authority = http::uri::Authority::from_static("10.0.0.1:80");
        let mut out = Vec::new();
        assert!(!encode_head(&parts, &authority, Some(0), &mut out));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "POST /p?q HTTP/1.1\r\nhost: 10.0.0.1:80\r\ncontent-length: 0\r\n\r\n"
        );
        let mut out = Vec::new();
        assert!(encode_head(&parts, &authority, None, &mut out));
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("transfer-encoding: chunked\r\n\r\n"));
    }
}
