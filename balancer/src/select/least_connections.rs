//! Least connections, weighted: the usable member with the fewest open
//! connections (in-flight requests plus WebSocket tunnels) per unit of
//! weight. Ties are broken round robin, starting from a rotating offset, so
//! a burst of new connections spreads over the tied members instead of
//! piling onto the first one; and each pick raises the chosen member's load
//! at once (the request's open guard), so the next pick sees it.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{BackendSelection, Members, Pick, SelectionContext};

#[derive(Debug)]
pub struct LeastConnections {
    weights: Box<[u64]>,
    next: AtomicUsize,
}

impl LeastConnections {
    pub fn new(weights: &[u32]) -> Self {
        Self {
            weights: weights.iter().map(|&w| u64::from(w.max(1))).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The least-loaded usable member.
    pub fn pick(&self, members: &dyn Members) -> Option<usize> {
        let n = self.weights.len().min(members.len());
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, u64, u64)> = None;
        // From the rotating start to the end, then from 0: no division per member.
        for i in (start..n).chain(0..start) {
            if !members.usable(i) {
                continue;
            }
            let load = members.load(i) as u64;
            let weight = self.weights[i] * u64::from(members.ramp(i));
            // load_i / w_i < load_b / w_b, without division.
            let better = match best {
                None => true,
                Some((_, load_b, weight_b)) => load * weight_b < load_b * weight,
            };
            if better {
                best = Some((i, load, weight));
            }
        }
        best.map(|(i, _, _)| i)
    }
}

impl BackendSelection for LeastConnections {
    fn select(&self, _ctx: &SelectionContext<'_>, members: &dyn Members) -> Option<Pick> {
        self.pick(members).map(Pick::plain)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::select::StaticMembers;

    #[test]
    fn picks_the_least_loaded_relative_to_weight() {
        let lc = LeastConnections::new(&[1, 1, 2]);
        let mut m = StaticMembers::new(3);
        m.load = vec![20, 3, 5];
        assert_eq!(lc.pick(&m), Some(2), "5/2 < 3/1");
        m.load = vec![20, 2, 5];
        assert_eq!(lc.pick(&m), Some(1));
        m.usable[1] = false;
        assert_eq!(lc.pick(&m), Some(2));
        m.usable = vec![false; 3];
        assert_eq!(lc.pick(&m), None);
    }

    #[test]
    fn a_burst_spreads_over_tied_members() {
        let lc = LeastConnections::new(&[1; 4]);
        let mut m = StaticMembers::new(4);
        // Each pick opens a connection, as the proxy does.
        for _ in 0..40 {
            let i = lc.pick(&m).unwrap();
            m.load[i] += 1;
        }
        assert_eq!(m.load, vec![10; 4]);
    }

    #[test]
    fn slow_start_member_gets_a_share_of_its_weight() {
        let lc = LeastConnections::new(&[1, 1]);
        let mut m = StaticMembers::new(2);
        m.ramp = vec![1000, 250];
        for _ in 0..500 {
            let i = lc.pick(&m).unwrap();
            m.load[i] += 1;
        }
        // Load follows effective weight 1 : 0.25.
        assert_eq!(m.load, vec![400, 100]);
    }

    proptest! {
        #[test]
        fn never_picks_a_more_loaded_member(loads in prop::collection::vec(0usize..100, 1..20), weights in prop::collection::vec(1u32..=8, 20), mask in any::<u32>()) {
            let n = loads.len();
            let lc = LeastConnections::new(&weights[..n]);
            let m = StaticMembers { usable: (0..n).map(|i| mask & (1 << i) != 0).collect(), load: loads.clone(), ramp: Vec::new() };
            match lc.pick(&m) {
                None => prop_assert!(m.usable.iter().all(|u| !u)),
                Some(p) => {
                    prop_assert!(m.usable[p]);
                    for i in (0..n).filter(|&i| m.usable[i]) {
                        prop_assert!(loads[p] as u64 * u64::from(weights[i]) <= loads[i] as u64 * u64::from(weights[p]));
                    }
                }
            }
        }
    }
}
