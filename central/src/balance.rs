//! Weighted least connections: which node gets the next login.
//!
//! A node's score is `(connections + assigned) / weight`, where `connections` is what the node
//! reported in its last heartbeat and `assigned` counts the logins handed to it since then. The
//! next login goes to the live, non-draining node with the lowest score; equal scores are broken
//! at random. Scores live in an ordered index keyed by `(score, random tag, key)`, so a pick is
//! O(log n): take the first entry, bump its `assigned`, re-insert it with a fresh random tag.
//! Because the tag is redrawn on every update, the first of several equal scores is a uniformly
//! random one of them, and a burst of logins between two heartbeats spreads by weight instead
//! of herding onto the node that looked emptiest at the last heartbeat.
//!
//! This module is pure (no I/O, no clock); the Redis backend runs the same rule in a Lua script.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

use rand::Rng;

/// What a node last reported, as the balancer needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Connections the node reported at its last heartbeat.
    pub connections: u64,
    /// Capacity weight (at least 1; 0 is treated as 1).
    pub weight: u32,
    /// A draining node keeps its entry but is never picked.
    pub draining: bool,
}

/// The score of a node: `(connections + assigned) / weight`.
pub fn score(connections: u64, assigned: u64, weight: u32) -> f64 {
    // Dividing two exactly-representable integers is correctly rounded, so equal ratios give
    // bit-identical scores (1/1 == 2/2) and ties stay ties.
    connections.saturating_add(assigned) as f64 / f64::from(weight.max(1))
}

/// A totally ordered f64 for the index.
#[derive(Debug, Clone, Copy)]
struct Score(f64);

impl PartialEq for Score {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0) == Ordering::Equal
    }
}
impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    load: Load,
    assigned: u64,
    /// The key of this entry in the index, when it is pickable.
    indexed: Option<(Score, u64)>,
}

/// The weighted-least-connections index over a set of nodes identified by `K`.
#[derive(Debug, Clone)]
pub struct Balancer<K: Ord + Hash + Clone> {
    entries: HashMap<K, Entry>,
    index: BTreeSet<(Score, u64, K)>,
}

impl<K: Ord + Hash + Clone> Default for Balancer<K> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            index: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Hash + Clone> Balancer<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a node's reported load (registration or heartbeat): `assigned` goes back to 0,
    /// because the reported connections now include the logins handed out before.
    pub fn set(&mut self, key: K, load: Load, rng: &mut impl Rng) {
        self.unindex(&key);
        self.entries.insert(
            key.clone(),
            Entry {
                load,
                assigned: 0,
                indexed: None,
            },
        );
        self.reindex(&key, rng);
    }

    /// Forgets a node.
    pub fn remove(&mut self, key: &K) {
        self.unindex(key);
        self.entries.remove(key);
    }

    /// Picks the node with the lowest score (random among equals) and counts one assignment
    /// to it. `None` when no node is pickable.
    pub fn pick(&mut self, rng: &mut impl Rng) -> Option<K> {
        let (_, _, key) = self.index.pop_first()?;
        if let Some(e) = self.entries.get_mut(&key) {
            e.indexed = None;
            e.assigned = e.assigned.saturating_add(1);
        }
        self.reindex(&key, rng);
        Some(key)
    }

    /// Logins handed to `key` since its last reported load.
    pub fn assigned(&self, key: &K) -> Option<u64> {
        self.entries.get(key).map(|e| e.assigned)
    }

    /// Number of pickable nodes.
    pub fn pickable(&self) -> usize {
        self.index.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn unindex(&mut self, key: &K) {
        if let Some(e) = self.entries.get_mut(key) {
            if let Some((s, tag)) = e.indexed.take() {
                self.index.remove(&(s, tag, key.clone()));
            }
        }
    }

    fn reindex(&mut self, key: &K, rng: &mut impl Rng) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        if e.load.draining {
            return;
        }
        let s = Score(score(e.load.connections, e.assigned, e.load.weight));
        let tag: u64 = rng.random();
        e.indexed = Some((s, tag));
        self.index.insert((s, tag, key.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn load(connections: u64, weight: u32) -> Load {
        Load {
            connections,
            weight,
            draining: false,
        }
    }

    fn counts(
        b: &mut Balancer<&'static str>,
        n: usize,
        rng: &mut StdRng,
    ) -> HashMap<&'static str, usize> {
        let mut c = HashMap::new();
        for _ in 0..n {
            *c.entry(b.pick(rng).unwrap()).or_default() += 1;
        }
        c
    }

    #[test]
    fn weights_one_one_two_split_25_25_50() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Balancer::new();
        b.set("a", load(0, 1), &mut rng);
        b.set("b", load(0, 1), &mut rng);
        b.set("c", load(0, 2), &mut rng);
        let c = counts(&mut b, 4000, &mut rng);
        for (k, want) in [("a", 0.25), ("b", 0.25), ("c", 0.50)] {
            let got = c[k] as f64 / 4000.0;
            assert!((got - want).abs() <= 0.03, "{k}: {got} vs {want} ({c:?})");
        }
    }

    #[test]
    fn weights_hold_across_heartbeats() {
        // Heartbeats in between report the assigned logins as connections.
        let mut rng = StdRng::seed_from_u64(1);
        let mut b = Balancer::new();
        let weights = [("a", 1), ("b", 1), ("c", 2)];
        let mut total: HashMap<&str, u64> = HashMap::new();
        for (k, w) in weights {
            b.set(k, load(0, w), &mut rng);
        }
        for _round in 0..40 {
            for _ in 0..100 {
                *total.entry(b.pick(&mut rng).unwrap()).or_default() += 1;
            }
            for (k, w) in weights {
                b.set(k, load(total.get(k).copied().unwrap_or(0), w), &mut rng);
            }
        }
        let a = total["a"] as f64 / 4000.0;
        let c = total["c"] as f64 / 4000.0;
        assert!((a - 0.25).abs() <= 0.03, "{total:?}");
        assert!((c - 0.50).abs() <= 0.03, "{total:?}");
    }

    #[test]
    fn busy_node_waits_until_the_others_catch_up() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut b = Balancer::new();
        b.set("busy", load(100, 1), &mut rng);
        b.set("x", load(0, 1), &mut rng);
        b.set("y", load(10, 1), &mut rng);
        // x needs 100 and y 90 logins to reach 100: 190 picks never touch "busy".
        let c = counts(&mut b, 190, &mut rng);
        assert_eq!(c.get("busy"), None, "{c:?}");
        assert_eq!(c["x"], 100);
        assert_eq!(c["y"], 90);
        // Now all three are level and share evenly.
        let c = counts(&mut b, 300, &mut rng);
        for k in ["busy", "x", "y"] {
            assert_eq!(c[k], 100, "{c:?}");
        }
    }

    #[test]
    fn ties_are_broken_randomly() {
        // With every node level, the first pick must not always be the same node.
        let mut firsts = HashMap::new();
        for seed in 0..200 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut b = Balancer::new();
            for k in ["a", "b", "c", "d"] {
                b.set(k, load(5, 1), &mut rng);
            }
            *firsts.entry(b.pick(&mut rng).unwrap()).or_insert(0) += 1;
        }
        assert_eq!(firsts.len(), 4, "{firsts:?}");
        for (k, n) in &firsts {
            assert!(*n > 20, "{k} first only {n} times of 200: {firsts:?}");
        }
    }

    #[test]
    fn burst_between_heartbeats_does_not_herd() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut b = Balancer::new();
        for k in ["a", "b", "c", "d"] {
            b.set(k, load(0, 1), &mut rng);
        }
        let c = counts(&mut b, 100, &mut rng);
        for k in ["a", "b", "c", "d"] {
            assert_eq!(c[k], 25, "{c:?}");
        }
        assert_eq!(b.assigned(&"a"), Some(25));
        // A heartbeat resets the assignments.
        b.set("a", load(25, 1), &mut rng);
        assert_eq!(b.assigned(&"a"), Some(0));
    }

    #[test]
    fn draining_nodes_are_never_picked() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut b = Balancer::new();
        b.set(
            "drain",
            Load {
                connections: 0,
                weight: 100,
                draining: true,
            },
            &mut rng,
        );
        b.set("live", load(1000, 1), &mut rng);
        let c = counts(&mut b, 500, &mut rng);
        assert_eq!(c.get("drain"), None);
        assert_eq!(c["live"], 500);
        assert_eq!(b.pickable(), 1);
        assert_eq!(b.len(), 2);
        // Back from draining: it is picked again.
        b.set("drain", load(0, 100), &mut rng);
        assert_eq!(b.pick(&mut rng), Some("drain"));
    }

    #[test]
    fn no_live_node_gives_none() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut b: Balancer<&str> = Balancer::new();
        assert_eq!(b.pick(&mut rng), None);
        b.set(
            "d",
            Load {
                connections: 0,
                weight: 1,
                draining: true,
            },
            &mut rng,
        );
        assert_eq!(b.pick(&mut rng), None);
        b.set("x", load(0, 1), &mut rng);
        b.remove(&"x");
        assert_eq!(b.pick(&mut rng), None);
        assert!(!b.is_empty());
        b.remove(&"d");
        assert!(b.is_empty());
    }

    #[test]
    fn zero_weight_counts_as_one_and_scores_are_exact() {
        assert_eq!(score(3, 1, 0), 4.0);
        assert_eq!(score(1, 0, 1), score(2, 0, 2));
        assert_eq!(score(1, 0, 3), score(2, 0, 6));
        assert!(score(1, 0, 3) < score(1, 0, 2));
    }

    #[test]
    fn many_nodes_pick_is_cheap_and_fair() {
        let mut rng = StdRng::seed_from_u64(6);
        let mut b = Balancer::new();
        for i in 0..1000u32 {
            b.set(i, load(0, 1 + i % 4), &mut rng);
        }
        let mut c: HashMap<u32, u64> = HashMap::new();
        for _ in 0..100_000 {
            *c.entry(b.pick(&mut rng).unwrap()).or_default() += 1;
        }
        // Total weight is 2500: a weight-w node gets 40*w logins, within one.
        for i in 0..1000u32 {
            let want = 40 * u64::from(1 + i % 4);
            let got = c[&i];
            assert!(got.abs_diff(want) <= 1, "node {i}: {got} vs {want}");
        }
    }
}
