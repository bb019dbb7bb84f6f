//! A socket with bytes already read from it put back in front: what the
//! listener read to tell HTTP/2 from HTTP/1.1, what hyper had read when a
//! connection parked, what a backend sent right after its `101` head.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Reads `prefix` first, then `inner`; writes go straight to `inner`.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    /// `prefix` is copied when it is a view of a larger buffer (a read
    /// buffer's leftover, even empty, would keep the whole buffer alive for
    /// as long as this socket lives): pass [`Prefixed::owned`] bytes.
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }

    /// `bytes` in an allocation of their own (none when empty).
    pub fn owned(bytes: &[u8]) -> Bytes {
        Bytes::copy_from_slice(bytes)
    }

    /// The socket, and every byte read from it but not yet used: what is
    /// left of the prefix, then `more` (copied, see [`Prefixed::new`]).
    pub fn into_parts(self, more: &[u8]) -> (Bytes, T) {
        let rest = if self.prefix.is_empty() {
            Self::owned(more)
        } else {
            [&self.prefix[..], more].concat().into()
        };
        (rest, self.inner)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn reads_the_prefix_first_and_hands_back_what_is_left() {
        let (a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut b, b" world")
            .await
            .unwrap();
        let mut p = Prefixed::new(Bytes::from_static(b"hello"), a);
        let mut three = [0u8; 3];
        p.read_exact(&mut three).await.unwrap();
        assert_eq!(&three, b"hel");
        let (rest, mut inner) = p.into_parts(b"!");
        assert_eq!(&rest[..], b"lo!");
        let mut tail = [0u8; 6];
        inner.read_exact(&mut tail).await.unwrap();
        assert_eq!(&tail, b" world");
    }
}
