//! Retries and passive ejection through real processes, and the reliability
//! run: backends killed and restarted under load cost clients nothing.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tests::http::{get, h1, post};
use tests::load::GetLoad;
use tests::{closed_port, Backend, Balancer};
use tokio_tungstenite::tungstenite::Message;

/// Round robin over a dead backend (first) and a live one, no health checks.
fn dead_first(live: &Backend, extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\n[[pool]]\nname = \"game\"\n\
         [[pool.backend]]\nid = \"dead\"\naddress = \"{}\"\n\
         [[pool.backend]]\nid = \"{}\"\naddress = \"{}\"\n{extra}\n\
         [[route]]\nlistener = \"public\"\npool = \"game\"\n",
        closed_port(),
        live.id,
        live.addr
    )
}

const NO_EJECTION: &str = "[pool.ejection]\nconsecutive_failures = 0\n";

#[tokio::test]
async fn refused_connection_is_retried_transparently_and_the_backend_ejected() {
    let live = Backend::start("live");
    let lb = Balancer::start(&dead_first(&live, ""));
    let c = h1();
    for _ in 0..20 {
        let r = get(&c, &lb.url("/whoami")).await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "live"));
    }
    lb.proc.wait_log("retry line", |v| {
        v["message"] == "retrying on another backend" && v["backend"] == "dead"
    });
    // The first refusal takes the dead backend out (whatever the cap), so
    // it costs exactly one retry.
    lb.proc.wait_log("ejection", |v| {
        v["message"] == "backend ejected" && v["backend"] == "dead" && v["cause"] == "refused"
    });
    let retries = lb.proc.count_messages("retrying on another backend");
    assert_eq!(retries, 1, "an ejected backend costs no more retries");
}

#[tokio::test]
async fn buffered_bodies_are_replayed_streamed_ones_are_not() {
    let live = Backend::start("live");
    let lb = Balancer::start(&dead_first(&live, NO_EJECTION));
    let c = h1();
    // First pick is the dead backend: a 1 KiB POST is buffered and replayed.
    let small = vec![7u8; 1024];
    let r = post(&c, &lb.url("/echo"), small.clone()).await;
    assert_eq!(r.status, 200);
    assert!(r.body == small);
    // Next pick is the live one; then the dead one again, now with 1 MiB:
    // past `max_body`, but read whole (memory and a buffer file, the
    // defaults) before a backend is picked, so it is replayed too.
    let r = get(&c, &lb.url("/whoami")).await;
    assert_eq!(r.status, 200);
    let big = vec![9u8; 1 << 20];
    let r = post(&c, &lb.url("/echo"), big.clone()).await;
    assert_eq!(r.status, 200, "a buffered 1 MiB body is replayed");
    assert!(r.body == big);

    // Without buffer files (`buffer_body_file = 0`) it streams: once, so
    // no retry, and the client sees the 502.
    let streaming = dead_first(&live, NO_EJECTION).replace(
        "name = \"game\"\n",
        "name = \"game\"\nbuffer_body_file = 0\n",
    );
    let lb = Balancer::start(&streaming);
    let r = post(&c, &lb.url("/echo"), small.clone()).await;
    assert_eq!(r.status, 200, "a 1 KiB body is still buffered and replayed");
    let r = get(&c, &lb.url("/whoami")).await;
    assert_eq!(r.status, 200);
    let r = post(&c, &lb.url("/echo"), vec![9u8; 1 << 20]).await;
    assert_eq!(r.status, 502, "a streamed 1 MiB body is not retried");
}

/// A refused connection reached no backend: retrying it costs nothing, so
/// the budget does not count it. (That the budget caps retries of requests
/// that may have reached a backend is tested in process, against backends
/// that reset every request: `proxy::tests` in the balancer crate.)
#[tokio::test]
async fn refused_connections_are_retried_without_spending_the_budget() {
    let live = Backend::start("live");
    let extra = format!("{NO_EJECTION}[pool.retry]\nbudget_percent = 0\n");
    let lb = Balancer::start(&dead_first(&live, &extra));
    let c = h1();
    // Without ejection the dead backend keeps its turn in the rotation:
    // every other request is refused there first, and far more than the
    // budget's reserve of 10 are retried.
    for _ in 0..40 {
        let r = get(&c, &lb.url("/whoami")).await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "live"));
    }
    lb.proc.wait_count("free retries", 20, |v| {
        v["message"] == "retrying on another backend" && v["budget"] == false
    });
    assert_eq!(
        lb.proc
            .count_messages("retry budget exhausted: not retrying"),
        0
    );
}

#[tokio::test]
async fn websocket_upgrade_to_a_refusing_backend_is_retried() {
    let live = Backend::start("live");
    let lb = Balancer::start(&dead_first(&live, NO_EJECTION));
    for _ in 0..4 {
        let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", lb.addr()))
            .await
            .unwrap();
        assert_eq!(resp.status(), 101);
        ws.send(Message::text("whoami")).await.unwrap();
        let id = ws.next().await.unwrap().unwrap().into_text().unwrap();
        assert_eq!(id.as_str(), "live");
    }
}

/// The crash scenario of issue 13, CI-sized: 4 backends behind the
/// balancer (round robin, checks every 500 ms, rise = fall = 1), 64
/// keep-alive clients sending GETs for 16 s (each bounded in count too),
/// and every 2 s one backend in turn is SIGKILLed and restarted on its
/// port 1 s later. No client may see a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_killed_and_restarted_under_load_cost_no_request() {
    const CLIENTS: usize = 64;
    let ids = ["r1", "r2", "r3", "r4"];
    let mut backends: Vec<Option<Backend>> =
        ids.iter().map(|id| Some(Backend::start(id))).collect();
    let addrs: Vec<String> = backends
        .iter()
        .flatten()
        .map(|b| b.addr.to_string())
        .collect();
    let members: String = ids
        .iter()
        .zip(&addrs)
        .map(|(id, a)| format!("  [[pool.backend]]\n  id = \"{id}\"\n  address = \"{a}\"\n"))
        .collect();
    let lb = Balancer::start_quiet(&format!(
        "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\n[[pool]]\nname = \"game\"\npolicy = \"round_robin\"\n{members}\
         [pool.health]\n  path = \"/healthz\"\n  interval = \"500ms\"\n  timeout = \"300ms\"\n  rise = 1\n  fall = 1\n\n\
         [[route]]\nlistener = \"public\"\npool = \"game\"\n"
    ));
    lb.proc
        .wait_count("backend up", 4, |v| v["message"] == "backend up");

    let start = Instant::now();
    let end = start + Duration::from_secs(16);
    let load = GetLoad::start(&lb.url("/whoami"), CLIENTS, end);

    // The chaos schedule (not synchronisation): kill at 2k s, restart on
    // the same port at 2k + 1 s, while the 2 s after the kill fit in.
    let mut kills = 0;
    for k in 1u32.. {
        if start + Duration::from_secs(u64::from(2 * k + 2)) > end {
            break;
        }
        let victim = (k as usize - 1) % ids.len();
        tokio::time::sleep_until((start + Duration::from_secs(u64::from(2 * k))).into()).await;
        drop(backends[victim].take()); // SIGKILL
        kills += 1;
        tokio::time::sleep_until((start + Duration::from_secs(u64::from(2 * k + 1))).into()).await;
        backends[victim] = Some(Backend::start_on(ids[victim], &addrs[victim]));
    }
    let (p, f) = load.finish().await;
    let exhausted = lb
        .proc
        .count_messages("retry budget exhausted: not retrying");
    eprintln!(
        "reliability: {CLIENTS} connections, {kills} kills: {p} passed, {f} failed, \
         {exhausted} retries refused by the budget"
    );
    assert_eq!(kills, 7);
    assert!(p > 1000, "too few requests to mean anything: {p}");
    assert_eq!(f, 0, "{f} client-visible failures out of {}", p + f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_aborts_its_upload_does_not_eject_the_backend() {
    use tokio::io::AsyncWriteExt;
    let live = Backend::start("live");
    let lb = Balancer::start(&format!(
        "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\n[[pool]]\nname = \"game\"\n\
         [[pool.backend]]\nid = \"live\"\naddress = \"{}\"\n\
         [pool.ejection]\nconsecutive_failures = 1\nmax_percent = 100\n\
         [[route]]\nlistener = \"public\"\npool = \"game\"\n",
        live.addr
    ));
    for i in 0..3 {
        let mut s = tokio::net::TcpStream::connect(lb.addr()).await.unwrap();
        let head = format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\nX-Request-Id: abort-{i}\r\nContent-Length: 1000000\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&[1u8; 100_000]).await.unwrap();
        drop(s); // gone mid-upload
        let id = format!("abort-{i}");
        lb.proc.wait_log("access line of the aborted upload", |v| {
            v["target"] == "access" && v["request_id"] == id.as_str()
        });
    }
    let r = get(&h1(), &lb.url("/whoami")).await;
    assert_eq!(r.status, 200);
    assert!(
        !lb.proc
            .lines()
            .iter()
            .any(|v| v["message"] == "backend ejected"),
        "client aborts were blamed on the backend"
    );
}
