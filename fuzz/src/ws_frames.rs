//! The WebSocket frame tracker of tunnels (it follows what a backend sends
//! to decide when a Close frame may be written): any bytes in any pieces,
//! no panic, and the same bytes fed whole or in pieces land on the same
//! boundary.

use balancer::proxy::ws_frames::FrameBoundary;

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
}
