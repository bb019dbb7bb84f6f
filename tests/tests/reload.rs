//! Hot reload through real processes: config changes under load lose no
//! request and break no WebSocket, invalid files never take effect, removed
//! backends drain with a Close frame, listeners come and go.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tests::http::{get, h1};
use tests::load::GetLoad;
use tests::{Backend, Balancer};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

fn config(backends: &[(&Backend, u32)], extra: &str) -> String {
    let members: String = backends
        .iter()
        .map(|(b, w)| {
            format!(
                "  [[pool.backend]]\n  id = \"{}\"\n  address = \"{}\"\n  weight = {w}\n",
                b.id, b.addr
            )
        })
        .collect();
    format!(
        "{extra}\n[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\n[[pool]]\nname = \"game\"\npolicy = \"least_connections\"\n{members}\n[[route]]\nlistener = \"public\"\npool = \"game\"\n"
    )
}

/// Writes `text` and waits for the reload (or its rejection); returns how
/// long the new config took to be serving.
fn apply(lb: &Balancer, text: &str, outcome: &'static str, seen: &mut usize) -> Duration {
    let start = Instant::now();
    lb.rewrite_config(text);
    *seen += 1;
    lb.proc.wait_count(outcome, *seen, |v| {
        v["message"] == "config reloaded"
            || v["message"] == "config reload failed: keeping the running config"
    });
    let last = lb
        .proc
        .lines()
        .into_iter()
        .rev()
        .find(|v| {
            v["message"] == "config reloaded"
                || v["message"] == "config reload failed: keeping the running config"
        })
        .unwrap();
    assert_eq!(last["message"], outcome, "{last}");
    start.elapsed()
}

/// WebSocket sessions through the balancer, each echoing a message every
/// 200 ms (at most 1,000 each) until [`EchoSessions::finish`]; a session
/// whose echo fails or does not come within 5 s counts as broken.
struct EchoSessions {
    stop: Arc<AtomicBool>,
    echoes: Arc<AtomicUsize>,
    broken: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl EchoSessions {
    async fn open(lb: std::net::SocketAddr, n: usize) -> Self {
        let broken = Arc::new(AtomicUsize::new(0));
        let echoes = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for i in 0..n {
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{lb}/ws"))
                .await
                .unwrap();
            let (broken, echoes, stop) = (broken.clone(), echoes.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 1_000 {
                    n += 1;
                    let msg = format!("s{i}-{n}");
                    let ok = ws.send(Message::text(msg.clone())).await.is_ok()
                        && matches!(
                            tokio::time::timeout(Duration::from_secs(5), ws.next()).await,
                            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == msg
                        );
                    if !ok {
                        broken.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    echoes.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await; // the session's pace
                }
                let _ = ws.close(None).await;
            }));
        }
        Self {
            stop,
            echoes,
            broken,
            tasks,
        }
    }

    /// Stops the sessions; returns `(echoes, broken sessions)`.
    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.echoes.load(Ordering::Relaxed),
            self.broken.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_lose_nothing() {
    let b: Vec<Backend> = (1..=4).map(|i| Backend::start(&format!("b{i}"))).collect();
    let base = config(&[(&b[0], 1), (&b[1], 1), (&b[2], 1)], "");
    let lb = Balancer::start_quiet(&base);

    // 100 WebSocket sessions on b1..b3, echoing every 200 ms.
    let sessions = EchoSessions::open(lb.addr(), 100).await;

    // Keep-alive GET load (bounded: it stops after the reloads, or at 60 s).
    let load = GetLoad::start(
        &lb.url("/whoami"),
        4,
        Instant::now() + Duration::from_secs(60),
    );

    let with_b4 = config(&[(&b[0], 1), (&b[1], 1), (&b[2], 1), (&b[3], 1)], "");
    let reweighted = config(&[(&b[0], 3), (&b[1], 1), (&b[2], 1), (&b[3], 1)], "");
    let invalid = base.replace("policy = \"least_connections\"", "policy = \"fastest\"");
    let mut seen = 0;
    let mut slowest = Duration::ZERO;
    for round in 0..10 {
        for (text, outcome) in [
            (&with_b4, "config reloaded"),
            (&reweighted, "config reloaded"),
            (&base, "config reloaded"),
            (&invalid, "config reload failed: keeping the running config"),
            // Restore the last valid file.
            (&base, "config reloaded"),
        ] {
            let took = apply(&lb, text, outcome, &mut seen);
            slowest = slowest.max(took);
            // The invalid file never takes effect: requests still succeed.
            let r = get(&h1(), &lb.url("/whoami")).await;
            assert_eq!(r.status, 200, "round {round}: {}", r.text());
        }
    }
    let (p, f) = load.finish().await;
    let (e, br) = sessions.finish().await;
    eprintln!("reload: 50 reloads, slowest {slowest:?} from write to serving; HTTP {p} passed, {f} failed; WebSocket {e} echoes, {br} sessions broken");
    assert!(
        slowest < Duration::from_secs(1),
        "a reload took {slowest:?}"
    );
    assert!(p > 500, "too little load to mean anything: {p}");
    assert_eq!(f, 0, "failed HTTP requests");
    assert_eq!(br, 0, "broken WebSocket sessions");
    let reloads = lb.proc.count_messages("config reloaded");
    assert_eq!(reloads, 40);
    let last = lb.proc.last_message("config reloaded").unwrap();
    assert_eq!(last["generation"], 41, "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_backend_tunnels_get_a_close_frame_at_drain_timeout() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let extra = "drain_timeout = \"500ms\"\ndrain_close_code = 1012\n";
    let lb = Balancer::start(&config(&[(&a, 1), (&b, 1)], extra));
    // Two sessions: least connections puts one on each backend.
    let mut on_b = None;
    let mut keep = Vec::new();
    for _ in 0..2 {
        let (ws, id) = tests::ws::open_tunnel(lb.addr()).await;
        if id.as_str() == "b" {
            on_b = Some(ws);
        } else {
            keep.push(ws);
        }
    }
    let mut ws_b = on_b.expect("a session on b");
    let mut seen = 0;
    apply(
        &lb,
        &config(&[(&a, 1)], extra),
        "config reloaded",
        &mut seen,
    );
    // Still open during the drain: b keeps serving its session.
    ws_b.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws_b.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    // Then the Close frame with the configured code.
    match tokio::time::timeout(Duration::from_secs(10), ws_b.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => {
            assert_eq!(frame.code, CloseCode::Restart);
            assert_eq!(frame.reason.as_str(), "service restart");
        }
        other => panic!("expected a Close frame, got {other:?}"),
    }
    lb.proc.wait_log("drain log", |v| {
        v["message"] == "backend drained" && v["backend"] == "b"
    });
    // The session on a, a backend that stayed, is untouched.
    let ws_a = &mut keep[0];
    ws_a.send(Message::text("fine")).await.unwrap();
    assert_eq!(ws_a.next().await.unwrap().unwrap(), Message::text("fine"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_added_and_removed_and_kept_ones_never_rebound() {
    let a = Backend::start("a");
    let base = config(&[(&a, 1)], "");
    let lb = Balancer::start(&base);
    let public = lb.addr();
    // A keep-alive connection on the kept listener survives both reloads.
    let client = h1();
    assert_eq!(get(&client, &lb.url("/whoami")).await.status, 200);

    let with_second = format!(
        "{base}\n[[listener]]\nname = \"second\"\naddress = \"127.0.0.1:0\"\n[[route]]\nlistener = \"second\"\npool = \"game\"\n"
    );
    let mut seen = 0;
    apply(&lb, &with_second, "config reloaded", &mut seen);
    let line = lb.proc.wait_log("second listening", |v| {
        v["message"] == "listening" && v["listener"] == "second"
    });
    let second: std::net::SocketAddr = line["address"].as_str().unwrap().parse().unwrap();
    let r = get(&h1(), &format!("http://{second}/whoami")).await;
    assert_eq!(r.text(), "a");

    apply(&lb, &base, "config reloaded", &mut seen);
    let end = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(second).await.is_ok() {
        assert!(Instant::now() < end, "removed listener still accepts");
        tokio::task::yield_now().await;
    }
    assert_eq!(
        get(&client, &format!("http://{public}/whoami"))
            .await
            .status,
        200
    );
    let binds = lb
        .proc
        .lines()
        .iter()
        .filter(|v| v["message"] == "listening" && v["listener"] == "public")
        .count();
    assert_eq!(binds, 1, "the kept listener was never re-bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_an_invalid_file_changes_nothing() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let lb = Balancer::start(&config(&[(&a, 1)], ""));
    // Write without triggering the watcher's debounce race: the change
    // arrives by file event and SIGHUP alike; both end in one reload.
    std::fs::write(lb.config_path(), "this is = not [toml").unwrap();
    lb.proc.wait_log("rejected", |v| {
        v["message"] == "config reload failed: keeping the running config"
    });
    assert_eq!(get(&h1(), &lb.url("/whoami")).await.text(), "a");

    std::fs::write(lb.config_path(), config(&[(&b, 1)], "")).unwrap();
    lb.proc.signal("HUP");
    lb.proc
        .wait_log("reloaded", |v| v["message"] == "config reloaded");
    assert_eq!(get(&h1(), &lb.url("/whoami")).await.text(), "b");
}

/// Issue 13, bug 2: editing settings that are not a backend's identity
/// (here `timeouts.connect` and `max_idle_per_backend`, in a pool with
/// health checks) keeps every live backend: no tunnel closes, no request
/// fails, and the pool never answers 503 while new backends wait for a
/// first check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_edits_keep_every_backend_with_its_tunnels_and_health() {
    let b: Vec<Backend> = (1..=3).map(|i| Backend::start(&format!("b{i}"))).collect();
    let edit = |connect: &str, max_idle: u32| {
        config(
            &[(&b[0], 1), (&b[1], 1), (&b[2], 1)],
            &format!("[timeouts]\nconnect = \"{connect}\"\n[admin]\naddress = \"127.0.0.1:0\"\n"),
        )
        .replace(
            "policy = \"least_connections\"\n",
            &format!(
                "policy = \"least_connections\"\nmax_idle_per_backend = {max_idle}\n\
                 [pool.health]\npath = \"/healthz\"\ninterval = \"2s\"\n"
            ),
        )
    };
    let lb = Balancer::start_quiet(&edit("3s", 32));
    lb.proc
        .wait_count("backend up", 3, |v| v["message"] == "backend up");
    let status = format!("http://{}/api/status", lb.admin_addr());
    let sessions = EchoSessions::open(lb.addr(), 100).await;
    // Counted before the load starts, so every request of the load adds to it.
    let requests_before: u64 = get(&h1(), &status).await.json()["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["requests"].as_u64().unwrap())
        .sum();
    let load = GetLoad::start(
        &lb.url("/whoami"),
        4,
        Instant::now() + Duration::from_secs(60),
    );

    let mut seen = 0;
    for round in 0..10 {
        let text = if round % 2 == 0 {
            edit("1s", 8)
        } else {
            edit("3s", 32)
        };
        apply(&lb, &text, "config reloaded", &mut seen);
        let last = lb.proc.last_message("config reloaded").unwrap();
        assert_eq!(
            last["changes"], "settings:pool:game,timeouts",
            "round {round}: only settings changed: {last}"
        );
        // Still served at once, by backends that are still up.
        let r = get(&h1(), &lb.url("/whoami")).await;
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
    }
    let (p, f) = load.finish().await;
    let (e, broken) = sessions.finish().await;
    let s = get(&h1(), &status).await.json();
    let backends = s["pools"][0]["backends"].as_array().unwrap().clone();
    let requests_after: u64 = backends
        .iter()
        .map(|b| b["requests"].as_u64().unwrap())
        .sum();
    eprintln!(
        "settings edits: 10 reloads; HTTP {p} passed, {f} failed; WebSocket {e} echoes, \
         {broken} sessions broken; backend request counters {requests_before} -> {requests_after}"
    );
    assert!(p > 100, "too little load to mean anything: {p}");
    assert_eq!(f, 0, "failed requests (a 503 counts)");
    assert_eq!(broken, 0, "tunnels closed by a settings edit");
    assert_eq!(lb.proc.count_messages("backend draining"), 0);
    assert!(backends.iter().all(|b| b["state"] == "up"), "{backends:?}");
    assert!(
        requests_after >= requests_before + p as u64,
        "counters were reset: the backends were replaced"
    );
}
