//! Active health checks through real processes: a killed backend is marked
//! down and gets no traffic, a restarted one comes back, a backend never
//! seen healthy gets nothing, and a pool with nothing up answers 503.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tests::http::{get, h1};
use tests::{closed_port, Backend, Balancer};

const HEALTH: &str =
    "  [pool.health]\n  interval = \"200ms\"\n  timeout = \"200ms\"\n  rise = 2\n  fall = 2\n";

fn config(backends: &[(&str, String)], health: &str) -> String {
    let mut c = String::from(
        "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\n[[pool]]\nname = \"game\"\n",
    );
    for (id, addr) in backends {
        c.push_str(&format!(
            "  [[pool.backend]]\n  id = \"{id}\"\n  address = \"{addr}\"\n"
        ));
    }
    c.push_str(health);
    c.push_str("\n[[route]]\nlistener = \"public\"\npool = \"game\"\n");
    c
}

async fn spread(lb: &Balancer, n: usize) -> HashMap<String, usize> {
    let c = h1();
    let mut counts = HashMap::new();
    for _ in 0..n {
        let r = get(&c, &lb.url("/whoami")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        *counts.entry(r.text()).or_default() += 1;
    }
    counts
}

fn transition(lb: &Balancer, what: &'static str, backend: &str, after: usize) -> Duration {
    let start = Instant::now();
    let backend = backend.to_string();
    lb.proc.wait_count(what, after + 1, |v| {
        v["message"] == what && v["backend"] == backend.as_str()
    });
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_is_marked_down_and_restarted_one_comes_back() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let b_addr = b.addr.to_string();
    let lb = Balancer::start(&config(
        &[("a", a.addr.to_string()), ("b", b_addr.clone())],
        HEALTH,
    ));
    transition(&lb, "backend up", "a", 0);
    transition(&lb, "backend up", "b", 0);
    let before = spread(&lb, 20).await;
    assert_eq!((before["a"], before["b"]), (10, 10), "{before:?}");

    drop(b); // SIGKILL
    let took = transition(&lb, "backend down", "b", 0);
    // interval x fall plus one timeout is 0.6 s; allow for a loaded machine.
    assert!(took < Duration::from_secs(5), "marked down after {took:?}");
    let reason = lb.proc.last_message("backend down").unwrap();
    assert_eq!(reason["reason"], "connection refused", "{reason}");
    let during = spread(&lb, 20).await;
    assert_eq!(
        during.get("a"),
        Some(&20),
        "a down backend gets no traffic: {during:?}"
    );

    let _b = Backend::start_on("b", &b_addr);
    let took = transition(&lb, "backend up", "b", 1);
    assert!(took < Duration::from_secs(5), "marked up after {took:?}");
    let after = spread(&lb, 20).await;
    assert_eq!((after["a"], after["b"]), (10, 10), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_healthy_backend_gets_no_traffic_and_nothing_up_is_503() {
    let a = Backend::start("a");
    let dead = closed_port().to_string();
    let lb = Balancer::start(&config(
        &[("a", a.addr.to_string()), ("dead", dead)],
        HEALTH,
    ));
    transition(&lb, "backend up", "a", 0);
    let counts = spread(&lb, 20).await;
    assert_eq!(counts.get("a"), Some(&20), "{counts:?}");

    drop(a);
    transition(&lb, "backend down", "a", 0);
    let r = get(&h1(), &lb.url("/whoami")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_uses_path_and_expected_status() {
    let a = Backend::start("a");
    // /whoami answers 200, /nope 404: with expect 200-299 the second fails.
    let good =
        "  [pool.health]\n  path = \"/readyz\"\n  interval = \"200ms\"\n  expect = \"200-299\"\n";
    let bad = "  [pool.health]\n  path = \"/nope\"\n  interval = \"200ms\"\n  fall = 1\n";
    let lb = Balancer::start(&config(&[("a", a.addr.to_string())], good));
    transition(&lb, "backend up", "a", 0);
    let lb2 = Balancer::start(&config(&[("a", a.addr.to_string())], bad));
    transition(&lb2, "backend down", "a", 0);
    let reason = lb2.proc.first_message("backend down").unwrap();
    assert_eq!(reason["reason"], "status 404", "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_backend_ramps_up_under_slow_start() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let b_addr = b.addr.to_string();
    let health = "  [pool.health]\n  interval = \"100ms\"\n  timeout = \"200ms\"\n  rise = 1\n  fall = 1\n  assume_up = true\n";
    let mut c = config(&[("a", a.addr.to_string()), ("b", b_addr.clone())], health);
    c = c.replace(
        "name = \"game\"\n",
        "name = \"game\"\npolicy = \"least_connections\"\nslow_start = \"5s\"\n",
    );
    let lb = Balancer::start(&c);
    drop(b);
    transition(&lb, "backend down", "b", 0);
    let _b = Backend::start_on("b", &b_addr);
    transition(&lb, "backend up", "b", 0);

    // Right after coming back, b has about 10% of its weight: of 22 new
    // long-lived connections it gets a few, not half.
    let mut sockets = Vec::new();
    let mut on_b = 0;
    for _ in 0..22 {
        let (ws, id) = tests::ws::open_tunnel(lb.addr()).await;
        if id.as_str() == "b" {
            on_b += 1;
        }
        sockets.push(ws);
    }
    assert!((1..=6).contains(&on_b), "b got {on_b} of 22 while ramping");
}

/// What a reload does to checks, applied for real: a backend held down by
/// a failing check path comes up when the path is fixed (its checker is
/// restarted with the new settings), goes down again with a bad one, and
/// counts as up at once when the pool drops its checks (the checker stops;
/// nothing is left to hold it down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_restart_and_stop_checkers_and_a_pool_without_checks_is_up() {
    let a = Backend::start("a");
    let members = [("a", a.addr.to_string())];
    let checks = |path: &str| {
        format!("  [pool.health]\n  path = \"{path}\"\n  interval = \"100ms\"\n  timeout = \"500ms\"\n  rise = 1\n  fall = 1\n")
    };
    let lb = Balancer::start(&config(&members, &checks("/nope")));
    let status_within = |want: u16| {
        let url = lb.url("/whoami");
        async move {
            let end = Instant::now() + tests::DEADLINE;
            loop {
                let r = get(&h1(), &url).await;
                if r.status == want {
                    return r;
                }
                assert!(Instant::now() < end, "never {want}, last {}", r.status);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // `/nope` is a 404: never healthy, the pool answers 503.
    status_within(503).await;
    let reloaded = |n: usize| {
        lb.proc
            .wait_count("reload", n, |v| v["message"] == "config reloaded");
    };
    lb.rewrite_config(&config(&members, &checks("/healthz")));
    reloaded(1);
    assert_eq!(status_within(200).await.text(), "a");
    lb.rewrite_config(&config(&members, &checks("/nope")));
    reloaded(2);
    status_within(503).await;
    // No checks: up at once, and it stays up (no checker left to say down).
    lb.rewrite_config(&config(&members, ""));
    reloaded(3);
    assert_eq!(status_within(200).await.text(), "a");
    let downs = lb.proc.count_messages("backend down");
    for _ in 0..20 {
        assert_eq!(get(&h1(), &lb.url("/whoami")).await.status, 200);
    }
    assert_eq!(lb.proc.count_messages("backend down"), downs);
}
