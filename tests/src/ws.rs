//! WebSocket helpers for tests (tokio-tungstenite as the client).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to the backend echo at `/ws` through `lb` and asks
/// which backend is behind it (the backend answers `whoami` with its id).
pub async fn open_tunnel(lb: SocketAddr) -> (Ws, String) {
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{lb}/ws"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("whoami")).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("whoami reply within 10 s")
        .unwrap()
        .unwrap();
    let id = reply.into_text().unwrap().to_string();
    (ws, id)
}
