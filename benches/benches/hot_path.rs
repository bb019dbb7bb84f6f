//! Criterion micro benchmarks of the balancer's hot pure functions: the work
//! done for every request before any byte goes upstream (route lookup, host
//! normalization, backend pick, header rewriting), plus config parse+validate,
//! which runs at start-up and on every reload.
//!
//! Measurement is kept short (2 s per benchmark) so the whole run stays under
//! a couple of minutes; pass criterion flags after `--` for longer runs.

// Fixture set-up below fails only if the fixtures themselves are wrong, and a
// benchmark has no better way to report that than to stop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use balancer::proxy::headers::{add_forwarded, ensure_request_id, strip_hop_by_hop, Forwarding};
use balancer::runtime::{normalize_host, Pool, RouteTable};
use balancer::select::{
    BackendSelection, SelectionContext, SmoothWeightedRoundRobin, StaticMembers,
};
use config::HostMatch;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// 50 backends with weights 1, 2, 3, 5, 8 repeated: a period of 190 picks
/// that interleaves heavy and light members.
fn mixed_weights() -> Vec<u32> {
    [1, 2, 3, 5, 8].iter().copied().cycle().take(50).collect()
}

// === selection ===

fn smooth_weighted_round_robin(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let uri = http::Uri::from_static("/play");
    let ctx = SelectionContext {
        client_ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
        headers: &headers,
        uri: &uri,
    };
    let cases = [("3_equal", vec![1, 1, 1]), ("50_mixed", mixed_weights())];

    let mut group = c.benchmark_group("swrr_pick");
    for (name, weights) in &cases {
        let rr = SmoothWeightedRoundRobin::new(weights);
        let members = StaticMembers::new(weights.len());
        group.bench_function(*name, |b| {
            b.iter(|| rr.select(black_box(&ctx), &members));
        });
    }
    group.finish();

    // `round_robin::schedule` is not public, so the schedule build is measured
    // through the constructor (schedule + boxing it + the atomic).
    let mut group = c.benchmark_group("swrr_new");
    for (name, weights) in &cases {
        group.bench_function(*name, |b| {
            b.iter(|| SmoothWeightedRoundRobin::new(black_box(weights)));
        });
    }
    group.finish();
}

/// One pick of every policy with 4, 64 and 1024 backends (mixed weights,
/// uneven loads), with the request carrying what each policy reads: a client
/// IP, a `room` query parameter and a valid sticky cookie.
fn policy_picks(c: &mut Criterion) {
    for n in [4usize, 64, 1024] {
        let weights: Vec<u32> = [1, 2, 3, 5, 8].iter().copied().cycle().take(n).collect();
        let ids: Vec<String> = (0..n).map(|i| format!("game-{i}")).collect();
        let pool = config::PoolConfig {
            name: "game".into(),
            policy: config::Policy::RoundRobin,
            max_idle_per_backend: 0,
            backends: ids
                .iter()
                .zip(&weights)
                .enumerate()
                .map(|(i, (id, &weight))| config::BackendConfig {
                    id: id.clone(),
                    address: std::net::SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                    weight,
                })
                .collect(),
            sticky: None,
            hash_key: None,
            health: None,
            tls: None,
            buffer_body: config::DEFAULT_BUFFER_BODY,
            buffer_body_file: config::DEFAULT_BUFFER_BODY_FILE,
            buffer_response: config::DEFAULT_BUFFER_RESPONSE,
            buffer_response_file: config::DEFAULT_BUFFER_RESPONSE_FILE,
            capacity: None,
            retry: config::RetryConfig::default(),
            slow_start: Duration::ZERO,
            ejection: config::EjectionConfig::default(),
            send_proxy_protocol: None,
        };
        let sticky = config::StickyConfig {
            cookie: "lb".into(),
            secret: "benchmark-secret-0123456789".into(),
            fallback_param: None,
            path: "/".into(),
            http_only: true,
            secure: false,
            same_site: config::SameSite::Lax,
            max_age: None,
        };
        let policies: Vec<(&str, config::PoolConfig)> = vec![
            ("round_robin", pool.clone()),
            (
                "least_connections",
                config::PoolConfig {
                    policy: config::Policy::LeastConnections,
                    ..pool.clone()
                },
            ),
            (
                "ip_hash",
                config::PoolConfig {
                    policy: config::Policy::IpHash,
                    ..pool.clone()
                },
            ),
            (
                "hash_query",
                config::PoolConfig {
                    policy: config::Policy::Hash,
                    hash_key: Some(config::HashKey::Query("room".into())),
                    ..pool.clone()
                },
            ),
            (
                "cookie",
                config::PoolConfig {
                    policy: config::Policy::Cookie,
                    sticky: Some(sticky.clone()),
                    ..pool.clone()
                },
            ),
        ];
        let token = balancer::select::cookie::token(sticky.secret.as_bytes(), "game", &ids[n / 2]);
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            HeaderValue::from_str(&format!("io=abc; lb={token}")).unwrap(),
        );
        let uri: http::Uri = "/socket.io/?EIO=4&transport=polling&room=lobby-42"
            .parse()
            .unwrap();
        let ctx = SelectionContext {
            client_ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
            headers: &headers,
            uri: &uri,
        };
        let members = StaticMembers {
            usable: vec![true; n],
            load: (0..n).map(|i| (i * 7919) % 50).collect(),
            ramp: Vec::new(),
        };
        let mut group = c.benchmark_group(format!("pick_{n}"));
        for (name, p) in &policies {
            let selection = balancer::select::for_pool(p);
            group.bench_function(*name, |b| {
                b.iter(|| selection.select(black_box(&ctx), black_box(&members)));
            });
        }
        group.finish();
    }
}

// === routing ===

fn pool(name: &str) -> Arc<Pool> {
    Arc::new(Pool::new(
        name,
        Vec::new(),
        Vec::new(),
        Box::new(SmoothWeightedRoundRobin::new(&[])),
    ))
}

/// 20 routes over two listeners: exact hosts, wildcard hosts and host-less
/// path routes, with no catch-all on `public` so a miss scans everything.
fn route_table() -> RouteTable {
    let exact = |h: &str| Some(HostMatch::Exact(h.into()));
    let wildcard = |s: &str| Some(HostMatch::Wildcard(s.into()));
    let routes: [(&str, Option<HostMatch>, &str); 20] = [
        ("public", exact("lobby.example.com"), "/"),
        ("public", exact("lobby.example.com"), "/admin"),
        ("public", exact("chat.example.com"), "/"),
        ("public", exact("match.example.com"), "/"),
        ("public", exact("match.example.com"), "/queue"),
        ("public", exact("stats.example.com"), "/"),
        ("public", wildcard(".example.com"), "/"),
        ("public", wildcard(".eu.example.com"), "/"),
        ("public", wildcard(".us.example.com"), "/"),
        ("public", wildcard(".game.example.org"), "/api"),
        ("public", wildcard(".example.net"), "/"),
        ("public", None, "/api"),
        ("public", None, "/api/v1"),
        ("public", None, "/api/v2"),
        ("public", None, "/ws"),
        ("public", None, "/assets"),
        ("public", None, "/static"),
        ("public", None, "/health"),
        ("internal", exact("admin.internal"), "/"),
        ("internal", None, "/metrics"),
    ];
    let mut table = RouteTable::default();
    for (i, (listener, host, prefix)) in routes.into_iter().enumerate() {
        let route = balancer::runtime::Route {
            pool: pool(&format!("pool-{i}")),
            upgrades: balancer::runtime::Upgrades::default(),
        };
        table.add(listener, host, prefix, route);
    }
    table.finish()
}

fn route_lookup(c: &mut Criterion) {
    let table = route_table();
    // A host no host route matches, so the lookup walks past every exact and
    // wildcard route into the host-less ones.
    let host = "cdn.other.org";
    let hit = "/static/css/site.css";
    let miss = "/favicon.ico";
    assert_eq!(
        table.find("public", Some(host), hit).map(|r| &*r.pool.name),
        Some("pool-16"),
        "the deep hit must land on the /static route"
    );
    assert!(table.find("public", Some(host), miss).is_none());

    let mut group = c.benchmark_group("route_find");
    group.bench_function("deep_hit", |b| {
        b.iter(|| table.find(black_box("public"), Some(black_box(host)), black_box(hit)));
    });
    group.bench_function("miss", |b| {
        b.iter(|| table.find(black_box("public"), Some(black_box(host)), black_box(miss)));
    });
    group.finish();

    let mut group = c.benchmark_group("normalize_host");
    group.bench_function("mixed_case_with_port", |b| {
        b.iter(|| normalize_host(black_box("Game.Example.com:8080")));
    });
    group.bench_function("lower_case", |b| {
        b.iter(|| normalize_host(black_box("game.example.com")));
    });
    group.finish();
}

// === header rewriting ===

/// What a desktop browser sends on a plain page load, already behind one
/// proxy (hence the existing `x-forwarded-for`).
fn browser_request_headers() -> HeaderMap {
    let pairs = [
        ("host", "game.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("referer", "https://game.example.com/lobby"),
        ("cookie", "session=3f9a0c1d2e4b; theme=dark; region=eu-west"),
        ("connection", "keep-alive"),
        ("upgrade-insecure-requests", "1"),
        ("sec-fetch-dest", "document"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-site", "same-origin"),
        ("cache-control", "max-age=0"),
        ("x-forwarded-for", "198.51.100.23"),
    ];
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    headers
}

fn header_rewrite(c: &mut Criterion) {
    let headers = browser_request_headers();
    let client = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    let real_ip = http::HeaderName::from_static("x-real-ip");
    let fwd = Forwarding {
        peer: client,
        trusted: false,
        client,
        client_header: Some(&real_ip),
        proto: "http",
    };
    c.bench_function("headers/rewrite_browser_request", |b| {
        b.iter_batched(
            || headers.clone(),
            |mut h| {
                strip_hop_by_hop(&mut h, false);
                add_forwarded(&mut h, black_box(&fwd), Some("game.example.com"));
                let id = ensure_request_id(&mut h);
                // Returned, so dropping them is outside the measurement too.
                (h, id)
            },
            BatchSize::SmallInput,
        );
    });
}

// === config ===

/// One listener, 10 pools of 10 backends each (mixed weights), one route per
/// pool and a timeouts table: a mid-sized production file.
fn config_text() -> String {
    use std::fmt::Write as _;

    let mut text = String::from("[[listener]]\nname = \"public\"\naddress = \"0.0.0.0:8080\"\n\n");
    for p in 0..10 {
        writeln!(
            text,
            "[[pool]]\nname = \"pool-{p}\"\npolicy = \"round_robin\"\n"
        )
        .unwrap();
        for b in 0..10 {
            writeln!(
                text,
                "  [[pool.backend]]\n  id = \"pool-{p}-{b}\"\n  address = \"10.0.{p}.{}:9000\"\n  weight = {}\n",
                b + 1,
                b % 4 + 1
            )
            .unwrap();
        }
    }
    for p in 0..10 {
        writeln!(
            text,
            "[[route]]\nlistener = \"public\"\nhost = \"*.region{p}.example.com\"\npath_prefix = \"/\"\npool = \"pool-{p}\"\n"
        )
        .unwrap();
    }
    text.push_str(
        "[timeouts]\nconnect = \"3s\"\nresponse_header = \"60s\"\nwebsocket_idle = \"none\"\nshutdown_grace = \"10s\"\n",
    );
    text
}

fn config_parse(c: &mut Criterion) {
    let text = config_text();
    let parsed = config::parse(&text).expect("the benchmark config must be valid");
    assert_eq!(parsed.pools.len(), 10);
    assert_eq!(
        parsed.pools.iter().map(|p| p.backends.len()).sum::<usize>(),
        100
    );

    c.bench_function("config/parse_10_pools_100_backends", |b| {
        b.iter(|| config::parse(black_box(&text)));
    });
}

criterion_group! {
    name = hot_path;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = smooth_weighted_round_robin, policy_picks, route_lookup, header_rewrite, config_parse
}
criterion_main!(hot_path);
