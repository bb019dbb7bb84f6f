//! Bodies, HTTP/2, headers and error responses through real processes.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tests::http::{self, empty, full, get, h1, h2, raw, send};
use tests::{closed_port, single_pool_config, Backend, Balancer};

fn one_backend(extra: &str) -> (Backend, Balancer) {
    let b = Backend::start("solo");
    let lb = Balancer::start(&single_pool_config(&[("solo", b.addr, 1)], extra));
    (b, lb)
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn post_bodies_arrive_intact_and_stream_back() {
    let (_b, lb) = one_backend("");
    let c = h1();

    // Empty body.
    let r = send(
        &c,
        ::http::Request::post(lb.url("/echo"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());

    // 1 MiB with a content-length.
    let data = pseudo_random(1 << 20);
    let req = ::http::Request::post(lb.url("/echo"))
        .body(full(data.clone()))
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), data.len());
    assert!(r.body == data, "1 MiB body changed on the way");

    // Chunked, length unknown up front: 300 chunks of uneven sizes.
    let chunks: Vec<Bytes> = (0..300)
        .map(|i| Bytes::from(pseudo_random(1 + (i * 37) % 5000)))
        .collect();
    let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let body = StreamBody::new(stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, http::BoxError>(Frame::data(c))),
    ))
    .boxed();
    let req = ::http::Request::post(lb.url("/echo")).body(body).unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.status, 200);
    assert!(r.body == expected, "chunked body changed on the way");
}

#[tokio::test]
async fn large_upload_streams_with_flat_memory() {
    let (_b, lb) = one_backend("[limits]\nmax_request_body = 0\n");
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 4096; // 1 GiB in all
    let rss_before = lb.proc.rss_kib();
    let chunk = Bytes::from(pseudo_random(CHUNK));
    let body = StreamBody::new(stream::iter(
        (0..CHUNKS).map(move |_| Ok::<_, http::BoxError>(Frame::data(chunk.clone()))),
    ))
    .boxed();
    let req = ::http::Request::post(lb.url("/echo")).body(body).unwrap();
    let resp = h1().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received += data.len();
        }
    }
    assert_eq!(received, CHUNK * CHUNKS);
    let growth_kib = lb.proc.peak_rss_kib().saturating_sub(rss_before);
    // Buffers are bounded: 1 GiB went through, the balancer grew by a few MiB.
    assert!(
        growth_kib < 32 * 1024,
        "balancer peak RSS grew by {growth_kib} KiB for a 1 GiB upload"
    );
}

#[tokio::test]
async fn http2_prior_knowledge_client_to_http1_backend() {
    let (_b, lb) = one_backend("");
    let c = h2();
    let r = get(&c, &lb.url("/whoami")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "solo");

    let r = get(&c, &lb.url("/headers")).await;
    let seen = r.json();
    assert_eq!(
        seen["version"], "HTTP/1.1",
        "backend must get HTTP/1.1: {seen}"
    );
    let host = header(&seen, "host").expect("host set from :authority");
    assert_eq!(host, lb.addr().to_string());

    let data = pseudo_random(100_000);
    let req = ::http::Request::post(lb.url("/echo"))
        .body(full(data.clone()))
        .unwrap();
    let r = send(&c, req).await;
    assert!(r.body == data);
}

fn header(seen: &serde_json::Value, name: &str) -> Option<String> {
    seen["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == name)
        .map(|h| h[1].as_str().unwrap().to_string())
}

fn header_names(seen: &serde_json::Value) -> Vec<String> {
    seen["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h[0].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_and_forwarded_for_replaced() {
    let (_b, lb) = one_backend("");
    let request = "GET /headers HTTP/1.1\r\n\
        Host: game.example.com\r\n\
        Connection: keep-alive, X-Secret\r\n\
        Keep-Alive: timeout=5\r\n\
        TE: trailers\r\n\
        Trailer: X-Checksum\r\n\
        Upgrade: h2c\r\n\
        Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
        Proxy-Connection: keep-alive\r\n\
        X-Secret: hop-only\r\n\
        X-Forwarded-For: 203.0.113.7\r\n\
        X-Request-Id: test-request-1\r\n\
        X-Kept: end-to-end\r\n\
        Connection: close\r\n\
        \r\n";
    let out = raw(lb.addr(), request.as_bytes(), Duration::from_secs(10)).await;
    let (head, body) = out.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-request-id: test-request-1"),
        "{head}"
    );
    let seen: serde_json::Value = serde_json::from_str(body).unwrap();
    let names = header_names(&seen);
    for gone in [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "x-secret",
    ] {
        assert!(
            !names.iter().any(|n| n == gone),
            "{gone} reached the backend: {names:?}"
        );
    }
    assert_eq!(header(&seen, "x-kept").as_deref(), Some("end-to-end"));
    // The peer is no trusted proxy: its X-Forwarded-For is its own invention.
    assert_eq!(
        header(&seen, "x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(header(&seen, "x-real-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(header(&seen, "x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        header(&seen, "x-forwarded-host").as_deref(),
        Some("game.example.com")
    );
    assert_eq!(header(&seen, "host").as_deref(), Some("game.example.com"));
    assert_eq!(
        header(&seen, "x-request-id").as_deref(),
        Some("test-request-1")
    );

    // The access log names the request by the same id.
    lb.proc.wait_log("access line for test-request-1", |v| {
        v["target"] == "access" && v["request_id"] == "test-request-1" && v["status"] == 200
    });
}

#[tokio::test]
async fn generated_request_id_reaches_backend_response_and_log() {
    let (_b, lb) = one_backend("");
    let r = get(&h1(), &lb.url("/headers")).await;
    let id = r.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "{id}");
    assert_eq!(
        header(&r.json(), "x-request-id").as_deref(),
        Some(id.as_str())
    );
    lb.proc.wait_log("access line", |v| {
        v["target"] == "access" && v["request_id"] == id.as_str() && v["backend"] == "solo"
    });
}

#[tokio::test]
async fn dead_backend_is_502() {
    let lb = Balancer::start(&single_pool_config(&[("dead", closed_port(), 1)], ""));
    let r = get(&h1(), &lb.url("/whoami")).await;
    assert_eq!(r.status, 502);
    assert!(r.text().contains("bad gateway"), "{}", r.text());
    let id = r.headers["x-request-id"].to_str().unwrap().to_string();
    lb.proc
        .wait_log("failure log line with the request id", |v| {
            v["message"] == "request failed" && v["request_id"] == id.as_str()
        });
}

#[tokio::test]
async fn silent_backend_is_504_at_the_configured_timeout() {
    // A socket that accepts and never answers: the case under test.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            conns.push(s);
        }
    });
    let lb = Balancer::start(&single_pool_config(
        &[("silent", addr, 1)],
        "[timeouts]\nresponse_header = \"400ms\"\n",
    ));
    let start = Instant::now();
    let r = get(&h1(), &lb.url("/whoami")).await;
    let waited = start.elapsed();
    assert_eq!(r.status, 504);
    assert!(r.text().contains("did not answer"), "{}", r.text());
    assert!(
        waited >= Duration::from_millis(400),
        "answered after {waited:?}"
    );
    held.abort();
}

#[tokio::test]
async fn empty_pool_is_503_with_retry_after() {
    let lb = Balancer::start(&single_pool_config(&[], ""));
    let r = get(&h1(), &lb.url("/")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "1");
    assert!(r.text().contains("no backend"), "{}", r.text());
}

#[tokio::test]
async fn malformed_request_gets_400_and_others_are_still_served() {
    let (_b, lb) = one_backend("");
    for bad in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
    ] {
        let out = raw(lb.addr(), bad, Duration::from_secs(10)).await;
        assert!(
            out.starts_with("HTTP/1.1 400"),
            "{:?} got {out:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let r = get(&h1(), &lb.url("/whoami")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "solo");
}

#[tokio::test]
async fn connect_method_is_405() {
    let (_b, lb) = one_backend("");
    let out = raw(
        lb.addr(),
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_leaves_early_is_logged_as_499() {
    use tokio::io::AsyncWriteExt;
    let (b, lb) = one_backend("");
    let mut s = tokio::net::TcpStream::connect(lb.addr()).await.unwrap();
    s.write_all(b"GET /sleep?ms=3000 HTTP/1.1\r\nHost: x\r\nX-Request-Id: leaver\r\n\r\n")
        .await
        .unwrap();
    b.proc.wait_message("sleep started");
    drop(s);
    lb.proc.wait_log("499 access line", |v| {
        v["target"] == "access"
            && v["request_id"] == "leaver"
            && v["status"] == 499
            && v["error"] == "client_closed"
    });
}

#[tokio::test]
async fn silent_connection_is_closed_at_request_header_timeout() {
    let (_b, lb) = one_backend("[timeouts]\nrequest_header = \"300ms\"\n");
    let start = Instant::now();
    let out = raw(lb.addr(), b"", Duration::from_secs(15)).await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "closed after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(15),
        "never closed; got {out:?}"
    );
}

#[tokio::test]
async fn slow_request_head_is_cut_at_request_header_timeout() {
    let (_b, lb) = one_backend("[timeouts]\nrequest_header = \"300ms\"\n");
    let start = Instant::now();
    // Half a request head, then silence: the balancer must close the socket.
    let out = raw(
        lb.addr(),
        b"GET /whoami HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(15),
    )
    .await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "closed after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(15),
        "never closed; got {out:?}"
    );
    assert!(!out.contains("200 OK"), "{out}");
}

#[tokio::test]
async fn idle_http2_connection_is_closed_after_client_idle() {
    let (_b, lb) = one_backend("[timeouts]\nclient_idle = \"300ms\"\n");
    let stream = tokio::net::TcpStream::connect(lb.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = ::http::Request::get(lb.url("/whoami"))
        .body(empty())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    // Now idle: the balancer sends GOAWAY and the connection ends.
    let start = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(15), conn).await;
    assert!(ended.is_ok(), "idle HTTP/2 connection was never closed");
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let (_b, lb) = one_backend("");
    // Sequential requests from different client connections share pooled
    // upstream connections: the backend sees few peer ports, not one per
    // request. (A connection returns to the pool a moment after its response
    // ends, so a request may occasionally open a second one.)
    let mut peers = Vec::new();
    for _ in 0..20 {
        let out = raw(
            lb.addr(),
            b"GET /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(10),
        )
        .await;
        let body = out.split_once("\r\n\r\n").expect("a response").1;
        let seen: serde_json::Value = serde_json::from_str(body).unwrap();
        peers.push(seen["peer"].as_str().unwrap().to_string());
    }
    peers.sort();
    peers.dedup();
    assert!(
        peers.len() <= 3,
        "20 requests used {} upstream connections",
        peers.len()
    );
}
