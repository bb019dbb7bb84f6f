//! The admin listener: status, reload by API and by `balancer reload`, the
//! bearer token, and its hardening: cross-site writes, foreign Host names,
//! the connection cap, the read timeout and protected reads.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use futures_util::{SinkExt, StreamExt};
use tests::http::{empty, get, h1, send};
use tests::{bin, Backend, Balancer};
use tokio_tungstenite::tungstenite::Message;

fn config(backends: &[&Backend], admin: &str) -> String {
    let members = tests::pool_members(backends.iter().copied());
    format!(
        "drain_timeout = \"1m\"\n\n[admin]\n{admin}\n[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\n[[pool]]\nname = \"game\"\n{members}\n[[route]]\nlistener = \"public\"\npool = \"game\"\n"
    )
}

fn balancer_reload(lb: &Balancer) -> (i32, String) {
    let out = Command::new(bin("balancer"))
        .args(["reload", "--config"])
        .arg(lb.config_path())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_reload_through_the_admin_api() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    // The admin port must be known to `balancer reload`, which reads the file:
    // bind a free one first.
    let admin_port = tests::closed_port();
    let admin = format!("address = \"{admin_port}\"\n");
    let lb = Balancer::start(&config(&[&a, &b], &admin));
    assert_eq!(lb.admin_addr(), admin_port);
    let base = format!("http://{admin_port}");

    let r = get(&h1(), &format!("{base}/api/status")).await;
    assert_eq!(r.status, 200);
    let s = r.json();
    assert_eq!(s["generation"], 1);
    let backends = s["pools"][0]["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2);
    assert_eq!(backends[0]["state"], "up");

    // A session on b, which is then removed: b shows as draining while the
    // session is open.
    let mut on_b = None;
    let mut others = Vec::new();
    for _ in 0..2 {
        let (ws, id) = tests::ws::open_tunnel(lb.addr()).await;
        if id.as_str() == "b" {
            on_b = Some(ws)
        } else {
            others.push(ws)
        }
    }
    let ws_b = on_b.expect("one session on b");

    // Write the file without waiting for the watcher, then reload by command:
    // the answer says what changed (the watcher may have been first: then
    // the command's reload finds no changes, and both are fine).
    std::fs::write(lb.config_path(), config(&[&a], &admin)).unwrap();
    let (code, out) = balancer_reload(&lb);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"result\":\"reloaded\""), "{out}");
    let s = get(&h1(), &format!("{base}/api/status")).await.json();
    assert!(s["generation"].as_u64().unwrap() >= 2, "{s}");
    assert_eq!(s["pools"][0]["backends"].as_array().unwrap().len(), 1);
    let draining = s["draining"].as_array().unwrap();
    assert_eq!(draining.len(), 1, "{s}");
    assert_eq!(
        (draining[0]["id"].as_str(), draining[0]["open"].as_u64()),
        (Some("b"), Some(1))
    );

    // Once b's last connection closes, it is no longer listed.
    drop(ws_b);
    lb.proc.wait_log("drained", |v| {
        v["message"] == "backend drained" && v["backend"] == "b"
    });
    let s = get(&h1(), &format!("{base}/api/status")).await.json();
    assert_eq!(s["draining"].as_array().unwrap().len(), 0, "{s}");

    // An invalid file: the command checks it first, refuses it with every
    // error (exit 2, as `balancer check`); the running config does not change.
    let generation = s["generation"].as_u64().unwrap();
    std::fs::write(
        lb.config_path(),
        config(&[&a], &admin).replace("name = \"game\"", "name = \"game\"\npolicy = \"fastest\""),
    )
    .unwrap();
    let (code, out) = balancer_reload(&lb);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("pool[0].policy: unknown policy"), "{out}");
    // Asked directly, the running balancer refuses it too, with the errors.
    let r = send(
        &h1(),
        ::http::Request::post(format!("{base}/api/reload"))
            .header("x-admin-request", "1")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.text());
    let body = r.json();
    assert_eq!(body["result"], "rejected");
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("pool[0].policy: unknown policy"),
        "{body}"
    );
    let s = get(&h1(), &format!("{base}/api/status")).await.json();
    assert_eq!(s["generation"].as_u64().unwrap(), generation);
    // The refusal is counted and its errors are shown.
    assert!(s["reloads"]["failed"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["reloads"]["succeeded"].as_u64().unwrap() >= 1, "{s}");
    assert!(
        s["reloads"]["last_errors"][0]
            .as_str()
            .unwrap()
            .contains("unknown policy"),
        "{s}"
    );
    assert_eq!(get(&h1(), &lb.url("/whoami")).await.text(), "a");
}

#[tokio::test]
async fn mutating_calls_need_the_token() {
    let a = Backend::start("a");
    let admin = "address = \"127.0.0.1:0\"\ntoken = \"a-token-of-16-chars-or-more\"\n";
    let lb = Balancer::start(&config(&[&a], admin));
    let base = format!("http://{}", lb.admin_addr());
    let c = h1();
    for auth in [
        None,
        Some("Bearer wrong-token-of-some-length"),
        Some("a-token-of-16-chars-or-more"),
    ] {
        let mut req =
            ::http::Request::post(format!("{base}/api/reload")).header("x-admin-request", "1");
        if let Some(v) = auth {
            req = req.header("authorization", v);
        }
        let r = send(&c, req.body(empty()).unwrap()).await;
        assert_eq!(r.status, 401, "{auth:?}");
    }
    assert!(
        !lb.proc.lines().iter().any(|v| v["trigger"] == "admin"),
        "no reload may happen"
    );
    let req = ::http::Request::post(format!("{base}/api/reload"))
        .header("x-admin-request", "1")
        .header("authorization", "Bearer a-token-of-16-chars-or-more")
        .body(empty())
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Reading the status needs no token.
    assert_eq!(get(&c, &format!("{base}/api/status")).await.status, 200);
}

#[test]
fn admin_off_loopback_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.toml");
    std::fs::write(&path, "[admin]\naddress = \"0.0.0.0:9900\"\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n").unwrap();
    let out = Command::new(bin("balancer"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "admin.token: required when admin.address (0.0.0.0:9900) is not a loopback address"
    ));
}

/// A state-changing call as operators' tools make it (with the header that
/// tells it from a browser's cross-site form post).
async fn post(url: &str, token: Option<&str>) -> tests::http::Reply {
    tests::http::post_admin(&h1(), url, token).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_new_traffic_away_while_tunnels_stay() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let token = "operator-token-0123456789";
    let admin = format!("address = \"127.0.0.1:0\"\ntoken = \"{token}\"\n");
    let lb = Balancer::start(&config(&[&a, &b], &admin));
    let base = format!("http://{}/api/pools/game/backends", lb.admin_addr());

    // A tunnel to b, opened before the drain.
    let mut ws_b = None;
    let mut others = Vec::new();
    while ws_b.is_none() {
        let (ws, id) = tests::ws::open_tunnel(lb.addr()).await;
        if id.as_str() == "b" {
            ws_b = Some(ws)
        } else {
            others.push(ws)
        }
    }
    let mut ws_b = ws_b.unwrap();

    // Without the token: refused, nothing changes.
    assert_eq!(post(&format!("{base}/b/drain"), None).await.status, 401);
    let r = post(&format!("{base}/b/drain"), Some(token)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "draining");
    assert_eq!(
        post(&format!("{base}/nope/drain"), Some(token))
            .await
            .status,
        404
    );

    // New requests all go to a; b's open tunnel keeps working.
    for _ in 0..10 {
        assert_eq!(get(&h1(), &lb.url("/whoami")).await.text(), "a");
    }
    ws_b.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws_b.next().await.unwrap().unwrap(),
        Message::text("still here")
    );

    // Enable: b takes traffic again.
    assert_eq!(
        post(&format!("{base}/b/enable"), Some(token)).await.status,
        200
    );
    let mut seen_b = false;
    for _ in 0..10 {
        seen_b |= get(&h1(), &lb.url("/whoami")).await.text() == "b";
    }
    assert!(seen_b, "an enabled backend takes traffic");

    // Disable: out of rotation and its tunnels are closed with a Close frame now.
    let r = post(&format!("{base}/b/disable"), Some(token)).await;
    assert_eq!(r.json()["state"], "disabled");
    match tokio::time::timeout(std::time::Duration::from_secs(10), ws_b.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a Close frame, got {other:?}"),
    }
    let status = get(&h1(), &format!("http://{}/api/status", lb.admin_addr()))
        .await
        .json();
    let states: Vec<(String, String)> = status["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap().into(),
                b["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        states.contains(&("b".into(), "disabled".into())),
        "{states:?}"
    );
}

/// The state `/api/status` shows for backend `id` of pool `game`.
async fn state_of(admin: std::net::SocketAddr, id: &str) -> String {
    let s = get(&h1(), &format!("http://{admin}/api/status"))
        .await
        .json();
    s["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id)
        .unwrap()["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_writes_are_refused_and_change_nothing() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let lb = Balancer::start(&config(&[&a, &b], "address = \"127.0.0.1:0\"\n"));
    let admin = lb.admin_addr();
    let drain_b = format!("http://{admin}/api/pools/game/backends/b/drain");
    let c = h1();

    let refused: [(&str, &[(&str, &str)]); 5] = [
        (
            "Origin",
            &[("origin", "http://evil.example"), ("x-admin-request", "1")],
        ),
        (
            "Sec-Fetch-Site",
            &[("sec-fetch-site", "cross-site"), ("x-admin-request", "1")],
        ),
        (
            "X-Admin-Request",
            &[("content-type", "application/x-www-form-urlencoded")],
        ),
        ("X-Admin-Request", &[("content-type", "text/plain")]),
        ("X-Admin-Request", &[]),
    ];
    for (why, headers) in refused {
        for url in [drain_b.clone(), format!("http://{admin}/api/reload")] {
            let mut req = ::http::Request::post(&url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let r = send(&c, req.body(tests::http::full("state=drain")).unwrap()).await;
            assert_eq!(r.status, 403, "{url} {headers:?}: {}", r.text());
            let error = r.json()["error"].as_str().unwrap().to_string();
            assert!(error.contains(why), "{headers:?}: {error}");
        }
    }
    assert_eq!(state_of(admin, "b").await, "up");
    assert!(
        !lb.proc.lines().iter().any(|v| v["trigger"] == "admin"),
        "no reload may happen"
    );
    let whoami: std::collections::HashSet<String> = {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..6 {
            seen.insert(get(&h1(), &lb.url("/whoami")).await.text());
        }
        seen
    };
    assert!(whoami.contains("b"), "b still takes traffic: {whoami:?}");

    // What the status page's fetch sends, same-origin: accepted.
    let r = send(
        &c,
        ::http::Request::post(&drain_b)
            .header("origin", format!("http://{admin}"))
            .header("sec-fetch-site", "same-origin")
            .header("x-admin-request", "1")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        ["draining", "drained"].contains(&state_of(admin, "b").await.as_str()),
        "b is draining"
    );
    // JSON is not something a form can send: accepted without the header.
    let r = send(
        &c,
        ::http::Request::post(format!("http://{admin}/api/pools/game/backends/b/enable"))
            .header("content-type", "application/json")
            .body(tests::http::full("{}"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(state_of(admin, "b").await, "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_listeners_own_host_names_are_answered() {
    let a = Backend::start("a");
    let lb = Balancer::start(&config(
        &[&a],
        "address = \"127.0.0.1:0\"\nhosts = [\"admin.example.test\"]\n",
    ));
    let admin = lb.admin_addr();
    let port = admin.port();
    let c = h1();
    let status = format!("http://{admin}/api/status");
    for host in ["evil.example".to_string(), format!("evil.example:{port}")] {
        let r = tests::http::get_host(&c, &status, &host).await;
        assert_eq!(r.status, 421, "{host}: {}", r.text());
        assert!(
            r.json()["error"].as_str().unwrap().contains("evil.example"),
            "{}",
            r.text()
        );
        // The page and the metrics too: a rebound name reads nothing.
        for path in ["/", "/metrics"] {
            let r = tests::http::get_host(&c, &format!("http://{admin}{path}"), &host).await;
            assert_eq!(r.status, 421, "{path} {host}");
        }
        // And a write with every other marker right is still refused.
        let r = send(
            &c,
            ::http::Request::post(format!("http://{admin}/api/pools/game/backends/a/disable"))
                .header("host", &host)
                .header("x-admin-request", "1")
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 421);
    }
    assert_eq!(state_of(admin, "a").await, "up");
    for host in [
        format!("admin.example.test:{port}"),
        "ADMIN.example.test".to_string(),
        format!("localhost:{port}"),
        admin.to_string(),
    ] {
        let r = tests::http::get_host(&c, &status, &host).await;
        assert_eq!(r.status, 200, "{host}: {}", r.text());
    }
}

/// One request on a fresh connection (closed after it): the status and
/// body, or `None` when the server closed the connection without answering.
async fn fresh(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    // A refused connection may fail the write or the read: both are "no answer".
    s.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.read_to_end(&mut answer),
    )
    .await
    .expect("an answer or a close within 10 s")
    .ok()?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// [`fresh`], retried until a slot is free (a closed connection's slot comes
/// back once the balancer has noticed the close), with a deadline.
async fn fresh_answered(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(answer) = fresh(addr, path).await {
            return answer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no admin slot came back for {path}"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_above_the_cap_are_closed_at_once() {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;
    let a = Backend::start("a");
    // A read timeout far above the test's length: the idle connections
    // stay until the test closes them.
    let lb = Balancer::start(&config(
        &[&a],
        "address = \"127.0.0.1:0\"\nmax_connections = 3\nread_timeout = \"5m\"\n",
    ));
    let admin = lb.admin_addr();
    let limit = std::time::Duration::from_secs(10);

    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(admin).await.unwrap());
    }
    // The fourth is accepted after the three (one queue, one accept loop)
    // and closed at once: EOF or a reset, well within the limit.
    let mut fourth = TcpStream::connect(admin).await.unwrap();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(limit, fourth.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => {}
        other => panic!("the connection above the cap stays open: {other:?}"),
    }
    lb.proc
        .wait_message("admin connections at admin.max_connections: closing new ones");
    // While the three are open, nothing else gets in, reads included.
    assert_eq!(fresh(admin, "/api/status").await, None);

    // One idle connection goes: its slot comes back and a fresh request is
    // answered.
    drop(idle.pop());
    let (code, body) = fresh_answered(admin, "/api/status").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["generation"],
        1
    );

    let (code, metrics) = fresh_answered(admin, "/metrics").await;
    assert_eq!(code, 200);
    let refused =
        tests::http::metric(&metrics, "balancer_admin_connections_refused_total").unwrap();
    assert!(refused >= 2.0, "{refused}");
    // The two idle ones and the scrape itself: the cap holds the count.
    assert_eq!(
        tests::http::metric(&metrics, "balancer_admin_connections"),
        Some(3.0)
    );
    // The proxy was never affected.
    assert_eq!(get(&h1(), &lb.url("/whoami")).await.text(), "a");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_after_the_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let a = Backend::start("a");
    let lb = Balancer::start(&config(
        &[&a],
        "address = \"127.0.0.1:0\"\nread_timeout = \"1s\"\n",
    ));
    let admin = lb.admin_addr();
    let read_timeout = std::time::Duration::from_secs(1);
    let limit = std::time::Duration::from_secs(15);

    // Each connection: what it sends, then it must be closed by the
    // server, not before the read timeout and well before `limit`.
    let complete = format!("GET /api/status HTTP/1.1\r\nHost: {admin}\r\n\r\n");
    for (what, sent) in [
        (
            "a partial request head",
            format!("GET /api/status HTTP/1.1\r\nHost: {admin}\r\n"),
        ),
        ("nothing at all", String::new()),
        ("one request, then idle keep-alive", complete),
    ] {
        let mut s = TcpStream::connect(admin).await.unwrap();
        let started = std::time::Instant::now();
        s.write_all(sent.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(limit, s.read_to_end(&mut got)).await;
        let took = started.elapsed();
        let got = String::from_utf8_lossy(&got);
        assert!(
            matches!(read, Ok(Ok(_)) | Ok(Err(_))),
            "{what}: still open after {limit:?}"
        );
        assert!(
            took >= read_timeout - std::time::Duration::from_millis(100),
            "{what}: closed after {took:?}"
        );
        if what.starts_with("one request") {
            assert!(got.starts_with("HTTP/1.1 200 OK"), "{what}: {got}");
        } else {
            assert!(!got.contains("200 OK"), "{what}: {got}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_reads_need_the_token() {
    let a = Backend::start("a");
    let token = "read-token-0123456789";
    let lb = Balancer::start(&config(
        &[&a],
        &format!("address = \"127.0.0.1:0\"\ntoken = \"{token}\"\nprotect_reads = true\n"),
    ));
    let admin = lb.admin_addr();
    let c = h1();
    for path in ["/api/status", "/metrics"] {
        let url = format!("http://{admin}{path}");
        let r = get(&c, &url).await;
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.headers["www-authenticate"], "Bearer");
        let wrong = ::http::Request::get(&url)
            .header("authorization", "Bearer not-the-token-at-all")
            .body(empty())
            .unwrap();
        assert_eq!(send(&c, wrong).await.status, 401, "{path}");
        let right = ::http::Request::get(&url)
            .header("authorization", format!("Bearer {token}"))
            .body(empty())
            .unwrap();
        let r = send(&c, right).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    // The page itself is static: it loads, and asks for the token.
    let page = get(&c, &format!("http://{admin}/")).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("sessionStorage"));
}

#[test]
fn protect_reads_without_a_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.toml");
    std::fs::write(&path, "[admin]\nprotect_reads = true\nmax_connections = 0\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n").unwrap();
    let out = Command::new(bin("balancer"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("admin.protect_reads: needs admin.token"),
        "{stderr}"
    );
    assert!(
        stderr.contains("admin.max_connections: 0 is out of range"),
        "{stderr}"
    );
}
