//! The request keys of `policy = "hash"` (header, query parameter, cookie,
//! path segment) over any header value and any request target: no panic,
//! and a key is never empty, is borrowed from the very bytes it came from
//! (no copy, no decoding), and is what its kind says it is.
//!
//! Input: one byte picks the path segment, then `NAME\nVALUE\nTARGET`.

use balancer::select::key::{cookie, extract, path_segment, query_param};
use config::HashKey;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};

/// Whether `part` lies inside `whole` (borrowed from it, not equal by value).
fn inside(part: &[u8], whole: &[u8]) -> bool {
    let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
    p >= w && p + part.len() <= w + whole.len()
}

fn check_query(query: &str, name: &str) {
    if let Some(v) = query_param(query, name) {
        // A name without `=` has the empty value (no key, see `extract`).
        assert!(v.is_empty() || inside(v.as_bytes(), query.as_bytes()));
        assert!(!v.contains('&'));
        // The first pair called `name` carries it.
        let first = query
            .split('&')
            .find(|p| p.split_once('=').map_or(*p, |(k, _)| k) == name);
        assert_eq!(
            first.map(|p| p.split_once('=').map_or("", |(_, v)| v)),
            Some(v)
        );
    }
}

fn check_path_segment(path: &str, n: usize) {
    if let Some(s) = path_segment(path, n) {
        assert!(!s.is_empty() && !s.contains('/'));
        assert!(inside(s.as_bytes(), path.as_bytes()));
    }
}

/// One input: panics if an invariant does not hold.
pub fn check(data: &[u8]) {
    let Some((&n, data)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 64);
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let name = parts.next().unwrap_or_default();
    let value = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();

    // The pure helpers take any text, not only what http accepts.
    if let (Ok(name), Ok(target)) = (std::str::from_utf8(name), std::str::from_utf8(target)) {
        check_query(target, name);
        check_path_segment(target, n);
    }

    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    let Ok(value) = HeaderValue::from_bytes(value) else {
        return;
    };
    let mut headers = HeaderMap::new();
    // The key's own header, then the same value as a Cookie header.
    let header_name = HeaderName::from_bytes(name).ok();
    if let Some(h) = &header_name {
        headers.append(h.clone(), value.clone());
    }
    headers.append(http::header::COOKIE, value.clone());
    let name = String::from_utf8_lossy(name);

    let keys = [
        header_name.map(|h| HashKey::Header(h.as_str().to_owned())),
        Some(HashKey::Query(name.to_string())),
        Some(HashKey::Cookie(name.to_string())),
        Some(HashKey::PathSegment(n)),
    ];
    for key in keys.into_iter().flatten() {
        let Some(k) = extract(&key, &headers, &uri) else {
            continue;
        };
        assert!(!k.is_empty(), "an empty key for {key:?}");
        match &key {
            // The first value of the header, whole (a Cookie-named key
            // header has two values: the first is the key's own).
            HashKey::Header(_) => assert_eq!(k, value.as_bytes()),
            HashKey::Query(name) => {
                let query = uri.query().unwrap_or_default();
                assert!(inside(k, query.as_bytes()));
                check_query(query, name);
            }
            HashKey::Cookie(name) => {
                let v = headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .any(|v| inside(k, v.as_bytes()));
                assert!(v, "a cookie value not from a Cookie header");
                assert!(!k.contains(&b';'));
                assert!(!k.starts_with(b"\"") && !k.ends_with(b"\""));
                let _ = cookie(&headers, name);
            }
            HashKey::PathSegment(n) => {
                assert!(inside(k, uri.path().as_bytes()));
                check_path_segment(uri.path(), *n);
            }
        }
    }
}
