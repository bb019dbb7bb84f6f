//! Zero-downtime binary upgrade: a new balancer process takes over the
//! running one's listening sockets over a Unix socket (`upgrade_socket`).
//!
//! ```text
//!  new process                          running (old) process
//!  connect(upgrade_socket) ───────────▶ accept
//!  "takeover\n" ──────────────────────▶
//!                ◀──────────────────── listener names + the sockets themselves (SCM_RIGHTS)
//!  serve on them (and bind new ones)
//!  "ready\n" ─────────────────────────▶ stop accepting, Close frames to
//!  own the upgrade socket                 WebSocket clients, finish in-flight
//!                                         requests, exit 0
//! ```
//!
//! The kernel's listening socket (and its queue of connections not yet
//! accepted) is shared by both processes during the handover and never
//! closed, so no client sees a refused or reset connection. With no process
//! answering on the socket, a new process simply binds its listeners.
//! All of it in safe Rust: `rustix` passes the descriptors as `OwnedFd`s.
//!
//! This file is the protocol, both sides ([`take_over`] for the new
//! process, [`hand_over`] for the running one); [`handover`] is the running
//! process's part in its serve loop: the control socket and the listening
//! sockets it hands over.

pub mod handover;

use std::io::{BufRead, BufReader, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

/// Most listeners one handover carries.
const MAX_LISTENERS: usize = 64;
/// How long either side waits for the other during a handover.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// One listening socket as described in a handover.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Described {
    pub name: String,
    /// The address as configured (port 0 stays 0): matched against the new config.
    pub configured: SocketAddr,
}

/// Sockets received from the old process, and the line to tell it we are ready.
#[derive(Debug)]
pub struct Inherited {
    pub listeners: Vec<(Described, std::net::TcpListener)>,
    control: UnixStream,
}

impl Inherited {
    /// Tells the old process to stop accepting and drain.
    pub fn ready(mut self) -> std::io::Result<()> {
        self.control.write_all(b"ready\n")?;
        self.control.flush()
    }
}

/// New process: asks whoever listens on `path` for its sockets. `Ok(None)`
/// when nobody does (a fresh start).
pub fn take_over(path: &Path) -> std::io::Result<Option<Inherited>> {
    let control = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    control.set_read_timeout(Some(HANDOVER_TIMEOUT))?;
    control.set_write_timeout(Some(HANDOVER_TIMEOUT))?;
    (&control).write_all(b"takeover\n")?;

    let mut payload = vec![0u8; 64 * 1024];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        &control,
        &mut [std::io::IoSliceMut::new(&mut payload)],
        &mut ancillary,
        RecvFlags::empty(),
    )?;
    if msg.bytes == 0 {
        return Err(std::io::Error::other(
            "the running balancer refused to hand over its sockets (see its log)",
        ));
    }
    let mut fds: Vec<OwnedFd> = Vec::new();
    for m in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    let described: Vec<Described> = serde_json::from_slice(&payload[..msg.bytes])
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    if described.len() != fds.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} listeners described, {} sockets received",
                described.len(),
                fds.len()
            ),
        ));
    }
    let listeners = described
        .into_iter()
        .zip(fds)
        .map(|(d, fd)| (d, std::net::TcpListener::from(fd)))
        .collect();
    Ok(Some(Inherited { listeners, control }))
}

/// Old process: answers one takeover request on an accepted connection:
/// sends the sockets, then waits for the new process's "ready". `Ok(true)`
/// when the new process took over (this one should now shut down).
pub fn hand_over(
    control: UnixStream,
    listeners: &[(Described, &OwnedFd)],
) -> std::io::Result<bool> {
    control.set_read_timeout(Some(HANDOVER_TIMEOUT))?;
    control.set_write_timeout(Some(HANDOVER_TIMEOUT))?;
    let mut reader = BufReader::new(&control);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.trim() != "takeover" {
        return Ok(false);
    }
    let described: Vec<&Described> = listeners.iter().map(|(d, _)| d).collect();
    let payload = serde_json::to_vec(&described)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let fds: Vec<_> = listeners
        .iter()
        .take(MAX_LISTENERS)
        .map(|(_, fd)| fd.as_fd())
        .collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !ancillary.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("too many sockets for one message"));
    }
    rustix::net::sendmsg(
        &control,
        &[std::io::IoSlice::new(&payload)],
        &mut ancillary,
        SendFlags::empty(),
    )?;
    line.clear();
    reader.read_line(&mut line)?;
    Ok(line.trim() == "ready")
}

/// Binds the upgrade socket at `path` for this process: a stale file (no
/// process behind it) is replaced; binding goes through a temporary name
/// and a rename, so there is never a moment without a socket at `path`.
///
/// Whoever can connect to this socket gets every listening socket of the
/// balancer, so it is only ever reachable by this user: it is bound inside
/// a fresh directory of mode 0700 (nobody else can reach a socket in it),
/// set to mode 0600 there, and only then renamed to `path`. No umask is
/// touched (it is process-wide, and other threads create files).
pub fn bind_control(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = path.with_extension(format!("{}.d", std::process::id()));
    let tmp = dir.join("s");
    // Left by a process with the same pid that died halfway.
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_dir(&dir);
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let bound = std::os::unix::net::UnixListener::bind(&tmp).and_then(|listener| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(CONTROL_MODE))?;
        std::fs::rename(&tmp, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_dir(&dir);
    bound
}

/// The upgrade socket's file mode: read and write for its owner only.
pub const CONTROL_MODE: u32 = 0o600;

/// Whether a process of `peer_uid` may take the listening sockets of a
/// balancer running as `own_uid`: the same user, or root (who could take
/// them anyway).
pub fn peer_allowed(peer_uid: u32, own_uid: u32) -> bool {
    peer_uid == own_uid || peer_uid == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_user_or_root_may_take_over() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(1001, 1000));
        assert!(!peer_allowed(1000, 0));
    }

    #[test]
    fn the_control_socket_is_private_from_the_start() {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        // A stale socket file is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let _listener = bind_control(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, CONTROL_MODE);
        // Nothing is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["upgrade.sock"]);
        assert!(UnixStream::connect(&path).is_ok());
    }
}
