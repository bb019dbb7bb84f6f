//! Zero-downtime binary upgrade: a second balancer process takes over the
//! listening sockets of the first through `upgrade_socket`, under load.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tests::{Backend, Balancer, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request on a fresh connection: any refused or reset connection, or a
/// non-200 answer, is a failure.
async fn one_request(addr: std::net::SocketAddr) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .map_err(|_| "read timed out".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    if out.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!(
            "answer: {:?}",
            String::from_utf8_lossy(&out[..out.len().min(60)])
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_process_takes_over_the_sockets_with_no_request_lost() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let config = format!(
        "upgrade_socket = \"{}\"\n\n[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n\n[[pool]]\nname = \"game\"\n\
         [[pool.backend]]\nid = \"a\"\naddress = \"{}\"\n[[pool.backend]]\nid = \"b\"\naddress = \"{}\"\n\
         [[route]]\nlistener = \"public\"\npool = \"game\"\n",
        socket.display(),
        a.addr,
        b.addr
    );
    let mut old = Balancer::start_quiet(&config);
    let addr = old.addr();

    let stop = Arc::new(AtomicBool::new(false));
    let passed = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..6 {
        let (stop, passed, failed) = (stop.clone(), passed.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match one_request(addr).await {
                    Ok(()) => passed.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("upgrade: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    // Let load run against the old process, then upgrade under it.
    while passed.load(Ordering::Relaxed) < 300 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await; // pacing the check, not synchronising
    }
    let new = Balancer::start_quiet(&config);
    assert_eq!(new.addr(), addr, "the new process serves the same socket");
    new.proc
        .wait_message("took over the listening sockets of the previous process");
    // The new process's socket replaced the old one's, private too.
    assert_eq!(socket_mode(&socket), 0o600);
    old.proc
        .wait_message("handed the listening sockets over to a new process");
    let status = old.proc.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "the old process exits cleanly");
    let at_exit = passed.load(Ordering::Relaxed);
    // Load goes on against the new process alone.
    while passed.load(Ordering::Relaxed) < at_exit + 300 {
        tokio::time::sleep(Duration::from_millis(10)).await; // pacing the check
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (p, f) = (
        passed.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    eprintln!("upgrade: {p} requests on fresh connections across the handover, {f} failed");
    assert_eq!(f, 0, "refused, reset or failed requests during the upgrade");

    // The new process owns the upgrade socket now: a third one can take over from it.
    let third = Balancer::start_quiet(&config);
    assert_eq!(third.addr(), addr);
    new.proc
        .wait_message("handed the listening sockets over to a new process");
}

/// The permission bits of the file at `path`.
fn socket_mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::metadata(path).unwrap();
    assert!(
        meta.file_type().is_socket(),
        "{} is a socket",
        path.display()
    );
    meta.permissions().mode() & 0o7777
}

#[test]
fn the_upgrade_socket_is_only_for_its_owner() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let lb = Balancer::start(&format!(
        "upgrade_socket = \"{}\"\n\n[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n",
        socket.display()
    ));
    // Bound before "balancer started": whoever connects gets every listening
    // socket, so nobody but this user may connect.
    assert_eq!(socket_mode(&socket), 0o600);
    // Only the socket: the private directory it was bound in is gone.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["upgrade.sock"]);
    drop(lb);
}
