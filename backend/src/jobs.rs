//! Periodic jobs that run once per period across the whole cluster, however
//! many processes run: stale-player cleanup and matchmaking.
//!
//! Every process runs a [`Scheduler`] per job, but only the holder of the
//! job's Redis lease runs the job:
//!
//! * **Acquire:** `INCR game:lease:{job}:fence` gives a fencing token, then
//!   `SET game:lease:{job} "{process}:{token}" NX PX {lease}` takes the
//!   lease if nobody holds it. Non-holders retry every tenth of a lease.
//! * **Renew:** the holder extends the lease (compare-and-`PEXPIRE`) several
//!   times per lease period; if its value is gone, it stops at once.
//! * **Run once per period:** a script checks the lease is still ours, reads
//!   Redis's clock, and claims period `floor(now / period)` only if no run
//!   has claimed it (`game:job:{job}:last`), counting the run in
//!   `game:job:{job}:runs` (period -> runs, the last 1000 periods). A new
//!   holder therefore never repeats a period the old one ran.
//! * **Fenced writes:** every write a job makes goes through a script that
//!   first checks the lease still holds our value, so a holder that was
//!   paused past its lease (GC, a stopped VM) cannot write over the new one.
//! * **Release:** on shutdown, compare-and-delete, so another process takes
//!   over at once instead of after the lease expires. If the holder dies,
//!   the lease expires and another process takes over within one lease
//!   period plus one retry interval.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;
use tokio::sync::watch;

use crate::protocol::{ServerMsg, VERSION};
use crate::rules::{self, Candidate};
use crate::store::{now_ms, Keys, Result, Store};

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Claims this period for one run. KEYS: lease, last, runs. ARGV: lease
/// value, period length in ms. Returns the period index, or -1.
const CLAIM: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local period = math.floor(ms / tonumber(ARGV[2]))
local last = tonumber(redis.call('GET', KEYS[2]) or '-1')
if last >= period then return -1 end
redis.call('SET', KEYS[2], period)
redis.call('HINCRBY', KEYS[3], period, 1)
redis.call('HDEL', KEYS[3], period - 1000)
return period
";

/// Forms one match, fenced. KEYS: lease, since, region, tolerance, queue.
/// ARGV: lease value, event, then the players. Every player must still be
/// queued, or nothing happens.
const MATCH: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
for i = 3, #ARGV do
  if not redis.call('ZSCORE', KEYS[5], ARGV[i]) then return 0 end
end
for i = 3, #ARGV do
  redis.call('ZREM', KEYS[5], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
  redis.call('HDEL', KEYS[3], ARGV[i])
  redis.call('HDEL', KEYS[4], ARGV[i])
  redis.call('PUBLISH', 'game:player:' .. ARGV[i], ARGV[2])
end
return 1
";

/// Refines weights, fenced: KEYS: lease, tolerance, queue, since, region.
/// ARGV: lease value, then (player, tolerance) pairs; a tolerance of -1
/// drops the player from the queue (they are no longer online).
const REFINE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
for i = 2, #ARGV, 2 do
  if ARGV[i + 1] == '-1' then
    redis.call('ZREM', KEYS[3], ARGV[i])
    redis.call('HDEL', KEYS[2], ARGV[i])
    redis.call('HDEL', KEYS[4], ARGV[i])
    redis.call('HDEL', KEYS[5], ARGV[i])
  else
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  end
end
return 1
";

/// How the jobs are timed.
#[derive(Debug, Clone, Copy)]
pub struct JobTiming {
    /// Each job runs once per this period across the cluster.
    pub period: Duration,
    /// Lease length: how long a dead holder blocks the job.
    pub lease: Duration,
}

/// What a job does once it has claimed a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Removes players whose presence expired, and empty rooms.
    Cleanup,
    /// Refines waiting players' tolerances and forms matches.
    Matchmaking { match_size: usize },
}

impl Job {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Cleanup => "cleanup",
            Self::Matchmaking { .. } => "matchmaking",
        }
    }
}

/// Runs one job on this process whenever it holds the job's lease.
#[derive(Debug)]
pub struct Scheduler {
    pub job: Job,
    pub timing: JobTiming,
    pub store: Arc<Store>,
    pub process: String,
}

impl Scheduler {
    /// Runs until `stop` turns true, then releases the lease if held.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let name = self.job.name();
        let lease_key = Keys::lease(name);
        let lease_ms = self.timing.lease.as_millis().max(1) as u64;
        let period_ms = self.timing.period.as_millis().max(1) as u64;
        let holder_tick = Duration::from_millis((period_ms / 4).min(lease_ms / 3).max(10));
        let waiter_tick = Duration::from_millis((lease_ms / 10).max(10));
        let (renew, release, claim) =
            (Script::new(RENEW), Script::new(RELEASE), Script::new(CLAIM));
        let mut held: Option<String> = None;
        loop {
            let mut c = self.store.conn();
            held = match held.take() {
                None => match acquire(&mut c, name, &self.process, lease_ms).await {
                    Ok(Some(v)) => {
                        tracing::info!(job = name, lease = %v, "job lease acquired");
                        Some(v)
                    }
                    Ok(None) => None,
                    Err(e) => {
                        tracing::debug!(job = name, error = %e, "lease acquire failed");
                        None
                    }
                },
                Some(v) => {
                    let kept: Result<i64, _> = renew
                        .key(&lease_key)
                        .arg(&v)
                        .arg(lease_ms)
                        .invoke_async(&mut c)
                        .await;
                    match kept {
                        Ok(1) => Some(v),
                        Ok(_) => {
                            tracing::warn!(job = name, "job lease lost");
                            None
                        }
                        // Redis unreachable: keep trying to renew; the
                        // fence refuses our writes if it expired meanwhile.
                        Err(_) => Some(v),
                    }
                }
            };
            if let Some(v) = &held {
                let period: Result<i64, _> = claim
                    .key(&lease_key)
                    .key(Keys::job_last(name))
                    .key(Keys::job_runs(name))
                    .arg(v)
                    .arg(period_ms)
                    .invoke_async(&mut c)
                    .await;
                if let Ok(p) = period {
                    if p >= 0 {
                        if let Err(e) = self.run_once(v).await {
                            tracing::warn!(job = name, error = %e, "job run failed");
                        }
                    }
                }
            }
            let tick = if held.is_some() {
                holder_tick
            } else {
                waiter_tick
            };
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        if let Some(v) = held {
            let mut c = self.store.conn();
            let _: Result<i64, _> = release.key(&lease_key).arg(&v).invoke_async(&mut c).await;
            tracing::info!(job = name, "job lease released");
        }
    }

    async fn run_once(&self, lease_value: &str) -> Result<()> {
        match self.job {
            Job::Cleanup => cleanup(&self.store, lease_value).await,
            Job::Matchmaking { match_size } => {
                matchmaking(&self.store, lease_value, match_size).await
            }
        }
    }
}

async fn acquire(
    c: &mut ConnectionManager,
    job: &str,
    process: &str,
    lease_ms: u64,
) -> Result<Option<String>> {
    let lease_key = Keys::lease(job);
    // Cheap check first, so waiting processes do not burn fencing tokens.
    let current: Option<String> = redis::cmd("GET").arg(&lease_key).query_async(c).await?;
    if current.is_some() {
        return Ok(None);
    }
    let token: u64 = redis::cmd("INCR")
        .arg(Keys::fence(job))
        .query_async(c)
        .await?;
    let value = format!("{process}:{token}");
    let set: Option<String> = redis::cmd("SET")
        .arg(&lease_key)
        .arg(&value)
        .arg("NX")
        .arg("PX")
        .arg(lease_ms)
        .query_async(c)
        .await?;
    Ok(set.map(|_| value))
}

/// Removes players whose presence expired (their process died or they
/// left without saying so), telling the room.
async fn cleanup(store: &Store, lease_value: &str) -> Result<()> {
    let mut c = store.conn();
    let rooms: Vec<String> = redis::cmd("SMEMBERS")
        .arg(Keys::ROOMS)
        .query_async(&mut c)
        .await?;
    let lease_key = Keys::lease(Job::Cleanup.name());
    for room in rooms {
        let players: Vec<String> = redis::cmd("HKEYS")
            .arg(Keys::players(&room))
            .query_async(&mut c)
            .await?;
        if players.is_empty() {
            let _: i64 = redis::cmd("SREM")
                .arg(Keys::ROOMS)
                .arg(&room)
                .query_async(&mut c)
                .await?;
            continue;
        }
        let online = store.online(&players).await?;
        for (player, here) in players.iter().zip(online) {
            if here {
                continue;
            }
            let event = ServerMsg::Left {
                v: VERSION,
                room: room.clone(),
                player: player.clone(),
                reason: "timeout".into(),
            }
            .to_json();
            match store
                .leave(&room, player, &event, Some((&lease_key, lease_value)))
                .await?
            {
                None => return Ok(()), // lease lost: stop writing
                Some(true) => {
                    tracing::info!(%room, %player, "removed a player whose presence expired")
                }
                Some(false) => {}
            }
        }
    }
    Ok(())
}

/// Refines each waiting player's tolerance (their weight) from how long
/// they waited, drops players who went offline, and forms matches.
async fn matchmaking(store: &Store, lease_value: &str, match_size: usize) -> Result<()> {
    let mut c = store.conn();
    let lease_key = Keys::lease("matchmaking");
    let regions: Vec<String> = redis::cmd("SMEMBERS")
        .arg(Keys::MM_REGIONS)
        .query_async(&mut c)
        .await?;
    let now = now_ms();
    let (refine_script, match_script) = (Script::new(REFINE), Script::new(MATCH));
    for region in regions {
        let queue = Keys::mm_queue(&region);
        let waiting: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(&queue)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut c)
            .await?;
        if waiting.is_empty() {
            let _: i64 = redis::cmd("SREM")
                .arg(Keys::MM_REGIONS)
                .arg(&region)
                .query_async(&mut c)
                .await?;
            continue;
        }
        let ids: Vec<&str> = waiting.iter().map(|(p, _)| p.as_str()).collect();
        let since: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(Keys::MM_SINCE)
            .arg(&ids)
            .query_async(&mut c)
            .await?;
        let online = store.online(&ids).await?;
        let mut refine = refine_script.prepare_invoke();
        refine
            .key(&lease_key)
            .key(Keys::MM_TOLERANCE)
            .key(&queue)
            .key(Keys::MM_SINCE)
            .key(Keys::MM_REGION)
            .arg(lease_value);
        let mut candidates = Vec::new();
        for (((player, skill), since), online) in waiting.iter().zip(since).zip(online) {
            if !online {
                refine.arg(player).arg(-1);
                continue;
            }
            let tolerance = rules::tolerance(now.saturating_sub(since.unwrap_or(now)));
            refine.arg(player).arg(tolerance);
            candidates.push(Candidate {
                player: player.clone(),
                skill: *skill as u32,
                tolerance,
            });
        }
        let refined: i64 = refine.invoke_async(&mut c).await?;
        if refined < 0 {
            return Ok(());
        }
        for players in rules::form_matches(candidates, match_size) {
            let room = format!("match-{}", crate::store::random_hex(4));
            let event = ServerMsg::Matched {
                v: VERSION,
                room: room.clone(),
                players: players.clone(),
            }
            .to_json();
            let mut script = match_script.prepare_invoke();
            script
                .key(&lease_key)
                .key(Keys::MM_SINCE)
                .key(Keys::MM_REGION)
                .key(Keys::MM_TOLERANCE)
                .key(&queue)
                .arg(lease_value)
                .arg(&event)
                .arg(&players);
            let formed: i64 = script.invoke_async(&mut c).await?;
            match formed {
                -1 => return Ok(()),
                1 => tracing::info!(%room, ?players, %region, "match formed"),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Starts the schedulers for every job; they stop when `stop` turns true.
pub fn spawn_all(
    store: &Arc<Store>,
    process: &str,
    timing: JobTiming,
    match_size: usize,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    [Job::Cleanup, Job::Matchmaking { match_size }]
        .into_iter()
        .map(|job| {
            let s = Scheduler {
                job,
                timing,
                store: store.clone(),
                process: process.to_string(),
            };
            tokio::spawn(s.run(stop.clone()))
        })
        .collect()
}
