//! The request head a backend is sent. The Host a request routes by is the
//! Host its backend is sent, and an HTTP/1.1 request has exactly one (RFC
//! 9112 3.2); the forwarding headers say who the client is, and a client
//! cannot say it for itself. Raw bytes in, over real sockets: what the
//! client gets and what the backend saw.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Heads = Arc<Mutex<Vec<String>>>;

/// A backend that records each request head and answers 200 "ok".
async fn recording_backend() -> (std::net::SocketAddr, Heads) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads: Heads = Arc::default();
    let seen = Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&buf[..end]).into_owned());
                        buf.drain(..end + 4);
                        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, heads)
}

/// Routes: host `game.example.com` to the backend; nothing else.
async fn balancer(backend: std::net::SocketAddr) -> std::net::SocketAddr {
    balancer_with(backend, "").await
}

/// The same, with `top` (top-level keys) at the head of the file.
async fn balancer_with(backend: std::net::SocketAddr, top: &str) -> std::net::SocketAddr {
    support::serve(&format!(
        "{top}\n[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\
         [[pool]]\nname = \"game\"\n[[pool.backend]]\nid = \"b\"\naddress = \"{backend}\"\n\
         [[route]]\nlistener = \"public\"\nhost = \"game.example.com\"\npool = \"game\"\n"
    ))
    .await
}

async fn exchange(lb: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(lb).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn no_host_two_hosts_and_userinfo_get_400_and_reach_no_backend() {
    let (backend, heads) = recording_backend().await;
    let lb = balancer(backend).await;
    for request in [
        &b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: game.example.com\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        b"GET http://game.example.com:1@evil.example/ HTTP/1.1\r\nHost: game.example.com\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: game.example.com:1@evil.example\r\nConnection: close\r\n\r\n",
    ] {
        let answer = exchange(lb, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{:?} got {answer:?}",
            String::from_utf8_lossy(request)
        );
    }
    assert!(
        heads.lock().unwrap().is_empty(),
        "a backend saw {:?}",
        heads.lock().unwrap()
    );
    // HTTP/1.0 needs no Host: no route for it here, a 404, not a 400.
    assert!(exchange(lb, b"GET / HTTP/1.0\r\n\r\n")
        .await
        .starts_with("HTTP/1.0 404"));
}

#[tokio::test]
async fn an_absolute_form_target_routes_and_forwards_by_its_own_authority() {
    let (backend, heads) = recording_backend().await;
    let lb = balancer(backend).await;
    let answer = exchange(
        lb,
        b"GET http://game.example.com/x HTTP/1.1\r\nHost: elsewhere.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let seen = heads.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let head = seen[0].to_ascii_lowercase();
    assert!(head.starts_with("get /x http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nhost: game.example.com\r\n"), "{head}");
    assert!(!head.contains("elsewhere"), "{head}");
}

/// The head the backend got for `request`, lower-cased, from a balancer
/// configured with `top`.
async fn forwarded(top: &str, request: &[u8]) -> String {
    let (backend, heads) = recording_backend().await;
    let lb = balancer_with(backend, top).await;
    let answer = exchange(lb, request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let seen = heads.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    // Every line ends in CRLF, the last one too.
    format!("{}\r\n", seen[0].to_ascii_lowercase())
}

/// Every header in which a client names an address or a scheme.
const CLAIMS: &[u8] = b"GET / HTTP/1.1\r\nHost: game.example.com\r\n\
X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\nX-Forwarded-Proto: https\r\n\
X-Forwarded-Host: front.example\r\nX-Forwarded-Port: 443\r\nForwarded: for=3.3.3.3\r\n\
X-Real-IP: 4.4.4.4\r\nTrue-Client-IP: 5.5.5.5\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn an_untrusted_client_cannot_name_its_own_address_or_scheme() {
    let head = forwarded("", CLAIMS).await;
    for line in [
        "\r\nx-forwarded-for: 127.0.0.1\r\n",
        "\r\nx-forwarded-proto: http\r\n",
        "\r\nx-forwarded-host: game.example.com\r\n",
        "\r\nx-real-ip: 127.0.0.1\r\n",
    ] {
        assert!(head.contains(line), "{line:?} in {head}");
    }
    for gone in [
        "1.1.1.1",
        "2.2.2.2",
        "3.3.3.3",
        "4.4.4.4",
        "5.5.5.5",
        "front.example",
        "forwarded:",
        ": 443",
    ] {
        assert!(!head.contains(gone), "{gone:?} in {head}");
    }
    assert_eq!(head.matches("x-forwarded-for").count(), 1, "{head}");
}

#[tokio::test]
async fn a_trusted_proxys_headers_are_kept_and_appended_to() {
    let head = forwarded(
        "trusted_proxies = [\"127.0.0.0/8\"]\nclient_ip_header = \"X-Client-Address\"",
        CLAIMS,
    )
    .await;
    for line in [
        "\r\nx-forwarded-for: 1.1.1.1, 2.2.2.2, 127.0.0.1\r\n",
        // The TLS-terminating proxy in front knows the scheme, this hop does not.
        "\r\nx-forwarded-proto: https\r\n",
        "\r\nx-forwarded-host: front.example\r\n",
        "\r\nx-forwarded-port: 443\r\n",
        "\r\nforwarded: for=3.3.3.3\r\n",
        "\r\nx-real-ip: 4.4.4.4\r\n",
        // The right-most untrusted hop: what the balancer believes.
        "\r\nx-client-address: 2.2.2.2\r\n",
    ] {
        assert!(head.contains(line), "{line:?} in {head}");
    }
}
