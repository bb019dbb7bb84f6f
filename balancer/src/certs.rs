//! Certificates and keys from PEM files, loaded and verified the same way at
//! start-up, on reload, on a file change and in `balancer check`.
//!
//! A chain loads only if every check passes: both files read and parse
//! (certificates in order, leaf first; a PKCS#8, SEC1 or PKCS#1 key), the
//! key is one rustls can sign with and matches the leaf's public key, each
//! certificate of the chain was issued by the next one, and the leaf is
//! valid now. The error names the file and the reason. What is only worth
//! a warning (expiry within [`EXPIRY_WARNING`]) is in [`LoadedCert::warnings`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use config::CertificateFiles;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// `balancer check` warns about certificates expiring within this long.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// Why a certificate, key or CA file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertError {
    pub file: PathBuf,
    pub reason: String,
}

impl CertError {
    fn new(file: &Path, reason: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.reason)
    }
}

impl std::error::Error for CertError {}

/// What the leaf certificate says, for SNI, logs, metrics and the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// DNS names (lower-case, `*.` kept for wildcards); the subject's CN
    /// when the certificate has no DNS subject alternative name.
    pub names: Vec<String>,
    /// Serial number, hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    pub subject: String,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
}

impl CertInfo {
    /// Seconds until the leaf expires (negative once it has).
    pub fn expires_in(&self, now_unix: i64) -> i64 {
        self.not_after_unix - now_unix
    }
}

/// A chain and key that passed every check.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    pub files: CertificateFiles,
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
    /// Hash of both files' bytes: a refresh that reads the same bytes
    /// changes nothing.
    pub fingerprint: [u8; 32],
}

impl LoadedCert {
    /// Problems that do not stop it from serving.
    pub fn warnings(&self, now_unix: i64) -> Vec<String> {
        let left = self.info.expires_in(now_unix);
        if left < EXPIRY_WARNING.as_secs() as i64 {
            vec![format!(
                "{}: expires in {} days ({})",
                self.files.cert.display(),
                left / 86_400,
                format_unix(self.info.not_after_unix)
            )]
        } else {
            Vec::new()
        }
    }
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `2026-12-01 11:36:39 UTC`.
pub fn format_unix(t: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(t).map_or_else(|_| t.to_string(), |a| a.to_string())
}

fn read(file: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(file).map_err(|e| CertError::new(file, format!("cannot read: {e}")))
}

/// The fingerprint of the two files as they are on disk now.
pub fn fingerprint(files: &CertificateFiles) -> Result<[u8; 32], CertError> {
    let cert = read(&files.cert)?;
    let key = read(&files.key)?;
    Ok(hash_pair(&cert, &key))
}

fn hash_pair(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((cert.len() as u64).to_le_bytes());
    h.update(cert);
    h.update(key);
    h.finalize().into()
}

/// Every certificate in a PEM file, in file order.
pub fn read_chain(file: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let chain = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::new(file, format!("not a PEM certificate file: {e}")))?;
    if chain.is_empty() {
        return Err(CertError::new(
            file,
            "no certificate in the file (expected -----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(chain)
}

fn read_key(file: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| {
        CertError::new(
            file,
            format!("no usable private key (PKCS#8, SEC1 or PKCS#1 PEM expected): {e}"),
        )
    })
}

/// Loads and verifies one chain and key.
pub fn load(files: &CertificateFiles) -> Result<LoadedCert, CertError> {
    load_at(files, now_unix())
}

/// [`load`], as if the time were `now_unix` (tests).
pub fn load_at(files: &CertificateFiles, now_unix: i64) -> Result<LoadedCert, CertError> {
    let cert_bytes = read(&files.cert)?;
    let key_bytes = read(&files.key)?;
    let chain = read_chain(&files.cert, &cert_bytes)?;
    let key = read_key(&files.key, &key_bytes)?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| CertError::new(&files.key, format!("unsupported private key: {e}")))?;
    let info = check_chain(&files.cert, &chain, now_unix)?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        CertError::new(
            &files.key,
            format!(
                "does not match the certificate in {} ({e})",
                files.cert.display()
            ),
        )
    })?;
    Ok(LoadedCert {
        files: files.clone(),
        key: Arc::new(certified),
        info,
        fingerprint: hash_pair(&cert_bytes, &key_bytes),
    })
}

/// Parses the chain: leaf facts, chain order, validity now.
fn check_chain(
    file: &Path,
    chain: &[CertificateDer<'_>],
    now_unix: i64,
) -> Result<CertInfo, CertError> {
    let mut parsed = Vec::with_capacity(chain.len());
    for (i, der) in chain.iter().enumerate() {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| {
            CertError::new(
                file,
                format!("certificate {} is not valid X.509: {e}", i + 1),
            )
        })?;
        parsed.push(cert);
    }
    for (i, pair) in parsed.windows(2).enumerate() {
        if pair[0].issuer() != pair[1].subject() {
            return Err(CertError::new(
                file,
                format!(
                    "chain out of order: certificate {} (subject {}) did not issue certificate {} (issuer {}); put the leaf first, then each issuer",
                    i + 2,
                    pair[1].subject(),
                    i + 1,
                    pair[0].issuer()
                ),
            ));
        }
    }
    let leaf = &parsed[0];
    let validity = leaf.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if not_after < now_unix {
        return Err(CertError::new(
            file,
            format!("expired on {}", validity.not_after),
        ));
    }
    if not_before > now_unix {
        return Err(CertError::new(
            file,
            format!("not valid before {}", validity.not_before),
        ));
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        names.extend(
            leaf.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok(CertInfo {
        names,
        serial: leaf.raw_serial_as_string().replace(':', "").to_uppercase(),
        subject: leaf.subject().to_string(),
        not_before_unix: not_before,
        not_after_unix: not_after,
    })
}

/// A PEM bundle of trusted CAs (for TLS to backends).
pub fn load_roots(file: &Path) -> Result<rustls::RootCertStore, CertError> {
    let bytes = read(file)?;
    let certs = read_chain(file, &bytes)?;
    let mut roots = rustls::RootCertStore::empty();
    for (i, c) in certs.into_iter().enumerate() {
        roots.add(c).map_err(|e| {
            CertError::new(
                file,
                format!("certificate {} is not a usable CA: {e}", i + 1),
            )
        })?;
    }
    Ok(roots)
}

/// The system's trusted roots (`/etc/ssl/certs` and friends).
pub fn system_roots() -> Result<rustls::RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(format!(
            "no system root certificates found ({} errors); set ca",
            found.errors.len()
        ));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, IsCa, KeyPair};

    struct Dir(tempfile::TempDir);

    impl Dir {
        fn new() -> Self {
            Self(tempfile::tempdir().unwrap())
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.path().join(name)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.path(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    fn ca() -> (rcgen::Certificate, rcgen::Issuer<'static, KeyPair>) {
        let mut p = CertificateParams::new(Vec::new()).unwrap();
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "Test CA");
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        (cert, rcgen::Issuer::new(p, key))
    }

    fn leaf(
        names: &[&str],
        issuer: &rcgen::Issuer<'_, KeyPair>,
        key: &KeyPair,
    ) -> rcgen::Certificate {
        let p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.signed_by(key, issuer).unwrap()
    }

    #[test]
    fn a_good_chain_loads_with_its_names_and_serial() {
        let d = Dir::new();
        let (ca_cert, issuer) = ca();
        let key = KeyPair::generate().unwrap();
        let cert = leaf(&["game.example.com", "*.Example.org"], &issuer, &key);
        let files = CertificateFiles {
            cert: d.write("c.pem", &format!("{}{}", cert.pem(), ca_cert.pem())),
            key: d.write("k.pem", &key.serialize_pem()),
        };
        let loaded = load(&files).unwrap();
        assert_eq!(loaded.info.names, ["game.example.com", "*.example.org"]);
        assert!(!loaded.info.serial.is_empty());
        assert_eq!(loaded.key.cert.len(), 2);
        assert!(loaded.warnings(now_unix()).is_empty());
        assert_eq!(loaded.fingerprint, fingerprint(&files).unwrap());
        // A year and a half on, rcgen's default validity is long over.
        let later = loaded.info.not_after_unix - 86_400;
        assert_eq!(loaded.warnings(later).len(), 1);
    }

    #[test]
    fn every_bad_file_is_refused_naming_the_file_and_the_reason() {
        let d = Dir::new();
        let (ca_cert, issuer) = ca();
        let key = KeyPair::generate().unwrap();
        let other_key = KeyPair::generate().unwrap();
        let cert = leaf(&["a.example.com"], &issuer, &key);
        let good_cert = d.write("c.pem", &cert.pem());
        let good_key = d.write("k.pem", &key.serialize_pem());
        let cases = [
            (
                CertificateFiles {
                    cert: d.path("missing.pem"),
                    key: good_key.clone(),
                },
                "missing.pem: cannot read",
            ),
            (
                CertificateFiles {
                    cert: d.write("junk.pem", "hello"),
                    key: good_key.clone(),
                },
                "junk.pem: no certificate in the file",
            ),
            (
                CertificateFiles {
                    cert: good_cert.clone(),
                    key: d.write("nokey.pem", &cert.pem()),
                },
                "nokey.pem: no usable private key",
            ),
            (
                CertificateFiles {
                    cert: good_cert.clone(),
                    key: d.write("other.pem", &other_key.serialize_pem()),
                },
                "other.pem: does not match the certificate",
            ),
            (
                CertificateFiles {
                    cert: d.write("reversed.pem", &format!("{}{}", ca_cert.pem(), cert.pem())),
                    key: good_key.clone(),
                },
                "reversed.pem: chain out of order",
            ),
        ];
        for (files, want) in cases {
            let err = load(&files).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
        let files = CertificateFiles {
            cert: good_cert,
            key: good_key,
        };
        let loaded = load(&files).unwrap();
        let err = load_at(&files, loaded.info.not_after_unix + 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.pem: expired on"), "{err}");
        let err = load_at(&files, loaded.info.not_before_unix - 10)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid before"), "{err}");
    }

    #[test]
    fn rsa_pkcs1_and_ecdsa_sec1_keys_load() {
        let d = Dir::new();
        let (_, issuer) = ca();
        // rcgen writes PKCS#8; turn it into SEC1 / PKCS#1 with openssl when
        // it is there (it is on every machine that runs the e2e tests).
        let ec = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = leaf(&["ec.example.com"], &issuer, &ec);
        let pkcs8 = d.write("ec8.pem", &ec.serialize_pem());
        let c = d.write("ec.pem", &cert.pem());
        assert!(load(&CertificateFiles {
            cert: c.clone(),
            key: pkcs8.clone()
        })
        .is_ok());
        let Ok(out) = std::process::Command::new("openssl")
            .args(["ec", "-in"])
            .arg(&pkcs8)
            .output()
        else {
            panic!("openssl is needed for this test (scripts/test.sh installs it)");
        };
        let sec1 = String::from_utf8(out.stdout).unwrap();
        assert!(sec1.contains("BEGIN EC PRIVATE KEY"), "{sec1}");
        let k = d.write("ec1.pem", &sec1);
        assert!(load(&CertificateFiles { cert: c, key: k }).is_ok());

        let rsa_out = std::process::Command::new("openssl")
            .args(["genrsa", "-traditional", "2048"])
            .output()
            .unwrap();
        let pkcs1 = String::from_utf8(rsa_out.stdout).unwrap();
        assert!(pkcs1.contains("BEGIN RSA PRIVATE KEY"), "{pkcs1}");
        let rsa = KeyPair::from_pem_and_sign_algo(
            &String::from_utf8(
                std::process::Command::new("openssl")
                    .args(["pkcs8", "-topk8", "-nocrypt"])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .and_then(|mut ch| {
                        use std::io::Write;
                        ch.stdin.take().unwrap().write_all(pkcs1.as_bytes())?;
                        ch.wait_with_output()
                    })
                    .unwrap()
                    .stdout,
            )
            .unwrap(),
            &rcgen::PKCS_RSA_SHA256,
        )
        .unwrap();
        let cert = leaf(&["rsa.example.com"], &issuer, &rsa);
        let files = CertificateFiles {
            cert: d.write("rsa.pem", &cert.pem()),
            key: d.write("rsa1.pem", &pkcs1),
        };
        let loaded = load(&files).unwrap();
        assert_eq!(loaded.info.names, ["rsa.example.com"]);
    }
}
