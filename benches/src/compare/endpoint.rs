//! Where the harness's own clients connect: a proxy's plaintext port, or
//! its TLS port with the client config of [`super::tls`]. One socket type,
//! [`ClientStream`], carries either, so the HTTP client ([`super::http`])
//! and the WebSocket clients ([`super::ws`]) are the same code over
//! both.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::tls::SERVER_NAME;

/// A proxy port, plaintext or TLS.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `Some`: a TLS handshake follows the TCP connect.
    tls: Option<Arc<ClientConfig>>,
}

impl Endpoint {
    pub fn plain(addr: SocketAddr) -> Endpoint {
        Endpoint { addr, tls: None }
    }

    pub fn tls(addr: SocketAddr, client: Arc<ClientConfig>) -> Endpoint {
        Endpoint {
            addr,
            tls: Some(client),
        }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// `ws://addr/ws` or `wss://localhost:port/ws`.
    pub fn ws_url(&self) -> String {
        match self.tls {
            None => format!("ws://{}/ws", self.addr),
            Some(_) => format!("wss://{SERVER_NAME}:{}/ws", self.addr.port()),
        }
    }

    /// TCP connect (no Nagle), then the TLS handshake if this is a TLS
    /// port. No time limit: the callers set theirs.
    pub async fn connect(&self) -> io::Result<ClientStream> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(ClientStream::Plain(tcp)),
            Some(config) => {
                let name = ServerName::try_from(SERVER_NAME)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let tls = TlsConnector::from(Arc::clone(config))
                    .connect(name, tcp)
                    .await?;
                Ok(ClientStream::Tls(Box::new(tls)))
            }
        }
    }
}

/// A client socket, plaintext or TLS.
#[derive(Debug)]
pub enum ClientStream {
    Plain(TcpStream),
    /// Boxed: a rustls connection is large, and most sockets are plain.
    Tls(Box<TlsStream<TcpStream>>),
}

impl ClientStream {
    /// Whether the handshake resumed a session (never, for the harness's
    /// clients; checked by the handshake load).
    pub fn resumed(&self) -> bool {
        match self {
            ClientStream::Plain(_) => false,
            ClientStream::Tls(s) => matches!(
                s.get_ref().1.handshake_kind(),
                Some(rustls::HandshakeKind::Resumed)
            ),
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }
}
