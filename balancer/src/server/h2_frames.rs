//! Just enough HTTP/2 framing (RFC 9113 3.4 and 4.1) to count what a
//! client sends on a connection hyper serves.
//!
//! h2 (hyper's HTTP/2) answers every PING and applies every SETTINGS frame
//! a client sends, one at a time and with backpressure, but it has no limit
//! on how many a second: a client can keep a core busy with 17-byte PINGs
//! forever. So the bytes a client sends pass through a [`FrameHeads`]
//! tracker (the 24-byte preface, then 9-byte frame headers and payload
//! lengths; the payloads are skipped, h2 reads them) and each header goes
//! to a [`FloodMeter`]. The bytes the balancer writes pass through another
//! tracker, so a GOAWAY of its own is written only between h2's frames.
//! Pure, any input is safe: a frame header is nine bytes whatever they
//! say, and h2 itself refuses what is malformed.

/// The client connection preface (RFC 9113 3.4).
pub const PREFACE_LEN: usize = 24;
/// A frame header's size.
pub const HEADER_LEN: usize = 9;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
/// The ACK flag of SETTINGS and PING.
pub const ACK: u8 = 0x1;
/// GOAWAY's error code for a peer that "exhibits behavior that might be
/// generating excessive load" (RFC 9113 7).
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame's header (RFC 9113 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// Payload length (24 bits).
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    /// Stream identifier (31 bits; the reserved bit dropped).
    pub stream: u32,
}

impl FrameHead {
    fn parse(h: &[u8; HEADER_LEN]) -> Self {
        Self {
            len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        }
    }
}

/// Follows frame boundaries in one direction of an HTTP/2 byte stream.
#[derive(Debug, Clone)]
pub struct FrameHeads {
    /// Bytes of the preface still to skip (client to server only).
    preface_left: usize,
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// Payload bytes still to come of the current frame.
    payload_left: u32,
}

impl FrameHeads {
    /// What a client sends: the preface, then frames.
    pub fn client() -> Self {
        Self {
            preface_left: PREFACE_LEN,
            ..Self::server()
        }
    }

    /// What a server sends: frames from the first byte.
    pub fn server() -> Self {
        Self {
            preface_left: 0,
            header: [0; HEADER_LEN],
            header_len: 0,
            payload_left: 0,
        }
    }

    /// Whether the bytes fed so far end exactly at the end of a frame
    /// (or of the preface).
    pub fn at_boundary(&self) -> bool {
        matches!(self.preface_left, 0 | PREFACE_LEN)
            && self.header_len == 0
            && self.payload_left == 0
    }

    /// Accounts for `bytes`, calling `on_frame` with each frame header as
    /// it completes; stops early (returning false) when it returns false.
    pub fn feed(&mut self, mut bytes: &[u8], mut on_frame: impl FnMut(FrameHead) -> bool) -> bool {
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            if self.payload_left > 0 {
                let n = (self.payload_left as usize).min(bytes.len());
                self.payload_left -= n as u32;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEADER_LEN - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == HEADER_LEN {
                let head = FrameHead::parse(&self.header);
                self.header_len = 0;
                self.payload_left = head.len;
                if !on_frame(head) {
                    return false;
                }
            }
        }
        true
    }
}

/// Which flood limit a client broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    /// More than `limits.http2_max_ping_rate` PING frames in a second.
    Ping,
    /// More than `limits.http2_max_settings_rate` SETTINGS frames (not
    /// acknowledgements) in a second.
    Settings,
}

impl Flood {
    /// The metric's `limit` label, and the GOAWAY's debug data.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ping => "ping_flood",
            Self::Settings => "settings_flood",
        }
    }
}

/// Counts a client's PING and SETTINGS frames in one-second windows.
///
/// PINGs count whether they ask or acknowledge: the balancer sends a PING
/// of its own only when it closes a connection, so a client has next to
/// nothing to acknowledge, and h2 logs a warning for each acknowledgement
/// it did not ask for. SETTINGS acknowledgements are not counted: one that
/// was not asked for is a protocol error h2 closes the connection for.
#[derive(Debug, Clone)]
pub struct FloodMeter {
    max_pings: u32,
    max_settings: u32,
    /// Start of the current window ([`crate::clock::now_ms`]; 0: none yet).
    window: u64,
    pings: u32,
    settings: u32,
    /// The highest stream a HEADERS frame opened (GOAWAY's last stream).
    last_stream: u32,
}

impl FloodMeter {
    /// At most `max_pings` PINGs and `max_settings` SETTINGS a second; 0
    /// turns either off.
    pub fn new(max_pings: u32, max_settings: u32) -> Self {
        Self {
            max_pings,
            max_settings,
            window: 0,
            pings: 0,
            settings: 0,
            last_stream: 0,
        }
    }

    /// Whether any limit is on (with none, the bytes need no tracking).
    pub fn is_on(&self) -> bool {
        self.max_pings > 0 || self.max_settings > 0
    }

    /// Counts one frame seen at `now_ms`; the limit it broke, if any.
    pub fn frame(&mut self, head: FrameHead, now_ms: u64) -> Option<Flood> {
        if head.kind == HEADERS {
            self.last_stream = self.last_stream.max(head.stream);
        }
        let (max, flood) = match head.kind {
            PING => (self.max_pings, Flood::Ping),
            SETTINGS if head.flags & ACK == 0 => (self.max_settings, Flood::Settings),
            _ => return None,
        };
        if self.window == 0 || now_ms.saturating_sub(self.window) >= 1000 {
            self.window = now_ms.max(1);
            self.pings = 0;
            self.settings = 0;
        }
        let n = match flood {
            Flood::Ping => &mut self.pings,
            Flood::Settings => &mut self.settings,
        };
        *n = n.saturating_add(1);
        (max > 0 && *n > max).then_some(flood)
    }

    /// The highest stream a client's HEADERS frame named.
    pub fn last_stream(&self) -> u32 {
        self.last_stream
    }
}

/// A GOAWAY frame (RFC 9113 6.8) on stream 0: no stream after
/// `last_stream` is processed, for `code`, with `debug` as its debug data.
pub fn goaway(last_stream: u32, code: u32, debug: &[u8]) -> Vec<u8> {
    let len = (8 + debug.len()).min(0x00ff_ffff) as u32;
    let mut f = Vec::with_capacity(HEADER_LEN + len as usize);
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.extend_from_slice(&[GOAWAY, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(&code.to_be_bytes());
    f.extend_from_slice(&debug[..len as usize - 8]);
    f
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn heads(bytes: &[u8], step: usize) -> (Vec<FrameHead>, bool) {
        let mut t = FrameHeads::client();
        let mut seen = Vec::new();
        for piece in bytes.chunks(step.max(1)) {
            t.feed(piece, |h| {
                seen.push(h);
                true
            });
        }
        (seen, t.at_boundary())
    }

    #[test]
    fn frames_after_the_preface_are_found_in_any_pieces() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
        bytes.extend(frame(PING, 0, 0, b"12345678"));
        bytes.extend(frame(HEADERS, 0x5, 0x8000_0003, b"\x82\x86\x84"));
        bytes.extend(frame(DATA, 0, 3, &[0; 70_000][..0]));
        for step in [1, 2, 9, 10, 24, 25, 1000] {
            let (seen, boundary) = heads(&bytes, step);
            assert!(boundary, "step {step}");
            assert_eq!(
                seen.iter()
                    .map(|h| (h.kind, h.len, h.stream))
                    .collect::<Vec<_>>(),
                [
                    (SETTINGS, 6, 0),
                    (PING, 8, 0),
                    (HEADERS, 3, 3),
                    (DATA, 0, 3)
                ],
                "step {step}"
            );
        }
        let (_, boundary) = heads(&bytes[..bytes.len() - 1], 7);
        assert!(!boundary);
    }

    #[test]
    fn pings_over_the_rate_in_one_second_trip_and_a_new_second_starts_afresh() {
        let ping = FrameHead {
            len: 8,
            kind: PING,
            flags: 0,
            stream: 0,
        };
        let ack = FrameHead { flags: ACK, ..ping };
        let settings = FrameHead {
            kind: SETTINGS,
            len: 0,
            ..ping
        };
        let settings_ack = FrameHead {
            flags: ACK,
            ..settings
        };
        let mut m = FloodMeter::new(3, 2);
        assert_eq!(m.frame(ping, 100), None);
        assert_eq!(m.frame(ack, 200), None);
        assert_eq!(m.frame(ping, 300), None);
        assert_eq!(m.frame(ping, 400), Some(Flood::Ping));
        let mut m = FloodMeter::new(3, 2);
        for t in [100, 500, 900] {
            assert_eq!(m.frame(ping, t), None);
        }
        // 1,100: a new window.
        for t in [1100, 1200, 1300] {
            assert_eq!(m.frame(ping, t), None);
        }
        assert_eq!(m.frame(settings, 1300), None);
        assert_eq!(m.frame(settings_ack, 1300), None);
        assert_eq!(m.frame(settings, 1400), None);
        assert_eq!(m.frame(settings, 1500), Some(Flood::Settings));
        // 0 turns a limit off.
        let mut m = FloodMeter::new(0, 0);
        assert!(!m.is_on());
        assert!((0..10_000).all(|_| m.frame(ping, 5).is_none()));
    }

    #[test]
    fn goaway_carries_the_last_stream_and_the_code() {
        let mut m = FloodMeter::new(1, 1);
        let headers = FrameHead {
            len: 3,
            kind: HEADERS,
            flags: 0x4,
            stream: 7,
        };
        m.frame(headers, 1);
        m.frame(
            FrameHead {
                stream: 5,
                ..headers
            },
            1,
        );
        let g = goaway(m.last_stream(), ENHANCE_YOUR_CALM, b"ping_flood");
        assert_eq!(g.len(), 9 + 8 + 10);
        let (seen, boundary) = {
            let mut t = FrameHeads::server();
            let mut seen = Vec::new();
            t.feed(&g, |h| {
                seen.push(h);
                true
            });
            (seen, t.at_boundary())
        };
        assert!(boundary);
        assert_eq!(seen[0].kind, GOAWAY);
        assert_eq!(seen[0].len, 18);
        assert_eq!(&g[9..13], &7u32.to_be_bytes());
        assert_eq!(&g[13..17], &ENHANCE_YOUR_CALM.to_be_bytes());
    }

    proptest! {
        /// Any bytes, in any pieces: no panic, and the same frames and
        /// boundary as when fed whole.
        #[test]
        fn any_bytes_in_any_pieces(bytes in proptest::collection::vec(any::<u8>(), 0..600), step in 1usize..40) {
            let whole = heads(&bytes, bytes.len().max(1));
            prop_assert_eq!(heads(&bytes, step), whole);
        }
    }
}
