//! A test player of the game: logs in over HTTP, plays over the `/play`
//! WebSocket (docs/protocol.md), and waits for server messages by
//! condition with a deadline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::http::{full, h1, send};
use crate::ws::Ws;
use crate::{single_pool_config, Backend, Balancer, Redis, DEADLINE};

/// Short timings so failures and takeovers happen within a test's patience.
pub const FAST: &[&str] = &[
    "--presence-ttl-ms",
    "1500",
    "--job-period-ms",
    "200",
    "--lease-ms",
    "1000",
    "--drain-spread-ms",
    "1000",
];

/// A real `redis-server`, `n` game backends and a balancer in front
/// (round robin, health checks on `/readyz` every 100 ms).
#[derive(Debug)]
pub struct Cluster {
    pub redis: Redis,
    pub backends: Vec<Backend>,
    pub lb: Balancer,
}

impl Cluster {
    pub fn start(n: usize) -> Self {
        let redis = Redis::start();
        let url = redis.url();
        Self::start_on(redis, &url, n)
    }

    /// Like [`Cluster::start`], with the backends on `url` (e.g. a
    /// `redis+sentinel://` URL in front of `redis`).
    pub fn start_on(redis: Redis, url: &str, n: usize) -> Self {
        Self::start_with(redis, url, n, &[])
    }

    /// Like [`Cluster::start_on`], with `extra` backend flags (`--flag
    /// value` pairs; a flag in `extra` replaces the one in [`FAST`]).
    pub fn start_with(redis: Redis, url: &str, n: usize, extra: &[&str]) -> Self {
        let flags: Vec<&str> = FAST
            .chunks(2)
            .filter(|pair| !extra.contains(&pair[0]))
            .flatten()
            .chain(extra)
            .copied()
            .collect();
        let backends: Vec<Backend> = (1..=n)
            .map(|i| Backend::start_game(&format!("game-{i}"), url, &flags))
            .collect();
        let list: Vec<(&str, SocketAddr, u32)> = backends
            .iter()
            .map(|b| (b.id.as_str(), b.addr, 1))
            .collect();
        let config = single_pool_config(
            &list,
            "[timeouts]\nwebsocket_idle = \"none\"\n",
        )
        .replace(
            "\n[[route]]",
            "  [pool.health]\n  path = \"/readyz\"\n  interval = \"100ms\"\n  rise = 1\n  fall = 1\n\n[[route]]",
        );
        let lb = Balancer::start(&config);
        let c = Self {
            redis,
            backends,
            lb,
        };
        for b in &c.backends {
            c.wait_ready(b);
        }
        c.lb.proc
            .wait_count("every backend up", n, |v| v["message"] == "backend up");
        c
    }

    pub fn addr(&self) -> SocketAddr {
        self.lb.addr()
    }

    /// Waits until `backend` reports ready (Redis reachable).
    pub fn wait_ready(&self, backend: &Backend) {
        backend.proc.wait_log("redis reachable", |v| {
            v["message"] == "redis reachable: subscriptions restored"
        });
    }

    /// Runs `redis-cli` against the cluster's Redis; returns its output.
    pub fn redis_cmd(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.redis.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "redis-cli {args:?}");
        String::from_utf8(out.stdout).unwrap()
    }
}

/// `POST /login` through `addr`; returns `(token, player id)`.
pub async fn login(addr: SocketAddr, name: &str) -> (String, String) {
    let req = ::http::Request::post(format!("http://{addr}/login"))
        .header("content-type", "application/json")
        .body(full(json!({ "name": name }).to_string()))
        .unwrap();
    let reply = send(&h1(), req).await;
    assert_eq!(reply.status, 200, "login: {}", reply.text());
    let v = reply.json();
    (
        v["token"].as_str().unwrap().to_string(),
        v["player"].as_str().unwrap().to_string(),
    )
}

/// One player's game socket.
#[derive(Debug)]
pub struct Player {
    pub ws: Ws,
    pub token: String,
    pub id: String,
    /// The process that said `welcome`.
    pub process: String,
    /// Messages that arrived with `welcome` (e.g. the resumed room).
    pub backlog: Vec<Value>,
}

/// Why a socket ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Close(u16),
    Dropped,
}

impl Player {
    /// Opens `/play` through `addr`, says hello with `token` and waits for
    /// `welcome`. Fails the test if the connection or hello is refused.
    pub async fn connect(addr: SocketAddr, token: &str) -> Self {
        Self::try_connect(addr, token)
            .await
            .unwrap_or_else(|e| panic!("connect to /play: {e}"))
    }

    /// Like [`Player::connect`], but returns why it could not connect (a
    /// draining process answers 503, a dead one resets).
    pub async fn try_connect(addr: SocketAddr, token: &str) -> Result<Self, String> {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/play"))
            .await
            .map_err(|e| e.to_string())?;
        let mut p = Self {
            ws,
            token: token.to_string(),
            id: String::new(),
            process: String::new(),
            backlog: Vec::new(),
        };
        p.send(json!({"v": 1, "t": "hello", "token": token})).await;
        let welcome = p.next().await.map_err(|e| format!("{e:?}"))?;
        if welcome["t"] != "welcome" {
            return Err(format!("expected welcome, got {welcome}"));
        }
        p.id = welcome["player"].as_str().unwrap().to_string();
        p.process = welcome["process"].as_str().unwrap().to_string();
        Ok(p)
    }

    /// Connects until the player lands on a process not in `avoid`
    /// (round robin moves each new connection along), at most 12 tries.
    pub async fn connect_avoiding(addr: SocketAddr, token: &str, avoid: &[&str]) -> Self {
        for _ in 0..12 {
            let p = Self::connect(addr, token).await;
            if !avoid.contains(&p.process.as_str()) {
                return p;
            }
            drop(p);
        }
        panic!("never landed on a process other than {avoid:?}");
    }

    /// Reconnects through `addr` with the same session, retrying (bounded
    /// by the deadline) while processes refuse or drop the connection.
    pub async fn reconnect(addr: SocketAddr, token: &str) -> Self {
        let end = Instant::now() + DEADLINE;
        loop {
            match Self::try_connect(addr, token).await {
                Ok(p) => return p,
                Err(e) => {
                    assert!(Instant::now() < end, "could not reconnect: {e}");
                    // A client backs off between attempts; the deadline
                    // bounds the loop.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// The next message, or how the socket ended.
    pub async fn next(&mut self) -> Result<Value, Ended> {
        if !self.backlog.is_empty() {
            return Ok(self.backlog.remove(0));
        }
        loop {
            let m = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("a message within the deadline");
            match m {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(frame))) => {
                    return Err(Ended::Close(
                        frame.map(|f| u16::from(f.code)).unwrap_or(1005),
                    ))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(Ended::Dropped),
            }
        }
    }

    /// Waits for a message of type `t` that satisfies `pred`, skipping
    /// others.
    pub async fn wait_for(&mut self, t: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_any(&[t], pred).await
    }

    /// Waits for a message whose type is one of `types` and that satisfies
    /// `pred`, skipping others.
    pub async fn wait_for_any(&mut self, types: &[&str], pred: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + DEADLINE;
        loop {
            assert!(
                Instant::now() < end,
                "no {types:?} message within {DEADLINE:?}"
            );
            match self.next().await {
                Ok(v) if types.iter().any(|t| v["t"] == *t) && pred(&v) => return v,
                Ok(_) => {}
                Err(e) => panic!("socket ended ({e:?}) while waiting for {types:?}"),
            }
        }
    }

    /// Joins `room`; returns the room snapshot.
    pub async fn join(&mut self, room: &str) -> Value {
        self.send(json!({"v": 1, "t": "join", "room": room})).await;
        self.wait_for("room", |_| true).await
    }

    /// Reads until the socket ends; returns how.
    pub async fn ended(&mut self) -> Ended {
        loop {
            if let Err(e) = self.next().await {
                return e;
            }
        }
    }

    /// Closes the socket normally.
    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
    }
}

/// Where `player` stands in a `room` snapshot.
pub fn position(room: &Value, player: &str) -> Option<(u64, u64)> {
    room["players"]
        .as_array()?
        .iter()
        .find(|p| p["id"] == player)
        .map(|p| (p["x"].as_u64().unwrap(), p["y"].as_u64().unwrap()))
}
