//! Routing and round robin through real processes.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use tests::http::{get, get_host, h1};
use tests::{single_pool_config, Backend, Balancer};

async fn count_whoami(lb: &Balancer, n: usize) -> HashMap<String, usize> {
    let client = h1();
    let mut counts = HashMap::new();
    for _ in 0..n {
        let r = get(&client, &lb.url("/whoami")).await;
        assert_eq!(r.status, 200);
        *counts.entry(r.text()).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn equal_weights_spread_exactly_evenly() {
    let b: Vec<Backend> = ["a", "b", "c"]
        .iter()
        .map(|id| Backend::start(id))
        .collect();
    let lb = Balancer::start(&single_pool_config(
        &[
            ("a", b[0].addr, 1),
            ("b", b[1].addr, 1),
            ("c", b[2].addr, 1),
        ],
        "",
    ));
    let counts = count_whoami(&lb, 300).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    for id in ["a", "b", "c"] {
        assert_eq!(counts[id], 100, "{counts:?}");
    }
}

#[tokio::test]
async fn weights_three_to_one() {
    let b: Vec<Backend> = ["heavy", "light"]
        .iter()
        .map(|id| Backend::start(id))
        .collect();
    let lb = Balancer::start(&single_pool_config(
        &[("heavy", b[0].addr, 3), ("light", b[1].addr, 1)],
        "",
    ));
    let counts = count_whoami(&lb, 400).await;
    assert_eq!(counts["heavy"], 300, "{counts:?}");
    assert_eq!(counts["light"], 100, "{counts:?}");
}

#[tokio::test]
async fn host_and_path_prefix_pick_the_pool_and_no_match_is_404() {
    let web = Backend::start("web");
    let api = Backend::start("api");
    let config = format!(
        r#"
[[listener]]
name = "public"
address = "127.0.0.1:0"

[[pool]]
name = "web"
  [[pool.backend]]
  id = "web"
  address = "{web}"

[[pool]]
name = "api"
  [[pool.backend]]
  id = "api"
  address = "{api}"

[[route]]
listener = "public"
host = "*.example.com"
pool = "web"

[[route]]
listener = "public"
path_prefix = "/who"
pool = "api"

[[route]]
listener = "public"
host = "play.example.com"
path_prefix = "/whoami"
pool = "api"
"#,
        web = web.addr,
        api = api.addr
    );
    let lb = Balancer::start(&config);
    let c = h1();
    let url = lb.url("/whoami");
    // A matching wildcard host beats a route without host.
    assert_eq!(get_host(&c, &url, "www.example.com").await.text(), "web");
    assert_eq!(
        get_host(&c, &url, "WWW.Example.COM:8080").await.text(),
        "web"
    );
    // An exact host beats the wildcard.
    assert_eq!(get_host(&c, &url, "play.example.com").await.text(), "api");
    // No host route matches: the path prefix route does.
    assert_eq!(get_host(&c, &url, "other.org").await.text(), "api");
    // Neither host nor prefix matches: the balancer answers 404 itself.
    let r = get_host(&c, &lb.url("/healthz"), "other.org").await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no route"), "{}", r.text());
    assert!(r.headers.contains_key("x-request-id"));
}
