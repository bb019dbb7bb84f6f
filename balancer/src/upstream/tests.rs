//! The upstream client against raw backends: framing, socket reuse, stale
//! sockets, bad heads and the idle reaper.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;

use super::testing::{closed_port, raw_backend};
use super::*;

fn settings() -> UpstreamSettings {
    UpstreamSettings {
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(10),
        max_idle: 4,
        proxy_header: None,
        cap: None,
    }
}

async fn request(
    pool: &Arc<ConnectionPool>,
    method: Method,
    settings: &UpstreamSettings,
) -> Result<(StatusCode, Bytes), String> {
    let (body, _upload) = RequestBody::new(AttemptBody::Empty);
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = http::Uri::from_static("/x?y=1");
    let authority = http::uri::Authority::from_static("backend:80");
    let resp = pool
        .send(req, &authority, settings)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

fn pool(addr: SocketAddr) -> Arc<ConnectionPool> {
    ConnectionPool::new(addr, None, None, Arc::default())
}

/// With `max_connections_per_backend`, idle sockets plus open requests
/// never pass the cap: a socket given back over it is closed, and one
/// idle on another worker's list is closed before a new one is opened.
#[tokio::test]
async fn under_a_cap_idle_sockets_and_open_requests_stay_within_it() {
    let (addr, seen) = raw_backend(vec!["HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"; 4]).await;
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let p = ConnectionPool::new(addr, None, None, Arc::clone(&open));
    let capped = settings().with_cap(Some(1));
    // One request open (its own): the socket goes back, 1 + 0 <= 1.
    open.store(1, std::sync::atomic::Ordering::Relaxed);
    request(&p, Method::GET, &capped).await.unwrap();
    assert_eq!(p.idle_count(), 1);
    // Another request open besides it: given back, it would make three.
    open.store(2, std::sync::atomic::Ordering::Relaxed);
    let io = p.connect(&capped).await.unwrap();
    assert_eq!(
        p.idle_count(),
        0,
        "the idle socket was closed before a new one"
    );
    p.checkin(io, &capped);
    assert_eq!(p.idle_count(), 0, "a socket over the cap was pooled");
    assert_eq!(p.sockets().now(), 0, "the refused socket was closed");
    assert_eq!(p.sockets().peak(), 1, "never two sockets at once");
    // Without a cap, the same is pooled.
    let io = p.connect(&settings()).await.unwrap();
    p.checkin(io, &settings());
    assert_eq!(p.idle_count(), 1);
    assert_eq!(seen.connections(), 3);
    assert_eq!(p.sockets().now(), 1);
}

#[tokio::test]
async fn every_socket_is_counted_while_it_is_open() {
    let (addr, _seen) =
        raw_backend(vec!["HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"; 2]).await;
    let p = pool(addr);
    let s = settings();
    let a = p.connect(&s).await.unwrap();
    let b = p.connect(&s).await.unwrap();
    assert_eq!((p.sockets().now(), p.sockets().peak()), (2, 2));
    drop(a);
    assert_eq!((p.sockets().now(), p.sockets().peak()), (1, 2));
    // Idle in the pool: still open, still counted.
    p.checkin(b, &s);
    assert_eq!(p.sockets().now(), 1);
    // A request reuses it: one socket throughout.
    request(&p, Method::GET, &s).await.unwrap();
    assert_eq!((p.sockets().now(), p.sockets().peak()), (1, 2));
    // Reaped: closed, uncounted.
    p.reap_expired(u64::MAX);
    assert_eq!(p.sockets().now(), 0);
    // A connect that fails counts nothing.
    let dead = ConnectionPool::new(closed_port(), None, None, Arc::default());
    assert!(dead.connect(&s).await.is_err());
    assert_eq!((dead.sockets().now(), dead.sockets().peak()), (0, 0));
}

/// A bodiless GET to `addr` that must fail before a response head.
async fn failed_get(addr: SocketAddr) -> UpstreamError {
    let (body, _) = RequestBody::new(AttemptBody::Empty);
    let authority = http::uri::Authority::from_static("x");
    match pool(addr)
        .send(Request::new(body), &authority, &settings())
        .await
    {
        Ok(resp) => panic!("{addr}: answered {}", resp.status()),
        Err(e) => e,
    }
}

#[tokio::test]
async fn chunked_body_with_extensions_and_trailers_then_the_socket_is_reused() {
    let (addr, seen) = raw_backend(vec![
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ])
    .await;
    let p = pool(addr);
    let (status, body) = request(&p, Method::GET, &settings()).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"hello world");
    assert_eq!(p.idle_count(), 1);
    let (_, body) = request(&p, Method::GET, &settings()).await.unwrap();
    assert_eq!(&body[..], b"ok");
    assert_eq!(seen.connections(), 1, "one connection for both");
    assert!(seen.heads.lock().unwrap()[0].starts_with("GET /x?y=1 HTTP/1.1\r\nhost: backend:80"));
}

#[tokio::test]
async fn bodiless_answers_informational_heads_and_close() {
    let (addr, seen) = raw_backend(vec![
        // HEAD: a length, but no body follows.
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        "HTTP/1.1 204 No Content\r\n\r\n",
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes",
        // Connection: close and no length: the body runs to the close.
        "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close<close>",
    ])
    .await;
    let p = pool(addr);
    let s = settings();
    assert_eq!(request(&p, Method::HEAD, &s).await.unwrap().1.len(), 0);
    assert_eq!(request(&p, Method::GET, &s).await.unwrap().0, 204);
    let (status, body) = request(&p, Method::GET, &s).await.unwrap();
    assert_eq!((status.as_u16(), &body[..]), (200, &b"yes"[..]));
    assert_eq!(seen.connections(), 1);
    // The backend closes after this answer, which ends the body.
    let (status, body) = request(&p, Method::GET, &s).await.unwrap();
    assert_eq!((status.as_u16(), &body[..]), (200, &b"until close"[..]));
    assert_eq!(p.idle_count(), 0, "a close-delimited socket is not reused");
}

#[tokio::test]
async fn a_pooled_socket_the_backend_closed_costs_a_retry_not_an_error() {
    let (addr, seen) = raw_backend(vec![
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
        // The next request on that socket: the backend hangs up.
        "",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb",
    ])
    .await;
    let p = pool(addr);
    let s = settings();
    assert_eq!(&request(&p, Method::GET, &s).await.unwrap().1[..], b"a");
    assert_eq!(&request(&p, Method::GET, &s).await.unwrap().1[..], b"b");
    assert_eq!(seen.connections(), 2);
}

#[tokio::test]
async fn errors_say_how_far_the_request_got() {
    // Nothing listens: refused, nothing reached.
    let e = failed_get(closed_port()).await;
    assert!(e.is_refused(), "{e}");
    assert_eq!(e.reached(), Reached::No);
    // A fresh connection reset after the request was read: maybe reached.
    let (addr, _) = raw_backend(vec!["<reset>"]).await;
    let e = failed_get(addr).await;
    assert!(matches!(e, UpstreamError::Closed(_)), "{e}");
    assert_eq!(e.reached(), Reached::Maybe);
}

#[tokio::test]
async fn bad_heads_and_lengths_are_upstream_errors() {
    for answer in [
        "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "HTTP/1.1 999999 Huh\r\n\r\n",
        "NOT HTTP\r\n\r\n",
    ] {
        let (addr, _) = raw_backend(vec![answer]).await;
        let e = failed_get(addr).await;
        assert!(matches!(e, UpstreamError::Protocol(_)), "{answer:?}: {e}");
        assert_eq!(e.reached(), Reached::Maybe);
    }
    // A body cut short by the backend is an error of the body, not a
    // clean end, and the socket is not reused.
    let (addr, _) = raw_backend(vec![
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort<close>",
    ])
    .await;
    let p = pool(addr);
    let e = request(&p, Method::GET, &settings()).await.unwrap_err();
    assert!(e.contains("middle of the body"), "{e}");
    assert_eq!(p.idle_count(), 0);
}

#[tokio::test]
async fn idle_sockets_close_after_upstream_idle_and_max_idle_caps_the_pool() {
    let (addr, _) = raw_backend(vec!["HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"; 8]).await;
    let s = UpstreamSettings {
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_millis(200),
        max_idle: 1,
        proxy_header: None,
        cap: None,
    };
    let p = pool(addr);
    // Two at once: two sockets, of which the pool keeps one.
    let (a, b) = tokio::join!(request(&p, Method::GET, &s), request(&p, Method::GET, &s));
    assert!(a.is_ok() && b.is_ok());
    assert_eq!(p.idle_count(), 1);
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while p.idle_count() > 0 {
        assert!(std::time::Instant::now() < end, "idle socket never reaped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn settings_apply_to_the_next_socket_without_a_new_pool() {
    let (addr, seen) = raw_backend(vec!["HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"; 4]).await;
    let p = pool(addr);
    let none = UpstreamSettings {
        max_idle: 0,
        ..settings()
    };
    request(&p, Method::GET, &none).await.unwrap();
    assert_eq!(p.idle_count(), 0, "max_idle 0 keeps nothing");
    request(&p, Method::GET, &settings()).await.unwrap();
    assert_eq!(
        p.idle_count(),
        1,
        "the same pool keeps sockets once allowed"
    );
    request(&p, Method::GET, &settings()).await.unwrap();
    assert_eq!(seen.connections(), 2, "the kept socket was reused");
}

/// With a PROXY header, an idle socket is reused only for the client it
/// named; a full list makes room by closing its oldest keyed socket.
#[tokio::test]
async fn proxied_sockets_are_reused_for_their_own_client_only() {
    let (addr, seen) = raw_backend(vec!["HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"; 8]).await;
    let p = pool(addr);
    let lb: SocketAddr = "10.0.0.1:443".parse().unwrap();
    let base = UpstreamSettings {
        max_idle: 1,
        ..settings()
    }
    .with_proxy_protocol(Some(config::ProxyVersion::V1));
    let a = base.for_client("203.0.113.7:1000".parse().unwrap(), lb);
    let b = base.for_client("203.0.113.7:1001".parse().unwrap(), lb);
    request(&p, Method::GET, &a).await.unwrap();
    request(&p, Method::GET, &a).await.unwrap();
    assert_eq!(seen.connections(), 1, "a's socket served a again");
    request(&p, Method::GET, &b).await.unwrap();
    assert_eq!(seen.connections(), 2, "b never gets a's socket");
    assert_eq!(p.idle_count(), 1, "b's socket replaced a's (max_idle 1)");
    request(&p, Method::GET, &b).await.unwrap();
    request(&p, Method::GET, &a).await.unwrap();
    assert_eq!(seen.connections(), 3, "b reused its own; a's was closed");
    // A pool without headers never reuses a keyed socket either.
    request(&p, Method::GET, &settings()).await.unwrap();
    assert_eq!(seen.connections(), 4);
    let heads = seen.heads.lock().unwrap().clone();
    let firsts: Vec<&str> = heads.iter().map(|h| h.lines().next().unwrap()).collect();
    assert_eq!(
        firsts,
        [
            "PROXY TCP4 203.0.113.7 10.0.0.1 1000 443",
            "GET /x?y=1 HTTP/1.1",
            "PROXY TCP4 203.0.113.7 10.0.0.1 1001 443",
            "GET /x?y=1 HTTP/1.1",
            "PROXY TCP4 203.0.113.7 10.0.0.1 1000 443",
            "GET /x?y=1 HTTP/1.1",
        ]
    );
}
