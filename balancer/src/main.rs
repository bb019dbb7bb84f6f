//! `balancer --config FILE` runs the proxy; `balancer check --config FILE`
//! validates a config and exits 0, or prints every error and exits 2.
//! (`balancer supervise-exec` is internal: see `balancer::supervise::spawn`.)

use std::path::PathBuf;
use std::process::ExitCode;

use balancer::logging::{self, LogFormat};
use clap::{Parser, Subcommand};

/// mimalloc: measured 5% less CPU per proxied request than the system
/// allocator here, and it gives freed pages back to the system.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(version, about = "Load balancer for real-time game backends")]
struct Cli {
    /// Path to the TOML config file.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format: text for people, json (one object per line) for machines.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the config file: exit 0 when valid, else print every error and exit 2.
    Check,
    /// Ask the running balancer (through its [admin] listener) to reload the
    /// config file now: exit 0 when it reloaded, 1 when it refused the file
    /// or could not be reached, 2 when the file here is invalid.
    Reload,
    /// Ask the running balancer (through its [admin] listener) for a rolling
    /// restart of the supervised pool POOL: each instance is replaced by a
    /// new process, which is ready before the old one drains. Exit 0 when
    /// it started (it runs on in the balancer; its log and /api/status
    /// follow it), 1 when refused or unreachable.
    Restart {
        /// The pool's name.
        pool: String,
    },
    /// Internal: how the balancer starts a supervised instance (sets the
    /// parent-death signal, then execs COMMAND). Not for people.
    #[command(name = "supervise-exec", hide = true)]
    SuperviseExec {
        /// The balancer's pid: the command does not start if it is gone.
        #[arg(long)]
        parent: u32,
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
}

/// Exit code for an invalid config (and for command-line misuse, as clap does).
const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::SuperviseExec { parent, command }) = &cli.command {
        return ExitCode::from(balancer::supervise::spawn::exec(*parent, command));
    }
    let Some(path) = cli.config else {
        eprintln!("error: --config FILE is required");
        return ExitCode::from(EXIT_INVALID);
    };
    let config = match config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!(
                "error: {} is invalid ({} problem{}):",
                path.display(),
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            );
            for e in errors.iter() {
                eprintln!("  {e}");
            }
            return ExitCode::from(EXIT_INVALID);
        }
    };
    if let Some(Command::Check) = cli.command {
        let report = balancer::reload::certificates::check(&config);
        for line in &report.loaded {
            println!("{line}");
        }
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        if !report.errors.is_empty() {
            eprintln!(
                "error: {} names bad certificate files ({} problem{}):",
                path.display(),
                report.errors.len(),
                if report.errors.len() == 1 { "" } else { "s" }
            );
            for e in &report.errors {
                eprintln!("  {e}");
            }
            return ExitCode::from(EXIT_INVALID);
        }
        let backends: usize = config.pools.iter().map(|p| p.backends.len()).sum();
        println!(
            "{}: OK ({} listeners, {} pools, {} backends, {} routes)",
            path.display(),
            config.listeners.len(),
            config.pools.len(),
            backends,
            config.routes.len()
        );
        return ExitCode::SUCCESS;
    }

    match &cli.command {
        Some(Command::Reload) => return admin_post(&config, "/api/reload"),
        Some(Command::Restart { pool }) => {
            return admin_post(&config, &format!("/api/pools/{pool}/restart"))
        }
        _ => {}
    }

    logging::init(cli.log_format);
    // Client connections are served by one single-threaded runtime per core
    // (`server::workers`); this runtime runs the rest: startup, health
    // checks, reloads, the admin listener, signals.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let builder = if balancer::workers::start(cores) > 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let Some(runtime) = runtime(builder) else {
        return ExitCode::FAILURE;
    };
    let serve = async {
        let app = balancer::app::App::bind(config).await?;
        app.with_config_path(path).serve(shutdown_signal()).await;
        Ok::<(), balancer::Error>(())
    };
    match runtime.block_on(serve) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `balancer reload` and `balancer restart POOL`: POST `path` on the
/// admin listener and report.
fn admin_post(config: &config::Config, path: &str) -> ExitCode {
    let Some(admin) = &config.admin else {
        eprintln!(
            "error: the config has no [admin] listener to ask (for a reload, send SIGHUP instead)"
        );
        return ExitCode::from(EXIT_INVALID);
    };
    // A wildcard admin address is reached on loopback.
    let mut address = admin.address;
    if address.ip().is_unspecified() {
        address.set_ip(match address.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    let token = admin.token.clone();
    let result = runtime.block_on(async move {
        use http_body_util::BodyExt;
        let stream = tokio::net::TcpStream::connect(address).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        // X-Admin-Request: the admin listener refuses state-changing calls
        // without it (they could be a browser's cross-site form post).
        let mut req = http::Request::post(path)
            .header(http::header::HOST, address.to_string())
            .header(balancer::admin::guard::ADMIN_REQUEST_HEADER, "1");
        if let Some(t) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(std::io::Error::other)?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok::<_, std::io::Error>((status, body))
    });
    match result {
        Ok((status, body)) => {
            println!("{}", String::from_utf8_lossy(&body));
            if status.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: cannot reach the admin listener at {address}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Builds a runtime with every driver on, or says why it could not.
fn runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    match builder.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            None
        }
    }
}
