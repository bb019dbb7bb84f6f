//! The signed sticky cookie (`policy = "cookie"`): a client's `Cookie` value
//! is untrusted. Any presented token: no panic, and it verifies only if it
//! is exactly a member's token (junk and forgeries never do). Any backend
//! id: its token verifies back to that id with the pool's secret, and not
//! with another secret or another pool's name.

use balancer::select::cookie::token;
use balancer::select::{BackendSelection, SelectionContext, StaticMembers, StickyCookie};
use http::{HeaderMap, HeaderValue, Uri};

const SECRET: &str = "fuzzing-secret-fuzzing-secret";
const OTHER_SECRET: &str = "another-secret-another-secret";
const IDS: &[&str] = &["game-1", "game-2", "a.b"];

fn sticky(secret: &str) -> config::StickyConfig {
    config::StickyConfig {
        cookie: "lb".into(),
        secret: secret.into(),
        fallback_param: Some("lbt".into()),
        path: "/".into(),
        http_only: true,
        secure: false,
        same_site: config::SameSite::Lax,
        max_age: None,
    }
}

/// What the balancer reads from `Cookie: lb=<value>`: up to the first `;`,
/// trimmed and unquoted (`select::key::cookie`).
fn as_presented(value: &str) -> &str {
    let value = value.split(';').next().unwrap_or_default();
    value.trim().trim_matches('"')
}

/// Picks with `presented` as the `lb` cookie (if it fits in a header).
fn pick(policy: &StickyCookie, presented: &str, n: usize) -> Option<balancer::select::Pick> {
    let value = HeaderValue::from_str(&format!("lb={presented}")).ok()?;
    let mut headers = HeaderMap::new();
    headers.insert(http::header::COOKIE, value);
    let uri = Uri::from_static("/");
    let ctx = SelectionContext {
        client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        headers: &headers,
        uri: &uri,
    };
    policy.select(&ctx, &StaticMembers::new(n))
}

/// One input: panics if an invariant does not hold.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policy = StickyCookie::new("game", &sticky(SECRET), IDS, &[1, 1, 1]);

    // The whole input as a presented token.
    match policy.verify(text) {
        Some(i) => assert_eq!(policy.token_of(i), Some(text), "junk verified"),
        None => assert!(
            (0..IDS.len()).all(|i| policy.token_of(i) != Some(text)),
            "a genuine token refused"
        ),
    }
    if let Some(p) = pick(&policy, text, IDS.len()) {
        assert!(p.index < IDS.len());
        // Only what the cookie parser hands over, verified, may pin
        // without a new cookie.
        if !p.renew_sticky {
            let presented = as_presented(text);
            assert_eq!(policy.verify(presented), Some(p.index), "{presented:?}");
        }
    }

    // The first line as a backend id: its token round-trips.
    let id = text.split('\n').next().unwrap_or_default();
    let t = token(SECRET.as_bytes(), "game", id);
    assert_eq!(t.len(), id.len() + 33);
    assert!(t.starts_with(id) && t.as_bytes()[id.len()] == b'.');
    let ids = ["other", id];
    if id != "other" {
        let with_id = StickyCookie::new("game", &sticky(SECRET), &ids, &[1, 1]);
        assert_eq!(with_id.verify(&t), Some(1), "own token refused for {id:?}");
        assert_eq!(with_id.token_of(1), Some(t.as_str()));
        let other_secret = StickyCookie::new("game", &sticky(OTHER_SECRET), &ids, &[1, 1]);
        assert_eq!(
            other_secret.verify(&t),
            None,
            "accepted with another secret"
        );
        let other_pool = StickyCookie::new("lobby", &sticky(SECRET), &ids, &[1, 1]);
        assert_eq!(other_pool.verify(&t), None, "accepted by another pool");
    }
    // A genuine token of an id the pool no longer has never pins plainly.
    if !IDS.contains(&id) && as_presented(&t) == t {
        if let Some(p) = pick(&policy, &t, IDS.len()) {
            assert!(
                p.renew_sticky,
                "a removed id's token pinned without renewal"
            );
        }
    }
}
