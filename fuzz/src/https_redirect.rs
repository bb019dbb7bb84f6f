//! The `https://` redirect built from a client's Host header and path: any
//! bytes, no panic, and a Location (if any) is https:// with nothing that
//! could split the header or point elsewhere.

use balancer::proxy::edge::redirect_location;

/// One input: panics if an invariant does not hold.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (host, path) = text.split_once('\n').unwrap_or((text, "/"));
    let redirect = config::HttpsRedirect {
        port: 8443,
        except_path_prefixes: Vec::new(),
    };
    if let Some(loc) = redirect_location(&redirect, Some(host), path) {
        let loc = loc.to_str().unwrap();
        assert!(loc.starts_with("https://"), "{loc}");
        let authority = &loc["https://".len()..];
        let end = authority.find('/').unwrap_or(authority.len());
        assert!(!authority[..end].contains(['@', '?', '#', '\\']), "{loc}");
    }
}
