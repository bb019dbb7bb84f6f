//! WebSocket tunnels through the balancer, with tokio-tungstenite as the client.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tests::{single_pool_config, Backend, Balancer};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(lb: &Balancer) -> Ws {
    let url = format!("ws://{}/ws", lb.addr());
    let (ws, resp) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("x-request-id"));
    ws
}

async fn next(ws: &mut Ws) -> Option<Message> {
    tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("no WebSocket message within 10 s")
        .map(|r| r.unwrap())
}

fn tunnel_closed(lb: &Balancer) -> usize {
    lb.proc
        .lines()
        .iter()
        .filter(|v| v["event"] == "tunnel_closed")
        .count()
}

#[tokio::test]
async fn text_and_binary_echo_and_client_close_propagates() {
    let b = Backend::start("ws");
    let lb = Balancer::start(&single_pool_config(&[("ws", b.addr, 1)], ""));
    let mut ws = connect(&lb).await;

    ws.send(Message::text("hello through the balancer"))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        Some(Message::text("hello through the balancer"))
    );
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    ws.send(Message::binary(binary.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::binary(binary)));
    for i in 0..50 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    for i in 0..50 {
        assert_eq!(next(&mut ws).await, Some(Message::text(format!("m{i}"))));
    }

    // Client close: the backend sees it and answers with its own Close.
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    })))
    .await
    .unwrap();
    match next(&mut ws).await {
        Some(Message::Close(_)) => {}
        other => panic!("expected the backend's Close reply, got {other:?}"),
    }
    assert!(
        next(&mut ws).await.is_none(),
        "stream should end after the close handshake"
    );
    drop(ws);
    lb.proc.wait_log("tunnel closed", |v| {
        v["event"] == "tunnel_closed" && v["backend"] == "ws"
    });
}

#[tokio::test]
async fn backend_close_reaches_the_client() {
    let b = Backend::start("ws");
    let lb = Balancer::start(&single_pool_config(&[("ws", b.addr, 1)], ""));
    let mut ws = connect(&lb).await;
    ws.send(Message::text("close")).await.unwrap();
    match next(&mut ws).await {
        Some(Message::Close(Some(frame))) => {
            assert_eq!(frame.code, CloseCode::Normal);
            assert_eq!(frame.reason.as_str(), "bye");
        }
        other => panic!("expected the backend's Close frame, got {other:?}"),
    }
    // tungstenite replies to the Close; then the stream ends.
    assert!(next(&mut ws).await.is_none());
    drop(ws);
    lb.proc
        .wait_log("tunnel closed", |v| v["event"] == "tunnel_closed");
    assert_eq!(tunnel_closed(&lb), 1);
}

#[tokio::test]
async fn backend_death_closes_the_client_socket() {
    let b = Backend::start("ws");
    let lb = Balancer::start(&single_pool_config(&[("ws", b.addr, 1)], ""));
    let mut ws = connect(&lb).await;
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::text("ping")));
    drop(b); // kills the backend process
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    match end {
        Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => {}
        other => panic!("client socket should close when the backend dies: {other:?}"),
    }
}

#[tokio::test]
async fn silent_tunnel_is_closed_after_websocket_idle() {
    let b = Backend::start("ws");
    let lb = Balancer::start(&single_pool_config(
        &[("ws", b.addr, 1)],
        "[timeouts]\nwebsocket_idle = \"400ms\"\n",
    ));
    let mut ws = connect(&lb).await;
    // Traffic keeps it open past the idle limit...
    for i in 0..4 {
        ws.send(Message::text(format!("{i}"))).await.unwrap();
        assert_eq!(next(&mut ws).await, Some(Message::text(format!("{i}"))));
    }
    // ...and silence closes it.
    let start = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(15), ws.next()).await;
    assert!(
        matches!(end, Ok(None) | Ok(Some(Err(_)))),
        "expected the balancer to cut the idle tunnel, got {end:?}"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(350),
        "{:?}",
        start.elapsed()
    );
    lb.proc.wait_log("idle tunnel log", |v| {
        v["event"] == "tunnel_closed" && v["outcome"] == "idle_timeout"
    });
}
