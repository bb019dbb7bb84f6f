//! Per-tunnel WebSocket limits (`limits.websocket_max_message`,
//! `websocket_max_message_rate`) over real sockets: a client that breaks
//! one gets a Close frame with 1009 or 1008 and a reason, the backend never
//! gets the message that broke it, and the tunnel is gone.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// An echo backend recording the size of every message it got.
async fn echo_backend() -> (SocketAddr, Arc<Mutex<Vec<usize>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Arc<Mutex<Vec<usize>>> = Arc::default();
    let record = Arc::clone(&got);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        record.lock().unwrap().push(m.len());
                        if ws.send(m).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, got)
}

async fn balancer(backend: SocketAddr, limits: &str) -> SocketAddr {
    support::serve(&format!(
        "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\
         [[pool]]\nname = \"game\"\n[[pool.backend]]\nid = \"b\"\naddress = \"{backend}\"\n\
         [[route]]\nlistener = \"public\"\npool = \"game\"\n[limits]\n{limits}\n"
    ))
    .await
}

/// Reads until the Close frame; its code and reason.
async fn close_of(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> (CloseCode, String) {
    let read = async {
        while let Some(m) = ws.next().await {
            if let Ok(Message::Close(Some(f))) = m {
                return (f.code, f.reason.to_string());
            }
            if m.is_err() {
                break;
            }
        }
        panic!("no Close frame");
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a Close frame in time")
}

#[tokio::test]
async fn a_message_over_the_size_limit_closes_with_1009() {
    let (b, got) = echo_backend().await;
    let lb = balancer(b, "websocket_max_message = 1000").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{lb}/ws"))
        .await
        .unwrap();
    ws.send(Message::binary(vec![1u8; 1000])).await.unwrap();
    let echo = ws.next().await.unwrap().unwrap();
    assert_eq!(echo.len(), 1000, "at the limit: passed");
    ws.send(Message::binary(vec![2u8; 1001])).await.unwrap();
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(code, CloseCode::Size);
    assert_eq!(reason, "message too big");
    assert_eq!(
        *got.lock().unwrap(),
        [1000],
        "the backend got the over-size message"
    );
}

#[tokio::test]
async fn messages_over_the_rate_limit_close_with_1008() {
    let (b, got) = echo_backend().await;
    let lb = balancer(b, "websocket_max_message_rate = 5").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{lb}/ws"))
        .await
        .unwrap();
    for _ in 0..20 {
        if ws.send(Message::text("hi")).await.is_err() {
            break;
        }
    }
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(code, CloseCode::Policy);
    assert_eq!(reason, "message rate limit");
    let passed = got.lock().unwrap().len();
    assert!(
        passed <= 5,
        "{passed} messages passed a limit of 5 a second"
    );
}

#[tokio::test]
async fn without_limits_large_and_fast_messages_pass() {
    let (b, got) = echo_backend().await;
    let lb = balancer(b, "").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{lb}/ws"))
        .await
        .unwrap();
    ws.send(Message::binary(vec![1u8; 1 << 20])).await.unwrap();
    for _ in 0..50 {
        ws.send(Message::text("hi")).await.unwrap();
    }
    for _ in 0..51 {
        ws.next().await.unwrap().unwrap();
    }
    assert_eq!(got.lock().unwrap().len(), 51);
}
