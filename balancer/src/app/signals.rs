//! SIGHUP asks for a reload. (SIGTERM and SIGINT are the binary's shutdown
//! future, see `main.rs`.)

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Sends `()` on `tx` for every SIGHUP until `stop` fires. A reload already
/// pending absorbs the next signal.
pub(super) fn forward_sighup(tx: mpsc::Sender<()>, stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install a SIGHUP handler; reload by editing the file");
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    let _ = tx.try_send(());
                }
            }
        }
    });
}
