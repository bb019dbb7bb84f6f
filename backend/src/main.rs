//! `backend --listen ADDR --id NAME [--redis URL]`: one game server process.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

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
    /// This process's id, reported by GET /whoami.
    #[arg(long)]
    id: String,
    /// Redis URL for shared state (used by the game server; accepted now so
    /// scripts can pass it already).
    #[arg(long)]
    redis: Option<String>,
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

    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, id = %args.id, "listening");

    let state = Arc::new(backend::AppState {
        id: args.id,
        draining: AtomicBool::new(false),
    });
    backend::serve(listener, state, shutdown_signal()).await?;
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
    tracing::info!("shutting down: draining in-flight requests");
}
