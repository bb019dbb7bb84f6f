//! Smooth weighted round robin, as nginx does it, without a lock.
//!
//! nginx keeps a "current weight" per backend and, for every pick, adds each
//! backend's weight to its current weight, picks the largest and subtracts the
//! total from it. The resulting order is periodic (period = total weight after
//! dividing by the weights' gcd) and interleaves heavy and light backends
//! (weights 5,1,1 give a a b a c a a, not a a a a a b c).
//!
//! Since the member list and weights are fixed for a snapshot, the whole
//! period is computed once when the snapshot is built; a pick is then one
//! atomic increment and an array read, with no lock on the request path.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{BackendSelection, Members, Pick, SelectionContext};

#[derive(Debug)]
pub struct SmoothWeightedRoundRobin {
    /// One period of nginx's pick order, as member indices.
    schedule: Box<[u32]>,
    next: AtomicUsize,
}

impl SmoothWeightedRoundRobin {
    /// `weights[i]` is member i's weight; a zero weight is treated as 1.
    pub fn new(weights: &[u32]) -> Self {
        Self {
            schedule: schedule(weights).into_boxed_slice(),
            next: AtomicUsize::new(0),
        }
    }

    /// One period of the pick order (for tests and docs).
    pub fn period(&self) -> &[u32] {
        &self.schedule
    }
}

impl BackendSelection for SmoothWeightedRoundRobin {
    fn select(&self, _ctx: &SelectionContext<'_>, members: &dyn Members) -> Option<Pick> {
        let picked = self.pick(|i| {
            // Slow start: a ramping member takes its turn with probability
            // ramp/1000, so its share follows its ramped weight.
            members.usable(i) && {
                let r = members.ramp(i);
                r >= super::FULL_RAMP || fastrand::u32(..super::FULL_RAMP) < r
            }
        });
        // If every usable member happened to skip, take the schedule as is.
        picked
            .or_else(|| self.pick(|i| members.usable(i)))
            .map(Pick::plain)
    }
}

impl SmoothWeightedRoundRobin {
    /// The next scheduled member that `usable` accepts.
    pub fn pick(&self, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        // An unusable member's slot is consumed like any other, so the
        // usable members keep exactly their relative weights (walking on to
        // the neighbour instead would hand it the missing member's share).
        (0..len)
            .map(|_| self.schedule[self.next.fetch_add(1, Ordering::Relaxed) % len] as usize)
            .find(|&i| usable(i))
    }
}

/// nginx's smooth weighted round robin, run for one full period.
pub fn schedule(weights: &[u32]) -> Vec<u32> {
    let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w.max(1))).collect();
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().copied().fold(0, gcd);
    let weights: Vec<i64> = weights.iter().map(|w| w / g).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn with_ctx<R>(f: impl FnOnce(&SelectionContext<'_>) -> R) -> R {
        let headers = http::HeaderMap::new();
        let uri = http::Uri::from_static("/");
        f(&SelectionContext {
            client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            headers: &headers,
            uri: &uri,
        })
    }

    fn picks(rr: &SmoothWeightedRoundRobin, n: usize) -> Vec<usize> {
        (0..n).map(|_| rr.pick(|_| true).unwrap()).collect()
    }

    #[test]
    fn matches_nginx_order() {
        // The example from nginx's ngx_http_upstream_round_robin.c.
        assert_eq!(schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(schedule(&[1, 1, 1]), vec![0, 1, 2]);
        assert_eq!(schedule(&[3, 1]), vec![0, 0, 1, 0]);
        assert_eq!(schedule(&[4, 4]), vec![0, 1], "gcd reduces the period");
        assert!(schedule(&[]).is_empty());
    }

    #[test]
    fn an_unusable_member_does_not_double_its_neighbour() {
        for (weights, down) in [
            (vec![1, 1, 1], 0usize),
            (vec![5, 1, 1], 0),
            (vec![2, 3, 4], 1),
        ] {
            let rr = SmoothWeightedRoundRobin::new(&weights);
            let total: u32 = weights.iter().sum();
            let mut counts = vec![0u32; weights.len()];
            for _ in 0..total * 100 {
                counts[rr.pick(|i| i != down).unwrap()] += 1;
            }
            let (a, b) = match down {
                0 => (1, 2),
                1 => (0, 2),
                _ => (0, 1),
            };
            // counts[a] / counts[b] == weights[a] / weights[b]
            let (ca, cb) = (u64::from(counts[a]), u64::from(counts[b]));
            let (wa, wb) = (u64::from(weights[a]), u64::from(weights[b]));
            assert!(
                (ca * wb).abs_diff(cb * wa) <= wa.max(wb) * 2,
                "{weights:?} down {down}: {counts:?}"
            );
        }
    }

    #[test]
    fn skips_unusable_members() {
        let rr = SmoothWeightedRoundRobin::new(&[1, 1, 1]);
        for _ in 0..10 {
            assert_ne!(rr.pick(|i| i != 1), Some(1));
        }
        assert_eq!(rr.pick(|_| false), None);
        with_ctx(|ctx| {
            let none = crate::select::StaticMembers::new(0);
            assert_eq!(SmoothWeightedRoundRobin::new(&[]).select(ctx, &none), None);
            let mut one_down = crate::select::StaticMembers::new(3);
            one_down.usable[0] = false;
            for _ in 0..6 {
                assert_ne!(rr.select(ctx, &one_down).map(|p| p.index), Some(0));
            }
        });
    }

    proptest! {
        /// Over whole periods every member gets exactly its share.
        #[test]
        fn distribution_follows_weights_exactly(weights in prop::collection::vec(1u32..=256, 1..12), periods in 1usize..4) {
            let rr = SmoothWeightedRoundRobin::new(&weights);
            let g = weights.iter().fold(0i64, |a, &b| gcd(a, i64::from(b))) as u32;
            let period: u32 = weights.iter().map(|w| w / g).sum();
            prop_assert_eq!(rr.period().len(), period as usize);
            let got = picks(&rr, period as usize * periods);
            for (i, &w) in weights.iter().enumerate() {
                prop_assert_eq!(got.iter().filter(|&&p| p == i).count(), (w / g) as usize * periods);
            }
        }

        /// Smoothness: no member waits more than twice its fair gap
        /// (period / share), so a heavy member never takes a long run while
        /// a light one starves. nginx's order is not perfectly even, hence 2x.
        #[test]
        fn every_member_appears_within_its_fair_gap(weights in prop::collection::vec(1u32..=64, 1..8)) {
            let order = schedule(&weights);
            let total = order.len();
            for i in 0..weights.len() {
                let share = order.iter().filter(|&&p| p as usize == i).count();
                let positions: Vec<usize> = order.iter().enumerate().filter(|(_, &p)| p as usize == i).map(|(k, _)| k).collect();
                // Gap between consecutive picks, wrapping around the period.
                for (k, &pos) in positions.iter().enumerate() {
                    let next = positions.get(k + 1).copied().unwrap_or(positions[0] + total);
                    prop_assert!(next - pos <= 2 * total.div_ceil(share), "member {} gap {} in {:?}", i, next - pos, order);
                }
            }
        }

        /// Whatever is usable, a pick is usable, and None only when nothing is.
        #[test]
        fn picks_only_usable_members(weights in prop::collection::vec(1u32..=16, 1..10), mask in any::<u16>(), start in 0usize..100) {
            let rr = SmoothWeightedRoundRobin::new(&weights);
            let usable = |i: usize| mask & (1 << i) != 0;
            let _ = picks(&rr, start);
            let any_usable = (0..weights.len()).any(usable);
            for _ in 0..20 {
                match rr.pick(usable) {
                    Some(i) => prop_assert!(usable(i)),
                    None => prop_assert!(!any_usable),
                }
            }
        }
    }
}
