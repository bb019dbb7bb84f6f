//! The status page in a real headless Chromium (Debian's `chromium`),
//! driven over the DevTools protocol: the page loads, shows the backends and
//! their states, a drain click changes the backend's state, and a
//! supervised instance shows its process state, pid and memory.
//!
//! `scripts/test.sh` installs chromium; where it is absent the test fails with the install
//! command (or, with `BROWSER_TESTS=skip`, says SKIPPED and returns).
//! With `BALANCER_SCREENSHOT=path.png` it also saves a screenshot.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tests::browser::Browser;
use tests::http::{get, h1};
use tests::{bin, closed_port, Backend, Balancer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_backends_and_drains_one() {
    let Some(browser) = Browser::start() else {
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
    let mut page = browser.open(&format!("http://{admin}/")).await;
    let state = |b: &str| {
        format!("(document.getElementById('state-game-{b}') || {{}}).textContent || null")
    };
    page.wait_for(&state("a"), |v| v == "up").await;
    page.wait_for(&state("b"), |v| v == "up").await;
    let title = page.eval("document.title").await;
    assert_eq!(title, "balancer status");

    if let Ok(path) = std::env::var("BALANCER_SCREENSHOT") {
        page.screenshot(&path).await;
    }

    // Click "drain" on b: the page shows it draining (or drained: it has no
    // open connections), and the API agrees.
    page.eval("document.getElementById('drain-game-b').click(); true")
        .await;
    let shown = page
        .wait_for(&state("b"), |v| v == "draining" || v == "drained")
        .await;
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
    assert_eq!(api_state, shown);
    for _ in 0..6 {
        assert_eq!(get(&h1(), &lb.url("/whoami")).await.text(), "a");
    }
}

/// With `admin.protect_reads`, the page (static, no data in it) loads,
/// says it needs the token, and once it is typed in shows the backends and
/// its buttons work: the token goes as a Bearer header, with
/// `X-Admin-Request` on the POSTs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_asks_for_the_token_when_reads_are_protected() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let a = Backend::start("a");
    let b = Backend::start("b");
    let token = "page-token-0123456789";
    let lb = Balancer::start(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{token}\"\nprotect_reads = true\n\n[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\n[[pool]]\nname = \"game\"\n\
         [[pool.backend]]\nid = \"a\"\naddress = \"{}\"\n[[pool.backend]]\nid = \"b\"\naddress = \"{}\"\n\
         [[route]]\nlistener = \"public\"\npool = \"game\"\n",
        a.addr, b.addr
    ));
    let admin = lb.admin_addr();
    let mut page = browser.open(&format!("http://{admin}/")).await;
    page.wait_for("document.getElementById('read-error').textContent", |v| {
        v.as_str().is_some_and(|t| t.contains("admin token"))
    })
    .await;
    let state_b = "(document.getElementById('state-game-b') || {}).textContent || null";
    assert_eq!(page.eval(state_b).await, serde_json::Value::Null);

    page.eval(&format!(
        "const t = document.getElementById('token'); t.value = '{token}'; t.dispatchEvent(new Event('input')); true"
    ))
    .await;
    page.wait_for(state_b, |v| v == "up").await;
    assert_eq!(
        page.eval("sessionStorage.getItem('balancer-admin-token')")
            .await,
        token
    );
    page.eval("document.getElementById('drain-game-b').click(); true")
        .await;
    page.wait_for(state_b, |v| v == "draining" || v == "drained")
        .await;
    let status = tests::http::send(
        &h1(),
        ::http::Request::get(format!("http://{admin}/api/status"))
            .header("authorization", format!("Bearer {token}"))
            .body(tests::http::empty())
            .unwrap(),
    )
    .await
    .json();
    let api_state = &status["pools"][0]["backends"][1];
    assert_eq!(api_state["id"], "b");
    assert!(
        api_state["state"] == "draining" || api_state["state"] == "drained",
        "{api_state}"
    );
}

/// A supervised pool: the page shows the instance's process columns with
/// what `/api/status` says (state, pid, resident memory), and its rolling
/// restart button replaces the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_a_supervised_instance() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let backend = bin("backend").display().to_string();
    let lb = Balancer::start(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\n[[pool]]\nname = \"game\"\n\
         [pool.processes]\ncommand = [{backend:?}, \"--listen\", \"127.0.0.1:{{port}}\", \"--id\", \"{{id}}\"]\nbase_port = {}\n\
         [pool.health]\npath = \"/healthz\"\ninterval = \"100ms\"\nrise = 1\n\
         [[route]]\nlistener = \"public\"\npool = \"game\"\n",
        closed_port().port()
    ));
    let admin = lb.admin_addr();
    let mut page = browser.open(&format!("http://{admin}/")).await;
    let text = |id: &str| format!("(document.getElementById('{id}') || {{}}).textContent || null");
    page.wait_for(&text("process-game-game-1"), |v| v == "ready")
        .await;
    let status = get(&h1(), &format!("http://{admin}/api/status"))
        .await
        .json();
    let process = &status["pools"][0]["backends"][0]["process"];
    assert_eq!(process["state"], "ready", "{process}");
    assert_eq!(
        page.eval(&text("pid-game-game-1")).await,
        process["pid"].to_string()
    );
    assert_eq!(page.eval(&text("restarts-game-game-1")).await, "0");
    let rss = page.eval(&text("rss-game-game-1")).await;
    let mib: f64 = rss
        .as_str()
        .and_then(|t| t.strip_suffix(" MiB"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("RSS cell {rss}"));
    assert!(mib > 1.0, "{rss}");

    // Its rolling restart button: a new process, counted as a restart.
    let old_pid = process["pid"].to_string();
    page.eval("document.getElementById('restart-game').click(), 1")
        .await;
    page.wait_for(&text("restarts-game-game-1"), |v| v == "1")
        .await;
    page.wait_for(&text("process-game-game-1"), |v| v == "ready")
        .await;
    assert_ne!(page.eval(&text("pid-game-game-1")).await, old_pid);
    let error = page.eval(&text("error")).await;
    assert!(error.is_null() || error == "", "{error}");
}
