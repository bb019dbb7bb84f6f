//! When a crashed instance starts again: the restart policy as a pure
//! function of its exit history, so it is tested without processes or time.
//!
//! The first restart waits `restart_delay`; each consecutive crash doubles
//! the wait up to `restart_delay_max`. An instance that ran `min_uptime`
//! before it exited counts as healthy again: the next wait is the first
//! one. More than `max_restarts` restarts within `restart_window` and the
//! instance is given up (`failed`) until the balancer restarts.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The `[pool.processes]` keys that shape restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub delay: Duration,
    pub delay_max: Duration,
    pub min_uptime: Duration,
    pub max_restarts: u32,
    pub window: Duration,
}

impl RestartPolicy {
    pub fn of(p: &config::ProcessesConfig) -> Self {
        Self {
            delay: p.restart_delay,
            delay_max: p.restart_delay_max,
            min_uptime: p.min_uptime,
            max_restarts: p.max_restarts,
            window: p.restart_window,
        }
    }
}

/// What to do after an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after this long.
    RestartAfter(Duration),
    /// Too many restarts in the window: leave it down.
    GiveUp,
}

/// One instance's exit history.
#[derive(Debug, Default, Clone)]
pub struct Restarts {
    /// When each restart within the window was decided (oldest first);
    /// never longer than `max_restarts`.
    recent: VecDeque<Instant>,
    /// Crashes in a row, each within `min_uptime` of its start.
    consecutive: u32,
    /// Restarts since the balancer started (the status API's `restarts`).
    total: u32,
}

impl Restarts {
    /// Restarts so far.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// The instance exited at `now` after running `uptime`.
    pub fn on_exit(&mut self, now: Instant, uptime: Duration, policy: &RestartPolicy) -> Decision {
        if uptime >= policy.min_uptime {
            self.consecutive = 0;
        }
        while let Some(&t) = self.recent.front() {
            if now.saturating_duration_since(t) >= policy.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() >= policy.max_restarts as usize {
            return Decision::GiveUp;
        }
        let factor = 1u32 << self.consecutive.min(30);
        let delay = policy.delay.saturating_mul(factor).min(policy.delay_max);
        self.consecutive = self.consecutive.saturating_add(1);
        self.recent.push_back(now);
        self.total = self.total.saturating_add(1);
        Decision::RestartAfter(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RestartPolicy = RestartPolicy {
        delay: Duration::from_millis(100),
        delay_max: Duration::from_secs(1),
        min_uptime: Duration::from_secs(5),
        max_restarts: 10,
        window: Duration::from_secs(60),
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delay_doubles_per_consecutive_crash_up_to_the_max() {
        let t0 = Instant::now();
        let mut r = Restarts::default();
        let delays: Vec<Decision> = (0..6)
            .map(|i| r.on_exit(t0 + ms(i * 10), ms(1), &POLICY))
            .collect();
        use Decision::RestartAfter as After;
        assert_eq!(
            delays,
            [
                After(ms(100)),
                After(ms(200)),
                After(ms(400)),
                After(ms(800)),
                After(ms(1000)),
                After(ms(1000))
            ]
        );
        assert_eq!(r.total(), 6);
    }

    #[test]
    fn running_min_uptime_resets_the_delay() {
        let t0 = Instant::now();
        let mut r = Restarts::default();
        r.on_exit(t0, ms(1), &POLICY);
        r.on_exit(t0 + ms(10), ms(1), &POLICY);
        assert_eq!(
            r.on_exit(t0 + ms(20), ms(5_000), &POLICY),
            Decision::RestartAfter(ms(100))
        );
        assert_eq!(
            r.on_exit(t0 + ms(30), ms(1), &POLICY),
            Decision::RestartAfter(ms(200))
        );
    }

    #[test]
    fn gives_up_past_max_restarts_in_the_window_and_forgets_old_ones() {
        let policy = RestartPolicy {
            max_restarts: 3,
            ..POLICY
        };
        let t0 = Instant::now();
        let mut r = Restarts::default();
        for i in 0..3 {
            assert!(matches!(
                r.on_exit(t0 + ms(i), ms(1), &policy),
                Decision::RestartAfter(_)
            ));
        }
        assert_eq!(r.on_exit(t0 + ms(10), ms(1), &policy), Decision::GiveUp);
        assert_eq!(r.total(), 3);
        // A minute after the first restarts they no longer count.
        let mut r2 = Restarts::default();
        for i in 0..3 {
            r2.on_exit(t0 + ms(i), ms(1), &policy);
        }
        assert!(matches!(
            r2.on_exit(t0 + Duration::from_secs(61), ms(1), &policy),
            Decision::RestartAfter(_)
        ));
    }

    #[test]
    fn zero_max_restarts_never_restarts() {
        let policy = RestartPolicy {
            max_restarts: 0,
            ..POLICY
        };
        let mut r = Restarts::default();
        assert_eq!(r.on_exit(Instant::now(), ms(1), &policy), Decision::GiveUp);
    }

    proptest::proptest! {
        /// Any exit history: never more than `max_restarts` restarts in any
        /// window, and every delay within [delay, delay_max].
        #[test]
        fn restarts_stay_within_the_window_budget(
            gaps in proptest::collection::vec(0u64..20_000, 1..80),
            uptimes in proptest::collection::vec(0u64..10_000, 80),
            max_restarts in 0u32..6,
        ) {
            let policy = RestartPolicy { max_restarts, ..POLICY };
            let t0 = Instant::now();
            let mut r = Restarts::default();
            let mut at = t0;
            let mut restarted: Vec<Instant> = Vec::new();
            for (gap, up) in gaps.iter().zip(&uptimes) {
                at += ms(*gap);
                if let Decision::RestartAfter(d) = r.on_exit(at, ms(*up), &policy) {
                    proptest::prop_assert!(d >= policy.delay && d <= policy.delay_max);
                    restarted.push(at);
                }
                let in_window = restarted
                    .iter()
                    .filter(|t| at.duration_since(**t) < policy.window)
                    .count();
                proptest::prop_assert!(in_window <= max_restarts as usize);
            }
        }
    }
}
