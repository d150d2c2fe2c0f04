//! The coalesced fan-out of presence changes: an outbox per destination (this node, and each
//! watching node instance) keyed by user, so that changes of one user within a tick collapse
//! into the last one; one flush task per node that, every `--presence-tick-ms`, applies the
//! local part and sends each watching node one `Relay.Notify`; and the receiving side.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use signal_proto::presence::Shown;
use signal_proto::relay::{Location, NotifyRequest, PresenceUpdate};
use signal_proto::UserId;
use tokio_util::sync::CancellationToken;

use super::index::{Delivered, Update};
use super::store::{Owner, WatcherNode};
use super::{count, Presence};
use crate::node::Node;
use crate::peers::{ForwardError, Liveness};

/// Ticks a batch for a node that cannot be reached (and is not known dead) is retried.
const MAX_ATTEMPTS: u32 = 40;
/// How often a degraded store is probed.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// The user offline, at `version`, owner cleared.
pub fn offline_of(u: &Update, version: u64) -> Update {
    Update {
        user: u.user.clone(),
        state: Shown::Offline,
        note: String::new(),
        since: super::now_ms(),
        version,
        owner: Owner::default(),
    }
}

#[derive(Debug, Default)]
struct Batch {
    url: String,
    updates: HashMap<UserId, Update>,
    attempts: u32,
}

/// Changes waiting for the next tick.
#[derive(Debug, Default)]
pub struct Outbox {
    local: HashMap<UserId, Update>,
    /// (node id, instance) -> batch.
    remote: HashMap<(String, String), Batch>,
    /// Watching nodes with a `Notify` in flight: their batch waits for its answer (one call
    /// in flight per node keeps its updates in order and the calls bounded), while the
    /// other nodes and the local watchers go on every tick.
    busy: std::collections::HashSet<(String, String)>,
}

fn put(map: &mut HashMap<UserId, Update>, upd: Update) {
    match map.get(&upd.user) {
        Some(have) if have.version > upd.version => {}
        _ => {
            map.insert(upd.user.clone(), upd);
        }
    }
}

impl Outbox {
    /// For this node's watchers.
    pub fn local(&mut self, upd: Update) {
        put(&mut self.local, upd);
    }

    fn remote(&mut self, w: &WatcherNode, upd: Update) {
        let b = self
            .remote
            .entry((w.node.clone(), w.instance.clone()))
            .or_default();
        b.url.clone_from(&w.grpc_url);
        put(&mut b.updates, upd);
    }
}

impl Presence {
    pub(super) fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.inner
            .outbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `upd` for every watching node named in `watchers` (this one is served locally);
    /// entries of dead node instances, or of an earlier life of this node, are removed.
    pub(super) fn fan_out(&self, node: &Node, upd: Update, watchers: &[WatcherNode]) {
        let mut stale = Vec::new();
        {
            let mut out = self.outbox();
            // Our own watchers are served whether or not our entry made it into the store.
            out.local(upd.clone());
            for w in watchers {
                if w.node == node.id().as_str() {
                    if w.instance != node.instance() {
                        stale.push(w.clone());
                    }
                    continue;
                }
                let loc = Location {
                    node_id: w.node.clone(),
                    instance: w.instance.clone(),
                    conn: 0,
                    grpc_url: w.grpc_url.clone(),
                };
                if node.peers().liveness(&loc) == Liveness::Gone {
                    stale.push(w.clone());
                    continue;
                }
                out.remote(w, upd.clone());
            }
        }
        for w in stale {
            self.drop_watcher(node, w, vec![upd.user.clone()]);
        }
    }

    fn drop_watcher(&self, node: &Node, w: WatcherNode, users: Vec<UserId>) {
        let store = self.inner.store.clone();
        node.tasks().spawn(async move {
            if let Err(e) = store.unwatch(&w, &users).await {
                tracing::debug!(node = %w.node, error = %e, "cannot remove stale watcher entries");
            }
        });
    }

    /// The `Relay.Notify` handler: applies the updates to local watchers; returns the users
    /// nobody here watches (the sender drops this node from their watcher sets).
    pub fn notified(&self, updates: Vec<PresenceUpdate>) -> Vec<String> {
        let mut unwatched = Vec::new();
        let mut out = Delivered::default();
        let mut ix = self.index();
        for u in updates {
            let Some(upd) = Update::from_wire(u) else {
                continue;
            };
            if !ix.apply(&upd, &mut out) {
                unwatched.push(upd.user.to_string());
            }
        }
        drop(ix);
        count(out);
        unwatched
    }

    /// Flushes the outbox every tick until `stop`, then once more (waiting for the calls in
    /// flight, bounded); probes a degraded store and resynchronises when it answers again.
    pub async fn run(self, node: Node, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.inner.limits.tick.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_probe = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.flush(&node, false).await;
            if self.inner.degraded.load(Ordering::Acquire) && last_probe.elapsed() >= PROBE_EVERY {
                last_probe = Instant::now();
                if self.inner.store.ping().await.is_ok() {
                    let this = self.clone();
                    let n = node.clone();
                    tokio::spawn(async move { this.resync(&n).await });
                }
            }
        }
        // The last tick: the calls still in flight answer first (a bounded wait: each has the
        // request timeout), so that their nodes' remaining updates go out too.
        let until = Instant::now() + crate::peers::REQUEST_TIMEOUT;
        while !self.outbox().busy.is_empty() && Instant::now() < until {
            tick.tick().await;
        }
        self.flush(&node, true).await;
    }

    /// One tick: local watchers at once, one `Notify` per watching node that has none in
    /// flight (concurrently, each in its own task unless `wait`: a watching node slow to
    /// answer, e.g. busy adopting a drained node's sessions, delays only its own updates,
    /// not this node's local watchers nor the other nodes; before, the next tick waited for
    /// every call of this one).
    pub async fn flush(&self, node: &Node, wait: bool) {
        let (local, remote) = {
            let mut guard = self.outbox();
            let out = &mut *guard;
            let local = std::mem::take(&mut out.local);
            let ready: Vec<(String, String)> = out
                .remote
                .keys()
                .filter(|k| !out.busy.contains(*k))
                .cloned()
                .collect();
            let mut remote = Vec::with_capacity(ready.len());
            for k in ready {
                if let Some(b) = out.remote.remove(&k) {
                    out.busy.insert(k.clone());
                    remote.push((k, b));
                }
            }
            (local, remote)
        };
        if !local.is_empty() {
            let mut d = Delivered::default();
            let mut ix = self.index();
            for upd in local.values() {
                ix.apply(upd, &mut d);
            }
            drop(ix);
            count(d);
        }
        if remote.is_empty() {
            return;
        }
        let sends = remote.into_iter().map(|((id, instance), batch)| {
            let node = node.clone();
            let this = self.clone();
            async move {
                let req = NotifyRequest {
                    updates: batch.updates.values().map(Update::to_wire).collect(),
                };
                let n = req.updates.len() as u64;
                let res = node.peers().notify(&batch.url, req).await;
                this.notify_answered(&node, id, instance, batch, n, res);
            }
        });
        if wait {
            futures::future::join_all(sends).await;
        } else {
            for send in sends {
                tokio::spawn(send);
            }
        }
    }

    /// The answer to one `Notify`: entries the node no longer wants are dropped; a failure is
    /// retried next tick (merged with what came meanwhile), or dropped with the node's
    /// watcher entries if the node is gone or never answers.
    fn notify_answered(
        &self,
        node: &Node,
        id: String,
        instance: String,
        mut batch: Batch,
        n: u64,
        res: Result<signal_proto::relay::NotifyResponse, ForwardError>,
    ) {
        self.outbox().busy.remove(&(id.clone(), instance.clone()));
        let w = WatcherNode {
            node: id.clone(),
            instance: instance.clone(),
            grpc_url: batch.url.clone(),
        };
        match res {
            Ok(resp) => {
                metrics::counter!("signal_presence_notify_total", "outcome" => "ok").increment(1);
                metrics::counter!("signal_presence_updates_sent_total").increment(n);
                let users: Vec<UserId> = resp
                    .unwatched
                    .into_iter()
                    .filter_map(|u| UserId::new(u).ok())
                    .collect();
                if !users.is_empty() {
                    self.drop_watcher(node, w, users);
                }
            }
            Err(e) => {
                let loc = Location {
                    node_id: id.clone(),
                    instance: instance.clone(),
                    conn: 0,
                    grpc_url: batch.url.clone(),
                };
                let gone = node.peers().liveness(&loc) == Liveness::Gone;
                batch.attempts += 1;
                if gone || batch.attempts >= MAX_ATTEMPTS || matches!(e, ForwardError::BadUrl(_)) {
                    metrics::counter!("signal_presence_notify_total", "outcome" => "dropped")
                        .increment(1);
                    tracing::info!(node = %id, error = %e, updates = n, gone, "presence: watching node unreachable, its entries dropped");
                    let users: Vec<UserId> = batch.updates.into_keys().collect();
                    self.drop_watcher(node, w, users);
                } else {
                    metrics::counter!("signal_presence_notify_total", "outcome" => "retry")
                        .increment(1);
                    tracing::debug!(node = %id, error = %e, "presence notify failed: retrying next tick");
                    let mut out = self.outbox();
                    let slot = out.remote.entry((id, instance)).or_default();
                    slot.url = batch.url;
                    slot.attempts = slot.attempts.max(batch.attempts);
                    for (_, upd) in batch.updates {
                        put(&mut slot.updates, upd);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn upd(user: &str, state: Shown, version: u64) -> Update {
        Update {
            user: UserId::new(user).unwrap(),
            state,
            note: String::new(),
            since: version,
            version,
            owner: Owner::default(),
        }
    }

    /// Changes of one user within a tick collapse into the newest; others are kept.
    #[test]
    fn outbox_coalesces_per_user_newest_wins() {
        let mut o = Outbox::default();
        o.local(upd("bob", Shown::Away, 2));
        o.local(upd("bob", Shown::Busy, 3));
        o.local(upd("bob", Shown::Online, 1));
        o.local(upd("carol", Shown::Away, 1));
        assert_eq!(o.local.len(), 2);
        assert_eq!(o.local[&UserId::new("bob").unwrap()].state, Shown::Busy);
        let w = WatcherNode {
            node: "b".into(),
            instance: "i".into(),
            grpc_url: "http://b".into(),
        };
        for v in 0..100 {
            o.remote(&w, upd("bob", Shown::Away, v));
        }
        assert_eq!(o.remote.len(), 1);
        let b = &o.remote[&("b".to_owned(), "i".to_owned())];
        assert_eq!(b.updates.len(), 1);
        assert_eq!(b.updates[&UserId::new("bob").unwrap()].version, 99);
    }
}
