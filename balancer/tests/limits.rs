//! `[limits]` over real sockets, raw bytes in: what the client is told
//! when a request breaks a limit, and that nothing of it reaches a backend
//! (or, for a body that breaks one midway, that the backend is let go).

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the backend saw: each request head, and each connection's end.
#[derive(Debug, Default)]
struct Seen {
    heads: Vec<String>,
    closed: usize,
}

/// A backend that answers `200 ok` once a request's whole body is in.
async fn backend() -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 64 * 1024];
                'conn: loop {
                    let end = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => break 'conn,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    let chunked = head
                        .to_ascii_lowercase()
                        .contains("transfer-encoding: chunked");
                    record.lock().unwrap().heads.push(head);
                    while chunked && !buf.windows(5).any(|w| w == b"0\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => break 'conn,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    while buf.len() < length {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => break 'conn,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..length);
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                record.lock().unwrap().closed += 1;
            });
        }
    });
    (addr, seen)
}

async fn balancer(backend: SocketAddr, limits: &str, listener: &str) -> SocketAddr {
    balancer_in(backend, "", limits, listener).await
}

/// `buffer_body_file = 0`: a body over `buffer_body` streams to the backend.
const STREAMING: &str = "buffer_body_file = 0";

async fn balancer_in(backend: SocketAddr, pool: &str, limits: &str, listener: &str) -> SocketAddr {
    support::serve(&format!(
        "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n{listener}\n\
         [[pool]]\nname = \"game\"\n{pool}\n[[pool.backend]]\nid = \"b\"\naddress = \"{backend}\"\n\
         [pool.retry]\nattempts = 0\nmax_body = 1024\n\
         [[route]]\nlistener = \"public\"\npool = \"game\"\n\
         [limits]\n{limits}\n"
    ))
    .await
}

/// Sends `request` and reads until the balancer closes (10 s at most).
async fn exchange(lb: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(lb).await.unwrap();
    // A balancer that answers early may close before it all went out.
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let read = async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the balancer closes the connection");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn oversized_heads_get_431_and_long_targets_414_and_reach_no_backend() {
    let (b, seen) = backend().await;
    let lb = balancer(
        b,
        "max_header_bytes = 16384\nmax_headers = 20\nmax_request_line = 1024",
        "",
    )
    .await;
    let long_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..30)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let long_target = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "p".repeat(2000)
    );
    for (request, status) in [
        (long_header, "HTTP/1.1 431"),
        (many_headers, "HTTP/1.1 431"),
        (long_target, "HTTP/1.1 414"),
    ] {
        let answer = exchange(lb, request.as_bytes()).await;
        assert!(
            answer.starts_with(status),
            "{status}: got {:?}",
            &answer[..answer.len().min(200)]
        );
    }
    assert!(
        seen.lock().unwrap().heads.is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
    // Within the limits: proxied.
    let ok = exchange(
        lb,
        b"GET /fine HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

/// A chunked body of 30 chunks of 4 KiB.
fn chunked_body() -> Vec<u8> {
    let mut chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..30 {
        chunked.extend_from_slice(b"1000\r\n");
        chunked.extend_from_slice(&[b'a'; 4096]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    chunked
}

/// Waits (10 s at most) until the backend saw `n` connections end.
async fn until_closed(seen: &Mutex<Seen>, n: usize) {
    support::until("the backend connection to close", || {
        seen.lock().unwrap().closed >= n
    })
    .await;
}

#[tokio::test]
async fn a_body_over_max_request_body_gets_413() {
    let (b, seen) = backend().await;
    let lb = balancer(b, "max_request_body = 100000", "").await;
    // Declared too large: refused before any backend, the body unread.
    let answer = exchange(
        lb,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100001\r\n\r\nabc",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Chunked, breaking the limit midway: buffered (the default), it is
    // refused before any backend hears of it.
    let answer = exchange(lb, &chunked_body()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(seen.lock().unwrap().heads.is_empty());
    // At the limit: proxied.
    let mut fits =
        b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 100000\r\n\r\n"
            .to_vec();
    fits.resize(fits.len() + 100_000, b'a');
    assert!(exchange(lb, &fits).await.starts_with("HTTP/1.1 200"));

    // Streamed (`buffer_body_file = 0`): 413 midway, and the backend is let go.
    let (b, seen) = backend().await;
    let lb = balancer_in(b, STREAMING, "max_request_body = 100000", "").await;
    let answer = exchange(lb, &chunked_body()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(seen.lock().unwrap().heads.len(), 1);
    until_closed(&seen, 1).await;
}

/// A client that stops mid-upload is cut off at `upload_timeout`: 408.
/// A body is buffered before any backend is picked (in memory up to
/// `buffer_body`, then in a file), so the backend never hears of it;
/// with `buffer_body_file = 0` a large one streams, and the backend
/// connection it held is closed.
#[tokio::test]
async fn a_stalled_upload_is_cut_off_at_its_deadline() {
    const SMALL: &[u8] =
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\nonly this much";
    const LARGE: &[u8] =
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 500000\r\n\r\nonly this much";
    let (b, seen) = backend().await;
    let lb = balancer(b, "upload_timeout = \"1s\"", "").await;
    for request in [SMALL, LARGE] {
        let started = std::time::Instant::now();
        let answer = exchange(lb, request).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(started.elapsed() >= Duration::from_secs(1));
    }
    assert!(
        seen.lock().unwrap().heads.is_empty(),
        "a buffered body reached the backend"
    );

    let (b, seen) = backend().await;
    let lb = balancer_in(b, STREAMING, "upload_timeout = \"1s\"", "").await;
    let started = std::time::Instant::now();
    let answer = exchange(lb, LARGE).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(seen.lock().unwrap().heads.len(), 1);
    until_closed(&seen, 1).await;
}

/// Reads the balancer's 503 for a refused connection, and its close.
async fn refused(lb: SocketAddr) -> bool {
    let mut s = TcpStream::connect(lb).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).starts_with("HTTP/1.1 503")
}

/// Idle connections count: the one past the limit is answered 503 and
/// closed; once one closes, a new one is served.
async fn check_connection_limit(lb: SocketAddr, max: usize) {
    let mut held = Vec::new();
    for _ in 0..max {
        let mut s = TcpStream::connect(lb).await.unwrap();
        // A request through, so the connection is surely counted.
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    assert!(refused(lb).await, "connection {} was not refused", max + 1);
    drop(held.pop());
    // The balancer learns of the close when it reads: wait for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = exchange(
            lb,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place never came back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn connections_over_the_per_address_limit_are_refused() {
    let (b, _) = backend().await;
    let lb = balancer(b, "max_connections_per_ip = 3", "").await;
    check_connection_limit(lb, 3).await;
}

#[tokio::test]
async fn connections_over_the_listener_limit_are_refused() {
    let (b, _) = backend().await;
    let lb = balancer(b, "", "max_connections = 4").await;
    check_connection_limit(lb, 4).await;
}

/// A backend that answers each request only when the test lets it, and
/// counts the requests it holds now and the most it ever held at once.
async fn gated_backend() -> (
    SocketAddr,
    Arc<tokio::sync::Semaphore>,
    Arc<Mutex<(usize, usize)>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held: Arc<Mutex<(usize, usize)>> = Arc::default();
    let (g, h) = (Arc::clone(&gate), Arc::clone(&held));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (gate, held) = (Arc::clone(&g), Arc::clone(&h));
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.clear();
                    {
                        let mut h = held.lock().unwrap();
                        h.0 += 1;
                        h.1 = h.1.max(h.0);
                    }
                    gate.acquire().await.unwrap().forget();
                    held.lock().unwrap().0 -= 1;
                    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if s.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, gate, held)
}

async fn capped_balancer(backend: SocketAddr, queue_timeout: &str) -> SocketAddr {
    support::serve(&format!(
        "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\
         [[pool]]\nname = \"game\"\nmax_connections_per_backend = 2\nqueue_size = 2\n\
         queue_timeout = \"{queue_timeout}\"\n\
         [[pool.backend]]\nid = \"b\"\naddress = \"{backend}\"\n\
         [[route]]\nlistener = \"public\"\npool = \"game\"\n"
    ))
    .await
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

async fn until_held(held: &Mutex<(usize, usize)>, n: usize) {
    support::until(&format!("the backend to hold {n}"), || {
        held.lock().unwrap().0 >= n
    })
    .await;
}

/// `max_connections_per_backend = 2` with a queue of 2: of five requests
/// two are at the backend, two wait, and one is refused at once; once the
/// backend answers, the four are served, and it never held more than two.
#[tokio::test]
async fn a_backend_at_capacity_queues_then_refuses() {
    let (b, gate, held) = gated_backend().await;
    let lb = capped_balancer(b, "10s").await;
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..2 {
        requests.spawn(exchange(lb, GET));
    }
    until_held(&held, 2).await;
    for _ in 0..3 {
        requests.spawn(exchange(lb, GET));
    }
    // Nothing is answered until the gate opens, but the one over the queue.
    let first = requests.join_next().await.unwrap().unwrap();
    assert!(first.starts_with("HTTP/1.1 503"), "{first}");
    assert!(first.contains("backend at capacity"), "{first}");
    gate.add_permits(4);
    while let Some(answer) = requests.join_next().await {
        let answer = answer.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert_eq!(
        held.lock().unwrap().1,
        2,
        "the backend held more than its cap"
    );
}

/// A request that waits past `queue_timeout` for a place is a 503.
#[tokio::test]
async fn a_wait_past_the_queue_timeout_is_a_503() {
    let (b, gate, held) = gated_backend().await;
    let lb = capped_balancer(b, "300ms").await;
    let holding: Vec<_> = (0..2).map(|_| tokio::spawn(exchange(lb, GET))).collect();
    until_held(&held, 2).await;
    let started = std::time::Instant::now();
    let answer = exchange(lb, GET).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    gate.add_permits(2);
    for h in holding {
        assert!(h.await.unwrap().starts_with("HTTP/1.1 200"));
    }
}
