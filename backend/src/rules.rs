//! The game's rules as pure functions: what a valid name, room, move, chat
//! line or queue request is, where a player spawns, how fast a player may
//! act, and how matchmaking groups waiting players.
//!
//! The server validates every action here before anything reaches Redis;
//! nothing a client says is trusted. Keeping the rules free of I/O lets them
//! be tested (and property-tested) as plain functions.

use std::time::Instant;

/// Board size in cells: positions are `0..WIDTH` by `0..HEIGHT`.
pub const WIDTH: u32 = 16;
pub const HEIGHT: u32 = 12;
/// Longest player name, in characters.
pub const MAX_NAME_CHARS: usize = 24;
/// Longest chat line, in characters.
pub const MAX_CHAT_CHARS: usize = 200;
/// Longest room name or region, in bytes (ASCII only).
pub const MAX_ROOM_BYTES: usize = 32;
/// Longest client reference echoed back in events (`ref`).
pub const MAX_REF_BYTES: usize = 64;
/// Skill ratings are `0..=MAX_SKILL`.
pub const MAX_SKILL: u32 = 5000;

/// Why an action was refused; `code()` is what the client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("name must be 1-{MAX_NAME_CHARS} printable characters")]
    BadName,
    #[error("room must be 1-{MAX_ROOM_BYTES} characters of a-z, 0-9, '-' or '_'")]
    BadRoom,
    #[error("region must be 1-{MAX_ROOM_BYTES} characters of a-z, 0-9, '-' or '_'")]
    BadRegion,
    #[error("chat text must be 1-{MAX_CHAT_CHARS} printable characters")]
    BadChat,
    #[error("skill must be 0-{MAX_SKILL}")]
    BadSkill,
    #[error("ref must be at most {MAX_REF_BYTES} bytes")]
    BadRef,
    #[error("that move leaves the board")]
    OffBoard,
}

impl RuleError {
    /// The stable error code of the protocol (docs/protocol.md).
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadName => "bad_name",
            Self::BadRoom => "bad_room",
            Self::BadRegion => "bad_region",
            Self::BadChat => "bad_chat",
            Self::BadSkill => "bad_skill",
            Self::BadRef => "bad_ref",
            Self::OffBoard => "invalid_move",
        }
    }
}

/// One step on the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Up,
    Down,
    Left,
    Right,
}

/// Where a player stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Position {
    pub x: u32,
    pub y: u32,
}

/// The position one step from `from`, or an error if it leaves the board.
pub fn step(from: Position, dir: Direction) -> Result<Position, RuleError> {
    let Position { x, y } = from;
    let to = match dir {
        Direction::Up => Position {
            x,
            y: y.checked_sub(1).ok_or(RuleError::OffBoard)?,
        },
        Direction::Down => Position { x, y: y + 1 },
        Direction::Left => Position {
            x: x.checked_sub(1).ok_or(RuleError::OffBoard)?,
            y,
        },
        Direction::Right => Position { x: x + 1, y },
    };
    if to.x >= WIDTH || to.y >= HEIGHT {
        return Err(RuleError::OffBoard);
    }
    Ok(to)
}

/// A player's spawn cell: spread over the board by a hash of the player id,
/// so two players joining together rarely start on one cell.
pub fn spawn(player: &str) -> Position {
    // FNV-1a: fixed, so a player spawns at the same cell on every process.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in player.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let cells = u64::from(WIDTH * HEIGHT);
    let cell = (h % cells) as u32;
    Position {
        x: cell % WIDTH,
        y: cell / WIDTH,
    }
}

/// A display name: trimmed, 1 to [`MAX_NAME_CHARS`] characters, no control
/// characters.
pub fn player_name(raw: &str) -> Result<String, RuleError> {
    printable(raw, MAX_NAME_CHARS).ok_or(RuleError::BadName)
}

/// A chat line: trimmed, 1 to [`MAX_CHAT_CHARS`] characters, no control
/// characters.
pub fn chat_text(raw: &str) -> Result<String, RuleError> {
    printable(raw, MAX_CHAT_CHARS).ok_or(RuleError::BadChat)
}

fn printable(raw: &str, max_chars: usize) -> Option<String> {
    let t = raw.trim();
    let n = t.chars().count();
    if n == 0 || n > max_chars || t.chars().any(char::is_control) {
        return None;
    }
    Some(t.to_string())
}

/// A room name: it becomes part of Redis keys and channel names, so only a
/// small ASCII alphabet is allowed.
pub fn room_name(raw: &str) -> Result<&str, RuleError> {
    slug(raw).ok_or(RuleError::BadRoom)
}

/// A matchmaking region, same alphabet as rooms.
pub fn region(raw: &str) -> Result<&str, RuleError> {
    slug(raw).ok_or(RuleError::BadRegion)
}

fn slug(raw: &str) -> Option<&str> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_ROOM_BYTES
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    ok.then_some(raw)
}

/// A skill rating within `0..=MAX_SKILL`.
pub fn skill(raw: u32) -> Result<u32, RuleError> {
    if raw <= MAX_SKILL {
        Ok(raw)
    } else {
        Err(RuleError::BadSkill)
    }
}

/// A client reference (echoed back so a client can match its own actions).
pub fn client_ref(raw: Option<String>) -> Result<Option<String>, RuleError> {
    match raw {
        Some(r) if r.len() > MAX_REF_BYTES || r.chars().any(char::is_control) => {
            Err(RuleError::BadRef)
        }
        r => Ok(r),
    }
}

/// Token bucket: each player may act `rate` times a second on average, with
/// bursts of up to `burst` actions.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Matchmaking tolerance: how far apart in skill a player accepts an
/// opponent, widening the longer the player waits (100 at once, +50 per
/// second waited, at most 1000).
pub fn tolerance(waited_ms: u64) -> u32 {
    let widened = 100 + 50 * (waited_ms / 1000);
    widened.min(1000) as u32
}

/// One waiting player, as the matchmaking job sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub player: String,
    pub skill: u32,
    pub tolerance: u32,
}

/// Groups waiting players into matches of `size`: candidates are taken in
/// skill order, and a group forms when the skill spread of its members is
/// within every member's tolerance. Players not matched keep waiting (their
/// tolerance widens on the next run).
pub fn form_matches(mut candidates: Vec<Candidate>, size: usize) -> Vec<Vec<String>> {
    let size = size.max(2);
    candidates.sort_by(|a, b| a.skill.cmp(&b.skill).then(a.player.cmp(&b.player)));
    let mut matches = Vec::new();
    let mut i = 0;
    while i + size <= candidates.len() {
        let group = &candidates[i..i + size];
        let spread = group[size - 1].skill - group[0].skill;
        if group.iter().all(|c| spread <= c.tolerance) {
            matches.push(group.iter().map(|c| c.player.clone()).collect());
            i += size;
        } else {
            i += 1;
        }
    }
    matches
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn steps_stay_on_the_board() {
        let corner = Position { x: 0, y: 0 };
        assert_eq!(step(corner, Direction::Up), Err(RuleError::OffBoard));
        assert_eq!(step(corner, Direction::Left), Err(RuleError::OffBoard));
        assert_eq!(step(corner, Direction::Right), Ok(Position { x: 1, y: 0 }));
        assert_eq!(step(corner, Direction::Down), Ok(Position { x: 0, y: 1 }));
        let far = Position {
            x: WIDTH - 1,
            y: HEIGHT - 1,
        };
        assert_eq!(step(far, Direction::Right), Err(RuleError::OffBoard));
        assert_eq!(step(far, Direction::Down), Err(RuleError::OffBoard));
    }

    #[test]
    fn names_rooms_and_chat_are_validated() {
        assert_eq!(player_name("  Ada "), Ok("Ada".to_string()));
        assert_eq!(player_name(""), Err(RuleError::BadName));
        assert_eq!(player_name("a\u{7}b"), Err(RuleError::BadName));
        assert_eq!(player_name(&"x".repeat(25)), Err(RuleError::BadName));
        assert_eq!(player_name(&"é".repeat(24)), Ok("é".repeat(24)));
        assert_eq!(room_name("lobby-1"), Ok("lobby-1"));
        for bad in ["", "Lobby", "a b", "a:b", "{x}", &"a".repeat(33)] {
            assert_eq!(room_name(bad), Err(RuleError::BadRoom), "{bad:?}");
        }
        assert_eq!(chat_text(" hi "), Ok("hi".to_string()));
        assert_eq!(chat_text("   "), Err(RuleError::BadChat));
        assert_eq!(chat_text("a\nb"), Err(RuleError::BadChat));
        assert_eq!(skill(5001), Err(RuleError::BadSkill));
        assert_eq!(client_ref(Some("x".repeat(65))), Err(RuleError::BadRef));
    }

    #[test]
    fn rate_limit_allows_bursts_then_the_rate() {
        let t0 = Instant::now();
        let mut rl = RateLimit::new(10.0, 3.0, t0);
        assert!(rl.allow(t0) && rl.allow(t0) && rl.allow(t0));
        assert!(!rl.allow(t0));
        assert!(rl.allow(t0 + Duration::from_millis(100)));
        assert!(!rl.allow(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn matchmaking_groups_close_skills_and_widens_with_waiting() {
        let c = |p: &str, skill, waited| Candidate {
            player: p.into(),
            skill,
            tolerance: tolerance(waited),
        };
        let fresh = vec![c("a", 1000, 0), c("b", 1050, 0), c("c", 1600, 0)];
        assert_eq!(form_matches(fresh, 2), vec![vec!["a", "b"]]);
        // 600 apart: not at once, but after 10 s of waiting both accept.
        assert!(form_matches(vec![c("a", 1000, 0), c("c", 1600, 0)], 2).is_empty());
        assert_eq!(
            form_matches(vec![c("a", 1000, 10_000), c("c", 1600, 10_000)], 2),
            vec![vec!["a", "c"]]
        );
        assert_eq!(tolerance(3_600_000), 1000);
    }

    proptest! {
        #[test]
        fn steps_never_leave_the_board(x in 0..WIDTH, y in 0..HEIGHT, d in 0..4u8) {
            let dir = [Direction::Up, Direction::Down, Direction::Left, Direction::Right][d as usize];
            if let Ok(p) = step(Position { x, y }, dir) {
                prop_assert!(p.x < WIDTH && p.y < HEIGHT);
                prop_assert_eq!(p.x.abs_diff(x) + p.y.abs_diff(y), 1);
            }
        }

        #[test]
        fn spawn_is_on_the_board(id in ".{0,40}") {
            let p = spawn(&id);
            prop_assert!(p.x < WIDTH && p.y < HEIGHT);
        }

        #[test]
        fn matches_are_disjoint_and_within_tolerance(
            skills in proptest::collection::vec((0..=MAX_SKILL, 0..20_000u64), 0..40),
        ) {
            let cands: Vec<Candidate> = skills.iter().enumerate().map(|(i, (s, w))| Candidate {
                player: format!("p{i}"), skill: *s, tolerance: tolerance(*w),
            }).collect();
            let matches = form_matches(cands.clone(), 3);
            let mut seen = std::collections::HashSet::new();
            for m in &matches {
                prop_assert_eq!(m.len(), 3);
                let members: Vec<&Candidate> = m.iter().map(|p| cands.iter().find(|c| &c.player == p).unwrap()).collect();
                let lo = members.iter().map(|c| c.skill).min().unwrap();
                let hi = members.iter().map(|c| c.skill).max().unwrap();
                for c in &members {
                    prop_assert!(hi - lo <= c.tolerance);
                    prop_assert!(seen.insert(c.player.clone()));
                }
            }
        }
    }
}
