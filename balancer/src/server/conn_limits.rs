//! Open client connections, counted three ways so no one client (or a
//! flood of them) can take every file descriptor: the whole process
//! (`limits.max_connections`), one listener (`listener.max_connections`)
//! and one client address (`limits.max_connections_per_ip`). A connection
//! over any of them is refused as it is accepted: a plaintext one gets a
//! `503` and is closed, a TLS one is closed; each refusal is counted in
//! `balancer_connections_refused_total{listener,reason}`.
//!
//! The per-address count is by TCP peer. A peer in `trusted_proxies`
//! carries many clients and is exempt (its clients are told apart per
//! request, by `X-Forwarded-For`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Shards of the per-address map: accepts on different workers rarely
/// wait on each other.
const SHARDS: usize = 16;

/// The process-wide counts; one per process, shared by every worker.
#[derive(Debug, Default)]
pub struct ConnLimits {
    total: AtomicUsize,
    per_ip: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
    /// Refusals are logged at most once per 10 s.
    warned: crate::logging::WarnEvery,
}

/// Why a connection was refused: the metric's `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Process,
    Listener,
    PerIp,
}

impl Refused {
    pub const ALL: [Refused; 3] = [Self::Process, Self::Listener, Self::PerIp];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Process => "max_connections",
            Self::Listener => "listener_max_connections",
            Self::PerIp => "max_connections_per_ip",
        }
    }
}

/// What one accepted connection holds; dropping it gives the places back.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<ConnLimits>,
    listener: Arc<AtomicUsize>,
    ip: Option<IpAddr>,
}

/// The limits that apply to one accept.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    pub max_total: usize,
    pub max_listener: Option<usize>,
    /// 0: no per-address limit (or the peer is a trusted proxy).
    pub max_per_ip: usize,
}

fn shard(ip: &IpAddr) -> usize {
    let h = match ip {
        IpAddr::V4(v4) => u32::from(*v4) as usize,
        IpAddr::V6(v6) => {
            let o = v6.octets();
            usize::from(o[15]) ^ usize::from(o[14]) << 8 ^ usize::from(o[7]) << 4
        }
    };
    (h ^ h >> 8) % SHARDS
}

impl ConnLimits {
    /// Takes a place for a connection from `ip` on a listener whose open
    /// count is `listener`, or says which limit is full.
    pub fn admit(
        self: &Arc<Self>,
        listener: &Arc<AtomicUsize>,
        ip: IpAddr,
        a: Admission,
    ) -> Result<Slot, Refused> {
        if self.total.fetch_add(1, Ordering::Relaxed) >= a.max_total {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Process);
        }
        let on_listener = listener.fetch_add(1, Ordering::Relaxed);
        if a.max_listener.is_some_and(|max| on_listener >= max) {
            listener.fetch_sub(1, Ordering::Relaxed);
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Listener);
        }
        // From here a refusal is the Slot's drop, which gives back the rest.
        let mut slot = Slot {
            limits: Arc::clone(self),
            listener: Arc::clone(listener),
            ip: None,
        };
        if a.max_per_ip > 0 {
            let mut map = self.per_ip[shard(&ip)]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = map.entry(ip).or_insert(0);
            if *n as usize >= a.max_per_ip {
                if *n == 0 {
                    map.remove(&ip);
                }
                return Err(Refused::PerIp);
            }
            *n += 1;
            slot.ip = Some(ip);
        }
        Ok(slot)
    }

    /// Open client connections of the process.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Whether a refusal should be logged now (at most one line per 10 s,
    /// with the count of the ones not logged); returns that count.
    pub fn should_warn(&self) -> Option<u64> {
        self.warned.should_warn()
    }
}

impl Slot {
    /// Counts the connection under `ip` too (its address became known
    /// after the accept: a PROXY protocol header), or says it is full.
    pub fn add_ip(&mut self, ip: IpAddr, max_per_ip: usize) -> Result<(), Refused> {
        if max_per_ip == 0 || self.ip.is_some() {
            return Ok(());
        }
        let mut map = self.limits.per_ip[shard(&ip)]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if *n as usize >= max_per_ip {
            if *n == 0 {
                map.remove(&ip);
            }
            return Err(Refused::PerIp);
        }
        *n += 1;
        self.ip = Some(ip);
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut map = self.limits.per_ip[shard(&ip)]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
        self.listener.fetch_sub(1, Ordering::Relaxed);
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_limit_refuses_and_every_place_comes_back() {
        let limits = Arc::new(ConnLimits::default());
        let (a, b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let adm = Admission {
            max_total: 4,
            max_listener: Some(3),
            max_per_ip: 2,
        };
        let one = limits.admit(&a, ip("10.0.0.1"), adm).unwrap();
        let two = limits.admit(&a, ip("10.0.0.1"), adm).unwrap();
        assert_eq!(
            limits.admit(&a, ip("10.0.0.1"), adm).unwrap_err(),
            Refused::PerIp
        );
        let three = limits.admit(&a, ip("10.0.0.2"), adm).unwrap();
        assert_eq!(
            limits.admit(&a, ip("10.0.0.3"), adm).unwrap_err(),
            Refused::Listener
        );
        let four = limits.admit(&b, ip("10.0.0.3"), adm).unwrap();
        assert_eq!(
            limits.admit(&b, ip("10.0.0.4"), adm).unwrap_err(),
            Refused::Process
        );
        assert_eq!(limits.total(), 4);
        assert_eq!(a.load(Ordering::Relaxed), 3);
        drop((one, two, three, four));
        assert_eq!(limits.total(), 0);
        assert_eq!(a.load(Ordering::Relaxed) + b.load(Ordering::Relaxed), 0);
        assert!(limits.per_ip.iter().all(|m| m.lock().unwrap().is_empty()));
        // No per-address limit: nothing is kept per address.
        let open = Admission {
            max_per_ip: 0,
            ..adm
        };
        let s = limits.admit(&a, ip("10.0.0.1"), open).unwrap();
        assert!(limits.per_ip.iter().all(|m| m.lock().unwrap().is_empty()));
        drop(s);
    }
}
