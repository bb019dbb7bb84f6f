//! `compare`: the balancer, nginx and HAProxy side by side, in front of the
//! same backends, under the same load, on this machine.
//!
//! ```text
//! cargo run -p benches --release --bin compare -- --smoke   # ~25 s: the balancer alone
//! cargo run -p benches --bin compare -- --smoke --debug-binaries  # the same on debug builds (CI)
//! cargo run -p benches --release --bin compare -- --quick   # ~9 min: 3 rounds of 3 s
//! cargo run -p benches --release --bin compare              # ~35 min: 5 rounds of 10 s
//! cargo run -p benches --release --bin compare -- --write-docs   # and update docs/
//! ```
//!
//! Times are for a 2-core machine once everything is built. The harness
//! first runs `cargo build --release -p balancer -p backend` (skip with
//! `--no-build`; `target/release/balancer` and `backend` must then exist),
//! which from cold takes about 2.5 minutes there. CI runs the smoke test
//! with a debug harness, `cargo run -p benches --bin compare -- --smoke`:
//! it shares the test job's debug build, and the proxies measured are
//! release builds either way (about 3.6 minutes from cold, 3.9 with
//! `--release`).
//! nginx, HAProxy and wrk come from the system (Debian: `apt-get install -y
//! nginx haproxy wrk`); nothing is installed here: a missing one is named
//! with that command, and the run measures what it can without it.
//!
//! # Set-up
//!
//! Everything runs on 127.0.0.1 and is started by the harness: two
//! `backend` processes on port 0 (their ports read from their JSON
//! `listening` log lines), and in front of them, each with round robin,
//! keep-alive to the clients and to the backends, and no access log:
//!
//! * the balancer (`target/release/balancer --config FILE --log-format
//!   json`, listener on port 0, `websocket_idle = "none"`);
//! * nginx with `worker_processes 1` and `2` (`daemon off`, `master_process
//!   on`, every path in a temporary directory, `keepalive 1024` upstream,
//!   HTTP/1.1 with `Connection ""` upstream, Upgrade/Connection for `/ws`);
//! * HAProxy with `nbthread 1` and `2` (master-worker `-W -db`, `mode
//!   http`, `http-reuse always`, `timeout tunnel 1h`, no logging).
//!
//! Each proxy also has a second, TLS, port with the same routes. At start
//! the harness generates one ECDSA P-256 certificate (self-signed, for
//! `localhost` and `127.0.0.1`, with `rcgen`) into its temporary directory,
//! and every proxy serves it: the balancer from a `[[listener.certificate]]`
//! (`[listener.tls]`: `min_version = "1.2"`, `http2 = true`,
//! `session_tickets = true`, `session_cache = 10000`), nginx with
//! `listen ... ssl http2`, `ssl_protocols TLSv1.2 TLSv1.3`,
//! `ssl_session_cache shared:SSL:10m`, `ssl_session_tickets on`, HAProxy
//! with `bind ... ssl crt FILE alpn h2,http/1.1` (certificate and key in
//! one file), `ssl-min-ver TLSv1.2`, `tune.ssl.cachesize 20000`, tickets
//! on (its default). Ciphers and groups are each library's defaults. TLS
//! ends at the proxy: the backends stay plaintext. Nothing of this is
//! checked in; the certificate lives as long as the run.
//!
//! nginx and HAProxy get a port found by binding 127.0.0.1:0 and releasing
//! it, retried if the bind then fails. Each process is stopped by its PID
//! (SIGTERM, then SIGKILL after 5 s, then any worker it left) when the run
//! ends, fails, or gets Ctrl-C or SIGTERM. Files live in a temporary
//! directory that is removed at the end.
//!
//! # What is measured
//!
//! * **HTTP**: keep-alive `GET /healthz` with `wrk -t2 -c50` and `-c1000`
//!   (`--latency --timeout 10s`): requests/s, p50 and p99 latency. Any
//!   non-2xx response or socket error fails the run, loudly, with wrk's
//!   numbers.
//! * **WebSocket echo**: 100 sockets through the proxy to the backend's
//!   `/ws`, each sending a small text message and waiting for its echo in a
//!   closed loop: messages/s and the round trip's p50 and p99.
//! * **TLS, full handshakes**: 50 clients of the harness (rustls with
//!   resumption off, ALPN `http/1.1`), each connecting to the TLS port,
//!   doing a full handshake, sending one `GET /healthz` with `Connection:
//!   close` and waiting for the proxy to close, in a loop: handshakes/s,
//!   p50 and p99 of the whole loop, CPU per handshake. A resumed handshake
//!   would count as an error.
//! * **TLS, `Connection: close` with wrk**: `wrk -H "Connection: close"
//!   https://...`, 50 connections: wrk reconnects after every response,
//!   but resumes its previous session each time (it keeps the OpenSSL
//!   session across `SSL_clear`; checked with nginx's
//!   `$ssl_session_reused`), so these are resumed handshakes.
//! * **HTTPS keep-alive**: `wrk -c50` over `https://`.
//! * **`wss://` echo**: the WebSocket echo through the TLS port.
//! * **CPU per request / message**: utime + stime (+ reaped children's) of
//!   the proxy's whole process tree (children found by scanning
//!   `/proc/*/stat` for the parent PID), before and after the run, divided
//!   by the requests or messages completed.
//! * **Memory**: the summed `VmRSS` of the proxy's process tree before and
//!   after opening 5,000 keep-alive connections that each did one GET and
//!   stay idle, and (on another fresh proxy each) 5,000 WebSocket tunnels
//!   that each echoed one message, over `ws://` and over `wss://`;
//!   `(after - before) / 5000` KiB.
//! * **Reload under load**: 100 WebSocket sessions echoing every 200 ms and
//!   16 keep-alive connections sending GETs in a loop, for 20 s (`--quick`:
//!   10 s) with 10 (5) config changes 1.5 s apart: nginx's config
//!   rewritten and SIGHUP to its master, HAProxy's rewritten and SIGUSR2 to
//!   its master, the balancer's watched file rewritten. Reported: failed
//!   HTTP requests, broken sessions, and the proxy's process count at the
//!   start, near the end and after the clients closed.
//!
//! Load runs take turns: in each round every scenario runs against every
//! target in turn (A B C D E, A B C D E, ...), 3 rounds of 3 s with
//! `--quick`, 5 rounds of 10 s in full; the tables show medians. The load
//! generators share the machine's cores with the proxies, so the figures
//! compare the targets with each other; they are not capacity figures.
//!
//! `--smoke` runs the balancer alone for a few seconds with the harness's
//! own HTTP client (no wrk, nginx or HAProxy needed): 50 keep-alive
//! connections, the WebSocket echo, the full handshakes, 50 keep-alive
//! HTTPS connections, the `wss://` echo and two config changes under load.
//! It exits 1 if any request or session fails.
//!
//! # Output
//!
//! Progress on stderr; on stdout the machine (cores, CPU model, memory,
//! kernel, versions), the date, the exact command and Markdown tables of
//! the medians, the memory figures and the reload results. With
//! `--write-docs`, the same tables go between `<!-- compare:begin -->` and
//! `<!-- compare:end -->` in docs/benchmarks.md (a section "Side by side:
//! balancer, nginx, HAProxy" is appended if missing) and a bar chart to
//! docs/img/compare.svg. Exit code 1 when something failed (listed at the
//! end), 130 after Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};
use benches::compare::targets::{self, Kind, Programs};
use benches::compare::{docs, plan, report, svg, Mode, Settings};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "The balancer, nginx and HAProxy side by side on this machine (loopback only)")]
struct Args {
    /// 3 rounds of 3 s per run and a 10 s reload test (about 9 minutes).
    #[arg(long, conflicts_with = "smoke")]
    quick: bool,
    /// A few seconds against the balancer alone, without wrk, nginx or
    /// HAProxy; exit code 1 if any request fails.
    #[arg(long)]
    smoke: bool,
    /// Write the tables into docs/benchmarks.md and the chart to
    /// docs/img/compare.svg.
    #[arg(long)]
    write_docs: bool,
    /// The docs directory that --write-docs writes to.
    #[arg(long, value_name = "DIR")]
    docs_dir: Option<PathBuf>,
    /// Do not run `cargo build --release -p balancer -p backend` first.
    #[arg(long)]
    no_build: bool,
    /// Use (and build) the debug binaries instead of the release ones: for
    /// `--smoke` in CI, where the test step has built them already. The
    /// figures then say nothing about speed.
    #[arg(long)]
    debug_binaries: bool,
    /// Only these targets (balancer, nginx-w1, nginx-w2, haproxy-t1,
    /// haproxy-t2), comma separated.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    targets: Vec<String>,
    /// Rounds of load runs (default: 5, --quick 3).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=50))]
    rounds: Option<u64>,
    /// Seconds per load run (default: 10, --quick 3).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=600))]
    secs: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("compare: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build(root: &Path, debug: bool) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut args = vec!["build", "-p", "balancer", "-p", "backend"];
    if !debug {
        args.insert(1, "--release");
    }
    let shown = format!("cargo {}", args.join(" "));
    eprintln!("compare: {shown}");
    let status = Command::new(&cargo)
        .args(&args)
        .current_dir(root)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// The targets to measure.
fn choose(args: &Args, mode: Mode, programs: &Programs) -> anyhow::Result<Vec<Kind>> {
    if mode == Mode::Smoke {
        return Ok(vec![Kind::Balancer]);
    }
    let slugs: Vec<String> = Kind::ALL.iter().map(|k| k.slug()).collect();
    for t in &args.targets {
        if !slugs.contains(t) {
            bail!("unknown target {t:?}: use some of {}", slugs.join(", "));
        }
    }
    Ok(Kind::ALL
        .into_iter()
        .filter(|k| args.targets.is_empty() || args.targets.contains(&k.slug()))
        .filter(|k| {
            let ok = programs.has(*k);
            if !ok {
                eprintln!("compare: {} left out: not installed", k.label());
            }
            ok
        })
        .collect())
}

/// The command as typed: the `cargo run` form when cargo started us.
fn command_line() -> String {
    let mut argv = std::env::args();
    let program = argv.next().unwrap_or_else(|| "compare".to_string());
    let args: Vec<String> = argv.collect();
    let args = args.join(" ");
    if std::env::var_os("CARGO").is_some() {
        let release = if cfg!(debug_assertions) {
            ""
        } else {
            " --release"
        };
        let sep = if args.is_empty() { "" } else { " -- " };
        format!("cargo run -p benches{release} --bin compare{sep}{args}")
    } else if args.is_empty() {
        program
    } else {
        format!("{program} {args}")
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mode = match (args.smoke, args.quick) {
        (true, _) => Mode::Smoke,
        (false, true) => Mode::Quick,
        (false, false) => Mode::Full,
    };
    let mut settings = Settings::for_mode(mode);
    if let Some(r) = args.rounds {
        settings.rounds = r as usize;
    }
    if let Some(s) = args.secs {
        settings.run = std::time::Duration::from_secs(s);
    }
    let root = targets::workspace_root();
    if !args.no_build {
        build(&root, args.debug_binaries)?;
    }
    let programs = Programs::find(&targets::binary_dir(&root, args.debug_binaries))?;
    let missing = programs.missing();
    if mode != Mode::Smoke && !missing.is_empty() {
        eprintln!(
            "compare: not installed: {}. Nothing is installed for you; to measure \
             everything, run (as root):\n\n    apt-get install -y nginx haproxy wrk\n",
            missing.join(", ")
        );
    }
    let kinds = choose(&args, mode, &programs)?;
    if kinds.is_empty() {
        bail!("no target left to measure");
    }
    benches::raise_fd_limit(settings.idle as u64 + 1024, "the memory test")?;

    let tmp = tempfile::Builder::new()
        .prefix("compare-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    {
        use std::os::unix::fs::PermissionsExt;
        // nginx's workers run as an unprivileged user when started by root.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    }
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
            r = plan::run(&settings, &programs, &kinds, tmp.path()) => r.map(Some),
            _ = term.recv() => { eprintln!("compare: SIGTERM, stopping what was started"); Ok(None) }
            _ = int.recv() => { eprintln!("compare: interrupted, stopping what was started"); Ok(None) }
        }
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    let Some(results) = outcome? else {
        return Ok(ExitCode::from(130));
    };
    drop(tmp);

    let machine = report::machine(&programs);
    let command = command_line();
    let md = report::markdown(&results, &machine, &command);
    println!("{md}");

    if args.write_docs {
        let dir = args.docs_dir.clone().unwrap_or_else(|| root.join("docs"));
        let caption = [
            format!(
                "Medians of {} round(s) of {} s per run; {}; {command}",
                settings.rounds,
                settings.run.as_secs(),
                report::utc_date(results.started)
            ),
            machine.hardware(),
            machine.software(),
        ];
        let chart = svg::render(&svg::panels(&results), &caption);
        let block =
            format!("{md}![Requests/s and WebSocket messages/s per target](img/compare.svg)\n");
        docs::write(&dir, &block, &chart)?;
        eprintln!(
            "compare: wrote {} and {}",
            dir.join("benchmarks.md").display(),
            dir.join("img/compare.svg").display()
        );
    }
    if results.failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "compare: {} failure(s), listed above",
            results.failures.len()
        );
        Ok(ExitCode::FAILURE)
    }
}
