//! The per-backend open-connection count (what least-connections balances and
//! draining waits for) counts in-flight requests and WebSocket tunnels until
//! they end. In-process: a real backend server and the balancer's `App` on
//! 127.0.0.1:0, with real sockets between them.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use balancer::app::App;
use balancer::upstream::Backend;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

async fn start_backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(backend::AppState::new("b"));
    tokio::spawn(backend::serve(listener, state, std::future::pending()));
    addr
}

async fn start_balancer(backend: std::net::SocketAddr) -> (std::net::SocketAddr, Arc<Backend>) {
    let config = config::parse(&format!(
        "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\
         [[pool]]\nname = \"game\"\n[[pool.backend]]\nid = \"b\"\naddress = \"{backend}\"\n\
         [[route]]\nlistener = \"public\"\npool = \"game\"\n"
    ))
    .unwrap();
    let app = App::bind(config).await.unwrap();
    let addr = app.local_addr("public").unwrap();
    let b = Arc::clone(&app.proxy().snapshot.load().pools["game"].backends[0]);
    tokio::spawn(app.serve(std::future::pending()));
    (addr, b)
}

async fn wait_open(b: &Backend, want: usize) {
    let end = Instant::now() + Duration::from_secs(10);
    while b.open_connections() != want {
        assert!(
            Instant::now() < end,
            "open connections stayed {} (want {want})",
            b.open_connections()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnels_count_until_closed() {
    let backend_addr = start_backend().await;
    let (lb, b) = start_balancer(backend_addr).await;
    assert_eq!(b.open_connections(), 0);

    let (mut ws1, _) = tokio_tungstenite::connect_async(format!("ws://{lb}/ws"))
        .await
        .unwrap();
    let (mut ws2, _) = tokio_tungstenite::connect_async(format!("ws://{lb}/ws"))
        .await
        .unwrap();
    ws1.send(Message::text("x")).await.unwrap();
    assert_eq!(ws1.next().await.unwrap().unwrap(), Message::text("x"));
    wait_open(&b, 2).await;

    ws1.close(None).await.unwrap();
    while ws1.next().await.is_some() {}
    drop(ws1);
    wait_open(&b, 1).await;
    drop(ws2.close(None).await);
    while ws2.next().await.is_some() {}
    drop(ws2);
    wait_open(&b, 0).await;
    assert_eq!(b.requests_total(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_count_until_the_response_ends() {
    let backend_addr = start_backend().await;
    let (lb, b) = start_balancer(backend_addr).await;
    let mut s = tokio::net::TcpStream::connect(lb).await.unwrap();
    s.write_all(b"GET /sleep?ms=300 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    wait_open(&b, 1).await;
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    wait_open(&b, 0).await;
}
