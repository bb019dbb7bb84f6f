//! What a client sees when a backend misbehaves, over real sockets: the
//! balancer's `App` on 127.0.0.1:0 in front of a raw backend that writes
//! exactly the bytes each test gives it.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A backend that reads one request head, writes `answer`, then closes.
async fn raw_backend(answer: &'static [u8]) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s.write_all(answer).await;
            });
        }
    });
    addr
}

async fn balancer(backend: std::net::SocketAddr) -> std::net::SocketAddr {
    support::serve(&format!(
        "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\
         [[pool]]\nname = \"game\"\n[[pool.backend]]\nid = \"b\"\naddress = \"{backend}\"\n\
         [pool.retry]\nattempts = 0\n\
         [[route]]\nlistener = \"public\"\npool = \"game\"\n"
    ))
    .await
}

/// Sends `request` on a new connection and reads until the balancer closes it.
async fn exchange(lb: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(lb).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the balancer closes the connection")
        .ok();
    out
}

/// The backend promises 100 bytes, sends 5 and closes: the client gets
/// the head and what came, then the connection closes, so it can tell the
/// body is incomplete (never a body that looks complete, never nothing).
#[tokio::test]
async fn a_backend_dying_mid_body_gives_the_head_then_a_close() {
    let backend = raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello").await;
    let lb = balancer(backend).await;
    let out = exchange(lb, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-length: 100\r\n"),
        "{text:?}"
    );
    let body = &out[out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
    assert!(
        body.len() < 100,
        "the body must not look complete: {body:?}"
    );
}

/// Chunked with a Content-Length: the client gets the whole de-chunked
/// body, framed by the balancer, without the backend's length.
#[tokio::test]
async fn chunked_beside_a_content_length_reaches_the_client_whole() {
    let backend = raw_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    let lb = balancer(backend).await;
    let out = exchange(
        lb,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text:?}");
    assert!(!text.contains("content-length: 3"), "{text:?}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    assert_eq!(
        body, "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        "re-chunked by the balancer"
    );
}

/// A backend that answers with a 101 whatever was asked: a client that
/// asked for no upgrade, or for h2c, or whose 101 carries a wrong
/// Sec-WebSocket-Accept, gets a 502, never a raw socket to the backend.
#[tokio::test]
async fn a_101_that_answers_no_websocket_handshake_is_a_502() {
    let backend = raw_backend(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: bogus\r\n\r\n",
    )
    .await;
    let lb = balancer(backend).await;
    for request in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    ] {
        let out = exchange(lb, request).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 502"), "{:?} got {text:?}", String::from_utf8_lossy(request));
    }
}

/// h2c upgrade headers never reach the backend: the request goes on as a
/// plain one without Upgrade, HTTP2-Settings or Connection.
#[tokio::test]
async fn an_h2c_upgrade_is_passed_on_as_a_plain_request() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let seen = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            head.extend_from_slice(&chunk[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
        String::from_utf8_lossy(&head).to_ascii_lowercase()
    });
    let lb = balancer(backend).await;
    let out = exchange(
        lb,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"),
        "{out:?}"
    );
    let head = seen.await.unwrap();
    for gone in ["upgrade:", "http2-settings:", "connection: upgrade"] {
        assert!(!head.contains(gone), "{gone} reached the backend: {head}");
    }
}
