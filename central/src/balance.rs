//! Weighted least connections: which node gets the next login.
//!
//! A node's score is `(connections + pending) / weight`, where `connections` is what the node
//! reported in its last heartbeat and `pending` counts the logins handed to it that the node
//! has not reported yet: each pick adds one pending assignment (stamped with the time of the
//! pick); a heartbeat retires the `accepted` oldest of them (the node accepted that many
//! ticketed connections since its previous acknowledged heartbeat, so they are now part of
//! `connections`), and pending assignments as old as the ticket lifetime expire (their ticket
//! can no longer be used). A login whose client has not connected yet at heartbeat time thus
//! stays counted, and a burst of logins spreads by weight instead of herding onto the node that
//! looked emptiest.
//!
//! The next login goes to the live, non-draining node with the lowest score; equal scores are
//! broken at random. Scores live in an ordered index keyed by `(score, random tag, key)`, so a
//! pick is O(log n): take the first entry, add a pending assignment, re-insert it with a fresh
//! random tag. Because the tag is redrawn on every update, the first of several equal scores is
//! a uniformly random one of them.
//!
//! This module is pure (no I/O, no clock: callers pass the times, of any ordered type `T`); the
//! Redis backend runs the same rule in Lua scripts.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, VecDeque};
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

/// The score of a node: `(connections + pending) / weight`.
pub fn score(connections: u64, pending: u64, weight: u32) -> f64 {
    // Dividing two exactly-representable integers is correctly rounded, so equal ratios give
    // bit-identical scores (1/1 == 2/2) and ties stay ties.
    connections.saturating_add(pending) as f64 / f64::from(weight.max(1))
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
struct Entry<T> {
    load: Load,
    /// Times of the assignments not yet reported by the node, oldest first.
    pending: VecDeque<T>,
    /// The key of this entry in the index, when it is pickable.
    indexed: Option<(Score, u64)>,
}

/// The weighted-least-connections index over a set of nodes identified by `K`, with pending
/// assignments stamped with times of type `T` (non-decreasing from one pick to the next).
#[derive(Debug, Clone)]
pub struct Balancer<K: Ord + Hash + Clone, T> {
    entries: HashMap<K, Entry<T>>,
    index: BTreeSet<(Score, u64, K)>,
}

impl<K: Ord + Hash + Clone, T> Default for Balancer<K, T> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            index: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Hash + Clone, T: Ord + Copy> Balancer<K, T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A node (re-)registers: its reported load replaces everything known, and it has no
    /// pending assignments (the node counts accepted connections from here on).
    pub fn register(&mut self, key: K, load: Load, rng: &mut impl Rng) {
        self.unindex(&key);
        self.entries.insert(
            key.clone(),
            Entry {
                load,
                pending: VecDeque::new(),
                indexed: None,
            },
        );
        self.reindex(&key, rng);
    }

    /// Changes a node's load or pickability (draining, down) and keeps its pending
    /// assignments. Registers the node if it is unknown.
    pub fn update(&mut self, key: K, load: Load, rng: &mut impl Rng) {
        self.unindex(&key);
        self.upsert(&key, load);
        self.reindex(&key, rng);
    }

    /// A heartbeat: sets the reported load, drops the pending assignments made at or before
    /// `expire_upto` (their tickets can no longer be used), then retires the `accepted` oldest
    /// remaining ones (the node accepted that many connections since its previous heartbeat, so
    /// `load.connections` includes them). Registers the node if it is unknown.
    ///
    /// Expiry goes first: a pending assignment as old as the ticket lifetime almost always
    /// belongs to a client that never connected, while the connections just accepted belong to
    /// recent logins.
    pub fn heartbeat(
        &mut self,
        key: K,
        load: Load,
        accepted: u64,
        expire_upto: Option<T>,
        rng: &mut impl Rng,
    ) {
        self.unindex(&key);
        let e = self.upsert(&key, load);
        if let Some(cutoff) = expire_upto {
            while e.pending.front().is_some_and(|t| *t <= cutoff) {
                e.pending.pop_front();
            }
        }
        let retire = usize::try_from(accepted)
            .unwrap_or(usize::MAX)
            .min(e.pending.len());
        e.pending.drain(..retire);
        self.reindex(&key, rng);
    }

    /// Forgets a node.
    pub fn remove(&mut self, key: &K) {
        self.unindex(key);
        self.entries.remove(key);
    }

    /// Picks the node with the lowest score (random among equals) and adds a pending
    /// assignment stamped `now` to it. `None` when no node is pickable.
    pub fn pick(&mut self, now: T, rng: &mut impl Rng) -> Option<K> {
        let (_, _, key) = self.index.pop_first()?;
        if let Some(e) = self.entries.get_mut(&key) {
            e.indexed = None;
            e.pending.push_back(now);
        }
        self.reindex(&key, rng);
        Some(key)
    }

    /// Assignments handed to `key` that its heartbeats have not retired (nor expired) yet.
    pub fn pending(&self, key: &K) -> Option<u64> {
        self.entries.get(key).map(|e| e.pending.len() as u64)
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

    /// Sets the load of `key` (which must be unindexed), creating the entry if needed.
    fn upsert(&mut self, key: &K, load: Load) -> &mut Entry<T> {
        let e = self.entries.entry(key.clone()).or_insert_with(|| Entry {
            load,
            pending: VecDeque::new(),
            indexed: None,
        });
        e.load = load;
        e
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
        let s = Score(score(
            e.load.connections,
            e.pending.len() as u64,
            e.load.weight,
        ));
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
        b: &mut Balancer<&'static str, u64>,
        n: usize,
        rng: &mut StdRng,
    ) -> HashMap<&'static str, usize> {
        let mut c = HashMap::new();
        for _ in 0..n {
            *c.entry(b.pick(0, rng).unwrap()).or_default() += 1;
        }
        c
    }

    #[test]
    fn weights_one_one_two_split_25_25_50() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Balancer::new();
        b.register("a", load(0, 1), &mut rng);
        b.register("b", load(0, 1), &mut rng);
        b.register("c", load(0, 2), &mut rng);
        let c = counts(&mut b, 4000, &mut rng);
        for (k, want) in [("a", 0.25), ("b", 0.25), ("c", 0.50)] {
            let got = c[k] as f64 / 4000.0;
            assert!((got - want).abs() <= 0.03, "{k}: {got} vs {want} ({c:?})");
        }
    }

    #[test]
    fn weights_hold_across_heartbeats() {
        // Heartbeats in between report the assigned logins as connections (all connected).
        let mut rng = StdRng::seed_from_u64(1);
        let mut b = Balancer::new();
        let weights = [("a", 1), ("b", 1), ("c", 2)];
        let mut total: HashMap<&str, u64> = HashMap::new();
        for (k, w) in weights {
            b.register(k, load(0, w), &mut rng);
        }
        for round in 0..40u64 {
            let mut this_round: HashMap<&str, u64> = HashMap::new();
            for _ in 0..100 {
                let k = b.pick(round, &mut rng).unwrap();
                *total.entry(k).or_default() += 1;
                *this_round.entry(k).or_default() += 1;
            }
            for (k, w) in weights {
                let conns = total.get(k).copied().unwrap_or(0);
                let accepted = this_round.get(k).copied().unwrap_or(0);
                b.heartbeat(k, load(conns, w), accepted, None, &mut rng);
                assert_eq!(b.pending(&k), Some(0));
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
        b.register("busy", load(100, 1), &mut rng);
        b.register("x", load(0, 1), &mut rng);
        b.register("y", load(10, 1), &mut rng);
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
                b.register(k, load(5, 1), &mut rng);
            }
            *firsts.entry(b.pick(0, &mut rng).unwrap()).or_insert(0) += 1;
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
            b.register(k, load(0, 1), &mut rng);
        }
        let c = counts(&mut b, 100, &mut rng);
        for k in ["a", "b", "c", "d"] {
            assert_eq!(c[k], 25, "{c:?}");
        }
        assert_eq!(b.pending(&"a"), Some(25));
        // A heartbeat reporting the 25 as accepted retires them.
        b.heartbeat("a", load(25, 1), 25, None, &mut rng);
        assert_eq!(b.pending(&"a"), Some(0));
    }

    #[test]
    fn a_heartbeat_that_does_not_include_a_pending_login_keeps_it_counted() {
        // The herding bug: a login handed out just before a heartbeat whose client has not
        // connected yet must still count after that heartbeat.
        for seed in 0..50 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut b = Balancer::new();
            b.register("a", load(0, 1), &mut rng);
            b.register("b", load(0, 1), &mut rng);
            let first = b.pick(10, &mut rng).unwrap();
            // The chosen node heartbeats: nothing accepted yet, still 0 connections.
            b.heartbeat(first, load(0, 1), 0, Some(0), &mut rng);
            assert_eq!(b.pending(&first), Some(1));
            let second = b.pick(11, &mut rng).unwrap();
            assert_ne!(first, second, "seed {seed}: the second login herded");
        }
    }

    #[test]
    fn accepted_retires_the_oldest_pending_and_no_more() {
        let mut rng = StdRng::seed_from_u64(8);
        let mut b = Balancer::new();
        b.register("a", load(0, 1), &mut rng);
        for t in 0..5u64 {
            assert_eq!(b.pick(t, &mut rng), Some("a"));
        }
        assert_eq!(b.pending(&"a"), Some(5));
        // Two of the five connected: connections 2, pending 3 (the three newest).
        b.heartbeat("a", load(2, 1), 2, None, &mut rng);
        assert_eq!(b.pending(&"a"), Some(3));
        // Expiring everything up to time 2 drops exactly the oldest remaining one (t = 2).
        b.heartbeat("a", load(2, 1), 0, Some(2), &mut rng);
        assert_eq!(b.pending(&"a"), Some(2));
        // A node reporting more than is pending (reconnects, a repeated report) retires all
        // and nothing else.
        b.heartbeat("a", load(4, 1), u64::MAX, None, &mut rng);
        assert_eq!(b.pending(&"a"), Some(0));
        // Draining or down (an update) keeps the pending assignments.
        b.register("b", load(0, 1), &mut rng);
        b.pick(9, &mut rng);
        let p = b.pending(&"a").unwrap() + b.pending(&"b").unwrap();
        assert_eq!(p, 1);
        for k in ["a", "b"] {
            let l = Load {
                draining: true,
                ..load(4, 1)
            };
            b.update(k, l, &mut rng);
        }
        assert_eq!(b.pending(&"a").unwrap() + b.pending(&"b").unwrap(), 1);
        // Registering again starts from nothing pending.
        b.register("a", load(0, 1), &mut rng);
        b.register("b", load(0, 1), &mut rng);
        assert_eq!(b.pending(&"a").unwrap() + b.pending(&"b").unwrap(), 0);
    }

    #[test]
    fn pending_assignments_expire_after_the_ticket_lifetime() {
        // Times in seconds, ticket lifetime 60: a login at t=0 whose client never connects.
        let mut rng = StdRng::seed_from_u64(9);
        let mut b: Balancer<&str, i64> = Balancer::new();
        b.register("a", load(0, 1), &mut rng);
        b.register("b", load(0, 1), &mut rng);
        let first = b.pick(0, &mut rng).unwrap();
        let other = if first == "a" { "b" } else { "a" };
        // Heartbeats at t=30 and t=59: still counted, the other node gets the logins.
        b.heartbeat(first, load(0, 1), 0, Some(30 - 60), &mut rng);
        b.heartbeat(first, load(0, 1), 0, Some(59 - 60), &mut rng);
        assert_eq!(b.pending(&first), Some(1));
        assert_eq!(b.pick(59, &mut rng), Some(other));
        // At t=60 the ticket is dead: the heartbeat expires the first assignment, not the
        // other node's newer one.
        b.heartbeat(first, load(0, 1), 0, Some(0), &mut rng);
        assert_eq!(b.pending(&first), Some(0));
        assert_eq!(b.pending(&other), Some(1));
        assert_eq!(b.pick(60, &mut rng), Some(first));
    }

    #[test]
    fn expiry_goes_before_retiring() {
        // Pending at t=0 (never connected) and t=100 (connected): the heartbeat at t=100 with
        // lifetime 60 expires the first and retires the second.
        let mut rng = StdRng::seed_from_u64(10);
        let mut b: Balancer<&str, i64> = Balancer::new();
        b.register("a", load(0, 1), &mut rng);
        b.pick(0, &mut rng);
        b.pick(100, &mut rng);
        b.heartbeat("a", load(1, 1), 1, Some(100 - 60), &mut rng);
        assert_eq!(b.pending(&"a"), Some(0));
    }

    #[test]
    fn draining_nodes_are_never_picked() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut b = Balancer::new();
        b.register(
            "drain",
            Load {
                connections: 0,
                weight: 100,
                draining: true,
            },
            &mut rng,
        );
        b.register("live", load(1000, 1), &mut rng);
        let c = counts(&mut b, 500, &mut rng);
        assert_eq!(c.get("drain"), None);
        assert_eq!(c["live"], 500);
        assert_eq!(b.pickable(), 1);
        assert_eq!(b.len(), 2);
        // Back from draining: it is picked again.
        b.register("drain", load(0, 100), &mut rng);
        assert_eq!(b.pick(0, &mut rng), Some("drain"));
    }

    #[test]
    fn no_live_node_gives_none() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut b: Balancer<&str, u64> = Balancer::new();
        assert_eq!(b.pick(0, &mut rng), None);
        b.register(
            "d",
            Load {
                connections: 0,
                weight: 1,
                draining: true,
            },
            &mut rng,
        );
        assert_eq!(b.pick(0, &mut rng), None);
        b.register("x", load(0, 1), &mut rng);
        b.remove(&"x");
        assert_eq!(b.pick(0, &mut rng), None);
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
            b.register(i, load(0, 1 + i % 4), &mut rng);
        }
        let mut c: HashMap<u32, u64> = HashMap::new();
        for _ in 0..100_000 {
            *c.entry(b.pick(0, &mut rng).unwrap()).or_default() += 1;
        }
        // Total weight is 2500: a weight-w node gets 40*w logins, within one.
        for i in 0..1000u32 {
            let want = 40 * u64::from(1 + i % 4);
            let got = c[&i];
            assert!(got.abs_diff(want) <= 1, "node {i}: {got} vs {want}");
        }
    }
}
