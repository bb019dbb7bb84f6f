//! Cross-process delivery: Redis pub/sub with one channel per room (and one
//! per player, for events such as "match found").
//!
//! Each process holds one RESP3 connection for subscriptions and subscribes
//! only to the channels its own sockets need: the first local member of a
//! room subscribes, the last one to leave unsubscribes. A message arriving
//! on a channel is handed, as the same shared string, to the outbound queue
//! of every local socket registered on it; the JSON is never re-encoded.
//!
//! A socket whose queue is full (a client that stops reading) is told to
//! close through its `lagged` signal instead of holding memory or slowing
//! the others; the client reconnects and gets a fresh room snapshot.
//!
//! The connection reconnects by itself and resubscribes what it had; after
//! an outage the [`Bus::resubscribe`] call from the Redis monitor subscribes
//! everything again (subscribing twice is harmless), which also covers
//! channels whose first subscribe failed while Redis was down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use redis::aio::ConnectionManager;
use redis::{Client, Msg, PushInfo};
use tokio::sync::{mpsc, Notify};

use crate::store::{manager_config, Result};

/// What a local socket registers: its outbound queue and a way to tell it
/// that it fell behind.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub tx: mpsc::Sender<Arc<str>>,
    pub lagged: Arc<Notify>,
}

type Registry = HashMap<String, HashMap<u64, Subscriber>>;

/// The process's pub/sub connection and its local subscribers.
pub struct Bus {
    /// Swapped as a whole when Sentinel names a new primary.
    conn: ArcSwap<ConnectionManager>,
    local: Arc<Mutex<Registry>>,
    /// Serialises subscribe/unsubscribe so a channel's last leave and next
    /// join reach Redis in the order they happened here.
    changes: tokio::sync::Mutex<()>,
    /// Messages dropped because a socket's queue was full.
    pub dropped: Arc<AtomicU64>,
    /// Messages handed to local sockets.
    pub delivered: Arc<AtomicU64>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").finish_non_exhaustive()
    }
}

impl Bus {
    /// Opens (lazily) the subscription connection: RESP3, so subscriptions
    /// and pings share one connection and messages arrive as pushes.
    pub fn new(client: &Client) -> Result<Self> {
        let local: Arc<Mutex<Registry>> = Arc::default();
        let dropped = Arc::new(AtomicU64::new(0));
        let delivered = Arc::new(AtomicU64::new(0));
        let conn = connect(client, &local, &dropped, &delivered)?;
        Ok(Self {
            conn: ArcSwap::from_pointee(conn),
            local,
            changes: tokio::sync::Mutex::new(()),
            dropped,
            delivered,
        })
    }

    /// Moves the subscriptions to another server (a Sentinel failover):
    /// a new connection, then every local channel subscribed on it.
    pub async fn switch(&self, client: &Client) -> Result<usize> {
        let conn = connect(client, &self.local, &self.dropped, &self.delivered)?;
        self.conn.store(Arc::new(conn));
        self.resubscribe().await
    }

    fn conn(&self) -> ConnectionManager {
        (**self.conn.load()).clone()
    }

    /// Registers socket `id` on `channel`, subscribing if it is the first
    /// local one. The registration stays even if the subscribe fails (Redis
    /// down): the next [`Bus::resubscribe`] completes it.
    pub async fn join(&self, channel: &str, id: u64, sub: Subscriber) -> Result<()> {
        let _order = self.changes.lock().await;
        let first = {
            let mut local = lock(&self.local);
            let members = local.entry(channel.to_string()).or_default();
            members.insert(id, sub);
            members.len() == 1
        };
        if first {
            let mut c = self.conn();
            c.subscribe(channel).await?;
        }
        Ok(())
    }

    /// Removes socket `id` from `channel`, unsubscribing if it was the last.
    pub async fn leave(&self, channel: &str, id: u64) {
        let _order = self.changes.lock().await;
        let last = {
            let mut local = lock(&self.local);
            match local.get_mut(channel) {
                Some(members) => {
                    members.remove(&id);
                    if members.is_empty() {
                        local.remove(channel);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if last {
            let mut c = self.conn();
            if let Err(e) = c.unsubscribe(channel).await {
                // A stale subscription only costs messages nobody reads.
                tracing::debug!(channel, error = %e, "unsubscribe failed");
            }
        }
    }

    /// Subscribes every channel that has local members (after an outage).
    pub async fn resubscribe(&self) -> Result<usize> {
        let _order = self.changes.lock().await;
        let channels: Vec<String> = lock(&self.local).keys().cloned().collect();
        let mut c = self.conn();
        for chunk in channels.chunks(256) {
            c.subscribe(chunk).await?;
        }
        Ok(channels.len())
    }

    /// Round trip on the subscription connection (it must be alive for
    /// messages to arrive).
    pub async fn ping(&self) -> Result<()> {
        let mut c = self.conn();
        let _: redis::Value = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    /// Channels this process is subscribed to, for `/api/stats` and tests.
    pub fn channels(&self) -> usize {
        lock(&self.local).len()
    }
}

/// A RESP3 connection whose pushes (messages) go straight to the local
/// subscribers' queues.
fn connect(
    client: &Client,
    local: &Arc<Mutex<Registry>>,
    dropped: &Arc<AtomicU64>,
    delivered: &Arc<AtomicU64>,
) -> Result<ConnectionManager> {
    let info = client.get_connection_info().clone();
    let redis = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let client = Client::open(info.set_redis_settings(redis))?;
    let (reg, drop_count, deliver_count) = (local.clone(), dropped.clone(), delivered.clone());
    let sender = move |push: PushInfo| -> std::result::Result<(), std::convert::Infallible> {
        dispatch(&reg, push, &drop_count, &deliver_count);
        Ok(())
    };
    let config = manager_config()
        .set_push_sender(sender)
        .set_automatic_resubscription();
    Ok(ConnectionManager::new_lazy_with_config(client, config)?)
}

fn dispatch(local: &Mutex<Registry>, push: PushInfo, dropped: &AtomicU64, delivered: &AtomicU64) {
    let Some(msg) = Msg::from_push_info(push) else {
        return;
    };
    let Ok(text) = std::str::from_utf8(msg.get_payload_bytes()) else {
        return;
    };
    let local = lock(local);
    let Some(members) = local.get(msg.get_channel_name()) else {
        return;
    };
    let text: Arc<str> = Arc::from(text);
    for sub in members.values() {
        match sub.tx.try_send(text.clone()) {
            Ok(()) => {
                delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                dropped.fetch_add(1, Ordering::Relaxed);
                sub.lagged.notify_one();
            }
            // The socket is closing; its leave is on the way.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// The registry is only touched briefly and never across an await; a
/// poisoned lock (a panic elsewhere while held) still holds valid data.
fn lock(m: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
