//! The running process's side of a binary upgrade, in its serve loop:
//! listen on `upgrade_socket`, and hand every listening socket to a new
//! process that asks (the protocol is in [`super`]).

use std::path::Path;

use crate::server::ListenerSet;
use crate::upgrade;

/// The control socket a new process connects to; `None` when there is no
/// `upgrade_socket` or it cannot be bound (binary upgrade is then off).
pub fn control_socket(path: Option<&Path>) -> Option<tokio::net::UnixListener> {
    let p = path?;
    match upgrade::bind_control(p).and_then(|l| {
        l.set_nonblocking(true)?;
        tokio::net::UnixListener::from_std(l)
    }) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(path = %p.display(), error = %e, "cannot listen on the upgrade socket: binary upgrade disabled");
            None
        }
    }
}

/// Answers a takeover request; true when a new process took over. A peer
/// of another user (read with SO_PEERCRED) is refused: the socket's mode
/// already keeps others out, this holds if the file's mode or directory
/// is ever loosened.
pub async fn answer_takeover(listeners: &ListenerSet, stream: tokio::net::UnixStream) -> bool {
    let own_uid = rustix::process::geteuid().as_raw();
    match stream.peer_cred() {
        Ok(peer) if upgrade::peer_allowed(peer.uid(), own_uid) => {}
        Ok(peer) => {
            tracing::warn!(
                peer_uid = peer.uid(),
                peer_pid = peer.pid(),
                own_uid,
                "upgrade socket: refused a process of another user"
            );
            return false;
        }
        Err(e) => {
            tracing::warn!(error = %e, "upgrade socket: cannot read the peer's credentials: refused");
            return false;
        }
    }
    let sockets: Vec<(upgrade::Described, std::os::fd::OwnedFd)> = listeners
        .duplicates()
        .into_iter()
        .map(|(name, configured, fd)| (upgrade::Described { name, configured }, fd))
        .collect();
    let result = tokio::task::spawn_blocking(move || {
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        let refs: Vec<(upgrade::Described, &std::os::fd::OwnedFd)> =
            sockets.iter().map(|(d, f)| (d.clone(), f)).collect();
        upgrade::hand_over(stream, &refs)
    })
    .await;
    match result {
        Ok(Ok(took_over)) => took_over,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "upgrade handover failed: still serving");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "upgrade handover failed: still serving");
            false
        }
    }
}
