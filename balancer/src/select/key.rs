//! Request keys for `policy = "hash"`: pure functions that borrow the key
//! from the request (no allocation) and accept any input without panicking.

use config::HashKey;
use http::{HeaderMap, Uri};

/// The key's bytes in this request, or `None` when the request has none
/// (or it is empty).
pub fn extract<'a>(key: &HashKey, headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a [u8]> {
    let found = match key {
        HashKey::Header(name) => headers.get(name.as_str()).map(|v| v.as_bytes()),
        HashKey::Query(name) => query_param(uri.query()?, name).map(str::as_bytes),
        HashKey::Cookie(name) => cookie(headers, name).map(str::as_bytes),
        HashKey::PathSegment(n) => path_segment(uri.path(), *n).map(str::as_bytes),
    };
    found.filter(|k| !k.is_empty())
}

/// The first `name=value` in a query string; the value raw, not decoded.
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// The value of cookie `name` from the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

/// The `n`-th non-empty segment of a path, counting from 0 (`/room/42`: 0 is
/// `room`, 1 is `42`).
pub fn path_segment(path: &str, n: usize) -> Option<&str> {
    path.split('/').filter(|s| !s.is_empty()).nth(n)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn each_kind() {
        let h = headers(&[
            ("x-room", "lobby-7"),
            ("cookie", "a=1; sid=\"xyz\""),
            ("cookie", "room=r9"),
        ]);
        let uri: Uri = "/rooms/42/chat?sid=abc&room=&x".parse().unwrap();
        let get =
            |k: HashKey| extract(&k, &h, &uri).map(|b| String::from_utf8_lossy(b).into_owned());
        assert_eq!(
            get(HashKey::Header("x-room".into())).as_deref(),
            Some("lobby-7")
        );
        assert_eq!(get(HashKey::Header("x-none".into())), None);
        assert_eq!(get(HashKey::Query("sid".into())).as_deref(), Some("abc"));
        assert_eq!(
            get(HashKey::Query("room".into())),
            None,
            "empty value is no key"
        );
        assert_eq!(get(HashKey::Query("x".into())), None);
        assert_eq!(get(HashKey::Cookie("sid".into())).as_deref(), Some("xyz"));
        assert_eq!(get(HashKey::Cookie("room".into())).as_deref(), Some("r9"));
        assert_eq!(get(HashKey::Cookie("nope".into())), None);
        assert_eq!(get(HashKey::PathSegment(0)).as_deref(), Some("rooms"));
        assert_eq!(get(HashKey::PathSegment(1)).as_deref(), Some("42"));
        assert_eq!(get(HashKey::PathSegment(3)), None);
        let root: Uri = "/".parse().unwrap();
        assert_eq!(extract(&HashKey::Query("sid".into()), &h, &root), None);
    }

    proptest! {
        #[test]
        fn no_input_panics(query in ".{0,80}", cookie_text in "[ -~]{0,80}", path in "[ -~]{0,80}", n in 0usize..70, name in "[a-z=;& ]{0,6}") {
            let _ = query_param(&query, &name);
            let _ = path_segment(&path, n);
            if let Ok(v) = http::HeaderValue::from_str(&cookie_text) {
                let mut h = HeaderMap::new();
                h.insert(http::header::COOKIE, v);
                let _ = cookie(&h, &name);
            }
        }
    }
}
