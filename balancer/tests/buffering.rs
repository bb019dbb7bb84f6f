//! Body buffering past memory (`buffer_body_file`, `buffer_response`,
//! `buffer_response_file`) over real sockets: a slow client, uploading or
//! downloading, holds no backend connection; what the backend gets and the
//! client reads is every byte, in order.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Size of `GET /big`.
const BIG: usize = 4 << 20;

/// Byte `i` of every body in these tests.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// What the backend saw: each request's head and body (de-chunked), and
/// how many `/big` answers it finished writing.
#[derive(Debug, Default)]
struct Seen {
    requests: Vec<(String, Vec<u8>)>,
    big_sent: usize,
}

/// Reads until `buf` holds `n` bytes; false at end of stream.
async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> bool {
    let mut chunk = vec![0u8; 64 * 1024];
    while buf.len() < n {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
    true
}

/// Reads until `buf` contains `needle`; its end offset, or `None` at end of stream.
async fn fill_to(s: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) -> Option<usize> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some(i) = buf.windows(needle.len()).position(|w| w == needle) {
            return Some(i + needle.len());
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

/// One request off a backend connection: head and de-chunked body.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let end = fill_to(s, buf, b"\r\n\r\n").await?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    buf.drain(..end);
    let lower = head.clone();
    let mut body = Vec::new();
    if lower.contains("transfer-encoding: chunked") {
        loop {
            let line_end = fill_to(s, buf, b"\r\n").await?;
            let size = usize::from_str_radix(
                std::str::from_utf8(&buf[..line_end - 2]).unwrap().trim(),
                16,
            )
            .unwrap();
            buf.drain(..line_end);
            if !fill(s, buf, size + 2).await {
                return None;
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
            if size == 0 {
                break;
            }
        }
    } else if let Some(n) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap())
    {
        if !fill(s, buf, n).await {
            return None;
        }
        body = buf.drain(..n).collect();
    }
    Some((head, body))
}

/// A backend: `GET /big` gets [`BIG`] bytes of [`pattern`], anything else
/// `200 ok` once its whole body is in.
async fn backend() -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let record = Arc::clone(&seen);
    let big = Arc::new(pattern(BIG));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (record, big) = (Arc::clone(&record), Arc::clone(&big));
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some((head, body)) = read_request(&mut s, &mut buf).await {
                    let is_big = head.starts_with("get /big ");
                    record.lock().unwrap().requests.push((head, body));
                    if is_big {
                        let h = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n");
                        if s.write_all(h.as_bytes()).await.is_err()
                            || s.write_all(&big).await.is_err()
                        {
                            return;
                        }
                        record.lock().unwrap().big_sent += 1;
                    } else if s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A balancer with one backend at `max_connections_per_backend = 1` and a
/// 300 ms queue, so a request finds the backend's place free or gets a 503.
async fn balancer(backends: &[SocketAddr], pool: &str, extra: &str) -> SocketAddr {
    let members: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("[[pool.backend]]\nid = \"b{i}\"\naddress = \"{b}\"\n"))
        .collect();
    support::serve(&format!(
        "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\
         [[pool]]\nname = \"game\"\nmax_connections_per_backend = 1\nqueue_timeout = \"300ms\"\n\
         {pool}\n{members}\
         [[route]]\nlistener = \"public\"\npool = \"game\"\n{extra}\n"
    ))
    .await
}

/// Sends `request` on a new connection and reads the answer to its close.
async fn exchange(lb: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(lb).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the balancer answers and closes")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

const GET: &[u8] = b"GET /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// A client with a 4 KiB receive buffer that asks for `/big` and reads
/// nothing until told to.
async fn slow_reader(lb: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(lb).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    s
}

/// Reads the slow reader's whole answer and checks every body byte.
async fn read_big(mut s: TcpStream) {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("the download ends")
        .unwrap();
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(out.starts_with(b"HTTP/1.1 200"));
    assert!(String::from_utf8_lossy(&out[..end])
        .to_ascii_lowercase()
        .contains(&format!("content-length: {BIG}")));
    assert_eq!(out.len() - end, BIG, "body length");
    assert!(out[end..] == pattern(BIG)[..], "the body came out of order");
}

/// With the defaults, a client that does not read a 4 MiB answer holds
/// no backend place: the backend sends it all at once (memory, then a
/// file), the next request gets the backend at once, and the slow client
/// later reads every byte in order.
#[tokio::test]
async fn a_slow_reader_holds_no_backend() {
    let (b, seen) = backend().await;
    let lb = balancer(&[b], "", "").await;
    let reader = slow_reader(lb).await;
    support::until("the backend sent /big whole", || {
        seen.lock().unwrap().big_sent == 1
    })
    .await;
    let answer = exchange(lb, GET).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    read_big(reader).await;
}

/// The control: without a file (`buffer_response_file = 0`), or past
/// `limits.buffer_files_total`, the answer goes at the client's pace past
/// `buffer_response` (the kernel's socket buffers aside), its place stays
/// taken until the client has read it, and the next request waits out the
/// queue: 503. Once the client reads, all of it arrives.
#[tokio::test]
async fn without_a_file_a_slow_reader_holds_its_backend() {
    for (pool, limits) in [
        ("buffer_response = 65536\nbuffer_response_file = 0", ""),
        (
            "buffer_response = 65536",
            "[limits]\nbuffer_files_total = 1024",
        ),
    ] {
        let (b, seen) = backend().await;
        let lb = balancer(&[b], pool, limits).await;
        let reader = slow_reader(lb).await;
        support::until("the backend got /big", || {
            !seen.lock().unwrap().requests.is_empty()
        })
        .await;
        let answer = exchange(lb, GET).await;
        assert!(
            answer.starts_with("HTTP/1.1 503"),
            "{pool} {limits}: {answer}"
        );
        read_big(reader).await;
    }
}

/// An upload past `buffer_body` (here 1 KiB) is read whole, into a file,
/// before a backend is picked: while it is half sent the backend is free
/// for others and has seen nothing of it; then it gets every byte, with
/// its length.
#[tokio::test]
async fn a_slow_upload_reaches_the_backend_only_whole() {
    let (b, seen) = backend().await;
    let lb = balancer(&[b], "buffer_body = 1024", "").await;
    let body = pattern(300_000);
    let mut s = TcpStream::connect(lb).await.unwrap();
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 300000\r\n\r\n",
    )
    .await
    .unwrap();
    s.write_all(&body[..200_000]).await.unwrap();
    let answer = exchange(lb, GET).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        seen.lock().unwrap().requests.len(),
        1,
        "the half-sent upload reached the backend"
    );
    s.write_all(&body[200_000..]).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with(b"HTTP/1.1 200"));
    let seen = seen.lock().unwrap();
    let (head, got) = &seen.requests[1];
    assert!(head.contains("content-length: 300000"), "{head}");
    assert!(*got == body, "the body arrived changed");
}

/// Sends a chunked body of `len` bytes in chunks of 1,000.
async fn chunked(lb: SocketAddr, len: usize) -> String {
    let body = pattern(len);
    let mut req =
        b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for c in body.chunks(1000) {
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    exchange(lb, &req).await
}

/// A chunked upload that fits is read whole and sent with its length; one
/// past `buffer_body + buffer_body_file` streams on, chunked, after what
/// was read of it. Either way the backend gets every byte in order.
#[tokio::test]
async fn chunked_uploads_are_buffered_up_to_the_limit() {
    let (b, seen) = backend().await;
    let lb = balancer(&[b], "buffer_body = 1024\nbuffer_body_file = 8192", "").await;

    let answer = chunked(lb, 9000).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = chunked(lb, 50_000).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let seen = seen.lock().unwrap();
    let (head, body) = &seen.requests[0];
    assert!(head.contains("content-length: 9000"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(*body == pattern(9000));
    let (head, body) = &seen.requests[1];
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(
        *body == pattern(50_000),
        "the streamed body arrived changed"
    );
}

/// A body in a file is replayed whole to the next backend when the first
/// cannot be reached.
#[tokio::test]
async fn a_buffered_body_is_replayed_on_retry() {
    let (b, seen) = backend().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let lb = balancer(
        &[dead, b],
        "buffer_body = 1024\n[pool.retry]\nattempts = 1\nmax_body = 0",
        "",
    )
    .await;
    let body = pattern(100_000);
    let mut req =
        b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 100000\r\n\r\n"
            .to_vec();
    req.extend_from_slice(&body);
    for _ in 0..4 {
        let answer = exchange(lb, &req).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.requests.len(), 4);
    for (_, got) in &seen.requests {
        assert!(*got == body, "a replayed body arrived changed");
    }
}
