//! Where the harness's own clients connect: a proxy's plaintext port, or
//! its TLS port with the client config of [`super::tls`]. One socket type,
//! [`ClientStream`], carries either, so the HTTP client ([`super::http`])
//! and the WebSocket clients ([`super::ws`]) are the same code over
//! both.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
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

/// A client socket, plaintext or TLS: the balancer's own type for it.
pub type ClientStream = balancer::socket::MaybeTls<TlsStream<TcpStream>>;

/// Whether the handshake resumed a session (never, for the harness's
/// clients; checked by the handshake load).
pub fn resumed(stream: &ClientStream) -> bool {
    match stream {
        ClientStream::Plain(_) => false,
        ClientStream::Tls(s) => matches!(
            s.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        ),
    }
}
