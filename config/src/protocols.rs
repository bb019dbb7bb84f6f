//! Protocols beside HTTP that the balancer lets through or speaks itself:
//! the upgrades a route allows (`route.upgrades`) and the PROXY protocol
//! header a pool sends its backends (`pool.send_proxy_protocol`).

use crate::ConfigError;

/// `route.upgrades` when a route leaves it out: WebSocket only.
pub const DEFAULT_UPGRADES: &[&str] = &["websocket"];

/// Upgrade protocols no route may allow, and why: each would hand the
/// client a connection that speaks HTTP to the backend past the
/// balancer's routing, header rewriting and limits.
const NEVER_UPGRADES: [(&str, &str); 3] = [
    (
        "h2c",
        "HTTP/2 over an upgraded connection would reach the backend past the balancer's routing and header rules; clients get HTTP/2 from the balancer itself",
    ),
    (
        "h2",
        "\"h2\" is negotiated by TLS ALPN only and may not appear in Upgrade (RFC 9113 3.2)",
    ),
    (
        "http",
        "an upgrade to another HTTP version would reach the backend past the balancer's routing and header rules",
    ),
];

/// `pool.send_proxy_protocol`: the PROXY protocol version written at the
/// start of every new connection to the pool's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyVersion {
    /// The text line (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
}

impl ProxyVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }
}

/// A route's `upgrades`: lower-case protocol names (RFC 9110 tokens, no
/// `/version`), no duplicates, none of [`NEVER_UPGRADES`]. `None` in the
/// file is [`DEFAULT_UPGRADES`]; an empty list turns upgrades off.
pub(crate) fn upgrades_from(
    e: &mut Vec<ConfigError>,
    path: &str,
    raw: Option<Vec<String>>,
) -> Vec<String> {
    let Some(raw) = raw else {
        return DEFAULT_UPGRADES.iter().map(|s| s.to_string()).collect();
    };
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for (i, name) in raw.iter().enumerate() {
        let key = format!("{path}[{i}]");
        let lower = name.to_ascii_lowercase();
        if lower.len() > 64 || !is_token(&lower) {
            e.push(ConfigError::new(
                key,
                format!(
                    "{name:?} is not a protocol name (1 to 64 token characters, no '/version', e.g. \"websocket\")"
                ),
            ));
            continue;
        }
        if let Some((_, why)) = NEVER_UPGRADES.iter().find(|(n, _)| *n == lower) {
            e.push(ConfigError::new(
                key,
                format!("{name:?} can never be allowed: {why}"),
            ));
            continue;
        }
        if out.contains(&lower) {
            e.push(ConfigError::new(key, format!("{name:?} is listed twice")));
            continue;
        }
        out.push(lower);
    }
    out
}

/// A pool's `send_proxy_protocol`: `"v1"`, `"v2"` or `"off"` (the default).
pub(crate) fn send_proxy_from(
    e: &mut Vec<ConfigError>,
    path: &str,
    raw: Option<&str>,
) -> Option<ProxyVersion> {
    match raw {
        None | Some("off") => None,
        Some("v1") => Some(ProxyVersion::V1),
        Some("v2") => Some(ProxyVersion::V2),
        Some(other) => {
            e.push(ConfigError::new(
                path,
                format!(
                    "unknown PROXY protocol version {other:?} (expected \"v2\", \"v1\" or \"off\")"
                ),
            ));
            None
        }
    }
}

/// RFC 9110 token characters.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use crate::parse;
    use crate::testing::assert_exactly;

    fn file(route: &str, pool: &str) -> String {
        format!(
            "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\
             [[pool]]\nname = \"p\"\n{pool}\n\
             [[route]]\nlistener = \"l\"\npool = \"p\"\n{route}\n"
        )
    }

    use crate::testing::rejected as errors;

    #[test]
    fn upgrades_default_to_websocket_and_are_lower_cased() {
        let c = parse(&file("", "")).unwrap();
        assert_eq!(c.routes[0].upgrades, ["websocket"]);
        let c = parse(&file("upgrades = [\"WebSocket\", \"mygame.v2\"]", "")).unwrap();
        assert_eq!(c.routes[0].upgrades, ["websocket", "mygame.v2"]);
        let c = parse(&file("upgrades = []", "")).unwrap();
        assert!(c.routes[0].upgrades.is_empty());
    }

    #[test]
    fn h2c_and_bad_upgrade_tokens_are_refused_with_their_path() {
        let errs = errors(&file(
            "upgrades = [\"websocket\", \"h2c\", \"H2\", \"HTTP\", \"my game\", \"irc/6.9\", \"\", \"Websocket\"]",
            "",
        ));
        let expect = [
            "route[0].upgrades[1]: \"h2c\" can never be allowed: HTTP/2",
            "route[0].upgrades[2]: \"H2\" can never be allowed",
            "route[0].upgrades[3]: \"HTTP\" can never be allowed",
            "route[0].upgrades[4]: \"my game\" is not a protocol name",
            "route[0].upgrades[5]: \"irc/6.9\" is not a protocol name",
            "route[0].upgrades[6]: \"\" is not a protocol name",
            "route[0].upgrades[7]: \"Websocket\" is listed twice",
        ];
        assert_exactly(&errs, &expect);
        let errs = errors(&file("upgrades = \"websocket\"", ""));
        assert!(
            errs[0].starts_with("route[0].upgrades: invalid type"),
            "{errs:?}"
        );
    }

    #[test]
    fn send_proxy_protocol_is_off_by_default() {
        use crate::ProxyVersion;
        assert_eq!(
            parse(&file("", "")).unwrap().pools[0].send_proxy_protocol,
            None
        );
        for (text, want) in [
            ("v2", Some(ProxyVersion::V2)),
            ("v1", Some(ProxyVersion::V1)),
            ("off", None),
        ] {
            let c = parse(&file("", &format!("send_proxy_protocol = {text:?}"))).unwrap();
            assert_eq!(c.pools[0].send_proxy_protocol, want, "{text}");
        }
        let errs = errors(&file("", "send_proxy_protocol = \"v3\""));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0]
                .starts_with("pool[0].send_proxy_protocol: unknown PROXY protocol version \"v3\""),
            "{errs:?}"
        );
    }
}
