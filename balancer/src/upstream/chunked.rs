//! The chunked transfer coding (RFC 9112 section 7.1), decoded in place
//! from the bytes read so far: a pure function over a state and a buffer,
//! so it is tested (and fuzzed by property tests) without sockets.
//! Extensions are skipped; trailers are read and dropped.

use bytes::{Buf, Bytes, BytesMut};

use super::codec::MAX_HEAD;

/// Where the decoder is in the coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many data bytes left in the chunk.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    /// The body is complete; what follows belongs to the next response.
    Done,
}

/// The longest chunk-size line (size, extensions) accepted.
const MAX_SIZE_LINE: usize = 4096;

/// Decodes from the front of `buf`: `Some(data)` for a piece of body,
/// `None` when more bytes are needed or the body ended (`state` is then
/// [`Chunk::Done`]). Bytes after the body stay in `buf`.
pub fn decode(state: &mut Chunk, buf: &mut BytesMut) -> Result<Option<Bytes>, String> {
    loop {
        match *state {
            Chunk::Done => return Ok(None),
            Chunk::Size => {
                let Some(end) = find_crlf(buf) else {
                    if buf.len() > MAX_SIZE_LINE {
                        return Err("chunk size line too long".into());
                    }
                    return Ok(None);
                };
                let line = &buf[..end];
                let digits = line
                    .iter()
                    .position(|b| *b == b';' || *b == b' ' || *b == b'\t')
                    .map_or(line, |i| &line[..i]);
                let size = std::str::from_utf8(digits)
                    .ok()
                    // Hex digits only: `u64::from_str_radix` would take `+a`.
                    .filter(|s| {
                        !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
                    })
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                    .ok_or_else(|| "invalid chunk size".to_string())?;
                buf.advance(end + 2);
                *state = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = (left.min(buf.len() as u64)) as usize;
                let data = buf.split_to(n).freeze();
                let left = left - n as u64;
                *state = if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                };
                return Ok(Some(data));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err("chunk data not followed by CRLF".into());
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers => {
                let Some(end) = find_crlf(buf) else {
                    if buf.len() > MAX_HEAD {
                        return Err("trailers too long".into());
                    }
                    return Ok(None);
                };
                buf.advance(end + 2);
                if end == 0 {
                    *state = Chunk::Done;
                    return Ok(None);
                }
            }
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Feeds `wire` in pieces split at `cuts`; returns the body, the bytes
    /// left after it, and whether the body ended.
    fn feed(wire: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, Vec<u8>, bool), String> {
        let mut state = Chunk::Size;
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut at = 0;
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        points.sort_unstable();
        points.push(wire.len());
        for p in points {
            buf.extend_from_slice(&wire[at..p.max(at)]);
            at = p.max(at);
            while let Some(d) = decode(&mut state, &mut buf)? {
                body.extend_from_slice(&d);
            }
        }
        Ok((body, buf.to_vec(), state == Chunk::Done))
    }

    /// The chunked coding of `pieces`, with an extension on some chunks and
    /// optional trailers.
    fn encode(pieces: &[Vec<u8>], ext: bool, trailers: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, p) in pieces.iter().filter(|p| !p.is_empty()).enumerate() {
            out.extend_from_slice(format!("{:x}", p.len()).as_bytes());
            if ext && i % 2 == 0 {
                out.extend_from_slice(b";name=value");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(p);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        if trailers {
            out.extend_from_slice(b"X-Trailer: t\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    #[test]
    fn extensions_trailers_and_what_follows() {
        let wire =
            b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\nHTTP/1.1 next";
        let (body, rest, done) = feed(wire, &[]).unwrap();
        assert_eq!(&body[..], b"hello world");
        assert_eq!(&rest[..], b"HTTP/1.1 next");
        assert!(done);
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"11111111111111111\r\n",
            // Signs: Rust's integer parser takes them, HTTP does not.
            b"+a\r\n",
            b"-0\r\n",
        ] {
            assert!(feed(bad, &[]).is_err(), "{bad:?}");
        }
        assert!(feed(&[b'1'; 5000], &[]).is_err(), "size line too long");
    }

    proptest! {
        /// Whatever the chunk sizes and wherever the reads split: the body
        /// comes out whole, the decoder stops exactly at the end of the
        /// coding, and the bytes after it are left untouched.
        #[test]
        fn decodes_what_was_encoded_across_any_split(
            pieces in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..6),
            ext in any::<bool>(),
            trailers in any::<bool>(),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
            after in prop::collection::vec(any::<u8>(), 0..20),
        ) {
            let mut wire = encode(&pieces, ext, trailers);
            wire.extend_from_slice(&after);
            let (body, rest, done) = feed(&wire, &cuts).unwrap();
            prop_assert_eq!(body, pieces.concat());
            prop_assert_eq!(rest, after);
            prop_assert!(done);
        }

        /// Any bytes: an error, a body so far, or the end; never a panic,
        /// and never more body than bytes fed.
        #[test]
        fn any_bytes_decode_without_panic(
            wire in prop::collection::vec(any::<u8>(), 0..600),
            cuts in prop::collection::vec(any::<usize>(), 0..4),
        ) {
            if let Ok((body, rest, _)) = feed(&wire, &cuts) {
                prop_assert!(body.len() + rest.len() <= wire.len());
            }
        }
    }
}
