//! New TLS connections in a closed loop: each client connects, does a full
//! TLS handshake (the client config never resumes, and a resumed handshake
//! would count as a failure), sends one `GET /healthz` with `Connection:
//! close`, reads the response and waits for the proxy to close, then
//! starts over. One loop is one TCP connection, one full handshake and one
//! request, timed from connect to close.
//!
//! This is the handshake row's own client rather than wrk, because wrk
//! resumes: it keeps each connection's OpenSSL session across reconnects
//! (`SSL_shutdown` then `SSL_clear` keeps `SSL_get_session`), so its
//! `Connection: close` load measures resumed handshakes, reported
//! beside this one.

use std::time::Duration;

use tokio::time::Instant;

use super::endpoint::Endpoint;
use super::http::{Conn, Counts, REQUEST_TIMEOUT};
use super::percentile;

/// How long the proxy gets to close after its response.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a handshake load did.
#[derive(Debug, Clone, Default)]
pub struct HandshakeResult {
    /// Completed loops (handshake, 200, close) and failures by reason.
    pub counts: Counts,
    /// Connect-to-close percentiles of the completed loops, microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
}

/// `clients` loops against `endpoint` (a TLS port) until `until`; loops
/// still running then are waited for.
pub async fn handshake_load(
    endpoint: &Endpoint,
    clients: usize,
    until: Instant,
) -> HandshakeResult {
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(one_client(endpoint.clone(), until)))
        .collect();
    let mut result = HandshakeResult::default();
    let mut all = Vec::new();
    for t in tasks {
        match t.await {
            Ok((counts, times)) => {
                result.counts.merge(counts);
                all.extend(times);
            }
            Err(e) => result.counts.fail(format!("client task: {e}")),
        }
    }
    all.sort_unstable();
    result.p50_us = percentile(&all, 0.50);
    result.p99_us = percentile(&all, 0.99);
    result
}

async fn one_client(endpoint: Endpoint, until: Instant) -> (Counts, Vec<u32>) {
    let mut counts = Counts::default();
    let mut times = Vec::with_capacity(4096);
    while Instant::now() < until {
        let t0 = Instant::now();
        match one_connection(&endpoint).await {
            Ok(()) => {
                counts.ok += 1;
                times.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            Err(why) => {
                counts.fail(why);
                // A refused connect fails at once: do not spin on it.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    (counts, times)
}

/// One connection: connect and handshake, one request, the proxy's close.
async fn one_connection(endpoint: &Endpoint) -> Result<(), String> {
    let mut conn = match tokio::time::timeout(REQUEST_TIMEOUT, Conn::open(endpoint)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(format!("connect or handshake: {e}")),
        Err(_) => return Err("connect or handshake: timed out".to_string()),
    };
    if conn.resumed() {
        return Err("handshake resumed a session".to_string());
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, conn.get_closing("/healthz")).await {
        Ok(Ok(r)) if r.status == 200 => {}
        Ok(Ok(r)) => return Err(format!("status {}", r.status)),
        Ok(Err(e)) => return Err(format!("request: {}", e.kind())),
        Err(_) => return Err("request: timed out".to_string()),
    }
    match tokio::time::timeout(CLOSE_TIMEOUT, conn.wait_closed()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("close: {}", e.kind())),
        Err(_) => Err(format!(
            "close: the proxy kept the connection open {CLOSE_TIMEOUT:?} after \
             `Connection: close`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::compare::tls::TlsFiles;

    /// A TLS server on the generated certificate that answers every
    /// request with a 200 and closes, as a proxy does after `Connection:
    /// close`; returns its address.
    async fn closing_server(tls: &TlsFiles) -> std::net::SocketAddr {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&tls.key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut s = acceptor.accept(tcp).await?;
                    let mut buf = vec![0u8; 1024];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = s.read(&mut buf).await?;
                        if n == 0 {
                            return Ok(());
                        }
                        seen.extend_from_slice(&buf[..n]);
                    }
                    assert!(String::from_utf8_lossy(&seen).contains("Connection: close"));
                    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await?;
                    s.shutdown().await?;
                    Ok::<_, std::io::Error>(())
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn every_loop_is_a_full_handshake_and_one_request() {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsFiles::generate(dir.path()).unwrap();
        let addr = closing_server(&tls).await;
        let endpoint = Endpoint::tls(addr, tls.client());
        let until = Instant::now() + Duration::from_millis(300);
        let r = handshake_load(&endpoint, 4, until).await;
        assert!(r.counts.ok > 0, "{}", r.counts);
        assert_eq!(r.counts.failed, 0, "{}", r.counts);
        assert!(r.p50_us > 0.0 && r.p99_us >= r.p50_us);
        // A plaintext port is not a TLS server: every loop fails.
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bad = Endpoint::tls(plain.local_addr().unwrap(), tls.client());
        drop(plain);
        let r = handshake_load(&bad, 1, Instant::now() + Duration::from_millis(50)).await;
        assert_eq!(r.counts.ok, 0);
        assert!(r.counts.failed > 0);
    }
}
