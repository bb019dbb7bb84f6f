//! Weighted rendezvous (highest random weight) hashing over backend ids.
//!
//! Every (key, backend) pair gets a pseudo-random score; the key goes to the
//! usable backend with the highest score. Adding or removing one backend
//! moves only the keys whose top score it holds (about 1/N of them), and
//! when a backend is unavailable each of its keys goes to its own second
//! choice, spread over the others, the same on every balancer.
//!
//! Weights use the logarithmic method (score = w / -ln(u), u uniform in
//! (0,1)), which gives each backend a share proportional to its weight.
//!
//! The hash is fixed (FNV-1a, then murmur3's 64-bit finalizer) and must
//! never change: balancers of different versions side by side must agree.
//! Backend ids are hashed once per snapshot; a pick hashes the key once and
//! mixes it with each precomputed id hash (a few ns per backend, no
//! allocation).

/// FNV-1a, 64 bit: the stable byte hash under everything here.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// murmur3's fmix64: a bijection with full avalanche.
pub fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// Hash of a key's bytes, ready for [`Rendezvous::pick`].
pub fn key_hash(key: &[u8]) -> u64 {
    mix(fnv1a(key))
}

#[derive(Debug, Clone)]
pub struct Rendezvous {
    /// `mix(fnv1a(id))` per member.
    ids: Box<[u64]>,
    weights: Box<[f64]>,
    /// With equal weights the raw hash orders the same as the weighted
    /// score, so the logarithm is skipped.
    equal_weights: bool,
}

impl Rendezvous {
    pub fn new(ids: &[&str], weights: &[u32]) -> Self {
        let equal_weights = weights.windows(2).all(|w| w[0] == w[1]);
        Self {
            ids: ids.iter().map(|id| mix(fnv1a(id.as_bytes()))).collect(),
            weights: weights.iter().map(|&w| f64::from(w.max(1))).collect(),
            equal_weights,
        }
    }

    fn score_bits(&self, key: u64, i: usize) -> u64 {
        mix(key ^ self.ids[i])
    }

    fn weighted(&self, bits: u64, i: usize) -> f64 {
        // u in (0, 1]: 53 random bits, never zero.
        let u = ((bits >> 11) + 1) as f64 / (1u64 << 53) as f64;
        // -ln(u) >= 0; at u == 1 it is 0 and the score is the strongest
        // possible claim (+inf; the division alone would give -inf for -0.0).
        let e = -u.ln();
        if e <= 0.0 {
            f64::INFINITY
        } else {
            self.weights[i] / e
        }
    }

    /// The member `key` belongs to among those `usable` accepts.
    pub fn pick(&self, key: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let mut best: Option<usize> = None;
        if self.equal_weights {
            let mut best_bits = 0u64;
            for i in 0..self.ids.len() {
                if !usable(i) {
                    continue;
                }
                let bits = self.score_bits(key, i);
                if best.is_none() || bits > best_bits {
                    best = Some(i);
                    best_bits = bits;
                }
            }
        } else {
            let mut best_score = f64::NEG_INFINITY;
            for i in 0..self.ids.len() {
                if !usable(i) {
                    continue;
                }
                let score = self.weighted(self.score_bits(key, i), i);
                if best.is_none() || score > best_score {
                    best = Some(i);
                    best_score = score;
                }
            }
        }
        best
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("game-{i}")).collect()
    }

    fn counts(r: &Rendezvous, keys: u64, usable: impl Fn(usize) -> bool + Copy) -> Vec<usize> {
        let mut c = vec![0; r.len()];
        for k in 0..keys {
            c[r.pick(key_hash(&k.to_le_bytes()), usable).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn known_values_never_change() {
        // Balancers of different versions must agree: pin the hash.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let ids = ["game-1", "game-2", "game-3"];
        let r = Rendezvous::new(&ids, &[1, 1, 1]);
        let picks: Vec<usize> = ["alice", "bob", "carol", "dave", "erin"]
            .iter()
            .map(|k| r.pick(key_hash(k.as_bytes()), |_| true).unwrap())
            .collect();
        assert_eq!(picks, PINNED_PICKS);
    }

    /// Recorded once; a change here means every deployed cookie and hash moves.
    const PINNED_PICKS: [usize; 5] = [2, 1, 0, 2, 0];

    #[test]
    fn balanced_over_100k_keys() {
        for n in [3usize, 10] {
            let names = ids(n);
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let r = Rendezvous::new(&refs, &vec![1; n]);
            let c = counts(&r, 100_000, |_| true);
            let expected = 100_000.0 / n as f64;
            for &got in &c {
                let off = (got as f64 - expected).abs() / expected;
                assert!(off < 0.04, "n={n}: {c:?}");
            }
        }
    }

    #[test]
    fn weights_give_proportional_shares() {
        let r = Rendezvous::new(&["a", "b", "c"], &[1, 2, 5]);
        let c = counts(&r, 100_000, |_| true);
        for (got, w) in c.iter().zip([1.0, 2.0, 5.0]) {
            let expected = 100_000.0 * w / 8.0;
            assert!((*got as f64 - expected).abs() / expected < 0.04, "{c:?}");
        }
    }

    #[test]
    fn removing_one_of_n_moves_only_its_keys() {
        let n = 8;
        let names = ids(n);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let all = Rendezvous::new(&refs, &vec![1; n]);
        let fewer = Rendezvous::new(&refs[..n - 1], &vec![1; n - 1]);
        let mut moved = 0;
        for k in 0..100_000u64 {
            let h = key_hash(&k.to_le_bytes());
            let before = all.pick(h, |_| true).unwrap();
            let after = fewer.pick(h, |_| true).unwrap();
            if before != n - 1 {
                assert_eq!(before, after, "a key of a remaining backend moved");
            } else {
                moved += 1;
            }
        }
        let share = moved as f64 / 100_000.0;
        assert!((share - 1.0 / n as f64).abs() < 0.01, "moved {share}");
    }

    proptest! {
        /// Same key, same backend; unusable backends hand their keys to the
        /// key's next choice, and keys of other backends never move.
        #[test]
        fn stable_and_minimal_disruption(n in 2usize..20, down in 0usize..20, key in any::<u64>(), weights in prop::collection::vec(1u32..=8, 20)) {
            let down = down % n;
            let names = ids(n);
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let r = Rendezvous::new(&refs, &weights[..n]);
            let first = r.pick(key, |_| true).unwrap();
            prop_assert_eq!(r.pick(key, |_| true), Some(first));
            let without = r.pick(key, |i| i != down).unwrap();
            prop_assert_ne!(without, down);
            if first != down {
                prop_assert_eq!(without, first);
            }
            prop_assert_eq!(r.pick(key, |_| false), None);
        }

        /// Adding a backend moves a key only to the new backend.
        #[test]
        fn adding_moves_keys_only_to_the_new_backend(n in 1usize..16, key in any::<u64>()) {
            let names = ids(n + 1);
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let before = Rendezvous::new(&refs[..n], &vec![1; n]).pick(key, |_| true).unwrap();
            let after = Rendezvous::new(&refs, &vec![1; n + 1]).pick(key, |_| true).unwrap();
            prop_assert!(after == before || after == n);
        }
    }
}
