//! The game server process that runs behind the balancer.
//!
//! With `--redis URL` it is a multiplayer game server: many processes share
//! one game through Redis (docs/protocol.md). Without it, it serves only the
//! probes and echo endpoints the balancer's tests and benchmarks use.
//!
//! Layout: [`rules`] (pure game rules) and [`protocol`] (the JSON messages)
//! have no I/O; [`store`] is the shared state in Redis, [`bus`] the
//! cross-process pub/sub, [`jobs`] the cluster-wide periodic jobs under a
//! lease, [`game`] one process's part of it all, and [`play`] one player's
//! socket.
//!
//! * `GET /`: the browser client (one embedded page, no CDN).
//! * `POST /login`: `{"name": ...}` -> `{"token","player","name"}`, a session
//!   any process accepts.
//! * `GET /play`: the game's WebSocket.
//! * `GET /healthz`: 200 while the process is alive.
//! * `GET /readyz`: 200, or 503 while the process drains after SIGTERM or
//!   while Redis is unreachable.
//! * `GET /whoami`: the process's `--id`, as plain text.
//! * `POST /echo`: streams the request body back as it arrives.
//! * `POST /upload`: reads the whole request body (counting, not keeping
//!   it), then answers with its length: an upload that is answered only
//!   once it has arrived, as most are.
//! * `GET /headers`: the request head as JSON (method, uri, version, headers,
//!   and the peer address of the connection it came on), so tests can see
//!   exactly what the balancer forwarded and whether it reused a connection.
//! * `GET /sleep?ms=N`: answers after N milliseconds (at most 10 minutes).
//! * `GET /bytes?n=N`: N bytes (at most 1 GiB) with a Content-Length,
//!   written 64 KiB at a time as the client takes them: a large download
//!   for slow-reader tests and benchmarks.
//! * `GET /ws`: WebSocket echo of text and binary messages; a text message
//!   `close` makes the server close the socket (code 1000), so tests can see a
//!   backend-side close travel through the balancer; a text message `whoami`
//!   is answered with the process's id instead of an echo.
//!
//! [`serve`] takes an already-bound listener and a shutdown future, so tests
//! and the binary bind wherever they like (`127.0.0.1:0` in tests).

pub mod bus;
pub mod game;
pub mod jobs;
pub mod play;
pub mod protocol;
pub mod rules;
pub mod store;
pub mod tls;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use tokio::net::TcpListener;

/// Shared by every handler of one process.
#[derive(Debug)]
pub struct AppState {
    /// Reported by `/whoami`, so a test can tell which process answered.
    pub id: String,
    /// Set when shutdown starts: `/readyz` turns 503 so balancers stop sending.
    pub draining: AtomicBool,
    /// The game, when the process runs with `--redis`.
    pub game: Option<Arc<game::Game>>,
}

impl AppState {
    /// A process without the game (probes and echo endpoints only).
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_string(),
            draining: AtomicBool::new(false),
            game: None,
        }
    }
}

/// Builds the router; separate from [`serve`] so it can be tested without sockets.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/whoami", get(whoami))
        .route("/echo", post(echo))
        .route("/upload", post(upload))
        .route("/headers", any(headers))
        .route("/sleep", get(sleep))
        .route("/bytes", get(bytes))
        .route("/ws", get(ws))
        .route("/", get(index))
        .route("/login", post(login).layer(DefaultBodyLimit::max(4096)))
        .route("/play", get(play))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then drains:
///
/// 1. `/readyz` and new `/play` upgrades answer 503, so the balancer's
///    health checks move new players to other processes;
/// 2. every game socket gets a Close 1012 ("service restart") at a random
///    time within the drain spread, so clients reconnect elsewhere (and
///    resume) a few at a time rather than all at once;
/// 3. once they are closed (or after the spread plus 5 s), the listener
///    stops, in-flight HTTP requests finish, and the job leases are released
///    so another process takes the jobs over at once.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let background = state
        .game
        .as_ref()
        .map(|g| g.spawn_background(stop_rx))
        .unwrap_or_default();
    let drain_state = state.clone();
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    // Game events are small and latency-bound: no Nagle delay.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            drain_state.draining.store(true, Ordering::SeqCst);
            if let Some(game) = &drain_state.game {
                let sockets = game.open_sockets();
                tracing::info!(sockets, spread = ?game.settings.drain_spread, "draining game sockets");
                game.begin_drain();
                let limit = game.settings.drain_spread + Duration::from_secs(5);
                if !game.wait_sockets_closed(limit).await {
                    tracing::warn!(left = game.open_sockets(), "game sockets still open after the drain limit");
                }
            }
        })
        .await;
    let _ = stop_tx.send(true);
    for task in background {
        let _ = task.await;
    }
    served
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    match &state.game {
        Some(g) if !g.redis_up.load(Ordering::SeqCst) => {
            (StatusCode::SERVICE_UNAVAILABLE, "redis unreachable").into_response()
        }
        _ => "ready".into_response(),
    }
}

/// The browser client: one page, embedded at build time.
async fn index() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../client/index.html"),
    )
        .into_response()
}

#[derive(Debug, serde::Deserialize)]
struct LoginRequest {
    name: String,
}

/// `POST /login {"name"}`: a new session in Redis, valid on every process.
async fn login(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let Some(game) = &state.game else {
        return unavailable("this process runs without --redis: no game here");
    };
    let req: LoginRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("expected {{\"name\": ...}}: {e}"),
            )
                .into_response()
        }
    };
    let name = match rules::player_name(&req.name) {
        Ok(n) => n,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match game.store.login(&name).await {
        Ok(session) => Json(session).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "login failed");
            unavailable("shared state unreachable; try again shortly")
        }
    }
}

/// `GET /play`: the game's WebSocket.
async fn play(State(state): State<Arc<AppState>>, upgrade: WebSocketUpgrade) -> Response {
    let Some(game) = state.game.clone() else {
        return unavailable("this process runs without --redis: no game here");
    };
    if state.draining.load(Ordering::SeqCst) {
        return unavailable("draining: connect again (to another process)");
    }
    upgrade
        .max_message_size(play::MAX_MESSAGE)
        .max_frame_size(play::MAX_MESSAGE)
        .on_upgrade(move |socket| play::serve_socket(socket, game))
}

fn unavailable(why: &'static str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, "1")],
        why,
    )
        .into_response()
}

async fn whoami(State(state): State<Arc<AppState>>) -> String {
    state.id.clone()
}

async fn echo(req: Request) -> Response {
    // Stream frames through as they arrive: no buffering of the whole body.
    Body::from_stream(req.into_body().into_data_stream()).into_response()
}

async fn upload(req: Request) -> Response {
    use futures_util::StreamExt;
    let mut body = req.into_body().into_data_stream();
    let mut len: u64 = 0;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => len += c.len() as u64,
            Err(e) => return (StatusCode::BAD_REQUEST, format!("body: {e}\n")).into_response(),
        }
    }
    format!("{len} bytes\n").into_response()
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

#[derive(Debug, serde::Deserialize)]
struct BytesQuery {
    n: u64,
}

/// Largest `/bytes` answer.
const MAX_BYTES: u64 = 1 << 30;

async fn bytes(Query(q): Query<BytesQuery>) -> Response {
    const CHUNK: u64 = 64 * 1024;
    let n = q.n.min(MAX_BYTES);
    let block = axum::body::Bytes::from(vec![b'x'; CHUNK as usize]);
    // Lazily, one chunk per poll: the body never sits in memory whole,
    // and a slow reader holds back the writer (backpressure).
    let chunks = futures_util::stream::iter((0..n.div_ceil(CHUNK)).map(move |i| {
        let len = CHUNK.min(n - i * CHUNK) as usize;
        Ok::<_, std::convert::Infallible>(block.slice(..len))
    }));
    (
        [(axum::http::header::CONTENT_LENGTH, n.to_string())],
        Body::from_stream(chunks),
    )
        .into_response()
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
