//! PROXY protocol v1 and v2 on a listener, raw bytes over real sockets:
//! the client a trusted sender names is the client the backend is told of
//! (and the one limited per address); anything else is closed unheard.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use balancer::server::proxy_protocol::V2_SIGNATURE;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Heads = Arc<Mutex<Vec<String>>>;

/// A backend that records each request head (lower-cased) and answers 200.
async fn backend() -> (SocketAddr, Heads) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads: Heads = Arc::default();
    let seen = Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end + 2]).to_ascii_lowercase();
                        seen.lock().unwrap().push(head);
                        buf.drain(..end + 4);
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, heads)
}

async fn balancer(backend: SocketAddr, trusted: &str, top: &str) -> SocketAddr {
    support::serve(&format!(
        "{top}\n[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\
         [listener.proxy_protocol]\ntrusted = [\"{trusted}\"]\ntimeout = \"300ms\"\n\
         [[pool]]\nname = \"game\"\n[[pool.backend]]\nid = \"b\"\naddress = \"{backend}\"\n\
         [[route]]\nlistener = \"public\"\npool = \"game\"\n"
    ))
    .await
}

/// Sends `bytes` and reads until the balancer closes (10 s at most).
async fn exchange(lb: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(lb).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the balancer closes the connection");
    String::from_utf8_lossy(&out).into_owned()
}

const GET: &[u8] =
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n";

fn v2_ipv4(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[10, 0, 0, 1]);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

#[tokio::test]
async fn the_client_a_trusted_sender_names_is_the_client() {
    let (b, heads) = backend().await;
    let lb = balancer(b, "127.0.0.0/8", "").await;
    let mut v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\n".to_vec();
    v1.extend_from_slice(GET);
    let mut v2 = v2_ipv4([198, 51, 100, 9], 4000);
    v2.extend_from_slice(GET);
    let mut local = V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    local.extend_from_slice(GET);
    for (request, client) in [
        (v1, "203.0.113.7"),
        (v2, "198.51.100.9"),
        (local, "127.0.0.1"),
    ] {
        let answer = exchange(lb, &request).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let head = heads.lock().unwrap().pop().unwrap();
        assert!(
            head.contains(&format!("\r\nx-forwarded-for: {client}\r\n")),
            "{client}: {head}"
        );
        assert!(
            head.contains(&format!("\r\nx-real-ip: {client}\r\n")),
            "{client}: {head}"
        );
    }
}

#[tokio::test]
async fn a_missing_malformed_or_late_header_closes_the_connection_unheard() {
    let (b, heads) = backend().await;
    let lb = balancer(b, "127.0.0.0/8", "").await;
    let mut bad_v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 056324 443\r\n".to_vec();
    bad_v1.extend_from_slice(GET);
    let mut bad_v2 = v2_ipv4([1, 2, 3, 4], 1);
    bad_v2[12] = 0x22; // command 2: none such
    bad_v2.extend_from_slice(GET);
    for request in [GET.to_vec(), bad_v1, bad_v2, b"PROXY TCP4".to_vec()] {
        let answer = exchange(lb, &request).await;
        assert!(
            answer.is_empty(),
            "{:?} got {answer:?}",
            String::from_utf8_lossy(&request)
        );
    }
    assert!(
        heads.lock().unwrap().is_empty(),
        "{:?}",
        heads.lock().unwrap()
    );
}

#[tokio::test]
async fn an_untrusted_peer_is_closed_even_with_a_good_header() {
    let (b, heads) = backend().await;
    let lb = balancer(b, "10.0.0.0/8", "").await;
    let mut v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\n".to_vec();
    v1.extend_from_slice(GET);
    assert_eq!(exchange(lb, &v1).await, "");
    assert!(heads.lock().unwrap().is_empty());
}

/// The per-address limit counts the clients the header names, not the
/// sender (which speaks for all of them).
#[tokio::test]
async fn the_per_address_limit_applies_to_the_proxied_client() {
    let (b, _) = backend().await;
    let lb = balancer(b, "127.0.0.0/8", "[limits]\nmax_connections_per_ip = 1").await;
    let mut held = TcpStream::connect(lb).await.unwrap();
    held.write_all(&v2_ipv4([203, 0, 113, 7], 1)).await.unwrap();
    held.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = held.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // The same client again: over its limit, closed.
    let mut again = v2_ipv4([203, 0, 113, 7], 2);
    again.extend_from_slice(GET);
    assert_eq!(exchange(lb, &again).await, "");
    // Another client through the same sender: served.
    let mut other = v2_ipv4([203, 0, 113, 8], 3);
    other.extend_from_slice(GET);
    assert!(exchange(lb, &other).await.starts_with("HTTP/1.1 200"));
}
