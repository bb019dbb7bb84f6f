//! What is measured: two upstream `backend` processes and the proxies in
//! front of them (the balancer, nginx with 1 and 2 workers, HAProxy with 1
//! and 2 threads), each with its config file, started on
//! 127.0.0.1, checked ready with `GET /healthz` on both of its ports (one
//! plaintext, one TLS with the certificate of [`super::tls`]), reloaded on
//! demand and stopped (by [`Child`]'s drop).
//!
//! The config files themselves are in [`super::configs`].

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use rustix::process::Signal;
use tokio::time::Instant;

use super::child::{find_program, Child};
use super::configs::{balancer_config, haproxy_config, nginx_config, BALANCER_TLS_LISTENER};
use super::endpoint::Endpoint;
use super::http::Conn;
use super::tls::TlsFiles;

/// How long a process gets to come up.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// One proxy set-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Balancer,
    Nginx { workers: u8 },
    Haproxy { threads: u8 },
}

impl Kind {
    /// Every target, in the order of the tables.
    pub const ALL: [Kind; 5] = [
        Kind::Balancer,
        Kind::Nginx { workers: 1 },
        Kind::Nginx { workers: 2 },
        Kind::Haproxy { threads: 1 },
        Kind::Haproxy { threads: 2 },
    ];

    /// Name in the tables.
    pub fn label(self) -> String {
        match self {
            Kind::Balancer => "balancer".to_string(),
            Kind::Nginx { workers } => {
                format!(
                    "nginx, {workers} worker{}",
                    if workers == 1 { "" } else { "s" }
                )
            }
            Kind::Haproxy { threads } => {
                format!(
                    "HAProxy, {threads} thread{}",
                    if threads == 1 { "" } else { "s" }
                )
            }
        }
    }

    /// Short name, for `--targets` and file names.
    pub fn slug(self) -> String {
        match self {
            Kind::Balancer => "balancer".to_string(),
            Kind::Nginx { workers } => format!("nginx-w{workers}"),
            Kind::Haproxy { threads } => format!("haproxy-t{threads}"),
        }
    }
}

/// The executables, found once at start.
#[derive(Debug, Clone)]
pub struct Programs {
    pub balancer: PathBuf,
    pub backend: PathBuf,
    pub nginx: Option<PathBuf>,
    pub haproxy: Option<PathBuf>,
    pub wrk: Option<PathBuf>,
}

impl Programs {
    /// The balancer and backend from `binary_dir` (must exist), the
    /// others from `PATH`, `/usr/sbin` or `/sbin` (may be missing).
    pub fn find(binary_dir: &Path) -> anyhow::Result<Programs> {
        let balancer = binary_dir.join("balancer");
        let backend = binary_dir.join("backend");
        for p in [&balancer, &backend] {
            if !p.is_file() {
                bail!(
                    "{} is missing: build it with `cargo build --release -p balancer -p backend` \
                     (compare does this itself unless --no-build is given)",
                    p.display()
                );
            }
        }
        Ok(Programs {
            balancer,
            backend,
            nginx: find_program("nginx"),
            haproxy: find_program("haproxy"),
            wrk: find_program("wrk"),
        })
    }

    /// Whether this target's proxy is installed.
    pub fn has(&self, kind: Kind) -> bool {
        match kind {
            Kind::Balancer => true,
            Kind::Nginx { .. } => self.nginx.is_some(),
            Kind::Haproxy { .. } => self.haproxy.is_some(),
        }
    }

    /// The Debian packages missing here (nginx, haproxy, wrk).
    pub fn missing(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.nginx.is_none() {
            out.push("nginx");
        }
        if self.haproxy.is_none() {
            out.push("haproxy");
        }
        if self.wrk.is_none() {
            out.push("wrk");
        }
        out
    }
}

/// A port that was free a moment ago (bound to 127.0.0.1:0 and released);
/// whoever uses it must retry with another one if binding fails.
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Waits until `GET /healthz` on `endpoint` answers 200, failing early if
/// the process exits.
pub async fn wait_ready(child: &mut Child, endpoint: &Endpoint) -> anyhow::Result<()> {
    let addr = endpoint.addr;
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        child.check_running()?;
        let attempt = async {
            let mut c = Conn::open(endpoint).await?;
            c.get("/healthz").await
        };
        match tokio::time::timeout(Duration::from_secs(1), attempt).await {
            Ok(Ok(r)) if r.status == 200 => return Ok(()),
            Ok(Ok(r)) => last = format!("status {}", r.status),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{} not ready on {addr}{} after {START_TIMEOUT:?} ({last})",
        child.name(),
        if endpoint.is_tls() { " (TLS)" } else { "" }
    )
}

/// Waits for the JSON log line `"message":"listening"` (of `listener`, if
/// named) and returns its `address` (the balancer logs one per listener,
/// the backend one).
async fn wait_listening(child: &mut Child, listener: Option<&str>) -> anyhow::Result<SocketAddr> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        child.check_running()?;
        if let Some(a) = listening_address(&child.log_text(), listener) {
            return Ok(a);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!(
        "{} logged no \"listening\" line in {START_TIMEOUT:?} (see {})",
        child.name(),
        child.log_path().display()
    )
}

/// The `address` of the first JSON line whose message is `listening` (and
/// whose `listener` is `listener`, if given).
pub fn listening_address(log: &str, listener: Option<&str>) -> Option<SocketAddr> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "listening" && listener.is_none_or(|name| v["listener"] == name))
        .and_then(|v| v["address"].as_str()?.parse().ok())
}

/// The two upstream backends; stopped when dropped.
#[derive(Debug)]
pub struct Upstreams {
    pub addrs: Vec<SocketAddr>,
    procs: Vec<Child>,
}

impl Upstreams {
    /// Starts `backend --listen 127.0.0.1:0` twice, logs in `dir`.
    pub async fn start(programs: &Programs, dir: &Path) -> anyhow::Result<Upstreams> {
        let mut up = Upstreams {
            addrs: Vec::new(),
            procs: Vec::new(),
        };
        for i in 1..=2 {
            let id = format!("up-{i}");
            let mut cmd = Command::new(&programs.backend);
            cmd.args([
                "--listen",
                "127.0.0.1:0",
                "--id",
                &id,
                "--log-format",
                "json",
            ])
            .env("RUST_LOG", "warn,backend=info");
            let mut child = Child::spawn(&id, cmd, &dir.join(format!("{id}.log")))?;
            let addr = wait_listening(&mut child, None).await?;
            wait_ready(&mut child, &Endpoint::plain(addr)).await?;
            up.addrs.push(addr);
            up.procs.push(child);
        }
        Ok(up)
    }

    /// Fails if a backend has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.procs.iter_mut().try_for_each(Child::check_running)
    }
}

/// Writes a file by writing a sibling and renaming it over, as editors do
/// (so a watcher never sees it half written).
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))?;
    Ok(())
}

/// A running proxy.
#[derive(Debug)]
pub struct Target {
    pub kind: Kind,
    /// The plaintext port.
    pub addr: SocketAddr,
    /// The TLS port: the same routes behind the generated certificate.
    pub tls_addr: SocketAddr,
    /// The certificate's files (the configs name them) and the client
    /// config that trusts it.
    tls: TlsFiles,
    child: Child,
    /// Directory of the config file (the balancer watches it).
    conf_dir: PathBuf,
    config: PathBuf,
    /// Where the proxy logs its reloads.
    events_log: PathBuf,
    upstreams: Vec<SocketAddr>,
    generation: u32,
}

impl Target {
    /// Starts `kind` with its files in a new directory under `parent`,
    /// serving `tls`'s certificate on its TLS port.
    pub async fn start(
        kind: Kind,
        programs: &Programs,
        upstreams: &[SocketAddr],
        tls: &TlsFiles,
        parent: &Path,
    ) -> anyhow::Result<Target> {
        let dir = unique_dir(parent, &kind.slug())?;
        match kind {
            Kind::Balancer => Self::start_balancer(programs, upstreams, tls, &dir).await,
            _ => {
                // A port picked by binding and releasing can be taken in
                // between: retry with a new one when the bind fails.
                let mut last = anyhow!("not started");
                for _ in 0..5 {
                    match Self::start_other(kind, programs, upstreams, tls, &dir).await {
                        Ok(t) => return Ok(t),
                        Err(e) if is_bind_error(&format!("{e:#}")) => last = e,
                        Err(e) => return Err(e),
                    }
                }
                Err(last.context("no free port after 5 attempts"))
            }
        }
    }

    async fn start_balancer(
        programs: &Programs,
        upstreams: &[SocketAddr],
        tls: &TlsFiles,
        dir: &Path,
    ) -> anyhow::Result<Target> {
        let conf_dir = dir.join("conf");
        std::fs::create_dir_all(&conf_dir)?;
        let config = conf_dir.join("balancer.toml");
        write_atomically(&config, &balancer_config(upstreams, tls, 0))?;
        let log = dir.join("balancer.log");
        let mut cmd = Command::new(&programs.balancer);
        cmd.arg("--config")
            .arg(&config)
            .args(["--log-format", "json"])
            .env("RUST_LOG", "warn,balancer=info");
        let mut child = Child::spawn("balancer", cmd, &log)?;
        let addr = wait_listening(&mut child, Some("bench")).await?;
        let tls_addr = wait_listening(&mut child, Some(BALANCER_TLS_LISTENER)).await?;
        wait_ready(&mut child, &Endpoint::plain(addr)).await?;
        wait_ready(&mut child, &Endpoint::tls(tls_addr, tls.client())).await?;
        Ok(Target {
            kind: Kind::Balancer,
            addr,
            tls_addr,
            tls: tls.clone(),
            child,
            conf_dir,
            config,
            events_log: log,
            upstreams: upstreams.to_vec(),
            generation: 0,
        })
    }

    async fn start_other(
        kind: Kind,
        programs: &Programs,
        upstreams: &[SocketAddr],
        tls: &TlsFiles,
        dir: &Path,
    ) -> anyhow::Result<Target> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let tls_port = free_port()?;
        let tls_addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
        let (name, program, config, events_log, cmd) = match kind {
            Kind::Nginx { .. } => {
                let program = programs.nginx.clone().context("nginx is not installed")?;
                let config = dir.join("nginx.conf");
                let error_log = dir.join("error.log");
                let mut cmd = Command::new(&program);
                // -p: prefix for relative paths; -e: the error log used
                // before the config is read (else /var/log/nginx).
                cmd.arg("-p")
                    .arg(dir)
                    .arg("-c")
                    .arg(&config)
                    .arg("-e")
                    .arg(&error_log);
                ("nginx", program, config, error_log, cmd)
            }
            Kind::Haproxy { .. } => {
                let program = programs
                    .haproxy
                    .clone()
                    .context("haproxy is not installed")?;
                let config = dir.join("haproxy.cfg");
                let mut cmd = Command::new(&program);
                cmd.args(["-W", "-db", "-f"]).arg(&config);
                ("haproxy", program, config, dir.join("haproxy.log"), cmd)
            }
            Kind::Balancer => bail!("the balancer starts elsewhere"),
        };
        let target_files = TargetFiles {
            kind,
            dir: dir.to_path_buf(),
            port,
            tls_port,
            tls,
        };
        write_atomically(&config, &target_files.render(upstreams, 0))?;
        let log = dir.join(format!("{name}.log"));
        let mut child = Child::spawn(name, cmd, &log)?;
        let ready = async {
            wait_ready(&mut child, &Endpoint::plain(addr)).await?;
            wait_ready(&mut child, &Endpoint::tls(tls_addr, tls.client())).await
        }
        .await;
        if let Err(e) = ready {
            let mut text = child.log_text();
            if events_log != log {
                text.push_str(&std::fs::read_to_string(&events_log).unwrap_or_default());
            }
            child.stop();
            return Err(e.context(format!(
                "{} ({}) did not come up on {addr}; its log:\n{}",
                kind.label(),
                program.display(),
                super::child::tail(&text, 10)
            )));
        }
        Ok(Target {
            kind,
            addr,
            tls_addr,
            tls: tls.clone(),
            child,
            conf_dir: dir.to_path_buf(),
            config,
            events_log,
            upstreams: upstreams.to_vec(),
            generation: 0,
        })
    }

    /// The plaintext port, for the harness's clients.
    pub fn plain(&self) -> Endpoint {
        Endpoint::plain(self.addr)
    }

    /// The TLS port, for the harness's clients.
    pub fn tls(&self) -> Endpoint {
        Endpoint::tls(self.tls_addr, self.tls.client())
    }

    /// PID of the proxy (nginx's or HAProxy's master).
    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    /// Fails if the proxy has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.child.check_running()
    }

    /// One config change: the next generation written, then the proxy told
    /// (SIGHUP to nginx's master, SIGUSR2 to HAProxy's master; the
    /// balancer sees the file change by itself).
    pub fn change_config(&mut self) -> anyhow::Result<()> {
        self.generation += 1;
        let files = TargetFiles {
            kind: self.kind,
            dir: self.conf_dir.clone(),
            port: self.addr.port(),
            tls_port: self.tls_addr.port(),
            tls: &self.tls,
        };
        write_atomically(
            &self.config,
            &files.render(&self.upstreams, self.generation),
        )?;
        match self.kind {
            Kind::Balancer => Ok(()),
            Kind::Nginx { .. } => self.child.signal(Signal::HUP),
            Kind::Haproxy { .. } => self.child.signal(Signal::USR2),
        }
    }

    /// How many reloads the proxy has logged as done: the balancer's
    /// `config reloaded` lines; nginx's `start worker processes` and
    /// HAProxy's `Loading success.` lines after the first (start-up) one.
    pub fn reloads_logged(&self) -> usize {
        let log = std::fs::read_to_string(&self.events_log).unwrap_or_default();
        match self.kind {
            Kind::Balancer => log.matches("\"message\":\"config reloaded\"").count(),
            Kind::Nginx { .. } => log
                .matches("start worker processes")
                .count()
                .saturating_sub(1),
            Kind::Haproxy { .. } => log.matches("Loading success.").count().saturating_sub(1),
        }
    }
}

/// What a proxy's config file names: its directory and ports (nginx and
/// HAProxy; the balancer's listeners take port 0) and the certificate.
#[derive(Debug)]
struct TargetFiles<'a> {
    kind: Kind,
    dir: PathBuf,
    port: u16,
    tls_port: u16,
    tls: &'a TlsFiles,
}

impl TargetFiles<'_> {
    fn render(&self, upstreams: &[SocketAddr], generation: u32) -> String {
        let ports = (self.port, self.tls_port);
        match self.kind {
            Kind::Balancer => balancer_config(upstreams, self.tls, generation),
            Kind::Nginx { workers } => {
                nginx_config(&self.dir, ports, self.tls, workers, upstreams, generation)
            }
            Kind::Haproxy { threads } => {
                haproxy_config(&self.dir, ports, self.tls, threads, upstreams, generation)
            }
        }
    }
}

/// Whether a start-up failure was a port taken by someone else.
fn is_bind_error(text: &str) -> bool {
    text.contains("Address already in use")
        || text.contains("Address in use")
        || text.contains("cannot bind")
}

/// A new directory `parent/slug-N`, readable by nginx's unprivileged
/// workers.
fn unique_dir(parent: &Path, slug: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    for n in 1..10_000 {
        let dir = parent.join(format!("{slug}-{n}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
    bail!(
        "cannot find a free directory name under {}",
        parent.display()
    )
}

/// The workspace root (benches' parent directory).
pub fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Where cargo puts the binaries measured (`CARGO_TARGET_DIR` if set):
/// release, or debug with `debug`.
pub fn binary_dir(root: &std::path::Path, debug: bool) -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), std::path::PathBuf::from)
        .join(if debug { "debug" } else { "release" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_listening_line() {
        let log = "{\"message\":\"admin listening\",\"address\":\"127.0.0.1:1\"}\n\
                   not json\n\
                   {\"level\":\"INFO\",\"message\":\"listening\",\"listener\":\"bench\",\"address\":\"127.0.0.1:4567\"}\n\
                   {\"level\":\"INFO\",\"message\":\"listening\",\"listener\":\"bench-tls\",\"address\":\"127.0.0.1:4568\"}\n";
        let at = |port: u16| Some(SocketAddr::from(([127, 0, 0, 1], port)));
        assert_eq!(listening_address(log, None), at(4567));
        assert_eq!(listening_address(log, Some("bench")), at(4567));
        assert_eq!(listening_address(log, Some("bench-tls")), at(4568));
        assert_eq!(listening_address(log, Some("other")), None);
        assert_eq!(listening_address("{}", None), None);
    }

    #[test]
    fn labels() {
        let labels: Vec<String> = Kind::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(
            labels,
            [
                "balancer",
                "nginx, 1 worker",
                "nginx, 2 workers",
                "HAProxy, 1 thread",
                "HAProxy, 2 threads"
            ]
        );
    }
}
