//! Session tickets sealed with keys from a file (`ticket_key_file`), so
//! several balancers behind DNS resume each other's TLS sessions.
//!
//! The file holds one key per line (at least 32 characters each, e.g.
//! `openssl rand -base64 48`; blank lines and `#` comments are skipped).
//! The first key seals new tickets; every key opens them. Rotation, as
//! with nginx's `ssl_session_ticket_key`: put a new key on the first line,
//! keep the old one below it for one ticket lifetime, then drop it. Every
//! balancer reads the file on change, so they all move together.
//!
//! A ticket is `key id (4) || nonce (12) || ChaCha20-Poly1305(session)`.
//! The AEAD key is SHA-256 of a label and the line; the id is a different
//! hash of the line, so a ticket names its key without revealing it.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

/// Shortest accepted key line.
pub const MIN_KEY_LEN: usize = 32;
const ID_LEN: usize = 4;

struct Key {
    id: [u8; ID_LEN],
    key: LessSafeKey,
}

/// Keys as read from one version of the file; the first seals.
pub struct TicketKeys {
    keys: Vec<Key>,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKeys")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl TicketKeys {
    /// Parses the file's text; the error says what is wrong, not the key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.len() < MIN_KEY_LEN {
                return Err(format!(
                    "line {}: a key must be at least {MIN_KEY_LEN} characters (e.g. openssl rand -base64 48)",
                    n + 1
                ));
            }
            let secret: [u8; 32] = Sha256::new()
                .chain_update(b"balancer session ticket key v1\0")
                .chain_update(line.as_bytes())
                .finalize()
                .into();
            let id_hash = Sha256::new()
                .chain_update(b"balancer session ticket id v1\0")
                .chain_update(line.as_bytes())
                .finalize();
            let mut id = [0u8; ID_LEN];
            id.copy_from_slice(&id_hash[..ID_LEN]);
            let unbound = UnboundKey::new(&CHACHA20_POLY1305, &secret)
                .map_err(|_| "cannot make a ChaCha20-Poly1305 key".to_string())?;
            keys.push(Key {
                id,
                key: LessSafeKey::new(unbound),
            });
        }
        if keys.is_empty() {
            return Err("no key in the file".into());
        }
        Ok(Self { keys })
    }

    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
        Self::parse(&text)
    }

    fn seal(&self, rng: &SystemRandom, plain: &[u8]) -> Option<Vec<u8>> {
        let k = self.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(ID_LEN + NONCE_LEN + plain.len() + aead::MAX_TAG_LEN);
        out.extend_from_slice(&k.id);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        k.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&k.id),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < ID_LEN + NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return None;
        }
        let (id, rest) = ticket.split_at(ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let k = self.keys.iter().find(|k| k.id == id)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = sealed.to_vec();
        let plain = k.key.open_in_place(nonce, Aad::from(id), &mut body).ok()?;
        let n = plain.len();
        body.truncate(n);
        Some(body)
    }
}

/// rustls' ticket producer over the keys of the file in force; the keys
/// are swapped when the file changes, sessions keep resuming.
#[derive(Debug)]
pub struct KeyFileTicketer {
    keys: ArcSwap<TicketKeys>,
    lifetime: u32,
    rng: SystemRandom,
}

impl KeyFileTicketer {
    pub fn new(keys: TicketKeys, lifetime: std::time::Duration) -> Arc<Self> {
        Arc::new(Self {
            keys: ArcSwap::from_pointee(keys),
            lifetime: u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX),
            rng: SystemRandom::new(),
        })
    }

    pub fn replace(&self, keys: TicketKeys) {
        self.keys.store(Arc::new(keys));
    }
}

impl rustls::server::ProducesTickets for KeyFileTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.keys.load().seal(&self.rng, plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.keys.load().open(cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rustls::server::ProducesTickets;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn tickets_open_with_any_key_of_the_file_and_seal_with_the_first() {
        let old = KeyFileTicketer::new(
            TicketKeys::parse(A).unwrap(),
            std::time::Duration::from_secs(60),
        );
        let ticket = old.encrypt(b"session state").unwrap();
        // A second balancer with the same file opens it.
        let peer = KeyFileTicketer::new(
            TicketKeys::parse(A).unwrap(),
            std::time::Duration::from_secs(60),
        );
        assert_eq!(peer.decrypt(&ticket).unwrap(), b"session state");
        // Rotated: the new key first, the old one still opens.
        peer.replace(TicketKeys::parse(&format!("# rotated\n{B}\n\n{A}\n")).unwrap());
        assert_eq!(peer.decrypt(&ticket).unwrap(), b"session state");
        let fresh = peer.encrypt(b"x").unwrap();
        assert!(
            old.decrypt(&fresh).is_none(),
            "sealed with B, which old lacks"
        );
        // The old key dropped: its tickets no longer open.
        peer.replace(TicketKeys::parse(B).unwrap());
        assert!(peer.decrypt(&ticket).is_none());
        assert_eq!(peer.lifetime(), 60);
    }

    #[test]
    fn bad_key_files_are_refused() {
        assert!(TicketKeys::parse("").unwrap_err().contains("no key"));
        assert!(TicketKeys::parse("# only a comment\n").is_err());
        assert!(TicketKeys::parse("short").unwrap_err().contains("line 1"));
    }

    proptest! {
        /// Tickets come from the network: any bytes, tampered or not,
        /// open to the exact original or to nothing, and never panic.
        #[test]
        fn any_ticket_bytes_open_to_the_original_or_nothing(
            plain in proptest::collection::vec(any::<u8>(), 0..200),
            junk in proptest::collection::vec(any::<u8>(), 0..100),
            flip in any::<usize>(),
        ) {
            let t = KeyFileTicketer::new(TicketKeys::parse(A).unwrap(), std::time::Duration::from_secs(1));
            prop_assert!(t.decrypt(&junk).is_none());
            let mut ticket = t.encrypt(&plain).unwrap();
            prop_assert_eq!(t.decrypt(&ticket).unwrap(), plain);
            let i = flip % ticket.len();
            ticket[i] ^= 1;
            prop_assert!(t.decrypt(&ticket).is_none());
        }
    }
}
