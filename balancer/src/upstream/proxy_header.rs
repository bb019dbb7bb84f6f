//! The PROXY protocol header the balancer *sends* to the backends of a
//! pool with `send_proxy_protocol` (the listener side, which reads one, is
//! `server::proxy_protocol`). Every new connection to such a backend starts
//! with one, before TLS and HTTP: the client's address and the balancer's
//! address it connected to, or `LOCAL` (v1: `UNKNOWN`) for the balancer's
//! own connections, such as health checks.
//!
//! A connection that named one client carries that client's identity for
//! its whole life, so the pool reuses it only for a request whose header
//! would be the same bytes (see `ConnectionPool::checkout`): the header is
//! the pool key.

use std::net::{IpAddr, SocketAddr};

use config::ProxyVersion;

/// v2's signature (the same bytes the listener side looks for).
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// One connection's header. Small and `Copy`: it travels in
/// [`super::UpstreamSettings`] and keys idle connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    version: ProxyVersion,
    /// Client (source) and balancer (destination); `None`: `LOCAL`.
    addrs: Option<(SocketAddr, SocketAddr)>,
}

impl ProxyHeader {
    /// A connection of the balancer's own (health checks): v2 `LOCAL`,
    /// v1 `UNKNOWN`; the backend takes the TCP peer as the client.
    pub fn local(version: ProxyVersion) -> Self {
        Self {
            version,
            addrs: None,
        }
    }

    /// A connection for `source`, which reached the balancer at
    /// `destination`. A pair of different families is sent as IPv6 (the
    /// IPv4 one mapped), since a header names one family; a pair of
    /// IPv4-mapped IPv6 addresses (a dual-stack listener) as IPv4.
    pub fn proxied(version: ProxyVersion, source: SocketAddr, destination: SocketAddr) -> Self {
        let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        let (mut s, mut d) = (canonical(source), canonical(destination));
        if s.is_ipv4() != d.is_ipv4() {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
                IpAddr::V6(_) => a,
            };
            (s, d) = (v6(s), v6(d));
        }
        Self {
            version,
            addrs: Some((s, d)),
        }
    }

    pub fn version(&self) -> ProxyVersion {
        self.version
    }

    /// The same kind of header for another connection: `self`'s version.
    pub fn for_client(&self, source: SocketAddr, destination: SocketAddr) -> Self {
        Self::proxied(self.version, source, destination)
    }

    /// Appends the header's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self.version {
            ProxyVersion::V1 => self.encode_v1(out),
            ProxyVersion::V2 => self.encode_v2(out),
        }
    }

    /// `PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\n`, or
    /// `PROXY UNKNOWN\r\n`; at most 104 bytes, under v1's 107.
    fn encode_v1(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let Some((s, d)) = self.addrs else {
            out.extend_from_slice(b"PROXY UNKNOWN\r\n");
            return;
        };
        let family = if s.is_ipv4() { "TCP4" } else { "TCP6" };
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            "PROXY {family} {} {} {} {}\r\n",
            s.ip(),
            d.ip(),
            s.port(),
            d.port()
        );
    }

    /// The binary header: signature, version 2 with command `PROXY` (or
    /// `LOCAL`), TCP over IPv4 or IPv6 (or unspecified), the addresses and
    /// ports in network order; no TLVs.
    fn encode_v2(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&V2_SIGNATURE);
        let Some((s, d)) = self.addrs else {
            out.extend_from_slice(&[0x20, 0x00, 0, 0]);
            return;
        };
        match (s.ip(), d.ip()) {
            (IpAddr::V4(si), IpAddr::V4(di)) => {
                out.extend_from_slice(&[0x21, 0x11, 0, 12]);
                out.extend_from_slice(&si.octets());
                out.extend_from_slice(&di.octets());
            }
            (si, di) => {
                let v6 = |ip: IpAddr| match ip {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                    IpAddr::V6(v6) => v6.octets(),
                };
                out.extend_from_slice(&[0x21, 0x21, 0, 36]);
                out.extend_from_slice(&v6(si));
                out.extend_from_slice(&v6(di));
            }
        }
        out.extend_from_slice(&s.port().to_be_bytes());
        out.extend_from_slice(&d.port().to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::server::proxy_protocol::{parse, Header};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn bytes(h: ProxyHeader) -> Vec<u8> {
        let mut out = Vec::new();
        h.encode(&mut out);
        out
    }

    #[test]
    fn the_bytes_of_each_kind() {
        let h = ProxyHeader::proxied(
            ProxyVersion::V1,
            sa("203.0.113.7:56324"),
            sa("10.0.0.1:443"),
        );
        assert_eq!(bytes(h), b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\n");
        assert_eq!(
            bytes(ProxyHeader::local(ProxyVersion::V1)),
            b"PROXY UNKNOWN\r\n"
        );
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 12, 203, 0, 113, 7, 10, 0, 0, 1]);
        v2.extend_from_slice(&[0xdc, 0x04, 0x01, 0xbb]);
        let h = ProxyHeader::proxied(
            ProxyVersion::V2,
            sa("203.0.113.7:56324"),
            sa("10.0.0.1:443"),
        );
        assert_eq!(bytes(h), v2);
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(bytes(ProxyHeader::local(ProxyVersion::V2)), local);
    }

    #[test]
    fn mixed_and_mapped_families() {
        // A client from X-Forwarded-For over IPv4, a listener on IPv6.
        let h = ProxyHeader::proxied(ProxyVersion::V2, sa("198.51.100.2:0"), sa("[::1]:8080"));
        assert_eq!(
            parse(&bytes(h)).unwrap().0,
            Header::Proxied {
                source: sa("[::ffff:198.51.100.2]:0"),
                destination: sa("[::1]:8080")
            }
        );
        // A dual-stack listener's peers: plain IPv4.
        let h = ProxyHeader::proxied(
            ProxyVersion::V1,
            sa("[::ffff:198.51.100.2]:5000"),
            sa("[::ffff:10.0.0.1]:80"),
        );
        assert_eq!(bytes(h), b"PROXY TCP4 198.51.100.2 10.0.0.1 5000 80\r\n");
    }

    fn addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        ]
    }

    proptest! {
        /// Any pair of addresses, either version: the listener side's
        /// parser reads back exactly what was encoded, from exactly the
        /// header's bytes.
        #[test]
        fn the_parser_reads_back_what_is_sent(s in addr(), d in addr(), v1 in any::<bool>()) {
            let version = if v1 { ProxyVersion::V1 } else { ProxyVersion::V2 };
            let h = ProxyHeader::proxied(version, s, d);
            let mut b = bytes(h);
            let len = b.len();
            b.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let (parsed, used) = parse(&b).unwrap();
            prop_assert_eq!(used, len);
            let (es, ed) = h.addrs.unwrap();
            prop_assert_eq!(parsed, Header::Proxied { source: es, destination: ed });
            // Canonical: the same IPs as given, up to the IPv4 mapping.
            prop_assert_eq!(es.ip().to_canonical(), s.ip().to_canonical());
            prop_assert_eq!((es.port(), ed.port()), (s.port(), d.port()));
        }
    }
}
