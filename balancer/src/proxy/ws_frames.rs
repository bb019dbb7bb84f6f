//! Just enough WebSocket framing (RFC 6455 5.2) to end a tunnel politely.
//!
//! Tunnels copy bytes without parsing them. To close one with a Close frame
//! (drain timeout, shutdown) the balancer must not cut into a frame the
//! backend is halfway through sending, so the client-bound byte stream runs
//! through a [`FrameBoundary`] tracker: it follows frame headers and payload
//! lengths and says whether everything written so far ends on a frame
//! boundary. The same tracker decides where the balancer's own keep-alive
//! Ping may go ([`FrameBoundary::to_boundary`], [`PING_FRAME`]). Pure, any
//! input is safe.

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
    pub fn feed(&mut self, bytes: &[u8]) {
        self.feed_frames(bytes, |_| true);
    }

    /// [`FrameBoundary::feed`], calling `on_frame` with each frame header
    /// as it completes; stops early (returning false) when it returns false.
    pub fn feed_frames(
        &mut self,
        mut bytes: &[u8],
        mut on_frame: impl FnMut(FrameHead) -> bool,
    ) -> bool {
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
                let head = FrameHead {
                    fin: self.header[0] & 0x80 != 0,
                    opcode: self.header[0] & 0x0f,
                    len: payload,
                };
                self.header_len = 0;
                self.payload_left = payload;
                if !on_frame(head) {
                    return false;
                }
            }
        }
        true
    }

    /// How many of `bytes` take the stream to the end of the frame it is
    /// in: 0 at a boundary, `bytes.len()` if the frame goes on past them.
    /// Writing that many, then something else, never cuts into a frame.
    pub fn to_boundary(&self, bytes: &[u8]) -> usize {
        if self.at_boundary() {
            return 0;
        }
        let mut probe = self.clone();
        let mut used = 0;
        while used < bytes.len() {
            if probe.payload_left > 0 {
                let n = probe.payload_left.min((bytes.len() - used) as u64);
                probe.payload_left -= n;
                used += n as usize;
            } else {
                // A header byte: at most 14 of these before a payload.
                probe.feed(&bytes[used..=used]);
                used += 1;
            }
            if probe.at_boundary() {
                return used;
            }
        }
        bytes.len()
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

/// One frame's header, as [`FrameBoundary::feed_frames`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub fin: bool,
    pub opcode: u8,
    pub len: u64,
}

/// Which per-tunnel limit a client's messages broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageLimit {
    /// A message over `websocket_max_message` bytes: close 1009.
    TooBig,
    /// More than `websocket_max_message_rate` messages a second: close 1008.
    TooFast,
}

impl MessageLimit {
    pub fn close_code(self) -> u16 {
        match self {
            Self::TooBig => 1009,
            Self::TooFast => 1008,
        }
    }

    /// The metric's and the log's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooBig => "message_too_big",
            Self::TooFast => "message_rate",
        }
    }
}

/// The size and rate of the messages a client sends through a tunnel,
/// from its frame headers: data frames (and their continuations) add up to
/// a message until FIN; control frames (ping, pong, close) are not
/// messages. The rate is a token bucket that holds one second's worth.
#[derive(Debug, Clone)]
pub struct MessageMeter {
    frames: FrameBoundary,
    max_message: u64,
    rate: f64,
    current: u64,
    tokens: f64,
    refilled: std::time::Instant,
}

impl MessageMeter {
    /// `max_message` bytes, `rate` messages a second; 0 turns either off.
    pub fn new(max_message: u64, rate: u32) -> Self {
        Self {
            frames: FrameBoundary::default(),
            max_message,
            rate: f64::from(rate),
            current: 0,
            tokens: f64::from(rate),
            refilled: std::time::Instant::now(),
        }
    }

    /// Whether it limits anything (else nothing need be fed).
    pub fn active(&self) -> bool {
        self.max_message > 0 || self.rate > 0.0
    }

    /// Accounts for `bytes` read from the client at `now`; the limit they
    /// broke, if any.
    pub fn feed(&mut self, bytes: &[u8], now: std::time::Instant) -> Option<MessageLimit> {
        let mut broken = None;
        let (max, rate) = (self.max_message, self.rate);
        let (current, tokens, refilled) = (&mut self.current, &mut self.tokens, &mut self.refilled);
        self.frames.feed_frames(bytes, |f| {
            if f.opcode >= 8 {
                return true;
            }
            *current = current.saturating_add(f.len);
            if max > 0 && *current > max {
                broken = Some(MessageLimit::TooBig);
                return false;
            }
            if f.fin {
                *current = 0;
                if rate > 0.0 {
                    let elapsed = now.saturating_duration_since(*refilled).as_secs_f64();
                    *refilled = now;
                    *tokens = (*tokens + elapsed * rate).min(rate) - 1.0;
                    if *tokens < 0.0 {
                        broken = Some(MessageLimit::TooFast);
                        return false;
                    }
                }
            }
            true
        });
        broken
    }
}

/// The Ping the balancer sends a quiet client (`timeouts.websocket_ping`):
/// unmasked, as every server-to-client frame, FIN, payload `lb` so a
/// packet capture tells it from the backend's own pings. A client answers
/// with a Pong carrying the same payload (RFC 6455 5.5.2).
pub const PING_FRAME: [u8; 4] = [0x89, 0x02, b'l', b'b'];

/// An unmasked (server-to-client) Close frame with `code` and a reason.
pub fn close_frame(code: u16) -> Vec<u8> {
    let reason: &[u8] = match code {
        1012 => b"service restart",
        1009 => b"message too big",
        1008 => b"message rate limit",
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
    fn message_size_adds_up_fragments_and_skips_control_frames() {
        let start = std::time::Instant::now();
        let mut m = MessageMeter::new(100, 0);
        // 60 + 30 in two fragments, a ping between: 90, fine.
        let mut first = frame(60, true);
        first[0] = 0x01; // text, no FIN
        let mut ping = frame(125, true);
        ping[0] = 0x89;
        let mut last = frame(30, true);
        last[0] = 0x80; // continuation, FIN
        assert_eq!(m.feed(&[first.clone(), ping, last].concat(), start), None);
        // 60 + 60 in two fragments: over 100.
        let mut over = frame(60, true);
        over[0] = 0x80;
        assert_eq!(m.feed(&first, start), None);
        assert_eq!(
            m.feed(&over[..6], start),
            Some(MessageLimit::TooBig),
            "at its header"
        );
    }

    #[test]
    fn message_rate_is_a_one_second_bucket() {
        let start = std::time::Instant::now();
        let mut m = MessageMeter::new(0, 10);
        let ten: Vec<u8> = (0..10).flat_map(|_| frame(5, true)).collect();
        assert_eq!(m.feed(&ten, start), None);
        assert_eq!(m.feed(&frame(5, true), start), Some(MessageLimit::TooFast));
        let mut m = MessageMeter::new(0, 10);
        for i in 0..100u64 {
            let at = start + std::time::Duration::from_millis(100 * i);
            assert_eq!(m.feed(&frame(5, true), at), None, "message {i} at 10/s");
        }
        assert!(!MessageMeter::new(0, 0).active());
    }

    #[test]
    fn close_frame_layout() {
        let f = close_frame(1001);
        assert_eq!(&f[..4], &[0x88, 12, 0x03, 0xe9]);
        assert_eq!(&f[4..], b"going away");
        assert_eq!(&close_frame(1012)[2..4], &[0x03, 0xf4]);
    }

    #[test]
    fn to_boundary_stops_at_the_end_of_the_current_frame() {
        let stream: Vec<u8> = [frame(5, false), frame(300, false), frame(0, false)].concat();
        let ends = [7usize, 7 + 304, 7 + 304 + 2];
        for start in 0..stream.len() {
            let mut t = FrameBoundary::default();
            t.feed(&stream[..start]);
            let k = t.to_boundary(&stream[start..]);
            let want = if start == 0 || ends.contains(&start) {
                0
            } else {
                ends.iter()
                    .find(|&&e| e > start)
                    .map_or(stream.len(), |&e| e)
                    - start
            };
            assert_eq!(k, want, "from byte {start}");
            t.feed(&stream[start..start + k]);
            assert!(t.at_boundary(), "from byte {start}");
        }
        // A frame that goes on past the bytes given: all of them.
        let mut t = FrameBoundary::default();
        t.feed(&frame(300, false)[..10]);
        assert_eq!(t.to_boundary(&[0u8; 50]), 50);
        assert_eq!(PING_FRAME.len(), 4);
        let mut t = FrameBoundary::default();
        let mut heads = Vec::new();
        t.feed_frames(&PING_FRAME, |h| {
            heads.push(h);
            true
        });
        assert_eq!(
            heads,
            [FrameHead {
                fin: true,
                opcode: 9,
                len: 2
            }]
        );
        assert!(t.at_boundary());
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

        #[test]
        fn to_boundary_never_cuts_a_frame(bytes in prop::collection::vec(any::<u8>(), 0..600), cut in 0usize..600) {
            let mut t = FrameBoundary::default();
            let cut = cut.min(bytes.len());
            t.feed(&bytes[..cut]);
            let k = t.to_boundary(&bytes[cut..]);
            prop_assert!(k <= bytes.len() - cut);
            let mut after = t.clone();
            after.feed(&bytes[cut..cut + k]);
            prop_assert!(after.at_boundary() || k == bytes.len() - cut);
            // No boundary is skipped on the way.
            for j in 1..k {
                let mut mid = t.clone();
                mid.feed(&bytes[cut..cut + j]);
                prop_assert!(!mid.at_boundary(), "boundary at {j} < {k}");
            }
        }
    }
}
