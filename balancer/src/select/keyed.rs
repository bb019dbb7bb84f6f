//! `ip_hash` and `hash`: a key from the request picks the backend by
//! rendezvous hashing; a request without its key falls back to least
//! connections.

use std::net::IpAddr;

use config::HashKey;

use super::rendezvous::{key_hash, Rendezvous};
use super::{key, BackendSelection, LeastConnections, Members, Pick, SelectionContext};

#[derive(Debug)]
enum Source {
    ClientIp,
    Request(HashKey),
}

#[derive(Debug)]
pub struct Keyed {
    source: Source,
    rendezvous: Rendezvous,
    fallback: LeastConnections,
}

impl Keyed {
    /// `policy = "ip_hash"`.
    pub fn client_ip(ids: &[&str], weights: &[u32]) -> Self {
        Self::new(Source::ClientIp, ids, weights)
    }

    /// `policy = "hash"` with `hash.key`.
    pub fn request_key(key: HashKey, ids: &[&str], weights: &[u32]) -> Self {
        Self::new(Source::Request(key), ids, weights)
    }

    fn new(source: Source, ids: &[&str], weights: &[u32]) -> Self {
        Self {
            source,
            rendezvous: Rendezvous::new(ids, weights),
            fallback: LeastConnections::new(weights),
        }
    }
}

/// IPv4 and IPv4-mapped IPv6 hash the same, so a dual-stack listener does
/// not split one client in two.
pub fn ip_key_hash(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => key_hash(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => key_hash(&v4.octets()),
            None => key_hash(&v6.octets()),
        },
    }
}

impl BackendSelection for Keyed {
    fn select(&self, ctx: &SelectionContext<'_>, members: &dyn Members) -> Option<Pick> {
        let hash = match &self.source {
            Source::ClientIp => Some(ip_key_hash(ctx.client_ip)),
            Source::Request(k) => key::extract(k, ctx.headers, ctx.uri).map(key_hash),
        };
        let index = match hash {
            Some(h) => self.rendezvous.pick(h, |i| members.usable(i)),
            None => self.fallback.pick(members),
        };
        index.map(Pick::plain)
    }
}
