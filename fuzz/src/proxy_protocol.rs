//! The PROXY protocol header parser (`server::proxy_protocol::parse`) on
//! any bytes: no panic; a header it accepts is self-delimiting (the same
//! header parses from exactly its own bytes, and from them followed by
//! anything) and no longer than the spec allows.

use balancer::server::proxy_protocol::{parse, V1_MAX, V2_MAX_PAYLOAD};

/// One input: panics if an invariant does not hold.
pub fn check(data: &[u8]) {
    let Ok((header, len)) = parse(data) else {
        return;
    };
    assert!(len <= data.len());
    assert!(len <= V1_MAX.max(16 + V2_MAX_PAYLOAD), "{len} bytes");
    assert_eq!(
        parse(&data[..len]),
        Ok((header, len)),
        "not self-delimiting"
    );
    let mut longer = data[..len].to_vec();
    longer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(parse(&longer), Ok((header, len)));
}
