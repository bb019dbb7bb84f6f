//! The PROXY protocol (v1 text and v2 binary, HAProxy's spec): a load
//! balancer in front that works at the TCP level (a cloud L4 balancer)
//! tells this one who its client is, in a header before the client's
//! first byte. The address it carries is the connection's client: it
//! feeds the client IP, IP hashing, the per-address limit and the logs.
//!
//! Only peers in the listener's `proxy_protocol.trusted` may send it, and
//! on such a listener they must: a connection from any other peer, a
//! malformed header, or none within `proxy_protocol.timeout`, is closed.
//! The header is read byte-exactly, so what follows (a TLS ClientHello,
//! an HTTP request) is untouched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// v2's signature: the first 12 bytes of every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// A v1 line is at most 107 bytes, CRLF included (the spec's bound).
pub const V1_MAX: usize = 107;

/// A v2 payload above this is refused (addresses are 36 bytes at most;
/// the rest is TLVs, which the balancer does not use).
pub const V2_MAX_PAYLOAD: usize = 1024;

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The client's and the front balancer's addresses.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// v2 `LOCAL` (a health check of the front balancer's own) or v1
    /// `UNKNOWN`: the TCP peer is the client.
    Local,
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("PROXY v1 line too long or without CRLF")]
    V1Length,
    #[error("PROXY v1 line malformed")]
    V1Syntax,
    #[error("PROXY v2 version or command unknown")]
    V2Command,
    #[error("PROXY v2 address family or length wrong")]
    V2Address,
    #[error("PROXY v2 payload too long")]
    V2Length,
}

/// Parses a v1 line (`PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n`),
/// CRLF included. Strict: single spaces, decimal ports without leading
/// zeros, addresses of the family named.
pub fn parse_v1(line: &[u8]) -> Result<Header, Malformed> {
    let text = line
        .strip_suffix(b"\r\n")
        .filter(|_| line.len() <= V1_MAX)
        .ok_or(Malformed::V1Length)?;
    let text = std::str::from_utf8(text).map_err(|_| Malformed::V1Syntax)?;
    let mut parts = text.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(Malformed::NotProxy);
    }
    let family = parts.next().ok_or(Malformed::V1Syntax)?;
    if family == "UNKNOWN" {
        // The rest of the line is to be ignored (the spec).
        return Ok(Header::Local);
    }
    let fields: Vec<&str> = parts.collect();
    let [src, dst, sport, dport] = fields.as_slice() else {
        return Err(Malformed::V1Syntax);
    };
    let ip = |s: &str| -> Result<IpAddr, Malformed> {
        match family {
            "TCP4" => s.parse::<Ipv4Addr>().map(IpAddr::V4),
            "TCP6" => s.parse::<Ipv6Addr>().map(IpAddr::V6),
            _ => return Err(Malformed::V1Syntax),
        }
        .map_err(|_| Malformed::V1Syntax)
    };
    let port = |s: &str| -> Result<u16, Malformed> {
        let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits || (s.len() > 1 && s.starts_with('0')) {
            return Err(Malformed::V1Syntax);
        }
        s.parse().map_err(|_| Malformed::V1Syntax)
    };
    Ok(Header::Proxied {
        source: SocketAddr::new(ip(src)?, port(sport)?),
        destination: SocketAddr::new(ip(dst)?, port(dport)?),
    })
}

/// The payload length a v2 fixed part (its first 16 bytes) announces.
pub fn v2_payload_len(fixed: &[u8; 16]) -> Result<usize, Malformed> {
    if fixed[..12] != V2_SIGNATURE {
        return Err(Malformed::NotProxy);
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > V2_MAX_PAYLOAD {
        return Err(Malformed::V2Length);
    }
    Ok(len)
}

/// Parses a v2 header: its fixed 16 bytes and its payload.
pub fn parse_v2(fixed: &[u8; 16], payload: &[u8]) -> Result<Header, Malformed> {
    if v2_payload_len(fixed)? != payload.len() {
        return Err(Malformed::V2Length);
    }
    let (version, command) = (fixed[12] >> 4, fixed[12] & 0x0f);
    if version != 2 {
        return Err(Malformed::V2Command);
    }
    match command {
        0 => return Ok(Header::Local),
        1 => {}
        _ => return Err(Malformed::V2Command),
    }
    match fixed[13] {
        // TCP or UDP over IPv4: 4 + 4 + 2 + 2.
        0x11 | 0x12 => {
            let a = payload.get(..12).ok_or(Malformed::V2Address)?;
            let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]));
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Ok(Header::Proxied {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            })
        }
        // Over IPv6: 16 + 16 + 2 + 2.
        0x21 | 0x22 => {
            let a = payload.get(..36).ok_or(Malformed::V2Address)?;
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&a[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(b))
            };
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Ok(Header::Proxied {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            })
        }
        // Unspecified family (or Unix sockets): the peer is the client.
        0x00 | 0x31 | 0x32 => Ok(Header::Local),
        _ => Err(Malformed::V2Address),
    }
}

/// Parses a header at the start of `bytes` (either version), returning it
/// and its length; what follows is not looked at. For tests and fuzzing:
/// [`read_header`] parses the same way from a socket.
pub fn parse(bytes: &[u8]) -> Result<(Header, usize), Malformed> {
    if bytes.starts_with(b"PROXY") {
        let end = bytes
            .iter()
            .take(V1_MAX)
            .position(|&b| b == b'\n')
            .ok_or(Malformed::V1Length)?;
        return Ok((parse_v1(&bytes[..=end])?, end + 1));
    }
    let fixed: &[u8; 16] = bytes
        .get(..16)
        .and_then(|f| f.try_into().ok())
        .ok_or(Malformed::NotProxy)?;
    let len = v2_payload_len(fixed)?;
    let payload = bytes.get(16..16 + len).ok_or(Malformed::V2Length)?;
    Ok((parse_v2(fixed, payload)?, 16 + len))
}

/// Why no header could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Malformed(#[from] Malformed),
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ReadError {
    /// The metric's `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Timeout(_) => "timeout",
            Self::Io(_) => "io",
        }
    }
}

/// Reads one header from `io`, byte-exactly (never a byte past it),
/// within `timeout`.
pub async fn read_header<R: AsyncRead + Unpin>(
    io: &mut R,
    timeout: Duration,
) -> Result<Header, ReadError> {
    let read = async {
        let mut start = [0u8; 5];
        io.read_exact(&mut start).await?;
        if &start == b"PROXY" {
            let mut line = Vec::with_capacity(V1_MAX);
            line.extend_from_slice(&start);
            while !line.ends_with(b"\r\n") {
                if line.len() >= V1_MAX {
                    return Err(Malformed::V1Length.into());
                }
                line.push(io.read_u8().await?);
            }
            return Ok(parse_v1(&line)?);
        }
        if start != V2_SIGNATURE[..5] {
            return Err(Malformed::NotProxy.into());
        }
        let mut fixed = [0u8; 16];
        fixed[..5].copy_from_slice(&start);
        io.read_exact(&mut fixed[5..]).await?;
        let mut payload = vec![0u8; v2_payload_len(&fixed)?];
        io.read_exact(&mut payload).await?;
        Ok(parse_v2(&fixed, &payload)?)
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ReadError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn v2(command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    #[test]
    fn v1_lines() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\n"),
            Ok(Header::Proxied {
                source: sa("203.0.113.7:56324"),
                destination: sa("10.0.0.1:443")
            })
        );
        assert_eq!(
            parse_v1(b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n"),
            Ok(Header::Proxied {
                source: sa("[2001:db8::1]:1"),
                destination: sa("[::1]:65535")
            })
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n"), Ok(Header::Local));
        assert_eq!(
            parse_v1(b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n"),
            Ok(Header::Local)
        );
        for bad in [
            &b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\n"[..],
            b"PROXY TCP4 203.0.113.7  10.0.0.1 56324 443\r\n",
            b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(parse_v1(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = format!("PROXY UNKNOWN {}\r\n", "a".repeat(100));
        assert_eq!(parse_v1(long.as_bytes()), Err(Malformed::V1Length));
    }

    #[test]
    fn v2_headers() {
        let ipv4 = [203, 0, 113, 7, 10, 0, 0, 1, 0xdc, 0x04, 0x01, 0xbb];
        let h = v2(1, 0x11, &ipv4);
        assert_eq!(
            parse(&h),
            Ok((
                Header::Proxied {
                    source: sa("203.0.113.7:56324"),
                    destination: sa("10.0.0.1:443")
                },
                28
            ))
        );
        // TLVs after the addresses are skipped.
        let mut with_tlv = ipv4.to_vec();
        with_tlv.extend_from_slice(&[0x04, 0x00, 0x01, 0xff]);
        assert_eq!(parse(&v2(1, 0x11, &with_tlv)).unwrap().1, 16 + 16);
        let mut ipv6 = vec![0u8; 36];
        ipv6[15] = 1;
        ipv6[31] = 2;
        ipv6[32..].copy_from_slice(&[0, 80, 1, 187]);
        assert_eq!(
            parse(&v2(1, 0x21, &ipv6)).unwrap().0,
            Header::Proxied {
                source: sa("[::1]:80"),
                destination: sa("[::2]:443")
            }
        );
        assert_eq!(parse(&v2(0, 0x00, &[])).unwrap().0, Header::Local);
        assert_eq!(parse(&v2(1, 0x11, &ipv4[..11])), Err(Malformed::V2Address));
        assert_eq!(parse(&v2(2, 0x11, &ipv4)), Err(Malformed::V2Command));
        assert_eq!(parse(&v2(1, 0x41, &ipv4)), Err(Malformed::V2Address));
        let mut v3 = v2(1, 0x11, &ipv4);
        v3[12] = 0x31;
        assert_eq!(parse(&v3), Err(Malformed::V2Command));
        assert_eq!(
            parse(&v2(1, 0x11, &vec![0; 2000])),
            Err(Malformed::V2Length)
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Err(Malformed::NotProxy));
    }

    #[tokio::test]
    async fn reads_exactly_the_header_and_not_a_byte_more() {
        for header in [
            b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\n".to_vec(),
            v2(
                1,
                0x11,
                &[203, 0, 113, 7, 10, 0, 0, 1, 0xdc, 0x04, 0x01, 0xbb],
            ),
        ] {
            let mut bytes = header.clone();
            bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let mut io = &bytes[..];
            let h = read_header(&mut io, Duration::from_secs(1)).await.unwrap();
            assert_eq!(h, parse(&header).unwrap().0);
            assert_eq!(io, b"GET / HTTP/1.1\r\n");
        }
        let mut io = &b"GET / HTTP/1.1\r\n"[..];
        assert!(matches!(
            read_header(&mut io, Duration::from_secs(1)).await,
            Err(ReadError::Malformed(Malformed::NotProxy))
        ));
    }

    proptest! {
        /// Any bytes: no panic; a header parsed from a prefix parses the
        /// same from the socket reader, which takes exactly its length.
        #[test]
        fn any_bytes_are_safe_and_both_parsers_agree(bytes in proptest::collection::vec(any::<u8>(), 0..160), sig in any::<bool>()) {
            let mut bytes = bytes;
            if sig {
                let mut with = V2_SIGNATURE.to_vec();
                with.extend_from_slice(&bytes);
                bytes = with;
            }
            let parsed = parse(&bytes);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let mut io = &bytes[..];
            let read = rt.block_on(read_header(&mut io, Duration::from_secs(1)));
            if let Ok((h, len)) = parsed {
                prop_assert_eq!(read.unwrap(), h);
                prop_assert_eq!(io.len(), bytes.len() - len);
            }
        }
    }
}
