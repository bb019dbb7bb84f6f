//! `policy = "cookie"`: a signed cookie names the client's backend.
//!
//! The token is `<backend id>.<tag>`, where the tag is the first 128 bits of
//! HMAC-SHA256(`sticky.secret`, pool name and backend id), in hex. It is a
//! pure function of the secret, the pool and the id, so every balancer of a
//! deployment (same secret) issues and accepts the same tokens with no
//! shared state, and a client cannot forge a route to a backend of its
//! choice. Tokens and `Set-Cookie` values are computed once per snapshot; a
//! pick does a map lookup and a constant-time compare, no hashing.
//!
//! A request with a valid token goes to that backend while it is usable. If
//! it is not (down, draining, removed), the request goes to the next backend
//! in that id's rendezvous order, the same replacement on every balancer,
//! and the response re-issues the cookie. A missing, stale or forged token is
//! treated as absent: the first pick is least connections, and the response
//! sets the cookie.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use http::HeaderValue;
use sha2::Sha256;

use super::rendezvous::{key_hash, Rendezvous};
use super::{key, BackendSelection, LeastConnections, Members, Pick, SelectionContext};

#[derive(Debug)]
pub struct StickyCookie {
    /// Kept to verify tokens of backends no longer in the pool (rare path).
    secret: Box<[u8]>,
    pool: Box<str>,
    cookie: String,
    fallback_param: Option<String>,
    /// Member index by backend id.
    by_id: HashMap<Box<str>, usize>,
    /// The valid token of each member.
    tokens: Box<[String]>,
    /// The `Set-Cookie` value of each member.
    set_cookie: Box<[HeaderValue]>,
    rendezvous: Rendezvous,
    first_pick: LeastConnections,
}

/// The token that pins a client to backend `id` of `pool`.
pub fn token(secret: &[u8], pool: &str, id: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm is never taken.
        Err(_) => return format!("{id}.invalid"),
    };
    mac.update(b"lb-sticky-v1\0");
    mac.update(pool.as_bytes());
    mac.update(b"\0");
    mac.update(id.as_bytes());
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(id.len() + 33);
    out.push_str(id);
    out.push('.');
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in &tag[..16] {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// Equality whose time does not depend on where two secrets differ (used
/// for sticky tokens and the admin token).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl StickyCookie {
    pub fn new(pool: &str, s: &config::StickyConfig, ids: &[&str], weights: &[u32]) -> Self {
        let tokens: Vec<String> = ids
            .iter()
            .map(|id| token(s.secret.as_bytes(), pool, id))
            .collect();
        let set_cookie = tokens
            .iter()
            .map(|t| {
                let mut v = format!("{}={t}; Path={}", s.cookie, s.path);
                if let Some(age) = s.max_age {
                    v.push_str(&format!("; Max-Age={}", age.as_secs().max(1)));
                }
                if s.http_only {
                    v.push_str("; HttpOnly");
                }
                if s.secure {
                    v.push_str("; Secure");
                }
                v.push_str("; SameSite=");
                v.push_str(s.same_site.as_str());
                // Names, ids, paths and hex are validated to be header-safe.
                HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("lb=invalid"))
            })
            .collect();
        Self {
            secret: s.secret.as_bytes().into(),
            pool: pool.into(),
            cookie: s.cookie.clone(),
            fallback_param: s.fallback_param.clone(),
            by_id: ids
                .iter()
                .enumerate()
                .map(|(i, id)| (Box::from(*id), i))
                .collect(),
            tokens: tokens.into_boxed_slice(),
            set_cookie,
            rendezvous: Rendezvous::new(ids, weights),
            first_pick: LeastConnections::new(weights),
        }
    }

    /// The member a presented token names, if the token is genuine.
    pub fn verify(&self, presented: &str) -> Option<usize> {
        let (id, _) = presented.rsplit_once('.')?;
        let &i = self.by_id.get(id)?;
        constant_time_eq(presented.as_bytes(), self.tokens[i].as_bytes()).then_some(i)
    }

    /// The backend id a genuine token names when that backend is no longer
    /// in the pool (removed from the config): costs one HMAC, only on this path.
    fn verify_removed<'t>(&self, presented: &'t str) -> Option<&'t str> {
        let (id, _) = presented.rsplit_once('.')?;
        // Ids are at most 64 characters (config validation): anything longer
        // is not worth an HMAC.
        if id.is_empty() || id.len() > 64 || self.by_id.contains_key(id) {
            return None;
        }
        let expected = token(&self.secret, &self.pool, id);
        constant_time_eq(presented.as_bytes(), expected.as_bytes()).then_some(id)
    }

    /// The token member `i` is pinned by.
    pub fn token_of(&self, i: usize) -> Option<&str> {
        self.tokens.get(i).map(String::as_str)
    }

    fn presented<'a>(&self, ctx: &SelectionContext<'a>) -> Option<&'a str> {
        key::cookie(ctx.headers, &self.cookie).or_else(|| {
            let param = self.fallback_param.as_deref()?;
            key::query_param(ctx.uri.query()?, param)
        })
    }
}

impl BackendSelection for StickyCookie {
    fn select(&self, ctx: &SelectionContext<'_>, members: &dyn Members) -> Option<Pick> {
        if let Some(presented) = self.presented(ctx) {
            let pinned_id = match self.verify(presented) {
                Some(i) if members.usable(i) => return Some(Pick::plain(i)),
                Some(_) => presented.rsplit_once('.').map(|(id, _)| id),
                None => self.verify_removed(presented),
            };
            if let Some(id) = pinned_id {
                // The pinned backend is unavailable or gone: its own
                // rendezvous order names the replacement, the same on
                // every balancer.
                return self
                    .rendezvous
                    .pick(key_hash(id.as_bytes()), |j| members.usable(j))
                    .map(|index| Pick {
                        index,
                        renew_sticky: true,
                    });
            }
        }
        self.first_pick.pick(members).map(|index| Pick {
            index,
            renew_sticky: true,
        })
    }

    fn set_cookie(&self, i: usize) -> Option<&HeaderValue> {
        self.set_cookie.get(i)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::select::StaticMembers;

    fn sticky() -> config::StickyConfig {
        config::StickyConfig {
            cookie: "lb".into(),
            secret: "0123456789abcdef-test-secret".into(),
            fallback_param: Some("lbt".into()),
            path: "/".into(),
            http_only: true,
            secure: false,
            same_site: config::SameSite::Lax,
            max_age: Some(std::time::Duration::from_secs(3600)),
        }
    }

    impl StickyCookie {
        fn index_to_id(&self, i: usize) -> String {
            self.token_of(i)
                .unwrap()
                .split('.')
                .next()
                .unwrap()
                .to_string()
        }
    }

    fn policy() -> StickyCookie {
        StickyCookie::new("game", &sticky(), &["a", "b", "c"], &[1, 1, 1])
    }

    fn pick(p: &StickyCookie, cookie: Option<&str>, uri: &str, m: &StaticMembers) -> Option<Pick> {
        let mut h = http::HeaderMap::new();
        if let Some(c) = cookie {
            h.insert(http::header::COOKIE, HeaderValue::from_str(c).unwrap());
        }
        let uri: http::Uri = uri.parse().unwrap();
        let ctx = SelectionContext {
            client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            headers: &h,
            uri: &uri,
        };
        p.select(&ctx, m)
    }

    #[test]
    fn valid_cookie_pins_and_is_not_reissued() {
        let p = policy();
        let m = StaticMembers::new(3);
        let t = p.token_of(1).unwrap().to_string();
        let got = pick(&p, Some(&format!("other=1; lb={t}")), "/", &m).unwrap();
        assert_eq!(got, Pick::plain(1));
        // The query parameter works the same for clients without a jar.
        let got = pick(&p, None, &format!("/socket.io/?EIO=4&lbt={t}"), &m).unwrap();
        assert_eq!(got, Pick::plain(1));
        let sc = p.set_cookie(1).unwrap().to_str().unwrap();
        assert_eq!(
            sc,
            format!("lb={t}; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax")
        );
    }

    #[test]
    fn tampered_or_foreign_tokens_are_ignored() {
        let p = policy();
        let m = StaticMembers::new(3);
        let t = p.token_of(1).unwrap().to_string();
        let forged_id = t.replacen("b.", "c.", 1);
        let mut flipped = t.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        let other_secret = {
            let mut s = sticky();
            s.secret = "another-secret-of-16+chars".into();
            StickyCookie::new("game", &s, &["a", "b", "c"], &[1, 1, 1])
                .token_of(1)
                .unwrap()
                .to_string()
        };
        let other_pool = StickyCookie::new("lobby", &sticky(), &["a", "b", "c"], &[1, 1, 1])
            .token_of(1)
            .unwrap()
            .to_string();
        for bad in [
            forged_id,
            flipped,
            other_secret,
            other_pool,
            "b".into(),
            "b.".into(),
            "".into(),
        ] {
            assert_eq!(p.verify(&bad), None, "{bad:?} accepted");
            let got = pick(&p, Some(&format!("lb={bad}")), "/", &m).unwrap();
            assert!(got.renew_sticky, "{bad:?} should get a fresh cookie");
        }
    }

    #[test]
    fn unavailable_target_moves_to_its_rendezvous_replacement() {
        let p = policy();
        let mut m = StaticMembers::new(3);
        m.usable[1] = false;
        let t = p.token_of(1).unwrap().to_string();
        let got = pick(&p, Some(&format!("lb={t}")), "/", &m).unwrap();
        assert!(got.renew_sticky);
        assert_ne!(got.index, 1);
        // Same answer however often, and whatever the load: deterministic.
        m.load = vec![50, 0, 0];
        for _ in 0..5 {
            assert_eq!(
                pick(&p, Some(&format!("lb={t}")), "/", &m).unwrap().index,
                got.index
            );
        }
    }

    #[test]
    fn removed_target_moves_to_the_same_replacement_as_when_down() {
        // Pool a, b, c; then b is removed from the config.
        let full = policy();
        let t = full.token_of(1).unwrap().to_string();
        let mut b_down = StaticMembers::new(3);
        b_down.usable[1] = false;
        let when_down = full.index_to_id(
            pick(&full, Some(&format!("lb={t}")), "/", &b_down)
                .unwrap()
                .index,
        );

        let without_b = StickyCookie::new("game", &sticky(), &["a", "c"], &[1, 1]);
        let m = StaticMembers::new(2);
        let got = pick(&without_b, Some(&format!("lb={t}")), "/", &m).unwrap();
        assert!(got.renew_sticky);
        assert_eq!(without_b.index_to_id(got.index), when_down);
        // A forged token for a removed id is still just ignored.
        let forged = format!("lb=b.{}", "0".repeat(32));
        let mut loaded = StaticMembers::new(2);
        loaded.load = vec![0, 9];
        assert_eq!(
            pick(&without_b, Some(&forged), "/", &loaded).unwrap().index,
            0,
            "least connections"
        );
    }

    #[test]
    fn first_pick_is_least_connections() {
        let p = policy();
        let mut m = StaticMembers::new(3);
        m.load = vec![4, 1, 9];
        assert_eq!(
            pick(&p, None, "/", &m),
            Some(Pick {
                index: 1,
                renew_sticky: true
            })
        );
    }

    proptest! {
        #[test]
        fn no_presented_token_panics(t in ".{0,120}") {
            let _ = policy().verify(&t);
        }
    }
}
