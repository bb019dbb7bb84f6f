//! The request path in process: `Proxy::handle` driven with plain request
//! bodies (no client socket), against raw backends on loopback whose
//! answers each test picks byte for byte. Retries, the budget, ejection and
//! header rewriting, as the client and the backend see them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{ConnInfo, Proxy};
use crate::clock::Now;
use crate::runtime::Snapshot;
use crate::upstream::ejection::Out;
use crate::upstream::testing::{closed_port, raw_backend};

const OK_A: &str = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na";

/// A proxy for one pool `p` of `backends` (id, address) in this order,
/// round robin, with `extra` TOML inside the pool.
fn proxy(backends: &[(&str, SocketAddr)], extra: &str) -> (Proxy, Arc<ConnInfo>) {
    proxy_with("", backends, extra)
}

/// [`proxy`], with `top` TOML (top-level keys, `[timeouts]`) first.
fn proxy_with(top: &str, backends: &[(&str, SocketAddr)], extra: &str) -> (Proxy, Arc<ConnInfo>) {
    let mut text = format!(
        "{top}\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n[[pool]]\nname = \"p\"\n"
    );
    for (id, addr) in backends {
        text.push_str(&format!(
            "[[pool.backend]]\nid = \"{id}\"\naddress = \"{addr}\"\n"
        ));
    }
    text.push_str(extra);
    text.push_str("\n[[route]]\nlistener = \"l\"\npool = \"p\"\n");
    let config = config::parse(&text).unwrap();
    let snapshot = Snapshot::build(&config, &HashMap::new(), 1, None, &Default::default());
    let proxy = Proxy {
        snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
        tasks: TaskTracker::new(),
        close_tunnels: CancellationToken::new(),
        metrics: None,
        connections: Arc::default(),
        buffer_files: Arc::default(),
    };
    let conn = Arc::new(ConnInfo::new(
        Arc::from("l"),
        "192.0.2.7:5555".parse().unwrap(),
    ));
    (proxy, conn)
}

async fn call(
    p: &Proxy,
    conn: &Arc<ConnInfo>,
    method: Method,
    body: &'static [u8],
) -> (StatusCode, Bytes) {
    let req = Request::builder()
        .method(method)
        .uri("/x")
        .header("host", "game.example")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let resp = p.handle(conn, req).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

async fn get(p: &Proxy, conn: &Arc<ConnInfo>) -> (StatusCode, Bytes) {
    call(p, conn, Method::GET, b"").await
}

#[tokio::test]
async fn a_refused_connection_is_retried_free_and_takes_the_backend_out() {
    let (live, seen) = raw_backend(vec![OK_A; 40]).await;
    // No budget beyond the reserve of 10: refusals must not spend it.
    let (p, conn) = proxy(
        &[("dead", closed_port()), ("live", live)],
        "[pool.retry]\nbudget_percent = 0\n",
    );
    for _ in 0..20 {
        assert_eq!(
            get(&p, &conn).await,
            (StatusCode::OK, Bytes::from_static(b"a"))
        );
    }
    assert_eq!(seen.requests(), 20);
    let snap = p.snapshot.load();
    let pool = &snap.pools["p"];
    let dead = &pool.backends[0];
    let now = Now::lazy();
    assert_eq!(dead.ejection.out(&now, &pool.ejection), Some(Out::Refused));
    assert_eq!(dead.requests_total(), 1, "out after the first refusal");
    let reserve = (0..100)
        .take_while(|_| pool.retry_budget.withdraw())
        .count();
    assert_eq!(reserve, 10, "the budget was not charged");
}

#[tokio::test]
async fn the_budget_caps_retries_of_requests_that_reached_a_backend() {
    // Both backends take the request and reset the connection: a retry
    // repeats work the backend may have done, so it costs the budget.
    let (a, seen_a) = raw_backend(vec!["<reset>"; 100]).await;
    let (b, seen_b) = raw_backend(vec!["<reset>"; 100]).await;
    let (p, conn) = proxy(
        &[("a", a), ("b", b)],
        "[pool.retry]\nbudget_percent = 0\nattempts = 1\n[pool.ejection]\nconsecutive_failures = 0\n",
    );
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(get(&p, &conn).await.0.as_u16());
    }
    assert!(statuses.iter().all(|s| *s == 502), "{statuses:?}");
    // 30 requests, and exactly the reserve of 10 retried.
    assert_eq!(seen_a.requests() + seen_b.requests(), 40);
    // A POST that may have reached the backend is never sent twice.
    let before = seen_a.requests() + seen_b.requests();
    let (p, conn) = proxy(
        &[("a", a), ("b", b)],
        "[pool.ejection]\nconsecutive_failures = 0\n",
    );
    assert_eq!(call(&p, &conn, Method::POST, b"x").await.0, 502);
    assert_eq!(seen_a.requests() + seen_b.requests(), before + 1);
}

/// A pool that is really sick, slow or failing everywhere: nothing is
/// repeated, so the backends see each request once.
#[tokio::test]
async fn slow_or_failing_backends_are_not_hammered_with_retries() {
    let (a, seen_a) = raw_backend(vec!["<hang>"; 20]).await;
    let (b, seen_b) = raw_backend(vec!["<hang>"; 20]).await;
    let no_ejection = "[pool.ejection]\nconsecutive_failures = 0\n";
    let (p, conn) = proxy_with(
        "[timeouts]\nresponse_header = \"50ms\"\n",
        &[("a", a), ("b", b)],
        no_ejection,
    );
    for _ in 0..10 {
        assert_eq!(get(&p, &conn).await.0, StatusCode::GATEWAY_TIMEOUT);
    }
    assert_eq!(
        seen_a.requests() + seen_b.requests(),
        10,
        "a timeout is never retried"
    );
    // Every backend answers 503: passed on, never retried.
    let (c, seen_c) = raw_backend(vec!["HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"; 20]).await;
    let (d, seen_d) = raw_backend(vec!["HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"; 20]).await;
    let (p, conn) = proxy(&[("c", c), ("d", d)], "[pool.ejection]\non_5xx = true\n");
    for _ in 0..10 {
        assert_eq!(get(&p, &conn).await.0, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(
        seen_c.requests() + seen_d.requests(),
        10,
        "a 5xx is never retried"
    );
}

/// A listener whose accept queue is full and that never accepts: on
/// Linux, connection attempts to it are dropped, so a connect waits out its
/// timeout (an overloaded backend). Returns it with the connections that
/// fill its queue.
async fn stalled_listener() -> (
    SocketAddr,
    tokio::net::TcpListener,
    Vec<tokio::net::TcpStream>,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..8 {
        let limit = std::time::Duration::from_millis(200);
        match tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => held.push(s),
            _ => return (addr, listener, held),
        }
    }
    panic!("the accept queue of {addr} never filled");
}

/// Connects that time out reached no backend, but every backend being
/// too busy to accept is what the budget is for: retries stay capped.
#[tokio::test]
async fn timed_out_connects_are_retried_from_the_budget() {
    let (a, _la, _ha) = stalled_listener().await;
    let (b, _lb, _hb) = stalled_listener().await;
    let (p, conn) = proxy_with(
        "[timeouts]\nconnect = \"50ms\"\n",
        &[("a", a), ("b", b)],
        "[pool.retry]\nbudget_percent = 0\nattempts = 1\n[pool.ejection]\nconsecutive_failures = 0\n",
    );
    for _ in 0..12 {
        assert_eq!(get(&p, &conn).await.0, StatusCode::GATEWAY_TIMEOUT);
    }
    let snap = p.snapshot.load();
    let left = (0..100)
        .take_while(|_| snap.pools["p"].retry_budget.withdraw())
        .count();
    assert_eq!(left, 0, "the 10 retries of the reserve were spent");
}

#[tokio::test]
async fn with_checks_on_an_ejection_ends_with_a_passing_check_not_with_time() {
    let (live, _) = raw_backend(vec![OK_A; 50]).await;
    let dead_addr = closed_port();
    let (p, conn) = proxy(
        &[("flaky", dead_addr), ("live", live)],
        "[pool.health]\ntype = \"tcp\"\ninterval = \"50ms\"\nassume_up = true\n\
         [pool.ejection]\nbase = \"10ms\"\nmax = \"10ms\"\n",
    );
    assert_eq!(get(&p, &conn).await.0, StatusCode::OK);
    let snap = p.snapshot.load_full();
    let pool = &snap.pools["p"];
    let flaky = Arc::clone(&pool.backends[0]);
    let ejected_at = crate::clock::now_ms();
    assert_eq!(
        flaky.ejection.out(&Now::at(ejected_at), &pool.ejection),
        Some(Out::Refused)
    );
    // Far more than its ejection time later, and listening again: without
    // a passing check it stays out.
    let listener = tokio::net::TcpListener::bind(dead_addr).await.unwrap();
    let much_later = Now::at(ejected_at + 3_600_000);
    assert_eq!(
        flaky.ejection.out(&much_later, &pool.ejection),
        Some(Out::Refused)
    );
    assert_eq!(get(&p, &conn).await.1, Bytes::from_static(b"a"));
    assert_eq!(flaky.requests_total(), 1, "no traffic while out");
    // The real checker (as a reload starts it): its first passing check
    // brings the backend back.
    let mut checkers =
        crate::health::Checkers::new(CancellationToken::new(), Arc::clone(&p.snapshot), None);
    let health = config::HealthConfig {
        kind: config::HealthKind::Tcp,
        path: "/healthz".into(),
        interval: std::time::Duration::from_millis(50),
        timeout: std::time::Duration::from_secs(1),
        expect: (200, 399),
        rise: 1,
        fall: 1,
        assume_up: true,
    };
    checkers.start(&pool.name, &flaky, &health);
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !flaky.is_usable(&Now::lazy(), &pool.ejection) {
        assert!(
            std::time::Instant::now() < end,
            "no passing check ended the ejection"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    drop(listener);
}

#[tokio::test]
async fn the_backend_sees_the_rewritten_head() {
    let (b, seen) = raw_backend(vec![OK_A]).await;
    let (p, conn) = proxy(&[("b", b)], "");
    let req = Request::builder()
        .uri("/path?q=1")
        .header("host", "Game.Example:8080")
        .header("connection", "x-secret, keep-alive")
        .header("x-secret", "drop me")
        .header("proxy-authorization", "drop me too")
        .header("x-forwarded-for", "10.1.1.1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = p.handle(&conn, req).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let head = seen.heads.lock().unwrap()[0].to_lowercase();
    assert!(head.starts_with("get /path?q=1 http/1.1\r\n"), "{head}");
    assert!(head.contains("host: game.example:8080"), "{head}");
    // An untrusted peer's own X-Forwarded-For is replaced.
    assert!(head.contains("x-forwarded-for: 192.0.2.7\r\n"), "{head}");
    assert!(head.contains("x-real-ip: 192.0.2.7"), "{head}");
    assert!(head.contains("x-forwarded-proto: http"), "{head}");
    assert!(head.contains("x-request-id: "), "{head}");
    for gone in [
        "x-secret",
        "proxy-authorization",
        "connection",
        "keep-alive",
    ] {
        assert!(
            !head.contains(&format!("{gone}:")),
            "{gone} reached the backend: {head}"
        );
    }
}

#[tokio::test]
async fn no_route_and_no_backend_are_answered_by_the_balancer() {
    let (p, conn) = proxy(&[("dead", closed_port())], "[pool.retry]\nattempts = 0\n");
    // The only backend refuses: 502 first, then it is out and the pool is empty.
    assert_eq!(get(&p, &conn).await.0, StatusCode::BAD_GATEWAY);
    let (status, body) = get(&p, &conn).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        &body[..],
        b"503 service unavailable: no backend available\n"
    );
    let other = Arc::new(ConnInfo::new(
        Arc::from("other"),
        "127.0.0.1:1".parse().unwrap(),
    ));
    assert_eq!(get(&p, &other).await.0, StatusCode::NOT_FOUND);
}

/// A backend that sends both `Transfer-Encoding: chunked` and
/// `Content-Length`: the client gets the de-chunked body whole, without
/// the backend's length (which would cut it short), and the backend's
/// connection is not reused.
#[tokio::test]
async fn chunked_with_a_content_length_loses_the_length_and_the_connection() {
    let (addr, seen) = raw_backend(vec![
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        OK_A,
    ])
    .await;
    let (p, conn) = proxy(&[("a", addr)], "");
    let req = Request::get("/x")
        .header("host", "game.example")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = p.handle(&conn, req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!resp.headers().contains_key("content-length"));
    assert!(!resp.headers().contains_key("transfer-encoding"));
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello world");
    assert_eq!(
        get(&p, &conn).await,
        (StatusCode::OK, Bytes::from_static(b"a"))
    );
    assert_eq!(seen.connections(), 2, "the first connection was not reused");
}

/// Signed lengths and chunk sizes are not numbers in HTTP: 502 for a bad
/// head; a bad chunk size breaks the body off (never a body that looks whole).
#[tokio::test]
async fn signed_lengths_and_chunk_sizes_are_refused() {
    let (addr, _) = raw_backend(vec![
        "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\na<close>",
    ])
    .await;
    let (p, conn) = proxy(&[("a", addr)], "[pool.retry]\nattempts = 0\n");
    assert_eq!(get(&p, &conn).await.0, StatusCode::BAD_GATEWAY);
    let (addr, _) = raw_backend(vec![
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+a\r\n0123456789\r\n0\r\n\r\n",
    ])
    .await;
    let (p, conn) = proxy(&[("a", addr)], "[pool.retry]\nattempts = 0\n");
    let req = Request::get("/x")
        .header("host", "game.example")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = p.handle(&conn, req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.into_body().collect().await.is_err(),
        "the body must fail, not end"
    );
}
