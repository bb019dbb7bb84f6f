//! Keep-alive Pings from the balancer (`timeouts.websocket_ping`) over real
//! sockets: a quiet client gets a Ping each interval and stays past
//! `websocket_idle` while it answers (its Pong reaches the backend); one
//! that never answers is closed at `websocket_idle`; Pings go only between
//! the backend's frames, never inside one, however slowly a frame comes;
//! raw (non-WebSocket) tunnels and tunnels with the key off get none.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::Message;

/// The balancer's Ping, as it must appear on the wire: FIN + opcode 9,
/// unmasked, payload `lb`.
const PING: [u8; 4] = [0x89, 0x02, b'l', b'b'];

const WITHIN: Duration = Duration::from_secs(20);

const WS_UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// A WebSocket echo backend (tungstenite) recording every message it got,
/// control frames included.
async fn echo_backend() -> (SocketAddr, Arc<Mutex<Vec<Message>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Arc<Mutex<Vec<Message>>> = Arc::default();
    let record = Arc::clone(&got);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    record.lock().unwrap().push(m.clone());
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, got)
}

/// A backend that accepts one WebSocket handshake, then writes `stream`
/// in pieces of the given sizes (cycled), `pause` apart, and closes.
async fn streaming_backend(
    stream: Vec<u8>,
    pieces: &'static [usize],
    pause: Duration,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let (head, _) = support::read_head(&mut s).await;
        let key = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| value.trim().to_string())
            })
            .expect("a Sec-WebSocket-Key");
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        );
        s.write_all(answer.as_bytes()).await.unwrap();
        let mut at = 0;
        // Bounded: every piece is at least one byte.
        for &size in pieces.iter().cycle() {
            if at >= stream.len() {
                break;
            }
            let end = (at + size.max(1)).min(stream.len());
            if s.write_all(&stream[at..end]).await.is_err() {
                return;
            }
            at = end;
            // Pacing, not synchronisation: a slow backend, so frames take
            // longer than the ping interval to arrive.
            tokio::time::sleep(pause).await;
        }
    });
    addr
}

/// A balancer with one pool and route to `backend`; `route` lines go in
/// the route, `timeouts` in `[timeouts]`.
async fn balancer(backend: SocketAddr, route: &str, timeouts: &str) -> SocketAddr {
    support::serve(&config_text(backend, route, timeouts)).await
}

fn config_text(backend: SocketAddr, route: &str, timeouts: &str) -> String {
    format!(
        "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\
         [[pool]]\nname = \"game\"\n[[pool.backend]]\nid = \"b\"\naddress = \"{backend}\"\n\
         [[route]]\nlistener = \"public\"\npool = \"game\"\n{route}\n\
         [timeouts]\n{timeouts}\n"
    )
}

/// A raw client through its `101`: the socket and the bytes past the head.
async fn raw_client(lb: SocketAddr, upgrade: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(lb).await.unwrap();
    s.write_all(upgrade).await.unwrap();
    let (head, rest) = support::read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (s, rest)
}

/// Reads until the balancer closes the socket; the bytes and when it closed.
async fn read_to_close(s: &mut TcpStream, mut got: Vec<u8>) -> (Vec<u8>, Instant) {
    let mut chunk = [0u8; 16 * 1024];
    tokio::time::timeout(WITHIN, async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the balancer closes the tunnel in time");
    (got, Instant::now())
}

/// Splits a server-to-client byte stream into its frames; whatever is
/// left after the last whole one comes second.
fn frames(mut bytes: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut out = Vec::new();
    while bytes.len() >= 2 {
        let masked = if bytes[1] & 0x80 != 0 { 4 } else { 0 };
        let (ext, len7) = match bytes[1] & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(n as usize)),
        };
        let head = 2 + ext + masked;
        if bytes.len() < head {
            break;
        }
        let len = len7.unwrap_or_else(|| {
            bytes[2..2 + ext]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
        });
        if bytes.len() < head + len {
            break;
        }
        out.push(&bytes[..head + len]);
        bytes = &bytes[head + len..];
    }
    (out, bytes)
}

/// One unmasked frame.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![first];
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xffff => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// (1) A quiet client that answers: a Ping each interval, the tunnel open
/// well past `websocket_idle`, the Pongs at the backend, and the metric.
#[tokio::test]
async fn a_quiet_client_that_answers_gets_pings_and_stays_past_websocket_idle() {
    let (b, got) = echo_backend().await;
    let config = config::parse(&config_text(
        b,
        "",
        "websocket_idle = \"1s\"\nwebsocket_ping = \"200ms\"",
    ))
    .unwrap();
    let app = balancer::app::App::bind(config).await.unwrap();
    let lb = app.local_addr("public").unwrap();
    let metrics = app.proxy().snapshot.load().pools["game"]
        .metrics
        .clone()
        .expect("metrics on");
    tokio::spawn(app.serve(std::future::pending()));

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{lb}/ws"))
        .await
        .unwrap();
    let opened = Instant::now();
    // Only read (tungstenite answers each Ping with a Pong on the next
    // read) for 2.5 s: more than twice websocket_idle.
    let until = opened + Duration::from_millis(2500);
    let mut pings = Vec::new();
    while let Ok(m) = tokio::time::timeout_at(until, ws.next()).await {
        match m.expect("the tunnel stays open").unwrap() {
            Message::Ping(p) => {
                assert_eq!(&p[..], b"lb");
                pings.push(Instant::now());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings.len() >= 4, "{} pings in 2.5 s at 200 ms", pings.len());
    let first = pings[0] - opened;
    assert!(
        first >= Duration::from_millis(150) && first < Duration::from_millis(1500),
        "first ping after {first:?}"
    );
    for pair in pings.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(150), "pings {gap:?} apart");
    }
    // Still open: an echo comes back.
    ws.send(Message::text("still here")).await.unwrap();
    let echo = tokio::time::timeout(WITHIN, async {
        loop {
            match ws.next().await.unwrap().unwrap() {
                Message::Ping(_) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("an echo in time");
    assert_eq!(echo, Message::text("still here"));
    // The backend got the Pongs (forwarded, byte for byte) and nothing else
    // it did not send for.
    let deadline = Instant::now() + WITHIN;
    loop {
        let seen = got.lock().unwrap().clone();
        let pongs = seen
            .iter()
            .filter(|m| matches!(m, Message::Pong(p) if &p[..] == b"lb"))
            .count();
        if pongs >= pings.len() && seen.contains(&Message::text("still here")) {
            assert!(
                seen.iter()
                    .all(|m| matches!(m, Message::Pong(_)) || *m == Message::text("still here")),
                "{seen:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backend saw {pongs} pongs for {} pings: {seen:?}",
            pings.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let counted = metrics.websocket_pings.get();
    assert!(
        counted >= pings.len() as u64 && counted <= pings.len() as u64 + 2,
        "metric {counted}, client saw {}",
        pings.len()
    );
}

/// (2) A client that never answers gets Pings, and is closed at
/// `websocket_idle` all the same: the Pings are not activity.
#[tokio::test]
async fn a_client_that_never_answers_is_closed_at_websocket_idle() {
    let (b, got) = echo_backend().await;
    let lb = balancer(b, "", "websocket_idle = \"1s\"\nwebsocket_ping = \"200ms\"").await;
    let (mut s, rest) = raw_client(lb, WS_UPGRADE).await;
    let opened = Instant::now();
    let (bytes, closed) = read_to_close(&mut s, rest).await;
    let lived = closed - opened;
    assert!(
        lived >= Duration::from_millis(800) && lived < Duration::from_secs(5),
        "closed after {lived:?}"
    );
    let (frames, left) = frames(&bytes);
    assert!(left.is_empty(), "a cut frame: {left:?}");
    assert!(frames.iter().all(|f| *f == PING), "{bytes:?}");
    assert!(frames.len() >= 2, "{} pings before the close", frames.len());
    assert!(got.lock().unwrap().is_empty(), "the backend got messages");
}

/// The backend's side of (3) and (4b): a fragmented binary message of
/// frames of every length encoding, one of 70,000 bytes, a Ping of the
/// backend's own in the middle of the message, then a text message and a
/// Close. Also the index range of the fragmented message's frames.
fn backend_stream() -> (Vec<u8>, Vec<Vec<u8>>) {
    let frames = vec![
        frame(0x02, &payload(4000, 1)), // binary, no FIN
        frame(0x89, b"abc"),            // the backend's own ping
        frame(0x00, &payload(3000, 2)),
        frame(0x00, &payload(70_000, 3)),
        frame(0x00, &payload(1, 4)),
        frame(0x00, &payload(125, 5)),
        frame(0x00, &payload(126, 6)),
        frame(0x00, &[]),
        frame(0x80, &payload(2000, 7)), // continuation, FIN
        frame(0x81, b"done"),
        frame(0x88, &[0x03, 0xe8]), // Close 1000
    ];
    (frames.concat(), frames)
}

/// Pieces that split headers, end mid-payload and run across frames.
const PIECES: &[usize] = &[1, 2, 11, 700, 3000, 5, 1500, 1, 1, 900];

/// (3) A backend streaming a large fragmented message slowly, with a ping
/// interval shorter than its frames take: the client gets every byte the
/// backend sent, in order, with the balancer's Pings only between frames.
#[tokio::test]
async fn pings_go_only_between_the_backends_frames() {
    let (sent, sent_frames) = backend_stream();
    let b = streaming_backend(sent.clone(), PIECES, Duration::from_millis(8)).await;
    let lb = balancer(b, "", "websocket_idle = \"10s\"\nwebsocket_ping = \"50ms\"").await;
    let (mut s, rest) = raw_client(lb, WS_UPGRADE).await;
    let (bytes, _) = read_to_close(&mut s, rest).await;

    let (got, left) = frames(&bytes);
    assert!(left.is_empty(), "the stream ends inside a frame");
    let pings = got.iter().filter(|f| **f == PING).count();
    let backend: Vec<u8> = got
        .iter()
        .filter(|f| **f != PING)
        .flat_map(|f| f.to_vec())
        .collect();
    assert!(
        backend == sent,
        "the backend's bytes changed on the way ({} of {} bytes)",
        backend.len(),
        sent.len()
    );
    assert!(pings >= 3, "{pings} pings over the stream");
    // Pings inside the fragmented message (between its frames, as RFC
    // 6455 5.4 allows control frames), and none after the Close.
    let first = got.iter().position(|f| *f == &sent_frames[0][..]).unwrap();
    let last = got.iter().position(|f| *f == &sent_frames[8][..]).unwrap();
    assert!(
        got[first..last].contains(&&PING[..]),
        "no ping between the message's fragments"
    );
    assert_eq!(
        got.last().unwrap(),
        &&sent_frames[10][..],
        "a frame after the Close"
    );
}

/// (4) With the key off: a quiet client gets nothing and is closed at
/// `websocket_idle`, and a streamed message arrives exactly as sent.
#[tokio::test]
async fn with_pings_off_nothing_is_added() {
    let (b, _) = echo_backend().await;
    let lb = balancer(b, "", "websocket_idle = \"1s\"").await;
    let (mut s, rest) = raw_client(lb, WS_UPGRADE).await;
    let opened = Instant::now();
    let (bytes, closed) = read_to_close(&mut s, rest).await;
    assert!(bytes.is_empty(), "{bytes:?}");
    let lived = closed - opened;
    assert!(
        lived >= Duration::from_millis(800) && lived < Duration::from_secs(5),
        "closed after {lived:?}"
    );

    let (sent, _) = backend_stream();
    let b = streaming_backend(sent.clone(), &[5000, 1, 13], Duration::from_millis(2)).await;
    let lb = balancer(b, "", "websocket_idle = \"10s\"").await;
    let (mut s, rest) = raw_client(lb, WS_UPGRADE).await;
    let (bytes, _) = read_to_close(&mut s, rest).await;
    assert!(
        bytes == sent,
        "{} bytes for {} sent",
        bytes.len(),
        sent.len()
    );
}

/// (5) A raw tunnel (`route.upgrades`) has no frames to put a Ping between:
/// none is sent, whatever the key says.
#[tokio::test]
async fn raw_tunnels_get_no_pings() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let _ = support::read_head(&mut s).await;
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: mygame\r\nConnection: Upgrade\r\n\r\n",
        )
        .await
        .unwrap();
        let mut chunk = [0u8; 1024];
        while let Ok(n) = s.read(&mut chunk).await {
            if n == 0 || s.write_all(&chunk[..n]).await.is_err() {
                return;
            }
        }
    });
    let lb = balancer(
        b,
        "upgrades = [\"mygame\"]",
        "websocket_idle = \"10s\"\nwebsocket_ping = \"50ms\"",
    )
    .await;
    let (mut s, rest) = raw_client(
        lb,
        b"GET /play HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: mygame\r\n\r\n",
    )
    .await;
    assert!(rest.is_empty());
    // Ten ping intervals of silence: not a byte.
    let mut chunk = [0u8; 64];
    let quiet = tokio::time::timeout(Duration::from_millis(500), s.read(&mut chunk)).await;
    assert!(quiet.is_err(), "the raw tunnel got {quiet:?}");
    s.write_all(b"hello").await.unwrap();
    let mut back = [0u8; 5];
    tokio::time::timeout(WITHIN, s.read_exact(&mut back))
        .await
        .expect("the echo in time")
        .unwrap();
    assert_eq!(&back, b"hello");
}
