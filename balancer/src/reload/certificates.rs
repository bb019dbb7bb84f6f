//! TLS listeners across reloads, and certificate files that change on disk.
//!
//! On a reload, a TLS listener whose settings did not change is kept (its
//! session cache and ticket keys with it) and its files are re-read: new
//! bytes are loaded and verified, and swapped in only if every file of
//! the listener passes. Changed settings build a new one. Any bad file
//! refuses the reload, like a bad config, and the old files keep serving.
//!
//! Between reloads the same refresh runs when a watched directory changes
//! (certbot's renewal, a Kubernetes secret's symlink swap) and on a poll,
//! for filesystems that send no events. A refused file is logged once per
//! distinct error and shown in `/api/status` until a later refresh loads.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use crate::certs;
use crate::runtime::UpstreamTlsByPool;
use crate::server::tls::{Refresh, TlsListener};
use crate::upstream::UpstreamTls;

/// TLS listeners by name.
pub type TlsListeners = HashMap<String, Arc<TlsListener>>;

/// A served certificate, for the admin API and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSummary {
    pub listener: String,
    pub file: String,
    pub names: Vec<String>,
    pub serial: String,
    pub not_after_unix: i64,
}

/// Builds the TLS listeners of `config`, keeping (and refreshing) the ones
/// in `old` whose settings are the same. `Err`: every problem, by file.
pub fn build(
    config: &config::Config,
    old: &TlsListeners,
    metrics: Option<&crate::metrics::Metrics>,
) -> Result<TlsListeners, Vec<String>> {
    let mut built = HashMap::new();
    let mut errors = Vec::new();
    for l in &config.listeners {
        let Some(settings) = &l.tls else { continue };
        match old.get(&l.name).filter(|o| &o.settings == settings) {
            Some(kept) => match kept.refresh() {
                Refresh::Refused(es) => errors.extend(
                    es.into_iter()
                        .map(|e| format!("listener {:?}: {e}", l.name)),
                ),
                Refresh::Reloaded(files) => {
                    for f in files {
                        tracing::info!(listener = %l.name, file = %f, "certificate reloaded");
                    }
                    built.insert(l.name.clone(), Arc::clone(kept));
                }
                Refresh::Unchanged => {
                    built.insert(l.name.clone(), Arc::clone(kept));
                }
            },
            None => match TlsListener::new(&l.name, settings, metrics) {
                Ok(t) => {
                    built.insert(l.name.clone(), Arc::new(t));
                }
                Err(es) => errors.extend(es),
            },
        }
    }
    if errors.is_empty() {
        Ok(built)
    } else {
        Err(errors)
    }
}

/// Re-reads every TLS listener's files. Returns the refusals in force
/// (empty when every file loaded or nothing changed).
pub fn refresh(listeners: &TlsListeners, logged: &mut BTreeSet<String>) -> Vec<String> {
    let mut refused = Vec::new();
    let mut names: Vec<&String> = listeners.keys().collect();
    names.sort();
    for name in names {
        match listeners[name].refresh() {
            Refresh::Unchanged => {}
            Refresh::Reloaded(files) => {
                for f in &files {
                    tracing::info!(listener = %name, file = %f, "certificate reloaded: new handshakes use it");
                }
                if files.is_empty() {
                    tracing::info!(listener = %name, "session ticket keys reloaded");
                }
            }
            Refresh::Refused(es) => {
                refused.extend(es.into_iter().map(|e| format!("listener {name:?}: {e}")));
            }
        }
    }
    for e in &refused {
        if !logged.contains(e) {
            tracing::error!(error = %e, "certificate refused: the old certificate keeps serving");
        }
    }
    *logged = refused.iter().cloned().collect();
    refused
}

/// Every served certificate.
pub fn summaries(listeners: &TlsListeners) -> Vec<CertificateSummary> {
    let mut out = Vec::new();
    for (name, l) in listeners {
        for c in &l.certificates().certs {
            out.push(CertificateSummary {
                listener: name.clone(),
                file: c.files.cert.display().to_string(),
                names: c.info.names.clone(),
                serial: c.info.serial.clone(),
                not_after_unix: c.info.not_after_unix,
            });
        }
    }
    out.sort_by(|a, b| (&a.listener, &a.file).cmp(&(&b.listener, &b.file)));
    out
}

/// The directories holding every file TLS listeners read (watched for changes).
pub fn directories(config: &config::Config) -> Vec<PathBuf> {
    let mut dirs = BTreeSet::new();
    for l in &config.listeners {
        let Some(t) = &l.tls else { continue };
        let files = t
            .certificates
            .iter()
            .flat_map(|c| [&c.cert, &c.key])
            .chain(t.ticket_key_file.as_ref());
        for f in files {
            let dir = f
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf);
            dirs.insert(dir);
        }
    }
    dirs.into_iter().collect()
}

/// Warnings worth printing at start and in `balancer check`: certificates
/// that expire soon.
pub fn warnings(listeners: &TlsListeners) -> Vec<String> {
    let now = certs::now_unix();
    let mut out: Vec<String> = listeners
        .iter()
        .flat_map(|(name, l)| {
            l.certificates()
                .certs
                .iter()
                .flat_map(|c| c.warnings(now))
                .map(|w| format!("listener {name:?}: {w}"))
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort();
    out
}

/// What `balancer check` says about the certificates of a config.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// One line per certificate that loaded.
    pub loaded: Vec<String>,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

/// Loads and verifies every certificate, key, ticket key and CA file the
/// config names, as start-up would.
pub fn check(config: &config::Config) -> CheckReport {
    let mut report = CheckReport::default();
    if let Err(es) = build_upstream(config, &HashMap::new()) {
        report.errors.extend(es);
    }
    match build(config, &HashMap::new(), None) {
        Ok(listeners) => {
            for c in summaries(&listeners) {
                report.loaded.push(format!(
                    "listener {:?}: {}: OK ({}; serial {}; expires {})",
                    c.listener,
                    c.file,
                    c.names.join(", "),
                    c.serial,
                    certs::format_unix(c.not_after_unix)
                ));
            }
            report.warnings = warnings(&listeners);
        }
        Err(errors) => report.errors.extend(errors),
    }
    report
}

/// Loads the `[pool.tls]` settings of every pool (CA bundle, client
/// certificate), reusing `old`'s when nothing changed. `Err`: every problem.
pub fn build_upstream(
    config: &config::Config,
    old: &UpstreamTlsByPool,
) -> Result<UpstreamTlsByPool, Vec<String>> {
    let mut built = HashMap::new();
    let mut errors = Vec::new();
    for p in &config.pools {
        let Some(settings) = &p.tls else { continue };
        match UpstreamTls::new(&p.name, settings) {
            Ok(t) => {
                let t = match old.get(&p.name) {
                    Some(o) if o.fingerprint == t.fingerprint => Arc::clone(o),
                    _ => Arc::new(t),
                };
                built.insert(p.name.clone(), t);
            }
            Err(es) => errors.extend(es),
        }
    }
    if errors.is_empty() {
        Ok(built)
    } else {
        Err(errors)
    }
}
