//! The client address from `X-Forwarded-For` behind trusted proxies: any
//! header bytes, no panic, and the answer is the peer or one of the hops
//! the header names (an address, or an address with a port; IPv4-mapped
//! IPv6 counts as the IPv4 address).

use std::net::{IpAddr, SocketAddr};

use balancer::proxy::client_ip::client_ip;
use http::{HeaderMap, HeaderValue};

fn hops(value: &[u8]) -> Vec<IpAddr> {
    value
        .split(|&b| b == b',')
        .filter_map(|h| std::str::from_utf8(h).ok())
        .filter_map(|h| {
            let h = h.trim();
            h.parse::<IpAddr>()
                .ok()
                .or_else(|| h.parse::<SocketAddr>().ok().map(|s| s.ip()))
        })
        .map(|ip| match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        })
        .collect()
}

/// One input: panics if an invariant does not hold.
pub fn check(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.append("x-forwarded-for", value);
    let peer = IpAddr::from([10, 0, 0, 1]);
    let trusted: Vec<ipnet::IpNet> = ["10.0.0.0/8", "192.168.0.0/16"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    let got = client_ip(peer, &headers, &trusted);
    assert!(
        got == peer || hops(data).contains(&got),
        "{got} from {data:?}"
    );
}
