//! PROXY protocol sent to backends (`pool.send_proxy_protocol`), over real
//! sockets: a raw backend reads the header with the balancer's own parser
//! and records, per connection, what it named and the requests that came
//! on it. Every connection names the client the balancer resolved; one
//! client's connection is never reused for another; WebSocket tunnels
//! carry it too; health checks send `LOCAL` (v1: `UNKNOWN`).

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use balancer::server::proxy_protocol::{read_header, Header, V2_SIGNATURE};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One connection the backend accepted.
#[derive(Debug, Clone)]
struct Conn {
    /// The PROXY header it started with, or why none could be read.
    header: Result<Header, String>,
    /// The raw bytes of the header's first line (v1) or its first 13 (v2).
    start: Vec<u8>,
    /// The request heads on it, lower-cased.
    heads: Vec<String>,
}

type Conns = Arc<Mutex<Vec<Conn>>>;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const WS_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/// A backend that requires a PROXY header on every connection (as nginx
/// with `listen ... proxy_protocol` does), then answers each request head
/// with 200 (keep-alive), or a WebSocket handshake with its 101 and then
/// echoes.
async fn backend() -> (SocketAddr, Conns) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns: Conns = Arc::default();
    let shared = Arc::clone(&conns);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s, Arc::clone(&shared)));
        }
    });
    (addr, conns)
}

async fn serve(s: TcpStream, conns: Conns) {
    // Peek at the start to record the raw bytes, then parse for real.
    let mut start = vec![0u8; 16];
    let n = s.peek(&mut start).await.unwrap_or(0);
    start.truncate(n.min(13));
    let mut s = s;
    let header = read_header(&mut s, Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string());
    let ok = header.is_ok();
    let index = {
        let mut all = conns.lock().unwrap();
        all.push(Conn {
            header,
            start,
            heads: Vec::new(),
        });
        all.len() - 1
    };
    if !ok {
        return;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut tunnel = false;
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if tunnel {
            if s.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            continue;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 2]).to_ascii_lowercase();
            buf.drain(..end + 4);
            let websocket = head.contains("\r\nupgrade: websocket\r\n");
            let close = head.contains("\r\nconnection: close\r\n");
            conns.lock().unwrap()[index].heads.push(head);
            if s.write_all(if websocket { WS_101 } else { OK })
                .await
                .is_err()
            {
                return;
            }
            if websocket {
                tunnel = true;
            }
            if close {
                return;
            }
        }
    }
}

async fn balancer(backend: SocketAddr, pool: &str, top: &str, listener: &str) -> SocketAddr {
    support::serve(&format!(
        "{top}\n[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n{listener}\n\
         [[pool]]\nname = \"game\"\n{pool}\n[[pool.backend]]\nid = \"b\"\naddress = \"{backend}\"\n\
         [[route]]\nlistener = \"public\"\npool = \"game\"\n"
    ))
    .await
}

const WITHIN: Duration = Duration::from_secs(10);

/// Reads one response head and a 2-byte body (the backend's "ok").
async fn read_response<R: AsyncRead + Unpin>(s: &mut R) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1];
    tokio::time::timeout(WITHIN, async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before a head: {buf:?}");
            buf.push(chunk[0]);
        }
    })
    .await
    .expect("a response in time");
    let head = String::from_utf8_lossy(&buf).into_owned();
    if head.starts_with("HTTP/1.1 200") {
        let mut body = [0u8; 2];
        tokio::time::timeout(WITHIN, s.read_exact(&mut body))
            .await
            .expect("the body in time")
            .unwrap();
        assert_eq!(&body, b"ok");
    }
    head
}

/// A keep-alive GET that says which client sent it.
fn get(client: &str) -> Vec<u8> {
    format!("GET /who HTTP/1.1\r\nHost: x\r\nX-Test-Client: {client}\r\n\r\n").into_bytes()
}

/// The connections whose requests came from `client`.
fn conns_of(conns: &Conns, client: &str) -> Vec<Conn> {
    let tag = format!("\r\nx-test-client: {client}\r\n");
    conns
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.heads.iter().any(|h| h.contains(&tag)))
        .cloned()
        .collect()
}

fn proxied(source: SocketAddr, destination: SocketAddr) -> Result<Header, String> {
    Ok(Header::Proxied {
        source,
        destination,
    })
}

/// A plain request: the backend's connection starts with a header naming
/// the client's socket and the balancer's listening address, v2 and v1.
#[tokio::test]
async fn a_request_goes_on_a_connection_that_names_its_client() {
    for (version, start) in [("v2", &V2_SIGNATURE[..]), ("v1", &b"PROXY TCP4 "[..])] {
        let (b, conns) = backend().await;
        let pool = format!("send_proxy_protocol = \"{version}\"");
        let lb = balancer(b, &pool, "", "").await;
        let mut c = TcpStream::connect(lb).await.unwrap();
        c.write_all(&get("a")).await.unwrap();
        let head = read_response(&mut c).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{version}: {head}");
        let seen = conns_of(&conns, "a");
        assert_eq!(seen.len(), 1, "{version}: {seen:?}");
        assert_eq!(
            seen[0].header,
            proxied(c.local_addr().unwrap(), lb),
            "{version}"
        );
        assert!(
            seen[0].start.starts_with(start),
            "{version}: {:?}",
            seen[0].start
        );
        if version == "v2" {
            assert_eq!(seen[0].start[12], 0x21, "version 2, command PROXY");
        }
    }
}

/// Two clients, each with keep-alive: a client's second request may reuse
/// its own backend connection, but the other client never gets it, even
/// though it sits idle in the pool when that client comes.
#[tokio::test]
async fn keep_alive_connections_are_never_shared_between_clients() {
    let (b, conns) = backend().await;
    let lb = balancer(b, "send_proxy_protocol = \"v2\"", "", "").await;
    let mut clients = [
        TcpStream::connect(lb).await.unwrap(),
        TcpStream::connect(lb).await.unwrap(),
    ];
    // a, a, then c (a's backend connection is idle by now), then a, c.
    for (i, name) in [(0, "a"), (0, "a"), (1, "c"), (0, "a"), (1, "c")] {
        let s = &mut clients[i];
        s.write_all(&get(name)).await.unwrap();
        let head = read_response(s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{name}: {head}");
    }
    let [a, c] = clients;
    let all = conns.lock().unwrap().clone();
    for conn in &all {
        let clients: Vec<&str> = ["a", "c"]
            .into_iter()
            .filter(|n| {
                let tag = format!("\r\nx-test-client: {n}\r\n");
                conn.heads.iter().any(|h| h.contains(&tag))
            })
            .collect();
        assert!(
            clients.len() <= 1,
            "one backend connection, two clients: {conn:?}"
        );
    }
    let of_a = conns_of(&conns, "a");
    let of_c = conns_of(&conns, "c");
    assert_eq!(of_a.len(), 1, "a's requests reuse a's connection: {of_a:?}");
    assert_eq!(of_a[0].heads.len(), 3);
    assert_eq!(of_a[0].header, proxied(a.local_addr().unwrap(), lb));
    assert_eq!(of_c.len(), 1, "{of_c:?}");
    assert_eq!(of_c[0].heads.len(), 2);
    assert_eq!(of_c[0].header, proxied(c.local_addr().unwrap(), lb));
    assert_eq!(all.len(), 2, "{all:?}");
}

/// The client named is the one the balancer resolved: from a PROXY header
/// in (with its port), or from a trusted proxy's X-Forwarded-For (no
/// port: 0).
#[tokio::test]
async fn the_client_named_is_the_resolved_one() {
    let (b, conns) = backend().await;
    let lb = balancer(
        b,
        "send_proxy_protocol = \"v2\"",
        "",
        "[listener.proxy_protocol]\ntrusted = [\"127.0.0.0/8\"]\n",
    )
    .await;
    let mut s = TcpStream::connect(lb).await.unwrap();
    let mut v2_in = V2_SIGNATURE.to_vec();
    v2_in.extend_from_slice(&[
        0x21, 0x11, 0, 12, 203, 0, 113, 7, 10, 0, 0, 1, 0x0f, 0xa0, 1, 187,
    ]);
    s.write_all(&v2_in).await.unwrap();
    s.write_all(&get("proxied")).await.unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    let seen = conns_of(&conns, "proxied");
    assert_eq!(
        seen[0].header,
        proxied("203.0.113.7:4000".parse().unwrap(), lb),
        "the PROXY header's client, the balancer's own address"
    );

    let (b, conns) = backend().await;
    let lb = balancer(
        b,
        "send_proxy_protocol = \"v2\"",
        "trusted_proxies = [\"127.0.0.1\"]",
        "",
    )
    .await;
    let mut s = TcpStream::connect(lb).await.unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.2\r\nX-Test-Client: xff\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    let seen = conns_of(&conns, "xff");
    assert_eq!(
        seen[0].header,
        proxied("198.51.100.2:0".parse().unwrap(), lb)
    );
}

/// A WebSocket tunnel runs on a connection that named its client.
#[tokio::test]
async fn a_websocket_tunnel_names_its_client() {
    let (b, conns) = backend().await;
    let lb = balancer(b, "send_proxy_protocol = \"v2\"", "", "").await;
    let mut s = TcpStream::connect(lb).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Test-Client: ws\r\n\r\n")
        .await
        .unwrap();
    let head = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let frame = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
    s.write_all(&frame).await.unwrap();
    let mut back = [0u8; 8];
    tokio::time::timeout(WITHIN, s.read_exact(&mut back))
        .await
        .expect("the echo in time")
        .unwrap();
    assert_eq!(back, frame);
    let seen = conns_of(&conns, "ws");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header, proxied(s.local_addr().unwrap(), lb));
}

/// Waits (bounded) for a connection that `matches`.
async fn wait_for(conns: &Conns, what: &str, matches: impl Fn(&Conn) -> bool) -> Conn {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        if let Some(c) = conns.lock().unwrap().iter().find(|c| matches(c)) {
            return c.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {what}: {:?}",
            conns.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Health checks, HTTP and TCP, start with `LOCAL` (v1 `UNKNOWN`): the
/// balancer's own connections, for no client.
#[tokio::test]
async fn health_checks_send_a_local_header() {
    for (version, kind) in [("v2", "http"), ("v1", "http"), ("v2", "tcp")] {
        let (b, conns) = backend().await;
        let pool = format!(
            "send_proxy_protocol = \"{version}\"\n[pool.health]\ntype = \"{kind}\"\ninterval = \"50ms\"\n"
        );
        let _lb = balancer(b, &pool, "", "").await;
        let case = format!("{version} {kind}");
        let check = wait_for(&conns, &case, |c| c.header.is_ok()).await;
        assert_eq!(check.header, Ok(Header::Local), "{case}");
        if version == "v2" {
            assert!(check.start.starts_with(&V2_SIGNATURE), "{case}");
            assert_eq!(check.start[12], 0x20, "{case}: version 2, command LOCAL");
        } else {
            assert_eq!(check.start, b"PROXY UNKNOWN", "{case}");
        }
        if kind == "http" {
            let probed = wait_for(&conns, &case, |c| !c.heads.is_empty()).await;
            assert_eq!(probed.header, Ok(Header::Local), "{case}");
            assert!(
                probed.heads[0].starts_with("get /healthz http/1.1\r\n")
                    && probed.heads[0].contains("user-agent: balancer-health-check"),
                "{case}: {:?}",
                probed.heads
            );
        }
        assert!(
            conns.lock().unwrap().iter().all(|c| c.header.is_ok()),
            "{case}: a connection without a good header: {:?}",
            conns.lock().unwrap()
        );
    }
}

/// Without the key, nothing is sent: the backend's parser sees a request.
#[tokio::test]
async fn off_by_default() {
    let (b, conns) = backend().await;
    let lb = balancer(b, "", "", "").await;
    let mut s = TcpStream::connect(lb).await.unwrap();
    s.write_all(b"GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WITHIN, s.read_to_end(&mut out)).await;
    let c = wait_for(&conns, "a connection", |_| true).await;
    assert!(c.start.starts_with(b"GET /who"), "{c:?}");
    assert!(c.header.is_err(), "{c:?}");
}
