//! A keep-alive connection is parked (hyper dropped, the socket kept) only
//! after the request's body reached its end. When the response is done
//! first (the backend answered early, or the balancer answered itself) and
//! the rest of the body never will be read, the connection closes, so the
//! unread body can never be parsed as the next request (desync,
//! request smuggling). Raw bytes over real sockets, over the timings that
//! matter: the response done before, during and after the body, and a
//! client that reads slowly.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The request lines the backend parsed, across all its connections.
type Heads = Arc<Mutex<Vec<String>>>;

/// When the backend answers a request with a body.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// As soon as the head is in; it then never reads again (nor closes).
    Early,
    /// After reading this many body bytes; then never reads again.
    During(usize),
    /// After the whole body (its Content-Length); keep-alive goes on.
    After,
}

/// A backend answering every request with `Content-Length: response_len`
/// bytes of `a`.
async fn backend(answer: Answer, response_len: usize) -> (SocketAddr, Heads) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads: Heads = Arc::default();
    let seen = Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(serve_backend(s, seen, answer, response_len));
        }
    });
    (addr, heads)
}

async fn serve_backend(mut s: TcpStream, seen: Heads, answer: Answer, response_len: usize) {
    let mut buf = Vec::new();
    loop {
        let Some(head) = read_head(&mut s, &mut buf).await else {
            return;
        };
        seen.lock()
            .unwrap()
            .push(head.lines().next().unwrap_or("").to_string());
        let length = content_length(&head);
        let want = match answer {
            Answer::Early => 0,
            Answer::During(n) => n.min(length),
            Answer::After => length,
        };
        while buf.len() < want {
            let mut chunk = vec![0u8; 64 * 1024];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let mut response =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {response_len}\r\n\r\n").into_bytes();
        response.resize(response.len() + response_len, b'a');
        if s.write_all(&response).await.is_err() {
            return;
        }
        if want < length {
            // Never reads the rest: hold the socket until the balancer lets go.
            std::future::pending::<()>().await;
        }
        buf.drain(..length);
    }
}

/// Reads up to the end of a head; the bytes after it stay in `buf`.
async fn read_head<R: AsyncRead + Unpin>(s: &mut R, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0)
}

/// `/game/...` goes to the backend; anything else is the balancer's 404.
/// Retries off, `max_body` and `buffer_body` small and no buffer file:
/// bodies above 1 KiB stream (a body read whole before a backend is picked
/// cannot be answered early).
async fn balancer(backend: SocketAddr) -> SocketAddr {
    support::serve(&format!(
        "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\
         [[pool]]\nname = \"game\"\nbuffer_body = 1024\nbuffer_body_file = 0\n[[pool.backend]]\nid = \"b\"\naddress = \"{backend}\"\n\
         [pool.retry]\nattempts = 0\nmax_body = 1024\n\
         [[route]]\nlistener = \"public\"\npath_prefix = \"/game\"\npool = \"game\"\n"
    ))
    .await
}

/// A client socket whose receive buffer is `rcvbuf` bytes (the kernel
/// doubles and rounds it), so a large response backs up into the balancer.
async fn client(lb: SocketAddr, rcvbuf: Option<u32>) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).unwrap();
    }
    socket.connect(lb).await.unwrap()
}

/// Reads one response (head and Content-Length body); `None` on a close.
/// `slow`: 4 KiB at a time with a pause, a client on a bad link.
async fn read_response<R: AsyncRead + Unpin>(
    s: &mut R,
    buf: &mut Vec<u8>,
    slow: bool,
) -> Option<(String, usize)> {
    let head = read_head(s, buf).await?;
    let length = content_length(&head);
    while buf.len() < length {
        let mut chunk = vec![0u8; if slow { 4096 } else { 256 * 1024 }];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if slow {
            // Pacing a slow reader, not waiting for anything.
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    buf.drain(..length);
    Some((head.lines().next().unwrap_or("").to_string(), length))
}

/// Everything the client gets until the balancer closes the connection;
/// panics if it is still open after 10 s.
async fn until_closed<R: AsyncRead + Unpin>(s: &mut R, mut buf: Vec<u8>) -> Vec<u8> {
    let read = async {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the balancer closes the connection");
    buf
}

/// The bytes a smuggler hides in its body.
const SMUGGLED: &[u8] = b"GET /game/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

/// The client declares `declared` body bytes, sends `before` of filler,
/// and (once the first response is read, or at once with `concurrent`)
/// the smuggled request, still inside the declared body.
struct Smuggle {
    path: &'static str,
    declared: usize,
    before: usize,
    concurrent: bool,
    rcvbuf: Option<u32>,
    slow: bool,
}

/// Runs one attempt; returns what the client got after the first response
/// and the request lines the backend saw.
async fn smuggle(lb: SocketAddr, heads: &Heads, how: Smuggle) -> (Vec<u8>, Vec<String>) {
    let s = client(lb, how.rcvbuf).await;
    let (mut rd, mut wr) = s.into_split();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        how.path, how.declared
    );
    let mut first = head.into_bytes();
    first.resize(first.len() + how.before, b'b');
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let concurrent = how.concurrent;
    let writer = tokio::spawn(async move {
        // A balancer that closed early makes these writes fail: fine.
        if wr.write_all(&first).await.is_err() {
            return wr;
        }
        if !concurrent {
            let _ = go_rx.await;
        }
        let _ = wr.write_all(SMUGGLED).await;
        wr
    });
    let mut buf = Vec::new();
    let response = read_response(&mut rd, &mut buf, how.slow).await;
    let _ = go_tx.send(());
    let rest = until_closed(&mut rd, buf).await;
    drop(writer.await.unwrap());
    let seen = heads.lock().unwrap().clone();
    if let Some((status, _)) = &response {
        assert!(
            status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.1 404"),
            "{status}"
        );
    }
    (rest, seen)
}

fn assert_not_smuggled(rest: &[u8], seen: &[String], case: &str) {
    assert!(
        !seen.iter().any(|l| l.contains("smuggled")),
        "{case}: the backend parsed the body as a request: {seen:?}"
    );
    let text = String::from_utf8_lossy(rest);
    assert!(
        !text.contains("HTTP/1.1"),
        "{case}: the client got a second response: {text:?}"
    );
}

#[tokio::test]
async fn an_early_answer_closes_instead_of_parking_on_the_unread_body() {
    let (backend, heads) = backend(Answer::Early, 2).await;
    let lb = balancer(backend).await;
    let (rest, seen) = smuggle(
        lb,
        &heads,
        Smuggle {
            path: "/game/upload",
            declared: 200_000,
            before: 100,
            concurrent: false,
            rcvbuf: None,
            slow: false,
        },
    )
    .await;
    assert_not_smuggled(&rest, &seen, "early, small answer");
    assert_eq!(seen, ["POST /game/upload HTTP/1.1"]);
}

/// The review's case: a 4 MiB early answer to a client with a tiny
/// receive buffer that reads slowly, the "body" arriving meanwhile.
#[tokio::test]
async fn an_early_large_answer_to_a_slow_reader_closes_too() {
    let (backend, heads) = backend(Answer::Early, 4 << 20).await;
    let lb = balancer(backend).await;
    for concurrent in [false, true] {
        let (rest, seen) = smuggle(
            lb,
            &heads,
            Smuggle {
                path: "/game/upload",
                declared: 200_000,
                before: 100,
                concurrent,
                rcvbuf: Some(2048),
                slow: true,
            },
        )
        .await;
        assert_not_smuggled(
            &rest,
            &seen,
            &format!("early, 4 MiB, concurrent {concurrent}"),
        );
    }
}

/// The backend reads part of the body, answers, and reads no more.
#[tokio::test]
async fn an_answer_during_the_body_closes_instead_of_parking() {
    let (backend, heads) = backend(Answer::During(50_000), 1 << 20).await;
    let lb = balancer(backend).await;
    for (concurrent, slow) in [(true, false), (true, true), (false, false)] {
        let (rest, seen) = smuggle(
            lb,
            &heads,
            Smuggle {
                path: "/game/upload",
                declared: 200_000,
                before: 100_000,
                concurrent,
                rcvbuf: Some(4096),
                slow,
            },
        )
        .await;
        assert_not_smuggled(
            &rest,
            &seen,
            &format!("during, concurrent {concurrent}, slow {slow}"),
        );
    }
}

/// The balancer answers itself (no route: 404) without reading the body.
#[tokio::test]
async fn a_local_answer_to_a_request_with_a_body_closes_the_connection() {
    let (backend, heads) = backend(Answer::After, 2).await;
    let lb = balancer(backend).await;
    for declared in [500, 200_000] {
        let (rest, seen) = smuggle(
            lb,
            &heads,
            Smuggle {
                path: "/nowhere",
                declared,
                before: 10,
                concurrent: false,
                rcvbuf: None,
                slow: false,
            },
        )
        .await;
        assert_not_smuggled(&rest, &seen, &format!("local 404, declared {declared}"));
        assert!(seen.is_empty(), "{seen:?}");
    }
}

/// The control: a body that reaches its end, then an answer, and the
/// connection is kept (parked) for the next request, small or streamed.
#[tokio::test]
async fn after_a_whole_body_the_connection_is_kept_for_the_next_request() {
    let (backend, heads) = backend(Answer::After, 1 << 20).await;
    let lb = balancer(backend).await;
    let mut s = client(lb, Some(4096)).await;
    let mut buf = Vec::new();
    for (i, length) in [10usize, 200_000, 0].into_iter().enumerate() {
        let mut request =
            format!("POST /game/{i} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n")
                .into_bytes();
        request.resize(request.len() + length, b'b');
        let (mut rd, mut wr) = s.split();
        let (written, response) = tokio::join!(
            wr.write_all(&request),
            read_response(&mut rd, &mut buf, true)
        );
        written.unwrap();
        let (status, got) = response.expect("a response on the same connection");
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert_eq!(got, 1 << 20);
    }
    assert_eq!(
        *heads.lock().unwrap(),
        [
            "POST /game/0 HTTP/1.1",
            "POST /game/1 HTTP/1.1",
            "POST /game/2 HTTP/1.1"
        ]
    );
}

/// The rule is structural, not a matter of timing: even a small body that
/// arrived whole, but that the balancer never read (it answered itself),
/// closes the connection rather than leaving hyper to drain it and park.
#[tokio::test]
async fn an_unread_body_never_parks_even_when_it_arrived_whole() {
    let (backend, heads) = backend(Answer::After, 2).await;
    let lb = balancer(backend).await;
    let mut s = client(lb, None).await;
    s.write_all(b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let (status, _) = read_response(&mut s, &mut buf, false).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    let rest = until_closed(&mut s, buf).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(heads.lock().unwrap().is_empty());
}
