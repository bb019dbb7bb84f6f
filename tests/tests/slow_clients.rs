//! Slow clients beside normal ones (issue 15), at the scale the
//! reliability rules ask for (64 and 256 connections): real `balancer` and
//! `backend` processes, slow heads, slow bodies and slow reads paced a few
//! bytes a tick, a bounded keep-alive GET load, and the balancer's
//! connections to its backends sampled from the admin API while it all
//! runs. Outcomes are asserted, never timings; latency under the same
//! pressure is the `slow_clients` benchmark's (docs/benchmarks.md).

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tests::http::get_text;
use tests::load::GetLoad;
use tests::{Backend, Balancer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How long a slow client keeps going at most.
const SLOW_LIMIT: Duration = Duration::from_secs(15);
/// One write (or read) of a slow client every tick.
const TICK: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Head,
    Body,
    Read,
}

/// What the balancer did to one slow connection.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ending {
    /// The status line's code, if a response began.
    status: Option<u16>,
    /// The balancer closed or reset it (rather than the client giving up).
    cut_off: bool,
}

fn status_of(head: &[u8]) -> Option<u16> {
    let code = head.strip_prefix(b"HTTP/1.")?.get(2..5)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// One slow connection of `kind`, until the balancer ends it or
/// [`SLOW_LIMIT`] passes.
async fn slow_client(lb: SocketAddr, kind: Kind) -> Ending {
    let socket = TcpSocket::new_v4().unwrap();
    if kind == Kind::Read {
        socket.set_recv_buffer_size(4096).unwrap();
    }
    let mut s: TcpStream = socket.connect(lb).await.unwrap();
    let prelude = match kind {
        Kind::Head => "GET /whoami HTTP/1.1\r\nHost: slow\r\nX-Slow: ".to_string(),
        Kind::Body => {
            "POST /upload HTTP/1.1\r\nHost: slow\r\nContent-Length: 1048576\r\n\r\n".to_string()
        }
        Kind::Read => "GET /bytes?n=8388608 HTTP/1.1\r\nHost: slow\r\n\r\n".to_string(),
    };
    s.write_all(prelude.as_bytes()).await.unwrap();
    let end = tokio::time::Instant::now() + SLOW_LIMIT;
    let mut head = Vec::new();
    let mut ticks = tokio::time::interval(TICK);
    let mut buf = [0u8; 4096];
    let mut ending = Ending {
        status: None,
        cut_off: false,
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => return ending,
            _ = ticks.tick() => {
                if kind == Kind::Read {
                    // A few bytes a tick, no more.
                    match tokio::time::timeout_at(end, s.read(&mut buf[..16])).await {
                        Err(_) => return ending,
                        Ok(Ok(0)) | Ok(Err(_)) => {
                            ending.cut_off = true;
                            return ending;
                        }
                        Ok(Ok(n)) => head.extend_from_slice(&buf[..n]),
                    }
                } else if s.write_all(b"ab").await.is_err() {
                    ending.cut_off = true;
                    return ending;
                }
            }
            r = s.read(&mut buf), if kind != Kind::Read => match r {
                Ok(0) | Err(_) => {
                    ending.cut_off = true;
                    return ending;
                }
                Ok(n) => head.extend_from_slice(&buf[..n.min(64)]),
            }
        }
        if ending.status.is_none() {
            ending.status = status_of(&head);
        }
    }
}

/// A balancer with an admin listener in front of `backends`, with
/// `max_connections_per_backend = cap`, a 2 s head timeout and upload
/// deadline, and no per-address limit (every client is 127.0.0.1).
fn balancer(backends: &[&Backend], cap: usize, queue: usize, pool: &str) -> Balancer {
    let mut config = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n\
         [limits]\nmax_connections_per_ip = 0\nupload_timeout = \"2s\"\n\n\
         [[listener]]\nname = \"front\"\naddress = \"127.0.0.1:0\"\n\n\
         [[pool]]\nname = \"up\"\nmax_connections_per_backend = {cap}\nqueue_size = {queue}\n{pool}\n"
    );
    for b in backends {
        config.push_str(&format!(
            "\n  [[pool.backend]]\n  id = \"{}\"\n  address = \"{}\"\n",
            b.id, b.addr
        ));
    }
    config.push_str(
        "\n[[route]]\nlistener = \"front\"\npool = \"up\"\n\n\
         [timeouts]\nrequest_header = \"2s\"\n",
    );
    Balancer::start_quiet(&config)
}

/// Samples the largest `open` of any backend in `GET /api/status` until
/// `stop`; the peak, and how many samples were taken.
fn sample_open(admin: SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, u64)> {
    let peak = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        let mut samples = 0;
        while !stop.load(Ordering::Relaxed) {
            let status: serde_json::Value =
                serde_json::from_str(&get_text(admin, "/api/status").await).unwrap();
            for pool in status["pools"].as_array().unwrap() {
                for b in pool["backends"].as_array().unwrap() {
                    peak.fetch_max(b["open"].as_u64().unwrap(), Ordering::Relaxed);
                }
            }
            samples += 1;
            // Pacing of the sampler, not synchronisation.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (peak.load(Ordering::Relaxed), samples)
    })
}

/// The most TCP connections any backend had at once
/// (`tcp_connections_peak` in `GET /api/status`: counted by the balancer
/// as each socket opens and closes, so nothing between samples is missed).
async fn tcp_peak(admin: SocketAddr) -> u64 {
    let status: serde_json::Value =
        serde_json::from_str(&get_text(admin, "/api/status").await).unwrap();
    let mut peak = 0;
    for pool in status["pools"].as_array().unwrap() {
        for b in pool["backends"].as_array().unwrap() {
            peak = peak.max(b["tcp_connections_peak"].as_u64().unwrap());
        }
    }
    peak
}

/// `n` slow clients (a third of each kind) and 8 keep-alive GET clients at
/// once: every normal request succeeds, no backend ever has more than the
/// cap open, and every slow head and slow body is cut off by the
/// balancer, the bodies with a 408.
async fn normal_clients_beside(n: usize) {
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    // Above what the slow clients can hold, so normal requests never wait
    // for a place; the cap is still checked at every sample.
    let cap = n;
    let lb = balancer(&[&b1, &b2], cap, 64, "");
    let (front, admin) = (lb.listeners["front"], lb.admin_addr());

    let kinds = [Kind::Head, Kind::Body, Kind::Read];
    let mut slow = tokio::task::JoinSet::new();
    for i in 0..n {
        let kind = kinds[i % 3];
        slow.spawn(async move { (kind, slow_client(front, kind).await) });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_open(admin, stop.clone());
    let load = GetLoad::start(
        &format!("http://{front}/whoami"),
        8,
        Instant::now() + SLOW_LIMIT,
    );

    let mut endings = Vec::new();
    while let Some(r) = slow.join_next().await {
        let (kind, ending) = r.unwrap();
        // Slow readers stay open until the limit; the others are done when
        // the balancer ends them.
        if kind != Kind::Read {
            endings.push((kind, ending));
        }
        if endings.len() == n - n / 3 {
            break;
        }
    }
    let (passed, failed) = load.finish().await;
    stop.store(true, Ordering::Relaxed);
    let (peak, samples) = sampler.await.unwrap();
    slow.abort_all();

    assert_eq!(failed, 0, "normal requests failed beside {n} slow clients");
    assert!(passed > 0, "no normal request was served");
    assert!(samples > 0);
    assert!(peak <= cap as u64, "a backend had {peak} open, cap {cap}");
    let sockets = tcp_peak(admin).await;
    assert!(
        (1..=cap as u64).contains(&sockets),
        "a backend had {sockets} TCP connections at once, cap {cap}"
    );
    for (kind, e) in &endings {
        assert!(e.cut_off, "a {kind:?} client was never cut off: {e:?}");
        if *kind == Kind::Body {
            assert_eq!(e.status, Some(408), "a slow body ended with {e:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_clients_are_served_beside_64_slow_clients() {
    normal_clients_beside(64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_clients_are_served_beside_256_slow_clients() {
    normal_clients_beside(256).await;
}

/// 64 slow bodies against one backend capped at 8 with a queue of 8.
/// Buffered (the default: 1 MiB is within `buffer_body + buffer_body_file`),
/// none reaches the backend and every one is cut off with a 408 by the
/// upload deadline. Streamed (`buffer_body_file = 0`), the backend never
/// has more than 8 open, the ones over the cap and the queue get a 503,
/// and every one that reached the backend is cut off with a 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_are_buffered_or_wait_or_get_503() {
    for (pool, streamed) in [("", false), ("buffer_body_file = 0", true)] {
        let b = Backend::start("b");
        let cap = 8;
        let lb = balancer(&[&b], cap, 8, pool);
        let (front, admin) = (lb.listeners["front"], lb.admin_addr());
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = sample_open(admin, stop.clone());
        let mut slow = tokio::task::JoinSet::new();
        for _ in 0..64 {
            slow.spawn(slow_client(front, Kind::Body));
        }
        let mut statuses = Vec::new();
        while let Some(e) = slow.join_next().await {
            let e = e.unwrap();
            assert!(e.cut_off, "a slow body was never cut off: {e:?}");
            statuses.push(e.status);
        }
        stop.store(true, Ordering::Relaxed);
        let (peak, samples) = sampler.await.unwrap();
        assert!(samples > 0);
        let sockets = tcp_peak(admin).await;
        if streamed {
            assert!(peak <= cap as u64, "the backend had {peak} open, cap {cap}");
            assert!(
                (1..=cap as u64).contains(&sockets),
                "the backend had {sockets} TCP connections at once, cap {cap}"
            );
            assert!(
                statuses.iter().all(|s| matches!(s, Some(408 | 503))),
                "{statuses:?}"
            );
            assert!(statuses.contains(&Some(503)), "{statuses:?}");
            assert!(statuses.contains(&Some(408)), "{statuses:?}");
        } else {
            assert_eq!(peak, 0, "a buffered slow body reached the backend");
            assert_eq!(sockets, 0, "a connection was opened to the backend");
            assert!(statuses.iter().all(|s| *s == Some(408)), "{statuses:?}");
        }
    }
}
