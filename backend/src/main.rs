//! `backend --listen ADDR --id NAME [--redis URL]`: one game server process.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Multiplayer game server process (runs behind the balancer)"
)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:9001 (port 0 picks a free port).
    #[arg(long)]
    listen: String,
    /// This process's id, reported by GET /whoami and stored as its
    /// players' presence.
    #[arg(long)]
    id: String,
    /// Redis URL for the shared game state: redis://[user:pass@]host:port[/db],
    /// rediss:// for TLS, redis+unix:///path, or
    /// redis+sentinel://host:port[,host:port...]/master[/db] to follow the
    /// primary that Redis Sentinel names. Without it, only the probe and echo
    /// endpoints run (no game).
    #[arg(long, env = "REDIS_URL")]
    redis: Option<String>,
    /// PEM file of a root certificate to trust for a rediss:// URL (a
    /// private CA) instead of the Mozilla roots.
    #[arg(long)]
    redis_ca: Option<std::path::PathBuf>,
    /// Players per room.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    room_capacity: u32,
    /// Players per match formed by matchmaking.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(2..=100))]
    match_size: u32,
    /// Presence TTL in ms: a player whose process stops renewing it is
    /// removed from their room after this long (plus one cleanup period).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(300..=600_000))]
    presence_ttl_ms: u64,
    /// Sustained actions (moves, chat lines) per player per second; bursts of
    /// twice that are allowed.
    #[arg(long, default_value_t = 20.0)]
    actions_per_sec: f64,
    /// Period of the cluster-wide jobs (cleanup, matchmaking), in ms.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    job_period_ms: u64,
    /// Lease of the cluster-wide jobs, in ms: a dead holder's jobs move to
    /// another process within about this long.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    lease_ms: u64,
    /// On SIGTERM, game sockets are closed (1012) at random times within
    /// this many ms.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    drain_spread_ms: u64,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// With --tls-cert: require clients (the balancer) to present a
    /// certificate signed by a CA in this PEM file (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<std::path::PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => sub.init(),
        LogFormat::Json => sub.json().flatten_event(true).init(),
    }
    if !(args.actions_per_sec.is_finite() && args.actions_per_sec > 0.0) {
        anyhow::bail!("--actions-per-sec must be a positive number");
    }

    let mut state = backend::AppState::new(&args.id);
    if let Some(url) = &args.redis {
        let settings = backend::game::Settings {
            capacity: args.room_capacity,
            presence_ttl: Duration::from_millis(args.presence_ttl_ms),
            actions_per_sec: args.actions_per_sec,
            action_burst: args.actions_per_sec * 2.0,
            drain_spread: Duration::from_millis(args.drain_spread_ms),
            jobs: backend::jobs::JobTiming {
                period: Duration::from_millis(args.job_period_ms),
                lease: Duration::from_millis(args.lease_ms),
            },
            match_size: args.match_size as usize,
        };
        let ca = match &args.redis_ca {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("cannot read --redis-ca {}", path.display()))?,
            ),
            None => None,
        };
        let game = backend::game::Game::new(&args.id, url, ca, settings)
            .await
            .with_context(|| format!("bad --redis URL {url:?}"))?;
        state.game = Some(game);
    }

    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let tls = backend::tls::server_config(cert, key, args.tls_client_ca.as_deref())?;
        tracing::info!(%address, id = %args.id, game = args.redis.is_some(), tls = true, "listening");
        backend::tls::serve(listener, Arc::new(state), tls, shutdown_signal()).await?;
        tracing::info!("stopped");
        return Ok(());
    }
    tracing::info!(%address, id = %args.id, game = args.redis.is_some(), "listening");

    backend::serve(listener, Arc::new(state), shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        // Without a SIGTERM handler, Ctrl-C still stops the process.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: draining");
}
