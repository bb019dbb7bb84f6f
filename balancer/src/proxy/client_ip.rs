//! Who the client is: the TCP peer, unless the peer is a trusted proxy (a
//! load balancer in front of this one); then the right-most address in
//! `X-Forwarded-For` that is not itself a trusted proxy. Trusting only the
//! right-most untrusted hop means a client cannot pick its own address by
//! sending a forged `X-Forwarded-For`: everything left of the first
//! untrusted hop is the client's to invent, and is ignored.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

use super::headers::X_FORWARDED_FOR;

/// Whether `peer` is one of the trusted proxies (its forwarding headers
/// are believed and appended to).
pub fn is_trusted(peer: IpAddr, trusted: &[IpNet]) -> bool {
    !trusted.is_empty() && trusted.iter().any(|n| n.contains(&canonical(peer)))
}

/// The client address for routing and logs. Pure; any header content is safe.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(&canonical(*ip)));
    if trusted.is_empty() || !is_trusted(&peer) {
        return peer;
    }
    let mut nearest = peer;
    // Several X-Forwarded-For headers are one list, in order; walk it from
    // the right. Bytes, not text: a line with a non-ASCII byte (a client's
    // invention) must not hide the hops our own proxies appended to it.
    let hops = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .rev()
        .flat_map(|v| v.as_bytes().rsplit(|&b| b == b','));
    for hop in hops {
        match std::str::from_utf8(hop).ok().and_then(parse_hop) {
            Some(ip) if is_trusted(&ip) => nearest = ip,
            Some(ip) => return ip,
            // Garbage from a trusted hop: stop at the last address we can vouch for.
            None => return nearest,
        }
    }
    nearest
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:443`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = hop.parse::<std::net::SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    None
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&X_FORWARDED_FOR, v.parse().unwrap());
        }
        h
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_non_ascii_line_does_not_hide_trusted_hops() {
        let mut h = HeaderMap::new();
        let line = http::HeaderValue::from_bytes(b"\xff\xfe, 203.0.113.9, 10.0.0.5").unwrap();
        h.insert(&X_FORWARDED_FOR, line);
        let t = nets(&["10.0.0.0/8"]);
        assert_eq!(client_ip(ip("10.1.1.1"), &h, &t), ip("203.0.113.9"));
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let h = xff(&["203.0.113.9"]);
        assert_eq!(
            client_ip(ip("198.51.100.1"), &h, &nets(&["10.0.0.0/8"])),
            ip("198.51.100.1")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &[]), ip("10.0.0.1"));
    }

    #[test]
    fn right_most_untrusted_hop_behind_trusted_proxies() {
        let t = nets(&["10.0.0.0/8", "127.0.0.0/8"]);
        // client forged 1.1.1.1; real client 203.0.113.9; then two of our proxies.
        let h = xff(&["1.1.1.1, 203.0.113.9", "10.0.0.5"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &t), ip("203.0.113.9"));
        let h = xff(&["203.0.113.9:5555"]);
        assert_eq!(client_ip(ip("10.1.1.1"), &h, &t), ip("203.0.113.9"));
        let h = xff(&["[2001:db8::7]:443"]);
        assert_eq!(client_ip(ip("10.1.1.1"), &h, &t), ip("2001:db8::7"));
        // All hops trusted: the left-most one is the best we know.
        let h = xff(&["10.9.9.9, 10.0.0.5"]);
        assert_eq!(client_ip(ip("10.1.1.1"), &h, &t), ip("10.9.9.9"));
        // No header: the trusted peer itself.
        assert_eq!(
            client_ip(ip("10.1.1.1"), &HeaderMap::new(), &t),
            ip("10.1.1.1")
        );
        // Garbage stops the walk at the last trusted address.
        let h = xff(&["203.0.113.9, unknown, 10.0.0.5"]);
        assert_eq!(client_ip(ip("10.1.1.1"), &h, &t), ip("10.0.0.5"));
        // IPv4-mapped peer counts as IPv4.
        let h = xff(&["203.0.113.9"]);
        assert_eq!(client_ip(ip("::ffff:10.0.0.1"), &h, &t), ip("203.0.113.9"));
    }

    proptest! {
        #[test]
        fn any_header_is_safe(v in "[ -~]{0,200}") {
            if let Ok(value) = v.parse() {
                let mut h = HeaderMap::new();
                h.insert(&X_FORWARDED_FOR, value);
                let _ = client_ip(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"]));
            }
        }
    }
}
