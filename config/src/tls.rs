//! TLS settings: a listener that terminates TLS (`[[listener.certificate]]`,
//! `[listener.tls]`), a plaintext listener that redirects to `https://`
//! (`[listener.https_redirect]`) and TLS to a pool's backends
//! (`[pool.tls]`).
//!
//! Only the shape and the values are checked here: file paths are paths.
//! The balancer reads and verifies the files themselves (PEM, key match,
//! names, expiry) when it starts, on every reload and in `balancer check`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::{duration, ConfigError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    pub min_version: Option<String>,
    pub http2: Option<bool>,
    pub unknown_name: Option<String>,
    pub session_tickets: Option<bool>,
    pub ticket_key_file: Option<String>,
    pub ticket_lifetime: Option<String>,
    pub session_cache: Option<i64>,
    pub handshake_timeout: Option<String>,
    pub hsts: Option<String>,
    pub forward_sni: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpsRedirect {
    pub port: Option<i64>,
    pub except_path_prefixes: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoolTls {
    pub ca: Option<String>,
    pub server_name: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// One certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// What a listener does with a client whose SNI names none of its
/// certificates, or that sends no SNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnknownName {
    /// Serve the first `[[listener.certificate]]`.
    Default,
    /// Refuse the handshake (alert `unrecognized_name`).
    Refuse,
}

/// A TLS listener's settings. Defaults are in the validator below and in
/// docs/config.md; keep the two in step.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenerTls {
    /// In file order; the first is the default certificate.
    pub certificates: Vec<CertificateFiles>,
    pub unknown_name: UnknownName,
    pub min_version: TlsVersion,
    /// Offer `h2` in ALPN (always `http/1.1`).
    pub http2: bool,
    /// TLS session tickets (TLS 1.2 and 1.3 resumption without server state).
    pub session_tickets: bool,
    /// Ticket keys shared by every balancer that reads the same file; `None`:
    /// random keys per process, rotated every `ticket_lifetime`.
    pub ticket_key_file: Option<PathBuf>,
    pub ticket_lifetime: Duration,
    /// TLS 1.2 session-id cache entries (0: off).
    pub session_cache: usize,
    /// A client must finish its handshake within this long.
    pub handshake_timeout: Duration,
    /// `Strict-Transport-Security` value added to every response; `None`: off.
    pub hsts: Option<String>,
    /// Send the SNI name to backends as `X-Forwarded-Sni`.
    pub forward_sni: bool,
}

/// `[listener.https_redirect]`: a plaintext listener answering `308` to
/// `https://HOST[:port]/path?query`, except under some path prefixes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpsRedirect {
    /// Port in the redirect (443 is left out of the URL).
    pub port: u16,
    /// Requests under these prefixes are routed as usual (ACME challenges).
    pub except_path_prefixes: Vec<String>,
}

impl HttpsRedirect {
    /// Whether a request for `path` is redirected.
    pub fn redirects(&self, path: &str) -> bool {
        !self
            .except_path_prefixes
            .iter()
            .any(|p| path.starts_with(p.as_str()))
    }
}

/// `[pool.tls]`: the balancer is a TLS client of the pool's backends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolTls {
    /// PEM bundle of the CAs that sign the backends; `None`: the system roots.
    pub ca: Option<PathBuf>,
    /// Name sent in SNI and verified in the backend's certificate; `None`:
    /// the backend's IP address (verified against an IP SAN).
    pub server_name: Option<String>,
    /// Client certificate for mutual TLS.
    pub client_certificate: Option<CertificateFiles>,
}

pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_TICKET_LIFETIME: Duration = Duration::from_secs(6 * 3600);
pub const DEFAULT_SESSION_CACHE: usize = 10_000;

fn path_of(e: &mut Vec<ConfigError>, path: &str, text: &str) -> Option<PathBuf> {
    if text.trim().is_empty() {
        e.push(ConfigError::new(path, "empty file path"));
        return None;
    }
    Some(PathBuf::from(text))
}

/// Validates a listener's `[[listener.certificate]]` and `[listener.tls]`.
pub(crate) fn listener_tls(
    e: &mut Vec<ConfigError>,
    path: &str,
    certificates: Vec<toml::Value>,
    raw: Option<RawListenerTls>,
) -> Option<ListenerTls> {
    let raw_certs: Vec<(usize, RawCertificate)> = crate::raw::elements(
        &format!("{path}.certificate"),
        toml::Value::Array(certificates),
        e,
    );
    let had_certs = !raw_certs.is_empty();
    let mut files = Vec::new();
    for (i, c) in raw_certs {
        let cpath = format!("{path}.certificate[{i}]");
        let cert = path_of(e, &format!("{cpath}.cert"), &c.cert);
        let key = path_of(e, &format!("{cpath}.key"), &c.key);
        if let (Some(cert), Some(key)) = (cert, key) {
            files.push(CertificateFiles { cert, key });
        }
    }
    if !had_certs {
        if raw.is_some() {
            e.push(ConfigError::new(
                format!("{path}.tls"),
                "TLS settings without a certificate: add at least one [[listener.certificate]]",
            ));
        }
        return None;
    }
    let raw = raw.unwrap_or(RawListenerTls {
        min_version: None,
        http2: None,
        unknown_name: None,
        session_tickets: None,
        ticket_key_file: None,
        ticket_lifetime: None,
        session_cache: None,
        handshake_timeout: None,
        hsts: None,
        forward_sni: None,
    });
    let tpath = format!("{path}.tls");
    let min_version = match raw.min_version.as_deref() {
        None | Some("1.2") => TlsVersion::V1_2,
        Some("1.3") => TlsVersion::V1_3,
        Some(other) => {
            e.push(ConfigError::new(
                format!("{tpath}.min_version"),
                format!("unknown TLS version {other:?} (expected \"1.2\" or \"1.3\")"),
            ));
            TlsVersion::V1_2
        }
    };
    let unknown_name = match raw.unknown_name.as_deref() {
        None | Some("default") => UnknownName::Default,
        Some("refuse") => UnknownName::Refuse,
        Some(other) => {
            e.push(ConfigError::new(
                format!("{tpath}.unknown_name"),
                format!("unknown value {other:?} (expected \"default\" or \"refuse\")"),
            ));
            UnknownName::Default
        }
    };
    let mut duration_key = |key: &str, value: Option<String>, default: Duration| match value {
        None => default,
        Some(v) => match duration::parse(&v) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                e.push(ConfigError::new(
                    format!("{tpath}.{key}"),
                    "must be longer than zero",
                ));
                default
            }
            Err(msg) => {
                e.push(ConfigError::new(format!("{tpath}.{key}"), msg));
                default
            }
        },
    };
    let handshake_timeout = duration_key(
        "handshake_timeout",
        raw.handshake_timeout,
        DEFAULT_HANDSHAKE_TIMEOUT,
    );
    let ticket_lifetime = duration_key(
        "ticket_lifetime",
        raw.ticket_lifetime,
        DEFAULT_TICKET_LIFETIME,
    );
    let session_cache = match raw.session_cache {
        None => DEFAULT_SESSION_CACHE,
        Some(n) if (0..=10_000_000).contains(&n) => n as usize,
        Some(n) => {
            e.push(ConfigError::new(
                format!("{tpath}.session_cache"),
                format!("{n} is out of range (0 to 10000000)"),
            ));
            DEFAULT_SESSION_CACHE
        }
    };
    let hsts = raw.hsts.and_then(|v| {
        if valid_hsts(&v) {
            Some(v)
        } else {
            e.push(ConfigError::new(
                format!("{tpath}.hsts"),
                format!("invalid Strict-Transport-Security value {v:?} (expected e.g. \"max-age=31536000; includeSubDomains\")"),
            ));
            None
        }
    });
    let session_tickets = raw.session_tickets.unwrap_or(true);
    let ticket_key_file = raw
        .ticket_key_file
        .and_then(|f| path_of(e, &format!("{tpath}.ticket_key_file"), &f));
    if ticket_key_file.is_some() && !session_tickets {
        e.push(ConfigError::new(
            format!("{tpath}.ticket_key_file"),
            "set, but session_tickets = false",
        ));
    }
    Some(ListenerTls {
        certificates: files,
        unknown_name,
        min_version,
        http2: raw.http2.unwrap_or(true),
        session_tickets,
        ticket_key_file,
        ticket_lifetime,
        session_cache,
        handshake_timeout,
        hsts,
        forward_sni: raw.forward_sni.unwrap_or(false),
    })
}

/// `max-age=N` first, then `;`-separated directives, all visible ASCII.
fn valid_hsts(v: &str) -> bool {
    if !v.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return false;
    }
    let mut parts = v.split(';').map(str::trim);
    let first_ok = parts
        .next()
        .and_then(|p| p.strip_prefix("max-age="))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    first_ok && parts.all(|p| !p.is_empty())
}

pub(crate) fn https_redirect(
    e: &mut Vec<ConfigError>,
    path: &str,
    raw: RawHttpsRedirect,
) -> HttpsRedirect {
    let port = match raw.port {
        None => 443,
        Some(n) if (1..=65_535).contains(&n) => n as u16,
        Some(n) => {
            e.push(ConfigError::new(
                format!("{path}.port"),
                format!("{n} is out of range (1 to 65535)"),
            ));
            443
        }
    };
    let mut except = Vec::new();
    for (i, p) in raw
        .except_path_prefixes
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        if p.starts_with('/') {
            except.push(p);
        } else {
            e.push(ConfigError::new(
                format!("{path}.except_path_prefixes[{i}]"),
                format!("{p:?} must start with /"),
            ));
        }
    }
    HttpsRedirect {
        port,
        except_path_prefixes: except,
    }
}

pub(crate) fn pool_tls(e: &mut Vec<ConfigError>, path: &str, raw: RawPoolTls) -> PoolTls {
    let ca = raw.ca.and_then(|c| path_of(e, &format!("{path}.ca"), &c));
    let server_name = raw.server_name.and_then(|n| {
        let ok = !n.is_empty()
            && n.len() <= 253
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':'));
        if ok {
            Some(n.to_ascii_lowercase())
        } else {
            e.push(ConfigError::new(
                format!("{path}.server_name"),
                format!("invalid server name {n:?} (a DNS name or an IP address)"),
            ));
            None
        }
    });
    let client_certificate = match (raw.cert, raw.key) {
        (None, None) => None,
        (Some(c), Some(k)) => {
            let cert = path_of(e, &format!("{path}.cert"), &c);
            let key = path_of(e, &format!("{path}.key"), &k);
            cert.zip(key)
                .map(|(cert, key)| CertificateFiles { cert, key })
        }
        (Some(_), None) => {
            e.push(ConfigError::new(
                format!("{path}.key"),
                "a client certificate needs its key",
            ));
            None
        }
        (None, Some(_)) => {
            e.push(ConfigError::new(
                format!("{path}.cert"),
                "a client key needs its certificate",
            ));
            None
        }
    };
    PoolTls {
        ca,
        server_name,
        client_certificate,
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::assert_has;

    fn errors(text: &str) -> Vec<String> {
        match crate::parse(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    const POOL: &str = "[[pool]]\nname = \"p\"\n[[pool.backend]]\nid = \"a\"\naddress = \"127.0.0.1:1\"\n[[route]]\nlistener = \"l\"\npool = \"p\"\n";

    #[test]
    fn a_listener_with_certificates_terminates_tls_with_defaults() {
        let c = crate::parse(&format!(
            "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n[[listener.certificate]]\ncert = \"/a.pem\"\nkey = \"/a.key\"\n[[listener.certificate]]\ncert = \"/b.pem\"\nkey = \"/b.key\"\n{POOL}"
        ))
        .unwrap();
        let tls = c.listeners[0].tls.as_ref().unwrap();
        assert_eq!(tls.certificates.len(), 2);
        assert_eq!(tls.certificates[0].cert, std::path::PathBuf::from("/a.pem"));
        assert_eq!(tls.min_version, crate::TlsVersion::V1_2);
        assert_eq!(tls.unknown_name, crate::UnknownName::Default);
        assert!(tls.http2 && tls.session_tickets && !tls.forward_sni);
        assert_eq!(tls.handshake_timeout, super::DEFAULT_HANDSHAKE_TIMEOUT);
        assert_eq!(tls.hsts, None);
    }

    #[test]
    fn bad_tls_settings_are_all_reported_with_their_paths() {
        let errs = errors(&format!(
            "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n[[listener.certificate]]\ncert = \"\"\nkey = \"/a.key\"\n[listener.tls]\nmin_version = \"1.1\"\nunknown_name = \"drop\"\nhsts = \"forever\"\nhandshake_timeout = \"0s\"\nsession_cache = -1\n{POOL}"
        ));
        let expected = [
            "listener[0].certificate[0].cert: empty file path",
            "listener[0].tls.min_version: unknown TLS version",
            "listener[0].tls.unknown_name: unknown value",
            "listener[0].tls.hsts: invalid Strict-Transport-Security",
            "listener[0].tls.handshake_timeout: must be longer than zero",
            "listener[0].tls.session_cache: -1 is out of range",
        ];
        assert_has(&errs, &expected);
    }

    #[test]
    fn tls_settings_need_a_certificate_and_redirects_need_plaintext() {
        let errs = errors(&format!(
            "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n[listener.tls]\nhttp2 = false\n[[listener]]\nname = \"m\"\naddress = \"127.0.0.1:0\"\n[[listener.certificate]]\ncert = \"/a.pem\"\nkey = \"/a.key\"\n[listener.https_redirect]\n{POOL}"
        ));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("listener[0].tls: TLS settings without a certificate")),
            "{errs:#?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("listener[1].https_redirect: a TLS listener")),
            "{errs:#?}"
        );
    }

    #[test]
    fn redirect_and_pool_tls_parse() {
        let c = crate::parse("[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n[listener.https_redirect]\nport = 8443\nexcept_path_prefixes = [\"/.well-known/acme-challenge/\"]\n[[pool]]\nname = \"p\"\n[pool.tls]\nca = \"/ca.pem\"\nserver_name = \"Backend.Internal\"\n[[pool.backend]]\nid = \"a\"\naddress = \"127.0.0.1:1\"\n[[route]]\nlistener = \"l\"\npool = \"p\"\n").unwrap();
        let r = c.listeners[0].https_redirect.as_ref().unwrap();
        assert_eq!(r.port, 8443);
        assert!(r.redirects("/play"));
        assert!(!r.redirects("/.well-known/acme-challenge/token"));
        let t = c.pools[0].tls.as_ref().unwrap();
        assert_eq!(t.server_name.as_deref(), Some("backend.internal"));
        assert_eq!(t.ca, Some(std::path::PathBuf::from("/ca.pem")));
        let errs = errors("[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n[listener.https_redirect]\nport = 0\nexcept_path_prefixes = [\"acme\"]\n[[pool]]\nname = \"p\"\n[pool.tls]\ncert = \"/c.pem\"\n[[pool.backend]]\nid = \"a\"\naddress = \"127.0.0.1:1\"\n[[route]]\nlistener = \"l\"\npool = \"p\"\n");
        assert_has(
            &errs,
            &[
                "listener[0].https_redirect.port: 0 is out of range",
                "listener[0].https_redirect.except_path_prefixes[0]: \"acme\" must start with /",
                "pool[0].tls.key: a client certificate needs its key",
            ],
        );
    }

    #[test]
    fn hsts_values() {
        assert!(super::valid_hsts("max-age=31536000"));
        assert!(super::valid_hsts(
            "max-age=63072000; includeSubDomains; preload"
        ));
        assert!(!super::valid_hsts("includeSubDomains"));
        assert!(!super::valid_hsts("max-age=abc"));
        assert!(!super::valid_hsts("max-age=1;\r\nX: y"));
    }
}
