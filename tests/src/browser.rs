//! A real headless Chromium (Debian's `chromium`), driven over the DevTools
//! protocol: open pages, evaluate JavaScript, wait for a condition.
//!
//! `scripts/test.sh` installs chromium. A missing browser fails the test with the
//! install command, unless `BROWSER_TESTS=skip` says to skip browser tests
//! on purpose (then the test prints SKIPPED and returns).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::http::{empty, h1, send};
use crate::ws::Ws;
use crate::DEADLINE;

/// A running headless Chromium; killed on drop.
#[derive(Debug)]
pub struct Browser {
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

impl Browser {
    /// Starts Chromium; `None` only when it is missing and
    /// `BROWSER_TESTS=skip` is set.
    pub fn start() -> Option<Self> {
        Self::start_with_flags(&[])
    }

    /// Like [`Browser::start`], with `extra` Chromium flags after the usual
    /// ones (e.g. `--ignore-certificate-errors-spki-list=HASH` to trust a
    /// test certificate, `--host-resolver-rules=MAP game.test 127.0.0.1`).
    pub fn start_with_flags(extra: &[&str]) -> Option<Self> {
        let Some(bin) = chromium() else {
            if std::env::var("BROWSER_TESTS").is_ok_and(|v| v == "skip") {
                eprintln!("SKIPPED: chromium is not installed and BROWSER_TESTS=skip");
                return None;
            }
            panic!(
                "chromium is not installed: run ./scripts/test.sh or apt-get install chromium \
                 (or set BROWSER_TESTS=skip to skip browser tests)"
            );
        };
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
            .args(extra)
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
        Some(Self {
            child,
            port,
            _profile: profile,
        })
    }

    /// Opens `url` in a new tab.
    pub async fn open(&self, url: &str) -> Page {
        let req = ::http::Request::put(format!("http://127.0.0.1:{}/json/new?{url}", self.port))
            .body(empty())
            .unwrap();
        let target = send(&h1(), req).await.json();
        let ws_url = target["webSocketDebuggerUrl"].as_str().unwrap().to_string();
        Page {
            ws: tokio_tungstenite::connect_async(ws_url).await.unwrap().0,
            id: 0,
        }
    }
}

/// One tab.
#[derive(Debug)]
pub struct Page {
    ws: Ws,
    id: u64,
}

impl Page {
    /// One DevTools command; returns its `result`.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.id += 1;
        let id = self.id;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let reply = tokio::time::timeout(DEADLINE, self.ws.next())
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

    /// Evaluates `expr` (awaiting it if it is a promise); returns its value.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Waits until `expr` evaluates to a value `pred` accepts; returns it.
    pub async fn wait_for(&mut self, expr: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + DEADLINE;
        loop {
            let v = self.eval(expr).await;
            if pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < end,
                "{expr} never became what the test wants (last {v})"
            );
            // The page updates on its own schedule; look again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a PNG screenshot of the page.
    pub async fn screenshot(&mut self, path: &str) {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}

/// Logs a page of the game's browser client in as `name` and waits until
/// it is connected and in the lobby: `(its player id, its process id)`.
pub async fn play(page: &mut Page, name: &str) -> (String, String) {
    // The page may still be loading: wait for its script first.
    page.wait_for("typeof window.game", |v| v == "object").await;
    let ok = page.eval(&format!("game.login({name:?})")).await;
    assert_eq!(ok, true, "login from the page");
    let me = page
        .wait_for(
            "game.state.connected && game.state.room === 'lobby' && game.state.player",
            Value::is_string,
        )
        .await;
    let process = page.eval("game.state.process").await;
    (
        me.as_str().unwrap().to_string(),
        process.as_str().unwrap().to_string(),
    )
}

/// A page expression: `"x,y"` of `player` on that page, or null.
pub fn pos_expr(player: &str) -> String {
    format!("(p => p ? p.x + ',' + p.y : null)(game.state.players[{player:?}])")
}
