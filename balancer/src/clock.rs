//! The balancer's clock: a coarse, cheap, monotonic millisecond count.
//!
//! Every timestamp the balancer keeps in an atomic (byte activity, idle
//! sockets, ejections, health changes) is a [`now_ms`] value, so 0 can mean
//! "never". Code that decides something from time takes `now` as an
//! argument instead of reading the clock itself: the decision is then a pure
//! function that tests drive with the times they choose, and the hot path
//! reads the clock once per request, not once per decision.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the process's first call, plus one: cheap, monotonic,
/// and never 0, so 0 can mean "never" in timestamps kept in atomics.
pub fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// The [`Instant`] a [`now_ms`] value stands for.
pub fn instant_of(ms: u64) -> Instant {
    epoch() + Duration::from_millis(ms.saturating_sub(1))
}

/// Milliseconds in `d`, saturating (for timestamps and limits kept as `u64`).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One reading of the clock for one decision, taken at most once and only
/// if something asks for it: a pick over backends that are all in, or a
/// success reported for a backend with no failures, reads no clock at all.
/// Tests pin it with [`Now::at`].
#[derive(Debug)]
pub struct Now(Cell<u64>);

impl Now {
    /// Read on first use.
    pub fn lazy() -> Self {
        Self(Cell::new(0))
    }

    /// Fixed at `ms` (a [`now_ms`] value).
    pub fn at(ms: u64) -> Self {
        Self(Cell::new(ms.max(1)))
    }

    /// The reading: [`now_ms`] the first time, the same value after.
    pub fn get(&self) -> u64 {
        match self.0.get() {
            0 => {
                let now = now_ms();
                self.0.set(now);
                now
            }
            read => read,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_zero_and_round_trips_through_instant() {
        let a = now_ms();
        assert!(a >= 1);
        let i = instant_of(a);
        let back = i.duration_since(epoch()).as_millis() as u64 + 1;
        assert_eq!(back, a);
        assert!(now_ms() >= a, "monotonic");
        assert_eq!(millis(Duration::from_secs(2)), 2_000);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }

    #[test]
    fn now_is_read_once_and_can_be_pinned() {
        let lazy = Now::lazy();
        let first = lazy.get();
        assert!(first >= 1);
        assert_eq!(lazy.get(), first, "the same reading every time");
        assert_eq!(Now::at(42).get(), 42);
    }
}
