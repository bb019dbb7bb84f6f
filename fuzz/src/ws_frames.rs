//! The WebSocket frame tracker of tunnels (it follows what a backend sends
//! to decide when a Close frame or a keep-alive Ping may be written): any
//! bytes in any pieces, no panic, and the same bytes fed whole or in
//! pieces land on the same boundary. Ping placement as the tunnel does it
//! (`timeouts.websocket_ping`: a due Ping cuts each write at
//! `to_boundary`, then goes in): `to_boundary` stops at the first boundary
//! and never skips one, every Ping lands where a fresh tracker of the
//! spliced stream is at a boundary and reads it as one whole frame, and
//! the stream without the Pings is the backend's, byte for byte.

use balancer::proxy::ws_frames::{FrameBoundary, PING_FRAME};

/// One input: panics if an invariant does not hold.
pub fn check(data: &[u8]) {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let mut whole = FrameBoundary::default();
    whole.feed(data);
    let mut pieces = FrameBoundary::default();
    for chunk in data.chunks(usize::from(step).max(1)) {
        pieces.feed(chunk);
    }
    assert_eq!(whole.at_boundary(), pieces.at_boundary());
    splice_pings(data, usize::from(step).max(1));
}

/// Writes `data` in pieces of `step` with a Ping due all the time (so one
/// between every two frames, cutting writes as the tunnel's client side
/// does), and checks the spliced stream.
fn splice_pings(data: &[u8], step: usize) {
    let mut backend = FrameBoundary::default();
    let mut out = Vec::with_capacity(data.len() * 2);
    let mut pings = Vec::new();
    for mut piece in data.chunks(step) {
        // Bounded: every round writes at least one byte of the piece.
        while !piece.is_empty() {
            if backend.at_boundary() {
                pings.push(out.len());
                out.extend_from_slice(&PING_FRAME);
            }
            // Up to the end of the frame that starts or goes on here (at
            // a boundary, `to_boundary` is 0: count from its first byte).
            let first = usize::from(backend.at_boundary());
            let mut next = backend.clone();
            next.feed(&piece[..first]);
            let k = first + next.to_boundary(&piece[first..]);
            assert!(
                k >= 1 && k <= piece.len(),
                "to_boundary {k} of {}",
                piece.len()
            );
            // No boundary before k; one at k unless the frame goes on.
            let mut probe = backend.clone();
            for (i, b) in piece[..k].iter().enumerate() {
                assert!(
                    !probe.at_boundary() || i == 0,
                    "a boundary skipped at {i} of {k}"
                );
                probe.feed(std::slice::from_ref(b));
            }
            assert!(
                probe.at_boundary() || k == piece.len(),
                "stopped short at {k}"
            );
            backend.feed(&piece[..k]);
            out.extend_from_slice(&piece[..k]);
            piece = &piece[k..];
        }
    }
    // A fresh tracker of what the client got sees each Ping start at a
    // boundary and end at one, as a single FIN Ping frame of 2 bytes.
    let mut client = FrameBoundary::default();
    let mut at = 0;
    let mut stripped = Vec::with_capacity(data.len());
    for &p in &pings {
        client.feed(&out[at..p]);
        stripped.extend_from_slice(&out[at..p]);
        assert!(client.at_boundary(), "a Ping inside a frame at {p}");
        let mut heads = Vec::new();
        client.feed_frames(&PING_FRAME, |h| {
            heads.push(h);
            true
        });
        assert!(client.at_boundary());
        assert_eq!(heads.len(), 1);
        assert!(heads[0].fin && heads[0].opcode == 9 && heads[0].len == 2);
        at = p + PING_FRAME.len();
    }
    client.feed(&out[at..]);
    stripped.extend_from_slice(&out[at..]);
    assert_eq!(stripped, data, "the backend's bytes changed");
    assert_eq!(client.at_boundary(), backend.at_boundary());
}
