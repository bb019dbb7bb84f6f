//! Route matching: (listener, Host, path) -> pool. A pure function of the
//! route table, tested without sockets.
//!
//! Precedence, like nginx's server names then locations: an exact host beats
//! a wildcard host (a longer wildcard suffix beats a shorter one), which
//! beats a route without host; among those, the longest `path_prefix` wins.
//! A prefix is a plain string prefix of the path (`/api` matches `/api/x`
//! and `/apix`; write `/api/` to match the folder only).
//!
//! A route gives a request its pool and the upgrade protocols it may
//! switch to ([`Upgrades`], the route's `upgrades`).

use std::collections::HashMap;
use std::sync::Arc;

use config::HostMatch;

use super::Pool;

/// What a matched route gives a request.
#[derive(Debug)]
pub struct Route {
    pub pool: Arc<Pool>,
    pub upgrades: Upgrades,
}

/// A route's `upgrades`: the protocol names (lower-case, no version) an
/// HTTP/1.1 request on it may ask to switch to. Shared, so a request
/// takes it with a reference count, not a copy.
#[derive(Debug, Clone)]
pub struct Upgrades(Arc<[Box<str>]>);

impl Upgrades {
    /// From the config's list (already lower-case and checked).
    pub fn new(names: &[String]) -> Self {
        Self(names.iter().map(|n| Box::from(n.as_str())).collect())
    }

    /// Whether `name` (a protocol name without `/version`, any case) is
    /// allowed.
    pub fn allows(&self, name: &str) -> bool {
        self.0.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

impl Default for Upgrades {
    /// `config::DEFAULT_UPGRADES`: WebSocket only.
    fn default() -> Self {
        Self(
            config::DEFAULT_UPGRADES
                .iter()
                .map(|n| Box::from(*n))
                .collect(),
        )
    }
}

#[derive(Debug)]
struct CompiledRoute {
    host: Option<HostMatch>,
    prefix: String,
    route: Route,
}

impl CompiledRoute {
    /// Sort key: most specific first.
    fn rank(&self) -> (u8, usize, usize) {
        match &self.host {
            Some(HostMatch::Exact(_)) => (2, 0, self.prefix.len()),
            Some(HostMatch::Wildcard(s)) => (1, s.len(), self.prefix.len()),
            None => (0, 0, self.prefix.len()),
        }
    }
}

/// All routes, grouped by listener name, most specific first.
#[derive(Debug, Default)]
pub struct RouteTable {
    by_listener: HashMap<Arc<str>, Vec<CompiledRoute>>,
}

impl RouteTable {
    /// Adds a route; call [`RouteTable::finish`] when all are in.
    pub fn add(&mut self, listener: &str, host: Option<HostMatch>, prefix: &str, route: Route) {
        self.by_listener
            .entry(listener.into())
            .or_default()
            .push(CompiledRoute {
                host,
                prefix: prefix.to_string(),
                route,
            });
    }

    /// Orders each listener's routes by precedence (stable, so file order breaks ties).
    pub fn finish(mut self) -> Self {
        for routes in self.by_listener.values_mut() {
            routes.sort_by_key(|r| std::cmp::Reverse(r.rank()));
        }
        self
    }

    /// The route for a request. `host` must be normalized (see [`normalize_host`]).
    pub fn find(&self, listener: &str, host: Option<&str>, path: &str) -> Option<&Route> {
        self.by_listener
            .get(listener)?
            .iter()
            .find(|r| {
                let host_ok = match (&r.host, host) {
                    (None, _) => true,
                    (Some(m), Some(h)) => m.matches(h),
                    (Some(_), None) => false,
                };
                host_ok && path.starts_with(r.prefix.as_str())
            })
            .map(|r| &r.route)
    }
}

/// Host header or `:authority` -> lower-case name without port; borrowed when
/// already lower-case (the common case), so routing allocates nothing.
pub fn normalize_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let name = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: [::1]:8080 -> [::1]
        match rest.find(']') {
            Some(end) => &raw[..end + 2],
            None => raw,
        }
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(name.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::SmoothWeightedRoundRobin;

    fn pool(name: &str) -> Route {
        Route {
            pool: Arc::new(Pool::new(
                name,
                Vec::new(),
                Vec::new(),
                Box::new(SmoothWeightedRoundRobin::new(&[])),
            )),
            upgrades: Upgrades::default(),
        }
    }

    fn table() -> RouteTable {
        let mut t = RouteTable::default();
        t.add("public", None, "/", pool("default"));
        t.add("public", None, "/api", pool("api"));
        t.add("public", None, "/api/v2", pool("api2"));
        t.add(
            "public",
            Some(HostMatch::Wildcard(".example.com".into())),
            "/",
            pool("wild"),
        );
        t.add(
            "public",
            Some(HostMatch::Exact("game.example.com".into())),
            "/",
            pool("game"),
        );
        t.add(
            "public",
            Some(HostMatch::Exact("game.example.com".into())),
            "/admin",
            pool("game-admin"),
        );
        t.add(
            "internal",
            Some(HostMatch::Exact("x".into())),
            "/only",
            pool("internal"),
        );
        t.finish()
    }

    fn find<'a>(t: &'a RouteTable, l: &str, h: Option<&str>, p: &str) -> Option<&'a str> {
        t.find(l, h, p).map(|r| &*r.pool.name)
    }

    #[test]
    fn precedence() {
        let t = table();
        assert_eq!(find(&t, "public", None, "/"), Some("default"));
        assert_eq!(find(&t, "public", None, "/api/v1"), Some("api"));
        assert_eq!(find(&t, "public", None, "/api/v2/x"), Some("api2"));
        assert_eq!(find(&t, "public", Some("other.org"), "/api"), Some("api"));
        assert_eq!(
            find(&t, "public", Some("a.example.com"), "/api"),
            Some("wild")
        );
        assert_eq!(
            find(&t, "public", Some("game.example.com"), "/x"),
            Some("game")
        );
        assert_eq!(
            find(&t, "public", Some("game.example.com"), "/admin/1"),
            Some("game-admin")
        );
        assert_eq!(find(&t, "internal", Some("x"), "/"), None);
        assert_eq!(find(&t, "internal", None, "/only"), None);
        assert_eq!(find(&t, "nope", None, "/"), None);
    }

    mod precedence_property {
        use proptest::prelude::*;

        use super::*;

        fn host() -> impl Strategy<Value = Option<HostMatch>> {
            prop_oneof![
                Just(None),
                prop::sample::select(vec!["a.example.com", "b.example.com", "example.com"])
                    .prop_map(|h| Some(HostMatch::Exact(h.into()))),
                prop::sample::select(vec![".example.com", ".a.example.com", ".com"])
                    .prop_map(|s| Some(HostMatch::Wildcard(s.into()))),
            ]
        }

        fn prefix() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec!["/", "/a", "/a/", "/a/b", "/ab", "/b"])
        }

        /// How specific a route is: what precedence says wins.
        fn rank(host: &Option<HostMatch>, prefix: &str) -> (u8, usize, usize) {
            match host {
                Some(HostMatch::Exact(_)) => (2, 0, prefix.len()),
                Some(HostMatch::Wildcard(s)) => (1, s.len(), prefix.len()),
                None => (0, 0, prefix.len()),
            }
        }

        proptest! {
            /// For any routes and any request, the table picks what a
            /// brute-force scan picks: among the matching routes, the most
            /// specific (host kind, wildcard length, prefix length), the
            /// first in file order on a tie; none when nothing matches.
            #[test]
            fn find_is_the_most_specific_match(
                routes in prop::collection::vec((host(), prefix()), 0..10),
                req_host in prop::option::of(prop::sample::select(vec![
                    "a.example.com", "b.example.com", "x.a.example.com", "example.com", "other.org",
                ])),
                path in prop::sample::select(vec!["/", "/a", "/a/b/c", "/ab", "/b", "/c"]),
            ) {
                let mut t = RouteTable::default();
                for (i, (h, p)) in routes.iter().enumerate() {
                    t.add("l", h.clone(), p, pool(&i.to_string()));
                }
                let t = t.finish();
                let want = routes
                    .iter()
                    .enumerate()
                    .filter(|(_, (h, p))| {
                        let host_ok = match (h, req_host) {
                            (None, _) => true,
                            (Some(m), Some(rh)) => m.matches(rh),
                            (Some(_), None) => false,
                        };
                        host_ok && path.starts_with(*p)
                    })
                    // max_by_key keeps the last of equals: reverse the index.
                    .max_by_key(|(i, (h, p))| (rank(h, p), std::cmp::Reverse(*i)))
                    .map(|(i, _)| i.to_string());
                let got = t.find("l", req_host, path).map(|r| r.pool.name.to_string());
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn upgrades_match_names_without_case() {
        let u = Upgrades::new(&["websocket".into(), "mygame".into()]);
        assert!(u.allows("WebSocket") && u.allows("mygame") && !u.allows("h2c"));
        assert!(!Upgrades::new(&[]).allows("websocket"));
        assert!(Upgrades::default().allows("websocket") && !Upgrades::default().allows("mygame"));
    }

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("Game.Example.COM:8080"), "game.example.com");
        assert_eq!(normalize_host("game.example.com."), "game.example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
        assert_eq!(normalize_host("127.0.0.1"), "127.0.0.1");
        assert!(matches!(
            normalize_host("a.b:1"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
