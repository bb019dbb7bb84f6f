//! Shared game state in Redis: sessions, presence, rooms and the
//! matchmaking queue. Every process of the cluster reads and writes the same
//! keys, so a player may reach any process and find their game as it was.
//!
//! Key layout (all under `game:`; docs/protocol.md has the full table):
//!
//! | key | type | what |
//! |---|---|---|
//! | `game:session:{token}` | hash | `player`, `name`, `room`; expires 24 h after the last heartbeat |
//! | `game:presence:{player}` | string | the process serving the player; expires unless renewed |
//! | `game:room:{room}:players` | hash | player id -> `{"name","x","y"}` |
//! | `game:rooms` | set | rooms that have (or had) players, for the cleanup job |
//! | `game:mm:queue:{region}` | sorted set | waiting player -> skill |
//! | `game:mm:since` / `game:mm:region` / `game:mm:tolerance` | hashes | per waiting player |
//!
//! Pub/sub channels: `game:room:{room}` (room events) and
//! `game:player:{player}` (events for one player, e.g. a match found).
//!
//! Multi-key updates that must be atomic (join with a capacity check, a move
//! that must not overwrite a newer position, job writes guarded by a lease)
//! are Lua scripts, so each is one round trip and nothing interleaves.

use std::time::Duration;

use arc_swap::ArcSwap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{AsyncCommands, Client, Script};

use crate::protocol::PlayerState;

/// Sessions live this long after their player was last connected.
pub const SESSION_TTL: Duration = Duration::from_secs(24 * 3600);

/// Errors from the shared store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
    #[error("bad redis URL {0}")]
    Url(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The key and channel names, in one place.
#[derive(Debug, Clone, Copy)]
pub struct Keys;

impl Keys {
    pub fn session(token: &str) -> String {
        format!("game:session:{token}")
    }
    pub fn presence(player: &str) -> String {
        format!("game:presence:{player}")
    }
    pub fn players(room: &str) -> String {
        format!("game:room:{room}:players")
    }
    pub const ROOMS: &'static str = "game:rooms";
    pub fn room_channel(room: &str) -> String {
        format!("game:room:{room}")
    }
    pub fn player_channel(player: &str) -> String {
        format!("game:player:{player}")
    }
    pub const MM_PREFIX: &'static str = "game:mm:queue:";
    pub fn mm_queue(region: &str) -> String {
        format!("{}{region}", Self::MM_PREFIX)
    }
    pub const MM_REGIONS: &'static str = "game:mm:regions";
    pub const MM_SINCE: &'static str = "game:mm:since";
    pub const MM_REGION: &'static str = "game:mm:region";
    pub const MM_TOLERANCE: &'static str = "game:mm:tolerance";
    pub fn lease(job: &str) -> String {
        format!("game:lease:{job}")
    }
    pub fn fence(job: &str) -> String {
        format!("game:lease:{job}:fence")
    }
    pub fn job_last(job: &str) -> String {
        format!("game:job:{job}:last")
    }
    pub fn job_runs(job: &str) -> String {
        format!("game:job:{job}:runs")
    }
}

/// Where the game's Redis is: one server, or the primary that Redis
/// Sentinel names (and names again after a failover).
pub enum Target {
    Direct(Client),
    Sentinel {
        client: tokio::sync::Mutex<SentinelClient>,
        master: String,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Direct(c) => write!(f, "Direct({})", c.get_connection_info().addr()),
            Self::Sentinel { master, .. } => write!(f, "Sentinel({master})"),
        }
    }
}

impl Target {
    /// Parses `redis://`, `rediss://`, `redis+unix://` or
    /// `redis+sentinel://[user:password@]host:port[,host:port...]/master[/db]`
    /// (the user and password, if any, are the data nodes' ones).
    ///
    /// `ca` is a PEM root certificate to trust for `rediss://` instead of
    /// the Mozilla roots (a private CA).
    pub fn parse(url: &str, ca: Option<Vec<u8>>) -> Result<Self> {
        if url.starts_with("rediss://") {
            // rustls needs one process-wide crypto provider; a second install
            // (another client in the same process) is harmless.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = match ca {
                Some(root) => Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root),
                    },
                )?,
                None => Client::open(url)?,
            };
            return Ok(Self::Direct(client));
        }
        if ca.is_some() {
            return Err(StoreError::Url(format!(
                "{url:?}: a CA certificate needs a rediss:// URL"
            )));
        }
        let Some(rest) = url.strip_prefix("redis+sentinel://") else {
            return Ok(Self::Direct(Client::open(url)?));
        };
        let bad = |why: &str| StoreError::Url(format!("{url:?}: {why}"));
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let mut parts = rest.split('/');
        let hosts = parts.next().unwrap_or_default();
        let master = parts
            .next()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| bad("the master name is missing (redis+sentinel://host:port/master)"))?;
        let db: i64 = match parts.next() {
            None | Some("") => 0,
            Some(d) => d
                .parse()
                .map_err(|_| bad("the database must be a number"))?,
        };
        let sentinels: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("redis://{h}"))
            .collect();
        if sentinels.is_empty() {
            return Err(bad("no sentinel address"));
        }
        let mut node = redis::RedisConnectionInfo::default().set_db(db);
        if let Some(auth) = auth {
            let (user, password) = auth.split_once(':').unwrap_or(("", auth));
            if !user.is_empty() {
                node = node.set_username(user);
            }
            node = node.set_password(password);
        }
        let node =
            redis::sentinel::SentinelNodeConnectionInfo::default().set_redis_connection_info(node);
        let client =
            SentinelClient::build(sentinels, master, Some(node), SentinelServerType::Master)?;
        Ok(Self::Sentinel {
            client: tokio::sync::Mutex::new(client),
            master: master.to_string(),
        })
    }

    /// The client for the server to use now: for Sentinel, asks the
    /// sentinels which server is the primary.
    pub async fn resolve(&self) -> Result<Client> {
        match self {
            Self::Direct(c) => Ok(c.clone()),
            Self::Sentinel { client, .. } => Ok(client.lock().await.async_get_client().await?),
        }
    }

    pub fn is_sentinel(&self) -> bool {
        matches!(self, Self::Sentinel { .. })
    }
}

/// The address a client connects to, for logs and change detection.
pub fn address(client: &Client) -> String {
    client.get_connection_info().addr().to_string()
}

/// Reconnect quickly and give up on a request soon: a game would rather
/// report "unavailable" than hold a player's action for seconds.
pub fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1))
        .set_number_of_retries(3)
}

/// A new session, as `POST /login` returns it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Session {
    pub token: String,
    pub player: String,
    pub name: String,
    pub room: Option<String>,
}

/// What a join found.
#[derive(Debug)]
pub enum Joined {
    /// The room's players, the joining player among them.
    Room(Vec<(String, PlayerState)>),
    Full,
}

/// What a move found.
#[derive(Debug)]
pub enum Moved {
    Done,
    /// The player is no longer in the room (removed by the cleanup job).
    NotInRoom,
    /// The stored position differs from the one the move started from (the
    /// player also plays from another socket); here is the stored one.
    Stale(PlayerState),
}

/// One local player's state, renewed by the heartbeat.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub token: String,
    pub player: String,
    pub name: String,
    pub room: Option<(String, PlayerState)>,
}

const JOIN: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return {'full'} end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[4])
  redis.call('PUBLISH', ARGV[5], ARGV[6])
end
local all = redis.call('HGETALL', KEYS[1])
table.insert(all, 1, 'ok')
return all
";

/// Leave, optionally fenced by a lease: KEYS[3] is the lease key and
/// ARGV[5] the value the writer must still hold ('' for a player's own leave).
const LEAVE: &str = r"
if ARGV[5] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[5] then return -1 end
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if removed == 1 then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[4]) end
return removed
";

const MOVE: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return {'gone'} end
if cur ~= ARGV[2] then return {'stale', cur} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return {'ok'}
";

/// Queue a player: one region at a time (a new queue request moves them).
const QUEUE: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old and old ~= ARGV[2] then redis.call('ZREM', ARGV[5] .. old, ARGV[1]) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', ARGV[5] .. ARGV[2], ARGV[3], ARGV[1])
redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[2])
return 1
";

/// The store: one multiplexed, self-reconnecting connection for commands.
pub struct Store {
    /// Swapped as a whole when Sentinel names a new primary.
    conn: ArcSwap<ConnectionManager>,
    join: std::sync::Arc<Script>,
    leave: std::sync::Arc<Script>,
    moves: std::sync::Arc<Script>,
    queue: std::sync::Arc<Script>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Connects lazily: the process starts (and reports not-ready) even
    /// while Redis is down, and connects when it comes up.
    pub fn new(client: Client) -> Result<Self> {
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config())?;
        Ok(Self {
            conn: ArcSwap::from_pointee(conn),
            join: Script::new(JOIN).into(),
            leave: Script::new(LEAVE).into(),
            moves: Script::new(MOVE).into(),
            queue: Script::new(QUEUE).into(),
        })
    }

    /// A connection handle for callers (jobs) that run their own commands.
    pub fn conn(&self) -> ConnectionManager {
        (**self.conn.load()).clone()
    }

    /// Points the store at another server (a Sentinel failover).
    pub fn switch(&self, client: Client) -> Result<()> {
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config())?;
        self.conn.store(std::sync::Arc::new(conn));
        Ok(())
    }

    pub async fn ping(&self) -> Result<()> {
        let mut c = self.conn();
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    /// Creates a session for a new player.
    pub async fn login(&self, name: &str) -> Result<Session> {
        let token = random_hex(16);
        let player = random_hex(8);
        let mut c = self.conn();
        let _: () = redis::pipe()
            .hset_multiple(
                Keys::session(&token),
                &[("player", player.as_str()), ("name", name)],
            )
            .ignore()
            .expire(Keys::session(&token), SESSION_TTL.as_secs() as i64)
            .ignore()
            .query_async(&mut c)
            .await?;
        Ok(Session {
            token,
            player,
            name: name.to_string(),
            room: None,
        })
    }

    /// Looks a session up; `None` if the token is unknown or expired.
    pub async fn session(&self, token: &str) -> Result<Option<Session>> {
        let mut c = self.conn();
        let (player, name, room): (Option<String>, Option<String>, Option<String>) =
            redis::cmd("HMGET")
                .arg(Keys::session(token))
                .arg(&["player", "name", "room"])
                .query_async(&mut c)
                .await?;
        Ok(match (player, name) {
            (Some(player), Some(name)) => Some(Session {
                token: token.to_string(),
                player,
                name,
                room: room.filter(|r| !r.is_empty()),
            }),
            _ => None,
        })
    }

    /// Records the player's room in their session, so a resume rejoins it.
    pub async fn set_session_room(&self, token: &str, room: Option<&str>) -> Result<()> {
        let mut c = self.conn();
        let _: () = c
            .hset(Keys::session(token), "room", room.unwrap_or(""))
            .await?;
        Ok(())
    }

    /// Marks the player present, served by `process`.
    pub async fn set_presence(&self, player: &str, process: &str, ttl: Duration) -> Result<()> {
        let mut c = self.conn();
        let _: () = redis::cmd("SET")
            .arg(Keys::presence(player))
            .arg(process)
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    /// Renews presence of every local player in one pipeline, and puts back
    /// what a Redis restart lost: the session, and the player in their room
    /// at the position this process last wrote.
    pub async fn heartbeat(
        &self,
        process: &str,
        ttl: Duration,
        players: &[Heartbeat],
    ) -> Result<()> {
        if players.is_empty() {
            return Ok(());
        }
        let ttl_ms = ttl.as_millis() as u64;
        let mut pipe = redis::pipe();
        for p in players {
            pipe.cmd("SET")
                .arg(Keys::presence(&p.player))
                .arg(process)
                .arg("PX")
                .arg(ttl_ms)
                .ignore();
            let session = Keys::session(&p.token);
            pipe.hset_nx(&session, "player", &p.player).ignore();
            pipe.hset_nx(&session, "name", &p.name).ignore();
            if let Some((room, state)) = &p.room {
                pipe.hset_nx(&session, "room", room).ignore();
                pipe.hset_nx(Keys::players(room), &p.player, state_json(state))
                    .ignore();
                pipe.sadd(Keys::ROOMS, room).ignore();
            }
            pipe.expire(&session, SESSION_TTL.as_secs() as i64).ignore();
        }
        let mut c = self.conn();
        let _: () = pipe.query_async(&mut c).await?;
        Ok(())
    }

    /// Joins `room` (up to `capacity` players) and publishes `event` to it
    /// if the player was not already there.
    pub async fn join(
        &self,
        room: &str,
        player: &str,
        state: &PlayerState,
        capacity: u32,
        event: &str,
    ) -> Result<Joined> {
        let mut c = self.conn();
        let reply: Vec<String> = self
            .join
            .key(Keys::players(room))
            .key(Keys::ROOMS)
            .arg(player)
            .arg(state_json(state))
            .arg(capacity)
            .arg(room)
            .arg(Keys::room_channel(room))
            .arg(event)
            .invoke_async(&mut c)
            .await?;
        match reply.split_first() {
            Some((status, _)) if status == "full" => Ok(Joined::Full),
            Some((status, rest)) if status == "ok" => {
                let players = rest
                    .chunks_exact(2)
                    .filter_map(|kv| Some((kv[0].clone(), parse_state(&kv[1])?)))
                    .collect();
                Ok(Joined::Room(players))
            }
            _ => Err(StoreError::Reply(format!("join: {reply:?}"))),
        }
    }

    /// Removes `player` from `room`, publishing `event` if they were there.
    /// With `fence = Some((lease_key, value))` the write happens only while
    /// that lease is still held (the cleanup job). Returns whether the
    /// player was removed; `None` if the fence refused the write.
    pub async fn leave(
        &self,
        room: &str,
        player: &str,
        event: &str,
        fence: Option<(&str, &str)>,
    ) -> Result<Option<bool>> {
        let (lease_key, lease_value) = fence.unwrap_or(("game:lease:none", ""));
        let mut c = self.conn();
        let removed: i64 = self
            .leave
            .key(Keys::players(room))
            .key(Keys::ROOMS)
            .key(lease_key)
            .arg(player)
            .arg(Keys::room_channel(room))
            .arg(event)
            .arg(room)
            .arg(lease_value)
            .invoke_async(&mut c)
            .await?;
        Ok(match removed {
            -1 => None,
            n => Some(n == 1),
        })
    }

    /// Moves a player from `old` to `new` (compare-and-set) and publishes
    /// `event` to the room.
    pub async fn move_player(
        &self,
        room: &str,
        player: &str,
        old: &PlayerState,
        new: &PlayerState,
        event: &str,
    ) -> Result<Moved> {
        let mut c = self.conn();
        let reply: Vec<String> = self
            .moves
            .key(Keys::players(room))
            .arg(player)
            .arg(state_json(old))
            .arg(state_json(new))
            .arg(Keys::room_channel(room))
            .arg(event)
            .invoke_async(&mut c)
            .await?;
        match reply.as_slice() {
            [ok] if ok == "ok" => Ok(Moved::Done),
            [gone] if gone == "gone" => Ok(Moved::NotInRoom),
            [stale, cur] if stale == "stale" => parse_state(cur)
                .map(Moved::Stale)
                .ok_or_else(|| StoreError::Reply(format!("bad player state {cur:?}"))),
            _ => Err(StoreError::Reply(format!("move: {reply:?}"))),
        }
    }

    /// The players in `room` now, with their state.
    pub async fn room_players(&self, room: &str) -> Result<Vec<(String, PlayerState)>> {
        let mut c = self.conn();
        let all: Vec<(String, String)> = c.hgetall(Keys::players(room)).await?;
        Ok(all
            .into_iter()
            .filter_map(|(id, s)| Some((id, parse_state(&s)?)))
            .collect())
    }

    /// For each of `players`, whether a process still renews their presence.
    pub async fn online<S: AsRef<str>>(&self, players: &[S]) -> Result<Vec<bool>> {
        if players.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = players.iter().map(|p| Keys::presence(p.as_ref())).collect();
        let mut c = self.conn();
        let present: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut c).await?;
        Ok(present.iter().map(Option::is_some).collect())
    }

    pub async fn publish(&self, channel: &str, payload: &str) -> Result<()> {
        let mut c = self.conn();
        let _: i64 = c.publish(channel, payload).await?;
        Ok(())
    }

    /// Puts the player in the matchmaking queue of `region`.
    pub async fn queue(&self, player: &str, region: &str, skill: u32, now_ms: u64) -> Result<()> {
        let mut c = self.conn();
        let _: i64 = self
            .queue
            .key(Keys::MM_REGION)
            .key(Keys::MM_SINCE)
            .key(Keys::MM_REGIONS)
            .arg(player)
            .arg(region)
            .arg(skill)
            .arg(now_ms)
            .arg(Keys::MM_PREFIX)
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }
}

/// The stored form of a player's state (also what compare-and-set compares).
pub fn state_json(state: &PlayerState) -> String {
    serde_json::to_string(state).unwrap_or_default()
}

pub fn parse_state(json: &str) -> Option<PlayerState> {
    serde_json::from_str(json).ok()
}

/// `bytes` random bytes from the OS, as hex: session tokens must not be
/// guessable.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if getrandom::fill(&mut buf).is_err() {
        // The OS source never fails on Linux; if it ever does, a
        // non-cryptographic fallback beats refusing every login.
        buf.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_one_server_or_sentinels() {
        assert!(!Target::parse("redis://127.0.0.1:6379/2", None)
            .unwrap()
            .is_sentinel());
        assert!(!Target::parse("redis+unix:///run/redis.sock", None)
            .unwrap()
            .is_sentinel());
        let t = Target::parse(
            "redis+sentinel://u:pw@10.0.0.1:26379,10.0.0.2:26379/game/3",
            None,
        )
        .unwrap();
        assert!(matches!(t, Target::Sentinel { ref master, .. } if master == "game"));
        for bad in [
            "redis+sentinel://10.0.0.1:26379",
            "redis+sentinel://10.0.0.1:26379/",
            "redis+sentinel:///game",
            "redis+sentinel://10.0.0.1:26379/game/x",
            "http://example.com",
            "not a url",
        ] {
            assert!(Target::parse(bad, None).is_err(), "{bad} should be refused");
        }
        assert!(Target::parse("redis://127.0.0.1:6379", Some(b"pem".to_vec())).is_err());
    }

    #[test]
    fn tokens_are_random_hex() {
        let (a, b) = (random_hex(16), random_hex(16));
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
