//! A backend's response head: whatever the bytes, no panic; what parses
//! takes exactly its head out of the buffer, and re-parsing the rest never
//! sees the same bytes twice.

use balancer::upstream::codec::parse_head;
use bytes::BytesMut;

/// One input: panics if an invariant does not hold.
pub fn check(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    // Heads back to back, as 1xx heads come before the final one.
    for _ in 0..8 {
        let before = buf.len();
        match parse_head(&mut buf) {
            Ok(Some(head)) => {
                assert!(buf.len() < before, "a head took no bytes");
                assert_eq!(&data[data.len() - buf.len()..], &buf[..]);
                let _ = head.framing_for(false);
                let _ = head.framing_for(true);
            }
            Ok(None) | Err(_) => {
                assert_eq!(buf.len(), before, "a partial or bad head took bytes");
                return;
            }
        }
    }
}
