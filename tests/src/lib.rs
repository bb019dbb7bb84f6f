//! Test harness for the end-to-end tests: starts real `balancer` and
//! `backend` processes on `127.0.0.1:0`, learns their ports from their JSON
//! logs, and waits on conditions (never on sleeps).
//!
//! Every process started here is killed when its handle drops, so a failing
//! test leaves nothing behind.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod browser;
pub mod game;
pub mod http;
pub mod load;
pub mod tls;
pub mod ws;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Path of a binary of this workspace. When a binary is missing or older
/// than the sources it is built from (as after `cargo test -p tests` alone),
/// the first call runs `cargo build` for the binaries, so tests never run
/// stale ones; after `cargo test --workspace` nothing is rebuilt.
pub fn bin(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test-binary>
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    BUILD.call_once(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap();
        let sources = ["balancer", "backend", "config"]
            .iter()
            .map(|c| newest_mtime(&root.join(c)))
            .max()
            .flatten();
        let stale = ["balancer", "backend"].iter().any(|b| {
            let built = std::fs::metadata(dir.join(b))
                .and_then(|m| m.modified())
                .ok();
            match (built, sources) {
                (Some(built), Some(src)) => built < src,
                _ => true,
            }
        });
        if !stale {
            return;
        }
        eprintln!(
            "binaries missing or older than their sources: cargo build -p balancer -p backend"
        );
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "balancer", "-p", "backend"]);
        if dir.file_name().is_some_and(|d| d == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} not found", path.display());
    path
}

/// Newest modification time of any file under `dir` (sources and manifests).
fn newest_mtime(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(t);
    }
    newest
}

/// Log lines a process wrote, shared with the thread that reads them.
#[derive(Debug, Default)]
struct Log {
    lines: Mutex<Vec<Value>>,
    changed: Condvar,
}

/// A child process whose stdout and stderr carry (JSON) log lines.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    log: Arc<Log>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let log = Arc::new(Log::default());
        let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [stdout, stderr] {
            let reader_log = Arc::clone(&log);
            let label = name.to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("[{label}] {line}");
                    let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                    reader_log.lines.lock().unwrap().push(value);
                    reader_log.changed.notify_all();
                }
            });
        }
        Self {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a log line satisfies `pred` and returns it.
    pub fn wait_log(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_log_within(what, DEADLINE, pred)
    }

    /// Like [`Proc::wait_log`], with a deadline of `limit`.
    pub fn wait_log_within(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let end = Instant::now() + limit;
        let mut lines = self.log.lines.lock().unwrap();
        let mut scanned = 0;
        loop {
            if let Some(v) = lines[scanned..].iter().find(|v| pred(v)) {
                return v.clone();
            }
            scanned = lines.len();
            let now = Instant::now();
            assert!(
                now < end,
                "{}: no log line {what} within {limit:?}",
                self.name
            );
            lines = self.log.changed.wait_timeout(lines, end - now).unwrap().0;
        }
    }

    /// Waits until at least `n` log lines satisfy `pred`.
    pub fn wait_count(&self, what: &str, n: usize, pred: impl Fn(&Value) -> bool) {
        let end = Instant::now() + DEADLINE;
        let mut lines = self.log.lines.lock().unwrap();
        // Scan each line once: busy processes log a lot.
        let (mut seen, mut scanned) = (0, 0);
        loop {
            seen += lines[scanned..].iter().filter(|v| pred(v)).count();
            scanned = lines.len();
            if seen >= n {
                return;
            }
            let now = Instant::now();
            assert!(
                now < end,
                "{}: {seen} of {n} log lines {what} within {DEADLINE:?}",
                self.name
            );
            lines = self.log.changed.wait_timeout(lines, end - now).unwrap().0;
        }
    }

    /// Waits for a line whose `message` equals `msg`.
    pub fn wait_message(&self, msg: &str) -> Value {
        self.wait_log(msg, |v| v["message"] == msg)
    }

    /// How many log lines so far have `message` == `msg`.
    pub fn count_messages(&self, msg: &str) -> usize {
        let lines = self.log.lines.lock().unwrap();
        lines.iter().filter(|v| v["message"] == msg).count()
    }

    /// The first log line so far whose `message` is `msg`, if any.
    pub fn first_message(&self, msg: &str) -> Option<Value> {
        let lines = self.log.lines.lock().unwrap();
        lines.iter().find(|v| v["message"] == msg).cloned()
    }

    /// The last log line so far whose `message` is `msg`, if any.
    pub fn last_message(&self, msg: &str) -> Option<Value> {
        let lines = self.log.lines.lock().unwrap();
        lines.iter().rfind(|v| v["message"] == msg).cloned()
    }

    /// All log lines so far.
    pub fn lines(&self) -> Vec<Value> {
        self.log.lines.lock().unwrap().clone()
    }

    /// Sends a signal by name (`TERM`, `INT`, ...).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} {}", self.pid());
    }

    /// Waits for the process to exit, failing the test after the deadline.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < end,
                "{} did not exit within {limit:?}",
                self.name
            );
            // Polling a child's exit status has no event to wait on here;
            // the deadline above bounds the loop.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident memory (VmHWM) in KiB, from /proc.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    /// Current resident memory (VmRSS) in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `backend` process.
#[derive(Debug)]
pub struct Backend {
    pub id: String,
    pub addr: SocketAddr,
    pub proc: Proc,
}

impl Backend {
    pub fn start(id: &str) -> Self {
        Self::start_on(id, "127.0.0.1:0")
    }

    /// Starts a backend on a given address (e.g. to restart one on its old port).
    pub fn start_on(id: &str, listen: &str) -> Self {
        Self::spawn(id, listen, &[])
    }

    /// Starts a game backend (`--redis url`) with `extra` flags.
    pub fn start_game(id: &str, redis_url: &str, extra: &[&str]) -> Self {
        let flags: Vec<&str> = ["--redis", redis_url]
            .iter()
            .chain(extra)
            .copied()
            .collect();
        Self::spawn(id, "127.0.0.1:0", &flags)
    }

    /// Starts a backend that serves HTTPS only, with `extra` flags (e.g.
    /// `--tls-client-ca FILE`).
    pub fn start_tls(
        id: &str,
        cert: &std::path::Path,
        key: &std::path::Path,
        extra: &[&str],
    ) -> Self {
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        let mut flags = vec!["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
        flags.extend_from_slice(extra);
        Self::spawn(id, "127.0.0.1:0", &flags)
    }

    fn spawn(id: &str, listen: &str, extra: &[&str]) -> Self {
        let mut cmd = Command::new(bin("backend"));
        cmd.args(["--listen", listen, "--id", id, "--log-format", "json"])
            .args(extra);
        let proc = Proc::spawn(&format!("backend {id}"), cmd);
        let line = proc.wait_message("listening");
        let addr = line["address"].as_str().unwrap().parse().unwrap();
        Self {
            id: id.to_string(),
            addr,
            proc,
        }
    }
}

/// A real `redis-server` on a free loopback port, with nothing saved to disk.
#[derive(Debug)]
pub struct Redis {
    pub port: u16,
    pub proc: Proc,
    _dir: tempfile::TempDir,
    _certs: Option<tempfile::TempDir>,
}

impl Redis {
    /// Starts `redis-server` (from the distribution's packages; `scripts/test.sh`
    /// installs it). Redis cannot bind port 0 and report it, so a free port
    /// is picked and the start retried if another process takes it first.
    pub fn start() -> Self {
        for _ in 0..5 {
            if let Some(redis) = Self::start_on(closed_port().port()) {
                return redis;
            }
        }
        panic!("redis-server did not start on a free port in 5 tries");
    }

    /// Starts `redis-server` on `port` (e.g. to restart it where clients
    /// expect it); `None` if the port is taken.
    pub fn start_on(port: u16) -> Option<Self> {
        Self::start_with(port, &[])
    }

    /// Starts a replica of `primary` on a free port.
    pub fn replica_of(primary: &Redis) -> Self {
        let of = primary.port.to_string();
        for _ in 0..5 {
            if let Some(r) =
                Self::start_with(closed_port().port(), &["--replicaof", "127.0.0.1", &of])
            {
                return r;
            }
        }
        panic!("redis replica did not start on a free port in 5 tries");
    }

    /// Starts a Redis Sentinel on a free port that monitors `primary` as
    /// master `name`, with quorum 1 and short timeouts.
    pub fn sentinel(primary: &Redis, name: &str) -> Self {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = closed_port().port();
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {name} 127.0.0.1 {} 1\n\
                     sentinel down-after-milliseconds {name} 1000\n\
                     sentinel failover-timeout {name} 3000\n",
                    dir.path().display(),
                    primary.port
                ),
            )
            .unwrap();
            let mut cmd = Command::new("redis-server");
            cmd.arg(&conf).arg("--sentinel");
            let proc = Proc::spawn("sentinel", cmd);
            let ready = proc.wait_log("monitoring or failed", |v| {
                v.as_str().is_some_and(|l| {
                    l.contains("+monitor") || l.contains("Could not create server TCP")
                })
            });
            if ready.as_str().is_some_and(|l| l.contains("+monitor")) {
                return Self {
                    port,
                    proc,
                    _dir: dir,
                    _certs: None,
                };
            }
        }
        panic!("redis sentinel did not start on a free port in 5 tries");
    }

    /// Starts `redis-server` with TLS only, on a free port, with a server
    /// certificate for 127.0.0.1 signed by a fresh CA; returns it and the CA
    /// certificate's path (PEM).
    pub fn start_tls() -> (Self, PathBuf) {
        let certs = tempfile::tempdir().unwrap();
        let d = certs.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .current_dir(d)
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(d.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ]);
        let path = |f: &str| d.join(f).display().to_string();
        let (cert, key, ca) = (path("server.crt"), path("server.key"), path("ca.crt"));
        for _ in 0..5 {
            let port = closed_port().port().to_string();
            let args = [
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
                "--tls-auth-clients",
                "no",
            ];
            if let Some(mut r) = Self::start_with(0, &args) {
                r.port = port.parse().unwrap();
                // Keep the certificates as long as the server.
                let ca_path = certs.path().join("ca.crt");
                r._certs = Some(certs);
                return (r, ca_path);
            }
        }
        panic!("redis-server with TLS did not start on a free port in 5 tries");
    }

    fn start_with(port: u16, extra: &[&str]) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(extra);
        let proc = Proc::spawn("redis", cmd);
        let ready = proc.wait_log("ready or failed", |v| {
            v.as_str().is_some_and(|l| {
                l.contains("Ready to accept connections")
                    || l.contains("Could not create server TCP")
            })
        });
        ready
            .as_str()
            .is_some_and(|l| l.contains("Ready"))
            .then(|| Self {
                port,
                proc,
                _dir: dir,
                _certs: None,
            })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// A running `balancer` process and the ports its listeners got.
#[derive(Debug)]
pub struct Balancer {
    pub proc: Proc,
    pub listeners: HashMap<String, SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Balancer {
    /// Starts a balancer on `config` (listeners should use port 0) and waits
    /// until every listener is bound.
    pub fn start(config: &str) -> Self {
        Self::start_with(config, "info")
    }

    /// Like [`Balancer::start`], without access-log lines (for load tests).
    pub fn start_quiet(config: &str) -> Self {
        Self::start_with(config, "info,access=off")
    }

    /// Like [`Balancer::start`], logging at `rust_log` (an `EnvFilter`).
    pub fn start_with(config: &str, rust_log: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("balancer.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(bin("balancer"));
        cmd.arg("--config")
            .arg(&path)
            .args(["--log-format", "json"])
            .env("RUST_LOG", rust_log);
        let proc = Proc::spawn("balancer", cmd);
        proc.wait_message("balancer started");
        let listeners = proc
            .lines()
            .iter()
            .filter(|v| v["message"] == "listening")
            .map(|v| {
                (
                    v["listener"].as_str().unwrap().to_string(),
                    v["address"].as_str().unwrap().parse().unwrap(),
                )
            })
            .collect();
        Self {
            proc,
            listeners,
            _dir: dir,
        }
    }

    /// The admin listener's address (needs an `[admin]` table).
    pub fn admin_addr(&self) -> SocketAddr {
        let line = self.proc.wait_message("admin listening");
        line["address"].as_str().unwrap().parse().unwrap()
    }

    /// The config file the balancer runs on (and watches).
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("balancer.toml")
    }

    /// Replaces the config file the way editors do: write a new file, then
    /// rename it over the old one.
    pub fn rewrite_config(&self, text: &str) {
        let tmp = self._dir.path().join(".balancer.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.config_path()).unwrap();
    }

    /// Address of the listener named `public`, which most tests use.
    pub fn addr(&self) -> SocketAddr {
        self.listeners["public"]
    }

    /// `http://127.0.0.1:PORT` of the `public` listener, with `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }
}

/// A config with one `public` listener and one pool `game` of `backends`
/// (`(id, address, weight)`) routed at `/`, plus `extra` TOML appended.
pub fn single_pool_config(backends: &[(&str, SocketAddr, u32)], extra: &str) -> String {
    let mut c = String::from(
        "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\n[[pool]]\nname = \"game\"\n",
    );
    for (id, addr, weight) in backends {
        c.push_str(&format!(
            "  [[pool.backend]]\n  id = \"{id}\"\n  address = \"{addr}\"\n  weight = {weight}\n"
        ));
    }
    c.push_str("\n[[route]]\nlistener = \"public\"\npath_prefix = \"/\"\npool = \"game\"\n\n");
    c.push_str(extra);
    c
}

/// `[[pool.backend]]` entries (id and address) for `backends`, to put
/// under a `[[pool]]` table of a test config.
pub fn pool_members<'a>(backends: impl IntoIterator<Item = &'a Backend>) -> String {
    backends
        .into_iter()
        .map(|b| {
            format!(
                "  [[pool.backend]]\n  id = \"{}\"\n  address = \"{}\"\n",
                b.id, b.addr
            )
        })
        .collect()
}

/// An address on which nothing listens (bound, then released).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A first port with `n - 1` free ports after it (each bound, then
/// released): room for a supervised pool's instances and surge ports.
pub fn free_ports(n: u16) -> u16 {
    for _ in 0..50 {
        let base = closed_port().port();
        if base.checked_add(n).is_none() {
            continue;
        }
        let free = (1..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no {n} consecutive free ports in 50 tries");
}

/// Whether process `pid` is gone (a zombie nobody reaped yet counts as gone).
pub fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Waits (up to [`DEADLINE`]) until every one of `pids` is gone.
pub fn wait_gone(pids: &[u32]) {
    let end = Instant::now() + DEADLINE;
    while !pids.iter().all(|&p| gone(p)) {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| !gone(p)).collect();
        assert!(Instant::now() < end, "children still running: {left:?}");
        // No event tells this process when another's child exits.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
