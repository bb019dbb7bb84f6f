//! A raw HTTP/1.1 backend on loopback for in-process tests: it answers each
//! request head it reads with the next of a list of canned answers, so a
//! test decides byte for byte what the balancer gets back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An address on loopback where nothing listens (bound, then released).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// What a [`raw_backend`] saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Connections accepted.
    pub connections: AtomicUsize,
    /// Request heads read, in order (text up to the blank line).
    pub heads: Mutex<Vec<String>>,
}

impl Seen {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> usize {
        self.heads.lock().map(|h| h.len()).unwrap_or(0)
    }
}

/// Starts a backend that answers each request head with the next of
/// `answers` (on whichever connection it came). An answer of `""` closes
/// the connection instead; one ending in `<close>` closes it after writing
/// the rest; `<reset>` closes it with a TCP reset; `<hang>` never answers
/// (the connection stays open until the balancer closes it). Request bodies
/// are not read. After the last answer, connections are closed.
pub async fn raw_backend(answers: Vec<&'static str>) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let counted = Arc::clone(&seen);
    let answers = Arc::new(Mutex::new(answers.into_iter()));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counted.connections.fetch_add(1, Ordering::Relaxed);
            let (answers, seen) = (Arc::clone(&answers), Arc::clone(&counted));
            tokio::spawn(async move {
                let mut read = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let n = match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    read.extend_from_slice(&chunk[..n]);
                    while let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&read[..end]).into_owned();
                        read.drain(..end + 4);
                        seen.heads.lock().unwrap().push(head);
                        let answer = answers.lock().unwrap().next().unwrap_or("");
                        if answer.is_empty() {
                            return;
                        }
                        if answer == "<hang>" {
                            let mut rest = [0u8; 1024];
                            while matches!(s.read(&mut rest).await, Ok(n) if n > 0) {}
                            return;
                        }
                        if answer == "<reset>" {
                            // SO_LINGER 0: the close sends RST (and does not block).
                            let _ = rustix::net::sockopt::set_socket_linger(
                                &s,
                                Some(std::time::Duration::ZERO),
                            );
                            return;
                        }
                        let (answer, close) = match answer.strip_suffix("<close>") {
                            Some(a) => (a, true),
                            None => (answer, false),
                        };
                        if s.write_all(answer.as_bytes()).await.is_err() || close {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}
