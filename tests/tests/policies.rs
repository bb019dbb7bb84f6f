//! Routing policies through real processes: least connections counting live
//! WebSocket tunnels, and sticky policies that two independent balancers
//! with the same config agree on.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use tests::http::{empty, h1, send};
use tests::{Backend, Balancer};

use tests::ws::{open_tunnel, Ws};

async fn close(mut ws: Ws) {
    ws.close(None).await.unwrap();
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {}
}

fn pool_config(policy: &str, backends: &[&Backend], extra: &str) -> String {
    let mut c = format!(
        "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\n[[pool]]\nname = \"game\"\npolicy = \"{policy}\"\n"
    );
    for b in backends {
        c.push_str(&format!(
            "  [[pool.backend]]\n  id = \"{}\"\n  address = \"{}\"\n",
            b.id, b.addr
        ));
    }
    c.push_str(extra);
    c.push_str("\n[[route]]\nlistener = \"public\"\npool = \"game\"\n");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_sends_new_connections_to_the_idle_backend() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let lb = Balancer::start(&pool_config("least_connections", &[&a, &b], ""));

    // 40 tunnels spread evenly; then every tunnel on b closes: a holds 20, b 0.
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for _ in 0..40 {
        let (ws, id) = open_tunnel(lb.addr()).await;
        if id == "a" {
            on_a.push(ws)
        } else {
            on_b.push(ws)
        }
    }
    assert_eq!(
        (on_a.len(), on_b.len()),
        (20, 20),
        "tunnels should spread evenly"
    );
    for ws in on_b.drain(..) {
        close(ws).await;
    }
    // Closed tunnels are uncounted: the next 20 new connections all go to b.
    lb.proc
        .wait_count("tunnel_closed", 20, |v| v["event"] == "tunnel_closed");
    for i in 0..20 {
        let (ws, id) = open_tunnel(lb.addr()).await;
        assert_eq!(id, "b", "new tunnel {i} went to the busier backend");
        on_b.push(ws);
    }
    // Short requests count while in flight only: with 20 each, a request
    // goes to either, and leaves the counts as they were.
    let r = send(
        &h1(),
        ::http::Request::get(lb.url("/whoami"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    // Now 10 tunnels on a close, and new ones go to a.
    for ws in on_a.drain(..10) {
        close(ws).await;
    }
    lb.proc
        .wait_count("tunnel_closed", 30, |v| v["event"] == "tunnel_closed");
    for _ in 0..5 {
        let (ws, id) = open_tunnel(lb.addr()).await;
        assert_eq!(id, "a");
        on_a.push(ws);
    }
}

/// One listener, three pools picked by Host: cookie, ip_hash and hash.
fn sticky_config(backends: &[Backend]) -> String {
    let members = tests::pool_members(backends);
    format!(
        r#"
trusted_proxies = ["127.0.0.0/8"]

[[listener]]
name = "public"
address = "127.0.0.1:0"

[[pool]]
name = "cookie"
policy = "cookie"
{members}
  [pool.sticky]
  secret = "a-long-shared-secret-for-tests"
  fallback_param = "lb"

[[pool]]
name = "ip"
policy = "ip_hash"
{members}

[[pool]]
name = "room"
policy = "hash"
{members}
  [pool.hash]
  key = "query:room"

[[route]]
listener = "public"
host = "cookie.test"
pool = "cookie"

[[route]]
listener = "public"
host = "ip.test"
pool = "ip"

[[route]]
listener = "public"
host = "room.test"
pool = "room"
"#
    )
}

async fn whoami(
    lb: &Balancer,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (String, Option<String>) {
    let mut req = ::http::Request::get(lb.url(path)).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = send(&h1(), req.body(empty()).unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let cookie = r
        .headers
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string());
    (r.text(), cookie)
}

#[tokio::test]
async fn two_balancers_agree_on_cookie_ip_and_key() {
    let backends: Vec<Backend> = (1..=4)
        .map(|i| Backend::start(&format!("game-{i}")))
        .collect();
    let config = sticky_config(&backends);
    let one = Balancer::start(&config);
    let two = Balancer::start(&config);

    // Cookie: issued by one, honoured by two (and by one again), not re-issued.
    let mut cookie_targets = HashSet::new();
    for _ in 0..8 {
        let (first, set_cookie) = whoami(&one, "cookie.test", "/whoami", &[]).await;
        let set_cookie = set_cookie.expect("first response sets the cookie");
        assert!(
            set_cookie.contains("HttpOnly") && set_cookie.contains("Path=/"),
            "{set_cookie}"
        );
        let pair = set_cookie.split(';').next().unwrap().to_string();
        let token = pair.strip_prefix("lb=").unwrap().to_string();
        for lb in [&two, &one, &two] {
            let (again, reissued) =
                whoami(lb, "cookie.test", "/whoami", &[("cookie", &pair)]).await;
            assert_eq!(again, first);
            assert_eq!(reissued, None, "a valid cookie is not re-issued");
        }
        // The same token as a query parameter, for clients without a jar.
        let (by_param, _) = whoami(&two, "cookie.test", &format!("/whoami?lb={token}"), &[]).await;
        assert_eq!(by_param, first);
        cookie_targets.insert(first);
    }
    assert!(
        cookie_targets.len() > 1,
        "first picks should spread: {cookie_targets:?}"
    );

    // A forged cookie is ignored and replaced, never an error.
    let (_, reissued) = whoami(
        &one,
        "cookie.test",
        "/whoami",
        &[("cookie", "lb=game-1.00112233445566778899aabbccddeeff")],
    )
    .await;
    assert!(reissued.is_some());

    // Client IP from X-Forwarded-For (the peer, 127.0.0.1, is trusted).
    let mut ip_targets = HashMap::new();
    for k in 1..=30 {
        let xff = format!("198.51.100.{k}");
        let (a, _) = whoami(&one, "ip.test", "/whoami", &[("x-forwarded-for", &xff)]).await;
        let (b, _) = whoami(&two, "ip.test", "/whoami", &[("x-forwarded-for", &xff)]).await;
        let (c, _) = whoami(
            &one,
            "ip.test",
            "/whoami",
            &[("x-forwarded-for", &format!("1.1.1.1, {xff}"))],
        )
        .await;
        assert_eq!(a, b, "balancers disagree for {xff}");
        assert_eq!(a, c, "a forged left-most hop must not change the client");
        ip_targets.insert(xff, a);
    }
    let distinct: HashSet<&String> = ip_targets.values().collect();
    assert!(
        distinct.len() >= 3,
        "30 client IPs should use most backends: {distinct:?}"
    );

    // Hash key from the query.
    let mut room_targets = HashSet::new();
    for k in 1..=30 {
        let path = format!("/whoami?room=lobby-{k}");
        let (a, _) = whoami(&one, "room.test", &path, &[]).await;
        let (b, _) = whoami(&two, "room.test", &path, &[]).await;
        assert_eq!(a, b, "balancers disagree for room lobby-{k}");
        room_targets.insert(a);
    }
    assert!(room_targets.len() >= 3, "{room_targets:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_sticky_target_moves_to_the_same_replacement_on_both_balancers() {
    let mut backends: Vec<Option<Backend>> = (1..=4)
        .map(|i| Some(Backend::start(&format!("game-{i}"))))
        .collect();
    let members: String = backends
        .iter()
        .flatten()
        .map(|b| {
            format!(
                "  [[pool.backend]]\n  id = \"{}\"\n  address = \"{}\"\n",
                b.id, b.addr
            )
        })
        .collect();
    let config = format!(
        "[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\n[[pool]]\nname = \"game\"\npolicy = \"cookie\"\n{members}\
         [pool.sticky]\n  secret = \"a-long-shared-secret-for-tests\"\n\
         [pool.health]\n  interval = \"200ms\"\n  timeout = \"200ms\"\n  fall = 2\n\
         \n[[route]]\nlistener = \"public\"\npool = \"game\"\n"
    );
    let one = Balancer::start(&config);
    let two = Balancer::start(&config);
    for lb in [&one, &two] {
        lb.proc
            .wait_count("backend up", 4, |v| v["message"] == "backend up");
    }

    // Ten clients, each pinned by a cookie from balancer one.
    let mut clients = Vec::new();
    for _ in 0..10 {
        let (target, set_cookie) = whoami(&one, "x", "/whoami", &[]).await;
        let pair = set_cookie.unwrap().split(';').next().unwrap().to_string();
        clients.push((target, pair));
    }
    let victim = clients[0].0.clone();
    let index = backends
        .iter()
        .position(|b| b.as_ref().is_some_and(|b| b.id == victim))
        .unwrap();
    backends[index] = None; // SIGKILL the sticky target
    for lb in [&one, &two] {
        let v = victim.clone();
        lb.proc.wait_log("victim down", |l| {
            l["message"] == "backend down" && l["backend"] == v.as_str()
        });
    }

    for (target, pair) in &clients {
        let (a, new_a) = whoami(&one, "x", "/whoami", &[("cookie", pair)]).await;
        let (b, new_b) = whoami(&two, "x", "/whoami", &[("cookie", pair)]).await;
        assert_eq!(a, b, "both balancers must pick the same replacement");
        if *target == victim {
            assert_ne!(a, victim);
            let (new_a, new_b) = (new_a.expect("a new cookie"), new_b.expect("a new cookie"));
            assert_eq!(new_a, new_b, "the same new cookie from both");
            assert!(new_a.starts_with(&format!("lb={a}.")), "{new_a}");
            // The new cookie now pins to the replacement, without re-issue.
            let pair = new_a.split(';').next().unwrap();
            let (c, again) = whoami(&two, "x", "/whoami", &[("cookie", pair)]).await;
            assert_eq!((c.as_str(), again), (a.as_str(), None));
        } else {
            assert_eq!(&a, target, "clients of other backends do not move");
            assert_eq!((new_a, new_b), (None, None));
        }
    }
}
