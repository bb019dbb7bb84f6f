//! A child's stdout and stderr, logged line by line through `tracing` with
//! the fields `pool`, `instance` (its id) and `stream` (`stdout` or
//! `stderr`); the line is the log message.
//!
//! Memory is bounded by one fixed buffer of [`MAX_LINE`] bytes per stream:
//! a line longer than that is logged cut (`truncated = true`) and the rest
//! of it is skipped up to its newline. Nothing is queued: a child that
//! writes faster than the log takes it waits on its full pipe.

use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest line logged whole, bytes.
pub const MAX_LINE: usize = 8 * 1024;

/// Splits bytes into lines of at most [`MAX_LINE`] bytes, in one fixed buffer.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Box<[u8]>,
    len: usize,
    /// The current line was already logged cut: skip to its newline.
    skipping: bool,
}

impl Default for LineSplitter {
    fn default() -> Self {
        Self {
            buf: vec![0; MAX_LINE].into_boxed_slice(),
            len: 0,
            skipping: false,
        }
    }
}

impl LineSplitter {
    /// The free part of the buffer, to read into; then call [`Self::filled`].
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..]
    }

    /// `n` bytes were read into [`Self::space`]: `line(bytes, truncated)`
    /// gets every line they complete (without its `\n` or `\r\n`).
    pub fn filled(&mut self, n: usize, mut line: impl FnMut(&[u8], bool)) {
        let end = (self.len + n).min(self.buf.len());
        let mut start = 0;
        // Only the new bytes can hold a newline.
        let mut scan = self.len;
        while let Some(pos) = self.buf[scan..end].iter().position(|&b| b == b'\n') {
            let stop = scan + pos;
            if !self.skipping {
                line(trim_cr(&self.buf[start..stop]), false);
            }
            self.skipping = false;
            start = stop + 1;
            scan = start;
        }
        self.buf.copy_within(start..end, 0);
        self.len = end - start;
        if self.len == self.buf.len() {
            if !self.skipping {
                line(&self.buf[..self.len], true);
            }
            self.skipping = true;
            self.len = 0;
        }
    }

    /// The stream ended: a last line without a newline.
    pub fn finish(&mut self, mut line: impl FnMut(&[u8], bool)) {
        if self.len > 0 && !self.skipping {
            line(trim_cr(&self.buf[..self.len]), false);
        }
        self.len = 0;
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The line that says an instance is ready (`ready = "line"`), as
/// systemd's `sd_notify` spells it.
pub const READY_LINE: &[u8] = b"READY=1";

/// Logs every line of `reader` until it ends (the child closed the stream
/// or exited); fires `ready` at a [`READY_LINE`], when given.
pub async fn log_lines(
    mut reader: impl AsyncRead + Unpin,
    pool: std::sync::Arc<str>,
    instance: std::sync::Arc<str>,
    stream: &'static str,
    ready: Option<tokio_util::sync::CancellationToken>,
) {
    let mut lines = LineSplitter::default();
    let emit = |bytes: &[u8], truncated: bool| {
        if let Some(r) = &ready {
            if !truncated && bytes.trim_ascii() == READY_LINE {
                r.cancel();
            }
        }
        let text = String::from_utf8_lossy(bytes);
        let (pool, instance) = (&*pool, &*instance);
        if truncated {
            tracing::info!(pool, instance, stream, truncated, "{text}");
        } else {
            tracing::info!(pool, instance, stream, "{text}");
        }
    };
    loop {
        match reader.read(lines.space()).await {
            Ok(0) | Err(_) => break,
            Ok(n) => lines.filled(n, emit),
        }
    }
    lines.finish(emit);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<(String, bool)> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for chunk in chunks {
            let mut rest = *chunk;
            while !rest.is_empty() {
                let space = s.space();
                let n = space.len().min(rest.len());
                space[..n].copy_from_slice(&rest[..n]);
                rest = &rest[n..];
                s.filled(n, |l, t| {
                    out.push((String::from_utf8_lossy(l).into_owned(), t))
                });
            }
        }
        s.finish(|l, t| out.push((String::from_utf8_lossy(l).into_owned(), t)));
        out
    }

    #[test]
    fn lines_across_reads_and_crlf() {
        assert_eq!(
            split(&[b"one\ntw", b"o\r\nthree"]),
            [
                ("one".to_string(), false),
                ("two".to_string(), false),
                ("three".to_string(), false)
            ]
        );
        assert_eq!(
            split(&[b"\n\n"]),
            [(String::new(), false), (String::new(), false)]
        );
    }

    #[test]
    fn a_long_line_is_cut_once_and_the_next_line_is_whole() {
        let long = vec![b'x'; 3 * MAX_LINE + 17];
        let out = split(&[&long, b"\nafter\n"]);
        assert_eq!(
            out.len(),
            2,
            "{:?}",
            out.iter().map(|(l, t)| (l.len(), t)).collect::<Vec<_>>()
        );
        assert_eq!(out[0].0.len(), MAX_LINE);
        assert!(out[0].1, "cut lines say so");
        assert_eq!(out[1], ("after".to_string(), false));
    }

    #[test]
    fn a_line_of_exactly_the_limit_plus_newline() {
        let mut line = vec![b'y'; MAX_LINE - 1];
        line.push(b'\n');
        line.extend_from_slice(b"z\n");
        let out = split(&[&line]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0.len(), MAX_LINE - 1);
        assert!(!out[0].1);
        assert_eq!(out[1], ("z".to_string(), false));
    }
}
