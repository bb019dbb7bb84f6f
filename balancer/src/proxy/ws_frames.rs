//! Just enough WebSocket framing (RFC 6455 5.2) to end a tunnel politely.
//!
//! Tunnels copy bytes without parsing them. To close one with a Close frame
//! (drain timeout, shutdown) the balancer must not cut into a frame the
//! backend is halfway through sending, so the client-bound byte stream runs
//! through a [`FrameBoundary`] tracker: it follows frame headers and payload
//! lengths and says whether everything written so far ends on a frame
//! boundary. Pure, any input is safe.

/// Follows frame boundaries in one direction of a WebSocket byte stream.
#[derive(Debug, Clone, Default)]
pub struct FrameBoundary {
    /// Header bytes seen of the frame being read (at most 14).
    header: [u8; 14],
    header_len: usize,
    /// Payload bytes still to come of the current frame.
    payload_left: u64,
}

impl FrameBoundary {
    /// Whether the bytes fed so far end exactly at the end of a frame.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0
    }

    /// Accounts for `bytes` written to the peer.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = (self.payload_left.min(bytes.len() as u64)) as usize;
                self.payload_left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            self.header[self.header_len] = bytes[0];
            self.header_len += 1;
            bytes = &bytes[1..];
            if let Some((header_size, payload)) = self.header_complete() {
                debug_assert_eq!(header_size, self.header_len);
                self.header_len = 0;
                self.payload_left = payload;
            }
        }
    }

    /// `(header size, payload length)` once the header is complete.
    fn header_complete(&self) -> Option<(usize, u64)> {
        let h = &self.header[..self.header_len];
        if h.len() < 2 {
            return None;
        }
        let masked = h[1] & 0x80 != 0;
        let (ext, len7) = match h[1] & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        let size = 2 + ext + if masked { 4 } else { 0 };
        if h.len() < size {
            return None;
        }
        let len = len7.unwrap_or_else(|| {
            h[2..2 + ext]
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
        });
        Some((size, len))
    }
}

/// An unmasked (server-to-client) Close frame with `code` and a reason.
pub fn close_frame(code: u16) -> Vec<u8> {
    let reason: &[u8] = match code {
        1012 => b"service restart",
        _ => b"going away",
    };
    let mut f = Vec::with_capacity(4 + reason.len());
    f.push(0x88); // FIN + opcode 8 (close)
    f.push((2 + reason.len()) as u8);
    f.extend_from_slice(&code.to_be_bytes());
    f.extend_from_slice(reason);
    f
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn frame(payload_len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x82];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload_len {
            n if n < 126 => f.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                f.push(mask_bit | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(mask_bit | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(7u8, payload_len));
        f
    }

    #[test]
    fn tracks_boundaries_across_split_writes() {
        let mut t = FrameBoundary::default();
        assert!(t.at_boundary());
        let stream: Vec<u8> = [
            frame(5, false),
            frame(300, false),
            frame(70_000, true),
            frame(0, false),
        ]
        .concat();
        let ends = [7usize, 7 + 304, 7 + 304 + 70_014, 7 + 304 + 70_014 + 2];
        // Feed in odd-sized pieces; check the boundary at every cut.
        let mut fed = 0;
        for piece in stream.chunks(97) {
            t.feed(piece);
            fed += piece.len();
            assert_eq!(t.at_boundary(), ends.contains(&fed), "after {fed} bytes");
        }
        assert!(t.at_boundary());
    }

    #[test]
    fn close_frame_layout() {
        let f = close_frame(1001);
        assert_eq!(&f[..4], &[0x88, 12, 0x03, 0xe9]);
        assert_eq!(&f[4..], b"going away");
        assert_eq!(&close_frame(1012)[2..4], &[0x03, 0xf4]);
    }

    proptest! {
        #[test]
        fn any_bytes_are_safe(bytes in prop::collection::vec(any::<u8>(), 0..2000), cut in 0usize..2000) {
            let mut t = FrameBoundary::default();
            let cut = cut.min(bytes.len());
            t.feed(&bytes[..cut]);
            t.feed(&bytes[cut..]);
            let _ = t.at_boundary();
        }
    }
}
