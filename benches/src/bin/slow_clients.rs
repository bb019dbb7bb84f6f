//! `slow_clients`: does the balancer stay available to normal clients while
//! many slow ones hold connections, and does it keep its connections to the
//! backends under `max_connections_per_backend`? (Issue 15.)
//!
//! ```text
//! cargo build --release -p balancer -p backend
//! cargo run -p benches --release --bin slow_clients                  # about 75 s
//! cargo run -p benches --release --bin slow_clients -- --kinds head,body
//! ```
//!
//! # Set-up
//!
//! Everything on 127.0.0.1, started here and stopped by PID at the end
//! (the side-by-side harness's [`Child`]): two `backend` processes (from
//! `target/release`), and the release `balancer` in front of them on port
//! 0 with one pool (round robin, `max_connections_per_backend = --cap`,
//! the default queue of 64 for 1 s), `[limits] max_connections_per_ip = 0`
//! (every client here is 127.0.0.1), the other limits and timeouts at
//! their defaults unless `--upload-timeout` or `--buffer-body` say
//! otherwise, and an admin listener for the sampling.
//!
//! # Method
//!
//! 1. **Undisturbed**: `--normal` keep-alive connections send `GET
//!    /whoami` in a closed loop for `--measure` seconds (after a 2 s warm-up
//!    that is not counted); every request's latency is recorded.
//! 2. **Disturbed**: `--slow` slow clients start, split evenly over
//!    `--kinds` (see `benches/src/slow_clients/attackers.rs`: slow head,
//!    slow body of `--body-len` bytes, slow read of `--download-len` bytes
//!    with `SO_RCVBUF = --rcvbuf`), one write or read of a few bytes every
//!    `--tick-ms`, their starts spread over 2 s. Each one reconnects (after
//!    one tick) when the balancer cuts it off, so the pressure lasts. After
//!    `--settle` seconds (past the 10 s head timeout and upload grace, so
//!    cut-offs and reconnects are under way) the same normal load runs
//!    again for `--measure` seconds. The slow clients stop 3 s later.
//! 3. Through both phases the balancer's connections to each backend are
//!    sampled every 100 ms from `GET /api/status`: `open` (requests in
//!    flight, what the cap counts) and `tcp_connections_peak` (the most TCP
//!    connections at once, counted by the balancer as each socket opens
//!    and closes, so nothing between two samples is missed). Every 500 ms
//!    the kernel's count from `/proc/net/tcp` cross-checks it (sockets the
//!    balancer process holds, in `ESTABLISHED`, to a backend's port).
//!
//! The load generator is this process, on the same cores as the balancer
//! and the backends.
//!
//! # Output and exit code
//!
//! Markdown tables on stdout: p50/p99 undisturbed and disturbed and their
//! ratio, the peak backend connections against the cap, what the balancer
//! did to the slow connections, the balancer's error counters. Exit code 1
//! if a normal request failed, or the connections in use or the TCP
//! connections to a backend went over the cap (correctness); the p99 ratio
//! is reported, not judged.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context};
use benches::compare::child::Child;
use benches::compare::endpoint::Endpoint;
use benches::compare::percentile;
use benches::compare::report;
use benches::compare::targets::{wait_ready, Programs, Upstreams};
use benches::slow_clients::attackers::{self, Kind, Plan, Tally};
use benches::slow_clients::backend_conns::{self, Peaks};
use benches::slow_clients::normal::{self, Latencies};
use clap::Parser;
use tokio::time::Instant;

#[derive(Debug, Parser)]
#[command(about = "Normal clients' latency beside many slow clients (loopback only)")]
struct Args {
    /// Slow clients, split evenly over --kinds.
    #[arg(long, default_value_t = 1000)]
    slow: usize,
    /// Normal keep-alive connections.
    #[arg(long, default_value_t = 32)]
    normal: usize,
    /// Which slow clients: head, body, read (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "head,body,read")]
    kinds: Vec<String>,
    /// Seconds of each normal-client measurement.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=60))]
    measure: u64,
    /// Seconds between the slow clients' start and the second measurement.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u64).range(0..=60))]
    settle: u64,
    /// `max_connections_per_backend` of the pool.
    #[arg(long, default_value_t = 64)]
    cap: usize,
    /// Milliseconds between two writes (or reads) of a slow client.
    #[arg(long, default_value_t = 1000)]
    tick_ms: u64,
    /// Bytes a slow head or slow body client writes per tick.
    #[arg(long, default_value_t = 4)]
    write_bytes: usize,
    /// Bytes a slow reader reads per tick.
    #[arg(long, default_value_t = 16)]
    read_bytes: usize,
    /// Content-Length of a slow body.
    #[arg(long, default_value_t = 1 << 20)]
    body_len: u64,
    /// Size of a slow reader's download.
    #[arg(long, default_value_t = 8 << 20)]
    download_len: u64,
    /// SO_RCVBUF of a slow reader's socket, bytes.
    #[arg(long, default_value_t = 4096)]
    rcvbuf: u32,
    /// `limits.upload_timeout`, e.g. "20s" (default: the balancer's).
    #[arg(long)]
    upload_timeout: Option<String>,
    /// `pool.buffer_body`, bytes (default: the balancer's, 64 KiB).
    #[arg(long)]
    buffer_body: Option<u64>,
    /// `pool.buffer_response_file`, bytes (default: the balancer's, 1 GiB);
    /// 0 for the control run in which slow readers hold their backends.
    #[arg(long)]
    buffer_response_file: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("slow_clients: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut kinds = Vec::new();
    for k in &args.kinds {
        let kind =
            Kind::parse(k).with_context(|| format!("unknown kind {k:?}: head, body, read"))?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    if kinds.is_empty() {
        bail!("--kinds is empty");
    }
    let programs = Programs::find(&benches::compare::targets::binary_dir(
        &benches::compare::targets::workspace_root(),
        false,
    ))?;
    benches::raise_fd_limit(
        (args.slow + args.normal) as u64 * 2 + 4096,
        "the slow clients",
    )?;
    let tmp = tempfile::Builder::new()
        .prefix("slow-clients-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcome = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        // On a signal the run's future is dropped, and with it every
        // process guard: each started process is stopped by its PID.
        tokio::select! {
            r = measure(&args, &kinds, &programs, tmp.path()) => r.map(Some),
            _ = term.recv() => Ok(None),
            _ = int.recv() => Ok(None),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    let Some(r) = outcome? else {
        eprintln!("slow_clients: interrupted, stopped what was started");
        return Ok(ExitCode::from(130));
    };
    let machine = report::machine(&programs);
    println!("{}", r.markdown(&args, &machine.hardware()));
    let problems = r.problems(args.cap);
    if problems.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            eprintln!("slow_clients: FAILED: {p}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// Everything one run measured.
#[derive(Debug)]
struct Results {
    undisturbed: Latencies,
    disturbed: Latencies,
    peaks_undisturbed: Peaks,
    peaks_disturbed: Peaks,
    slow: Vec<(Kind, Tally)>,
    /// The balancer's error and refusal counters at the end.
    counters: Vec<String>,
    started: std::time::SystemTime,
}

fn balancer_config(args: &Args, backends: &[SocketAddr]) -> String {
    let mut s = String::from(
        "# Written by benches' slow_clients.\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\n\
         [limits]\nmax_connections_per_ip = 0\n",
    );
    if let Some(t) = &args.upload_timeout {
        let _ = writeln!(s, "upload_timeout = {t:?}");
    }
    let _ = write!(
        s,
        "\n[[listener]]\nname = \"front\"\naddress = \"127.0.0.1:0\"\n\n\
         [[pool]]\nname = \"up\"\npolicy = \"round_robin\"\n\
         max_connections_per_backend = {}\n",
        args.cap
    );
    if let Some(b) = args.buffer_body {
        let _ = writeln!(s, "buffer_body = {b}");
    }
    if let Some(b) = args.buffer_response_file {
        let _ = writeln!(s, "buffer_response_file = {b}");
    }
    for (i, a) in backends.iter().enumerate() {
        let _ = write!(
            s,
            "\n  [[pool.backend]]\n  id = \"up-{}\"\n  address = \"{a}\"\n",
            i + 1
        );
    }
    s.push_str("\n[[route]]\nlistener = \"front\"\npath_prefix = \"/\"\npool = \"up\"\n");
    s
}

/// The `address` of the balancer's first JSON log line with `message`.
async fn logged_address(child: &mut Child, message: &str) -> anyhow::Result<SocketAddr> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        child.check_running()?;
        let found = child
            .log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == message)
            .and_then(|v| v["address"].as_str()?.parse().ok());
        if let Some(a) = found {
            return Ok(a);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the balancer logged no {message:?} line in 15 s")
}

/// Normal load and sampling together for `secs`.
async fn normal_phase(
    front: &Endpoint,
    conns: usize,
    admin: SocketAddr,
    backends: &[SocketAddr],
    secs: u64,
) -> (Latencies, Peaks) {
    let until = Instant::now() + Duration::from_secs(secs);
    tokio::join!(
        normal::run(front, conns, "/whoami", until),
        backend_conns::sample(admin, backends, Duration::from_millis(100), until),
    )
}

async fn measure(
    args: &Args,
    kinds: &[Kind],
    programs: &Programs,
    dir: &Path,
) -> anyhow::Result<Results> {
    let started = std::time::SystemTime::now();
    let mut upstreams = Upstreams::start(programs, dir).await?;
    let backends = upstreams.addrs.clone();
    let config = dir.join("balancer.toml");
    std::fs::write(&config, balancer_config(args, &backends))?;
    let mut cmd = Command::new(&programs.balancer);
    cmd.arg("--config")
        .arg(&config)
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info,access=off");
    let mut balancer = Child::spawn("balancer", cmd, &dir.join("balancer.log"))?;
    backend_conns::watch(balancer.pid());
    let front_addr = logged_address(&mut balancer, "listening").await?;
    let admin = logged_address(&mut balancer, "admin listening").await?;
    let front = Endpoint::plain(front_addr);
    wait_ready(&mut balancer, &front).await?;
    eprintln!("slow_clients: balancer on {front_addr}, admin on {admin}, backends {backends:?}");

    // Warm-up: connections to the backends, allocator, caches.
    normal::run(
        &front,
        args.normal,
        "/whoami",
        Instant::now() + Duration::from_secs(2),
    )
    .await;

    eprintln!(
        "slow_clients: undisturbed, {} connections, {} s",
        args.normal, args.measure
    );
    let (undisturbed, peaks_undisturbed) =
        normal_phase(&front, args.normal, admin, &backends, args.measure).await;

    let slow_for = Duration::from_secs(args.settle + args.measure + 3);
    let plan = Plan {
        target: front_addr,
        tick: Duration::from_millis(args.tick_ms.max(1)),
        write_bytes: args.write_bytes.max(1),
        read_bytes: args.read_bytes.max(1),
        body_len: args.body_len,
        download_len: args.download_len,
        rcvbuf: args.rcvbuf,
        until: Instant::now() + slow_for,
    };
    eprintln!(
        "slow_clients: {} slow clients ({}) for {} s; measuring again after {} s",
        args.slow,
        kinds
            .iter()
            .map(|k| k.label())
            .collect::<Vec<_>>()
            .join(", "),
        slow_for.as_secs(),
        args.settle
    );
    let mut slow_tasks = Vec::new();
    for (i, &kind) in kinds.iter().enumerate() {
        // An even split; the first kinds take the remainder.
        let n = args.slow / kinds.len() + usize::from(i < args.slow % kinds.len());
        slow_tasks.push((
            kind,
            tokio::spawn(attackers::run(plan, kind, n, Duration::from_secs(2))),
        ));
    }
    let settle_peaks = tokio::spawn({
        let backends = backends.clone();
        let until = Instant::now() + Duration::from_secs(args.settle);
        async move { backend_conns::sample(admin, &backends, Duration::from_millis(100), until).await }
    });
    // Pacing the phases of the run, not waiting for a condition.
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let settle_peaks = settle_peaks.await.unwrap_or_default();
    eprintln!("slow_clients: disturbed, {} s", args.measure);
    let (disturbed, during) =
        normal_phase(&front, args.normal, admin, &backends, args.measure).await;
    let mut peaks_disturbed = during;
    merge_peaks(&mut peaks_disturbed, &settle_peaks);
    let mut slow = Vec::new();
    for (kind, t) in slow_tasks {
        slow.push((kind, t.await.unwrap_or_default()));
    }
    balancer.check_running()?;
    upstreams.check_running()?;
    let counters = error_counters(admin).await.unwrap_or_default();
    Ok(Results {
        undisturbed,
        disturbed,
        peaks_undisturbed,
        peaks_disturbed,
        slow,
        counters,
        started,
    })
}

fn merge_peaks(into: &mut Peaks, other: &Peaks) {
    for (a, b) in into.tcp.iter_mut().zip(&other.tcp) {
        *a = (*a).max(*b);
    }
    for (a, b) in into.open.iter_mut().zip(&other.open) {
        *a = (*a).max(*b);
    }
    into.tcp_total = into.tcp_total.max(other.tcp_total);
    for (a, b) in into.tcp_counted.iter_mut().zip(&other.tcp_counted) {
        *a = (*a).max(*b);
    }
    into.open_total = into.open_total.max(other.open_total);
    into.samples += other.samples;
    into.tcp_repeated += other.tcp_repeated;
    into.admin_errors += other.admin_errors;
}

/// The lines of `GET /metrics` that count errors and refusals.
async fn error_counters(admin: SocketAddr) -> anyhow::Result<Vec<String>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await?;
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await?;
    Ok(raw
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && (l.starts_with("balancer_errors_total")
                    || l.starts_with("balancer_connections_refused_total")
                    || (l.starts_with("balancer_requests_total") && !l.contains("code=\"2xx\"")))
        })
        .map(str::to_string)
        .collect())
}

fn ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2} ms")
    } else {
        "-".to_string()
    }
}

impl Results {
    /// The correctness failures: any failed normal request, any backend
    /// over the cap in use.
    fn problems(&self, cap: usize) -> Vec<String> {
        let mut out = Vec::new();
        for (name, l) in [
            ("undisturbed", &self.undisturbed),
            ("disturbed", &self.disturbed),
        ] {
            if l.counts.failed > 0 {
                out.push(format!("normal clients, {name}: {}", l.counts));
            }
        }
        for (i, &open) in self.peaks_disturbed.open.iter().enumerate() {
            if open > cap as u64 {
                out.push(format!(
                    "backend up-{}: {open} connections in use, cap {cap}",
                    i + 1
                ));
            }
        }
        for (i, &tcp) in self.peaks_disturbed.tcp_counted.iter().enumerate() {
            if tcp > cap as u64 {
                out.push(format!(
                    "backend up-{}: {tcp} TCP connections at once, cap {cap}",
                    i + 1
                ));
            }
        }
        out
    }

    fn markdown(&self, args: &Args, hardware: &str) -> String {
        let (u, d) = (&self.undisturbed, &self.disturbed);
        let ratio = |a: f64, b: f64| {
            if a.is_finite() && b.is_finite() && a > 0.0 {
                format!("{:.2}x", b / a)
            } else {
                "-".to_string()
            }
        };
        let list = |v: &[usize]| {
            v.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let list64 = |v: &[u64]| {
            v.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Date: {}; machine: {hardware}.  \nNormal clients: {} keep-alive connections, \
             `GET /whoami`, {} s per phase; slow clients: {}, one write or read every {} ms; \
             cap {} per backend, 2 backends.\n",
            report::utc_date(self.started),
            args.normal,
            args.measure,
            args.slow,
            args.tick_ms,
            args.cap
        );
        let _ = writeln!(
            s,
            "| normal clients | undisturbed | beside {} slow clients | ratio |",
            args.slow
        );
        let _ = writeln!(s, "|---|---:|---:|---:|");
        let _ = writeln!(s, "| requests ok | {} | {} | |", u.counts.ok, d.counts.ok);
        let _ = writeln!(
            s,
            "| req/s | {:.0} | {:.0} | {} |",
            u.rate(),
            d.rate(),
            ratio(u.rate(), d.rate())
        );
        for (name, q) in [("p50", 0.50), ("p99", 0.99), ("p99.9", 0.999)] {
            let (a, b) = (
                percentile(&u.sorted_us, q) / 1e3,
                percentile(&d.sorted_us, q) / 1e3,
            );
            let _ = writeln!(s, "| {name} | {} | {} | {} |", ms(a), ms(b), ratio(a, b));
        }
        let _ = writeln!(s, "| max | {} | {} | |", ms(u.max_ms()), ms(d.max_ms()));
        let _ = writeln!(
            s,
            "| failed requests | **{}** | **{}** | |",
            u.counts.failed, d.counts.failed
        );
        let (pu, pd) = (&self.peaks_undisturbed, &self.peaks_disturbed);
        let _ = writeln!(
            s,
            "| peak backend connections in use (`open`), per backend | {} | {} (cap {}) | |",
            list64(&pu.open),
            list64(&pd.open),
            args.cap
        );
        let _ = writeln!(
            s,
            "| most TCP connections at once, per backend (the balancer's count, since start) | {} | {} | |",
            list64(&pu.tcp_counted),
            list64(&pd.tcp_counted)
        );
        let _ = writeln!(
            s,
            "| peak TCP connections to the backends, per backend (`/proc/net/tcp`, every 500 ms) | {} | {} | |",
            list(&pu.tcp),
            list(&pd.tcp)
        );
        let _ = writeln!(
            s,
            "| samples (admin errors; `/proc/net/tcp` lines repeated) | {} ({}; {}) | {} ({}; {}) | |",
            pu.samples, pu.admin_errors, pu.tcp_repeated, pd.samples, pd.admin_errors, pd.tcp_repeated
        );
        for (name, l) in [("undisturbed", u), ("disturbed", d)] {
            if l.counts.failed > 0 {
                let _ = writeln!(s, "\nNormal-client failures, {name}: {}", l.counts);
            }
        }
        let _ = writeln!(
            s,
            "\n| slow clients | clients | connections | cut off by the balancer | after (p50 / max) | what each connection got |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---|");
        for (kind, t) in &self.slow {
            let mut after = t.cut_after_ms.clone();
            after.sort_unstable();
            let when = if after.is_empty() {
                "-".to_string()
            } else {
                format!(
                    "{:.1} / {:.1} s",
                    percentile(&after, 0.5) / 1e3,
                    f64::from(*after.last().unwrap_or(&0)) / 1e3
                )
            };
            let mut endings = t.endings_text();
            if t.connect_errors > 0 {
                let _ = write!(endings, "; {} connect errors", t.connect_errors);
            }
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {when} | {endings} |",
                kind.label(),
                t.clients,
                t.connections,
                t.cut_off()
            );
        }
        if !self.counters.is_empty() {
            let _ = writeln!(
                s,
                "\nThe balancer's counters at the end (non-2xx, errors, refusals):\n\n```"
            );
            for c in &self.counters {
                let _ = writeln!(s, "{c}");
            }
            let _ = writeln!(s, "```");
        }
        s
    }
}
