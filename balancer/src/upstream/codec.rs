//! HTTP/1.1 on the wire to a backend, as pure functions: the request head
//! written, the response head parsed, and how the response body is framed
//! (RFC 9112 section 6: no body for HEAD, 1xx, 204 and 304; chunked when
//! the backend says so; `Content-Length`; otherwise to the close).

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

use super::chunked::Chunk;

/// The most header fields a backend's response head may have.
pub const MAX_HEADERS: usize = 128;
/// The largest response head accepted from a backend.
pub const MAX_HEAD: usize = 64 * 1024;

/// Methods whose requests may be sent twice (RFC 9110 9.2.2).
pub fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Writes the request line and headers into `out`; returns whether the
/// body goes chunked (`length` unknown). `Content-Length` and
/// `Transfer-Encoding` are the encoder's to write; a request without `Host`
/// gets the backend's authority.
pub fn encode_head(
    parts: &http::request::Parts,
    authority: &http::uri::Authority,
    length: Option<u64>,
    out: &mut Vec<u8>,
) -> bool {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(if pq.is_empty() { b"/" } else { pq.as_bytes() });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut has_host = false;
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        has_host |= name == header::HOST;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !has_host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(authority.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let chunked = match length {
        Some(0)
            if !matches!(parts.method, Method::POST | Method::PUT | Method::PATCH)
                && !parts.headers.contains_key(header::CONTENT_LENGTH) =>
        {
            false
        }
        Some(n) => {
            use std::io::Write as _;
            // Into the buffer directly: no string for the number.
            let _ = write!(out, "content-length: {n}\r\n");
            false
        }
        None => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            true
        }
    };
    out.extend_from_slice(b"\r\n");
    chunked
}

/// How the response body is delimited, and how much of it is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes left.
    Length(u64),
    /// Chunked, in this state.
    Chunked(Chunk),
    /// Until the backend closes.
    Close,
    /// 101: no body; the socket becomes the tunnel's.
    Upgrade,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    /// The framing the head announces (before HEAD, 204, 304 or 101 are
    /// taken into account: see [`Head::framing_for`]).
    pub framing: Framing,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
}

impl Head {
    /// The body's framing for a request that was (`head_request`) or was
    /// not a HEAD.
    pub fn framing_for(&self, head_request: bool) -> Framing {
        if self.status == StatusCode::SWITCHING_PROTOCOLS {
            Framing::Upgrade
        } else if head_request
            || self.status == StatusCode::NO_CONTENT
            || self.status == StatusCode::NOT_MODIFIED
        {
            Framing::Length(0)
        } else {
            self.framing
        }
    }
}

/// Parses a complete head at the start of `buf` (taking it out), `None`
/// when more bytes are needed. Header values share the head's bytes.
pub fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, String> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("invalid response head: {e}")),
    };
    let code = resp.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| format!("invalid response status {code}"))?;
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut other_coding = false;
    let mut close = version == Version::HTTP_10;
    let mut keep_alive_10 = false;
    // Names now, values as ranges of the head: once the head is split off,
    // they share its bytes instead of being copied.
    let base = buf.as_ptr() as usize;
    let mut parsed: Vec<(HeaderName, usize, usize)> = Vec::with_capacity(resp.headers.len());
    for f in resp.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| format!("invalid response header name {:?}", f.name))?;
        let value = std::str::from_utf8(f.value).unwrap_or("");
        if name == header::CONTENT_LENGTH {
            // Digits only (RFC 9110 8.6): Rust's parser would take `+5`.
            let digits = value.trim();
            let n = digits
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| digits.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| "invalid content-length from the backend".to_string())?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting content-length from the backend".into());
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            // Only the last coding decides the framing (RFC 9112 6.3).
            let last_chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
            chunked = last_chunked;
            other_coding = !last_chunked;
        } else if name == header::CONNECTION {
            for token in value.split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive_10 = true;
                }
            }
        }
        let start = f.value.as_ptr() as usize - base;
        parsed.push((name, start, start + f.value.len()));
    }
    let raw = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(parsed.len());
    for (name, start, end) in parsed {
        let value = HeaderValue::from_maybe_shared(raw.slice(start..end))
            .map_err(|_| format!("invalid value for response header {name}"))?;
        headers.append(name, value);
    }
    if version == Version::HTTP_10 && keep_alive_10 {
        close = false;
    }
    if chunked || other_coding {
        // Transfer-Encoding overrides Content-Length, and a proxy must not
        // pass the length on (RFC 9112 6.3): the client would frame the
        // de-chunked body by it and get it cut short or hanging.
        headers.remove(header::CONTENT_LENGTH);
        // Such a response may be a smuggling attempt: its connection is not
        // reused (RFC 9112 6.3 says to close it).
        if length.is_some() {
            close = true;
        }
    }
    let framing = if other_coding {
        Framing::Close
    } else if chunked {
        Framing::Chunked(Chunk::Size)
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    Ok(Some(Head {
        status,
        version,
        headers,
        framing,
        keep_alive: !close,
    }))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_request_head_has_host_and_framing() {
        let mut req = http::Request::new(());
        *req.method_mut() = Method::POST;
        *req.uri_mut() = http::Uri::from_static("http://a.example/p?q");
        req.headers_mut()
            .insert(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        let (parts, ()) = req.into_parts();
        let authority = http::uri::Authority::from_static("10.0.0.1:80");
        let mut out = Vec::new();
        assert!(!encode_head(&parts, &authority, Some(0), &mut out));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "POST /p?q HTTP/1.1\r\nhost: 10.0.0.1:80\r\ncontent-length: 0\r\n\r\n"
        );
        let mut out = Vec::new();
        assert!(encode_head(&parts, &authority, None, &mut out));
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("transfer-encoding: chunked\r\n\r\n"));
    }

    #[test]
    fn content_length_is_digits_only() {
        for bad in ["+5", "-0", "5 5", "0x5", "", "5,5", "١"] {
            let mut buf = BytesMut::from(
                format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n").as_bytes(),
            );
            assert!(parse_head(&mut buf).is_err(), "{bad:?} accepted");
        }
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length:  7 \r\n\r\n"[..]);
        assert_eq!(
            parse_head(&mut buf).unwrap().unwrap().framing,
            Framing::Length(7)
        );
    }

    #[test]
    fn framing_follows_the_status_and_the_request() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"[..]);
        let h = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(h.framing_for(false), Framing::Length(0));
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"[..]);
        let h = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(h.framing_for(true), Framing::Length(0), "HEAD");
        assert_eq!(h.framing_for(false), Framing::Length(5));
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n"[..],
        );
        let h = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(h.framing, Framing::Chunked(Chunk::Size), "chunked wins");
        assert!(
            !h.headers.contains_key(header::CONTENT_LENGTH),
            "and the length is not passed on"
        );
        assert!(!h.keep_alive, "nor the connection reused");
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"[..]);
        assert_eq!(
            parse_head(&mut buf).unwrap().unwrap().framing,
            Framing::Close
        );
        let mut buf = BytesMut::from(
            &b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"[..],
        );
        assert!(parse_head(&mut buf).unwrap().unwrap().keep_alive);
        let mut buf = BytesMut::from(&b"HTTP/1.0 200 OK\r\n\r\n"[..]);
        assert!(!parse_head(&mut buf).unwrap().unwrap().keep_alive);
    }

    /// Writes a response head the way a backend would.
    fn encode_response(h: &Head) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.{} {} {}\r\n",
            u8::from(h.version == Version::HTTP_11),
            h.status.as_u16(),
            h.status.canonical_reason().unwrap_or("X")
        )
        .into_bytes();
        for (name, value) in &h.headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    fn header_line() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u64..1 << 40).prop_map(|n| format!("Content-Length: {n}")),
            Just("Transfer-Encoding: chunked".to_string()),
            Just("Transfer-Encoding: gzip".to_string()),
            Just("Transfer-Encoding: gzip, chunked".to_string()),
            Just("Connection: close".to_string()),
            Just("Connection: keep-alive".to_string()),
            "[a-z][a-z0-9-]{0,12}: [ -~]{0,30}",
        ]
    }

    proptest! {
        /// Any bytes: no panic, and whatever parses takes exactly its head
        /// out of the buffer.
        #[test]
        fn any_bytes_parse_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&bytes[..]);
            if let Ok(Some(_)) = parse_head(&mut buf) {
                prop_assert!(buf.len() < bytes.len());
                prop_assert_eq!(&bytes[bytes.len() - buf.len()..], &buf[..]);
            }
        }

        /// A head built from plausible fields, split anywhere: the first
        /// part is incomplete or the whole thing, and what parses re-encodes
        /// to a head that parses to the same status, headers and framing.
        #[test]
        fn what_parses_re_encodes_to_the_same_framing(
            status in 100u16..600,
            http10 in any::<bool>(),
            lines in prop::collection::vec(header_line(), 0..8),
            cut in any::<prop::sample::Index>(),
            body in prop::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut text = format!("HTTP/1.{} {status} Whatever\r\n", u8::from(!http10)).into_bytes();
            for l in &lines {
                text.extend_from_slice(l.as_bytes());
                text.extend_from_slice(b"\r\n");
            }
            text.extend_from_slice(b"\r\n");
            let head_len = text.len();
            text.extend_from_slice(&body);
            let mut buf = BytesMut::from(&text[..]);
            let Ok(Some(head)) = parse_head(&mut buf) else { return Ok(()) };
            // Any prefix of a head that parses is incomplete, never an error.
            let at = cut.index(head_len);
            let mut partial = BytesMut::from(&text[..at]);
            prop_assert!(matches!(parse_head(&mut partial), Ok(None)), "prefix of {} bytes", at);
            prop_assert_eq!(&buf[..], &body[..], "the body stays in the buffer");
            let mut again = BytesMut::from(&encode_response(&head)[..]);
            let second = parse_head(&mut again).unwrap().unwrap();
            prop_assert!(again.is_empty());
            prop_assert_eq!(second.status, head.status);
            prop_assert_eq!(second.version, head.version);
            prop_assert_eq!(&second.headers, &head.headers);
            prop_assert_eq!(second.framing, head.framing);
            let both = lines.iter().any(|l| l.starts_with("Content-Length"))
                && lines.iter().any(|l| l.starts_with("Transfer-Encoding"));
            if both {
                // The length was dropped, and the connection with it.
                prop_assert!(!head.keep_alive);
            } else {
                prop_assert_eq!(second.keep_alive, head.keep_alive);
            }
        }
    }
}
