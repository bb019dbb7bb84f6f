//! A real Socket.IO v4 cluster behind the balancer: 3 Node `socket.io`
//! servers sharing the `@socket.io/redis-adapter` over a real `redis-server`,
//! and 50 `socket.io-client` clients with default transports (long-polling,
//! then the upgrade to WebSocket) and a cookie jar. With `policy = "cookie"`
//! every client connects, upgrades and gets a broadcast, and no server ever
//! sees "Session ID unknown". The same run with `round_robin` must show
//! those errors: proof that the test can fail.
//!
//! Needs node, npm and redis-server (`scripts/test.sh` installs what is missing);
//! the npm packages are pinned by `tests/socketio/package-lock.json` and
//! installed with `npm ci`.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;
use tests::{Balancer, Proc, Redis};

const CLIENTS: usize = 50;

fn socketio_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("socketio")
}

/// `npm ci` once per test binary (both tests share the install).
fn npm_ci() {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap();
    if *done {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(socketio_dir())
        .status()
        .expect("npm must be installed (scripts/test.sh installs it)");
    assert!(status.success(), "npm ci failed in tests/socketio");
    *done = true;
}

struct Cluster {
    _redis: Redis,
    servers: Vec<(String, u16, Proc)>,
}

fn start_cluster() -> Cluster {
    npm_ci();
    let redis = Redis::start();
    let servers = (1..=3)
        .map(|i| {
            let id = format!("sio-{i}");
            let mut cmd = Command::new("node");
            cmd.arg("server.js")
                .arg(&id)
                .arg(redis.url())
                .current_dir(socketio_dir());
            let proc = Proc::spawn(&id, cmd);
            let line = proc.wait_log("listening", |v| v["event"] == "listening");
            let port = line["port"].as_u64().unwrap() as u16;
            (id, port, proc)
        })
        .collect();
    Cluster {
        _redis: redis,
        servers,
    }
}

fn balancer_config(cluster: &Cluster, policy: &str) -> String {
    let mut c = format!(
        "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\n[[pool]]\nname = \"game\"\npolicy = \"{policy}\"\n"
    );
    for (id, port, _) in &cluster.servers {
        c.push_str(&format!(
            "  [[pool.backend]]\n  id = \"{id}\"\n  address = \"127.0.0.1:{port}\"\n"
        ));
    }
    if policy == "cookie" {
        c.push_str("  [pool.sticky]\n  secret = \"socket-io-test-secret-0123456789\"\n");
    }
    c.push_str("\n[[route]]\nlistener = \"public\"\npool = \"game\"\n");
    c
}

/// Runs the 50 clients (bounded by their own 20 s timeout) and returns their summary.
fn run_clients(lb: &Balancer) -> Value {
    let out = Command::new("node")
        .arg("clients.js")
        .arg(format!("http://{}", lb.addr()))
        .arg(CLIENTS.to_string())
        .arg("20000")
        .current_dir(socketio_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "clients.js failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("[clients] {stdout}");
    serde_json::from_str(stdout.trim().lines().last().unwrap_or("")).unwrap()
}

fn session_unknown_errors(cluster: &Cluster) -> usize {
    cluster
        .servers
        .iter()
        .flat_map(|(_, _, p)| p.lines())
        .filter(|v| v["event"] == "connection_error" && v["code"] == 1)
        .count()
}

#[test]
fn cookie_policy_keeps_every_socketio_session_on_its_server() {
    let cluster = start_cluster();
    let lb = Balancer::start(&balancer_config(&cluster, "cookie"));
    let s = run_clients(&lb);
    assert_eq!(s["connected"], CLIENTS, "{s}");
    assert_eq!(
        s["upgraded"], CLIENTS,
        "every client upgrades to WebSocket: {s}"
    );
    assert_eq!(
        s["received"], CLIENTS,
        "the broadcast reaches every client on every server: {s}"
    );
    assert_eq!(s["connect_errors"], 0, "{s}");
    assert_eq!(s["ok"], true, "{s}");
    assert_eq!(
        session_unknown_errors(&cluster),
        0,
        "no 'Session ID unknown' with cookies"
    );
    let used = s["servers"].as_object().unwrap().len();
    assert!(used >= 2, "clients should spread over the servers: {s}");
}

#[test]
fn round_robin_breaks_socketio_sessions() {
    let cluster = start_cluster();
    let lb = Balancer::start(&balancer_config(&cluster, "round_robin"));
    let s = run_clients(&lb);
    let errors = session_unknown_errors(&cluster);
    assert!(
        errors > 0 && s["ok"] == false,
        "without stickiness Socket.IO long-polling must fail; got {errors} errors and {s}"
    );
}
