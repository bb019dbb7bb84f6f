//! Session tickets come from the network: any bytes open to nothing or to
//! exactly what was sealed, never panic; what was sealed opens to itself.

use balancer::server::tls::{KeyFileTicketer, TicketKeys};
use rustls::server::ProducesTickets;

/// One input: panics if an invariant does not hold.
pub fn check(data: &[u8]) {
    let keys = TicketKeys::parse("fuzzing key fuzzing key fuzzing key 0123456789").unwrap();
    let t = KeyFileTicketer::new(keys, std::time::Duration::from_secs(60));
    let _ = t.decrypt(data);
    let sealed = t.encrypt(data).unwrap();
    assert_eq!(t.decrypt(&sealed).as_deref(), Some(data));
    // Key files are operator input, but must not panic either.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = TicketKeys::parse(text);
    }
}
