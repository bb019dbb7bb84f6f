//! TLS termination for a listener (rustls through tokio-rustls).
//!
//! ```text
//! accept ─▶ peek 1 byte: not a TLS record? plaintext HTTP gets a 400 (nginx's 497), else close
//!        ─▶ ClientHello (LazyConfigAcceptor): SNI ─▶ CertSet::pick (exact, wildcard, default/refuse)
//!        ─▶ handshake with the listener's ServerConfig       all within handshake_timeout
//!        ─▶ TlsFacts (version, ALPN, SNI, resumed) ─▶ metrics ─▶ served like a plaintext socket
//! ```
//!
//! One [`TlsListener`] per TLS listener holds one rustls `ServerConfig`
//! (ALPN, versions, session cache and ticketer), shared by every worker,
//! so sessions resume whichever worker accepts. Its certificates sit
//! behind an `ArcSwap` that the resolver reads per handshake:
//! [`TlsListener::refresh`] swaps in new files (certbot renewal, a
//! Kubernetes secret) without touching the config, the session state or
//! any open connection. A bad new file is refused and the old certificate
//! keeps serving.

mod tickets;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use config::{ListenerTls, TlsVersion, UnknownName};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

pub use tickets::{KeyFileTicketer, TicketKeys};

use crate::certs::{self, CertError, LoadedCert};
use crate::metrics::TlsMetrics;

/// What a TLS listener serves, chosen by SNI.
#[derive(Debug)]
pub struct CertSet {
    pub certs: Vec<LoadedCert>,
    /// Lower-case DNS name -> index.
    exact: HashMap<String, usize>,
    /// `example.com` for `*.example.com` -> index.
    wildcard: HashMap<String, usize>,
    /// For no SNI or an unknown name: the first certificate, or refuse.
    default: Option<usize>,
}

impl CertSet {
    /// Earlier certificates win a name both claim.
    pub fn new(certs: Vec<LoadedCert>, unknown: UnknownName) -> Self {
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for (i, c) in certs.iter().enumerate() {
            for name in &c.info.names {
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_string()).or_insert(i),
                    None => exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        let default = (unknown == UnknownName::Default && !certs.is_empty()).then_some(0);
        Self {
            certs,
            exact,
            wildcard,
            default,
        }
    }

    /// The certificate for a client that sent `sni` (rustls hands it over
    /// lower-case, without a trailing dot).
    pub fn pick(&self, sni: Option<&str>) -> Option<&LoadedCert> {
        let i = sni
            .and_then(|name| {
                let name = name.to_ascii_lowercase();
                self.exact.get(&name).copied().or_else(|| {
                    // A wildcard covers exactly one label.
                    let (_, parent) = name.split_once('.')?;
                    self.wildcard.get(parent).copied()
                })
            })
            .or(self.default)?;
        self.certs.get(i)
    }
}

/// rustls asks this for the certificate of each handshake.
#[derive(Debug)]
struct Resolver(Arc<ArcSwap<CertSet>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0
            .load()
            .pick(hello.server_name())
            .map(|c| Arc::clone(&c.key))
    }
}

/// What the handshake settled, for `X-Forwarded-*`, logs and metrics.
#[derive(Debug, Clone, Default)]
pub struct TlsFacts {
    pub sni: Option<Arc<str>>,
    pub version: &'static str,
    pub alpn: &'static str,
    pub resumed: bool,
}

/// Why a handshake did not complete (a `balancer_tls_handshakes_total` outcome).
#[derive(Debug)]
pub struct HandshakeFailed {
    pub outcome: &'static str,
    pub error: Option<io::Error>,
}

/// One TLS listener: its settings, rustls config and certificates.
#[derive(Debug)]
pub struct TlsListener {
    /// The settings it was built from (a reload with the same ones keeps it).
    pub settings: ListenerTls,
    server: Arc<ServerConfig>,
    certs: Arc<ArcSwap<CertSet>>,
    tickets: Option<Arc<KeyFileTicketer>>,
    /// Fingerprint of the ticket key file in force.
    tickets_seen: std::sync::Mutex<Option<[u8; 32]>>,
    metrics: Option<TlsMetrics>,
}

/// What [`TlsListener::refresh`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Refresh {
    Unchanged,
    /// New files in force; the certificate files that changed.
    Reloaded(Vec<String>),
    /// A file changed but is bad: every error; the old files keep serving.
    Refused(Vec<String>),
}

fn load_all(settings: &ListenerTls) -> Result<Vec<LoadedCert>, Vec<CertError>> {
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for files in &settings.certificates {
        match certs::load(files) {
            Ok(c) => loaded.push(c),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(errors)
    }
}

fn file_hash(path: &std::path::Path) -> Result<[u8; 32], String> {
    use sha2::Digest;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    Ok(sha2::Sha256::digest(&bytes).into())
}

impl TlsListener {
    /// Loads every certificate and builds the rustls config. `Err` holds
    /// every problem, each naming its file.
    pub fn new(
        listener: &str,
        settings: &ListenerTls,
        metrics: Option<&crate::metrics::Metrics>,
    ) -> Result<Self, Vec<String>> {
        let loaded = load_all(settings).map_err(|es| {
            es.iter()
                .map(|e| format!("listener {listener:?}: {e}"))
                .collect::<Vec<_>>()
        })?;
        let tickets = match &settings.ticket_key_file {
            Some(path) if settings.session_tickets => {
                let keys = TicketKeys::read(path)
                    .map_err(|e| vec![format!("listener {listener:?}: {}: {e}", path.display())])?;
                Some(KeyFileTicketer::new(keys, settings.ticket_lifetime))
            }
            _ => None,
        };
        let tickets_seen = settings
            .ticket_key_file
            .as_deref()
            .and_then(|p| file_hash(p).ok());
        let certs = Arc::new(ArcSwap::from_pointee(CertSet::new(
            loaded,
            settings.unknown_name,
        )));
        let server = server_config(settings, &certs, tickets.clone())
            .map_err(|e| vec![format!("listener {listener:?}: {e}")])?;
        Ok(Self {
            settings: settings.clone(),
            server: Arc::new(server),
            certs,
            tickets,
            tickets_seen: std::sync::Mutex::new(tickets_seen),
            metrics: metrics.map(|m| m.tls(listener)),
        })
    }

    /// The certificates in force.
    pub fn certificates(&self) -> Arc<CertSet> {
        self.certs.load_full()
    }

    /// Re-reads the certificate, key and ticket key files; swaps in the
    /// ones that changed if all of them load, else keeps the old ones.
    pub fn refresh(&self) -> Refresh {
        let current = self.certs.load_full();
        let mut changed = Vec::new();
        let mut errors = Vec::new();
        for (i, files) in self.settings.certificates.iter().enumerate() {
            let before = current.certs.get(i).map(|c| c.fingerprint);
            match certs::fingerprint(files) {
                Ok(f) if Some(f) == before => {}
                Ok(_) => changed.push(i),
                Err(e) => errors.push(e.to_string()),
            }
        }
        let ticket_change = self.refresh_tickets(&mut errors);
        if !errors.is_empty() {
            return Refresh::Refused(errors);
        }
        if changed.is_empty() {
            return if ticket_change {
                Refresh::Reloaded(Vec::new())
            } else {
                Refresh::Unchanged
            };
        }
        let mut next = current.certs.clone();
        for &i in &changed {
            match certs::load(&self.settings.certificates[i]) {
                Ok(c) => next[i] = c,
                Err(e) => errors.push(e.to_string()),
            }
        }
        if !errors.is_empty() {
            return Refresh::Refused(errors);
        }
        let names = changed
            .iter()
            .map(|&i| self.settings.certificates[i].cert.display().to_string())
            .collect();
        self.certs
            .store(Arc::new(CertSet::new(next, self.settings.unknown_name)));
        Refresh::Reloaded(names)
    }

    /// Reloads the ticket keys if their file changed; `true` if it did.
    fn refresh_tickets(&self, errors: &mut Vec<String>) -> bool {
        let (Some(path), Some(ticketer)) = (&self.settings.ticket_key_file, &self.tickets) else {
            return false;
        };
        let Ok(mut seen) = self.tickets_seen.lock() else {
            return false;
        };
        match file_hash(path) {
            Ok(h) if Some(h) == *seen => false,
            Ok(h) => match TicketKeys::read(path) {
                Ok(keys) => {
                    ticketer.replace(keys);
                    *seen = Some(h);
                    true
                }
                Err(e) => {
                    errors.push(format!("{}: {e}", path.display()));
                    false
                }
            },
            Err(e) => {
                errors.push(format!("{}: {e}", path.display()));
                false
            }
        }
    }

    /// Runs the server side of a handshake on an accepted socket, within
    /// `handshake_timeout`, and counts its outcome.
    pub async fn handshake(
        &self,
        stream: TcpStream,
    ) -> Result<(TlsStream<TcpStream>, TlsFacts), HandshakeFailed> {
        let start = Instant::now();
        let r = tokio::time::timeout(self.settings.handshake_timeout, self.run_handshake(stream))
            .await
            .unwrap_or(Err(HandshakeFailed {
                outcome: "timeout",
                error: None,
            }));
        if let Some(m) = &self.metrics {
            match &r {
                Ok((_, f)) => m.completed(f.version, f.alpn, f.resumed, start.elapsed()),
                Err(f) => m.outcome(f.outcome),
            }
        }
        r
    }

    async fn run_handshake(
        &self,
        mut stream: TcpStream,
    ) -> Result<(TlsStream<TcpStream>, TlsFacts), HandshakeFailed> {
        let fail = |outcome, error| HandshakeFailed { outcome, error };
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(0) => return Err(fail("eof", None)),
            Ok(_) => {}
            Err(e) => return Err(fail("eof", Some(e))),
        }
        // A TLS record starts with its content type: 22 for a handshake.
        if first[0] != 0x16 {
            if first[0].is_ascii_uppercase() {
                // Someone typed http:// for an https:// port.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    stream.write_all(PLAINTEXT_ANSWER).await?;
                    stream.shutdown().await
                })
                .await;
                return Err(fail("plaintext_http", None));
            }
            return Err(fail("not_tls", None));
        }
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
            .await
            .map_err(|e| fail(classify(&e), Some(e)))?;
        let sni: Option<Arc<str>> = start.client_hello().server_name().map(Arc::from);
        let known = self.certs.load().pick(sni.as_deref()).is_some();
        let tls = start
            .into_stream(Arc::clone(&self.server))
            .await
            .map_err(|e| {
                let outcome = if known { classify(&e) } else { "unknown_name" };
                fail(outcome, Some(e))
            })?;
        let (_, conn) = tls.get_ref();
        let facts = TlsFacts {
            sni,
            version: match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
                _ => "1.2",
            },
            alpn: match conn.alpn_protocol() {
                Some(b"h2") => "h2",
                Some(b"http/1.1") => "http/1.1",
                _ => "none",
            },
            resumed: matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed)),
        };
        Ok((tls, facts))
    }
}

/// What a plaintext HTTP request to a TLS port gets before the close.
const PLAINTEXT_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 48\r\nConnection: close\r\n\r\nThis port speaks TLS: use https:// (or wss://).\n";

/// A failed handshake's outcome label, from the error tokio-rustls gives.
fn classify(e: &io::Error) -> &'static str {
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return match tls {
            rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => {
                "incompatible"
            }
            rustls::Error::AlertReceived(_) => "client_alert",
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. }
            | rustls::Error::PeerMisbehaved(_) => "bad_message",
            _ => "error",
        };
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe => "eof",
        io::ErrorKind::InvalidData => "bad_message",
        _ => "error",
    }
}

fn server_config(
    settings: &ListenerTls,
    certs: &Arc<ArcSwap<CertSet>>,
    tickets: Option<Arc<KeyFileTicketer>>,
) -> Result<ServerConfig, String> {
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(Arc::clone(certs))));
    config.alpn_protocols = if settings.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    config.session_storage = if settings.session_cache == 0 {
        Arc::new(rustls::server::NoServerSessionStorage {})
    } else {
        rustls::server::ServerSessionMemoryCache::new(settings.session_cache)
    };
    config.ticketer = match (settings.session_tickets, tickets) {
        (false, _) => Arc::new(NoTickets),
        (true, Some(t)) => t,
        (true, None) => rustls::crypto::ring::Ticketer::new()
            .map_err(|e| format!("cannot make a session ticket key: {e}"))?,
    };
    Ok(config)
}

/// Session tickets off.
#[derive(Debug)]
struct NoTickets;

impl rustls::server::ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}
