//! Slow clients: each holds a connection to the balancer open by doing its
//! part of HTTP/1.1 a few bytes at a time, and when the balancer ends the
//! connection, opens the next one after one pacing tick, so the pressure
//! lasts the whole run. Every client stops at its deadline or after
//! [`MAX_CONNECTIONS`] connections, whichever comes first.
//!
//! * [`Kind::Head`]: `GET /whoami`, then header bytes forever; the head
//!   never ends (slowloris). The balancer's `timeouts.request_header`
//!   should end it.
//! * [`Kind::Body`]: `POST /upload` with a `Content-Length` above the pool's
//!   `buffer_body`, so the balancer streams it to a backend, then a few
//!   body bytes a tick. `limits.upload_min_rate` (after its grace) or
//!   `limits.upload_timeout` should end it.
//! * [`Kind::Read`]: `GET /bytes?n=...` (several MiB) over a socket with a
//!   small `SO_RCVBUF`, reading a few bytes a tick.
//!
//! What each connection saw is recorded as an [`Ending`]: the status line
//! the balancer sent, if any, and how the connection ended.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::time::{sleep_until, timeout, timeout_at, Instant, MissedTickBehavior};

/// Connections one slow client opens at most.
pub const MAX_CONNECTIONS: usize = 1_000;
/// Time limit of one connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The three ways of being slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Head,
    Body,
    Read,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Head, Kind::Body, Kind::Read];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Head => "slow head",
            Kind::Body => "slow body",
            Kind::Read => "slow read",
        }
    }

    /// `head`, `body` or `read` (the command line's names).
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "head" => Some(Kind::Head),
            "body" => Some(Kind::Body),
            "read" => Some(Kind::Read),
            _ => None,
        }
    }
}

/// What every slow client of a run does.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub target: SocketAddr,
    /// One write (or read) every tick.
    pub tick: Duration,
    /// Bytes written per tick: head and body.
    pub write_bytes: usize,
    /// Bytes read per tick: slow read.
    pub read_bytes: usize,
    /// `Content-Length` of the slow bodies.
    pub body_len: u64,
    /// Size of the slow downloads.
    pub download_len: u64,
    /// `SO_RCVBUF` of the slow readers' sockets (the kernel doubles it).
    pub rcvbuf: u32,
    /// When every slow client stops.
    pub until: Instant,
}

/// How one connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum End {
    /// The balancer closed it (FIN).
    Closed,
    /// Reset, or a write failed (the balancer had closed it).
    Reset,
    /// Still open when the client's own time ran out.
    StillOpen,
}

/// What the balancer did to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ending {
    /// The status of the response the balancer sent, if one began.
    pub status: Option<u16>,
    pub end: End,
}

impl Ending {
    /// Whether the balancer ended it (rather than the client's deadline).
    pub fn cut_off(self) -> bool {
        self.end != End::StillOpen
    }
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => write!(f, "{s}")?,
            None => write!(f, "no response")?,
        }
        f.write_str(match self.end {
            End::Closed => ", then closed",
            End::Reset => ", then reset",
            End::StillOpen => ", open at the end",
        })
    }
}

/// What all the slow clients of one kind saw.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub clients: usize,
    pub connections: u64,
    pub connect_errors: u64,
    /// Each kind of ending and how often.
    pub endings: BTreeMap<Ending, u64>,
    /// For the connections the balancer cut off: milliseconds from the
    /// connect to the cut-off.
    pub cut_after_ms: Vec<u32>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.clients += other.clients;
        self.connections += other.connections;
        self.connect_errors += other.connect_errors;
        for (k, v) in other.endings {
            *self.endings.entry(k).or_default() += v;
        }
        self.cut_after_ms.extend(other.cut_after_ms);
    }

    pub fn cut_off(&self) -> u64 {
        self.endings
            .iter()
            .filter(|(e, _)| e.cut_off())
            .map(|(_, n)| n)
            .sum()
    }

    /// `"333x 408, then closed; 12x no response, open at the end"`.
    pub fn endings_text(&self) -> String {
        let v: Vec<String> = self
            .endings
            .iter()
            .map(|(e, n)| format!("{n}x {e}"))
            .collect();
        v.join("; ")
    }
}

/// Starts `count` slow clients of `kind`, their starts spread over `spread`;
/// resolves when they have all stopped, with what they saw.
pub async fn run(plan: Plan, kind: Kind, count: usize, spread: Duration) -> Tally {
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let start = t0 + spread.mul_f64(i as f64 / count.max(1) as f64);
            tokio::spawn(async move {
                sleep_until(start).await;
                one_client(plan, kind).await
            })
        })
        .collect();
    let mut total = Tally::default();
    for t in tasks {
        if let Ok(t) = t.await {
            total.add(t);
        }
    }
    total
}

/// One slow client: connection after connection until the deadline.
async fn one_client(plan: Plan, kind: Kind) -> Tally {
    let mut tally = Tally {
        clients: 1,
        ..Tally::default()
    };
    for _ in 0..MAX_CONNECTIONS {
        if Instant::now() >= plan.until {
            break;
        }
        let start = Instant::now();
        match connection(plan, kind).await {
            Ok(ending) => {
                tally.connections += 1;
                *tally.endings.entry(ending).or_default() += 1;
                if !ending.cut_off() {
                    break;
                }
                let ms = start.elapsed().as_millis().min(u128::from(u32::MAX)) as u32;
                tally.cut_after_ms.push(ms);
            }
            Err(_) => tally.connect_errors += 1,
        }
        // Pacing: one tick before the next connection.
        sleep_until((Instant::now() + plan.tick).min(plan.until)).await;
    }
    tally
}

/// The status code of a response that starts with `head`, once its status
/// line's code has arrived.
fn status_of(head: &[u8]) -> Option<u16> {
    let code = head.strip_prefix(b"HTTP/1.")?.get(2..5)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

fn end_of(e: &io::Error) -> End {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => End::Closed,
        _ => End::Reset,
    }
}

/// One paced connection; `Err` only when it could not be opened.
async fn connection(plan: Plan, kind: Kind) -> io::Result<Ending> {
    let socket = TcpSocket::new_v4()?;
    if kind == Kind::Read {
        socket.set_recv_buffer_size(plan.rcvbuf)?;
    }
    let stream = timeout(CONNECT_TIMEOUT, socket.connect(plan.target))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let host = plan.target;
    let prelude = match kind {
        Kind::Head => format!("GET /whoami HTTP/1.1\r\nHost: {host}\r\n"),
        Kind::Body => format!(
            "POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n",
            plan.body_len
        ),
        Kind::Read => format!(
            "GET /bytes?n={} HTTP/1.1\r\nHost: {host}\r\n\r\n",
            plan.download_len
        ),
    };
    let mut ending = Ending {
        status: None,
        end: End::StillOpen,
    };
    if let Err(e) = wr.write_all(prelude.as_bytes()).await {
        ending.end = end_of(&e);
        return Ok(ending);
    }
    let mut ticks = tokio::time::interval_at(Instant::now() + plan.tick, plan.tick);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first bytes of the response, for its status line.
    let mut head: Vec<u8> = Vec::with_capacity(16);
    let mut note = |ending: &mut Ending, bytes: &[u8]| {
        if head.len() < 16 {
            head.extend_from_slice(&bytes[..bytes.len().min(16 - head.len())]);
            ending.status = ending.status.or_else(|| status_of(&head));
        }
    };

    if kind == Kind::Read {
        let mut buf = vec![0u8; plan.read_bytes.max(1)];
        loop {
            tokio::select! {
                _ = sleep_until(plan.until) => return Ok(ending),
                _ = ticks.tick() => {}
            }
            match timeout_at(plan.until, rd.read(&mut buf)).await {
                Err(_) => return Ok(ending),
                Ok(Ok(0)) => {
                    ending.end = End::Closed;
                    return Ok(ending);
                }
                Ok(Ok(n)) => note(&mut ending, &buf[..n]),
                Ok(Err(e)) => {
                    ending.end = end_of(&e);
                    return Ok(ending);
                }
            }
        }
    }

    // Head and body: write a few bytes a tick, read whatever comes.
    let filler: Vec<u8> = match kind {
        // A header line that never ends: `X-Slow: aaaa...`.
        Kind::Head => b"X-Slow: ".to_vec(),
        _ => Vec::new(),
    };
    let mut pending = filler;
    let mut sent: u64 = 0;
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            _ = sleep_until(plan.until) => return Ok(ending),
            _ = ticks.tick() => {
                while pending.len() < plan.write_bytes {
                    pending.push(if kind == Kind::Head { b'a' } else { b'b' });
                }
                let n = plan.write_bytes.min(pending.len());
                if kind == Kind::Body && sent >= plan.body_len {
                    continue;
                }
                if let Err(e) = wr.write_all(&pending[..n]).await {
                    ending.end = end_of(&e);
                    return Ok(ending);
                }
                pending.drain(..n);
                sent += n as u64;
            }
            r = rd.read(&mut buf) => match r {
                Ok(0) => {
                    ending.end = End::Closed;
                    return Ok(ending);
                }
                Ok(n) => note(&mut ending, &buf[..n]),
                Err(e) => {
                    ending.end = end_of(&e);
                    return Ok(ending);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_codes() {
        assert_eq!(status_of(b"HTTP/1.1 408 Request Timeout"), Some(408));
        assert_eq!(status_of(b"HTTP/1.0 200"), Some(200));
        assert_eq!(status_of(b"HTTP/1.1 2"), None);
        assert_eq!(status_of(b"garbage"), None);
    }

    #[test]
    fn endings_read_well() {
        let e = Ending {
            status: Some(408),
            end: End::Closed,
        };
        assert_eq!(e.to_string(), "408, then closed");
        assert!(e.cut_off());
        let e = Ending {
            status: None,
            end: End::StillOpen,
        };
        assert_eq!(e.to_string(), "no response, open at the end");
        assert!(!e.cut_off());
    }
}
