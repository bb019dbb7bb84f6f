//! The WebSocket clients, all against the backend's echo at `/ws` through
//! the proxy (`ws://` to its plaintext port or `wss://` to its TLS port,
//! see [`super::endpoint`]): open many sockets (each exchanges one
//! message), run a closed-loop echo on them, and the paced sessions of the
//! reload test.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::endpoint::{ClientStream, Endpoint};
use super::percentile;

/// One client WebSocket.
pub type Ws = WebSocketStream<ClientStream>;

/// Time limit of a connect (TCP, TLS handshake, upgrade) and of one echo.
const STEP: Duration = Duration::from_secs(10);

/// Small buffers: the harness holds thousands of sockets carrying tiny
/// messages (the 128 KiB default read buffer would take 640 MB for 5000).
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 16))
        .max_frame_size(Some(1 << 16))
}

/// Opens `ws://addr/ws` or `wss://localhost:port/ws`.
pub async fn connect(endpoint: &Endpoint) -> anyhow::Result<Ws> {
    let open = async {
        let stream = endpoint.connect().await.context("connect")?;
        let url = endpoint.ws_url();
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config()))
            .await
            .context("upgrade")?;
        Ok::<_, anyhow::Error>(ws)
    };
    tokio::time::timeout(STEP, open)
        .await
        .map_err(|_| anyhow!("connect: timed out"))?
}

/// Sends one text message and waits for its echo.
pub async fn echo(ws: &mut Ws, text: &str) -> anyhow::Result<()> {
    let round = async {
        ws.send(Message::text(text)).await.context("send")?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str() == text => return Ok(()),
                Some(Ok(Message::Text(t))) => bail!("echo {:?} instead of {text:?}", t.as_str()),
                Some(Ok(Message::Close(f))) => {
                    bail!("closed ({})", f.map_or(1005, |f| u16::from(f.code)))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("receive: {e}"),
                None => bail!("connection dropped"),
            }
        }
    };
    tokio::time::timeout(STEP, round)
        .await
        .map_err(|_| anyhow!("echo: timed out"))?
}

/// Sends a Close frame and waits briefly for the peer's (errors ignored:
/// the socket is going away either way).
pub async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Closes many sockets, a few hundred at a time.
pub async fn close_all(sockets: Vec<Ws>) {
    futures_util::stream::iter(sockets)
        .for_each_concurrent(256, close)
        .await;
}

/// Opens `n` sockets, `parallel` at a time; each exchanges one message.
/// Fails on the first socket that cannot.
pub async fn open_many(endpoint: &Endpoint, n: usize, parallel: usize) -> anyhow::Result<Vec<Ws>> {
    let results: Vec<anyhow::Result<Ws>> = futures_util::stream::iter(0..n)
        .map(|i| async move {
            let mut ws = connect(endpoint).await?;
            echo(&mut ws, &format!("hello {i}")).await?;
            Ok(ws)
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let mut out = Vec::with_capacity(n);
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(ws) => out.push(ws),
            Err(e) => {
                close_all(out).await;
                return Err(e.context(format!("WebSocket {i} of {n} to {}", endpoint.ws_url())));
            }
        }
    }
    Ok(out)
}

/// What a closed-loop echo run did.
#[derive(Debug, Clone, Default)]
pub struct EchoResult {
    /// Echoes received before the end.
    pub messages: u64,
    /// Sockets that failed, and the first reason.
    pub failed_sockets: u64,
    pub first_error: Option<String>,
    /// Round-trip percentiles, microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Every socket sends a small text message and waits for its echo, again
/// and again, until `until`. Returns the sockets still healthy, to be
/// closed by the caller after its measurement.
pub async fn echo_load(sockets: Vec<Ws>, until: Instant) -> (EchoResult, Vec<Ws>) {
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut rtts: Vec<u32> = Vec::with_capacity(4096);
                while Instant::now() < until {
                    let t0 = Instant::now();
                    if let Err(e) = echo(&mut ws, "ping-0123456789").await {
                        return (rtts, Err(e.to_string()));
                    }
                    let us = t0.elapsed().as_micros();
                    rtts.push(u32::try_from(us).unwrap_or(u32::MAX));
                }
                (rtts, Ok(ws))
            })
        })
        .collect();
    let mut all: Vec<u32> = Vec::new();
    let mut result = EchoResult::default();
    let mut alive = Vec::new();
    for t in tasks {
        let (rtts, outcome) = match t.await {
            Ok(v) => v,
            Err(e) => (Vec::new(), Err(format!("client task: {e}"))),
        };
        result.messages += rtts.len() as u64;
        all.extend(rtts);
        match outcome {
            Ok(ws) => alive.push(ws),
            Err(e) => {
                result.failed_sockets += 1;
                result.first_error.get_or_insert(e);
            }
        }
    }
    all.sort_unstable();
    result.p50_us = percentile(&all, 0.50);
    result.p99_us = percentile(&all, 0.99);
    (result, alive)
}

/// How one paced session of the reload test ended.
#[derive(Debug, Clone, Default)]
pub struct Session {
    pub messages: u64,
    /// Why it broke (closed, errored, echo late or wrong) before the end.
    pub broken: Option<String>,
}

/// Opens a socket, then sends a message every `period` (first one after
/// `offset`) and waits for its echo, until `until`; then closes cleanly.
pub async fn paced_session(
    endpoint: Endpoint,
    offset: Duration,
    period: Duration,
    until: Instant,
) -> Session {
    let mut s = Session::default();
    let mut ws = match connect(&endpoint).await {
        Ok(ws) => ws,
        Err(e) => {
            s.broken = Some(format!("{e:#}"));
            return s;
        }
    };
    let mut next = Instant::now() + offset;
    loop {
        tokio::time::sleep_until(next).await;
        if Instant::now() >= until {
            break;
        }
        if let Err(e) = echo(&mut ws, &format!("tick {}", s.messages)).await {
            s.broken = Some(format!("{e:#}"));
            return s;
        }
        s.messages += 1;
        next += period;
    }
    close(ws).await;
    s
}
