//! The admin listener: status, reload by API and by `balancer reload`, and
//! the bearer token.

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
        let mut req = ::http::Request::post(format!("{base}/api/reload"));
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

async fn post(url: &str, token: Option<&str>) -> tests::http::Reply {
    let mut req = ::http::Request::post(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(&h1(), req.body(empty()).unwrap()).await
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
