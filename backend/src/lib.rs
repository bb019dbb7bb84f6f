//! The game server process that runs behind the balancer.
//!
//! For now it serves what the balancer's tests and benchmarks need; the game
//! itself (rooms, presence, matchmaking through Redis) comes with its own work.
//!
//! * `GET /healthz`: 200 while the process is alive.
//! * `GET /readyz`: 200, or 503 once the process is draining after SIGTERM.
//! * `GET /whoami`: the process's `--id`, as plain text.
//! * `POST /echo`: streams the request body back as it arrives.
//! * `GET /headers`: the request head as JSON (method, uri, version, headers,
//!   and the peer address of the connection it came on), so tests can see
//!   exactly what the balancer forwarded and whether it reused a connection.
//! * `GET /sleep?ms=N`: answers after N milliseconds (at most 10 minutes).
//! * `GET /ws`: WebSocket echo of text and binary messages; a text message
//!   `close` makes the server close the socket (code 1000), so tests can see a
//!   backend-side close travel through the balancer; a text message `whoami`
//!   is answered with the process's id instead of an echo.
//!
//! [`serve`] takes an already-bound listener and a shutdown future, so tests
//! and the binary bind wherever they like (`127.0.0.1:0` in tests).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;

/// Shared by every handler of one process.
#[derive(Debug)]
pub struct AppState {
    /// Reported by `/whoami`, so a test can tell which process answered.
    pub id: String,
    /// Set when shutdown starts: `/readyz` turns 503 so balancers stop sending.
    pub draining: AtomicBool,
}

/// Builds the router; separate from [`serve`] so it can be tested without sockets.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/whoami", get(whoami))
        .route("/echo", post(echo))
        .route("/headers", any(headers))
        .route("/sleep", get(sleep))
        .route("/ws", get(ws))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then drains: `/readyz` answers 503 and
/// in-flight requests finish before this returns.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let drain_state = state.clone();
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            drain_state.draining.store(true, Ordering::SeqCst);
        })
        .await
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        "ready".into_response()
    }
}

async fn whoami(State(state): State<Arc<AppState>>) -> String {
    state.id.clone()
}

async fn echo(req: Request) -> Response {
    // Stream frames through as they arrive: no buffering of the whole body.
    Body::from_stream(req.into_body().into_data_stream()).into_response()
}

async fn headers(
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    req: Request,
) -> Json<serde_json::Value> {
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    Json(serde_json::json!({
        "method": req.method().as_str(),
        "uri": req.uri().to_string(),
        "version": format!("{:?}", req.version()),
        "headers": headers,
        "peer": peer.to_string(),
    }))
}

#[derive(Debug, serde::Deserialize)]
struct SleepQuery {
    ms: u64,
}

async fn sleep(Query(q): Query<SleepQuery>) -> String {
    let ms = q.ms.min(600_000);
    // Tests wait for this line to know the request reached the backend.
    tracing::info!(ms, "sleep started");
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms}ms")
}

async fn ws(State(state): State<Arc<AppState>>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| echo_socket(socket, state))
}

async fn echo_socket(mut socket: WebSocket, state: Arc<AppState>) {
    while let Some(Ok(msg)) = socket.recv().await {
        let reply = match msg {
            Message::Text(t) if t.as_str() == "close" => {
                let _ = socket
                    .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                        code: 1000,
                        reason: "bye".into(),
                    })))
                    .await;
                // Wait for the client's Close reply so the handshake completes.
                while let Some(Ok(m)) = socket.recv().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
                return;
            }
            Message::Text(t) if t.as_str() == "whoami" => Message::text(state.id.clone()),
            Message::Text(_) | Message::Binary(_) => msg,
            // Keep reading after a Close: that is when the WebSocket layer
            // sends the Close reply, and then the stream ends.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => continue,
        };
        if socket.send(reply).await.is_err() {
            return;
        }
    }
}
