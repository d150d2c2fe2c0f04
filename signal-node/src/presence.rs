//! Presence (contract section 7): owns each local session's own state and subscriptions, the
//! node's watch index (`index`), the store of every user's state and watcher set (`store`:
//! Redis keys `{pr:<user>}:s` and `{pr:<user>}:w`, or memory), and the coalesced fan-out to
//! watching nodes over `Relay.Notify` (`fanout`). Fed by the session lifecycle (start, takeover,
//! handover, end), by the client's `SetPresence` / `Subscribe` / `Unsubscribe`, by central's
//! live set (dead node instances) and by the store coming back (resync).

pub mod fanout;
pub mod index;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use signal_proto::presence::{Availability, SetPresence};
use signal_proto::relay::{Location, SessionPresence};
use signal_proto::UserId;

use crate::node::Node;
use crate::peers::Liveness;
use crate::session::Session;
use fanout::Outbox;
use index::{Delivered, Index, TooMany, Update};
use store::{Mode, Owner, PresenceStore, Record, WatcherNode};

/// Bounds and timing (`--max-subscriptions`, `--presence-tick-ms`,
/// `--presence-offline-ttl-secs`, `--presence-max-pending`, `--presence-store-concurrency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceLimits {
    /// Subscriptions per session; beyond it TOOMANY.
    pub max_subscriptions: usize,
    /// Changes of one user within a tick are coalesced (the last wins).
    pub tick: Duration,
    /// How long the record of an offline user is kept (its `since`).
    pub offline_ttl: Duration,
    /// Session ends remembered while the store is down (written when it is back).
    pub max_pending: usize,
    /// Snapshot reads (watch calls) and resync writes in flight at once
    /// (`--presence-store-concurrency`): a subscription burst queues here, not in the Redis
    /// connection that changes and session ends use too.
    pub store_concurrency: usize,
}

impl Default for PresenceLimits {
    fn default() -> Self {
        PresenceLimits {
            max_subscriptions: 1000,
            tick: Duration::from_millis(50),
            offline_ttl: Duration::from_secs(86_400),
            max_pending: 100_000,
            store_concurrency: 16,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The node's presence. A cheap `Clone` handle.
#[derive(Clone)]
pub struct Presence {
    inner: Arc<Inner>,
}

struct Inner {
    store: PresenceStore,
    limits: PresenceLimits,
    index: Mutex<Index>,
    outbox: Mutex<Outbox>,
    /// The store failed: changes are delivered locally only until a resync.
    degraded: AtomicBool,
    resyncing: AtomicBool,
    /// Sessions that ended while the store was down: user -> the owner to write offline for.
    ended: Mutex<HashMap<UserId, Owner>>,
    /// Bounds the snapshot and resync work on the store (`limits.store_concurrency`).
    store_slots: tokio::sync::Semaphore,
    /// Recent probes of node instances central no longer lists: instance -> when, answer.
    /// The users of one such instance share one probe (an eviction concerns thousands).
    probes: Mutex<HashMap<String, (std::time::Instant, ProbeAnswer)>>,
    /// Instances whose users `live_changed` is checking now (one check each at a time).
    checking: Mutex<std::collections::HashSet<String>>,
}

/// Whether a node instance answered a probe as itself (computed once, shared).
type ProbeAnswer = Arc<tokio::sync::OnceCell<bool>>;

/// How long a probe answer about a node instance is reused.
const PROBE_REUSE: Duration = Duration::from_secs(1);
/// How long a node instance central no longer lists has to answer a probe before its users
/// are written offline. A killed process refuses the connection at once; a draining node
/// busy handing thousands of sessions over may take a while, and a timeout there is a false
/// offline for every user it still serves (the contract's bound is node timeout + 5 s).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("store", &self.inner.store)
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

impl Presence {
    pub fn new(store: PresenceStore, limits: PresenceLimits) -> Presence {
        Presence {
            inner: Arc::new(Inner {
                store,
                limits,
                index: Mutex::default(),
                outbox: Mutex::default(),
                degraded: AtomicBool::new(false),
                resyncing: AtomicBool::new(false),
                ended: Mutex::default(),
                store_slots: tokio::sync::Semaphore::new(limits.store_concurrency.max(1)),
                probes: Mutex::default(),
                checking: Mutex::default(),
            }),
        }
    }

    pub fn limits(&self) -> &PresenceLimits {
        &self.inner.limits
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.inner
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn gauges(ix: &Index) {
        metrics::gauge!("signal_presence_watched").set(ix.watched() as f64);
        metrics::gauge!("signal_presence_subscriptions").set(ix.subscriptions() as f64);
    }

    /// Whether the store is usable (for `/readyz`).
    pub fn is_degraded(&self) -> bool {
        self.inner.degraded.load(Ordering::Acquire)
    }

    fn me(node: &Node) -> WatcherNode {
        WatcherNode {
            node: node.id().to_string(),
            instance: node.instance().to_owned(),
            grpc_url: node.grpc_url().to_owned(),
        }
    }

    fn owner(node: &Node, session: &Session) -> Owner {
        Owner {
            node: node.id().to_string(),
            instance: node.instance().to_owned(),
            session: session.id(),
        }
    }

    fn is_dead(node: &Node, o: &Owner) -> bool {
        let loc = Location {
            node_id: o.node.clone(),
            instance: o.instance.clone(),
            conn: 0,
            grpc_url: String::new(),
        };
        if node.is_ours(&loc) {
            return false;
        }
        node.peers().liveness(&loc) == Liveness::Gone
    }

    /// A fresh session starts: the user is online (contract 7).
    pub async fn started(&self, node: &Node, session: &Session) {
        let since = now_ms();
        let record = {
            let mut ix = self.index();
            ix.start(session.clone(), Availability::Online, String::new(), since);
            ix.own(session.id())
                .map(|o| o.record(Self::owner(node, session)))
        };
        if let Some(r) = record {
            metrics::counter!("signal_presence_changes_total", "kind" => "start").increment(1);
            self.publish(node, session.user(), r, Mode::Put).await;
        }
    }

    /// A session arrives by takeover with its state and subscriptions: watchers see nothing
    /// unless something changed; the record now names this node.
    pub async fn adopted(&self, node: &Node, session: &Session, carry: SessionPresence) {
        let avail = Availability::parse(&carry.state).unwrap_or(Availability::Online);
        let subs: Vec<_> = carry
            .subscriptions
            .into_iter()
            .filter_map(index::seen_from_wire)
            .collect();
        let (record, need) = {
            let mut ix = self.index();
            ix.start(session.clone(), avail, carry.note, carry.since);
            let mut out = Delivered::default();
            let need = ix
                .subscribe(session.id(), &subs, usize::MAX, &mut out)
                .unwrap_or_default();
            count(out);
            Self::gauges(&ix);
            let record = ix
                .own(session.id())
                .map(|o| o.record(Self::owner(node, session)));
            (record, need)
        };
        if let Some(r) = record {
            metrics::counter!("signal_presence_changes_total", "kind" => "adopt").increment(1);
            self.publish(node, session.user(), r, Mode::Put).await;
        }
        self.snapshot(node, need).await;
    }

    /// The session is handed over to another node: what it carries. Nothing is announced.
    pub fn handed_over(&self, node: &Node, session: &Session) -> Option<SessionPresence> {
        let removed = {
            let mut ix = self.index();
            let r = ix.remove(session.id());
            Self::gauges(&ix);
            r
        }?;
        self.unwatch_later(node, removed.gone);
        let carry = Index::carry(removed.own, removed.seen);
        Some(carry)
    }

    /// The session ended (contract 5): the user is offline, its subscriptions are gone.
    pub fn ended(&self, node: &Node, session: &Session) {
        let removed = {
            let mut ix = self.index();
            let r = ix.remove(session.id());
            Self::gauges(&ix);
            r
        };
        let Some(removed) = removed else {
            return;
        };
        self.unwatch_later(node, removed.gone);
        let owner = Self::owner(node, session);
        let record = Record {
            state: "offline".to_owned(),
            note: String::new(),
            since: now_ms(),
            version: 0,
            owner: Owner::default(),
        };
        let this = self.clone();
        let n = node.clone();
        let user = session.user().clone();
        metrics::counter!("signal_presence_changes_total", "kind" => "end").increment(1);
        node.tasks().spawn(async move {
            this.publish(&n, &user, record, Mode::IfOwner(owner)).await;
        });
    }

    /// `SetPresence` from the session's client.
    pub async fn set(&self, node: &Node, session: &Session, set: SetPresence) {
        let note = set.note.map(String::from).unwrap_or_default();
        let record = {
            let mut ix = self.index();
            let Some(own) = ix.own_mut(session.id()) else {
                return;
            };
            if own.avail == set.state && own.note == note {
                return;
            }
            own.avail = set.state;
            own.note = note;
            own.since = now_ms();
            own.record(Self::owner(node, session))
        };
        metrics::counter!("signal_presence_changes_total", "kind" => "set").increment(1);
        let owner = record.owner.clone();
        self.publish(node, session.user(), record, Mode::IfOwner(owner))
            .await;
    }

    /// `Subscribe`: all of the frame's users or none (TOOMANY); each gets a `Presence` with
    /// the current state.
    pub async fn subscribe(
        &self,
        node: &Node,
        session: &Session,
        users: &[UserId],
    ) -> Result<(), TooMany> {
        let pairs: Vec<_> = users.iter().map(|u| (u.clone(), None)).collect();
        let need = {
            let mut ix = self.index();
            let mut out = Delivered::default();
            let need = ix.subscribe(
                session.id(),
                &pairs,
                self.inner.limits.max_subscriptions,
                &mut out,
            )?;
            count(out);
            Self::gauges(&ix);
            need
        };
        self.snapshot(node, need).await;
        Ok(())
    }

    /// `Unsubscribe`.
    pub fn unsubscribe(&self, node: &Node, session: &Session, users: &[UserId]) {
        let gone = {
            let mut ix = self.index();
            let g = ix.unsubscribe(session.id(), users);
            Self::gauges(&ix);
            g
        };
        self.unwatch_later(node, gone);
    }

    /// Registers this node as a watcher of `users` and applies their current state (the
    /// snapshot). With the store down, users with a session here are answered from it; the
    /// others wait for the resync.
    async fn snapshot(&self, node: &Node, users: Vec<UserId>) {
        if users.is_empty() {
            return;
        }
        let me = Self::me(node);
        for chunk in users.chunks(signal_proto::presence::MAX_USERS_PER_FRAME) {
            let watched = {
                // Never closed: `acquire` fails only on a closed semaphore.
                let _permit = self.inner.store_slots.acquire().await.ok();
                self.inner.store.watch(&me, chunk).await
            };
            match watched {
                Ok(records) => {
                    let mut dead = Vec::new();
                    let updates: Vec<Update> = chunk
                        .iter()
                        .zip(records)
                        .map(|(u, r)| match r {
                            Some(r) => {
                                let upd = Update::from_record(u.clone(), &r);
                                // Owned by an instance central no longer lists: shown as
                                // stored until `expire_owner` decides (a draining node keeps
                                // serving its users: showing offline here would be false).
                                if !upd.owner.is_none() && Self::is_dead(node, &upd.owner) {
                                    dead.push(upd.clone());
                                }
                                upd
                            }
                            None => Update::unknown(u.clone()),
                        })
                        .collect();
                    self.apply_now(&updates);
                    for d in dead {
                        self.expire_owner(node, d);
                    }
                }
                Err(e) => {
                    self.degrade(&e);
                    let local: Vec<Update> = {
                        let mut ix = self.index();
                        ix.fetch_failed(chunk);
                        let states = ix.local_states(chunk);
                        chunk
                            .iter()
                            .filter_map(|u| {
                                let (avail, note, since, sid) = states.get(u)?.clone();
                                let r = Record {
                                    state: avail.as_str().to_owned(),
                                    note,
                                    since,
                                    version: now_ms(),
                                    owner: Owner {
                                        node: node.id().to_string(),
                                        instance: node.instance().to_owned(),
                                        session: sid,
                                    },
                                };
                                Some(Update::from_record(u.clone(), &r))
                            })
                            .collect()
                    };
                    self.apply_now(&local);
                }
            }
        }
    }

    fn apply_now(&self, updates: &[Update]) {
        let mut out = Delivered::default();
        let mut ix = self.index();
        for u in updates {
            ix.apply(u, &mut out);
        }
        drop(ix);
        count(out);
    }

    fn unwatch_later(&self, node: &Node, users: Vec<UserId>) {
        if users.is_empty() {
            return;
        }
        let store = self.inner.store.clone();
        let me = Self::me(node);
        node.tasks().spawn(async move {
            if let Err(e) = store.unwatch(&me, &users).await {
                // The entries stay; the next notification for them is answered "unwatched".
                tracing::debug!(error = %e, users = users.len(), "cannot remove watcher entries");
            }
        });
    }

    fn degrade(&self, e: &store::StoreError) {
        if !self.inner.degraded.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %e, "presence store unavailable: local delivery only until it is back");
        }
    }

    /// Writes a change and fans it out to every watching node (this one included), coalesced
    /// per tick. With the store down: delivered to local watchers only, rewritten on resync.
    async fn publish(&self, node: &Node, user: &UserId, record: Record, mode: Mode) {
        let mut floor = record.clone();
        floor.version = now_ms();
        match self
            .inner
            .store
            .write(user, &floor, &mode, self.inner.limits.offline_ttl)
            .await
        {
            Ok(w) => {
                if let Some(r) = &w.record {
                    let upd = Update::from_record(user.clone(), r);
                    self.fan_out(node, upd, &w.watchers);
                }
            }
            Err(e) => {
                self.degrade(&e);
                if record.state == "offline" {
                    if let Mode::IfOwner(o) = &mode {
                        let mut ended = self
                            .inner
                            .ended
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner);
                        if ended.len() < self.inner.limits.max_pending {
                            ended.insert(user.clone(), o.clone());
                        } else {
                            metrics::counter!("signal_presence_pending_dropped_total").increment(1);
                            tracing::warn!(%user, "presence: too many session ends waiting for the store; this one is not written");
                        }
                    }
                }
                let mut upd = Update::from_record(user.clone(), &record);
                upd.version = self
                    .index()
                    .current(user)
                    .map_or(0, |c| c.version + 1)
                    .max(now_ms());
                self.outbox().local(upd);
            }
        }
    }

    /// The record of `d.user` names a dead node instance: write offline unless the user is
    /// back elsewhere, and deliver whichever state results.
    fn expire_owner(&self, node: &Node, d: Update) {
        let this = self.clone();
        let n = node.clone();
        node.tasks()
            .spawn(async move { this.expire_one(&n, d).await });
    }

    /// `expire_owner`'s work for one user.
    async fn expire_one(&self, node: &Node, d: Update) {
        if self.still_serving(node, &d).await {
            // An evicted node (a late heartbeat) or one that left the list before its
            // drain was over still serves (and hands over) its sessions: not offline.
            tracing::debug!(user = %d.user, node = %d.owner.node, "owner node left the live set but still serves the user");
            return;
        }
        metrics::counter!("signal_presence_changes_total", "kind" => "dead").increment(1);
        let record = Record {
            state: "offline".to_owned(),
            note: String::new(),
            since: now_ms(),
            version: now_ms(),
            owner: Owner::default(),
        };
        let mode = Mode::IfInstance {
            node: d.owner.node.clone(),
            instance: d.owner.instance.clone(),
        };
        match self
            .inner
            .store
            .write(&d.user, &record, &mode, self.inner.limits.offline_ttl)
            .await
        {
            Ok(w) => {
                if let Some(r) = &w.record {
                    let upd = Update::from_record(d.user.clone(), r);
                    if w.applied {
                        tracing::info!(user = %d.user, node = %d.owner.node, "presence: owner node died, user offline");
                        self.fan_out(node, upd, &w.watchers);
                    } else {
                        self.outbox().local(upd);
                    }
                }
            }
            Err(e) => {
                self.degrade(&e);
                let version = d.version + 1;
                self.outbox().local(fanout::offline_of(&d, version));
            }
        }
    }

    /// Central's live set changed: users whose state belongs to a dead node instance are
    /// announced offline (unless they are back elsewhere). Checked per instance, one check in
    /// flight each: if the instance still answers as itself (a drain, or an eviction for a
    /// late heartbeat), none of its users is touched; otherwise each is checked and written
    /// offline, `--presence-store-concurrency` at a time. (Before, a drain cost every watching
    /// node one directory lookup per user of the draining node per heartbeat.)
    pub fn live_changed(&self, node: &Node) {
        let dead = self.index().owned_by(|o| Self::is_dead(node, o));
        let mut by_instance: HashMap<String, Vec<Update>> = HashMap::new();
        for d in dead {
            by_instance
                .entry(d.owner.instance.clone())
                .or_default()
                .push(d);
        }
        for (instance, users) in by_instance {
            if !self
                .inner
                .checking
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(instance.clone())
            {
                continue;
            }
            let this = self.clone();
            let n = node.clone();
            node.tasks().spawn(async move {
                this.expire_instance(&n, users).await;
                this.inner
                    .checking
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&instance);
            });
        }
    }

    /// The users of one instance central no longer lists (see `live_changed`).
    async fn expire_instance(&self, node: &Node, users: Vec<Update>) {
        // A user whose directory entry still names the instance gives its URL; a few tries.
        for d in users.iter().take(8) {
            let Ok(Some(loc)) = node.directory().lookup(&d.user).await else {
                continue;
            };
            if loc.node_id == d.owner.node && loc.instance == d.owner.instance {
                if self.probe_answers(node, &loc.grpc_url, &loc.instance).await {
                    tracing::debug!(node = %d.owner.node, users = users.len(), "owner node left the live set but still answers");
                    return;
                }
                break;
            }
        }
        use futures::stream::StreamExt as _;
        let limit = self.inner.limits.store_concurrency.max(1);
        futures::stream::iter(users)
            .for_each_concurrent(limit, |d| self.expire_one(node, d))
            .await;
    }

    /// The store is back (or was reconnected): rewrite the state of every local session and
    /// the session ends it missed, register every watched user again and apply their state.
    /// Watchers get the current state of everyone whose state changed meanwhile.
    pub async fn resync(&self, node: &Node) {
        if self.inner.resyncing.swap(true, Ordering::AcqRel) {
            return;
        }
        let ok = self.resync_once(node).await;
        self.inner.resyncing.store(false, Ordering::Release);
        if ok {
            metrics::counter!("signal_presence_resyncs_total").increment(1);
            if self.inner.degraded.swap(false, Ordering::AcqRel) {
                tracing::info!("presence store back: state re-synchronised");
            }
        }
    }

    async fn resync_once(&self, node: &Node) -> bool {
        let owns: Vec<(UserId, Record)> = {
            let ix = self.index();
            ix.owns()
                .map(|(sid, o)| {
                    let owner = Owner {
                        node: node.id().to_string(),
                        instance: node.instance().to_owned(),
                        session: *sid,
                    };
                    (o.user.clone(), o.record(owner))
                })
                .collect()
        };
        let ttl = self.inner.limits.offline_ttl;
        // Incremental: only the records that differ from the local session's state are
        // written (Redis lost them, a write failed meanwhile, or another node wrote offline
        // for this node's users while central did not list it); the others are left alone,
        // so a resync after a short outage costs one read per session and notifies nobody.
        let limit = self.inner.limits.store_concurrency.max(1);
        for chunk in owns.chunks(signal_proto::presence::MAX_USERS_PER_FRAME) {
            let users: Vec<UserId> = chunk.iter().map(|(u, _)| u.clone()).collect();
            let stored = {
                let _permit = self.inner.store_slots.acquire().await.ok();
                self.inner.store.read(&users).await
            };
            let stored = match stored {
                Ok(s) => s,
                Err(e) => {
                    self.degrade(&e);
                    return false;
                }
            };
            let differ: Vec<(UserId, Record)> = chunk
                .iter()
                .zip(stored)
                .filter(|((_, r), have)| !have.as_ref().is_some_and(|h| same_state(h, r)))
                .map(|(o, _)| o.clone())
                .collect();
            if differ.is_empty() {
                continue;
            }
            metrics::counter!("signal_presence_resync_writes_total").increment(differ.len() as u64);
            use futures::stream::{StreamExt as _, TryStreamExt as _};
            let writes = futures::stream::iter(differ)
                .map(|(user, mut r)| {
                    let store = self.inner.store.clone();
                    async move {
                        r.version = now_ms();
                        let w = store.write(&user, &r, &Mode::Put, ttl).await?;
                        Ok::<_, store::StoreError>((user, w))
                    }
                })
                .buffer_unordered(limit)
                .try_collect::<Vec<_>>()
                .await;
            match writes {
                Ok(done) => {
                    for (user, w) in done {
                        if let Some(rec) = &w.record {
                            self.fan_out(node, Update::from_record(user, rec), &w.watchers);
                        }
                    }
                }
                Err(e) => {
                    self.degrade(&e);
                    return false;
                }
            }
        }
        let ended: Vec<(UserId, Owner)> = std::mem::take(
            &mut *self
                .inner
                .ended
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
        .into_iter()
        .collect();
        for (i, (user, owner)) in ended.iter().enumerate() {
            let r = Record {
                state: "offline".to_owned(),
                note: String::new(),
                since: now_ms(),
                version: now_ms(),
                owner: Owner::default(),
            };
            match self
                .inner
                .store
                .write(user, &r, &Mode::IfOwner(owner.clone()), ttl)
                .await
            {
                Ok(w) => {
                    if let Some(rec) = &w.record {
                        self.fan_out(node, Update::from_record(user.clone(), rec), &w.watchers);
                    }
                }
                Err(e) => {
                    self.degrade(&e);
                    let mut pending = self
                        .inner
                        .ended
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    for (u, o) in &ended[i..] {
                        pending.entry(u.clone()).or_insert_with(|| o.clone());
                    }
                    return false;
                }
            }
        }
        let watched = self.index().watched_users();
        let me = Self::me(node);
        for chunk in watched.chunks(signal_proto::presence::MAX_USERS_PER_FRAME) {
            match self.inner.store.watch(&me, chunk).await {
                Ok(records) => {
                    // A missing record (Redis lost its data) is no news: its owner's node
                    // writes it back in its own resync and notifies us. Only a watcher that
                    // has no state yet (its snapshot failed) is shown offline (version 0:
                    // dropped by any slot that has a state).
                    let updates: Vec<Update> = chunk
                        .iter()
                        .zip(records)
                        .map(|(u, r)| match r {
                            Some(r) => Update::from_record(u.clone(), &r),
                            None => Update::unknown(u.clone()),
                        })
                        .collect();
                    self.apply_now(&updates);
                }
                Err(e) => {
                    self.degrade(&e);
                    return false;
                }
            }
        }
        true
    }
}

impl Presence {
    /// Whether the node instance central no longer lists still holds `d.user`'s session: the
    /// directory names that very instance and it answers a probe as itself (a drain, or a
    /// node evicted for a late heartbeat, not a crash). One probe per instance and second.
    async fn still_serving(&self, node: &Node, d: &Update) -> bool {
        let Ok(Some(loc)) = node.directory().lookup(&d.user).await else {
            return false;
        };
        if loc.node_id != d.owner.node || loc.instance != d.owner.instance {
            // Connected elsewhere by now: its new node writes its state; nothing to announce.
            return true;
        }
        self.probe_answers(node, &loc.grpc_url, &d.owner.instance)
            .await
    }

    /// Whether the node at `url` answers a probe as `instance` (within [`PROBE_TIMEOUT`]); one
    /// probe per instance and second, shared by every caller.
    async fn probe_answers(&self, node: &Node, url: &str, instance: &str) -> bool {
        let answer = {
            let mut probes = self
                .inner
                .probes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            probes.retain(|_, (at, _)| at.elapsed() < PROBE_REUSE);
            Arc::clone(
                &probes
                    .entry(instance.to_owned())
                    .or_insert_with(|| (std::time::Instant::now(), ProbeAnswer::default()))
                    .1,
            )
        };
        *answer
            .get_or_init(|| async {
                matches!(
                    tokio::time::timeout(PROBE_TIMEOUT, node.peers().probe(url))
                        .await,
                    Ok(Ok(p)) if p.instance == instance
                )
            })
            .await
    }
}

/// Whether a stored record already says what the local session would write.
fn same_state(have: &Record, want: &Record) -> bool {
    have.state == want.state
        && have.note == want.note
        && have.since == want.since
        && have.owner == want.owner
}

/// Records the counters of a delivery pass.
fn count(d: Delivered) {
    if d.pushed > 0 {
        metrics::counter!("signal_presence_notifications_total").increment(d.pushed);
    }
    if d.suppressed > 0 {
        metrics::counter!("signal_presence_suppressed_total").increment(d.suppressed);
    }
    if d.failed > 0 {
        metrics::counter!("signal_presence_push_failures_total").increment(d.failed);
    }
}
