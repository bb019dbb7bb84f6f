//! The status page in a real headless Chromium (Debian's `chromium`),
//! driven over the DevTools protocol: the page loads, shows the backends and
//! their states, and a drain click changes the backend's state.
//!
//! CI installs chromium; where it is absent this test says so and returns.
//! With `BALANCER_SCREENSHOT=path.png` it also saves a screenshot.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tests::http::{empty, get, h1, send};
use tests::{Backend, Balancer, DEADLINE};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Browser {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn start_browser(bin: &str) -> Browser {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1200,700",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("DevTools listening on ws://127.0.0.1:").nth(1) {
                let port: u16 = rest.split('/').next().unwrap().parse().unwrap();
                let _ = tx.send(port);
            }
        }
    });
    let port = rx
        .recv_timeout(DEADLINE)
        .expect("chromium did not start its DevTools endpoint");
    Browser {
        child,
        port,
        _profile: profile,
    }
}

/// Opens `url` in a new tab and connects to it.
async fn open(browser: &Browser, url: &str) -> Ws {
    let req = ::http::Request::put(format!("http://127.0.0.1:{}/json/new?{url}", browser.port))
        .body(empty())
        .unwrap();
    let target = send(&h1(), req).await.json();
    let ws_url = target["webSocketDebuggerUrl"].as_str().unwrap().to_string();
    tokio_tungstenite::connect_async(ws_url).await.unwrap().0
}

/// One DevTools command; returns its `result`.
async fn call(ws: &mut Ws, id: u64, method: &str, params: Value) -> Value {
    let msg = json!({"id": id, "method": method, "params": params});
    ws.send(Message::text(msg.to_string())).await.unwrap();
    loop {
        let reply = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
        if v["id"] == id {
            return v["result"].clone();
        }
    }
}

async fn eval(ws: &mut Ws, id: u64, expr: &str) -> Value {
    let r = call(
        ws,
        id,
        "Runtime.evaluate",
        json!({"expression": expr, "returnByValue": true}),
    )
    .await;
    r["result"]["value"].clone()
}

/// Waits until `expr` evaluates to one of `want`.
async fn wait_for(ws: &mut Ws, next_id: &mut u64, expr: &str, want: &[&str]) -> String {
    let end = Instant::now() + DEADLINE;
    loop {
        *next_id += 1;
        let v = eval(ws, *next_id, expr).await;
        if let Some(s) = v.as_str() {
            if want.contains(&s) {
                return s.to_string();
            }
        }
        assert!(
            Instant::now() < end,
            "{expr} never became one of {want:?} (last {v})"
        );
        // The page refreshes every 2 s; look again shortly.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_backends_and_drains_one() {
    let Some(bin) = chromium() else {
        eprintln!(
            "SKIPPED: chromium is not installed (apt-get install chromium); .ci/run installs it"
        );
        return;
    };
    let a = Backend::start("a");
    let b = Backend::start("b");
    let lb = Balancer::start(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\n[[pool]]\nname = \"game\"\n\
         [[pool.backend]]\nid = \"a\"\naddress = \"{}\"\n[[pool.backend]]\nid = \"b\"\naddress = \"{}\"\n\
         [[route]]\nlistener = \"public\"\npool = \"game\"\n",
        a.addr, b.addr
    ));
    for _ in 0..20 {
        assert_eq!(get(&h1(), &lb.url("/whoami")).await.status, 200);
    }
    let admin = lb.admin_addr();
    let browser = start_browser(bin);
    let mut page = open(&browser, &format!("http://{admin}/")).await;
    let mut id = 0;
    let state = |b: &str| {
        format!("(document.getElementById('state-game-{b}') || {{}}).textContent || null")
    };
    wait_for(&mut page, &mut id, &state("a"), &["up"]).await;
    wait_for(&mut page, &mut id, &state("b"), &["up"]).await;
    id += 1;
    let title = eval(&mut page, id, "document.title").await;
    assert_eq!(title, "balancer status");

    if let Ok(path) = std::env::var("BALANCER_SCREENSHOT") {
        id += 1;
        let shot = call(
            &mut page,
            id,
            "Page.captureScreenshot",
            json!({"format": "png"}),
        )
        .await;
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(&path, png).unwrap();
    }

    // Click "drain" on b: the page shows it draining (or drained: it has no
    // open connections), and the API agrees.
    id += 1;
    eval(
        &mut page,
        id,
        "document.getElementById('drain-game-b').click(); true",
    )
    .await;
    let shown = wait_for(&mut page, &mut id, &state("b"), &["draining", "drained"]).await;
    let status = get(&h1(), &format!("http://{admin}/api/status"))
        .await
        .json();
    let api_state = status["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "b")
        .unwrap()["state"]
        .clone();
    assert_eq!(api_state, shown.as_str());
    for _ in 0..6 {
        assert_eq!(get(&h1(), &lb.url("/whoami")).await.text(), "a");
    }
}
