//! Header rewriting between client and backend: pure functions over a
//! head, tested without sockets. [`rewrite_request`] and
//! [`rewrite_response`] are what the request path calls; the rest are
//! their parts.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Hop-by-hop headers (RFC 9110 7.6.1) plus the legacy ones proxies strip.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
];

/// Whether a request asks to switch protocols (`Connection: upgrade` plus an
/// `Upgrade` header), as a WebSocket handshake does.
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has_token(headers, "upgrade")
}

fn connection_has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers: `Connection` and every header it names,
/// `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade` and every
/// `Proxy-*` header (and `Proxy`, the httpoxy vector). On an upgrade,
/// `Upgrade` survives and `Connection` becomes exactly `upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let upgrade_value = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    // Headers named by Connection are hop-by-hop too. Collect first: the
    // names borrow from the map we are about to change.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    let proxy_headers: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-") || k.as_str() == "proxy")
        .cloned()
        .collect();
    for name in proxy_headers {
        headers.remove(name);
    }
    if let Some(v) = upgrade_value {
        headers.insert(header::UPGRADE, v);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Headers in which a client names its own address or scheme, beside
/// `X-Forwarded-*`. From a peer that is not a trusted proxy they are lies
/// or accidents, and backends tend to believe them: they are removed.
static CLIENT_CLAIMS: [&str; 7] = [
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
];

/// Who sent a request, and what the balancer made of it: the input of the
/// forwarding-header policy ([`add_forwarded`]).
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    /// The TCP peer.
    pub peer: IpAddr,
    /// The peer is one of `trusted_proxies`.
    pub trusted: bool,
    /// The client address the balancer computed (see `client_ip`).
    pub client: IpAddr,
    /// `client_ip_header`: where the computed client address goes.
    pub client_header: Option<&'a HeaderName>,
    /// The listener's scheme: `http` or `https`.
    pub proto: &'static str,
}

/// The forwarding headers, by who sent the request:
///
/// * From an untrusted peer (any client, when `trusted_proxies` is empty)
///   everything it claimed is replaced: `X-Forwarded-For` is the peer
///   alone; `X-Forwarded-Proto` and `X-Forwarded-Host` are the balancer's;
///   `Forwarded`, `X-Real-IP` and the other client-address headers of
///   [`CLIENT_CLAIMS`] are removed.
/// * From a trusted proxy they are kept and appended to: the peer joins
///   `X-Forwarded-For` (earlier hops kept, folded into one header), and the
///   proxy's own `X-Forwarded-Proto` (when it is `http` or `https`) and
///   `X-Forwarded-Host` stand, so a TLS-terminating balancer in front is
///   not overruled by this plaintext hop.
/// * Either way the computed client address goes in `client_header`.
pub fn add_forwarded(headers: &mut HeaderMap, fwd: &Forwarding<'_>, host: Option<&str>) {
    let peer = HeaderValue::from_str(&fwd.peer.to_string()).ok();
    if fwd.trusted {
        append_forwarded_for(headers, fwd.peer);
    } else {
        if let Some(v) = &peer {
            headers.insert(X_FORWARDED_FOR.clone(), v.clone());
        }
        // One pass over the names; the common request has none of these.
        if headers.keys().any(|k| CLIENT_CLAIMS.contains(&k.as_str())) {
            for name in CLIENT_CLAIMS {
                headers.remove(name);
            }
        }
    }
    let keep_proto = fwd.trusted
        && {
            let mut all = headers.get_all(&X_FORWARDED_PROTO).iter();
            matches!((all.next(), all.next()), (Some(v), None)
            if v.as_bytes().eq_ignore_ascii_case(b"http") || v.as_bytes().eq_ignore_ascii_case(b"https"))
        };
    if !keep_proto {
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(fwd.proto),
        );
    }
    if !(fwd.trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match host.and_then(|h| HeaderValue::from_str(h).ok()) {
            Some(v) => {
                headers.insert(X_FORWARDED_HOST.clone(), v);
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
    if let Some(name) = fwd.client_header {
        let client = if fwd.client == fwd.peer {
            peer
        } else {
            HeaderValue::from_str(&fwd.client.to_string()).ok()
        };
        match client {
            Some(v) => {
                headers.insert(name.clone(), v);
            }
            None => {
                headers.remove(name);
            }
        }
    }
}

/// `X-Forwarded-For` from a trusted proxy, with `peer` appended.
fn append_forwarded_for(headers: &mut HeaderMap, peer: IpAddr) {
    let mut xff = String::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(s) = v.to_str() {
            let s = s.trim();
            if !s.is_empty() {
                xff.push_str(s);
                xff.push_str(", ");
            }
        }
    }
    xff.push_str(&peer.to_string());
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// The request's id: the client's `X-Request-Id` when it sent a sane one,
/// else a new random one, which is also added to the request.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let ok =
            !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(|b| b.is_ascii_graphic());
        if ok {
            return v.clone();
        }
    }
    let id = new_request_id();
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    id
}

/// 32 lower-case hex digits of randomness.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut buf = [0u8; 32];
    for b in buf.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The request head as it goes upstream: hop-by-hop headers out (but an
/// upgrade's), `Expect` answered already, the forwarding headers by the
/// policy of [`add_forwarded`], `Host` the authority the client named, and
/// HTTP/2's split cookies joined.
pub fn rewrite_request(
    parts: &mut http::request::Parts,
    fwd: &Forwarding<'_>,
    host: Option<&HeaderValue>,
    upgrade: bool,
) {
    strip_hop_by_hop(&mut parts.headers, upgrade);
    // The balancer already answered any `Expect: 100-continue` itself.
    parts.headers.remove(header::EXPECT);
    let forwarded_host = host.and_then(|v| v.to_str().ok());
    add_forwarded(&mut parts.headers, fwd, forwarded_host);
    if let Some(h) = host {
        parts.headers.insert(header::HOST, h.clone());
    }
    if parts.version == http::Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
}

/// The response head as it goes back to the client: hop-by-hop headers out
/// (but a tunnel's `Upgrade`), the request's `X-Request-Id` unless the
/// backend set one, and the sticky cookie to (re)issue, if any.
pub fn rewrite_response(
    parts: &mut http::response::Parts,
    tunnel: bool,
    request_id: &HeaderValue,
    set_cookie: Option<HeaderValue>,
) {
    strip_hop_by_hop(&mut parts.headers, tunnel);
    if !parts.headers.contains_key(&X_REQUEST_ID) {
        parts
            .headers
            .insert(X_REQUEST_ID.clone(), request_id.clone());
    }
    if let Some(c) = set_cookie {
        parts.headers.append(header::SET_COOKIE, c);
    }
}

/// HTTP/2 may split `cookie` into several fields; HTTP/1.1 needs one (RFC 9113 8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().count() > 1 {
        let joined = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join("; ");
        if let Ok(v) = HeaderValue::from_str(&joined) {
            headers.insert(header::COOKIE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("proxy", "http://evil"),
            ("x-secret", "s"),
            ("x-kept", "k"),
            ("host", "example.com"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["host", "x-kept"]);
    }

    #[test]
    fn keeps_upgrade_on_upgrades() {
        let mut h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "abc"),
        ]);
        assert!(is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "abc");
        assert!(!is_upgrade_request(&map(&[("upgrade", "websocket")])));
    }

    fn fwd(peer: &str, trusted: bool, client: &str) -> Forwarding<'static> {
        static REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
        Forwarding {
            peer: peer.parse().unwrap(),
            trusted,
            client: client.parse().unwrap(),
            client_header: Some(&REAL_IP),
            proto: "http",
        }
    }

    fn claims() -> HeaderMap {
        map(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "198.51.100.2, 10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "front.example.com"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("true-client-ip", "1.2.3.4"),
            ("cf-connecting-ip", "1.2.3.4"),
        ])
    }

    #[test]
    fn an_untrusted_peers_claims_are_replaced() {
        let mut h = claims();
        add_forwarded(
            &mut h,
            &fwd("198.51.100.7", false, "198.51.100.7"),
            Some("game.example.com"),
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "198.51.100.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "game.example.com");
        assert_eq!(h["x-real-ip"], "198.51.100.7");
        for gone in ["forwarded", "true-client-ip", "cf-connecting-ip"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn a_trusted_proxys_headers_are_kept_and_appended_to() {
        let mut h = claims();
        add_forwarded(
            &mut h,
            &fwd("10.0.0.9", true, "198.51.100.2"),
            Some("game.example.com"),
        );
        assert_eq!(
            h["x-forwarded-for"],
            "203.0.113.1, 198.51.100.2, 10.0.0.1, 10.0.0.9"
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "https", "the TLS proxy in front");
        assert_eq!(h["x-forwarded-host"], "front.example.com");
        assert_eq!(h["forwarded"], "for=1.2.3.4");
        assert_eq!(h["x-real-ip"], "198.51.100.2", "the computed client");

        // A proto that is not a scheme is the balancer's own.
        let mut h = map(&[("x-forwarded-proto", "javascript")]);
        add_forwarded(&mut h, &fwd("10.0.0.9", true, "10.0.0.9"), None);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert!(!h.contains_key("x-forwarded-host"));

        let mut h = HeaderMap::new();
        let mut f = fwd("::1", false, "::1");
        f.client_header = None;
        add_forwarded(&mut h, &f, None);
        assert_eq!(h["x-forwarded-for"], "::1");
        assert!(!h.contains_key("x-real-ip"));
    }

    #[test]
    fn request_ids() {
        let mut h = map(&[("x-request-id", "abc-123")]);
        assert_eq!(ensure_request_id(&mut h), "abc-123");
        let mut h = map(&[("x-request-id", "has space")]);
        let id = ensure_request_id(&mut h);
        assert_eq!(id.len(), 32);
        assert_eq!(h["x-request-id"], id);
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn the_response_head_keeps_the_backends_id_and_gets_the_cookie() {
        let resp = http::Response::builder()
            .status(101)
            .header("connection", "upgrade, x-hop")
            .header("upgrade", "websocket")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("x-request-id", "from-backend")
            .body(())
            .unwrap();
        let (mut parts, ()) = resp.into_parts();
        let id = HeaderValue::from_static("from-balancer");
        let cookie = HeaderValue::from_static("lb=t; Path=/");
        rewrite_response(&mut parts, true, &id, Some(cookie.clone()));
        let h = &parts.headers;
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert!(!h.contains_key("x-hop") && !h.contains_key("keep-alive"));
        assert_eq!(h["x-request-id"], "from-backend");
        assert_eq!(h["set-cookie"], cookie);
        // Not a tunnel: Upgrade goes too, and the balancer's id is added.
        let (mut parts, ()) = http::Response::builder()
            .header("upgrade", "websocket")
            .body(())
            .unwrap()
            .into_parts();
        rewrite_response(&mut parts, false, &id, None);
        assert!(!parts.headers.contains_key("upgrade"));
        assert_eq!(parts.headers["x-request-id"], "from-balancer");
        assert!(!parts.headers.contains_key("set-cookie"));
    }

    mod rewriting_property {
        use proptest::prelude::*;

        use super::*;

        fn name() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(vec![
                    "connection",
                    "keep-alive",
                    "te",
                    "trailer",
                    "transfer-encoding",
                    "upgrade",
                    "proxy-connection",
                    "proxy-authorization",
                    "proxy",
                    "x-secret",
                    "cookie",
                    "x-a",
                    "host",
                    "accept",
                ])
                .prop_map(String::from),
                "x-[a-z]{1,6}",
            ]
        }

        proptest! {
            /// Any request headers: after stripping, no hop-by-hop header,
            /// no `Proxy-*` and nothing `Connection` named is left; every
            /// other header is kept with all its values in order; an
            /// upgrade keeps its `Upgrade` and says `Connection: upgrade`.
            #[test]
            fn strip_keeps_end_to_end_headers_only(
                fields in prop::collection::vec((name(), "[a-z0-9 ,-]{0,12}"), 0..16),
                upgrade in any::<bool>(),
            ) {
                let mut h = HeaderMap::new();
                for (n, v) in &fields {
                    h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
                }
                let named: Vec<String> = h
                    .get_all(header::CONNECTION)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .map(|t| t.trim().to_ascii_lowercase())
                    .filter(|t| !t.is_empty())
                    .collect();
                let upgrade_value = h.get(header::UPGRADE).cloned();
                let before = h.clone();
                strip_hop_by_hop(&mut h, upgrade);
                let hop = |n: &str| {
                    HOP_BY_HOP.iter().any(|x| x.as_str() == n)
                        || n.starts_with("proxy-")
                        || n == "proxy"
                        || named.iter().any(|t| t == n)
                };
                for (n, _) in h.iter() {
                    let kept_for_upgrade = upgrade
                        && upgrade_value.is_some()
                        && (n == header::UPGRADE || n == header::CONNECTION);
                    prop_assert!(!hop(n.as_str()) || kept_for_upgrade, "{} survived", n);
                }
                for n in before.keys() {
                    if !hop(n.as_str()) {
                        let a: Vec<_> = before.get_all(n).iter().collect();
                        let b: Vec<_> = h.get_all(n).iter().collect();
                        prop_assert_eq!(a, b, "{} changed", n);
                    }
                }
                if let (true, Some(v)) = (upgrade, upgrade_value) {
                    prop_assert_eq!(h.get(header::UPGRADE), Some(&v));
                    prop_assert_eq!(h.get(header::CONNECTION).map(|v| v.as_bytes()), Some(&b"upgrade"[..]));
                }
            }
        }
    }
}
