//! Prometheus metrics after known traffic: the scraped counters equal what
//! was sent, and the output parses as Prometheus text.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::{SinkExt, StreamExt};
use tests::http::{get, h1};
use tests::{Backend, Balancer};
use tokio_tungstenite::tungstenite::Message;

/// Scrapes and parses `/metrics`.
async fn scrape(lb: &Balancer) -> prometheus_parse::Scrape {
    let r = get(&h1(), &format!("http://{}/metrics", lb.admin_addr())).await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let lines = r
        .text()
        .lines()
        .map(|l| Ok(l.to_string()))
        .collect::<Vec<_>>();
    prometheus_parse::Scrape::parse(lines.into_iter()).expect("valid Prometheus text")
}

/// Sum of a counter or gauge over the samples whose labels include `labels`.
fn sum(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

fn histogram_count(s: &prometheus_parse::Scrape, name: &str, pool: &str) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name && x.labels.get("pool") == Some(pool))
        .map(|x| match &x.value {
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_equal_the_traffic_sent() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let config = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\n[[pool]]\nname = \"game\"\n\
         [[pool.backend]]\nid = \"a\"\naddress = \"{}\"\n[[pool.backend]]\nid = \"b\"\naddress = \"{}\"\n\
         [pool.ejection]\nconsecutive_failures = 1000\n\
         [[route]]\nlistener = \"public\"\npool = \"game\"\n",
        a.addr, b.addr
    );
    let lb = Balancer::start(&config);
    let c = h1();
    const N: usize = 40;
    for _ in 0..N {
        assert_eq!(get(&c, &lb.url("/whoami")).await.status, 200);
    }
    assert_eq!(get(&c, &lb.url("/nope")).await.status, 404); // from the backend: a 4xx
                                                             // One POST of 1000 bytes, echoed: 1000 bytes each way.
    let r = tests::http::send(
        &c,
        ::http::Request::post(lb.url("/echo"))
            .body(tests::http::full(vec![7u8; 1000]))
            .unwrap(),
    )
    .await;
    assert_eq!(r.body.len(), 1000);
    // M WebSocket sessions, one open during the scrape.
    const M: usize = 3;
    let mut open = Vec::new();
    for i in 0..M {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", lb.addr()))
            .await
            .unwrap();
        ws.send(Message::text("12345")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("12345"));
        if i < M - 1 {
            ws.close(None).await.unwrap();
            while ws.next().await.is_some() {}
        } else {
            open.push(ws);
        }
    }
    lb.proc
        .wait_count("closed tunnels", M - 1, |v| v["event"] == "tunnel_closed");

    let s = scrape(&lb).await;
    let pool = [("pool", "game")];
    assert_eq!(
        sum(
            &s,
            "balancer_requests_total",
            &[("pool", "game"), ("code", "2xx")]
        ),
        (N + 1) as f64
    );
    assert_eq!(
        sum(&s, "balancer_requests_total", &[("method", "POST")]),
        1.0
    );
    assert_eq!(sum(&s, "balancer_request_bytes_total", &pool), 1000.0);
    assert_eq!(sum(&s, "balancer_requests_total", &[("code", "4xx")]), 1.0);
    assert_eq!(
        sum(&s, "balancer_requests_total", &[("code", "1xx")]),
        M as f64,
        "upgrades answer 101"
    );
    let (on_a, on_b) = (
        sum(&s, "balancer_requests_total", &[("backend", "a")]),
        sum(&s, "balancer_requests_total", &[("backend", "b")]),
    );
    assert!(
        (on_a - on_b).abs() <= 1.0,
        "round robin splits evenly: {on_a} {on_b}"
    );
    assert_eq!(
        histogram_count(&s, "balancer_response_header_seconds", "game"),
        (N + 2 + M) as f64
    );
    assert_eq!(
        histogram_count(&s, "balancer_websocket_session_duration_seconds", "game"),
        (M - 1) as f64
    );
    assert_eq!(sum(&s, "balancer_backend_websocket_tunnels", &pool), 1.0);
    assert!(sum(&s, "balancer_websocket_bytes_total", &[("direction", "in")]) > 0.0);
    assert_eq!(sum(&s, "balancer_backend_up", &pool), 2.0);
    assert_eq!(sum(&s, "balancer_config_generation", &[]), 1.0);
    let connects = histogram_count(&s, "balancer_upstream_connect_duration_seconds", "game");
    assert!(
        connects >= 2.0,
        "one new connection per backend at least: {connects}"
    );
    assert!(
        connects <= 10.0,
        "keep-alive reuses connections: {connects}"
    );
    assert_eq!(sum(&s, "balancer_build_info", &[]), 1.0);
    assert!(sum(&s, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(sum(&s, "balancer_client_connections", &[("listener", "public")]) >= 1.0);

    // Kill b: requests that pick it are retried on a; the retries are counted.
    drop(b);
    for _ in 0..10 {
        assert_eq!(get(&h1(), &lb.url("/whoami")).await.text(), "a");
    }
    let retried = lb.proc.count_messages("retrying on another backend");
    assert!(retried > 0);
    let s = scrape(&lb).await;
    assert_eq!(sum(&s, "balancer_retries_total", &pool), retried as f64);
    assert_eq!(
        sum(&s, "balancer_requests_total", &[("code", "2xx")]),
        (N + 11) as f64,
        "retried requests count once"
    );
    assert_eq!(
        sum(&s, "balancer_errors_total", &pool),
        0.0,
        "no client saw an error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_metrics_follow_the_checks() {
    let a = Backend::start("a");
    let config = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\n[[pool]]\nname = \"game\"\n\
         [[pool.backend]]\nid = \"a\"\naddress = \"{}\"\n\
         [pool.health]\ninterval = \"100ms\"\ntimeout = \"200ms\"\nfall = 2\n\
         [[route]]\nlistener = \"public\"\npool = \"game\"\n",
        a.addr
    );
    let lb = Balancer::start(&config);
    lb.proc.wait_message("backend up");
    let s = scrape(&lb).await;
    assert!(histogram_count(&s, "balancer_health_check_duration_seconds", "game") >= 1.0);
    assert_eq!(
        sum(
            &s,
            "balancer_health_check_failures_total",
            &[("backend", "a")]
        ),
        0.0
    );
    assert_eq!(sum(&s, "balancer_backend_up", &[("backend", "a")]), 1.0);
    drop(a);
    lb.proc.wait_message("backend down");
    let s = scrape(&lb).await;
    assert!(
        sum(
            &s,
            "balancer_health_check_failures_total",
            &[("backend", "a")]
        ) >= 2.0
    );
    assert_eq!(sum(&s, "balancer_backend_up", &[("backend", "a")]), 0.0);
    assert_eq!(
        sum(
            &s,
            "balancer_backend_health_changes_total",
            &[("backend", "a")]
        ),
        2.0,
        "unknown->up, up->down"
    );
}
