//! The config parser (`lb_config::parse`) over any text. Config files are
//! operator input, but a reload reads whatever is on disk, and a rejected
//! file must be reported, never crash the running balancer. Invariants: no
//! panic; parsing is a function of the text (twice, the same answer); a
//! rejection names at least one problem, each with a message; an accepted
//! config holds what its types promise (every route resolves, every pool
//! has a working policy, sticky and hash settings exactly with their policy,
//! ids fit in a cookie token, Set-Cookie values are valid headers).

use balancer::select::{for_pool, SelectionContext, StaticMembers, StickyCookie};
use config::{HashKey, Policy};

/// One input: panics if an invariant does not hold.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = config::parse(text);
    assert_eq!(parsed, config::parse(text), "two answers for one text");
    let cfg = match parsed {
        Err(errors) => {
            assert!(!errors.is_empty(), "rejected with no reason");
            for e in errors.iter() {
                assert!(
                    !e.message.trim().is_empty(),
                    "an error without a message: {e:?}"
                );
            }
            assert!(!errors.to_string().is_empty());
            return;
        }
        Ok(cfg) => cfg,
    };
    for route in &cfg.routes {
        assert!(cfg.pools.iter().any(|p| p.name == route.pool), "{route:?}");
        assert!(
            cfg.listeners.iter().any(|l| l.name == route.listener),
            "{route:?}"
        );
    }
    let headers = http::HeaderMap::new();
    let uri = http::Uri::from_static("/");
    let ctx = SelectionContext {
        client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        headers: &headers,
        uri: &uri,
    };
    for pool in &cfg.pools {
        assert_eq!(
            pool.sticky.is_some(),
            pool.policy == Policy::Cookie,
            "{pool:?}"
        );
        assert_eq!(
            pool.hash_key.is_some(),
            pool.policy == Policy::Hash,
            "{pool:?}"
        );
        for b in &pool.backends {
            assert!(!b.id.is_empty() && b.id.len() <= 64, "{b:?}");
            assert!(b.weight > 0, "{b:?}");
        }
        if let Some(HashKey::Header(name)) = &pool.hash_key {
            let h = http::HeaderName::from_bytes(name.as_bytes());
            assert!(h.is_ok_and(|h| h.as_str() == name), "hash header {name:?}");
        }
        let n = pool.backends.len();
        let policy = for_pool(pool);
        let pick = policy.select(&ctx, &StaticMembers::new(n));
        assert_eq!(pick.is_some(), n > 0, "{pool:?}");
        assert!(pick.is_none_or(|p| p.index < n));
        if let Some(s) = &pool.sticky {
            let ids: Vec<&str> = pool.backends.iter().map(|b| b.id.as_str()).collect();
            let weights: Vec<u32> = pool.backends.iter().map(|b| b.weight).collect();
            let sticky = StickyCookie::new(&pool.name, s, &ids, &weights);
            for i in 0..n {
                let token = sticky.token_of(i).unwrap();
                assert_eq!(sticky.verify(token), Some(i));
                let set = policy.set_cookie(i).map(|v| v.as_bytes());
                assert!(
                    set.is_some_and(|v| v.starts_with(format!("{}={token}", s.cookie).as_bytes())),
                    "Set-Cookie {set:?} for {s:?}"
                );
            }
        }
    }
}
