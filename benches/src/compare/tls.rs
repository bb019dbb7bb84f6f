//! The TLS material of the TLS rows: one ECDSA P-256 certificate and key,
//! generated when the harness starts and written into its temporary
//! directory, that every proxy serves (the balancer and nginx read the
//! chain and the key from two files, HAProxy from one file holding both),
//! and the client config of the harness's own TLS clients, which trusts
//! exactly that certificate.
//!
//! Nothing here is checked in: the certificate lives as long as the run.
//!
//! The Rust clients never resume a session (`Resumption::disabled()`), so
//! each of their connections is a full handshake; they offer only
//! `http/1.1` in ALPN (the WebSocket upgrade is HTTP/1.1), as wrk, which
//! offers no ALPN, ends up on HTTP/1.1 too.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::client::Resumption;
use rustls::{ClientConfig, RootCertStore};

/// The name the clients send in SNI and verify (the certificate also
/// names `127.0.0.1`, for wrk, which sends the URL's host).
pub const SERVER_NAME: &str = "localhost";

/// The certificate's files and a client config that trusts it.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate (a chain of one: it is self-signed).
    pub cert: PathBuf,
    /// PEM PKCS#8 private key.
    pub key: PathBuf,
    /// Certificate then key in one PEM file, for HAProxy's `crt`.
    pub bundle: PathBuf,
    client: Arc<ClientConfig>,
}

impl TlsFiles {
    /// Generates a key pair and a self-signed certificate for `localhost`
    /// and `127.0.0.1` and writes them into `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<TlsFiles> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("cannot generate an ECDSA P-256 key")?;
        let params =
            rcgen::CertificateParams::new(vec![SERVER_NAME.to_string(), "127.0.0.1".to_string()])
                .context("bad certificate names")?;
        let cert = params
            .self_signed(&key)
            .context("cannot sign the certificate")?;
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        let files = [
            ("cert.pem", cert_pem.clone()),
            ("key.pem", key_pem.clone()),
            ("cert-and-key.pem", format!("{cert_pem}{key_pem}")),
        ];
        for (name, text) in &files {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        let mut roots = RootCertStore::empty();
        roots
            .add(cert.der().clone())
            .context("cannot trust the generated certificate")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("no TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        client.resumption = Resumption::disabled();
        Ok(TlsFiles {
            cert: dir.join(files[0].0),
            key: dir.join(files[1].0),
            bundle: dir.join(files[2].0),
            client: Arc::new(client),
        })
    }

    /// The config of the harness's TLS clients.
    pub fn client(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.client)
    }
}
