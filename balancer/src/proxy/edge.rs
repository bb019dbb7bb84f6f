//! What a listener adds to every request and response it serves, beside
//! routing: the facts of the client connection for `X-Forwarded-*`
//! (scheme, port, the TLS server name), the `https://` redirect of a
//! plaintext listener, and HSTS on a TLS one. Built by the server per
//! listener; a reload applies it to new connections.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use super::body::{AccessLog, ProxyBody};
use crate::runtime::normalize_host;

pub static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub static X_FORWARDED_SNI: HeaderName = HeaderName::from_static("x-forwarded-sni");

/// Per-listener request and response settings.
#[derive(Debug, Clone)]
pub struct Edge {
    /// `X-Forwarded-Proto`: `http` or `https`.
    pub proto: &'static str,
    /// `X-Forwarded-Port`: the port the client connected to.
    pub port: Option<HeaderValue>,
    /// Plaintext listeners only: answer `308` to `https://`.
    pub redirect: Option<config::HttpsRedirect>,
    /// TLS listeners only: `Strict-Transport-Security` on every response.
    pub hsts: Option<HeaderValue>,
    /// TLS listeners only: pass the SNI name on as `X-Forwarded-Sni`.
    pub forward_sni: bool,
}

impl Default for Edge {
    fn default() -> Self {
        Self {
            proto: "http",
            port: None,
            redirect: None,
            hsts: None,
            forward_sni: false,
        }
    }
}

impl Edge {
    /// From a listener's config and the port it is bound to.
    pub fn new(listener: &config::ListenerConfig, port: u16) -> Self {
        let tls = listener.tls.as_ref();
        Self {
            proto: if tls.is_some() { "https" } else { "http" },
            port: Some(HeaderValue::from(port)),
            redirect: listener.https_redirect.clone(),
            hsts: tls
                .and_then(|t| t.hsts.as_deref())
                .and_then(|v| HeaderValue::from_str(v).ok()),
            forward_sni: tls.is_some_and(|t| t.forward_sni),
        }
    }

    /// Sets the headers that describe the client connection (after
    /// `X-Forwarded-For` and `-Proto`, which [`super::headers`] sets). A
    /// trusted proxy's own `X-Forwarded-Port` (digits) stands.
    pub fn add_connection_facts(&self, headers: &mut HeaderMap, sni: Option<&str>, trusted: bool) {
        let theirs = trusted
            && headers.get(&X_FORWARDED_PORT).is_some_and(|v| {
                !v.is_empty() && v.len() <= 5 && v.as_bytes().iter().all(u8::is_ascii_digit)
            });
        match &self.port {
            _ if theirs => {}
            Some(p) => {
                headers.insert(X_FORWARDED_PORT.clone(), p.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_PORT);
            }
        }
        // Never pass on a client's own claim.
        headers.remove(&X_FORWARDED_SNI);
        if self.forward_sni {
            if let Some(v) = sni.and_then(|s| HeaderValue::from_str(s).ok()) {
                headers.insert(X_FORWARDED_SNI.clone(), v);
            }
        }
    }

    /// Adds HSTS to a response the balancer sends on a TLS listener, unless
    /// the backend set its own.
    pub fn finish_response<B>(&self, resp: &mut Response<B>) {
        if let Some(h) = &self.hsts {
            resp.headers_mut()
                .entry(header::STRICT_TRANSPORT_SECURITY)
                .or_insert_with(|| h.clone());
        }
    }
}

/// The `Location` of the `https://` redirect for a request, or `None` when
/// the request names no usable host.
pub fn redirect_location(
    redirect: &config::HttpsRedirect,
    authority: Option<&str>,
    path_and_query: &str,
) -> Option<HeaderValue> {
    let host = normalize_host(authority?);
    let host_ok = !host.is_empty()
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        });
    if !host_ok {
        return None;
    }
    let port = if redirect.port == 443 {
        String::new()
    } else {
        format!(":{}", redirect.port)
    };
    // Origin-form targets start with `/`; anything else (`OPTIONS *`)
    // redirects to the root rather than gluing onto the host.
    let path = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        "/"
    };
    let path = ascii_target(path);
    HeaderValue::from_str(&format!("https://{host}{port}{path}")).ok()
}

/// A request target as a URI may be written: clients send UTF-8 in paths
/// and queries raw and `http` accepts it, but a `Location` is a
/// URI-reference (ASCII only), so those bytes are percent-encoded.
fn ascii_target(target: &str) -> std::borrow::Cow<'_, str> {
    if target.is_ascii() {
        return target.into();
    }
    let mut out = String::with_capacity(target.len() * 3);
    for b in target.bytes() {
        if b.is_ascii() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.into()
}

/// The `308 Permanent Redirect` (method and body kept by the client).
pub fn redirect_response(location: HeaderValue, mut log: AccessLog) -> Response<ProxyBody> {
    log.status = StatusCode::PERMANENT_REDIRECT;
    let mut resp = Response::new(ProxyBody::local("Use https://\n", Some(log)));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    let h = resp.headers_mut();
    h.insert(header::LOCATION, location);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(port: u16) -> config::HttpsRedirect {
        config::HttpsRedirect {
            port,
            except_path_prefixes: vec!["/.well-known/acme-challenge/".into()],
        }
    }

    #[test]
    fn redirect_keeps_host_path_and_query_and_drops_the_plaintext_port() {
        let r = redirect(443);
        assert_eq!(
            redirect_location(&r, Some("Game.Example.com:8080"), "/play?room=7").unwrap(),
            "https://game.example.com/play?room=7"
        );
        assert_eq!(
            redirect_location(&redirect(8443), Some("game.example.com"), "").unwrap(),
            "https://game.example.com:8443/"
        );
        assert_eq!(
            redirect_location(&r, Some("[::1]:80"), "/").unwrap(),
            "https://[::1]/"
        );
        assert!(redirect_location(&r, None, "/").is_none());
        // Found by fuzz/https_redirect: a target that is not origin-form.
        assert_eq!(
            redirect_location(&r, Some("k"), "?[").unwrap(),
            "https://k/"
        );
        assert_eq!(redirect_location(&r, Some("k"), "*").unwrap(), "https://k/");
        assert!(redirect_location(&r, Some("evil.com/x"), "/").is_none());
        assert!(redirect_location(&r, Some("a b"), "/").is_none());
        // Found by fuzz/https_redirect: UTF-8 in the target went into the
        // Location raw (not a URI, and not a visible-ASCII header value).
        let loc = redirect_location(&r, Some("k"), "/\u{180}?q=\u{e9}").unwrap();
        assert_eq!(loc.to_str().unwrap(), "https://k/%C6%80?q=%C3%A9");
    }

    proptest::proptest! {
        /// The fuzz target's invariant (fuzz/https_redirect), on every test run.
        #[test]
        fn any_host_and_target_redirect_to_https_on_the_same_authority_or_nowhere(
            host in ".{0,40}",
            target in ".{0,40}",
        ) {
            if let Some(loc) = redirect_location(&redirect(8443), Some(&host), &target) {
                let loc = loc.to_str().unwrap();
                proptest::prop_assert!(loc.starts_with("https://"));
                let authority = &loc["https://".len()..];
                let end = authority.find('/').unwrap_or(authority.len());
                proptest::prop_assert!(!authority[..end].contains(['@', '?', '#', '\\']), "{}", loc);
            }
        }
    }

    #[test]
    fn connection_facts_replace_what_the_client_sent() {
        let edge = Edge {
            proto: "https",
            port: Some(HeaderValue::from(443u16)),
            redirect: None,
            hsts: None,
            forward_sni: true,
        };
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_PORT, HeaderValue::from_static("1"));
        h.insert(&X_FORWARDED_SNI, HeaderValue::from_static("forged"));
        edge.add_connection_facts(&mut h, Some("game.example.com"), false);
        assert_eq!(h[&X_FORWARDED_PORT], "443");
        assert_eq!(h[&X_FORWARDED_SNI], "game.example.com");
        let off = Edge::default();
        off.add_connection_facts(&mut h, Some("game.example.com"), false);
        assert!(!h.contains_key(&X_FORWARDED_PORT));
        assert!(!h.contains_key(&X_FORWARDED_SNI));
    }

    #[test]
    fn hsts_is_added_unless_the_backend_set_it() {
        let edge = Edge {
            hsts: Some(HeaderValue::from_static("max-age=60")),
            ..Edge::default()
        };
        let mut resp = Response::new(());
        edge.finish_response(&mut resp);
        assert_eq!(
            resp.headers()[header::STRICT_TRANSPORT_SECURITY],
            "max-age=60"
        );
        let mut own = Response::new(());
        own.headers_mut().insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=1"),
        );
        edge.finish_response(&mut own);
        assert_eq!(
            own.headers()[header::STRICT_TRANSPORT_SECURITY],
            "max-age=1"
        );
    }
}
