//! `loadgen`: a load generator for the game behind the balancer.
//!
//! It opens N player WebSockets through the balancer, puts them in rooms,
//! sends M actions per second for a fixed time, and reports how the game
//! delivered them: end-to-end latency, messages lost, reconnects, errors
//! and how players spread over the backend processes. It is bounded in
//! player count (5000), time and memory, and refuses any target that is not
//! a loopback address.
//!
//! # What it does
//!
//! 1. **Setup.** Player `i` logs in (`POST /login {"name":"p<i>"}` over
//!    HTTP/1.1), opens `ws://TARGET/play`, says `hello` with its token,
//!    reads `welcome` (which names the process that serves it), joins room
//!    `load-<run id>-<i mod R>` (round robin, so the `R = ceil(N / S)` rooms
//!    fill evenly) and waits for the `room` snapshot, which gives its
//!    starting cell. Players start evenly over `--ramp` seconds; all of them
//!    must be in their rooms within `--setup-timeout` seconds after the ramp,
//!    or the run stops with exit code 1.
//! 2. **Actions.** One scheduler ticks every millisecond and hands out the
//!    actions due so far (`rate * elapsed`) to the players in rotation, so
//!    every player acts at `rate / players` per second (the server allows
//!    20 per second, bursts of 40: faster runs are refused). An action is a
//!    `move` that stays on the 16x12 board (each player predicts its cell
//!    from its `room` snapshot, its own `moved` events and the moves still
//!    in flight, and keeps one cell away from the edges), or with
//!    `--chat-every K` every K-th action is a `chat` line. Each action
//!    carries `"ref": "<run>:<g>:<i>:<us>"`: the global action number, the
//!    sender, and the send time in microseconds since a shared origin.
//! 3. **Delivery.** The server broadcasts each accepted action (`moved`,
//!    `chat`, with the same `ref`) to every member of the room, sender
//!    included, across processes through Redis. Every receiving socket
//!    takes `now - us` as one latency sample (a log-linear histogram with
//!    under 1% error), counts the delivery against action `g`, and whether
//!    sender and receiver sit on different processes (cross-process).
//! 4. **Accounting.** After `--duration` seconds sending stops; the run waits
//!    up to `--grace` seconds for stragglers. Expected deliveries are, for
//!    each action sent, the size of the sender's room; actions the server
//!    answered with `error` are taken out again. Lost = expected - received
//!    (duplicates are counted apart and do not hide losses).
//! 5. **Reconnects.** A socket that closes (1012 from a draining backend,
//!    1013, or a dropped connection) reconnects through the target with the
//!    same token after a backoff of 100 ms doubling to 2 s (jittered). The
//!    server resumes the room after `hello`; actions the scheduler picks for
//!    a player that is away are skipped (not expected), and the actions sent
//!    in its room while it was away are reported as "room actions while
//!    away" (an upper bound on what reconnecting cost).
//!
//! Wall time is at most ramp + setup timeout + duration + grace + about 5 s
//! to close the sockets. The final report goes to stdout, as text or, with
//! `--json`, as one JSON object; progress lines go to stderr.
//!
//! # Example
//!
//! ```text
//! redis-server --port 6400 --save '' --appendonly no &
//! cargo build --release -p balancer -p backend -p benches
//! target/release/backend --listen 127.0.0.1:9001 --id game-1 --redis redis://127.0.0.1:6400 &
//! target/release/backend --listen 127.0.0.1:9002 --id game-2 --redis redis://127.0.0.1:6400 &
//! RUST_LOG=info,access=off target/release/balancer --config lb.toml &   # listens on 127.0.0.1:8080
//! target/release/loadgen --target 127.0.0.1:8080 --players 200 --rate 400 --duration 5
//! ```
//!
//! where `lb.toml` has a `public` listener on 127.0.0.1:8080, a `game` pool
//! with both backends (`policy = "round_robin"`, health `path = "/readyz"`),
//! a route `/` to it and `[timeouts] websocket_idle = "none"`.
//!
//! Exit code: 0 when the run completed (read the report for losses), 1 when
//! a player could not connect at setup or the target refused the run (or
//! the arguments were refused), 2 for command line errors.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::Parser;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Board size of the game (backend `rules::WIDTH` / `HEIGHT`).
const WIDTH: i32 = 16;
const HEIGHT: i32 = 12;
/// The server's per-player limit: sustained actions per second.
const SERVER_ACTIONS_PER_SEC: f64 = 20.0;
/// Most actions one run may schedule (bounds the per-action counters:
/// 4 bytes each).
const MAX_ACTIONS: u64 = 20_000_000;
/// Timeout of each setup step (login, connect, welcome, room).
const STEP: Duration = Duration::from_secs(10);
/// How long the sockets get to close at the end.
const SHUTDOWN: Duration = Duration::from_secs(5);
/// Latency samples a socket task buffers before merging them.
const LOCAL_SAMPLES: usize = 512;
/// Moves a player remembers as in flight (unconfirmed) at most.
const MAX_IN_FLIGHT: usize = 256;
/// Distinct setup failure reasons kept in the report.
const MAX_REASONS: usize = 16;

#[derive(Debug, Parser)]
#[command(
    about = "Load generator for the game: players over WebSockets through the balancer, \
             end-to-end delivery latency, losses and reconnects (loopback targets only)"
)]
struct Args {
    /// The balancer's address, IP:port (loopback only; `localhost:port` is
    /// taken as 127.0.0.1).
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: String,
    /// Players (WebSockets) to open.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=5000))]
    players: u32,
    /// Players per room (at most the servers' --room-capacity).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    room_size: u32,
    /// Actions per second, in total over all players.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    rate: u64,
    /// Seconds of sending actions.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    duration: u64,
    /// Seconds over which the sockets are opened.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=600))]
    ramp: u64,
    /// Every K-th action is a chat line instead of a move (0: moves only).
    #[arg(long, default_value_t = 0)]
    chat_every: u64,
    /// Seconds to wait for stragglers after sending stops.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=60))]
    grace: u64,
    /// Seconds after the ramp by which every player must be in its room.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=300))]
    setup_timeout: u64,
    /// Print the final report as one JSON object.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The target as a socket address; anything but loopback is refused.
fn parse_target(raw: &str) -> anyhow::Result<SocketAddr> {
    let addr = match raw.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => match raw.strip_prefix("localhost:") {
            Some(port) => SocketAddr::from((
                [127, 0, 0, 1],
                port.parse::<u16>()
                    .with_context(|| format!("bad port in --target {raw:?}"))?,
            )),
            None => bail!("--target must be IP:port (e.g. 127.0.0.1:8080), got {raw:?}"),
        },
    };
    if !addr.ip().is_loopback() {
        bail!(
            "refusing target {addr}: loadgen only runs against loopback addresses \
             (127.0.0.0/8 or ::1)"
        );
    }
    Ok(addr)
}

/// One room of the run.
#[derive(Debug)]
struct Room {
    name: String,
    /// Players assigned to it: everyone who receives its events.
    size: u16,
    /// Actions sent by its members so far.
    sent: AtomicU64,
}

/// State shared by the scheduler, the socket tasks and the report.
#[derive(Debug)]
struct Shared {
    run: String,
    /// `run` plus ':', the prefix of every ref of this run.
    ref_prefix: String,
    origin: Instant,
    target: SocketAddr,
    rooms: Vec<Room>,
    chat_every: u64,
    /// Per player: in its room and accepting actions.
    ready: Vec<AtomicBool>,
    /// Per player: index + 1 into `process_names` of its current process.
    process: Vec<AtomicU16>,
    process_names: Mutex<Vec<String>>,
    /// Per action: deliveries expected (room size when sent; 0 if not sent).
    expected: Vec<AtomicU16>,
    /// Per action: deliveries received.
    delivered: Vec<AtomicU16>,
    /// Set when the action phase begins: errors from then on refuse actions.
    acting: AtomicBool,
    c: Counters,
    /// Server `error` codes received after setup.
    errors: Mutex<BTreeMap<String, u64>>,
    setup_failures: Mutex<BTreeMap<String, u64>>,
    reconnect_failures: Mutex<BTreeMap<String, u64>>,
    hist: Mutex<Histogram>,
}

#[derive(Debug, Default)]
struct Counters {
    setup_ok: AtomicU64,
    setup_failed: AtomicU64,
    /// Microseconds since the origin when the last player got in its room.
    setup_done_us: AtomicU64,
    sent: AtomicU64,
    skipped: AtomicU64,
    expected: AtomicU64,
    refused: AtomicU64,
    refused_expected: AtomicU64,
    /// Deliveries received (merged from the socket tasks every 100 ms).
    delivered: AtomicU64,
    cross: AtomicU64,
    /// Events with this run's ref prefix that named no action of the run.
    unknown_refs: AtomicU64,
    reconnects: AtomicU64,
    reconnect_failures: AtomicU64,
    away: AtomicU64,
    /// Of the reconnects: on a process with another id than before (a
    /// supervised instance's replacement keeps its id), with another
    /// player id than before (the session was lost), and with no room
    /// snapshot after `welcome` (the room was lost: joined again).
    resumed_elsewhere: AtomicU64,
    resumed_new_session: AtomicU64,
    resumed_rejoined: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn now_us(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn room_of(&self, player: usize) -> usize {
        player % self.rooms.len()
    }

    /// Records `name` as player `i`'s process.
    fn set_process(&self, i: usize, name: &str) {
        let mut names = lock(&self.process_names);
        let idx = match names.iter().position(|n| n == name) {
            Some(p) => p,
            None => {
                names.push(name.to_string());
                names.len() - 1
            }
        };
        let idx = u16::try_from(idx + 1).unwrap_or(u16::MAX);
        if let Some(p) = self.process.get(i) {
            p.store(idx, Ordering::Relaxed);
        }
    }

    fn count(map: &Mutex<BTreeMap<String, u64>>, key: &str) {
        let mut m = lock(map);
        if let Some(n) = m.get_mut(key) {
            *n += 1;
        } else if m.len() < MAX_REASONS {
            m.insert(key.to_string(), 1);
        } else {
            *m.entry("(other)".to_string()).or_default() += 1;
        }
    }

    /// Players per process name, as they are now.
    fn players_per_process(&self) -> BTreeMap<String, u64> {
        let names = lock(&self.process_names).clone();
        let mut out = BTreeMap::new();
        for p in &self.process {
            let idx = usize::from(p.load(Ordering::Relaxed));
            if let Some(name) = idx.checked_sub(1).and_then(|i| names.get(i)) {
                *out.entry(name.clone()).or_default() += 1;
            }
        }
        out
    }
}

/// Log-linear latency histogram in microseconds: exact below 256, then 128
/// sub-buckets per power of two (relative error under 1%).
#[derive(Debug)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u64,
    max: u64,
}

const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;

impl Histogram {
    fn new() -> Self {
        Self {
            counts: vec![0; Self::index(u64::MAX) + 1],
            total: 0,
            sum: 0,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        let idx = if v < 2 * SUB {
            v
        } else {
            let msb = 63 - v.leading_zeros();
            let shift = msb - SUB_BITS;
            2 * SUB + u64::from(shift - 1) * SUB + ((v >> shift) - SUB)
        };
        usize::try_from(idx).unwrap_or(usize::MAX)
    }

    /// The smallest value of bucket `idx` and the bucket's width.
    fn bucket(idx: usize) -> (u64, u64) {
        let idx = idx as u64;
        if idx < 2 * SUB {
            return (idx, 1);
        }
        let k = idx - 2 * SUB;
        let shift = k / SUB + 1;
        ((k % SUB + SUB) << shift, 1 << shift)
    }

    fn record(&mut self, v: u64) {
        if let Some(c) = self.counts.get_mut(Self::index(v)) {
            *c += 1;
        }
        self.total += 1;
        self.sum = self.sum.saturating_add(v);
        self.max = self.max.max(v);
    }

    /// The value at quantile `q` (0..=1): the middle of its bucket.
    fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (idx, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (low, width) = Self::bucket(idx);
                return (low + (width - 1) / 2).min(self.max);
            }
        }
        self.max
    }
}

/// What a socket task measured since it last merged into [`Shared`].
#[derive(Debug, Default)]
struct Local {
    samples: Vec<u32>,
    delivered: u64,
    cross: u64,
}

impl Local {
    fn flush(&mut self, ctx: &Shared) {
        if self.delivered == 0 && self.samples.is_empty() {
            return;
        }
        {
            let mut h = lock(&ctx.hist);
            for &s in &self.samples {
                h.record(u64::from(s));
            }
        }
        self.samples.clear();
        ctx.c.delivered.fetch_add(self.delivered, Ordering::Relaxed);
        ctx.c.cross.fetch_add(self.cross, Ordering::Relaxed);
        self.delivered = 0;
        self.cross = 0;
    }
}

/// A player's idea of its cell: the last confirmed one plus the moves in
/// flight.
#[derive(Debug, Default)]
struct Track {
    confirmed: (i32, i32),
    /// (action, dx, dy) of moves sent and not yet seen.
    in_flight: VecDeque<(u64, i32, i32)>,
}

const DIRS: [(&str, i32, i32); 4] = [
    ("up", 0, -1),
    ("down", 0, 1),
    ("left", -1, 0),
    ("right", 1, 0),
];

impl Track {
    fn reset(&mut self, at: (i32, i32)) {
        self.confirmed = at;
        self.in_flight.clear();
    }

    fn predicted(&self) -> (i32, i32) {
        self.in_flight
            .iter()
            .fold(self.confirmed, |(x, y), &(_, dx, dy)| (x + dx, y + dy))
    }

    /// A direction that keeps the player on the board, one cell away from
    /// the edges when it can (so a mispredicted cell stays on the board).
    fn choose(&self, rng: &mut fastrand::Rng) -> (&'static str, i32, i32) {
        let (x, y) = self.predicted();
        for margin in [1, 0] {
            let ok = |&&(_, dx, dy): &&(&str, i32, i32)| {
                let (nx, ny) = (x + dx, y + dy);
                nx >= margin && nx < WIDTH - margin && ny >= margin && ny < HEIGHT - margin
            };
            let n = DIRS.iter().filter(ok).count();
            if n > 0 {
                if let Some(&d) = DIRS.iter().filter(ok).nth(rng.usize(..n)) {
                    return d;
                }
            }
        }
        // The prediction is off the board: head for the middle.
        if x < WIDTH / 2 {
            DIRS[3]
        } else {
            DIRS[2]
        }
    }

    fn own_moved(&mut self, action: u64, x: i32, y: i32) {
        self.confirmed = (x, y);
        // Events of one player arrive in order: anything older still in
        // flight was refused.
        while self.in_flight.front().is_some_and(|&(g, _, _)| g <= action) {
            self.in_flight.pop_front();
        }
    }

    fn sent(&mut self, action: u64, dx: i32, dy: i32) {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            self.in_flight.pop_front();
        }
        self.in_flight.push_back((action, dx, dy));
    }
}

/// The fields of a server message the hot path needs.
#[derive(Debug, Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    t: Cow<'a, str>,
    #[serde(rename = "ref", borrow, default)]
    r: Option<Cow<'a, str>>,
    #[serde(default)]
    x: Option<i32>,
    #[serde(default)]
    y: Option<i32>,
    #[serde(default)]
    code: Option<String>,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Http = Client<HttpConnector, Full<Bytes>>;

/// One open game socket.
struct Conn {
    sink: SplitSink<Ws, Message>,
    stream: SplitStream<Ws>,
}

/// One player's socket task state.
#[derive(Debug)]
struct Me {
    i: usize,
    room: usize,
    id: String,
    /// The process that served the last connection.
    process: String,
    local: Local,
    track: Track,
    rng: fastrand::Rng,
}

impl Me {
    /// Handles a `moved`/`chat` event; returns false if it was not one of
    /// this run's actions.
    fn delivery(&mut self, ctx: &Shared, ev: &Event<'_>) -> bool {
        let Some(r) = ev.r.as_deref() else {
            return false;
        };
        let Some(rest) = r.strip_prefix(ctx.ref_prefix.as_str()) else {
            return false;
        };
        let now = ctx.now_us();
        let mut parts = rest.split(':').map(str::parse::<u64>);
        let (Some(Ok(g)), Some(Ok(sender)), Some(Ok(us))) =
            (parts.next(), parts.next(), parts.next())
        else {
            ctx.c.unknown_refs.fetch_add(1, Ordering::Relaxed);
            return true;
        };
        let Some(counter) = usize::try_from(g).ok().and_then(|g| ctx.delivered.get(g)) else {
            ctx.c.unknown_refs.fetch_add(1, Ordering::Relaxed);
            return true;
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.local.delivered += 1;
        self.local
            .samples
            .push(u32::try_from(now.saturating_sub(us)).unwrap_or(u32::MAX));
        let sender = usize::try_from(sender).unwrap_or(usize::MAX);
        if let (Some(a), Some(b)) = (ctx.process.get(sender), ctx.process.get(self.i)) {
            if a.load(Ordering::Relaxed) != b.load(Ordering::Relaxed) {
                self.local.cross += 1;
            }
        }
        if sender == self.i && ev.t == "moved" {
            if let (Some(x), Some(y)) = (ev.x, ev.y) {
                self.track.own_moved(g, x, y);
            }
        }
        if self.local.samples.len() >= LOCAL_SAMPLES {
            self.local.flush(ctx);
        }
        true
    }

    /// My cell in a `room` snapshot.
    fn position_in(&self, room: &Value) -> Option<(i32, i32)> {
        let p = room["players"]
            .as_array()?
            .iter()
            .find(|p| p["id"].as_str() == Some(self.id.as_str()))?;
        let x = i32::try_from(p["x"].as_u64()?).ok()?;
        let y = i32::try_from(p["y"].as_u64()?).ok()?;
        Some((x, y))
    }
}

/// `POST /login` through the target; returns the session token.
async fn login(http: &Http, target: SocketAddr, name: &str) -> anyhow::Result<String> {
    #[derive(Deserialize)]
    struct Reply {
        token: String,
    }
    let body = serde_json::json!({ "name": name }).to_string();
    let req = http::Request::post(format!("http://{target}/login"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = tokio::time::timeout(STEP, http.request(req))
        .await
        .map_err(|_| anyhow!("login: timed out"))?
        .map_err(|e| anyhow!("login: {}", root_cause(&e)))?;
    let status = resp.status();
    let body = tokio::time::timeout(STEP, resp.into_body().collect())
        .await
        .map_err(|_| anyhow!("login: body timed out"))?
        .map_err(|e| anyhow!("login: body: {e}"))?
        .to_bytes();
    if !status.is_success() {
        bail!("login: HTTP {}", status.as_u16());
    }
    let reply: Reply = serde_json::from_slice(&body).context("login: unexpected reply")?;
    Ok(reply.token)
}

/// The innermost error message (hyper's outer ones say little).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut e = e;
    while let Some(s) = e.source() {
        e = s;
    }
    e.to_string()
}

/// The next text message before `deadline`; fails if the socket ends.
async fn next_text(
    stream: &mut SplitStream<Ws>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<String> {
    loop {
        let m = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| anyhow!("timed out"))?;
        match m {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_string()),
            Some(Ok(Message::Close(f))) => {
                bail!("closed ({})", f.map(|f| u16::from(f.code)).unwrap_or(1005))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("socket error: {e}"),
            None => bail!("socket dropped"),
        }
    }
}

/// Small socket buffers: thousands of sockets carry small messages (the
/// defaults, 128 KiB each way, would take over 600 MB for 5000 players).
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// Opens `/play`, says hello and gets the player into its room: by
/// joining (`resume == false`) or by the server's resume after hello.
async fn connect(ctx: &Shared, me: &mut Me, token: &str, resume: bool) -> anyhow::Result<Conn> {
    let url = format!("ws://{}/play", ctx.target);
    let (ws, _) = tokio::time::timeout(
        STEP,
        tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true),
    )
    .await
    .map_err(|_| anyhow!("connect: timed out"))?
    .map_err(|e| anyhow!("connect: {e}"))?;
    let (mut sink, mut stream) = ws.split();
    let hello = serde_json::json!({"v": 1, "t": "hello", "token": token}).to_string();
    sink.send(Message::text(hello))
        .await
        .map_err(|e| anyhow!("hello: {e}"))?;

    let deadline = tokio::time::Instant::now() + STEP;
    let welcome: Value = loop {
        let text = next_text(&mut stream, deadline)
            .await
            .map_err(|e| anyhow!("welcome: {e}"))?;
        let v: Value = serde_json::from_str(&text).context("welcome: bad JSON")?;
        match v["t"].as_str() {
            Some("welcome") => break v,
            Some("error") => bail!("hello refused: {}", v["code"].as_str().unwrap_or("?")),
            _ => {}
        }
    };
    let id = welcome["player"].as_str().unwrap_or_default().to_string();
    let process = welcome["process"].as_str().unwrap_or("?").to_string();
    if resume {
        if id != me.id {
            ctx.c.resumed_new_session.fetch_add(1, Ordering::Relaxed);
        }
        if process != me.process {
            ctx.c.resumed_elsewhere.fetch_add(1, Ordering::Relaxed);
        }
    }
    me.id = id;
    ctx.set_process(me.i, &process);
    me.process = process;

    let room = &ctx.rooms[me.room].name;
    let join = serde_json::json!({"v": 1, "t": "join", "room": room}).to_string();
    let mut joined = false;
    if !resume {
        sink.send(Message::text(join.clone()))
            .await
            .map_err(|e| anyhow!("join: {e}"))?;
        joined = true;
    }
    // After a resume the snapshot follows `welcome` at once; if it does not
    // (the session lost its room), join explicitly.
    let mut wait = if resume {
        tokio::time::Instant::now() + Duration::from_secs(2)
    } else {
        deadline
    };
    loop {
        let text = match next_text(&mut stream, wait).await {
            Ok(t) => t,
            Err(_) if !joined && tokio::time::Instant::now() >= wait => {
                sink.send(Message::text(join.clone()))
                    .await
                    .map_err(|e| anyhow!("join: {e}"))?;
                joined = true;
                wait = tokio::time::Instant::now() + STEP;
                continue;
            }
            Err(e) => bail!("room: {e}"),
        };
        let ev: Event<'_> = serde_json::from_str(&text).context("room: bad JSON")?;
        match ev.t.as_ref() {
            "room" => {
                let v: Value = serde_json::from_str(&text).context("room: bad JSON")?;
                if v["room"].as_str() != Some(room.as_str()) {
                    continue;
                }
                let at = me
                    .position_in(&v)
                    .ok_or_else(|| anyhow!("room: the snapshot does not list the player"))?;
                me.track.reset(at);
                if resume && joined {
                    ctx.c.resumed_rejoined.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(Conn { sink, stream });
            }
            "moved" | "chat" => {
                me.delivery(ctx, &ev);
            }
            "error" => {
                let code = ev.code.as_deref().unwrap_or("?");
                if joined {
                    bail!("join refused: {code}");
                }
                sink.send(Message::text(join.clone()))
                    .await
                    .map_err(|e| anyhow!("join: {e}"))?;
                joined = true;
                wait = tokio::time::Instant::now() + STEP;
            }
            _ => {}
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// What the main loop of a socket task does next.
enum Next {
    Continue,
    Reconnect,
    Stop,
}

/// One player, from login to the end of the run.
async fn player(
    ctx: Arc<Shared>,
    http: Http,
    i: usize,
    start_at: tokio::time::Instant,
    mut cmds: mpsc::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut me = Me {
        i,
        room: ctx.room_of(i),
        id: String::new(),
        process: String::new(),
        local: Local::default(),
        track: Track::default(),
        rng: fastrand::Rng::new(),
    };
    tokio::select! {
        _ = tokio::time::sleep_until(start_at) => {}
        _ = stopped(&mut stop) => return,
    }
    let setup = async {
        let token = login(&http, ctx.target, &format!("p{i}")).await?;
        let conn = connect(&ctx, &mut me, &token, false).await?;
        anyhow::Ok((token, conn))
    };
    let result = tokio::select! {
        r = setup => r,
        _ = stopped(&mut stop) => return,
    };
    let (token, mut conn) = match result {
        Ok(v) => v,
        Err(e) => {
            Shared::count(&ctx.setup_failures, &format!("{e:#}"));
            ctx.c.setup_failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    ctx.c
        .setup_done_us
        .fetch_max(ctx.now_us(), Ordering::Relaxed);
    ctx.ready[i].store(true, Ordering::Relaxed);
    ctx.c.setup_ok.fetch_add(1, Ordering::Relaxed);

    let mut flush = tokio::time::interval(Duration::from_millis(100));
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = tokio::select! {
            _ = stopped(&mut stop) => Next::Stop,
            m = conn.stream.next() => match m {
                Some(Ok(Message::Text(t))) => on_text(&ctx, &mut me, &mut conn, t.as_str()).await,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => Next::Reconnect,
                Some(Ok(_)) => Next::Continue,
            },
            Some(g) = cmds.recv() => send_action(&ctx, &mut me, &mut conn, g).await,
            _ = flush.tick() => {
                me.local.flush(&ctx);
                Next::Continue
            }
        };
        match next {
            Next::Continue => {}
            Next::Stop => break,
            Next::Reconnect => match reconnect(&ctx, &mut me, &token, &mut stop).await {
                Some(c) => {
                    conn = c;
                    // Actions handed out while away are not sent.
                    while cmds.try_recv().is_ok() {
                        ctx.c.skipped.fetch_add(1, Ordering::Relaxed);
                    }
                    ctx.ready[i].store(true, Ordering::Relaxed);
                }
                None => {
                    me.local.flush(&ctx);
                    return;
                }
            },
        }
    }
    ctx.ready[i].store(false, Ordering::Relaxed);
    me.local.flush(&ctx);
    let _ =
        tokio::time::timeout(Duration::from_secs(1), conn.sink.send(Message::Close(None))).await;
}

/// Handles one text message in the main loop.
async fn on_text(ctx: &Shared, me: &mut Me, conn: &mut Conn, text: &str) -> Next {
    let Ok(ev) = serde_json::from_str::<Event<'_>>(text) else {
        Shared::count(&ctx.errors, "(unparsable message)");
        return Next::Continue;
    };
    match ev.t.as_ref() {
        "moved" | "chat" => {
            me.delivery(ctx, &ev);
        }
        "error" => {
            let code = ev.code.as_deref().unwrap_or("?");
            Shared::count(&ctx.errors, code);
            if ctx.acting.load(Ordering::Relaxed) {
                ctx.c.refused.fetch_add(1, Ordering::Relaxed);
                ctx.c
                    .refused_expected
                    .fetch_add(u64::from(ctx.rooms[me.room].size), Ordering::Relaxed);
            }
            if code == "not_in_room" {
                // Removed from the room (e.g. presence expired): join again.
                ctx.ready[me.i].store(false, Ordering::Relaxed);
                let join =
                    serde_json::json!({"v": 1, "t": "join", "room": ctx.rooms[me.room].name});
                if conn
                    .sink
                    .send(Message::text(join.to_string()))
                    .await
                    .is_err()
                {
                    return Next::Reconnect;
                }
            }
        }
        "room" => {
            if let Ok(v) = serde_json::from_str::<Value>(text) {
                if v["room"].as_str() == Some(ctx.rooms[me.room].name.as_str()) {
                    if let Some(at) = me.position_in(&v) {
                        me.track.reset(at);
                        ctx.ready[me.i].store(true, Ordering::Relaxed);
                    }
                }
            }
        }
        _ => {}
    }
    Next::Continue
}

/// Sends action `g` (a move or a chat line) stamped with the time now.
async fn send_action(ctx: &Shared, me: &mut Me, conn: &mut Conn, g: u64) -> Next {
    let Some(expected) = usize::try_from(g).ok().and_then(|g| ctx.expected.get(g)) else {
        return Next::Continue;
    };
    let room = &ctx.rooms[me.room];
    let chat = ctx.chat_every > 0 && (g + 1) % ctx.chat_every == 0;
    let us = ctx.now_us();
    let r = format!("{}{g}:{}:{us}", ctx.ref_prefix, me.i);
    let text = if chat {
        format!(r#"{{"v":1,"t":"chat","text":"load {g}","ref":"{r}"}}"#)
    } else {
        let (dir, dx, dy) = me.track.choose(&mut me.rng);
        me.track.sent(g, dx, dy);
        format!(r#"{{"v":1,"t":"move","dir":"{dir}","ref":"{r}"}}"#)
    };
    expected.store(room.size, Ordering::Relaxed);
    ctx.c.sent.fetch_add(1, Ordering::Relaxed);
    ctx.c
        .expected
        .fetch_add(u64::from(room.size), Ordering::Relaxed);
    room.sent.fetch_add(1, Ordering::Relaxed);
    match conn.sink.send(Message::text(text)).await {
        Ok(()) => Next::Continue,
        Err(_) => Next::Reconnect,
    }
}

/// Reconnects with the same token, backing off 100 ms doubling to 2 s
/// (jittered), until it works or the run stops (None).
async fn reconnect(
    ctx: &Shared,
    me: &mut Me,
    token: &str,
    stop: &mut watch::Receiver<bool>,
) -> Option<Conn> {
    ctx.ready[me.i].store(false, Ordering::Relaxed);
    me.local.flush(ctx);
    let room = &ctx.rooms[me.room];
    let away_from = room.sent.load(Ordering::Relaxed);
    let mut backoff = Duration::from_millis(100);
    loop {
        let wait = backoff.mul_f64(0.5 + 0.5 * me.rng.f64());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped(stop) => return None,
        }
        let attempt = tokio::select! {
            r = connect(ctx, me, token, true) => r,
            _ = stopped(stop) => return None,
        };
        match attempt {
            Ok(conn) => {
                ctx.c.reconnects.fetch_add(1, Ordering::Relaxed);
                let away = room.sent.load(Ordering::Relaxed).saturating_sub(away_from);
                ctx.c.away.fetch_add(away, Ordering::Relaxed);
                return Some(conn);
            }
            Err(e) => {
                Shared::count(&ctx.reconnect_failures, &format!("{e:#}"));
                ctx.c.reconnect_failures.fetch_add(1, Ordering::Relaxed);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Hands out `rate * elapsed` actions to the players in rotation until
/// `duration` has passed; returns (actions scheduled, seconds taken).
async fn schedule(
    ctx: &Shared,
    cmds: &[mpsc::Sender<u64>],
    rate: u64,
    duration: Duration,
) -> (u64, f64) {
    let start = tokio::time::Instant::now();
    let total = (rate * duration.as_secs()).min(ctx.expected.len() as u64);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    progress.tick().await;
    let mut g = 0u64;
    let mut next = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = progress.tick() => {
                eprintln!(
                    "loadgen: {:>4.0}s  sent {}  delivered {}  reconnects {}  errors {}",
                    start.elapsed().as_secs_f64(),
                    ctx.c.sent.load(Ordering::Relaxed),
                    ctx.c.delivered.load(Ordering::Relaxed),
                    ctx.c.reconnects.load(Ordering::Relaxed),
                    lock(&ctx.errors).values().sum::<u64>(),
                );
                continue;
            }
        }
        let elapsed = start.elapsed();
        let due = if elapsed >= duration {
            total
        } else {
            ((elapsed.as_secs_f64() * rate as f64) as u64).min(total)
        };
        while g < due {
            let p = next;
            next = (next + 1) % cmds.len();
            let ready = ctx.ready[p].load(Ordering::Relaxed);
            if !ready || cmds[p].try_send(g).is_err() {
                ctx.c.skipped.fetch_add(1, Ordering::Relaxed);
            }
            g += 1;
        }
        if elapsed >= duration {
            return (g, elapsed.as_secs_f64());
        }
    }
}

#[derive(Debug, Serialize)]
struct Latency {
    samples: u64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    mean_ms: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    run: String,
    target: String,
    /// False when setup failed (exit code 1).
    ok: bool,
    players: u32,
    players_connected: u64,
    setup_failures: BTreeMap<String, u64>,
    rooms: usize,
    room_size: u32,
    setup_secs: f64,
    rate_target: u64,
    action_secs: f64,
    actions_scheduled: u64,
    actions_sent: u64,
    /// Scheduled for a player that was reconnecting (not sent, not expected).
    actions_skipped: u64,
    actions_per_sec: f64,
    /// Actions answered with `error`.
    actions_refused: u64,
    deliveries_expected: u64,
    deliveries_received: u64,
    deliveries_duplicate: u64,
    lost: u64,
    /// Actions sent in a player's room while it was reconnecting.
    room_actions_while_away: u64,
    latency: Latency,
    reconnects: u64,
    /// Of `reconnects`: on another process, with a new session, joined
    /// their room again (see the counters).
    resumed_elsewhere: u64,
    resumed_new_session: u64,
    resumed_rejoined: u64,
    reconnect_failures: u64,
    reconnect_failure_reasons: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    rate_limited: u64,
    unknown_refs: u64,
    distinct_processes: usize,
    players_per_process_at_setup: BTreeMap<String, u64>,
    players_per_process: BTreeMap<String, u64>,
    cross_process_deliveries: u64,
    cross_process_fraction: f64,
    wall_secs: f64,
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let target = parse_target(&args.target)?;
    let players = args.players as usize;
    let per_player = args.rate as f64 / f64::from(args.players);
    if per_player > SERVER_ACTIONS_PER_SEC {
        bail!(
            "--rate {} over {} players is {per_player:.1} actions/s each, above the server's \
             limit of {SERVER_ACTIONS_PER_SEC}/s per player: use more players or a lower rate",
            args.rate,
            args.players
        );
    }
    let actions = args.rate * args.duration;
    if actions > MAX_ACTIONS {
        bail!("--rate x --duration is {actions} actions; at most {MAX_ACTIONS} per run");
    }
    benches::raise_fd_limit(
        u64::from(args.players) + 256,
        &format!("{} players", args.players),
    )?;

    let n_rooms = players.div_ceil(args.room_size as usize);
    let rooms: Vec<Room> = (0..n_rooms)
        .map(|k| {
            let size = (players - k).div_ceil(n_rooms);
            Room {
                name: String::new(),
                size: u16::try_from(size).unwrap_or(u16::MAX),
                sent: AtomicU64::new(0),
            }
        })
        .collect();
    let run = format!("{:08x}", fastrand::u32(..));
    let rooms = rooms
        .into_iter()
        .enumerate()
        .map(|(k, r)| Room {
            name: format!("load-{run}-{k}"),
            ..r
        })
        .collect();
    let origin = Instant::now();
    let ctx = Arc::new(Shared {
        ref_prefix: format!("{run}:"),
        run,
        origin,
        target,
        rooms,
        chat_every: args.chat_every,
        ready: (0..players).map(|_| AtomicBool::new(false)).collect(),
        process: (0..players).map(|_| AtomicU16::new(0)).collect(),
        process_names: Mutex::new(Vec::new()),
        expected: (0..=actions).map(|_| AtomicU16::new(0)).collect(),
        delivered: (0..=actions).map(|_| AtomicU16::new(0)).collect(),
        acting: AtomicBool::new(false),
        c: Counters::default(),
        errors: Mutex::new(BTreeMap::new()),
        setup_failures: Mutex::new(BTreeMap::new()),
        reconnect_failures: Mutex::new(BTreeMap::new()),
        hist: Mutex::new(Histogram::new()),
    });

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(STEP));
    let http: Http = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build(connector);

    eprintln!(
        "loadgen: run {} -> {target}: {players} players in {n_rooms} rooms, {} actions/s for {} s",
        ctx.run, args.rate, args.duration
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let t0 = tokio::time::Instant::now();
    let ramp = Duration::from_secs(args.ramp);
    let mut cmd_txs = Vec::with_capacity(players);
    let mut tasks = Vec::with_capacity(players);
    for i in 0..players {
        let (tx, rx) = mpsc::channel(16);
        cmd_txs.push(tx);
        let start_at = t0 + ramp.mul_f64(i as f64 / players as f64);
        tasks.push(tokio::spawn(player(
            ctx.clone(),
            http.clone(),
            i,
            start_at,
            rx,
            stop_rx.clone(),
        )));
    }

    // Setup: everyone in their rooms, or give up.
    let setup_deadline = t0 + ramp + Duration::from_secs(args.setup_timeout);
    loop {
        let ok = ctx.c.setup_ok.load(Ordering::Relaxed);
        let failed = ctx.c.setup_failed.load(Ordering::Relaxed);
        if ok + failed >= players as u64 || tokio::time::Instant::now() >= setup_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connected = ctx.c.setup_ok.load(Ordering::Relaxed);
    let setup_secs = ctx.c.setup_done_us.load(Ordering::Relaxed) as f64 / 1e6;
    let at_setup = ctx.players_per_process();
    let setup_ok = connected == players as u64;
    if setup_ok {
        eprintln!(
            "loadgen: {connected} players in their rooms after {setup_secs:.2} s on {} processes",
            at_setup.len()
        );
    } else {
        let missing = players as u64 - connected - ctx.c.setup_failed.load(Ordering::Relaxed);
        if missing > 0 {
            Shared::count(
                &ctx.setup_failures,
                "(not in the room by the setup deadline)",
            );
            ctx.c.setup_failed.fetch_add(missing, Ordering::Relaxed);
        }
        eprintln!("loadgen: setup failed: {connected}/{players} players connected");
    }

    // Actions, then a grace period for stragglers.
    let (scheduled, action_secs) = if setup_ok {
        ctx.acting.store(true, Ordering::Relaxed);
        let r = schedule(
            &ctx,
            &cmd_txs,
            args.rate,
            Duration::from_secs(args.duration),
        )
        .await;
        let grace_end = tokio::time::Instant::now() + Duration::from_secs(args.grace);
        while tokio::time::Instant::now() < grace_end {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let want = ctx.c.expected.load(Ordering::Relaxed)
                - ctx.c.refused_expected.load(Ordering::Relaxed);
            if ctx.c.delivered.load(Ordering::Relaxed) >= want {
                break;
            }
        }
        r
    } else {
        (0, 0.0)
    };

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(SHUTDOWN, futures_util::future::join_all(tasks)).await;

    let report = build_report(
        &ctx,
        &args,
        setup_ok,
        setup_secs,
        at_setup,
        scheduled,
        action_secs,
    );
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_text(&report);
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn build_report(
    ctx: &Shared,
    args: &Args,
    ok: bool,
    setup_secs: f64,
    at_setup: BTreeMap<String, u64>,
    scheduled: u64,
    action_secs: f64,
) -> Report {
    let c = &ctx.c;
    let (mut received, mut duplicate) = (0u64, 0u64);
    for (e, d) in ctx.expected.iter().zip(&ctx.delivered) {
        let (e, d) = (
            u64::from(e.load(Ordering::Relaxed)),
            u64::from(d.load(Ordering::Relaxed)),
        );
        received += d.min(e);
        duplicate += d.saturating_sub(e);
    }
    let expected = c
        .expected
        .load(Ordering::Relaxed)
        .saturating_sub(c.refused_expected.load(Ordering::Relaxed));
    let hist = lock(&ctx.hist);
    let ms = |us: u64| us as f64 / 1000.0;
    let latency = Latency {
        samples: hist.total,
        p50_ms: ms(hist.quantile(0.50)),
        p90_ms: ms(hist.quantile(0.90)),
        p99_ms: ms(hist.quantile(0.99)),
        p999_ms: ms(hist.quantile(0.999)),
        max_ms: ms(hist.max),
        mean_ms: if hist.total == 0 {
            0.0
        } else {
            ms(hist.sum) / hist.total as f64
        },
    };
    let delivered_all = c.delivered.load(Ordering::Relaxed);
    let cross = c.cross.load(Ordering::Relaxed);
    let errors = lock(&ctx.errors).clone();
    let sent = c.sent.load(Ordering::Relaxed);
    let per_process = ctx.players_per_process();
    Report {
        run: ctx.run.clone(),
        target: ctx.target.to_string(),
        ok,
        players: args.players,
        players_connected: c.setup_ok.load(Ordering::Relaxed),
        setup_failures: lock(&ctx.setup_failures).clone(),
        rooms: ctx.rooms.len(),
        room_size: args.room_size,
        setup_secs,
        rate_target: args.rate,
        action_secs,
        actions_scheduled: scheduled,
        actions_sent: sent,
        actions_skipped: c.skipped.load(Ordering::Relaxed),
        actions_per_sec: if action_secs > 0.0 {
            sent as f64 / action_secs
        } else {
            0.0
        },
        actions_refused: c.refused.load(Ordering::Relaxed),
        deliveries_expected: expected,
        deliveries_received: received,
        deliveries_duplicate: duplicate,
        lost: expected.saturating_sub(received),
        room_actions_while_away: c.away.load(Ordering::Relaxed),
        latency,
        reconnects: c.reconnects.load(Ordering::Relaxed),
        resumed_elsewhere: c.resumed_elsewhere.load(Ordering::Relaxed),
        resumed_new_session: c.resumed_new_session.load(Ordering::Relaxed),
        resumed_rejoined: c.resumed_rejoined.load(Ordering::Relaxed),
        reconnect_failures: c.reconnect_failures.load(Ordering::Relaxed),
        reconnect_failure_reasons: lock(&ctx.reconnect_failures).clone(),
        rate_limited: errors.get("rate_limited").copied().unwrap_or(0),
        errors,
        unknown_refs: c.unknown_refs.load(Ordering::Relaxed),
        distinct_processes: lock(&ctx.process_names).len(),
        players_per_process_at_setup: at_setup,
        players_per_process: per_process,
        cross_process_deliveries: cross,
        cross_process_fraction: if delivered_all == 0 {
            0.0
        } else {
            cross as f64 / delivered_all as f64
        },
        wall_secs: ctx.origin.elapsed().as_secs_f64(),
    }
}

fn print_text(r: &Report) {
    let procs = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("loadgen run {} -> {}", r.run, r.target);
    println!(
        "players      {}/{} connected in {:.2} s, {} rooms of up to {}",
        r.players_connected, r.players, r.setup_secs, r.rooms, r.room_size
    );
    for (reason, n) in &r.setup_failures {
        println!("  setup failure x{n}: {reason}");
    }
    println!(
        "processes    {} at setup ({}); at the end: {}",
        r.players_per_process_at_setup.len(),
        procs(&r.players_per_process_at_setup),
        procs(&r.players_per_process)
    );
    println!(
        "actions      {} sent in {:.2} s ({:.1}/s, target {}/s), {} skipped, {} refused",
        r.actions_sent,
        r.action_secs,
        r.actions_per_sec,
        r.rate_target,
        r.actions_skipped,
        r.actions_refused
    );
    println!(
        "deliveries   {}/{} received, {} lost, {} duplicate, {:.1}% cross-process",
        r.deliveries_received,
        r.deliveries_expected,
        r.lost,
        r.deliveries_duplicate,
        100.0 * r.cross_process_fraction
    );
    let l = &r.latency;
    println!(
        "latency ms   p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}  ({} samples)",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms, l.samples
    );
    println!(
        "reconnects   {} ({} failed attempts), room actions while away {}",
        r.reconnects, r.reconnect_failures, r.room_actions_while_away
    );
    println!(
        "resumes      {} on another backend id, {} with a new session (lost), {} had to join their room again",
        r.resumed_elsewhere, r.resumed_new_session, r.resumed_rejoined
    );
    for (reason, n) in &r.reconnect_failure_reasons {
        println!("  reconnect failure x{n}: {reason}");
    }
    if r.errors.is_empty() {
        println!("errors       none");
    } else {
        println!("errors       {}", procs(&r.errors));
    }
    if r.rate_limited > 0 {
        println!(
            "warning      {} actions were rate limited by the server",
            r.rate_limited
        );
    }
    println!("wall time    {:.2} s", r.wall_secs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_contiguous_and_tight() {
        let mut prev_end = 0;
        for idx in 0..Histogram::index(u64::from(u32::MAX)) {
            let (low, width) = Histogram::bucket(idx);
            assert_eq!(low, prev_end, "bucket {idx}");
            assert_eq!(Histogram::index(low), idx);
            assert_eq!(Histogram::index(low + width - 1), idx);
            assert!(width == 1 || width * 100 <= low, "bucket {idx} too wide");
            prev_end = low + width;
        }
        let mut h = Histogram::new();
        for v in 1..=1000 {
            h.record(v * 10);
        }
        let p50 = h.quantile(0.5);
        assert!((4950..=5050).contains(&p50), "{p50}");
        assert_eq!(h.quantile(1.0), 10_000);
    }

    #[test]
    fn targets_must_be_loopback() {
        assert!(parse_target("127.0.0.1:8080").is_ok());
        assert!(parse_target("[::1]:8080").is_ok());
        assert_eq!(
            parse_target("localhost:9").ok(),
            Some(SocketAddr::from(([127, 0, 0, 1], 9)))
        );
        assert!(parse_target("10.0.0.1:8080").is_err());
        assert!(parse_target("example.com:80").is_err());
    }

    #[test]
    fn moves_stay_on_the_board() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut t = Track::default();
        for g in 0..10_000 {
            let (_, dx, dy) = t.choose(&mut rng);
            t.sent(g, dx, dy);
            let (x, y) = t.predicted();
            assert!((0..WIDTH).contains(&x) && (0..HEIGHT).contains(&y));
            t.own_moved(g, x, y);
        }
    }
}
