//! Which admin requests get through, decided from the request head alone
//! (a pure function, tested without sockets). In order:
//!
//! 1. **Host** (every request): the name the client used must be one of the
//!    listener's own: an IP literal it listens on, `localhost`, or a name
//!    in `admin.hosts`. A web page whose DNS name an attacker re-points at
//!    this machine (DNS rebinding) sends its own name and gets 421.
//! 2. **Cross-site** (state-changing calls): `Sec-Fetch-Site`, when sent,
//!    must be `same-origin` or `none`; `Origin`, when sent, must be the
//!    origin the `Host` names; and the request must be one a browser will
//!    not send cross-site without asking first (a CORS preflight, which
//!    this listener never answers): it carries `X-Admin-Request` or
//!    `Content-Type: application/json`. A plain form POST is refused. 403.
//! 3. **Token**: state-changing calls whenever `admin.token` is set, and
//!    `GET /api/status` and `/metrics` too with `admin.protect_reads`. 401.
//!
//! The port of `Host` is not compared with the listener's: DNS rebinding
//! is a matter of the name, the port a browser sends is the one it
//! connected to anyway, and operators reach the admin port through SSH
//! tunnels and port forwards that change it.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, Method, StatusCode, Uri};

use config::HostMatch;

/// The header a state-changing call carries to show it is not a plain
/// form post (any value; `1` by convention).
pub const ADMIN_REQUEST_HEADER: &str = "x-admin-request";

/// What a request asks for, which decides the checks it must pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The status page itself: a static file with no data in it.
    Page,
    /// `GET /api/status`, `GET /metrics`.
    Read,
    /// Anything but GET and HEAD.
    Write,
}

impl Access {
    pub fn of(method: &Method, path: &str) -> Self {
        if method != Method::GET && method != Method::HEAD {
            Self::Write
        } else if matches!(path, "/api/status" | "/metrics") {
            Self::Read
        } else {
            Self::Page
        }
    }
}

/// A refused request: the status and a sentence that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: String,
}

impl Refusal {
    fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }
}

/// The admin listener's rules, built once at start from `[admin]`.
#[derive(Debug, Clone)]
pub struct Guard {
    /// The address the listener is bound to: with `0.0.0.0` / `::`, any
    /// loopback literal is one of its own names too.
    bound: SocketAddr,
    hosts: Vec<HostMatch>,
    token: Option<String>,
    protect_reads: bool,
}

impl Guard {
    pub fn new(bound: SocketAddr, admin: &config::AdminConfig) -> Self {
        Self {
            bound,
            hosts: admin.hosts.clone(),
            token: admin.token.clone(),
            protect_reads: admin.protect_reads,
        }
    }

    /// Whether a request (its method, URI and headers, arrived on a
    /// connection to `local`) may be answered.
    pub fn check(
        &self,
        local: IpAddr,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        let host = self.check_host(local, uri, headers)?;
        let access = Access::of(method, uri.path());
        if access == Access::Write {
            check_same_origin(host, headers)?;
        }
        let needs_token = match access {
            Access::Write => true,
            Access::Read => self.protect_reads,
            Access::Page => false,
        };
        if needs_token {
            self.check_token(headers)?;
        }
        Ok(())
    }

    /// The `Host` the request names, if it is one of the listener's own.
    fn check_host<'a>(
        &self,
        local: IpAddr,
        uri: &'a Uri,
        headers: &'a HeaderMap,
    ) -> Result<&'a str, Refusal> {
        let misdirected = |why: String| Refusal::new(StatusCode::MISDIRECTED_REQUEST, why);
        // Two Host headers could be read differently by two parsers: refuse.
        if headers.get_all(http::header::HOST).iter().nth(1).is_some() {
            return Err(misdirected("more than one Host header".into()));
        }
        let host = headers
            .get(http::header::HOST)
            .map(|v| {
                v.to_str()
                    .map_err(|_| misdirected("the Host header is not text".into()))
            })
            .transpose()?
            .ok_or_else(|| misdirected("a Host header is required".into()))?;
        // An absolute-form target names a host of its own: it must pass too.
        let named = uri
            .authority()
            .map(|a| a.as_str())
            .into_iter()
            .chain([host]);
        for authority in named {
            let (name, _port) = split_authority(authority)
                .ok_or_else(|| misdirected(format!("malformed Host {authority:?}")))?;
            if !self.is_own_name(local, &name) {
                return Err(misdirected(format!(
                    "host {name:?} is not this admin listener's (add it to admin.hosts)"
                )));
            }
        }
        Ok(host)
    }

    fn is_own_name(&self, local: IpAddr, name: &str) -> bool {
        if let Ok(ip) = name.parse::<IpAddr>() {
            let ip = ip.to_canonical();
            return ip == local.to_canonical()
                || ip == self.bound.ip().to_canonical()
                || (self.bound.ip().is_unspecified() && ip.is_loopback());
        }
        name == "localhost" || self.hosts.iter().any(|h| h.matches(name))
    }

    fn check_token(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if crate::select::cookie::constant_time_eq(presented.as_bytes(), token.as_bytes()) {
            Ok(())
        } else {
            Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized: send Authorization: Bearer <admin.token>",
            ))
        }
    }
}

/// Refuses what a browser sends on behalf of another site.
fn check_same_origin(host: &str, headers: &HeaderMap) -> Result<(), Refusal> {
    let forbidden = |why: String| Refusal::new(StatusCode::FORBIDDEN, why);
    let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if let Some(site) = text("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return Err(forbidden(format!(
                "cross-origin request refused (Sec-Fetch-Site: {site})"
            )));
        }
    }
    if let Some(origin) = text("origin") {
        if !same_origin(origin, host) {
            return Err(forbidden(format!(
                "cross-origin request refused (Origin {origin:?} is not http://{host})"
            )));
        }
    }
    let custom = headers.contains_key(ADMIN_REQUEST_HEADER);
    let json = text("content-type").is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    if !custom && !json {
        return Err(forbidden(
            "state-changing calls need the header X-Admin-Request: 1 (or Content-Type: application/json); a plain form post is refused".into(),
        ));
    }
    Ok(())
}

/// Whether `origin` (`scheme://host[:port]`) is the origin `host` names.
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false; // includes "null": a sandboxed or privacy-sensitive context
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    match (split_authority(authority), split_authority(host)) {
        (Some((a, ap)), Some((b, bp))) => {
            a == b && ap.unwrap_or(default_port) == bp.unwrap_or(default_port)
        }
        _ => false,
    }
}

/// `host[:port]` as a lower-case name (IPv6 without brackets, no trailing
/// dot) and the port if one is given; `None` when it is not an authority.
fn split_authority(text: &str) -> Option<(String, Option<u16>)> {
    let a: http::uri::Authority = text.parse().ok()?;
    // A port that is not a u16 is not "no port".
    let after_host = a.as_str().rsplit_once(']').map_or(a.as_str(), |(_, r)| r);
    if a.as_str().contains('@') || (after_host.contains(':') && a.port_u16().is_none()) {
        return None;
    }
    let host = a.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some((host.to_ascii_lowercase(), a.port_u16()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "a-token-of-16-chars-or-more";

    fn guard(bound: &str, hosts: &[&str], token: bool, protect_reads: bool) -> Guard {
        Guard {
            bound: bound.parse().unwrap(),
            hosts: hosts
                .iter()
                .map(|h| match h.strip_prefix('*') {
                    Some(suffix) => HostMatch::Wildcard(suffix.into()),
                    None => HostMatch::Exact((*h).into()),
                })
                .collect(),
            token: token.then(|| TOKEN.to_string()),
            protect_reads,
        }
    }

    fn check(
        g: &Guard,
        local: &str,
        method: Method,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<(), StatusCode> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        g.check(
            local.parse().unwrap(),
            &method,
            &target.parse().unwrap(),
            &map,
        )
        .map_err(|r| {
            assert!(!r.reason.is_empty());
            r.status
        })
    }

    const OK_POST: &[(&str, &str)] = &[("host", "127.0.0.1:9900"), ("x-admin-request", "1")];

    #[test]
    fn host_must_be_one_of_the_listeners_names() {
        let g = guard(
            "127.0.0.1:9900",
            &["admin.example.com", "*.ops.example.com"],
            false,
            false,
        );
        let get = |host: &str| {
            check(
                &g,
                "127.0.0.1",
                Method::GET,
                "/api/status",
                &[("host", host)],
            )
        };
        for ok in [
            "127.0.0.1:9900",
            "127.0.0.1",
            "localhost:9900",
            "LOCALHOST:8000",
            "admin.example.com:9900",
            "Admin.Example.COM.",
            "a.ops.example.com:9900",
        ] {
            assert_eq!(get(ok), Ok(()), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9900",
            "admin.example.com.evil.example",
            "ops.example.com",
            "127.0.0.2:9900",
            "[::1]:9900",
            "user@127.0.0.1:9900",
            "",
            "127.0.0.1:99999",
        ] {
            assert_eq!(get(bad), Err(StatusCode::MISDIRECTED_REQUEST), "{bad:?}");
        }
        assert_eq!(
            check(&g, "127.0.0.1", Method::GET, "/api/status", &[]),
            Err(StatusCode::MISDIRECTED_REQUEST),
            "no Host"
        );
        assert_eq!(
            check(
                &g,
                "127.0.0.1",
                Method::GET,
                "/api/status",
                &[("host", "127.0.0.1:9900"), ("host", "evil.example")]
            ),
            Err(StatusCode::MISDIRECTED_REQUEST),
            "two Hosts"
        );
        // An absolute-form target must name an own host too.
        assert_eq!(
            check(
                &g,
                "127.0.0.1",
                Method::GET,
                "http://evil.example/api/status",
                &[("host", "127.0.0.1:9900")]
            ),
            Err(StatusCode::MISDIRECTED_REQUEST)
        );
        // The status page obeys the same rule: a rebound name gets nothing.
        assert_eq!(
            check(
                &g,
                "127.0.0.1",
                Method::GET,
                "/",
                &[("host", "evil.example")]
            ),
            Err(StatusCode::MISDIRECTED_REQUEST)
        );
    }

    #[test]
    fn a_wildcard_bind_answers_to_loopback_and_the_connections_address() {
        for bound in ["0.0.0.0:9900", "[::]:9900"] {
            let g = guard(bound, &[], true, false);
            let get = |local: &str, host: &str| {
                check(&g, local, Method::GET, "/api/status", &[("host", host)])
            };
            assert_eq!(get("10.1.2.3", "10.1.2.3:9900"), Ok(()));
            assert_eq!(get("::ffff:10.1.2.3", "10.1.2.3:9900"), Ok(()));
            assert_eq!(get("10.1.2.3", "127.0.0.1:9900"), Ok(()));
            assert_eq!(get("10.1.2.3", "[::1]:9900"), Ok(()));
            assert_eq!(
                get("10.1.2.3", "10.9.9.9:9900"),
                Err(StatusCode::MISDIRECTED_REQUEST)
            );
            assert_eq!(
                get("10.1.2.3", "evil.example"),
                Err(StatusCode::MISDIRECTED_REQUEST)
            );
        }
    }

    #[test]
    fn writes_refuse_what_a_browser_sends_for_another_site() {
        let g = guard("127.0.0.1:9900", &[], false, false);
        let post = |extra: &[(&str, &str)], base: &[(&str, &str)]| {
            let headers: Vec<_> = base.iter().chain(extra).copied().collect();
            check(&g, "127.0.0.1", Method::POST, "/api/reload", &headers)
        };
        let host = &[("host", "127.0.0.1:9900")][..];
        assert_eq!(post(&[], OK_POST), Ok(()));
        assert_eq!(post(&[("sec-fetch-site", "same-origin")], OK_POST), Ok(()));
        assert_eq!(post(&[("sec-fetch-site", "none")], OK_POST), Ok(()));
        assert_eq!(
            post(&[("origin", "http://127.0.0.1:9900")], OK_POST),
            Ok(())
        );
        // Through a TLS proxy in front of the admin listener.
        assert_eq!(
            post(&[("origin", "https://127.0.0.1:9900")], OK_POST),
            Ok(())
        );
        assert_eq!(
            post(&[("content-type", "application/json; charset=utf-8")], host),
            Ok(())
        );
        for (why, extra, base) in [
            (
                "Origin elsewhere",
                &[("origin", "http://evil.example")][..],
                OK_POST,
            ),
            (
                "Origin on another port",
                &[("origin", "http://127.0.0.1:8080")],
                OK_POST,
            ),
            ("Origin null", &[("origin", "null")], OK_POST),
            (
                "Sec-Fetch-Site",
                &[("sec-fetch-site", "cross-site")],
                OK_POST,
            ),
            (
                "same-site is not same-origin",
                &[("sec-fetch-site", "same-site")],
                OK_POST,
            ),
            (
                "plain form",
                &[("content-type", "application/x-www-form-urlencoded")],
                host,
            ),
            ("text/plain", &[("content-type", "text/plain")], host),
            ("no marker at all", &[], host),
        ] {
            assert_eq!(post(extra, base), Err(StatusCode::FORBIDDEN), "{why}");
        }
        // Reads need none of it (the status page fetches them).
        assert_eq!(
            check(
                &g,
                "127.0.0.1",
                Method::GET,
                "/api/status",
                &[("host", "127.0.0.1:9900"), ("sec-fetch-site", "cross-site")]
            ),
            Ok(())
        );
    }

    #[test]
    fn origin_and_host_compare_as_origins() {
        assert!(same_origin("http://127.0.0.1:9900", "127.0.0.1:9900"));
        assert!(same_origin(
            "http://Admin.Example.com",
            "admin.example.com:80"
        ));
        assert!(same_origin(
            "https://admin.example.com",
            "admin.example.com:443"
        ));
        assert!(same_origin("http://[::1]:9900", "[::1]:9900"));
        assert!(!same_origin(
            "http://admin.example.com",
            "admin.example.com:9900"
        ));
        assert!(!same_origin("ftp://127.0.0.1:9900", "127.0.0.1:9900"));
        assert!(!same_origin("null", "127.0.0.1:9900"));
        assert!(!same_origin("http://", "127.0.0.1:9900"));
    }

    #[test]
    fn the_token_guards_writes_and_protected_reads() {
        let bearer = format!("Bearer {TOKEN}");
        let open_reads = guard("127.0.0.1:9900", &[], true, false);
        let closed_reads = guard("127.0.0.1:9900", &[], true, true);
        let host = ("host", "127.0.0.1:9900");
        let with = |g: &Guard, method: Method, path: &str, auth: Option<&str>| {
            let mut h = vec![host, ("x-admin-request", "1")];
            h.extend(auth.map(|a| ("authorization", a)));
            check(g, "127.0.0.1", method, path, &h)
        };
        assert_eq!(
            with(&open_reads, Method::POST, "/api/reload", None),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            with(&open_reads, Method::POST, "/api/reload", Some(TOKEN)),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            with(
                &open_reads,
                Method::POST,
                "/api/reload",
                Some("Bearer nope")
            ),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            with(&open_reads, Method::POST, "/api/reload", Some(&bearer)),
            Ok(())
        );
        assert_eq!(with(&open_reads, Method::GET, "/api/status", None), Ok(()));
        for path in ["/api/status", "/metrics"] {
            assert_eq!(
                with(&closed_reads, Method::GET, path, None),
                Err(StatusCode::UNAUTHORIZED)
            );
            assert_eq!(
                with(&closed_reads, Method::GET, path, Some(&bearer)),
                Ok(())
            );
        }
        // The page itself is static and stays loadable; it asks for the token.
        assert_eq!(with(&closed_reads, Method::GET, "/", None), Ok(()));
        // A cross-site write is refused before the token is even looked at.
        let evil = [
            host,
            ("origin", "http://evil.example"),
            ("x-admin-request", "1"),
        ];
        assert_eq!(
            check(
                &closed_reads,
                "127.0.0.1",
                Method::POST,
                "/api/reload",
                &evil
            ),
            Err(StatusCode::FORBIDDEN)
        );
    }

    proptest::proptest! {
        /// Any header text: an answer, never a panic.
        #[test]
        fn never_panics(host in "\\PC{0,40}", origin in "\\PC{0,40}", site in "[a-z\\-]{0,12}") {
            let g = guard("0.0.0.0:9900", &["admin.example.com"], true, true);
            let mut map = HeaderMap::new();
            for (k, v) in [("host", &host), ("origin", &origin), ("sec-fetch-site", &site)] {
                if let Ok(v) = http::HeaderValue::from_str(v) {
                    map.insert(k, v);
                }
            }
            let _ = g.check("127.0.0.1".parse().unwrap(), &Method::POST, &"/api/reload".parse().unwrap(), &map);
        }
    }
}
