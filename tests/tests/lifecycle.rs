//! Graceful shutdown on SIGTERM / SIGINT.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tests::http::{get, h1};
use tests::{single_pool_config, Backend, Balancer, DEADLINE};

/// Waits until connecting to the balancer's listener is refused.
async fn wait_refused(lb: &Balancer) {
    let end = Instant::now() + DEADLINE;
    loop {
        match tokio::net::TcpStream::connect(lb.addr()).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            _ => {}
        }
        assert!(
            Instant::now() < end,
            "listener still accepting after shutdown"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let b = Backend::start("slow");
    let mut lb = Balancer::start(&single_pool_config(
        &[("slow", b.addr, 1)],
        "[timeouts]\nshutdown_grace = \"20s\"\n",
    ));
    let url = lb.url("/sleep?ms=1500");
    let in_flight = tokio::spawn(async move { get(&h1(), &url).await });
    b.proc.wait_message("sleep started");

    lb.proc.signal("TERM");
    lb.proc.wait_log("shutdown log", |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("shutting down"))
    });
    wait_refused(&lb).await;

    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "in-flight request must finish: {}", r.text());
    assert_eq!(r.text(), "slept 1500ms");
    let status = lb.proc.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_with_a_stuck_request_exits_after_the_grace_period() {
    let b = Backend::start("stuck");
    let mut lb = Balancer::start(&single_pool_config(
        &[("stuck", b.addr, 1)],
        "[timeouts]\nshutdown_grace = \"500ms\"\n",
    ));
    let url = lb.url("/sleep?ms=600000");
    let in_flight = tokio::spawn(async move {
        let req = ::http::Request::get(url)
            .body(tests::http::empty())
            .unwrap();
        h1().request(req).await.map(|r| r.status())
    });
    b.proc.wait_message("sleep started");
    let start = Instant::now();
    lb.proc.signal("INT");
    let status = lb.proc.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0));
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    lb.proc.wait_log("grace warning", |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("grace period over"))
    });
    // The stuck request's connection went away with the process.
    assert!(in_flight.await.unwrap().is_err());
}
