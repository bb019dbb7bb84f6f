//! HTTP load: wrk for the measured runs, and a small keep-alive HTTP/1.1
//! client of our own (over plaintext or TLS, see [`super::endpoint`]) for
//! readiness checks, the idle connections of the memory test, the new
//! connections of the handshake load, the load during reloads and
//! `--smoke` (which must run where wrk is not installed).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::endpoint::{ClientStream, Endpoint};

/// What one wrk run reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    /// Completed requests (`N requests in T`).
    pub requests: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// `Non-2xx or 3xx responses`.
    pub non_2xx: u64,
    /// `Socket errors: connect, read, write, timeout`.
    pub socket_errors: [u64; 4],
}

impl WrkResult {
    pub fn errors(&self) -> u64 {
        self.non_2xx + self.socket_errors.iter().sum::<u64>()
    }

    /// The error counts as wrk names them, for a failure message.
    pub fn error_text(&self) -> String {
        let [c, r, w, t] = self.socket_errors;
        format!(
            "{} non-2xx/3xx responses; socket errors: connect {c}, read {r}, write {w}, \
             timeout {t} (of {} requests)",
            self.non_2xx, self.requests
        )
    }
}

/// `http://addr/healthz`, or `https://` for a TLS port (wrk sends the
/// URL's host, `127.0.0.1`, in SNI; the certificate names it).
pub fn healthz_url(addr: SocketAddr, tls: bool) -> String {
    format!("{}://{addr}/healthz", if tls { "https" } else { "http" })
}

/// Runs `wrk -t2 -c{conns} -d{secs}s --timeout 10s --latency [-H
/// header]... {url}` and parses its report.
pub async fn run_wrk(
    wrk: &Path,
    url: &str,
    headers: &[&str],
    conns: usize,
    run: Duration,
) -> anyhow::Result<WrkResult> {
    let secs = run.as_secs().max(1);
    let mut cmd = tokio::process::Command::new(wrk);
    cmd.args([
        "-t2".to_string(),
        format!("-c{conns}"),
        format!("-d{secs}s"),
        "--timeout".to_string(),
        "10s".to_string(),
        "--latency".to_string(),
    ]);
    for h in headers {
        cmd.arg("-H").arg(h);
    }
    cmd.arg(url).kill_on_drop(true).process_group(0);
    let out = tokio::time::timeout(Duration::from_secs(secs + 30), cmd.output())
        .await
        .context("wrk did not finish in time")?
        .context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}, signal {:?}): {}{}",
            out.status,
            out.status.signal(),
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text).with_context(|| format!("cannot read wrk's report:\n{text}"))
}

/// A wrk duration (`585.00us`, `1.37ms`, `2.00s`, `1.00m`) in microseconds.
fn parse_time_us(s: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600e6)
    } else {
        return None;
    };
    Some(num.parse::<f64>().ok()? * scale)
}

/// Parses wrk's text report (with `--latency`).
pub fn parse_wrk(text: &str) -> anyhow::Result<WrkResult> {
    let mut r = WrkResult::default();
    let (mut rps, mut p50, mut p99, mut reqs) = (None, None, None, None);
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            rps = rest.trim().parse::<f64>().ok();
        } else if line.starts_with("50%") {
            p50 = words.nth(1).and_then(parse_time_us);
        } else if line.starts_with("99%") {
            p99 = words.nth(1).and_then(parse_time_us);
        } else if line.contains(" requests in ") {
            reqs = words.next().and_then(|n| n.parse::<u64>().ok());
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = rest.trim().parse().context("bad Non-2xx line")?;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            for (i, name) in ["connect", "read", "write", "timeout"].iter().enumerate() {
                r.socket_errors[i] = rest
                    .split(',')
                    .map(str::trim)
                    .find_map(|part| part.strip_prefix(name))
                    .and_then(|n| n.trim().parse().ok())
                    .with_context(|| format!("no {name} count in {line:?}"))?;
            }
        }
    }
    r.requests_per_sec = rps.context("no Requests/sec line")?;
    r.p50_us = p50.context("no 50% latency line")?;
    r.p99_us = p99.context("no 99% latency line")?;
    r.requests = reqs.context("no `N requests in` line")?;
    Ok(r)
}

/// One keep-alive HTTP/1.1 connection that sends `GET` requests one at a
/// time and reads each response whole (Content-Length or chunked).
#[derive(Debug)]
pub struct Conn {
    stream: ClientStream,
    buf: Vec<u8>,
    host: String,
}

/// A response's status and whether the server closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub close: bool,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

impl Conn {
    /// Connects (and, on a TLS port, completes the handshake).
    pub async fn open(endpoint: &Endpoint) -> io::Result<Conn> {
        let stream = endpoint.connect().await?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(512),
            host: endpoint.addr.to_string(),
        })
    }

    /// Whether the TLS handshake resumed a session.
    pub fn resumed(&self) -> bool {
        super::endpoint::resumed(&self.stream)
    }

    /// Sends `GET path` and reads the whole response.
    pub async fn get(&mut self, path: &str) -> io::Result<Response> {
        self.request(path, false).await
    }

    /// Sends `GET path` with `Connection: close` and reads the whole
    /// response; the server then closes (see [`Conn::wait_closed`]).
    pub async fn get_closing(&mut self, path: &str) -> io::Result<Response> {
        self.request(path, true).await
    }

    async fn request(&mut self, path: &str, close: bool) -> io::Result<Response> {
        let connection = if close { "Connection: close\r\n" } else { "" };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\n{connection}\r\n",
            self.host
        );
        self.stream.write_all(req.as_bytes()).await?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.read_more().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|_| bad("non-UTF-8 head"))?;
        let (status, length, chunked, close) = parse_head(head)?;
        self.buf.drain(..head_end);
        if chunked {
            self.skip_chunked().await?;
        } else if let Some(n) = length {
            self.fill(n).await?;
            self.buf.drain(..n);
        } else {
            // No length: the body runs to the end of the connection; only a
            // clean end counts, a reset is a failed request.
            loop {
                match self.read_more().await {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
            }
            self.buf.clear();
            return Ok(Response {
                status,
                close: true,
            });
        }
        Ok(Response { status, close })
    }

    /// Reads until the server closes (a TLS close_notify or a bare FIN
    /// both count), so the server, not the client, is left with the
    /// connection's TIME_WAIT, as with wrk's reconnects.
    pub async fn wait_closed(mut self) -> io::Result<()> {
        let mut chunk = [0u8; 512];
        loop {
            match self.stream.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    async fn read_more(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    async fn fill(&mut self, n: usize) -> io::Result<()> {
        while self.buf.len() < n {
            self.read_more().await?;
        }
        Ok(())
    }

    async fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            self.read_more().await?;
        }
    }

    async fn skip_chunked(&mut self) -> io::Result<()> {
        loop {
            let line = self.line().await?;
            let size_hex = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.line().await?.is_empty() {}
                return Ok(());
            }
            self.fill(size + 2).await?;
            self.buf.drain(..size + 2);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Status, Content-Length, chunked, connection close.
fn parse_head(head: &str) -> io::Result<(u16, Option<usize>, bool, bool)> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or("");
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let (mut length, mut chunked) = (None, false);
    let mut close = version == "HTTP/1.0";
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = Some(value.parse().map_err(|_| bad("bad length"))?),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        length = Some(0);
    }
    Ok((status, length, chunked, close))
}

/// Counts of a keep-alive load: every request that did not end in a 200
/// failed, with why.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub ok: u64,
    pub failed: u64,
    /// Failure reasons and how often each happened.
    pub reasons: BTreeMap<String, u64>,
}

impl Counts {
    pub fn fail(&mut self, why: String) {
        self.failed += 1;
        *self.reasons.entry(why).or_default() += 1;
    }

    pub fn merge(&mut self, other: Counts) {
        self.ok += other.ok;
        self.failed += other.failed;
        for (k, v) in other.reasons {
            *self.reasons.entry(k).or_default() += v;
        }
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ok, {} failed", self.ok, self.failed)?;
        if !self.reasons.is_empty() {
            let list: Vec<String> = self
                .reasons
                .iter()
                .map(|(k, v)| format!("{v}x {k}"))
                .collect();
            write!(f, " ({})", list.join("; "))?;
        }
        Ok(())
    }
}

/// Time limit of one request (and one connect) of the Rust client.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `conns` keep-alive connections each sending `GET /healthz` in a closed
/// loop until `until`. A connection that fails or is closed by the server
/// is replaced by a new one; every request that does not get a 200
/// (connect error, reset, early close, other status, time-out) counts as
/// failed. Requests still in flight at `until` are waited for.
pub async fn keepalive_load(endpoint: &Endpoint, conns: usize, until: Instant) -> Counts {
    let tasks: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(one_connection(endpoint.clone(), until)))
        .collect();
    let mut total = Counts::default();
    for t in tasks {
        match t.await {
            Ok(c) => total.merge(c),
            Err(e) => total.fail(format!("client task: {e}")),
        }
    }
    total
}

async fn one_connection(endpoint: Endpoint, until: Instant) -> Counts {
    let mut counts = Counts::default();
    let mut conn: Option<Conn> = None;
    while Instant::now() < until {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match tokio::time::timeout(REQUEST_TIMEOUT, Conn::open(&endpoint)).await {
                Ok(Ok(c)) => conn.insert(c),
                Ok(Err(e)) => {
                    counts.fail(format!("connect: {}", e.kind()));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(_) => {
                    counts.fail("connect: timed out".to_string());
                    continue;
                }
            },
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, c.get("/healthz")).await {
            Ok(Ok(r)) => {
                if r.status == 200 {
                    counts.ok += 1;
                } else {
                    counts.fail(format!("status {}", r.status));
                }
                if r.close {
                    conn = None;
                }
            }
            Ok(Err(e)) => {
                counts.fail(format!("request: {}", e.kind()));
                conn = None;
            }
            Err(_) => {
                counts.fail("request: timed out".to_string());
                conn = None;
            }
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 3s test @ http://127.0.0.1:18080/healthz
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   623.05us  229.36us   8.22ms   90.71%
    Req/Sec    38.69k     2.61k   43.78k    71.67%
  Latency Distribution
     50%  585.00us
     75%  683.00us
     90%  801.00us
     99%    1.37ms
  231033 requests in 3.00s, 35.69MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:  76995.76
Transfer/sec:     11.89MB
";

    #[test]
    fn parses_wrk_report() {
        let r = parse_wrk(WRK).unwrap();
        assert_eq!(r.requests, 231033);
        assert!((r.requests_per_sec - 76995.76).abs() < 1e-6);
        assert!((r.p50_us - 585.0).abs() < 1e-9);
        assert!((r.p99_us - 1370.0).abs() < 1e-9);
        assert_eq!(r.non_2xx, 5);
        assert_eq!(r.socket_errors, [1, 2, 3, 4]);
        assert_eq!(r.errors(), 15);
    }

    #[test]
    fn clean_wrk_report_has_no_errors() {
        let clean: String = WRK
            .lines()
            .filter(|l| !l.contains("errors") && !l.contains("Non-2xx"))
            .map(|l| format!("{l}\n"))
            .collect();
        let r = parse_wrk(&clean).unwrap();
        assert_eq!(r.errors(), 0);
        assert!(parse_wrk("Running 1s test\n").is_err());
    }

    #[test]
    fn wrk_time_units() {
        assert_eq!(parse_time_us("2.00s"), Some(2e6));
        assert_eq!(parse_time_us("1.50m"), Some(90e6));
        assert_eq!(parse_time_us("12.5us"), Some(12.5));
        assert_eq!(parse_time_us("7"), None);
    }

    #[test]
    fn parses_heads() {
        let h = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n";
        assert_eq!(parse_head(h).unwrap(), (200, Some(2), false, false));
        let h =
            "HTTP/1.1 502 Bad Gateway\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
        assert_eq!(parse_head(h).unwrap(), (502, None, true, true));
        assert!(parse_head("garbage\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn client_reads_length_and_chunked_bodies() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            let replies: [&[u8]; 2] = [
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                b"HTTP/1.1 503 No\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n",
            ];
            for reply in replies {
                loop {
                    let n = s.read(&mut buf).await.unwrap();
                    seen.extend_from_slice(&buf[..n]);
                    if find(&seen, b"\r\n\r\n").is_some() {
                        seen.clear();
                        break;
                    }
                }
                s.write_all(reply).await.unwrap();
            }
        });
        let mut c = Conn::open(&Endpoint::plain(addr)).await.unwrap();
        assert_eq!(c.get("/healthz").await.unwrap().status, 200);
        assert_eq!(c.get("/healthz").await.unwrap().status, 503);
        assert!(c.get("/healthz").await.is_err());
    }
}
