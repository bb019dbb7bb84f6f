//! The HTTP/2 frame-header tracker that the PING and SETTINGS flood limits
//! read a client's bytes with (`server::h2_frames`): any bytes in any
//! pieces, no panic; the same frames fed whole or in pieces, and exactly
//! the frames a plain walk over the bytes finds (the 24-byte preface
//! skipped, then 9-byte headers and their payloads); the boundary where
//! that walk ends; and a flood meter that trips at the first frame over a
//! limit, never before.

use balancer::server::h2_frames::{
    Flood, FloodMeter, FrameHead, FrameHeads, ACK, HEADER_LEN, PING, PREFACE_LEN, SETTINGS,
};

/// The frames `data` holds, fed in pieces of `step`, and whether it ends
/// on a boundary.
fn tracked(data: &[u8], step: usize) -> (Vec<FrameHead>, bool) {
    let mut t = FrameHeads::client();
    let mut seen = Vec::new();
    for piece in data.chunks(step.max(1)) {
        assert!(t.feed(piece, |h| {
            seen.push(h);
            true
        }));
    }
    (seen, t.at_boundary())
}

/// The same, walked by offsets.
fn walked(data: &[u8]) -> (Vec<FrameHead>, bool) {
    let mut seen = Vec::new();
    let mut pos = PREFACE_LEN;
    while pos + HEADER_LEN <= data.len() {
        let h = &data[pos..pos + HEADER_LEN];
        let head = FrameHead {
            len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        };
        seen.push(head);
        pos += HEADER_LEN + head.len as usize;
    }
    let boundary = data.is_empty() || (data.len() >= PREFACE_LEN && pos == data.len());
    (seen, boundary)
}

/// One input (its first byte: the piece size): panics if an invariant
/// does not hold.
pub fn check(data: &[u8]) {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let whole = tracked(data, data.len());
    assert_eq!(tracked(data, usize::from(step)), whole);
    assert_eq!(walked(data), whole);

    // All within one second: 3 PINGs and 2 SETTINGS pass, the next trips.
    let mut meter = FloodMeter::new(3, 2);
    let (mut pings, mut settings) = (0, 0);
    for head in whole.0 {
        let expected = match head.kind {
            PING => {
                pings += 1;
                (pings > 3).then_some(Flood::Ping)
            }
            SETTINGS if head.flags & ACK == 0 => {
                settings += 1;
                (settings > 2).then_some(Flood::Settings)
            }
            _ => None,
        };
        let got = meter.frame(head, 1);
        assert_eq!(got, expected, "{head:?}");
        if got.is_some() {
            break;
        }
    }
}
