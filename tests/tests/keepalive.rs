//! HTTP/1.1 keep-alive connections park between requests (hyper's state
//! dropped, only the socket kept): what the client sees must not change.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use tests::{single_pool_config, Backend, Balancer};

const DEADLINE: Duration = Duration::from_secs(10);
const PARKED: &str = "client connection parked";

fn start(extra: &str) -> (Backend, Balancer) {
    let b = Backend::start("solo");
    let lb = Balancer::start_with(
        &single_pool_config(&[("solo", b.addr, 1)], extra),
        "info,balancer::server=trace",
    );
    (b, lb)
}

/// Reads one response (head plus a `content-length` body) from `s`,
/// leaving anything after it unread in `buf`.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> (String, String) {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..at]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= at + 4 + len {
                let body = String::from_utf8_lossy(&buf[at + 4..at + 4 + len]).into_owned();
                buf.drain(..at + 4 + len);
                return (head, body);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(end.into(), s.read(&mut chunk))
            .await
            .expect("no response in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed; got {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until the balancer closes `s` (bounded by `limit`); returns what
/// came before the close.
async fn until_closed(s: &mut TcpStream, limit: Duration, what: &str) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(limit, s.read_to_end(&mut out))
        .await
        .unwrap_or_else(|_| panic!("{what}"))
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits (bounded) until the balancer has parked `n` connections in all.
fn wait_parked(lb: &Balancer, n: usize) {
    lb.proc
        .wait_count("parked connections", n, |v| v["message"] == PARKED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_serves_split_and_pipelined_requests() {
    let (_b, lb) = start("");
    let mut s = TcpStream::connect(lb.addr()).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut s, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "solo");
    wait_parked(&lb, 1);

    // A request head split across the park: the first half wakes the
    // connection, which must not park again before the request is whole.
    s.write_all(b"GET /who").await.unwrap();
    // Not synchronisation: a pause so the halves most likely arrive apart.
    // The outcome must be the same either way.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The rest, with a second request pipelined behind it.
    s.write_all(b"ami HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut s, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "solo");
    let (head, body) = read_response(&mut s, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "ok");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    wait_parked(&lb, 2);

    // A WebSocket upgrade on the same, parked-before connection: a tunnel
    // that echoes, and whose half-close still reaches the backend.
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, _) = read_response(&mut s, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // A masked text frame "hi" (mask 0, so the payload is as is).
    s.write_all(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i'])
        .await
        .unwrap();
    let end = Instant::now() + DEADLINE;
    while buf.len() < 4 {
        let mut chunk = [0u8; 64];
        let n = tokio::time::timeout_at(end.into(), s.read(&mut chunk))
            .await
            .expect("no echo in time")
            .unwrap();
        assert!(n > 0, "tunnel closed before the echo");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(&buf[..4], &[0x81, 0x02, b'h', b'i']);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_closed_after_request_header() {
    let (_b, lb) = start("[timeouts]\nrequest_header = \"400ms\"\n");
    let mut s = TcpStream::connect(lb.addr()).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut s, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let idle_from = Instant::now();
    wait_parked(&lb, 1);
    let rest = until_closed(&mut s, DEADLINE, "parked connection never closed").await;
    assert_eq!(rest, "");
    let waited = idle_from.elapsed();
    assert!(
        waited >= Duration::from_millis(350),
        "closed after {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_parked_connections_and_exits() {
    let (_b, mut lb) = start("[timeouts]\nshutdown_grace = \"20s\"\n");
    let mut s = TcpStream::connect(lb.addr()).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut s, &mut buf).await;
    wait_parked(&lb, 1);
    lb.proc.signal("TERM");
    let rest = until_closed(&mut s, DEADLINE, "parked connection not closed at shutdown").await;
    assert_eq!(rest, "");
    // Well within the 20 s grace: nothing was in flight.
    let status = lb.proc.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_ask_to_close_are_closed_not_parked() {
    let (_b, lb) = start("");
    // `Connection: close` and HTTP/1.0 (no keep-alive): the balancer closes
    // after the response, which for HTTP/1.0 may be what ends the body.
    for request in [
        &b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        &b"GET /whoami HTTP/1.0\r\n\r\n"[..],
    ] {
        for _ in 0..20 {
            let mut s = TcpStream::connect(lb.addr()).await.unwrap();
            s.write_all(request).await.unwrap();
            let out = until_closed(
                &mut s,
                Duration::from_secs(5),
                "the balancer did not close the connection",
            )
            .await;
            assert!(out.starts_with("HTTP/1."), "{out}");
            assert!(out.contains(" 200 "), "{out}");
            assert!(out.ends_with("solo"), "{out}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_after_sigterm_on_an_open_connection_is_served_then_closed() {
    let (_b, mut lb) = start("[timeouts]\nshutdown_grace = \"20s\"\n");
    let mut fresh = TcpStream::connect(lb.addr()).await.unwrap();
    let mut parked = TcpStream::connect(lb.addr()).await.unwrap();
    let mut buf = Vec::new();
    parked
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut parked, &mut buf).await;
    wait_parked(&lb, 1);
    lb.proc.signal("TERM");
    lb.proc.wait_log("shutdown log", |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("shutting down"))
    });
    // A connection accepted before the signal that had sent nothing yet:
    // its request is still served, with `Connection: close`.
    fresh
        .write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let out = until_closed(&mut fresh, DEADLINE, "not closed after the response")
        .await
        .to_ascii_lowercase();
    assert!(out.starts_with("http/1.1 200"), "{out}");
    assert!(out.contains("connection: close"), "{out}");
    assert!(out.ends_with("solo"), "{out}");
    // The parked one is simply closed.
    let rest = until_closed(&mut parked, DEADLINE, "parked connection not closed").await;
    assert_eq!(rest, "");
    assert_eq!(lb.proc.wait_exit(DEADLINE).code(), Some(0));
}
