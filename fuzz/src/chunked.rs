//! The chunked decoder over any bytes, fed in two pieces split where the
//! first byte says: no panic, never more body than bytes fed, and the bytes
//! after the end of the coding are left untouched.

use balancer::upstream::chunked::{decode, Chunk};
use bytes::BytesMut;

/// One input: panics if an invariant does not hold.
pub fn check(data: &[u8]) {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let at = usize::from(split) % (data.len() + 1);
    let mut state = Chunk::Size;
    let mut buf = BytesMut::new();
    let mut body = 0usize;
    for piece in [&data[..at], &data[at..]] {
        buf.extend_from_slice(piece);
        loop {
            match decode(&mut state, &mut buf) {
                Ok(Some(d)) => {
                    assert!(!d.is_empty(), "an empty piece of body");
                    body += d.len();
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    assert!(body + buf.len() <= data.len());
    if state == Chunk::Done {
        assert_eq!(&data[data.len() - buf.len()..], &buf[..]);
    }
}
