//! The game's WebSocket protocol (`/play`), version 1: JSON text messages,
//! each an object with `"v": 1` and a type tag `"t"`. docs/protocol.md is
//! the reference for clients; this module is its single source in code.
//!
//! Server events that concern a room are serialized once, published through
//! Redis, and forwarded verbatim to every member on every process.

use serde::{Deserialize, Serialize};

use crate::rules::{Direction, Position};

/// The protocol version this server speaks.
pub const VERSION: u32 = 1;

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    /// First message on a socket: the session token from `POST /login`.
    Hello { v: u32, token: String },
    /// Join (or, after a reconnect, rejoin) a room.
    Join { v: u32, room: String },
    /// Leave the current room.
    Leave { v: u32 },
    /// One step on the board.
    Move {
        v: u32,
        dir: Direction,
        #[serde(rename = "ref", default)]
        client_ref: Option<String>,
    },
    /// A chat line to the room.
    Chat {
        v: u32,
        text: String,
        #[serde(rename = "ref", default)]
        client_ref: Option<String>,
    },
    /// Wait for a match with players of similar skill in a region.
    Queue { v: u32, skill: u32, region: String },
    /// Round trip check; answered with `pong` on the same socket.
    Ping {
        v: u32,
        #[serde(rename = "ref", default)]
        client_ref: Option<String>,
    },
}

impl ClientMsg {
    pub fn version(&self) -> u32 {
        match self {
            Self::Hello { v, .. }
            | Self::Join { v, .. }
            | Self::Leave { v }
            | Self::Move { v, .. }
            | Self::Chat { v, .. }
            | Self::Queue { v, .. }
            | Self::Ping { v, .. } => *v,
        }
    }
}

/// A player as others see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlayerView {
    pub id: String,
    pub name: String,
    pub x: u32,
    pub y: u32,
}

/// What the room hash in Redis holds per player (the id is the field name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlayerState {
    pub name: String,
    pub x: u32,
    pub y: u32,
}

impl PlayerState {
    pub fn position(&self) -> Position {
        Position {
            x: self.x,
            y: self.y,
        }
    }

    pub fn view(&self, id: &str) -> PlayerView {
        PlayerView {
            id: id.to_string(),
            name: self.name.clone(),
            x: self.x,
            y: self.y,
        }
    }
}

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ServerMsg {
    /// Answer to `hello`: who the player is and which process serves them.
    Welcome {
        v: u32,
        player: String,
        name: String,
        process: String,
    },
    /// The room as it is now (after `join`, or after a resume).
    Room {
        v: u32,
        room: String,
        width: u32,
        height: u32,
        capacity: u32,
        players: Vec<PlayerView>,
    },
    /// Someone entered the room.
    Joined {
        v: u32,
        room: String,
        player: PlayerView,
    },
    /// Someone left the room: `reason` is `leave` (asked to) or `timeout`
    /// (their process stopped renewing their presence).
    Left {
        v: u32,
        room: String,
        player: String,
        reason: String,
    },
    /// Someone moved.
    Moved {
        v: u32,
        room: String,
        player: String,
        x: u32,
        y: u32,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none", default)]
        client_ref: Option<String>,
    },
    /// Someone said something.
    Chat {
        v: u32,
        room: String,
        player: String,
        name: String,
        text: String,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none", default)]
        client_ref: Option<String>,
    },
    /// The player waits for a match.
    Queued { v: u32, region: String, skill: u32 },
    /// A match formed: join `room`.
    Matched {
        v: u32,
        room: String,
        players: Vec<String>,
    },
    Pong {
        v: u32,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none", default)]
        client_ref: Option<String>,
    },
    /// An action was refused; the socket stays open.
    Error {
        v: u32,
        code: String,
        message: String,
    },
}

impl ServerMsg {
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        Self::Error {
            v: VERSION,
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// The JSON text sent on the wire.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail (string keys, no maps
        // with non-string keys); fall back to a fixed error just in case.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"t":"error","v":1,"code":"internal","message":"encoding failed"}"#.to_string()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_parse_and_unknown_fields_are_refused() {
        let m: ClientMsg =
            serde_json::from_str(r#"{"v":1,"t":"move","dir":"left","ref":"a1"}"#).unwrap();
        assert_eq!(
            m,
            ClientMsg::Move {
                v: 1,
                dir: Direction::Left,
                client_ref: Some("a1".into())
            }
        );
        assert!(serde_json::from_str::<ClientMsg>(r#"{"v":1,"t":"move","dir":"north"}"#).is_err());
        assert!(serde_json::from_str::<ClientMsg>(r#"{"v":1,"t":"leave","x":1}"#).is_err());
        assert!(serde_json::from_str::<ClientMsg>(r#"{"t":"leave"}"#).is_err());
        assert!(serde_json::from_str::<ClientMsg>(r#"{"v":1,"t":"fly"}"#).is_err());
    }

    #[test]
    fn server_messages_carry_version_and_tag() {
        let json = ServerMsg::Moved {
            v: VERSION,
            room: "r".into(),
            player: "p".into(),
            x: 1,
            y: 2,
            client_ref: None,
        }
        .to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["t"], "moved");
        assert_eq!(v["v"], 1);
        assert!(v.get("ref").is_none());
    }
}
