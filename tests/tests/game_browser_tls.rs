//! The browser client over TLS in a real headless Chromium: the page is
//! loaded from `https://game.test:PORT/` (the balancer terminates TLS with
//! a certificate made here), its game socket is `wss://`, and two pages on
//! two backend processes see each other's moves and chat; a page whose
//! process drains gets 1012 through TLS and resumes over wss by itself.
//!
//! Chromium trusts nothing but the test leaf, by its key
//! (`--ignore-certificate-errors-spki-list`), and resolves `game.test` to
//! 127.0.0.1 (`--host-resolver-rules`): any other certificate, or a
//! plaintext answer, would leave the page on an error page.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use tests::browser::{Browser, Page};
use tests::game::{Cluster, FAST};
use tests::tls::{certificate_toml, TestCa};
use tests::{pool_members, Backend, Balancer, Redis, DEADLINE};

const HOST: &str = "game.test";

/// Redis, two game backends (presence 5 s, as in game_browser.rs: resuming
/// after a drain may outlast FAST's TTL) and a balancer whose `public`
/// listener serves TLS with `cert`/`key`, round robin, health on `/readyz`.
fn tls_cluster(cert: &std::path::Path, key: &std::path::Path) -> Cluster {
    let redis = Redis::start();
    let url = redis.url();
    let flags: Vec<&str> = FAST
        .chunks(2)
        .filter(|pair| pair[0] != "--presence-ttl-ms")
        .flatten()
        .copied()
        .chain(["--presence-ttl-ms", "5000"])
        .collect();
    let backends: Vec<Backend> = (1..=2)
        .map(|i| Backend::start_game(&format!("game-{i}"), &url, &flags))
        .collect();
    let config = format!(
        "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n{}\n\
         [[pool]]\nname = \"game\"\n{}\
         \x20 [pool.health]\n  path = \"/readyz\"\n  interval = \"100ms\"\n  rise = 1\n  fall = 1\n\n\
         [[route]]\nlistener = \"public\"\npath_prefix = \"/\"\npool = \"game\"\n\n\
         [timeouts]\nwebsocket_idle = \"none\"\n",
        certificate_toml(cert, key),
        pool_members(&backends),
    );
    let lb = Balancer::start(&config);
    let c = Cluster {
        redis,
        backends,
        lb,
    };
    for b in &c.backends {
        c.wait_ready(b);
    }
    c.lb.proc
        .wait_count("every backend up", 2, |v| v["message"] == "backend up");
    c
}

/// Waits until the page is the game, loaded over https from `origin`.
async fn loaded(page: &mut Page, origin: &str) {
    // An untrusted certificate leaves the tab on chrome-error://; the
    // expression shows where the tab is if the deadline passes.
    page.wait_for("location.href + ' ' + typeof window.game", |v| {
        v == format!("{origin}/ object").as_str()
    })
    .await;
    assert_eq!(page.eval("location.protocol").await, "https:");
    assert_eq!(page.eval("window.isSecureContext").await, true);
}

/// Logs a page in and waits until it is connected and in the lobby;
/// returns its player id and process, and checks that its socket is wss.
async fn play(page: &mut Page, name: &str, origin: &str) -> (String, String) {
    let played = tests::browser::play(page, name).await;
    assert_socket_is_wss(page, origin).await;
    played
}

/// The page's current game socket (the classic script's global `ws`) is
/// open and was opened on `wss://HOST:PORT/play`.
async fn assert_socket_is_wss(page: &mut Page, origin: &str) {
    let want = format!("{}/play", origin.replacen("https://", "wss://", 1));
    let got = page
        .eval("ws && ws.readyState === WebSocket.OPEN ? ws.url : String(ws && ws.readyState)")
        .await;
    assert_eq!(got, want.as_str(), "the game socket");
}

fn pos_expr(player: &str) -> String {
    format!("(p => p ? p.x + ',' + p.y : null)(game.state.players[{player:?}])")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_over_https_and_wss_on_different_processes_see_each_others_moves() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let issued = ca.issue(&[HOST]);
    let (cert, key) = issued.write(dir.path(), "game");
    let Some(browser) = Browser::start_with_flags(&[
        &format!(
            "--ignore-certificate-errors-spki-list={}",
            issued.spki_sha256
        ),
        &format!("--host-resolver-rules=MAP {HOST} 127.0.0.1"),
    ]) else {
        return;
    };
    let mut c = tls_cluster(&cert, &key);
    let origin = format!("https://{HOST}:{}", c.addr().port());
    let url = format!("{origin}/");

    let mut a = browser.open(&url).await;
    loaded(&mut a, &origin).await;
    let (a_id, a_proc) = play(&mut a, "Ada", &origin).await;
    let mut b = browser.open(&url).await;
    loaded(&mut b, &origin).await;
    let (b_id, mut b_proc) = play(&mut b, "Bob", &origin).await;
    // Round robin spreads connections; reconnect b until it is elsewhere.
    for _ in 0..10 {
        if b_proc != a_proc {
            break;
        }
        b.eval("game.reconnect(); true").await;
        let v = b
            .wait_for(
                &format!("game.state.connected && game.state.reconnects > 0 && game.state.process !== {a_proc:?} ? game.state.process : (game.state.connected && game.state.process === {a_proc:?} ? 'same' : null)"),
                Value::is_string,
            )
            .await;
        b_proc = if v == "same" {
            a_proc.clone()
        } else {
            v.as_str().unwrap().to_string()
        };
    }
    assert_ne!(a_proc, b_proc, "the pages are on different processes");
    assert_socket_is_wss(&mut b, &origin).await;

    // Each sees the other in the lobby.
    b.wait_for(&pos_expr(&a_id), Value::is_string).await;
    a.wait_for(&pos_expr(&b_id), Value::is_string).await;
    let start = a.wait_for(&pos_expr(&a_id), Value::is_string).await;
    let (x, y) = start.as_str().unwrap().split_once(',').unwrap();
    let (x, y): (u32, u32) = (x.parse().unwrap(), y.parse().unwrap());
    let (key, code, want) = if x < 15 {
        ("ArrowRight", 39, format!("{},{y}", x + 1))
    } else {
        ("ArrowLeft", 37, format!("{},{y}", x - 1))
    };

    // A real key press on a, seen on b (another process, through Redis).
    for kind in ["keyDown", "keyUp"] {
        a.call(
            "Input.dispatchKeyEvent",
            serde_json::json!({"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code}),
        )
        .await;
    }
    b.wait_for(&pos_expr(&a_id), |v| v == want.as_str()).await;
    // And the other way round, with a chat line.
    b.eval("game.chat('hi over wss'); true").await;
    a.wait_for(
        "document.getElementById('log').textContent.includes('Bob: hi over wss')",
        |v| v == true,
    )
    .await;

    // Drain a's process: the 1012 Close frame comes through TLS, the page
    // reconnects over wss to the other process, back where it stood.
    let idx = c.backends.iter().position(|x| x.id == a_proc).unwrap();
    c.backends[idx].proc.signal("TERM");
    let close = a
        .wait_for("game.state.closes[0] || null", Value::is_number)
        .await;
    assert_eq!(close, 1012);
    let resumed = a
        .wait_for(
            &format!("game.state.connected && game.state.process !== {a_proc:?} && game.state.room === 'lobby' ? game.state.process : null"),
            Value::is_string,
        )
        .await;
    assert_eq!(resumed, b_proc.as_str(), "a resumed on the other process");
    assert_socket_is_wss(&mut a, &origin).await;
    a.wait_for(&pos_expr(&a_id), |v| v == want.as_str()).await;
    b.wait_for(&pos_expr(&a_id), |v| v == want.as_str()).await;
    c.backends[idx].proc.wait_exit(DEADLINE);
}
