//! One instance's life, run by one task: spawn, wait for its exit, take it
//! out of rotation, restart it after the backoff (or give up), and stop it
//! on shutdown. Its state is kept for the status API.
//!
//! ```text
//!  starting ──spawned──▶ running ──exit──▶ backoff ──delay──▶ starting ...
//!     (ready once its health check passes)   └──too many──▶ failed
//!  any ──shutdown or retired──▶ stopping ──exit (or SIGKILL after stop_timeout)──▶ stopped
//! ```
//!
//! A rolling restart replaces an instance's process with a new `Runner`
//! (and a new [`Instance`], which carries the counts on): the old one is
//! `draining` while its clients leave, then retired like at shutdown.

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::backoff::{Decision, RestartPolicy, Restarts};
use super::usage::Usage;
use super::{output, spawn};
use crate::clock::now_ms;
use crate::runtime::Snapshot;

/// One supervised instance as operators see it.
#[derive(Debug)]
pub struct Instance {
    pub pool: Arc<str>,
    /// Its backend id (`{pool}-{index}`).
    pub id: Arc<str>,
    /// Where this process listens (its own port or its surge port).
    pub address: SocketAddr,
    status: Mutex<Status>,
    /// Its clients are being moved off before it stops (rolling restart,
    /// scaling down).
    draining: AtomicBool,
    /// The program file as it was when the process last started: a
    /// reload that finds it changed restarts the instance.
    program: Mutex<Option<super::program::Stamp>>,
    /// `ready = "line"`: fired when its current process printed READY=1.
    announced: Mutex<CancellationToken>,
}

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Being spawned.
    Starting,
    /// Its process runs (`ready` once its backend is up).
    Running {
        pid: u32,
        since: Instant,
    },
    /// Exited; starts again at `until`.
    Backoff {
        until: Instant,
    },
    /// Exited too often: stays down until the balancer restarts.
    Failed,
    /// Sent its stop signal at shutdown.
    Stopping {
        pid: u32,
    },
    Stopped,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// It could not be started (or waited for) at all.
    SpawnFailed(String),
}

impl Exit {
    fn of(status: std::process::ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Self::Code(code),
            (None, Some(sig)) => Self::Signal(sig),
            (None, None) => Self::SpawnFailed(format!("unknown exit status {status}")),
        }
    }

    pub fn code(&self) -> Option<i32> {
        match self {
            Self::Code(c) => Some(*c),
            _ => None,
        }
    }

    pub fn signal(&self) -> Option<i32> {
        match self {
            Self::Signal(s) => Some(*s),
            _ => None,
        }
    }

    /// Its `reason` label in `balancer_process_restarts_total`.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Code(0) => Reason::Clean,
            Self::Code(_) => Reason::Exit,
            Self::Signal(_) => Reason::Signal,
            Self::SpawnFailed(_) => Reason::Spawn,
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Self::Code(c) => json!({ "code": c }),
            Self::Signal(s) => json!({ "signal": s, "signal_name": signal_name(*s) }),
            Self::SpawnFailed(e) => json!({ "error": e }),
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(c) => write!(f, "exit code {c}"),
            Self::Signal(s) => write!(f, "killed by signal {s} ({})", signal_name(*s)),
            Self::SpawnFailed(e) => write!(f, "not started: {e}"),
        }
    }
}

/// Why an instance was restarted, as Prometheus counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A nonzero exit code.
    Exit,
    /// Killed by a signal.
    Signal,
    /// Exit code 0 (a supervised backend is not meant to end by itself).
    Clean,
    /// It could not be started.
    Spawn,
    /// Replaced by a rolling restart (a deploy, not a failure).
    Rolling,
    /// Replaced (gracefully) for staying above `max_memory`.
    Memory,
}

impl Reason {
    /// In declaration order: `reason as usize` is its index.
    pub const ALL: [Self; 6] = [
        Self::Exit,
        Self::Signal,
        Self::Clean,
        Self::Spawn,
        Self::Rolling,
        Self::Memory,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exit => "exit",
            Self::Signal => "signal",
            Self::Clean => "clean",
            Self::Spawn => "spawn",
            Self::Rolling => "rolling",
            Self::Memory => "memory",
        }
    }
}

fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return format!("SIG{sig}"),
    };
    name.to_string()
}

/// See [`Instance`].
#[derive(Debug, Clone)]
struct Status {
    phase: Phase,
    restarts: u32,
    /// `restarts`, by the reason of the exit before each, in the order of
    /// [`Reason::ALL`] (they add up to `restarts`).
    by_reason: [u64; Reason::ALL.len()],
    last_exit: Option<Exit>,
}

impl Instance {
    pub fn new(pool: &str, id: &str, address: SocketAddr) -> Self {
        Self {
            pool: pool.into(),
            id: id.into(),
            address,
            status: Mutex::new(Status {
                phase: Phase::Starting,
                restarts: 0,
                by_reason: [0; Reason::ALL.len()],
                last_exit: None,
            }),
            draining: AtomicBool::new(false),
            program: Mutex::new(None),
            announced: Mutex::new(CancellationToken::new()),
        }
    }

    /// Fired once its current process printed READY=1 (`ready = "line"`).
    pub fn announced(&self) -> CancellationToken {
        self.announced
            .lock()
            .map(|t| t.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// The instance a rolling restart starts in place of this one, at
    /// `address`: the counts go on, one more restart for `why`
    /// ([`Reason::Rolling`] or [`Reason::Memory`]).
    pub fn successor(&self, address: SocketAddr, why: Reason) -> Self {
        let next = Self::new(&self.pool, &self.id, address);
        if let (Ok(old), Ok(mut new)) = (self.status.lock(), next.status.lock()) {
            new.restarts = old.restarts + 1;
            new.by_reason = old.by_reason;
            new.by_reason[why as usize] += 1;
            new.last_exit = old.last_exit.clone();
        }
        next
    }

    /// See the field; set when its drain starts.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The program file when its process last started.
    pub fn program(&self) -> Option<super::program::Stamp> {
        self.program.lock().ok().and_then(|p| p.clone())
    }

    pub fn phase(&self) -> Phase {
        self.status.lock().map_or(Phase::Stopped, |s| s.phase)
    }

    /// Restarts so far by reason, in the order of [`Reason::ALL`].
    pub fn restarts_by_reason(&self) -> [u64; Reason::ALL.len()] {
        self.status
            .lock()
            .map_or([0; Reason::ALL.len()], |s| s.by_reason)
    }

    /// The pid of its process while there is one (running or stopping).
    pub fn pid(phase: Phase) -> Option<u32> {
        match phase {
            Phase::Running { pid, .. } | Phase::Stopping { pid } => Some(pid).filter(|&p| p != 0),
            _ => None,
        }
    }

    /// Its process's memory and CPU now, read from `/proc`; `None` when it
    /// has no process (or it just went away).
    pub fn usage(phase: Phase) -> Option<Usage> {
        Usage::of(Self::pid(phase)?)
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    /// Every word [`Self::state`] can say (`balancer_process_instances`
    /// lists each, 0 when no instance is in it).
    pub const STATES: [&'static str; 7] = [
        "starting", "ready", "draining", "backoff", "failed", "stopping", "stopped",
    ];

    /// The state word of the status API; `up`: its backend passes its checks.
    pub fn state(phase: Phase, up: bool) -> &'static str {
        match phase {
            Phase::Starting => "starting",
            Phase::Running { .. } if up => "ready",
            Phase::Running { .. } => "starting",
            Phase::Backoff { .. } => "backoff",
            Phase::Failed => "failed",
            Phase::Stopping { .. } => "stopping",
            Phase::Stopped => "stopped",
        }
    }

    /// The `process` object of `GET /api/status`.
    pub fn json(&self, up: bool) -> serde_json::Value {
        let Ok(s) = self.status.lock().map(|s| s.clone()) else {
            return serde_json::Value::Null;
        };
        let now = Instant::now();
        let (pid, uptime) = match s.phase {
            Phase::Running { pid, since } => (Some(pid), Some(now.duration_since(since))),
            Phase::Stopping { pid } => (Some(pid), None),
            _ => (None, None),
        };
        let restart_in = match s.phase {
            Phase::Backoff { until } => Some(until.saturating_duration_since(now).as_secs_f64()),
            _ => None,
        };
        let usage = Self::usage(s.phase);
        let state = match Self::state(s.phase, up) {
            "ready" | "starting" if self.is_draining() => "draining",
            other => other,
        };
        json!({
            "state": state,
            "address": self.address.to_string(),
            "pid": pid,
            "uptime_seconds": uptime.map(|u| u.as_secs_f64()),
            "rss_bytes": usage.map(|u| u.rss_bytes),
            "cpu_seconds": usage.map(|u| u.cpu_seconds),
            "restarts": s.restarts,
            "last_exit": s.last_exit.as_ref().map(Exit::json),
            "restart_in_seconds": restart_in,
        })
    }
}

/// Runs one instance until `stop` fires; see the module doc.
#[derive(Debug)]
pub(super) struct Runner {
    pub instance: Arc<Instance>,
    /// What it runs, at `instance.address`.
    pub slot: config::Slot,
    /// The pool's table: read when used, so a reload's new stop and
    /// restart settings apply to running instances.
    pub processes: Arc<ArcSwap<config::ProcessesConfig>>,
    /// The live snapshot: the instance's `Backend` is looked up in it when
    /// it exits (a reload that kept the pool kept the same `Backend`).
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub stop: CancellationToken,
    /// Fired once the `[[process]]` entries are ready: a pool's instance
    /// starts only then (the game's Redis first).
    pub after: Option<CancellationToken>,
}

impl Runner {
    pub async fn run(self) {
        let mut restarts = Restarts::default();
        let (pool, instance) = (&*self.instance.pool, &*self.instance.id);
        if let Some(after) = &self.after {
            tokio::select! {
                () = after.cancelled() => {}
                () = self.stop.cancelled() => {
                    self.instance.update(|s| s.phase = Phase::Stopped);
                    return;
                }
            }
        }
        loop {
            if self.stop.is_cancelled() {
                self.instance.update(|s| s.phase = Phase::Stopped);
                return;
            }
            self.instance.update(|s| s.phase = Phase::Starting);
            let started = Instant::now();
            let processes = self.processes.load_full();
            let stamp = super::program::Stamp::of(&self.slot.argv, processes.cwd.as_deref());
            if let Ok(mut p) = self.instance.program.lock() {
                *p = stamp;
            }
            let (pid, exit) =
                match spawn::command(&self.slot, &processes).and_then(|mut c| c.spawn()) {
                    Ok(child) => match self.supervise(child).await {
                        Some(exited) => exited,
                        None => return,
                    },
                    Err(e) => {
                        tracing::error!(pool, instance, error = %e, "cannot start instance");
                        (None, Exit::SpawnFailed(e.to_string()))
                    }
                };
            let uptime = started.elapsed();
            self.take_out_of_rotation();
            let policy = RestartPolicy::of(&self.processes.load());
            let decision = restarts.on_exit(Instant::now(), uptime, &policy);
            let total = restarts.total();
            let last = exit.clone();
            let restarting = matches!(decision, Decision::RestartAfter(_));
            let reason = exit.reason() as usize;
            self.instance.update(|s| {
                s.restarts = total;
                if restarting {
                    s.by_reason[reason] += 1;
                }
                s.last_exit = Some(last);
            });
            let uptime_ms = uptime.as_millis() as u64;
            match decision {
                Decision::RestartAfter(delay) => {
                    tracing::warn!(
                        pool,
                        instance,
                        pid,
                        code = exit.code(),
                        signal = exit.signal(),
                        uptime_ms,
                        restart_in_ms = delay.as_millis() as u64,
                        restarts = total,
                        "instance exited: {exit}; restarting"
                    );
                    let until = Instant::now() + delay;
                    self.instance.update(|s| s.phase = Phase::Backoff { until });
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.stop.cancelled() => {
                            self.instance.update(|s| s.phase = Phase::Stopped);
                            return;
                        }
                    }
                }
                Decision::GiveUp => {
                    tracing::error!(
                        pool,
                        instance,
                        pid,
                        code = exit.code(),
                        signal = exit.signal(),
                        uptime_ms,
                        restarts = total,
                        max_restarts = policy.max_restarts,
                        window_ms = policy.window.as_millis() as u64,
                        "instance failed: {exit}; restarted too often, it stays down"
                    );
                    self.instance.update(|s| s.phase = Phase::Failed);
                    self.stop.cancelled().await;
                    return;
                }
            }
        }
    }

    /// Watches a running child: `Some((pid, exit))` when it exits by
    /// itself, `None` when it was stopped for shutdown.
    async fn supervise(&self, mut child: tokio::process::Child) -> Option<(Option<u32>, Exit)> {
        let (pool, instance) = (&self.instance.pool, &self.instance.id);
        let pid = child.id();
        // `ready = "line"`: held down until this process says READY=1.
        let gone = CancellationToken::new();
        let _gone = gone.clone().drop_guard();
        let announced = self.processes.load().ready_line.then(|| {
            let token = CancellationToken::new();
            if let Ok(mut t) = self.instance.announced.lock() {
                *t = token.clone();
            }
            if let Some(b) = self.backend() {
                b.hold(now_ms());
                let token = token.clone();
                let gone = gone.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = token.cancelled() => {}
                        // Exited first (it is down already): the next
                        // process, if it waits for the line, holds it anew.
                        () = gone.cancelled() => {}
                    }
                    b.release();
                });
            }
            token
        });
        for (reader, stream) in [
            (
                child
                    .stdout
                    .take()
                    .map(|r| Box::new(r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
                "stdout",
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|r| Box::new(r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
                "stderr",
            ),
        ] {
            if let Some(reader) = reader {
                tokio::spawn(output::log_lines(
                    reader,
                    Arc::clone(pool),
                    Arc::clone(instance),
                    stream,
                    announced.clone().filter(|_| stream == "stdout"),
                ));
            }
        }
        let since = Instant::now();
        self.instance.update(|s| {
            s.phase = Phase::Running {
                pid: pid.unwrap_or(0),
                since,
            }
        });
        tracing::info!(
            pool = &**pool,
            instance = &**instance,
            pid,
            address = %self.slot.address,
            "instance started"
        );
        let waited = tokio::select! {
            r = child.wait() => Some(r),
            () = self.stop.cancelled() => None,
        };
        match waited {
            Some(result) => {
                // What it left in its group dies with it.
                signal_group(pid, rustix::process::Signal::KILL);
                let exit = match result {
                    Ok(status) => Exit::of(status),
                    Err(e) => Exit::SpawnFailed(format!("cannot wait for it: {e}")),
                };
                Some((pid, exit))
            }
            None => {
                self.stop_child(child, pid).await;
                None
            }
        }
    }

    /// Shutdown: the stop signal to its group, SIGKILL after `stop_timeout`.
    async fn stop_child(&self, mut child: tokio::process::Child, pid: Option<u32>) {
        let (pool, instance) = (&*self.instance.pool, &*self.instance.id);
        self.instance.update(|s| {
            s.phase = Phase::Stopping {
                pid: pid.unwrap_or(0),
            }
        });
        let processes = self.processes.load_full();
        let signal = processes.stop_signal;
        tracing::info!(
            pool,
            instance,
            pid,
            signal = signal.name(),
            "stopping instance"
        );
        signal_group(pid, stop_signal(signal));
        let timeout = processes.stop_timeout;
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => {
                tracing::info!(pool, instance, pid, exit = %Exit::of(status), "instance stopped");
            }
            Ok(Err(e)) => {
                tracing::warn!(pool, instance, pid, error = %e, "cannot wait for instance: SIGKILL");
                let _ = child.kill().await;
            }
            Err(_) => {
                tracing::warn!(
                    pool,
                    instance,
                    pid,
                    timeout_ms = timeout.as_millis() as u64,
                    "instance did not stop within stop_timeout: SIGKILL"
                );
                signal_group(pid, rustix::process::Signal::KILL);
                let _ = child.kill().await;
            }
        }
        signal_group(pid, rustix::process::Signal::KILL);
        self.instance.update(|s| s.phase = Phase::Stopped);
    }

    /// Its backend takes no request until its health check passes again
    /// (if the backend is this process's: not once a rolling restart moved
    /// it to the replacement).
    fn take_out_of_rotation(&self) {
        if let Some(b) = self.backend() {
            b.take_down(now_ms());
        }
    }

    /// This process's backend in the live snapshot, if it has one there.
    fn backend(&self) -> Option<Arc<crate::upstream::Backend>> {
        let snap = self.snapshot.load();
        snap.pools.get(&*self.instance.pool).and_then(|p| {
            p.backends
                .iter()
                .find(|b| b.id == self.instance.id && b.address == self.instance.address)
                .cloned()
        })
    }
}

fn stop_signal(s: config::StopSignal) -> rustix::process::Signal {
    use rustix::process::Signal;
    match s {
        config::StopSignal::Term => Signal::TERM,
        config::StopSignal::Int => Signal::INT,
        config::StopSignal::Quit => Signal::QUIT,
        config::StopSignal::Hup => Signal::HUP,
        config::StopSignal::Usr1 => Signal::USR1,
        config::StopSignal::Usr2 => Signal::USR2,
    }
}

/// Sends `signal` to the process group led by `pid` (an instance leads
/// its own); a group already gone is fine.
fn signal_group(pid: Option<u32>, signal: rustix::process::Signal) {
    let Some(pid) = pid
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let _ = rustix::process::kill_process_group(pid, signal);
}
