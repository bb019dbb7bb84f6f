//! One process's part of the game: the Redis store and pub/sub bus, the
//! players whose sockets this process holds, and the background tasks that
//! keep the shared state true:
//!
//! * the **monitor** pings Redis (both connections) twice a second; while it
//!   fails, `/readyz` answers 503; when it recovers, every room channel is
//!   subscribed again and the heartbeat runs at once;
//! * the **heartbeat** renews the presence of every local player (and puts
//!   back their session and room entry if Redis lost them) every third of
//!   the presence TTL, in one pipeline;
//! * the **job schedulers** ([`crate::jobs`]) run the cluster-wide jobs when
//!   this process holds their lease.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::bus::Bus;
use crate::jobs::{self, JobTiming};
use crate::store::{self, Heartbeat, Store, StoreError};

/// Tunables of the game, from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Players per room.
    pub capacity: u32,
    /// A player whose process stops renewing their presence for this long
    /// is removed from their room by the cleanup job.
    pub presence_ttl: Duration,
    /// Sustained actions (moves, chat lines) per player per second.
    pub actions_per_sec: f64,
    /// Burst of actions allowed above the sustained rate.
    pub action_burst: f64,
    /// On SIGTERM, sockets are closed (1012) at random times over this long.
    pub drain_spread: Duration,
    /// Period and lease of the cluster-wide jobs.
    pub jobs: JobTiming,
    /// Players per match.
    pub match_size: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            capacity: 8,
            presence_ttl: Duration::from_secs(5),
            actions_per_sec: 20.0,
            action_burst: 40.0,
            drain_spread: Duration::from_secs(3),
            jobs: JobTiming {
                period: Duration::from_secs(1),
                lease: Duration::from_secs(3),
            },
            match_size: 2,
        }
    }
}

/// The game state of one process.
#[derive(Debug)]
pub struct Game {
    /// This process's id (`--id`): the value of its players' presence keys.
    pub process: String,
    pub store: Arc<Store>,
    pub bus: Bus,
    /// Where Redis is; with Sentinel, asked again on every check.
    target: store::Target,
    /// The address the store and bus connect to now.
    current: Mutex<String>,
    pub settings: Settings,
    /// Whether the last Redis check succeeded (`/readyz`).
    pub redis_up: AtomicBool,
    /// The player of each local socket that said hello, for the heartbeat.
    players: Mutex<HashMap<u64, Heartbeat>>,
    next_socket: AtomicU64,
    open_sockets: AtomicUsize,
    sockets_closed: Notify,
    drain: watch::Sender<bool>,
}

impl Game {
    /// Sets up the store and bus for `redis_url`; connects lazily, so a
    /// process starts (not ready) while Redis is down.
    pub async fn new(
        process: &str,
        redis_url: &str,
        redis_ca: Option<Vec<u8>>,
        settings: Settings,
    ) -> Result<Arc<Self>, StoreError> {
        let target = store::Target::parse(redis_url, redis_ca)?;
        let client = match target.resolve().await {
            Ok(c) => c,
            Err(e) => {
                // Sentinels unreachable at start: start anyway (not ready);
                // the monitor asks them again every half second.
                tracing::warn!(error = %e, "no redis primary yet");
                redis::Client::open("redis://127.0.0.1:0")?
            }
        };
        let current = store::address(&client);
        Ok(Arc::new(Self {
            process: process.to_string(),
            store: Arc::new(Store::new(client.clone())?),
            bus: Bus::new(&client)?,
            target,
            current: Mutex::new(current),
            settings,
            redis_up: AtomicBool::new(false),
            players: Mutex::default(),
            next_socket: AtomicU64::new(1),
            open_sockets: AtomicUsize::new(0),
            sockets_closed: Notify::new(),
            drain: watch::channel(false).0,
        }))
    }

    /// With Sentinel: asks which server is the primary, and moves the store
    /// and the subscriptions there if it changed.
    async fn follow_primary(&self) {
        if !self.target.is_sentinel() {
            return;
        }
        let resolved = tokio::time::timeout(Duration::from_secs(1), self.target.resolve()).await;
        let client = match resolved {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return tracing::debug!(error = %e, "sentinel lookup failed"),
            Err(_) => return tracing::debug!("sentinel lookup timed out"),
        };
        let address = store::address(&client);
        let previous = {
            let mut current = self
                .current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *current == address {
                return;
            }
            std::mem::replace(&mut *current, address.clone())
        };
        tracing::warn!(from = %previous, to = %address, "redis primary changed: switching");
        if let Err(e) = self.store.switch(client.clone()) {
            tracing::warn!(error = %e, "switching the store failed");
        }
        match self.bus.switch(&client).await {
            Ok(n) => tracing::info!(channels = n, "subscriptions moved to the new primary"),
            Err(e) => {
                tracing::warn!(error = %e, "moving subscriptions failed; retried when redis is reachable")
            }
        }
        // Make the monitor treat the next good check as a recovery:
        // resubscribe and put back state the new primary may lack.
        self.redis_up.store(false, Ordering::SeqCst);
    }

    /// Starts the monitor, heartbeat and job schedulers; they end when
    /// `stop` turns true (job leases are released then).
    pub fn spawn_background(
        self: &Arc<Self>,
        stop: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = jobs::spawn_all(
            &self.store,
            &self.process,
            self.settings.jobs,
            self.settings.match_size,
            stop.clone(),
        );
        tasks.push(tokio::spawn(self.clone().monitor(stop.clone())));
        tasks.push(tokio::spawn(self.clone().heartbeat_loop(stop)));
        tasks
    }

    async fn monitor(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let timeout = Duration::from_secs(1);
        // Whether "unreachable" was logged since the last recovery (also
        // at start, when Redis was never reachable).
        let mut reported = false;
        loop {
            self.follow_primary().await;
            let store = check(timeout, self.store.ping()).await;
            let bus = check(timeout, self.bus.ping()).await;
            let was_up = self.redis_up.load(Ordering::SeqCst);
            match (store, bus) {
                (Ok(()), Ok(())) if !was_up => {
                    match self.bus.resubscribe().await {
                        Ok(n) => {
                            tracing::info!(channels = n, "redis reachable: subscriptions restored")
                        }
                        Err(e) => tracing::warn!(error = %e, "redis reachable, resubscribe failed"),
                    }
                    self.heartbeat().await;
                    self.redis_up.store(true, Ordering::SeqCst);
                    reported = false;
                }
                (Ok(()), Ok(())) => {}
                (store, bus) => {
                    if was_up || !reported {
                        let error = store.err().or(bus.err()).unwrap_or_default();
                        tracing::warn!(%error, "redis unreachable: not ready; sockets stay open");
                        reported = true;
                    }
                    self.redis_up.store(false, Ordering::SeqCst);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn heartbeat_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let every = (self.settings.presence_ttl / 3).max(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            self.heartbeat().await;
        }
    }

    async fn heartbeat(&self) {
        let batch: Vec<Heartbeat> = self.lock_players().values().cloned().collect();
        if let Err(e) = self
            .store
            .heartbeat(&self.process, self.settings.presence_ttl, &batch)
            .await
        {
            tracing::debug!(error = %e, "heartbeat failed");
        }
    }

    /// Records (or updates) the player on local socket `socket`.
    pub fn set_local(&self, socket: u64, player: Heartbeat) {
        self.lock_players().insert(socket, player);
    }

    pub fn remove_local(&self, socket: u64) {
        self.lock_players().remove(&socket);
    }

    /// Local players right now.
    pub fn local_players(&self) -> usize {
        self.lock_players().len()
    }

    fn lock_players(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Heartbeat>> {
        self.players
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new socket: its id, and a guard that counts it as open.
    pub fn open_socket(self: &Arc<Self>) -> (u64, OpenSocket) {
        self.open_sockets.fetch_add(1, Ordering::SeqCst);
        let id = self.next_socket.fetch_add(1, Ordering::Relaxed);
        (id, OpenSocket(self.clone()))
    }

    /// Resolves once draining has started.
    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.drain.subscribe()
    }

    /// Starts closing every socket (each at a random time within the
    /// drain spread).
    pub fn begin_drain(&self) {
        self.drain.send_replace(true);
    }

    /// Waits until every game socket has closed, or `limit` passes.
    pub async fn wait_sockets_closed(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.sockets_closed.notified();
                if self.open_sockets.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    pub fn open_sockets(&self) -> usize {
        self.open_sockets.load(Ordering::SeqCst)
    }
}

/// One Redis check with a deadline; the error as text.
async fn check(
    limit: Duration,
    ping: impl std::future::Future<Output = Result<(), StoreError>>,
) -> Result<(), String> {
    match tokio::time::timeout(limit, ping).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// Counts a game socket as open until dropped.
#[derive(Debug)]
pub struct OpenSocket(Arc<Game>);

impl Drop for OpenSocket {
    fn drop(&mut self) {
        if self.0.open_sockets.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.sockets_closed.notify_waiters();
        }
    }
}
