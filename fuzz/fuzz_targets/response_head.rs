//! A backend's response head: whatever the bytes, no panic; what parses
//! takes exactly its head out of the buffer, and re-parsing the rest never
//! sees the same bytes twice.
#![no_main]

use balancer::upstream::codec::parse_head;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
