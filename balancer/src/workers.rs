//! Serving threads: one single-threaded tokio runtime per core, nginx's
//! model. Each worker accepts on its own clone of every listening socket
//! (the kernel hands each connection to one of them) and serves its
//! connections, their upstream requests and their tunnels on its thread:
//! a request never changes threads, and no task is stolen or woken across
//! cores. Upstream pools keep one idle list per worker for the same reason.
//!
//! Without workers (tests and benches that run the proxy in process), the
//! listeners are served on the runtime that starts them.

use std::cell::Cell;
use std::sync::OnceLock;

use tokio::runtime::Handle;

static WORKERS: OnceLock<Vec<Handle>> = OnceLock::new();

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Starts `n` worker threads (at most once per process); returns how many
/// run. A worker that cannot start is reported and skipped.
pub fn start(n: usize) -> usize {
    let handles = WORKERS.get_or_init(|| {
        (0..n)
            .filter_map(|i| {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(worker = i, error = %e, "cannot start a worker runtime");
                        return None;
                    }
                };
                let handle = rt.handle().clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("worker-{i}"))
                    .spawn(move || {
                        INDEX.with(|c| c.set(i));
                        // Runs until the process exits.
                        rt.block_on(std::future::pending::<()>());
                    });
                match spawned {
                    Ok(_) => Some(handle),
                    Err(e) => {
                        tracing::error!(worker = i, error = %e, "cannot start a worker thread");
                        None
                    }
                }
            })
            .collect()
    });
    handles.len()
}

/// The workers' runtimes (empty when none were started).
pub fn handles() -> &'static [Handle] {
    WORKERS.get().map_or(&[], Vec::as_slice)
}

/// How many per-worker slots shared structures need (at least 1).
pub fn count() -> usize {
    handles().len().max(1)
}

/// This thread's worker index (0 off the workers).
pub fn current() -> usize {
    INDEX.with(Cell::get)
}
