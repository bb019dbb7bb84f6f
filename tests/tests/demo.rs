//! The README's first command: `config/examples/demo.toml`, as written,
//! with only what ties it to one machine swapped (its ports for free ones,
//! the two relative program paths for absolute ones). The balancer alone
//! brings up Redis and three game backends; two headless Chromium pages
//! play on it, see each other, and ride out a rolling restart of every
//! backend (Close 1012, resume on the new processes); SIGTERM then stops
//! everything it started.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::browser::{play, pos_expr, Browser};
use tests::http::{get, h1};
use tests::{bin, closed_port, free_ports, Balancer, DEADLINE};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The demo config, made to run beside other tests.
fn demo_config() -> String {
    let text = std::fs::read_to_string(repo().join("config/examples/demo.toml")).unwrap();
    let redis = closed_port().port();
    let swaps = [
        ("127.0.0.1:8080", "127.0.0.1:0".to_string()),
        ("127.0.0.1:9900", "127.0.0.1:0".to_string()),
        ("port = 6390", format!("port = {redis}")),
        ("127.0.0.1:6390", format!("127.0.0.1:{redis}")),
        // Room for the surge ports too (256 above by default).
        (
            "base_port = 9001",
            format!("base_port = {}\nsurge_port_offset = 3", free_ports(6)),
        ),
        (
            "\"target/release/backend\"",
            format!("{:?}", bin("backend").display().to_string()),
        ),
        (
            "\"scripts/redis-server.sh\"",
            format!(
                "{:?}",
                repo().join("scripts/redis-server.sh").display().to_string()
            ),
        ),
    ];
    let mut out = text.clone();
    for (from, to) in swaps {
        assert!(out.contains(from), "demo.toml no longer has {from:?}");
        out = out.replace(from, &to);
    }
    out
}

async fn status(lb: &Balancer) -> Value {
    get(&h1(), &format!("http://{}/api/status", lb.admin_addr()))
        .await
        .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_config_runs_the_whole_game_and_rides_out_a_rolling_restart() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let lb = Balancer::start(&demo_config());
    // Redis first, then the three game backends, all from the one file.
    let end = Instant::now() + DEADLINE;
    let first = loop {
        let s = status(&lb).await;
        let ready = s["pools"][0]["processes"]["ready"] == 3
            && s["processes"][0]["name"] == "redis"
            && s["processes"][0]["state"] == "ready";
        if ready {
            break s;
        }
        assert!(Instant::now() < end, "the demo never came up: {s:#}");
        // Polling the admin API; the deadline bounds the loop.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pids: Vec<u64> = first["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["process"]["pid"].as_u64().unwrap())
        .collect();
    let redis_pid = first["processes"][0]["pid"].as_u64().unwrap();
    lb.proc.wait_log("redis-server's own output", |v| {
        v["instance"] == "redis"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("Ready to accept connections"))
    });

    let url = format!("http://{}/", lb.addr());
    let mut a = browser.open(&url).await;
    let (a_id, _) = play(&mut a, "Ada").await;
    let mut b = browser.open(&url).await;
    let (b_id, _) = play(&mut b, "Bob").await;
    b.wait_for(&pos_expr(&a_id), Value::is_string).await;
    let a_at = a.wait_for(&pos_expr(&a_id), Value::is_string).await;
    a.wait_for(&pos_expr(&b_id), Value::is_string).await;

    // A deploy: every backend is replaced; each page gets 1012 and resumes
    // on a new process, where it stood.
    let r = tests::http::post_admin(
        &h1(),
        &format!("http://{}/api/pools/game/restart", lb.admin_addr()),
        None,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    lb.proc.wait_message("rolling restart done");
    for page in [&mut a, &mut b] {
        let code = page
            .wait_for("game.state.closes[0] || null", Value::is_number)
            .await;
        assert_eq!(code, 1012);
        page.wait_for(
            "game.state.connected && game.state.room === 'lobby' && game.state.reconnects > 0",
            |v| v == true,
        )
        .await;
    }
    let s = status(&lb).await;
    for backend in s["pools"][0]["backends"].as_array().unwrap() {
        let pid = backend["process"]["pid"].as_u64().unwrap();
        assert!(!pids.contains(&pid), "{backend}");
    }
    assert_eq!(
        s["processes"][0]["pid"], redis_pid,
        "Redis was not restarted"
    );
    let process = a.eval("game.state.process").await;
    assert!(
        !pids.is_empty() && process.is_string(),
        "{process} after the restart"
    );
    a.wait_for(&pos_expr(&a_id), |v| *v == a_at).await;
    b.wait_for(&pos_expr(&a_id), |v| *v == a_at).await;

    // SIGTERM: players drained, backends stopped, then Redis.
    let mut lb = lb;
    lb.proc.signal("TERM");
    let exit = lb.proc.wait_exit(DEADLINE);
    assert!(exit.success(), "{exit:?}");
    let pids: Vec<u32> = s["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["process"]["pid"].as_u64().unwrap())
        .chain([redis_pid])
        .map(|p| p as u32)
        .collect();
    // The balancer reaped them before it exited: they are gone already.
    assert!(
        pids.iter().all(|&p| tests::gone(p)),
        "a process outlived the balancer: {pids:?}"
    );
}
