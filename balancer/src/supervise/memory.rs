//! `max_memory`: an instance whose resident memory stays above its pool's
//! limit for `max_memory_for` is replaced the graceful way, by a rolling
//! restart of that one instance (its replacement ready first, its players
//! moved over `drain_spread`): PM2's `max_memory_restart`, without cutting
//! anyone off. Checked every second, from `/proc` (see usage.rs).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Instance, Supervisor};

/// How often resident memory is read.
const EVERY: Duration = Duration::from_secs(1);

pub(super) async fn watch(sup: Arc<Supervisor>) {
    // Since when each process (by its Instance) has been over its limit.
    let mut over: HashMap<usize, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = sup.stop.cancelled() => return,
        }
        let limited: Vec<(Arc<Instance>, u64, Duration)> = match sup.state.lock() {
            Ok(st) => st
                .running
                .iter()
                .filter_map(|h| {
                    let settings = st.pools.get(&*h.instance.pool)?.load();
                    let limit = settings.max_memory?;
                    Some((Arc::clone(&h.instance), limit, settings.max_memory_for))
                })
                .collect(),
            Err(_) => return,
        };
        let now = Instant::now();
        let mut still = HashMap::new();
        for (instance, limit, hold) in limited {
            let key = Arc::as_ptr(&instance) as usize;
            let Some(usage) = Instance::usage(instance.phase()) else {
                continue;
            };
            if usage.rss_bytes <= limit {
                continue;
            }
            let since = over.get(&key).copied().unwrap_or(now);
            if now.duration_since(since) >= hold && !sup.is_restarting(&instance.pool) {
                tracing::warn!(
                    pool = &*instance.pool,
                    instance = &*instance.id,
                    rss_bytes = usage.rss_bytes,
                    max_memory = limit,
                    over_ms = now.duration_since(since).as_millis() as u64,
                    "instance over max_memory: replacing it"
                );
                sup.restart(
                    &instance.pool,
                    Some(vec![instance.id.to_string()]),
                    "memory",
                );
                continue;
            }
            still.insert(key, since);
        }
        over = still;
    }
}
