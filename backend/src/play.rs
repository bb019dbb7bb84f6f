//! One player's socket on `/play`: reads client messages, validates each
//! against [`crate::rules`], applies it to the shared state in Redis, and
//! forwards room events from the [`crate::bus`] to the client.
//!
//! Nothing here is lost with the process: the session, the room and the
//! player's position live in Redis, so when this process dies or drains the
//! client reconnects (through the balancer, to any process), says `hello`
//! with the same token, and is put back in its room where it stood.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use tokio::sync::{mpsc, Notify};

use crate::bus::Subscriber;
use crate::game::Game;
use crate::protocol::{ClientMsg, PlayerState, ServerMsg, VERSION};
use crate::rules::{self, RateLimit, RuleError};
use crate::store::{Heartbeat, Joined, Keys, Moved, Session, StoreError};

/// Room events queued for one slow client before it is disconnected.
const OUTBOUND_QUEUE: usize = 1024;
/// Consecutive refused messages before the socket is closed (1008).
const MAX_ERRORS: u32 = 20;
/// Largest client message accepted.
pub const MAX_MESSAGE: usize = 4096;

/// Close codes the server uses (docs/protocol.md).
pub mod close {
    /// The process is draining; reconnect (to another process).
    pub const SERVICE_RESTART: u16 = 1012;
    /// The client did not keep up with its room's events; reconnect.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Too many refused messages in a row.
    pub const POLICY: u16 = 1008;
}

/// What one socket knows about its player.
struct Player {
    session: Session,
    /// The room and the position this socket last wrote there.
    room: Option<(String, PlayerState)>,
    limit: RateLimit,
}

/// Serves one game socket until either side closes it or the process drains.
pub async fn serve_socket(mut socket: WebSocket, game: Arc<Game>) {
    let (id, _open) = game.open_socket();
    let (tx, mut rx) = mpsc::channel::<Arc<str>>(OUTBOUND_QUEUE);
    let lagged = Arc::new(Notify::new());
    let mut conn = Conn {
        game: game.clone(),
        id,
        sub: Subscriber {
            tx,
            lagged: lagged.clone(),
        },
        player: None,
        errors: 0,
    };
    let mut drain = game.drain_signal();
    let spread = game.settings.drain_spread;
    let drained = async move {
        let _ = drain.wait_for(|d| *d).await;
        // Spread the closes so reconnects do not arrive all at once.
        let wait = spread.mul_f64(fastrand::f64());
        tokio::time::sleep(wait).await;
    };
    tokio::pin!(drained);

    let closing: Option<(u16, &str)> = loop {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let replies = conn.on_text(text.as_str()).await;
                    if send_all(&mut socket, replies).await.is_err() {
                        break None;
                    }
                    if conn.errors >= MAX_ERRORS {
                        break Some((close::POLICY, "too many invalid messages"));
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    conn.errors += 1;
                    let e = ServerMsg::error("bad_message", "the protocol uses text frames");
                    if send_all(&mut socket, vec![e]).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break None,
            },
            Some(event) = rx.recv() => {
                if socket.send(Message::text(event.as_ref())).await.is_err() {
                    break None;
                }
            }
            _ = lagged.notified() => break Some((close::TRY_AGAIN_LATER, "too slow: reconnect")),
            _ = &mut drained => break Some((close::SERVICE_RESTART, "service restart")),
        }
    };
    if let Some((code, reason)) = closing {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        if socket.send(Message::Close(Some(frame))).await.is_ok() {
            // Wait (briefly) for the client's Close so the close handshake
            // completes and the client sees our code.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(m)) = socket.recv().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }
    conn.disconnect().await;
}

async fn send_all(socket: &mut WebSocket, replies: Vec<ServerMsg>) -> Result<(), axum::Error> {
    for r in replies {
        socket.send(Message::text(r.to_json())).await?;
    }
    Ok(())
}

struct Conn {
    game: Arc<Game>,
    id: u64,
    sub: Subscriber,
    player: Option<Player>,
    errors: u32,
}

/// Why a message was refused.
enum Refused {
    Rule(RuleError),
    Protocol(&'static str, String),
    Store(StoreError),
}

impl From<RuleError> for Refused {
    fn from(e: RuleError) -> Self {
        Self::Rule(e)
    }
}

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl Refused {
    fn to_msg(&self) -> ServerMsg {
        match self {
            Self::Rule(e) => ServerMsg::error(e.code(), e.to_string()),
            Self::Protocol(code, message) => ServerMsg::error(code, message.clone()),
            Self::Store(e) => {
                tracing::warn!(error = %e, "shared state unavailable");
                ServerMsg::error("unavailable", "shared state unreachable; try again shortly")
            }
        }
    }
}

fn refuse(code: &'static str, message: impl Into<String>) -> Refused {
    Refused::Protocol(code, message.into())
}

impl Conn {
    async fn on_text(&mut self, text: &str) -> Vec<ServerMsg> {
        let msg = match serde_json::from_str::<ClientMsg>(text) {
            Ok(m) => m,
            Err(e) => {
                self.errors += 1;
                return vec![ServerMsg::error("bad_message", e.to_string())];
            }
        };
        if msg.version() != VERSION {
            self.errors += 1;
            return vec![ServerMsg::error(
                "unsupported_version",
                format!("this server speaks version {VERSION}"),
            )];
        }
        match self.handle(msg).await {
            Ok(replies) => {
                self.errors = 0;
                replies
            }
            Err(refused) => {
                if !matches!(refused, Refused::Store(_)) {
                    self.errors += 1;
                }
                vec![refused.to_msg()]
            }
        }
    }

    async fn handle(&mut self, msg: ClientMsg) -> Result<Vec<ServerMsg>, Refused> {
        if let ClientMsg::Hello { token, .. } = msg {
            return self.hello(&token).await;
        }
        if self.player.is_none() {
            return Err(refuse(
                "unauthenticated",
                "say hello with a session token first",
            ));
        }
        match msg {
            ClientMsg::Hello { .. } => unreachable_hello(),
            ClientMsg::Join { room, .. } => {
                let room = rules::room_name(&room)?.to_string();
                self.join(&room).await
            }
            ClientMsg::Leave { .. } => self.leave().await,
            ClientMsg::Move {
                dir, client_ref, ..
            } => {
                let client_ref = rules::client_ref(client_ref)?;
                self.rate_limit()?;
                self.step(dir, client_ref).await
            }
            ClientMsg::Chat {
                text, client_ref, ..
            } => {
                let client_ref = rules::client_ref(client_ref)?;
                let text = rules::chat_text(&text)?;
                self.rate_limit()?;
                self.chat(text, client_ref).await
            }
            ClientMsg::Queue { skill, region, .. } => {
                let skill = rules::skill(skill)?;
                let region = rules::region(&region)?.to_string();
                let p = self.player()?;
                self.game
                    .store
                    .queue(&p.session.player, &region, skill, crate::store::now_ms())
                    .await?;
                Ok(vec![ServerMsg::Queued {
                    v: VERSION,
                    region,
                    skill,
                }])
            }
            ClientMsg::Ping { client_ref, .. } => Ok(vec![ServerMsg::Pong {
                v: VERSION,
                client_ref: rules::client_ref(client_ref)?,
            }]),
        }
    }

    fn player(&self) -> Result<&Player, Refused> {
        self.player
            .as_ref()
            .ok_or_else(|| refuse("unauthenticated", "say hello with a session token first"))
    }

    fn rate_limit(&mut self) -> Result<(), Refused> {
        let p = self
            .player
            .as_mut()
            .ok_or_else(|| refuse("unauthenticated", "say hello first"))?;
        if p.limit.allow(Instant::now()) {
            Ok(())
        } else {
            Err(refuse("rate_limited", "too many actions; slow down"))
        }
    }

    async fn hello(&mut self, token: &str) -> Result<Vec<ServerMsg>, Refused> {
        if self.player.is_some() {
            return Err(refuse(
                "already_authenticated",
                "this socket already said hello",
            ));
        }
        if token.len() != 32 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(refuse("unauthenticated", "malformed session token"));
        }
        let game = self.game.clone();
        let Some(session) = game.store.session(token).await? else {
            return Err(refuse(
                "unauthenticated",
                "unknown or expired session: log in again",
            ));
        };
        // Present before anything else, so the cleanup job never sees the
        // player in a room without presence.
        game.store
            .set_presence(&session.player, &game.process, game.settings.presence_ttl)
            .await?;
        game.bus
            .join(
                &Keys::player_channel(&session.player),
                self.id,
                self.sub.clone(),
            )
            .await?;
        let resume_room = session.room.clone();
        let mut replies = vec![ServerMsg::Welcome {
            v: VERSION,
            player: session.player.clone(),
            name: session.name.clone(),
            process: game.process.clone(),
        }];
        let s = &game.settings;
        self.player = Some(Player {
            session,
            room: None,
            limit: RateLimit::new(s.actions_per_sec, s.action_burst, Instant::now()),
        });
        self.publish_local();
        if let Some(room) = resume_room {
            match self.join(&room).await {
                Ok(r) => replies.extend(r),
                // The room filled up while the player was away: they are
                // back in the lobby, and told so.
                Err(e) => replies.push(e.to_msg()),
            }
        }
        Ok(replies)
    }

    async fn join(&mut self, room: &str) -> Result<Vec<ServerMsg>, Refused> {
        let game = self.game.clone();
        if let Some((current, _)) = &self.player()?.room {
            if current == room {
                // Already here: answer with the snapshot only.
                return self.snapshot(room).await;
            }
            self.leave().await?;
        }
        let p = self.player()?;
        let player_id = p.session.player.clone();
        let spawn = rules::spawn(&player_id);
        let state = PlayerState {
            name: p.session.name.clone(),
            x: spawn.x,
            y: spawn.y,
        };
        let event = ServerMsg::Joined {
            v: VERSION,
            room: room.to_string(),
            player: state.view(&player_id),
        }
        .to_json();
        // Subscribe first: events after the snapshot must reach us.
        let channel = Keys::room_channel(room);
        game.bus.join(&channel, self.id, self.sub.clone()).await?;
        let joined = game
            .store
            .join(room, &player_id, &state, game.settings.capacity, &event)
            .await;
        let players = match joined {
            Ok(Joined::Room(players)) => players,
            Ok(Joined::Full) => {
                game.bus.leave(&channel, self.id).await;
                return Err(refuse("room_full", format!("room {room} is full")));
            }
            Err(e) => {
                game.bus.leave(&channel, self.id).await;
                return Err(e.into());
            }
        };
        let mine = players
            .iter()
            .find(|(id, _)| *id == player_id)
            .map(|(_, s)| s.clone())
            .unwrap_or(state);
        let token = self.player()?.session.token.clone();
        if let Some(p) = self.player.as_mut() {
            p.room = Some((room.to_string(), mine));
        }
        self.publish_local();
        game.store.set_session_room(&token, Some(room)).await?;
        Ok(vec![room_msg(room, game.settings.capacity, players)])
    }

    async fn snapshot(&self, room: &str) -> Result<Vec<ServerMsg>, Refused> {
        let players = self.game.store.room_players(room).await?;
        Ok(vec![room_msg(room, self.game.settings.capacity, players)])
    }

    async fn leave(&mut self) -> Result<Vec<ServerMsg>, Refused> {
        let game = self.game.clone();
        let p = self.player()?;
        let Some((room, _)) = p.room.clone() else {
            return Err(refuse("not_in_room", "join a room first"));
        };
        let (player_id, token) = (p.session.player.clone(), p.session.token.clone());
        let left = ServerMsg::Left {
            v: VERSION,
            room: room.clone(),
            player: player_id.clone(),
            reason: "leave".into(),
        };
        // Unsubscribe first, so the event reaches this socket once (below).
        game.bus.leave(&Keys::room_channel(&room), self.id).await;
        game.store
            .leave(&room, &player_id, &left.to_json(), None)
            .await?;
        if let Some(p) = self.player.as_mut() {
            p.room = None;
        }
        self.publish_local();
        game.store.set_session_room(&token, None).await?;
        Ok(vec![left])
    }

    async fn step(
        &mut self,
        dir: rules::Direction,
        client_ref: Option<String>,
    ) -> Result<Vec<ServerMsg>, Refused> {
        let game = self.game.clone();
        let p = self.player()?;
        let player_id = p.session.player.clone();
        let Some((room, mut old)) = p.room.clone() else {
            return Err(refuse("not_in_room", "join a room first"));
        };
        // One retry: a stale position means another socket of this player
        // moved; the second attempt starts from the stored position.
        for _ in 0..2 {
            let to = rules::step(old.position(), dir)?;
            let new = PlayerState {
                name: old.name.clone(),
                x: to.x,
                y: to.y,
            };
            let event = ServerMsg::Moved {
                v: VERSION,
                room: room.clone(),
                player: player_id.clone(),
                x: to.x,
                y: to.y,
                client_ref: client_ref.clone(),
            }
            .to_json();
            match game
                .store
                .move_player(&room, &player_id, &old, &new, &event)
                .await?
            {
                Moved::Done => {
                    if let Some(p) = self.player.as_mut() {
                        p.room = Some((room, new));
                    }
                    self.publish_local();
                    // The event itself reaches this socket through the room
                    // channel, like everyone else's.
                    return Ok(Vec::new());
                }
                Moved::NotInRoom => {
                    game.bus.leave(&Keys::room_channel(&room), self.id).await;
                    if let Some(p) = self.player.as_mut() {
                        p.room = None;
                    }
                    self.publish_local();
                    return Err(refuse(
                        "not_in_room",
                        "you were removed from the room; join again",
                    ));
                }
                Moved::Stale(current) => old = current,
            }
        }
        Err(refuse(
            "conflict",
            "your position changed elsewhere; try again",
        ))
    }

    async fn chat(
        &mut self,
        text: String,
        client_ref: Option<String>,
    ) -> Result<Vec<ServerMsg>, Refused> {
        let p = self.player()?;
        let Some((room, _)) = &p.room else {
            return Err(refuse("not_in_room", "join a room first"));
        };
        let event = ServerMsg::Chat {
            v: VERSION,
            room: room.clone(),
            player: p.session.player.clone(),
            name: p.session.name.clone(),
            text,
            client_ref,
        }
        .to_json();
        self.game
            .store
            .publish(&Keys::room_channel(room), &event)
            .await?;
        Ok(Vec::new())
    }

    /// Tells the heartbeat what this socket's player looks like now.
    fn publish_local(&self) {
        if let Some(p) = &self.player {
            self.game.set_local(
                self.id,
                Heartbeat {
                    token: p.session.token.clone(),
                    player: p.session.player.clone(),
                    name: p.session.name.clone(),
                    room: p.room.clone(),
                },
            );
        }
    }

    /// The socket closed: stop forwarding and renewing. The player stays in
    /// their room until their presence expires, so a reconnect within the
    /// presence TTL (a drain, a crash, a flaky network) resumes seamlessly.
    async fn disconnect(self) {
        self.game.remove_local(self.id);
        if let Some(p) = &self.player {
            if let Some((room, _)) = &p.room {
                self.game
                    .bus
                    .leave(&Keys::room_channel(room), self.id)
                    .await;
            }
            self.game
                .bus
                .leave(&Keys::player_channel(&p.session.player), self.id)
                .await;
        }
    }
}

fn room_msg(room: &str, capacity: u32, players: Vec<(String, PlayerState)>) -> ServerMsg {
    let mut players: Vec<_> = players.iter().map(|(id, s)| s.view(id)).collect();
    players.sort_by(|a, b| a.id.cmp(&b.id));
    ServerMsg::Room {
        v: VERSION,
        room: room.to_string(),
        width: rules::WIDTH,
        height: rules::HEIGHT,
        capacity,
        players,
    }
}

fn unreachable_hello() -> Result<Vec<ServerMsg>, Refused> {
    // `hello` is handled before the match; kept total without a panic.
    Err(refuse("bad_message", "unexpected hello"))
}
