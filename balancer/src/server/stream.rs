//! A client socket, plaintext or TLS: one type, so the connection task,
//! parking and tunnels are the same code for both.

use std::io;
use std::task::{Context, Poll};

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::socket::MaybeTls;

pub type ClientStream = MaybeTls<TlsStream<TcpStream>>;

impl ClientStream {
    /// Ready when the socket has bytes for the next request (a parked
    /// HTTP/1.1 connection waits on this). For TLS this is the socket
    /// under the session: hyper's last read drained everything rustls had
    /// decrypted before the connection parked.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_read_ready(cx)
    }
}
