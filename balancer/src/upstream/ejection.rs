//! Passive ejection: whether real traffic has taken a backend out of
//! rotation, as one state machine per backend.
//!
//! The machine is pure: [`State::step`] maps a state, an [`Event`], the time
//! and the pool's [`Rules`] to the next state and the [`Change`] to report.
//! [`Ejection`] keeps the state in one `AtomicU64` and moves it with a
//! compare-and-swap loop around `step`, so picks read it with one load and
//! every writer (request paths on every worker, the health checker) goes
//! through the same function. Nothing else decides whether a backend is
//! ejected.
//!
//! ```text
//!                 Failure × consecutive_failures, and the pool's cap allows
//!        ┌──────────────────────────────────────────────────────────────┐
//!        │                        Refused (any cap)                     ▼
//!       In ───────────────────────────────────────────────────────▶ Out(Failures | Refused)
//!        ▲                                                              │
//!        └── checked: a check that started after the ejection passes ───┤
//!        └── not checked: the ejection time is over ────────────────────┘
//! ```
//!
//! * A refused connection means nothing listens there: the backend is out at
//!   once for every pick, whatever `max_percent` says, and does not hold one
//!   of the slots the cap counts.
//! * With active checks the ejection ends with the first check that passes
//!   (and that started after the ejection, in a later millisecond, so a
//!   probe in flight when the backend died cannot end it), never with time
//!   alone. Without checks it
//!   ends after `base`, doubling for each repeat within `max` of the last
//!   return, up to `max`.
//! * Failures and successes of requests already in flight when the backend
//!   went out change nothing.
//! * `consecutive_failures = 0` turns passive ejection off: nothing ejects
//!   and nothing is out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::{millis, Now};

/// Why a backend is out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Out {
    /// `consecutive_failures` failures of real traffic in a row.
    Failures,
    /// A connection to it was refused.
    Refused,
}

impl Out {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failures => "failures",
            Self::Refused => "refused",
        }
    }
}

/// What one backend's traffic or checks report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A response head came back and was not counted as a failure.
    Success,
    /// Real traffic failed in a way that may have reached the backend: the
    /// connection broke before the response, the response head was bad, a
    /// 5xx with `on_5xx`.
    Failure,
    /// A new connection was refused: nothing listens at the address.
    Refused,
    /// An active check that started at `started` passed.
    CheckPassed { started: u64 },
}

/// The pool's ejection settings: what the machine reads, and the cap
/// (`max_percent`) the pool applies around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Failures in a row that eject; 0 turns passive ejection off.
    pub consecutive_failures: u32,
    /// First ejection time in ms (without active checks).
    pub base_ms: u64,
    /// Longest ejection time in ms, and how long a backend must stay in for
    /// the next ejection to start again at `base`.
    pub max_ms: u64,
    /// Share of the pool (percent) that failures may eject at once.
    pub max_percent: u32,
    /// An active checker runs for the pool: ejections end with a passing
    /// check instead of time.
    pub checked: bool,
}

impl Rules {
    pub fn new(cfg: &config::EjectionConfig, checked: bool) -> Self {
        Self {
            consecutive_failures: cfg.consecutive_failures,
            base_ms: millis(cfg.base).max(1),
            max_ms: millis(cfg.max).max(1),
            max_percent: cfg.max_percent,
            checked,
        }
    }

    fn off(&self) -> bool {
        self.consecutive_failures == 0
    }

    /// How long the `series`-th ejection in a row lasts without checks.
    fn ejection_ms(&self, series: u8) -> u64 {
        let doubled = self
            .base_ms
            .saturating_mul(1u64 << u32::from(series.saturating_sub(1)).min(16));
        doubled.min(self.max_ms.max(self.base_ms))
    }
}

/// What a step changed, for the log and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// The backend went out; `for_` is `None` when it stays out until a
    /// check passes.
    Ejected {
        cause: Out,
        for_: Option<Duration>,
    },
    /// It came back (a passing check).
    Returned,
}

/// One backend's ejection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct State {
    /// Failures in a row while in (saturating).
    pub failures: u16,
    /// Ejections in the current series (the time doubles with each), at most 31.
    pub series: u8,
    /// Out, and why; `None`: in.
    pub out: Option<Out>,
    /// Out: when it went out. In: when it last came back (0: never out).
    pub since: u64,
}

/// `since` is kept in 40 bits of milliseconds (34 years of uptime).
const SINCE_BITS: u32 = 40;
const SINCE_MASK: u64 = (1 << SINCE_BITS) - 1;
const MAX_SERIES: u8 = 31;

/// A time as `since` keeps it (40 bits; later times stay at the last one).
fn stamp(ms: u64) -> u64 {
    ms.min(SINCE_MASK)
}

impl State {
    /// The state at `now`: an ejection whose time is over (no checks) has
    /// ended, and nothing is out while ejection is off.
    pub fn settled(self, now: u64, rules: &Rules) -> Self {
        match self.out {
            Some(_) if rules.off() => Self {
                out: None,
                failures: 0,
                ..self
            },
            Some(_) if !rules.checked => {
                let end = self
                    .since
                    .saturating_add(rules.ejection_ms(self.series.max(1)));
                if now >= end {
                    Self {
                        out: None,
                        failures: 0,
                        since: stamp(end),
                        ..self
                    }
                } else {
                    self
                }
            }
            _ => self,
        }
    }

    /// Why the backend is out at `now`, if it is.
    pub fn out_at(self, now: u64, rules: &Rules) -> Option<Out> {
        self.settled(now, rules).out
    }

    /// When the backend last came back from an ejection (0: never), for
    /// slow start.
    pub fn returned_at(self, now: u64, rules: &Rules) -> u64 {
        let s = self.settled(now, rules);
        if s.out.is_some() {
            0
        } else {
            s.since
        }
    }

    /// The next state after `event` at `now`. `may_eject` is the pool's say
    /// on an ejection for failures (its `max_percent` cap); it is asked only
    /// when this event would eject.
    pub fn step(
        self,
        event: Event,
        now: u64,
        rules: &Rules,
        may_eject: impl FnOnce() -> bool,
    ) -> (Self, Change) {
        let s = self.settled(now, rules);
        if rules.off() {
            // Nothing counts while off; a streak left from before a reload
            // turned it off is dropped (and successes stay one load).
            return (Self { failures: 0, ..s }, Change::None);
        }
        match (s.out, event) {
            (None, Event::Success) => (Self { failures: 0, ..s }, Change::None),
            (None, Event::Failure) => {
                let failures = s.failures.saturating_add(1);
                if u32::from(failures) >= rules.consecutive_failures && may_eject() {
                    s.eject(Out::Failures, now, rules)
                } else {
                    (Self { failures, ..s }, Change::None)
                }
            }
            (None, Event::Refused) => s.eject(Out::Refused, now, rules),
            // Out for failures, then found with nothing listening: the cap
            // no longer counts it.
            (Some(Out::Failures), Event::Refused) => (
                Self {
                    out: Some(Out::Refused),
                    ..s
                },
                Change::None,
            ),
            // Strictly after: a probe from the same millisecond may have
            // started before the backend went out.
            (Some(_), Event::CheckPassed { started }) if rules.checked && started > s.since => (
                Self {
                    out: None,
                    failures: 0,
                    since: stamp(now),
                    ..s
                },
                Change::Returned,
            ),
            // In flight when it went out, a check from before, or a pass
            // while in: nothing to do.
            _ => (s, Change::None),
        }
    }

    fn eject(self, cause: Out, now: u64, rules: &Rules) -> (Self, Change) {
        // A backend that stayed in for `max` since it last came back starts
        // a new series at `base`.
        let series = if self.since != 0 && now.saturating_sub(self.since) < rules.max_ms {
            self.series.saturating_add(1).min(MAX_SERIES)
        } else {
            1
        };
        let next = Self {
            failures: 0,
            series,
            out: Some(cause),
            since: stamp(now),
        };
        let for_ = (!rules.checked).then(|| Duration::from_millis(rules.ejection_ms(series)));
        (next, Change::Ejected { cause, for_ })
    }

    fn pack(self) -> u64 {
        let out = match self.out {
            None => 0u64,
            Some(Out::Failures) => 1,
            Some(Out::Refused) => 2,
        };
        (self.since & SINCE_MASK)
            | (u64::from(self.failures) << 40)
            | (u64::from(self.series.min(MAX_SERIES)) << 56)
            | (out << 61)
    }

    fn unpack(word: u64) -> Self {
        Self {
            since: word & SINCE_MASK,
            failures: ((word >> 40) & 0xffff) as u16,
            series: ((word >> 56) & 0x1f) as u8,
            out: match (word >> 61) & 0b11 {
                1 => Some(Out::Failures),
                2 => Some(Out::Refused),
                _ => None,
            },
        }
    }
}

/// A backend's [`State`], shared by every thread that serves it, and how
/// many times it was ejected (for logs and metrics).
#[derive(Debug, Default)]
pub struct Ejection {
    state: AtomicU64,
    total: AtomicU64,
}

/// What one [`Ejection::apply`] did: the states before and after, so a
/// caller can take an ejection back ([`Ejection::undo`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub before: State,
    pub after: State,
    pub change: Change,
}

impl Ejection {
    pub fn load(&self) -> State {
        State::unpack(self.state.load(Ordering::Acquire))
    }

    /// Why the backend is out at `now`, if it is (the clock is read only
    /// for a backend that went out).
    pub fn out(&self, now: &Now, rules: &Rules) -> Option<Out> {
        let state = self.load();
        state.out?;
        state.out_at(now.get(), rules)
    }

    /// Ejections so far (taken-back ones not counted).
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Steps the shared state; an event that changes nothing writes nothing
    /// (a success on a backend with no failures is one load, and reads no
    /// clock).
    pub fn apply(
        &self,
        event: Event,
        now: &Now,
        rules: &Rules,
        may_eject: impl Fn() -> bool,
    ) -> Applied {
        let mut word = self.state.load(Ordering::Acquire);
        loop {
            let before = State::unpack(word);
            if event == Event::Success && before.failures == 0 && before.out.is_none() {
                // What `step` would answer, without the clock.
                return Applied {
                    before,
                    after: before,
                    change: Change::None,
                };
            }
            let (after, change) = before.step(event, now.get(), rules, &may_eject);
            let next = after.pack();
            let applied = Applied {
                before,
                after,
                change,
            };
            if next == word {
                return applied;
            }
            match self
                .state
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if let Change::Ejected { .. } = change {
                        self.total.fetch_add(1, Ordering::Relaxed);
                    }
                    return applied;
                }
                Err(current) => word = current,
            }
        }
    }

    /// Takes back what `applied` did, if nothing changed the state since
    /// (backends crossed the threshold at the same moment and together broke
    /// the cap: each that sees it goes back in, which may leave the pool one
    /// ejection short of the cap until the next failure ejects again).
    pub fn undo(&self, applied: &Applied) -> bool {
        let undone = self
            .state
            .compare_exchange(
                applied.after.pack(),
                applied.before.pack(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if undone {
            if let Change::Ejected { .. } = applied.change {
                self.total.fetch_sub(1, Ordering::Relaxed);
            }
        }
        undone
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn rules(checked: bool) -> Rules {
        Rules {
            consecutive_failures: 3,
            base_ms: 5_000,
            max_ms: 60_000,
            max_percent: 50,
            checked,
        }
    }

    /// Runs `events` (each at its time) from a fresh state; returns every
    /// change and the final state.
    fn run(rules: &Rules, events: &[(u64, Event)]) -> (Vec<Change>, State) {
        let mut s = State::default();
        let mut changes = Vec::new();
        for &(now, e) in events {
            let (next, c) = s.step(e, now, rules, || true);
            s = next;
            if c != Change::None {
                changes.push(c);
            }
        }
        (changes, s)
    }

    use Event::{CheckPassed, Failure, Refused, Success};

    fn ejected(cause: Out, secs: Option<u64>) -> Change {
        Change::Ejected {
            cause,
            for_: secs.map(Duration::from_secs),
        }
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_streak() {
        let r = rules(false);
        let (c, s) = run(
            &r,
            &[
                (1, Failure),
                (2, Failure),
                (3, Success),
                (4, Failure),
                (5, Failure),
            ],
        );
        assert!(c.is_empty());
        assert_eq!((s.failures, s.out), (2, None));
        let (c, s) = run(&r, &[(1, Failure), (2, Failure), (3, Failure)]);
        assert_eq!(c, vec![ejected(Out::Failures, Some(5))]);
        assert_eq!(s.out_at(5_002, &r), Some(Out::Failures));
        assert_eq!(
            s.out_at(5_003, &r),
            None,
            "time alone ends it without checks"
        );
    }

    #[test]
    fn without_checks_repeats_double_up_to_max_and_a_long_stay_starts_over() {
        let r = rules(false);
        let mut s = State::default();
        let mut now = 1_000;
        for want in [5, 10, 20, 40, 60, 60] {
            let mut change = Change::None;
            for _ in 0..3 {
                (s, change) = s.step(Failure, now, &r, || true);
            }
            assert_eq!(change, ejected(Out::Failures, Some(want)));
            now += want * 1_000;
            assert_eq!(s.out_at(now - 1, &r), Some(Out::Failures));
            assert_eq!(s.out_at(now, &r), None);
        }
        // In for longer than `max`: the next series starts at `base`.
        now += 60_000;
        let mut change = Change::None;
        for _ in 0..3 {
            (s, change) = s.step(Failure, now, &r, || true);
        }
        assert_eq!(change, ejected(Out::Failures, Some(5)));
    }

    #[test]
    fn with_checks_only_a_check_started_after_the_ejection_ends_it() {
        let r = rules(true);
        let (c, s) = run(&r, &[(1_000, Failure), (1_000, Failure), (1_000, Failure)]);
        assert_eq!(c, vec![ejected(Out::Failures, None)]);
        assert_eq!(
            s.out_at(10_000_000, &r),
            Some(Out::Failures),
            "time alone never ends it"
        );
        // A probe that started before the ejection and passed after it.
        let (s2, c) = s.step(CheckPassed { started: 999 }, 1_200, &r, || true);
        assert_eq!(
            (c, s2.out_at(1_200, &r)),
            (Change::None, Some(Out::Failures))
        );
        // Nor one from the same millisecond: it may have started first.
        let (s2, c) = s2.step(CheckPassed { started: 1_000 }, 1_250, &r, || true);
        assert_eq!(c, Change::None);
        // The first check that started after it ends it at once.
        let (s3, c) = s2.step(CheckPassed { started: 1_001 }, 1_300, &r, || true);
        assert_eq!(c, Change::Returned);
        assert_eq!(s3.out_at(1_300, &r), None);
        assert_eq!(s3.returned_at(1_300, &r), 1_300);
    }

    #[test]
    fn a_refusal_ejects_at_once_whatever_the_cap_and_the_streak() {
        for checked in [false, true] {
            let r = rules(checked);
            let (s, c) = State::default().step(Refused, 7, &r, || false);
            let want = if checked { None } else { Some(5) };
            assert_eq!(c, ejected(Out::Refused, want));
            assert_eq!(s.out_at(8, &r), Some(Out::Refused));
        }
        // The cap is asked for failures, and a veto keeps the backend in.
        let r = rules(false);
        let mut s = State::default();
        for _ in 0..10 {
            (s, _) = s.step(Failure, 1, &r, || false);
        }
        assert_eq!(s.out_at(1, &r), None);
        // Out for failures, then refused: out for refusal (not in the cap).
        let (_, s) = run(
            &r,
            &[(1, Failure), (1, Failure), (1, Failure), (2, Refused)],
        );
        assert_eq!(s.out_at(2, &r), Some(Out::Refused));
    }

    #[test]
    fn in_flight_results_while_out_change_nothing() {
        let r = rules(true);
        let (_, s) = run(&r, &[(1, Refused)]);
        for e in [Success, Failure, Refused] {
            assert_eq!(s.step(e, 2, &r, || true), (s, Change::None));
        }
    }

    #[test]
    fn ejection_off_means_nothing_is_out() {
        let mut r = rules(true);
        let (_, s) = run(&r, &[(1, Refused)]);
        r.consecutive_failures = 0;
        assert_eq!(s.out_at(2, &r), None, "turned off by a reload");
        let (s, c) = State::default().step(Refused, 1, &r, || true);
        assert_eq!((s.out_at(1, &r), c), (None, Change::None));
    }

    #[test]
    fn the_shared_cell_applies_and_undoes() {
        let cell = Ejection::default();
        let r = rules(false);
        assert_eq!(
            cell.apply(Success, &Now::at(1), &r, || true).change,
            Change::None
        );
        let a = cell.apply(Refused, &Now::at(1), &r, || true);
        assert_eq!(a.change, ejected(Out::Refused, Some(5)));
        assert_eq!(cell.load().out, Some(Out::Refused));
        assert_eq!(cell.total(), 1);
        assert_eq!(cell.out(&Now::at(2), &r), Some(Out::Refused));
        assert!(cell.undo(&a));
        assert_eq!((cell.load(), cell.total()), (State::default(), 0));
        assert!(!cell.undo(&a), "only once");
        assert_eq!(cell.total(), 0);
    }

    fn any_event() -> impl Strategy<Value = Event> {
        prop_oneof![
            Just(Success),
            Just(Failure),
            Just(Refused),
            (0u64..200_000).prop_map(|started| CheckPassed { started }),
        ]
    }

    proptest! {
        #[test]
        fn packing_round_trips(failures in any::<u16>(), series in 0u8..=31, out in 0u8..3, since in 0u64..(1 << 40)) {
            let s = State {
                failures,
                series,
                out: match out { 1 => Some(Out::Failures), 2 => Some(Out::Refused), _ => None },
                since,
            };
            prop_assert_eq!(State::unpack(s.pack()), s);
        }

        /// Over any sequence of events at non-decreasing times, with the
        /// rules changing between events as reloads change them (checks on
        /// or off, ejection off): under the rules of the moment, an
        /// ejection ends only with a passing check that started after it
        /// when checks are on, and only when its time is over when they
        /// are off; a refusal is always out right after; nothing panics.
        #[test]
        fn any_sequence_obeys_the_rules(
            steps in prop::collection::vec(
                (0u64..5_000, any_event(), any::<bool>(), any::<bool>(), 0u8..8),
                1..60,
            ),
        ) {
            let mut s = State::default();
            let mut now = 1u64;
            for (dt, e, allow, checked, off) in steps {
                now += dt;
                let mut r = rules(checked);
                if off == 0 {
                    r.consecutive_failures = 0;
                }
                let before = s.settled(now, &r);
                let (next, change) = s.step(e, now, &r, || allow);
                if r.consecutive_failures == 0 {
                    prop_assert!(next.out.is_none() && change == Change::None);
                    s = next;
                    continue;
                }
                if let (Some(_), None) = (before.out, next.out) {
                    prop_assert!(checked, "only a check ends a settled ejection");
                    match e {
                        CheckPassed { started } => prop_assert!(started > before.since),
                        other => prop_assert!(false, "{:?} ended an ejection", other),
                    }
                    prop_assert_eq!(change, Change::Returned);
                }
                if e == Refused {
                    prop_assert!(next.out_at(now, &r).is_some());
                }
                if let Change::Ejected { cause: Out::Failures, .. } = change {
                    prop_assert!(allow, "the cap was not asked or not obeyed");
                }
                if !checked && next.out.is_some() {
                    let end = next.since + r.ejection_ms(next.series.max(1));
                    prop_assert!(next.out_at(end - 1, &r).is_some());
                    prop_assert!(next.out_at(end, &r).is_none());
                }
                s = next;
            }
        }
    }
}
