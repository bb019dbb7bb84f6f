//! Bidirectional copy for tunnels that holds no buffer while the tunnel is
//! idle.
//!
//! `tokio::io::copy_bidirectional` gives every tunnel two 8 KiB buffers for
//! its whole life. A game server's WebSockets are mostly idle, so that is
//! 16 KiB per open socket doing nothing (nginx holds about 18 KiB per idle
//! tunnel, HAProxy under 5). Here each direction reads into a scratch buffer
//! that belongs to the worker thread, writes what it read straight through,
//! and only when the writer cannot take everything (backpressure) copies
//! the rest into a buffer of its own, freed as soon as it is written. An
//! idle tunnel holds no copy buffer at all.
//!
//! Semantics match `copy_bidirectional`: when one side reaches EOF, the
//! other side's write half is shut down (a TCP half-close) and the other
//! direction goes on; the copy ends when both directions have finished, or
//! at the first error. A side task polled with the copy may write into the
//! first side between copied bytes (a tunnel's keep-alive Ping).

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read per call: large enough for a burst of frames, and allocated
/// once per worker thread, not per tunnel.
const SCRATCH: usize = 16 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// One direction of the copy.
#[derive(Debug, Default)]
struct Direction {
    /// Bytes read but not yet written (only under backpressure; empty and
    /// unallocated otherwise).
    pending: Vec<u8>,
    /// How much of `pending` is written.
    written: usize,
    /// Writes since the last flush.
    unflushed: bool,
    read_eof: bool,
    done: bool,
    total: u64,
}

enum Read {
    /// Nothing to read now; nothing held.
    Pending,
    Eof,
    /// `n` bytes went through; `rest` (maybe empty) waits for the writer.
    Data(usize, Vec<u8>),
}

impl Direction {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(self.total));
        }
        loop {
            // Whatever waits from an earlier read goes first.
            while self.written < self.pending.len() {
                let n = ready!(writer
                    .as_mut()
                    .poll_write(cx, &self.pending[self.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
                self.total += n as u64;
                self.unflushed = true;
            }
            if !self.pending.is_empty() {
                // Give the memory back: an idle tunnel holds nothing.
                self.pending = Vec::new();
                self.written = 0;
            }
            if self.read_eof {
                ready!(writer.as_mut().poll_flush(cx))?;
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(self.total));
            }
            match read_through(cx, reader.as_mut(), writer.as_mut())? {
                Read::Pending => {
                    if self.unflushed {
                        ready!(writer.as_mut().poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
                Read::Eof => self.read_eof = true,
                Read::Data(n, rest) => {
                    self.total += n as u64;
                    self.unflushed = true;
                    self.pending = rest;
                }
            }
        }
    }
}

/// Reads once into the thread's scratch buffer and writes as much as the
/// writer takes right away; what it does not take is copied out.
fn read_through<R, W>(
    cx: &mut Context<'_>,
    reader: Pin<&mut R>,
    writer: Pin<&mut W>,
) -> io::Result<Read>
where
    R: AsyncRead + ?Sized,
    W: AsyncWrite + ?Sized,
{
    SCRATCH_BUF.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => read_into(cx, reader, writer, &mut scratch),
        // Never expected (the copy does not nest), but if it ever did, a
        // buffer of its own is correct, just slower.
        Err(_) => read_into(cx, reader, writer, &mut vec![0u8; SCRATCH]),
    })
}

fn read_into<R, W>(
    cx: &mut Context<'_>,
    mut reader: Pin<&mut R>,
    mut writer: Pin<&mut W>,
    scratch: &mut [u8],
) -> io::Result<Read>
where
    R: AsyncRead + ?Sized,
    W: AsyncWrite + ?Sized,
{
    let mut buf = ReadBuf::new(scratch);
    match reader.as_mut().poll_read(cx, &mut buf) {
        Poll::Pending => return Ok(Read::Pending),
        Poll::Ready(r) => r?,
    }
    let data = buf.filled();
    if data.is_empty() {
        return Ok(Read::Eof);
    }
    let mut sent = 0;
    while sent < data.len() {
        match writer.as_mut().poll_write(cx, &data[sent..]) {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => sent += n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => break,
        }
    }
    Ok(Read::Data(sent, data[sent..].to_vec()))
}

/// Copies both ways between `a` and `b` until both directions end; returns
/// the bytes copied `(a to b, b to a)`.
///
/// `side` is called with `a` each time the copy is polled, after both
/// directions had their turn: a tunnel writes frames
/// of its own into `a` from there (the keep-alive Ping) once the bytes
/// copied into it have reached a frame boundary. `side` registers its own
/// wake-ups (a timer); an error from it ends the copy like a copy error.
pub async fn copy_bidirectional<A, B, F>(
    a: &mut A,
    b: &mut B,
    mut side: F,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    F: FnMut(&mut Context<'_>, &mut A) -> io::Result<()>,
{
    let mut a_to_b = Direction::default();
    let mut b_to_a = Direction::default();
    poll_fn(|cx| {
        let ab = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let ba = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        if !matches!(ba, Poll::Ready(_)) {
            // Only while `a` is still written to: after `b`'s EOF its
            // write half is shut down.
            side(cx, &mut *a)?;
        }
        match (ab, ba) {
            (Poll::Ready(x), Poll::Ready(y)) => Poll::Ready(Ok((x, y))),
            _ => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_and_passes_half_close_on() {
        let (mut client, mut a) = tokio::io::duplex(64);
        let (mut b, mut server) = tokio::io::duplex(64);
        let copy =
            tokio::spawn(async move { copy_bidirectional(&mut a, &mut b, |_, _| Ok(())).await });
        // More than the duplex capacity and the scratch buffer: exercises
        // backpressure (the pending buffer) in both directions.
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let up = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&up).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, big, "client to server, then EOF");
        server.write_all(&big[..70_000]).await.unwrap();
        server.shutdown().await.unwrap();
        let back = writer.await.unwrap();
        assert_eq!(back, &big[..70_000], "server to client, then EOF");
        let (ab, ba) = copy.await.unwrap().unwrap();
        assert_eq!((ab, ba), (100_000, 70_000));
    }
}
