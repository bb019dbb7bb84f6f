//! Certificates made in the test (rcgen; nothing checked in that could
//! expire) and TLS clients: rustls for in-process clients, and the paths
//! real clients (curl, `openssl s_client`, Chromium) need.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A throwaway certificate authority, ECDSA P-256.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, KeyPair>,
    cert: rcgen::Certificate,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa")
    }
}

/// A leaf certificate and its key, as PEM text.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// Upper-case hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    /// base64(SHA-256(SubjectPublicKeyInfo)), for Chromium's
    /// `--ignore-certificate-errors-spki-list`.
    pub spki_sha256: String,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    pub fn new() -> Self {
        let mut p = CertificateParams::new(Vec::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "balancer test CA");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = p.self_signed(&key).unwrap();
        Self {
            issuer: rcgen::Issuer::new(p, key),
            cert,
        }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A leaf for `names` (DNS names or IP addresses), valid from an hour
    /// ago for `days`.
    pub fn issue_for_days(&self, names: &[&str], days: i64) -> Issued {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        if let Some(first) = names.first() {
            p.distinguished_name.push(DnType::CommonName, *first);
        }
        let now = time_now();
        p.not_before = now - std::time::Duration::from_secs(3600);
        p.not_after = now + std::time::Duration::from_secs(days as u64 * 86_400);
        let serial: [u8; 16] =
            std::array::from_fn(|i| if i == 0 { 0x40 } else { fastrand::u8(..) });
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        use base64::Engine;
        use sha2::Digest;
        let spki = sha2::Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key));
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: serial.iter().map(|b| format!("{b:02X}")).collect(),
            spki_sha256: base64::engine::general_purpose::STANDARD.encode(spki),
        }
    }

    pub fn issue(&self, names: &[&str]) -> Issued {
        self.issue_for_days(names, 30)
    }

    /// Writes the CA certificate to `dir/ca.pem`.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let p = dir.join("ca.pem");
        std::fs::write(&p, self.pem()).unwrap();
        p
    }

    /// A rustls client that trusts only this CA, offering `alpn`.
    pub fn client(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der()).unwrap();
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Arc::new(c)
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

impl Issued {
    /// Writes `NAME.pem` and `NAME.key` into `dir`; returns both paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, &self.cert_pem).unwrap();
        std::fs::write(&k, &self.key_pem).unwrap();
        (c, k)
    }

    /// Replaces the files the way certbot and editors do: new files,
    /// renamed over the old ones (key first, then the certificate).
    pub fn replace(&self, cert: &Path, key: &Path) {
        for (path, text) in [(key, &self.key_pem), (cert, &self.cert_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
    }
}

/// A `[[listener.certificate]]` entry.
pub fn certificate_toml(cert: &Path, key: &Path) -> String {
    format!(
        "  [[listener.certificate]]\n  cert = \"{}\"\n  key = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

/// Opens a TLS connection to `addr` asking for `sni`.
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The serial of the leaf certificate a server presented.
pub fn peer_serial<T>(tls: &TlsStream<T>) -> String {
    let (_, conn) = tls.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("the server sent a certificate");
    serial_of(leaf.as_ref())
}

/// Serial of a DER certificate, upper-case hex without leading zero bytes.
pub fn serial_of(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.raw_serial()
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02X}"))
        .collect()
}
