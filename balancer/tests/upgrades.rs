//! The per-route upgrade allow-list (`route.upgrades`), raw bytes over real
//! sockets: a listed protocol is offered to the backend and its `101`
//! becomes a raw tunnel (no WebSocket framing or limits on it); an
//! unlisted one is stripped and the request goes on as a plain one; a
//! `101` naming a protocol the request did not offer is a 502; WebSocket
//! works as before.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the backend saw: each request head (lower-cased), and the bytes
/// that came through a tunnel after its 101.
#[derive(Default)]
struct Seen {
    heads: Vec<String>,
    tunnelled: Vec<u8>,
}

type Shared = Arc<Mutex<Seen>>;

/// A backend that answers every request head with `answer`. After a
/// `101` it is a tunnel end: every read is answered by `reply(bytes)`.
async fn backend(answer: &'static [u8], reply: fn(&[u8]) -> Vec<u8>) -> (SocketAddr, Shared) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Shared = Arc::default();
    let shared = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = Arc::clone(&shared);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut tunnel = false;
                loop {
                    let n = match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if tunnel {
                        seen.lock()
                            .unwrap()
                            .tunnelled
                            .extend_from_slice(&chunk[..n]);
                        if s.write_all(&reply(&chunk[..n])).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end + 2]).to_ascii_lowercase();
                        seen.lock().unwrap().heads.push(head);
                        buf.drain(..end + 4);
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                        if answer.starts_with(b"HTTP/1.1 101") {
                            tunnel = true;
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// One route to the backend, with `route` (e.g. an `upgrades` line) and
/// `tables` (e.g. `[limits]`) added.
async fn balancer(backend: SocketAddr, route: &str, tables: &str) -> SocketAddr {
    support::serve(&format!(
        "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\
         [[pool]]\nname = \"game\"\n[[pool.backend]]\nid = \"b\"\naddress = \"{backend}\"\n\
         [pool.retry]\nattempts = 0\n\
         [[route]]\nlistener = \"public\"\npool = \"game\"\n{route}\n{tables}\n"
    ))
    .await
}

const WITHIN: Duration = Duration::from_secs(10);

/// Reads until `want` bytes have come (the `already` ones count).
async fn read_n(s: &mut TcpStream, mut already: Vec<u8>, want: usize) -> Vec<u8> {
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(WITHIN, async {
        while already.len() < want {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed after {} of {want} bytes", already.len());
            already.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the bytes in time");
    already
}

/// Waits (bounded) until the backend saw `want` tunnelled bytes.
async fn backend_got(seen: &Shared, want: usize) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let got = seen.lock().unwrap().tunnelled.clone();
        if got.len() >= want {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backend got {} of {want} bytes",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn echo(bytes: &[u8]) -> Vec<u8> {
    bytes.to_vec()
}

const GAME_101: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: mygame\r\nConnection: Upgrade\r\n\r\nhello";

const GAME_UPGRADE: &[u8] =
    b"GET /play HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: h2c, mygame\r\n\r\n";

/// A listed protocol is offered alone (h2c dropped beside it), its 101
/// reaches the client, and bytes go both ways untouched; with a WebSocket
/// message limit set, 64 KiB in one go still pass: no frame rules apply.
#[tokio::test]
async fn an_allowed_protocol_becomes_a_raw_tunnel_both_ways() {
    let (b, seen) = backend(GAME_101, echo).await;
    let lb = balancer(
        b,
        "upgrades = [\"websocket\", \"mygame\"]",
        "[limits]\nwebsocket_max_message = 16\n",
    )
    .await;
    let mut s = TcpStream::connect(lb).await.unwrap();
    s.write_all(GAME_UPGRADE).await.unwrap();
    let (head, rest) = support::read_head(&mut s).await;
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(lower.contains("\r\nupgrade: mygame\r\n"), "{head}");
    assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{head}");
    // What the backend sent right after its head comes first.
    assert_eq!(read_n(&mut s, rest, 5).await, b"hello");

    let backend_head = seen.lock().unwrap().heads[0].clone();
    assert!(
        backend_head.contains("\r\nupgrade: mygame\r\n"),
        "{backend_head}"
    );
    assert!(
        backend_head.contains("\r\nconnection: upgrade\r\n"),
        "{backend_head}"
    );
    assert!(!backend_head.contains("h2c"), "{backend_head}");

    // Bytes a WebSocket tracker would take for a 64 KiB binary frame.
    let mut payload = vec![0x82u8, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0];
    payload.extend((0..65_536u32).map(|i| (i % 251) as u8));
    s.write_all(&payload).await.unwrap();
    assert_eq!(backend_got(&seen, payload.len()).await, payload);
    assert_eq!(read_n(&mut s, Vec::new(), payload.len()).await, payload);
}

/// Without `upgrades`, only WebSocket is allowed: `Upgrade: mygame` is
/// stripped and the request goes on as a plain one. A route may also drop
/// WebSocket.
#[tokio::test]
async fn an_unlisted_protocol_is_stripped() {
    let (b, seen) = backend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", echo).await;
    for route in ["", "upgrades = [\"othergame\"]"] {
        let lb = balancer(b, route, "").await;
        let mut s = TcpStream::connect(lb).await.unwrap();
        s.write_all(GAME_UPGRADE).await.unwrap();
        let (head, _) = support::read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{route}: {head}");
        let backend_head = seen.lock().unwrap().heads.pop().unwrap();
        for gone in ["upgrade:", "connection: upgrade", "mygame", "h2c"] {
            assert!(
                !backend_head.contains(gone),
                "{route}: {gone} in {backend_head}"
            );
        }
    }
    let lb = balancer(b, "upgrades = [\"mygame\"]", "").await;
    let mut s = TcpStream::connect(lb).await.unwrap();
    s.write_all(WS_UPGRADE).await.unwrap();
    let (head, _) = support::read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let backend_head = seen.lock().unwrap().heads.pop().unwrap();
    assert!(!backend_head.contains("upgrade:"), "{backend_head}");
}

/// A 101 that names another protocol than the one offered (or none, or
/// two) is a 502: the client never gets a raw socket it did not ask for,
/// and nothing it sends after reaches the backend.
#[tokio::test]
async fn a_101_with_the_wrong_token_is_a_502() {
    for answer in [
        &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: othergame\r\nConnection: Upgrade\r\n\r\n"[..],
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: mygame, othergame\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n",
    ] {
        let (b, seen) = backend(answer, echo).await;
        let lb = balancer(b, "upgrades = [\"websocket\", \"mygame\"]", "").await;
        let mut s = TcpStream::connect(lb).await.unwrap();
        s.write_all(GAME_UPGRADE).await.unwrap();
        let (head, _) = support::read_head(&mut s).await;
        let answer = String::from_utf8_lossy(answer);
        assert!(head.starts_with("HTTP/1.1 502"), "{answer:?} gave {head}");
        let _ = s.write_all(b"not for the backend").await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WITHIN, s.read_to_end(&mut rest)).await;
        assert!(seen.lock().unwrap().tunnelled.is_empty(), "{answer:?}");
    }
}

const WS_UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

const WS_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/// The backend answers every client frame with a text frame "hi".
fn hi(_: &[u8]) -> Vec<u8> {
    b"\x81\x02hi".to_vec()
}

/// WebSocket as before, on the default route and beside a custom
/// protocol: the handshake is checked, frames go both ways, and the
/// WebSocket limits apply (a message over the limit closes with 1009).
#[tokio::test]
async fn websocket_still_works_and_keeps_its_limits() {
    let (b, seen) = backend(WS_101, hi).await;
    for route in ["", "upgrades = [\"mygame\", \"websocket\"]"] {
        let lb = balancer(b, route, "[limits]\nwebsocket_max_message = 16\n").await;
        let mut s = TcpStream::connect(lb).await.unwrap();
        s.write_all(WS_UPGRADE).await.unwrap();
        let (head, rest) = support::read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{route}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("\r\nupgrade: websocket\r\n"),
            "{head}"
        );
        let before = seen.lock().unwrap().tunnelled.len();
        // A masked text frame "ping".
        let frame = [
            0x81,
            0x84,
            1,
            2,
            3,
            4,
            b'p' ^ 1,
            b'i' ^ 2,
            b'n' ^ 3,
            b'g' ^ 4,
        ];
        s.write_all(&frame).await.unwrap();
        assert_eq!(read_n(&mut s, rest, 4).await, b"\x81\x02hi");
        assert_eq!(
            backend_got(&seen, before + frame.len()).await[before..],
            frame
        );

        // 32 bytes in one message: over the limit, closed with 1009.
        let mut big = vec![0x82, 0x80 | 32, 0, 0, 0, 0];
        big.extend_from_slice(&[0u8; 32]);
        s.write_all(&big).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(WITHIN, s.read_to_end(&mut out))
            .await
            .expect("the balancer closes the tunnel");
        // A Close frame (0x88, any reason length) with code 1009.
        assert!(
            out.windows(4)
                .any(|w| w[0] == 0x88 && w[1] < 126 && w[2..] == [0x03, 0xf1]),
            "{route}: no 1009 close in {out:?}"
        );
    }
}
