//! The HTTP/2 limits over real sockets: a real balancer, a real HTTP/1.1
//! backend that records what it saw, and clients that speak HTTP/2 with
//! the `h2` crate or, for what no well-behaved client sends (floods, a
//! connection that only PINGs), raw frames. Each test asserts what the
//! client got and what the backend saw.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

// === The backend ===

/// What the backend saw.
#[derive(Debug, Default)]
struct Seen {
    /// Each request head, in arrival order.
    heads: Vec<String>,
    /// `/hold` requests waiting now, and the most at once.
    holding: usize,
    most_holding: usize,
    /// Body bytes read by `/silent`.
    body_bytes: usize,
    /// Connections that ended (the balancer closed them).
    closed: usize,
}

/// An HTTP/1.1 backend. `/hold` waits until `release` turns true, then
/// answers 200; `/silent` reads whatever body comes and never answers;
/// `/stuck` never reads past the head and never answers; anything else
/// reads its body (`Content-Length` or chunked) and answers `200 ok`.
async fn backend() -> (SocketAddr, Arc<Mutex<Seen>>, watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let (release, released) = watch::channel(false);
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            let released = released.clone();
            tokio::spawn(async move {
                serve_backend_connection(s, &record, released).await;
                record.lock().unwrap().closed += 1;
            });
        }
    });
    (addr, seen, release)
}

async fn serve_backend_connection(
    mut s: TcpStream,
    record: &Mutex<Seen>,
    mut released: watch::Receiver<bool>,
) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        record.lock().unwrap().heads.push(head.clone());
        match path.as_str() {
            "/hold" => {
                {
                    let mut r = record.lock().unwrap();
                    r.holding += 1;
                    r.most_holding = r.most_holding.max(r.holding);
                }
                let _ = released.wait_for(|r| *r).await;
                record.lock().unwrap().holding -= 1;
            }
            "/silent" => {
                record.lock().unwrap().body_bytes += buf.len();
                loop {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => record.lock().unwrap().body_bytes += n,
                    }
                }
            }
            "/stuck" => {
                // Holds the socket without reading (a closed peer cannot
                // be told from here without reading: not recorded).
                std::future::pending::<()>().await;
            }
            _ => {
                let lower = head.to_ascii_lowercase();
                let length: usize = lower
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                let chunked = lower.contains("transfer-encoding: chunked");
                while chunked && !buf.windows(5).any(|w| w == b"0\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                while buf.len() < length {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                if chunked {
                    buf.clear();
                } else {
                    buf.drain(..length);
                }
            }
        }
        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .is_err()
        {
            return;
        }
    }
}

fn config(backend: SocketAddr, extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\
         [[pool]]\nname = \"game\"\n[[pool.backend]]\nid = \"b\"\naddress = \"{backend}\"\n\
         [pool.retry]\nattempts = 0\nmax_body = 1024\n\
         [[route]]\nlistener = \"public\"\npool = \"game\"\n{extra}\n"
    )
}

/// [`config`] for a pool whose request bodies stream to the backend as
/// they come (`buffer_body_file = 0`; by default bodies up to 16 MiB are
/// read whole first, and the response timer has no upload to mind).
fn streaming(backend: SocketAddr, extra: &str) -> String {
    config(backend, extra).replacen(
        "[[pool.backend]]",
        "buffer_body_file = 0\n[[pool.backend]]",
        1,
    )
}

/// The value of `balancer_http2_limits_total{limit=...}` (0 before it is
/// ever counted).
fn http2_limit(metrics: &balancer::metrics::Metrics, limit: &str) -> u64 {
    let text = metrics.render(&balancer::metrics::Scrape::default());
    let label = format!("limit=\"{limit}\"");
    text.lines()
        .find(|l| l.starts_with("balancer_http2_limits_total{") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse().unwrap())
}

// === HTTP/2 clients ===

/// An `h2` client connection to the balancer.
async fn h2_client(lb: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(lb).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

fn request(method: &str, path: &str) -> http::request::Builder {
    http::Request::builder()
        .method(method)
        .uri(format!("http://x{path}"))
}

/// Sends a bodiless request; the status (or the stream's error) and the body.
async fn send(
    client: &mut h2::client::SendRequest<Bytes>,
    req: http::Request<()>,
) -> Result<(http::StatusCode, String), h2::Error> {
    let mut client = client.clone().ready().await?;
    let (resp, _) = client.send_request(req, true)?;
    let resp = resp.await?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(d) = body.data().await {
        let d = d?;
        let _ = body.flow_control().release_capacity(d.len());
        text.extend_from_slice(&d);
    }
    Ok((status, String::from_utf8_lossy(&text).into_owned()))
}

/// Raw frames, for what the `h2` client would never send.
mod raw {
    use super::*;

    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const HEADERS: u8 = 0x1;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const ACK: u8 = 0x1;
    pub const END_STREAM_HEADERS: u8 = 0x5;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// `GET {path}` with `:authority: x`, HPACK-encoded without the
    /// dynamic table (RFC 7541 appendix A: 2 `:method GET`, 6 `:scheme
    /// http`, 4 `:path` and 1 `:authority` as literal names).
    pub fn get(stream: u32, path: &str) -> Vec<u8> {
        let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
        block.extend_from_slice(path.as_bytes());
        block.extend_from_slice(&[0x01, 0x01, b'x']);
        frame(HEADERS, END_STREAM_HEADERS, stream, &block)
    }

    /// A frame from the balancer.
    #[derive(Debug)]
    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    /// A client connection that has sent the preface and its SETTINGS.
    pub struct Conn {
        pub s: TcpStream,
        buf: Vec<u8>,
    }

    impl Conn {
        pub async fn open(lb: SocketAddr) -> Self {
            let mut s = TcpStream::connect(lb).await.unwrap();
            let mut hello = PREFACE.to_vec();
            hello.extend(frame(SETTINGS, 0, 0, &[]));
            s.write_all(&hello).await.unwrap();
            Self { s, buf: Vec::new() }
        }

        pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            self.s.write_all(bytes).await
        }

        /// The next frame, `None` at EOF (or a reset), or `Err` when none
        /// came within `wait`. Answers the balancer's SETTINGS and PINGs.
        pub async fn next(&mut self, wait: Duration) -> Result<Option<Frame>, ()> {
            let deadline = Instant::now() + wait;
            loop {
                if self.buf.len() >= 9 {
                    let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]);
                    let total = 9 + len as usize;
                    if self.buf.len() >= total {
                        let f = Frame {
                            kind: self.buf[3],
                            flags: self.buf[4],
                            stream: u32::from_be_bytes([
                                self.buf[5],
                                self.buf[6],
                                self.buf[7],
                                self.buf[8],
                            ]),
                            payload: self.buf[9..total].to_vec(),
                        };
                        self.buf.drain(..total);
                        if f.flags & ACK == 0 && (f.kind == SETTINGS || f.kind == PING) {
                            // A SETTINGS ack is empty; a PING ack echoes.
                            let echo: &[u8] = if f.kind == PING { &f.payload } else { &[] };
                            let ack = frame(f.kind, ACK, 0, echo);
                            let _ = self.s.write_all(&ack).await;
                        }
                        return Ok(Some(f));
                    }
                }
                let mut chunk = [0u8; 16 * 1024];
                match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                    Err(_) => return Err(()),
                    Ok(Ok(0) | Err(_)) => return Ok(None),
                    Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        }

        /// Every frame until the balancer closes (10 s at most).
        pub async fn until_closed(&mut self) -> Vec<Frame> {
            let mut frames = Vec::new();
            loop {
                match self.next(Duration::from_secs(10)).await {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => return frames,
                    Err(()) => panic!("the connection stayed open; got {frames:?}"),
                }
            }
        }
    }

    /// A GOAWAY's (last stream, error code, debug data).
    pub fn goaway(f: &Frame) -> (u32, u32, String) {
        let p = &f.payload;
        (
            u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff,
            u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            String::from_utf8_lossy(&p[8..]).into_owned(),
        )
    }
}

// === Header list size and count ===

/// A header list over `max_header_bytes` is answered 431 by h2 itself; one
/// with more than `max_headers` fields is answered 431 by the balancer;
/// neither reaches the backend, and the connection serves on.
#[tokio::test]
async fn header_lists_over_the_limits_are_431_and_never_reach_a_backend() {
    let (b, seen, _release) = backend().await;
    let lb = support::serve(&config(b, "[limits]\nmax_header_bytes = 16384\n")).await;
    let mut client = h2_client(lb).await;

    let big = request("GET", "/")
        .header("x-big", "a".repeat(20_000))
        .body(())
        .unwrap();
    match send(&mut client, big).await {
        Ok((status, _)) => assert_eq!(status, 431),
        // h2 sends the 431, then resets the stream; a client may see
        // either first.
        Err(e) => assert_eq!(e.reason(), Some(h2::Reason::REFUSED_STREAM), "{e}"),
    }

    let mut many = request("GET", "/");
    for i in 0..101 {
        many = many.header(format!("x-field-{i}"), "v");
    }
    let (status, body) = send(&mut client, many.body(()).unwrap()).await.unwrap();
    assert_eq!(status, 431);
    assert!(body.contains("431"), "{body}");

    // Within both: proxied, on the same connection.
    let mut fits = request("GET", "/").header("x-fits", "a".repeat(10_000));
    for i in 0..90 {
        fits = fits.header(format!("x-field-{i}"), "v");
    }
    let (status, body) = send(&mut client, fits.body(()).unwrap()).await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "ok"));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.heads.len(), 1, "{:?}", seen.heads);
    assert!(seen.heads[0].contains("x-fits"));
}

// === Requests at backends per client connection ===

/// 10 streams on one connection with `http2_max_backend_requests = 4`:
/// the backend never has more than 4 of them at once, the other 6 wait at
/// the balancer (counted), and all 10 are answered once places free.
#[tokio::test]
async fn streams_past_the_cap_wait_for_a_place_and_are_all_answered() {
    let (b, seen, release) = backend().await;
    let (lb, metrics) = support::serve_with_metrics(&config(
        b,
        "[limits]\nhttp2_max_backend_requests = 4\nhttp2_backend_queue_timeout = \"30s\"\n",
    ))
    .await;
    let client = h2_client(lb).await;
    let mut streams = Vec::new();
    for _ in 0..10 {
        let mut c = client.clone();
        streams.push(tokio::spawn(async move {
            send(&mut c, request("GET", "/hold").body(()).unwrap()).await
        }));
    }
    support::until("4 requests at the backend", || {
        seen.lock().unwrap().holding == 4
    })
    .await;
    support::until("6 streams queued", || {
        http2_limit(&metrics, "backend_requests_queued") == 6
    })
    .await;
    assert_eq!(seen.lock().unwrap().heads.len(), 4);
    release.send(true).unwrap();
    for s in streams {
        let (status, body) = s.await.unwrap().unwrap();
        assert_eq!((status.as_u16(), body.as_str()), (200, "ok"));
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.heads.len(), 10);
    assert_eq!(seen.most_holding, 4, "more than the cap at the backend");
    assert_eq!(http2_limit(&metrics, "backend_requests_refused"), 0);
}

/// A stream that finds no place within `http2_backend_queue_timeout` gets
/// a 503 and never reaches the backend; places come back when responses
/// end; another connection has places of its own.
#[tokio::test]
async fn a_stream_that_waits_in_vain_gets_503() {
    let (b, seen, release) = backend().await;
    let (lb, metrics) = support::serve_with_metrics(&config(
        b,
        "[limits]\nhttp2_max_backend_requests = 2\nhttp2_backend_queue_timeout = \"300ms\"\n",
    ))
    .await;
    let client = h2_client(lb).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = client.clone();
        held.push(tokio::spawn(async move {
            send(&mut c, request("GET", "/hold").body(()).unwrap()).await
        }));
    }
    support::until("2 requests at the backend", || {
        seen.lock().unwrap().holding == 2
    })
    .await;

    // Another connection is not held up by this one's cap.
    let (status, _) = send(
        &mut h2_client(lb).await,
        request("GET", "/").body(()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);

    let started = Instant::now();
    let mut c = client.clone();
    let (status, body) = send(&mut c, request("GET", "/third").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("too many requests on this connection"),
        "{body}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(http2_limit(&metrics, "backend_requests_refused"), 1);
    assert!(
        !seen
            .lock()
            .unwrap()
            .heads
            .iter()
            .any(|h| h.contains("/third")),
        "the refused stream reached the backend"
    );

    release.send(true).unwrap();
    for s in held {
        assert_eq!(s.await.unwrap().unwrap().0, 200);
    }
    // Both places are back.
    for _ in 0..2 {
        let (status, _) = send(&mut c, request("GET", "/after").body(()).unwrap())
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    let heads = &seen.lock().unwrap().heads;
    assert_eq!(heads.iter().filter(|h| h.contains("/after")).count(), 2);
}

// === client_idle and PING ===

/// A connection that only sends PINGs (10 a second, under the flood
/// limit) is idle: GOAWAY (`NO_ERROR`) after `client_idle`, then closed.
#[tokio::test]
async fn pings_alone_do_not_keep_an_http2_connection_open() {
    let (b, seen, _release) = backend().await;
    let lb = support::serve(&config(b, "[timeouts]\nclient_idle = \"1s\"\n")).await;
    let mut c = raw::Conn::open(lb).await;
    let started = Instant::now();
    let mut frames = Vec::new();
    let mut payload = 0u64;
    let closed = loop {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "still open after 15 s; got {frames:?}"
        );
        payload += 1;
        if c.send(&raw::frame(raw::PING, 0, 0, &payload.to_be_bytes()))
            .await
            .is_err()
        {
            break started.elapsed();
        }
        // Frames for 100 ms, then the next PING.
        loop {
            match c.next(Duration::from_millis(100)).await {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(()) => break,
            }
        }
        if frames.iter().any(|f| f.kind == raw::GOAWAY) {
            let rest = c.until_closed().await;
            frames.extend(rest);
            break started.elapsed();
        }
    };
    let goaway = frames
        .iter()
        .find(|f| f.kind == raw::GOAWAY)
        .expect("a GOAWAY");
    assert_eq!(raw::goaway(goaway).1, 0, "an idle close, not a flood");
    assert!(
        closed >= Duration::from_millis(900),
        "closed after {closed:?}"
    );
    let acks = frames
        .iter()
        .filter(|f| f.kind == raw::PING && f.flags & raw::ACK != 0)
        .count();
    assert!(acks >= 5, "the PINGs were answered: {acks}");
    assert!(seen.lock().unwrap().heads.is_empty());
}

// === PING and SETTINGS floods ===

/// 20 PINGs at once (the default limit) are answered; 50 close the
/// connection with GOAWAY `ENHANCE_YOUR_CALM` naming the last stream the
/// client opened, counted in the metric.
#[tokio::test]
async fn a_ping_flood_closes_the_connection_with_goaway() {
    let (b, seen, _release) = backend().await;
    let (lb, metrics) = support::serve_with_metrics(&config(b, "")).await;

    // At the limit: every PING answered, and the connection serves on.
    let mut c = raw::Conn::open(lb).await;
    let pings: Vec<u8> = (0..20u64)
        .flat_map(|i| raw::frame(raw::PING, 0, 0, &i.to_be_bytes()))
        .collect();
    c.send(&pings).await.unwrap();
    c.send(&raw::get(1, "/")).await.unwrap();
    let mut acks = 0;
    let mut answered = false;
    while !(answered && acks == 20) {
        match c.next(Duration::from_secs(10)).await {
            Ok(Some(f)) if f.kind == raw::PING && f.flags & raw::ACK != 0 => acks += 1,
            // The response head on stream 1: `:status: 200` is HPACK 0x88.
            Ok(Some(f)) if f.kind == raw::HEADERS && f.stream == 1 => {
                assert_eq!(f.payload.first(), Some(&0x88), "{f:?}");
                answered = true;
            }
            Ok(Some(f)) => assert_ne!(f.kind, raw::GOAWAY, "{f:?}"),
            other => panic!("{other:?} after {acks} acks"),
        }
    }
    assert_eq!(http2_limit(&metrics, "ping_flood"), 0);
    assert_eq!(seen.lock().unwrap().heads.len(), 1);

    // Over it: a request in flight, then 50 PINGs.
    let mut c = raw::Conn::open(lb).await;
    c.send(&raw::get(3, "/hold")).await.unwrap();
    support::until("the request at the backend", || {
        seen.lock().unwrap().holding == 1
    })
    .await;
    let flood: Vec<u8> = (0..50u64)
        .flat_map(|i| raw::frame(raw::PING, 0, 0, &i.to_be_bytes()))
        .collect();
    let _ = c.send(&flood).await;
    let frames = c.until_closed().await;
    let goaway = frames
        .iter()
        .find(|f| f.kind == raw::GOAWAY)
        .expect("a GOAWAY");
    assert_eq!(raw::goaway(goaway), (3, 0xb, "ping_flood".to_string()));
    let acks = frames
        .iter()
        .filter(|f| f.kind == raw::PING && f.flags & raw::ACK != 0)
        .count();
    assert!(acks <= 20, "{acks} PINGs answered");
    support::until("the flood counted", || {
        http2_limit(&metrics, "ping_flood") == 1
    })
    .await;
    assert_eq!(seen.lock().unwrap().heads.len(), 2);
}

/// 30 SETTINGS frames at once (the limit is 10 a second) close the
/// connection with GOAWAY `ENHANCE_YOUR_CALM`; no backend hears of it.
#[tokio::test]
async fn a_settings_flood_closes_the_connection_with_goaway() {
    let (b, seen, _release) = backend().await;
    let (lb, metrics) = support::serve_with_metrics(&config(b, "")).await;
    let mut c = raw::Conn::open(lb).await;
    // One SETTINGS was sent with the preface: 9 more are within the limit.
    let within: Vec<u8> = (0..9)
        .flat_map(|_| raw::frame(raw::SETTINGS, 0, 0, &[]))
        .collect();
    c.send(&within).await.unwrap();
    let mut acks = 0;
    while acks < 10 {
        match c.next(Duration::from_secs(10)).await {
            Ok(Some(f)) if f.kind == raw::SETTINGS && f.flags & raw::ACK != 0 => acks += 1,
            Ok(Some(f)) => assert_ne!(f.kind, raw::GOAWAY, "{f:?}"),
            other => panic!("{other:?} after {acks} acks"),
        }
    }
    let flood: Vec<u8> = (0..30)
        .flat_map(|_| raw::frame(raw::SETTINGS, 0, 0, &[]))
        .collect();
    let _ = c.send(&flood).await;
    let frames = c.until_closed().await;
    let goaway = frames
        .iter()
        .find(|f| f.kind == raw::GOAWAY)
        .expect("a GOAWAY");
    assert_eq!(raw::goaway(goaway), (0, 0xb, "settings_flood".to_string()));
    support::until("the flood counted", || {
        http2_limit(&metrics, "settings_flood") == 1
    })
    .await;
    assert!(seen.lock().unwrap().heads.is_empty());
}

// === The response-head timeout and uploads ===

/// Sends `POST {path}` and returns the stream to upload the body on.
async fn post(
    client: &mut h2::client::SendRequest<Bytes>,
    path: &str,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let mut client = client.clone().ready().await.unwrap();
    client
        .send_request(request("POST", path).body(()).unwrap(), false)
        .unwrap()
}

/// A trickled upload that lasts longer than `response_header` is not cut
/// by it: the backend gets the whole body, and its `response_header`
/// starts when the body has ended (never earlier, never restarted).
#[tokio::test]
async fn a_trickled_upload_is_not_cut_and_the_backends_time_starts_at_its_end() {
    let (b, seen, _release) = backend().await;
    let lb = support::serve(&streaming(
        b,
        "[timeouts]\nresponse_header = \"1s\"\n[limits]\nupload_min_rate = 0\n",
    ))
    .await;
    let mut client = h2_client(lb).await;
    let (resp, mut body) = post(&mut client, "/silent").await;
    for i in 0..6 {
        body.send_data(Bytes::from(vec![b'a'; 100]), false).unwrap();
        support::until("the piece at the backend", || {
            seen.lock().unwrap().body_bytes >= (i + 1) * 100
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    body.send_data(Bytes::new(), true).unwrap();
    let ended = Instant::now();
    let resp = resp.await.unwrap();
    let waited = ended.elapsed();
    assert_eq!(resp.status(), 504);
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "504 {waited:?} after the body ended"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.heads.len(), 1);
    // Chunked upstream: 6 pieces of 100 bytes with their chunk framing.
    assert!(seen.body_bytes >= 600, "{}", seen.body_bytes);
}

/// A backend that stops reading the body is the one being waited for:
/// 504 after `response_header` (it used to be blamed on the client, 408).
#[tokio::test]
async fn a_backend_that_stops_reading_the_upload_gets_a_504() {
    let (b, seen, _release) = backend().await;
    let lb = support::serve(&streaming(
        b,
        "[timeouts]\nresponse_header = \"1s\"\n[limits]\nmax_request_body = 0\n",
    ))
    .await;
    let mut client = h2_client(lb).await;
    let (resp, mut body) = post(&mut client, "/stuck").await;
    // Far more than the socket buffers hold: the balancer's writes block.
    // h2 sends it as the balancer's flow-control window allows.
    let started = Instant::now();
    body.send_data(Bytes::from(vec![b'a'; 64 << 20]), true)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), resp)
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() >= Duration::from_secs(1));
    let mut text = Vec::new();
    let mut rb = resp.into_body();
    while let Some(Ok(d)) = rb.data().await {
        text.extend_from_slice(&d);
    }
    assert!(
        String::from_utf8_lossy(&text).contains("backend did not answer"),
        "{}",
        String::from_utf8_lossy(&text)
    );
    assert_eq!(seen.lock().unwrap().heads.len(), 1);
}

/// A client that stops halfway through its upload is held to the upload
/// limits (`upload_timeout` here: 408 at 2 s), not to `response_header`
/// (500 ms): waiting for the client is not the backend's time.
#[tokio::test]
async fn a_stalled_upload_is_cut_by_the_upload_limits_not_by_response_header() {
    let (b, seen, _release) = backend().await;
    let lb = support::serve(&streaming(
        b,
        "[timeouts]\nresponse_header = \"500ms\"\n\
         [limits]\nupload_timeout = \"2s\"\nupload_min_rate = 0\n",
    ))
    .await;
    let mut client = h2_client(lb).await;
    let started = Instant::now();
    let (resp, mut body) = post(&mut client, "/silent").await;
    body.send_data(Bytes::from(vec![b'a'; 500]), false).unwrap();
    let resp = resp.await.unwrap();
    let waited = started.elapsed();
    assert_eq!(resp.status(), 408);
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(6),
        "408 after {waited:?}"
    );
    assert_eq!(seen.lock().unwrap().heads.len(), 1);
    support::until("the backend connection closed", || {
        seen.lock().unwrap().closed >= 1
    })
    .await;
    drop(body);
}
