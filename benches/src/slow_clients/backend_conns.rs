//! How many connections the balancer has to each backend, two ways,
//! sampled over a run and kept as peaks:
//!
//! * TCP: sockets in `ESTABLISHED` whose remote end is a backend's port,
//!   from `/proc/net/tcp`, counted only if the balancer process holds
//!   them (their inode is among its `/proc/<pid>/fd`, see [`watch`]):
//!   a client of the balancer whose ephemeral port happens to equal a
//!   backend's port, or a connection not yet accepted, is not one. This
//!   counts idle pooled connections too.
//! * In use: the admin API's `open` per backend (`GET /api/status`), the
//!   count `max_connections_per_backend` caps (requests and tunnels in
//!   flight).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The peaks of one sampling run, per backend in the order of the ports.
#[derive(Debug, Clone, Default)]
pub struct Peaks {
    pub tcp: Vec<usize>,
    pub open: Vec<u64>,
    /// The largest sum over backends seen in one sample.
    pub tcp_total: usize,
    pub open_total: u64,
    /// The balancer's own count of TCP connections (see [`Status`]): the
    /// most at once since it started, per backend, as of the last sample.
    pub tcp_counted: Vec<u64>,
    pub samples: u64,
    /// Lines of `/proc/net/tcp` that listed a socket twice in one sample
    /// (not counted; see [`parse_proc_net_tcp`]).
    pub tcp_repeated: u64,
    /// Admin API samples that failed.
    pub admin_errors: u64,
}

/// The process whose sockets [`established_to`] counts (none: all).
static WATCHED: std::sync::OnceLock<i32> = std::sync::OnceLock::new();

/// Counts only the sockets of process `pid` from now on.
pub fn watch(pid: i32) {
    let _ = WATCHED.set(pid);
}

/// The socket inodes process `pid` holds now.
fn socket_inodes(pid: i32) -> std::collections::HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Default::default();
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_str()?;
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// `ESTABLISHED` sockets whose remote port is each of `ports`, from the
/// text of `/proc/net/tcp`; with `owned`, only sockets with those inodes.
///
/// Each socket counts once, by its inode: the kernel writes the table in
/// pieces, one `read` at a time, and a socket moved in its hash bucket
/// while connections open and close between two pieces can be listed
/// twice (the lines seen again are in `repeated`).
pub fn parse_proc_net_tcp(
    text: &str,
    ports: &[u16],
    owned: Option<&std::collections::HashSet<u64>>,
) -> Established {
    let mut seen: Vec<std::collections::HashSet<u64>> = vec![Default::default(); ports.len()];
    let mut counts = vec![0; ports.len()];
    let mut repeated = 0;
    for line in text.lines().skip(1) {
        let mut f = line.split_ascii_whitespace();
        let (Some(_sl), Some(_local), Some(remote), Some(state)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if state != "01" {
            continue;
        }
        // tx:rx queue, tr:when, retrnsmt, uid, timeout, then the inode.
        let inode = f.nth(5).and_then(|i| i.parse::<u64>().ok());
        if let Some(owned) = owned {
            if !inode.is_some_and(|i| owned.contains(&i)) {
                continue;
            }
        }
        let Some(port) = remote
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
        else {
            continue;
        };
        if let Some(i) = ports.iter().position(|&p| p == port) {
            match inode {
                // Inode 0: a socket no process holds; no key to tell two apart.
                Some(n) if n != 0 && !seen[i].insert(n) => repeated += 1,
                _ => counts[i] += 1,
            }
        }
    }
    Established {
        per_port: counts,
        repeated,
    }
}

/// What [`parse_proc_net_tcp`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Established {
    /// Distinct sockets per port, in the order of the ports.
    pub per_port: Vec<usize>,
    /// Lines that listed a socket already counted.
    pub repeated: usize,
}

/// [`parse_proc_net_tcp`] of this machine's `/proc/net/tcp` now.
pub fn established_to(ports: &[u16]) -> Established {
    let owned = WATCHED.get().map(|&pid| socket_inodes(pid));
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    parse_proc_net_tcp(&text, ports, owned.as_ref())
}

/// One backend in `GET /api/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Status {
    /// Requests and tunnels in flight (what the cap counts).
    pub open: u64,
    /// The most TCP connections it had at once since it appeared, as the
    /// balancer counts them (every socket, as it opens and closes).
    pub tcp_peak: u64,
}

/// Each backend in `GET /api/status`, in the order of `addrs`.
pub async fn admin_open(admin: SocketAddr, addrs: &[SocketAddr]) -> io::Result<Vec<Status>> {
    let mut s = TcpStream::connect(admin).await?;
    let req = format!("GET /api/status HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of head"))?;
    let v: serde_json::Value =
        serde_json::from_slice(&raw[at + 4..]).map_err(|e| bad(&e.to_string()))?;
    let mut found = vec![Status::default(); addrs.len()];
    for pool in v["pools"].as_array().into_iter().flatten() {
        for b in pool["backends"].as_array().into_iter().flatten() {
            let addr = b["address"].as_str().and_then(|a| a.parse().ok());
            if let Some(i) = addrs.iter().position(|a| Some(*a) == addr) {
                found[i].open += b["open"].as_u64().unwrap_or(0);
                found[i].tcp_peak = found[i]
                    .tcp_peak
                    .max(b["tcp_connections_peak"].as_u64().unwrap_or(0));
            }
        }
    }
    Ok(found)
}

/// The `/proc/net/tcp` count is taken once in this many samples.
const TCP_EVERY: u64 = 5;

/// Samples both counts every `every` until `until`.
pub async fn sample(
    admin: SocketAddr,
    backends: &[SocketAddr],
    every: Duration,
    until: Instant,
) -> Peaks {
    let ports: Vec<u16> = backends.iter().map(SocketAddr::port).collect();
    let mut p = Peaks {
        tcp: vec![0; ports.len()],
        open: vec![0; ports.len()],
        tcp_counted: vec![0; ports.len()],
        ..Peaks::default()
    };
    let mut ticks = tokio::time::interval(every);
    let mut tick: u64 = 0;
    while Instant::now() < until {
        ticks.tick().await;
        // The kernel's view, a cross-check of the balancer's count, once
        // in TCP_EVERY ticks: listing thousands of sockets costs the
        // machine a few percent of its CPU, which the normal clients would
        // pay for in latency.
        if tick % TCP_EVERY == 0 {
            let found = established_to(&ports);
            p.tcp_repeated += found.repeated as u64;
            let tcp = found.per_port;
            for (peak, n) in p.tcp.iter_mut().zip(&tcp) {
                *peak = (*peak).max(*n);
            }
            p.tcp_total = p.tcp_total.max(tcp.iter().sum());
        }
        tick += 1;
        match tokio::time::timeout(Duration::from_secs(2), admin_open(admin, backends)).await {
            Ok(Ok(found)) => {
                for ((peak, counted), s) in p.open.iter_mut().zip(&mut p.tcp_counted).zip(&found) {
                    *peak = (*peak).max(s.open);
                    *counted = (*counted).max(s.tcp_peak);
                }
                p.open_total = p.open_total.max(found.iter().map(|s| s.open).sum());
            }
            _ => p.admin_errors += 1,
        }
        p.samples += 1;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_established_by_remote_port() {
        // 0x1F90 = 8080, 0x1F91 = 8081; state 01 established, 0A listen,
        // 06 time-wait.
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 11\n\
            1: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 12\n\
            2: 0100007F:D432 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 13\n\
            3: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 14\n\
            4: 0100007F:D433 0100007F:1F91 06 00000000:00000000 00:00000000 00000000  1000        0 15\n\
            5: 0100007F:D434 0100007F:1F91 01 00000000:00000000 00:00000000 00000000  1000        0 16\n";
        let counts = |t, owned| parse_proc_net_tcp(t, &[8080, 8081], owned).per_port;
        assert_eq!(counts(text, None), vec![2, 1]);
        assert_eq!(parse_proc_net_tcp("", &[8080], None).per_port, vec![0]);
        let owned: std::collections::HashSet<u64> = [13, 16].into();
        assert_eq!(counts(text, Some(&owned)), vec![1, 1]);
        // The table read in pieces while sockets move: line 2 again.
        let again = format!("{text}{}\n", text.lines().nth(2).unwrap_or_default());
        let found = parse_proc_net_tcp(&again, &[8080, 8081], None);
        assert_eq!((found.per_port, found.repeated), (vec![2, 1], 1));
    }
}
