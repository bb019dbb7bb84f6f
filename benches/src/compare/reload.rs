//! Config changes under load: 100 WebSocket sessions echoing every 200 ms
//! and 16 keep-alive connections sending `GET /healthz` in a closed loop,
//! while the config changes every 1.5 s (the first change 1.5 s in, the
//! load running on for at least 2.5 s after the last one).
//!
//! Counted: failed HTTP requests (connection errors, resets, closes before
//! the response, non-200), WebSocket sessions broken (closed, errored or
//! unanswered before the end), the reloads the proxy logged, and the
//! proxy's process count at the start, near the end with the sessions
//! still open (old nginx and HAProxy workers serve their tunnels until
//! those close) and 2 s after the clients closed.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use tokio::time::Instant;

use super::http::{self, Counts};
use super::targets::Target;
use super::{procfs, ws};

/// Paced WebSocket sessions.
pub const SESSIONS: usize = 100;
/// Their message period.
const PERIOD: Duration = Duration::from_millis(200);
/// Keep-alive HTTP connections.
pub const HTTP_CONNS: usize = 16;
/// Time between config changes.
pub const EVERY: Duration = Duration::from_millis(1500);

/// What the reload test saw on one target.
#[derive(Debug, Clone, Default)]
pub struct ReloadResult {
    pub changes: usize,
    pub reloads_logged: usize,
    pub http: Counts,
    pub sessions: usize,
    pub sessions_broken: usize,
    /// Why sessions broke, and how many for each reason.
    pub broken_reasons: BTreeMap<String, u64>,
    pub ws_messages: u64,
    pub procs_start: usize,
    pub procs_end_open: usize,
    pub procs_after_close: usize,
}

impl ReloadResult {
    /// Processes left after the clients closed, beyond those at the start.
    pub fn procs_left(&self) -> i64 {
        self.procs_after_close as i64 - self.procs_start as i64
    }
}

/// Runs the test for `length` with `changes` config changes.
pub async fn run(
    target: &mut Target,
    length: Duration,
    changes: usize,
) -> anyhow::Result<ReloadResult> {
    let needed = EVERY * (changes as u32 + 1) + Duration::from_secs(1);
    if length < needed {
        bail!("{changes} changes need a test of at least {needed:?}, not {length:?}");
    }
    let plain = target.plain();
    let pid = target.pid();
    let procs_start = procfs::tree_size(pid);
    let t0 = Instant::now();
    let until = t0 + length;
    // Sessions spread over one period, so they do not all send at once.
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let offset = PERIOD * i as u32 / SESSIONS as u32;
            tokio::spawn(ws::paced_session(plain.clone(), offset, PERIOD, until))
        })
        .collect();
    let load = tokio::spawn(async move { http::keepalive_load(&plain, HTTP_CONNS, until).await });

    let mut made = 0;
    for k in 1..=changes {
        tokio::time::sleep_until(t0 + EVERY * k as u32).await;
        target.change_config()?;
        made += 1;
    }
    tokio::time::sleep_until(until - Duration::from_millis(500)).await;
    let procs_end_open = procfs::tree_size(pid);

    let mut result = ReloadResult {
        changes: made,
        sessions: SESSIONS,
        procs_start,
        procs_end_open,
        ..ReloadResult::default()
    };
    for s in sessions {
        let s = s.await.unwrap_or_else(|e| ws::Session {
            messages: 0,
            broken: Some(format!("session task: {e}")),
        });
        result.ws_messages += s.messages;
        if let Some(why) = s.broken {
            result.sessions_broken += 1;
            *result.broken_reasons.entry(why).or_default() += 1;
        }
    }
    result.http = load.await.unwrap_or_else(|e| Counts {
        ok: 0,
        failed: 1,
        reasons: [(format!("load task: {e}"), 1)].into(),
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    target.check_running()?;
    result.procs_after_close = procfs::tree_size(pid);
    result.reloads_logged = target.reloads_logged();
    Ok(result)
}
