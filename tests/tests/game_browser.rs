//! The browser client in a real headless Chromium: two pages, through the
//! balancer, on different backend processes, see each other's moves; and a
//! page whose process drains reconnects and resumes by itself.
//!
//! With `GAME_SCREENSHOT=path.png` it also saves a screenshot of a page.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use tests::browser::{play, pos_expr, Browser};
use tests::game::Cluster;
use tests::DEADLINE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_on_different_processes_see_each_others_moves() {
    let Some(browser) = Browser::start() else {
        return;
    };
    // The page comes back after a drain within the drain spread (1 s) plus
    // its reconnect backoff, which can outlast FAST's 1.5 s presence TTL:
    // the player would then be cleaned up and respawn. This test is about
    // resuming, not expiry (tests/game.rs covers that), so presence lasts 5 s.
    let redis = tests::Redis::start();
    let url = redis.url();
    let mut c = Cluster::start_with(redis, &url, 3, &["--presence-ttl-ms", "5000"]);
    let url = format!("http://{}/", c.addr());
    let mut a = browser.open(&url).await;
    let (a_id, a_proc) = play(&mut a, "Ada").await;
    let mut b = browser.open(&url).await;
    let (b_id, mut b_proc) = play(&mut b, "Bob").await;
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

    // Each sees the other in the lobby.
    b.wait_for(&pos_expr(&a_id), Value::is_string).await;
    let start = a.wait_for(&pos_expr(&a_id), Value::is_string).await;
    let (x, y) = start.as_str().unwrap().split_once(',').unwrap();
    let (x, y): (u32, u32) = (x.parse().unwrap(), y.parse().unwrap());
    let (dir, want) = if x < 15 {
        ("right", format!("{},{y}", x + 1))
    } else {
        ("left", format!("{},{y}", x - 1))
    };

    // A real key press on a, seen on b (another process, through Redis).
    let key = if dir == "right" {
        "ArrowRight"
    } else {
        "ArrowLeft"
    };
    for kind in ["keyDown", "keyUp"] {
        a.call(
            "Input.dispatchKeyEvent",
            serde_json::json!({"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": if dir == "right" { 39 } else { 37 }}),
        )
        .await;
    }
    b.wait_for(&pos_expr(&a_id), |v| v == want.as_str()).await;
    // And the other way round, with a chat line.
    b.eval("game.chat('hi from the other process'); true").await;
    a.wait_for(
        "document.getElementById('log').textContent.includes('Bob: hi from the other process')",
        |v| v == true,
    )
    .await;
    a.wait_for(&pos_expr(&b_id), Value::is_string).await;

    if let Ok(path) = std::env::var("GAME_SCREENSHOT") {
        a.screenshot(&path).await;
    }

    // Drain a's process: the page gets 1012, reconnects through the
    // balancer to another process, and is back in the lobby where it stood.
    let idx = c.backends.iter().position(|x| x.id == a_proc).unwrap();
    c.backends[idx].proc.signal("TERM");
    let code = a
        .wait_for("game.state.closes[0] || null", Value::is_number)
        .await;
    assert_eq!(code, 1012);
    let resumed = a
        .wait_for(
            &format!("game.state.connected && game.state.process !== {a_proc:?} && game.state.room === 'lobby' ? game.state.process : null"),
            Value::is_string,
        )
        .await;
    assert_ne!(resumed, a_proc.as_str());
    a.wait_for(&pos_expr(&a_id), |v| v == want.as_str()).await;
    c.backends[idx].proc.wait_exit(DEADLINE);
}
