//! TLS to a pool's backends (`[pool.tls]`): the balancer as a rustls
//! client, and the socket type every upstream connection is.
//!
//! A pool's [`UpstreamTls`] is built when the config loads (the CA bundle
//! and client certificate are read and verified then, so a bad file
//! refuses the config) and shared by its backends' connection pools. The
//! handshake is part of connecting: it counts against `timeouts.connect`,
//! and a certificate that fails verification is a connect error (502 and a
//! log line naming the reason), never a hang. Pooled TLS connections are
//! reused like plaintext ones; rustls resumes sessions on new ones.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::certs;
use crate::socket::MaybeTls;

/// A pool's TLS client settings, ready to connect.
pub struct UpstreamTls {
    /// The settings it was built from.
    pub settings: config::PoolTls,
    /// Hash of the settings and of every file's bytes: equal means the
    /// same client.
    pub fingerprint: [u8; 32],
    connector: TlsConnector,
    /// `None`: each backend's IP address is the name.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("settings", &self.settings)
            .finish()
    }
}

impl UpstreamTls {
    /// Reads the CA bundle (or the system roots) and the client
    /// certificate; the error names the file.
    pub fn new(pool: &str, settings: &config::PoolTls) -> Result<Self, Vec<String>> {
        let at = |e: String| vec![format!("pool {pool:?}: {e}")];
        let roots = match &settings.ca {
            Some(path) => certs::load_roots(path).map_err(|e| at(e.to_string()))?,
            None => certs::system_roots().map_err(|e| at(format!("tls.ca: {e}")))?,
        };
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| at(format!("TLS settings: {e}")))?
        .with_root_certificates(roots);
        let mut config = match &settings.client_certificate {
            None => builder.with_no_client_auth(),
            Some(files) => {
                let loaded = certs::load(files).map_err(|e| at(e.to_string()))?;
                builder
                    .with_client_auth_cert(
                        loaded.key.cert.clone(),
                        read_key(&files.key).map_err(at)?,
                    )
                    .map_err(|e| at(format!("{}: {e}", files.key.display())))?
            }
        };
        // HTTP/1.1 only: the upstream codec speaks nothing else.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = match &settings.server_name {
            Some(n) => Some(
                ServerName::try_from(n.clone())
                    .map_err(|e| at(format!("tls.server_name {n:?}: {e}")))?,
            ),
            None => None,
        };
        let mut h = <sha2::Sha256 as sha2::Digest>::new();
        sha2::Digest::update(&mut h, format!("{settings:?}").as_bytes());
        let files = settings.ca.iter().chain(
            settings
                .client_certificate
                .iter()
                .flat_map(|c| [&c.cert, &c.key]),
        );
        for f in files {
            sha2::Digest::update(&mut h, std::fs::read(f).unwrap_or_default());
        }
        Ok(Self {
            settings: settings.clone(),
            fingerprint: sha2::Digest::finalize(h).into(),
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// The TLS handshake on a connected socket to `addr`.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        addr: std::net::SocketAddr,
    ) -> io::Result<TlsStream<TcpStream>> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        self.connector.connect(name, tcp).await
    }
}

fn read_key(path: &std::path::Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: no usable private key: {e}", path.display()))
}

/// An upstream connection, plaintext or TLS, counted in its backend's
/// [`Sockets`](super::Sockets) for as long as it is open.
#[derive(Debug)]
pub struct UpstreamStream {
    io: crate::socket::MaybeTls<TlsStream<TcpStream>>,
    _counted: super::connections::Counted,
}

impl UpstreamStream {
    pub(super) fn new(
        io: crate::socket::MaybeTls<TlsStream<TcpStream>>,
        counted: super::connections::Counted,
    ) -> Self {
        Self {
            io,
            _counted: counted,
        }
    }

    /// An idle pooled connection the backend has not closed (and sent
    /// nothing on). Plaintext: a readiness check first, so the common case
    /// costs no system call. TLS: what arrived may be only TLS messages (a
    /// TLS 1.3 server sends session tickets after the handshake), so it is
    /// read through rustls: nothing for the application means still open.
    pub fn still_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match &mut self.io {
            MaybeTls::Plain(io) => match io.poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                Poll::Ready(Ok(())) => {
                    let mut probe = [0u8; 1];
                    matches!(io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
            MaybeTls::Tls(tls) => {
                let mut probe = [0u8; 1];
                let mut buf = ReadBuf::new(&mut probe);
                matches!(
                    Pin::new(tls.as_mut()).poll_read(&mut cx, &mut buf),
                    Poll::Pending
                )
            }
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
