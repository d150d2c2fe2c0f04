//! The node's local presence index, under one short std `Mutex` (no `.await` inside): the own
//! state and subscriptions of every local session, and one slot per watched user (its latest
//! state and version, its owner, and what each local watcher was last shown). Deciding who
//! gets a `Presence` frame happens here; pushing into a session never waits.

use std::collections::{HashMap, HashSet};

use signal_proto::presence::{Availability, Note, Presence, Shown};
use signal_proto::relay::{PresenceUpdate, SessionPresence};
use signal_proto::{Message, UserId};

use super::store::{Owner, Record};
use crate::session::{Origin, Session};

/// A user's state as watchers see it, with its version and owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub user: UserId,
    pub state: Shown,
    pub note: String,
    pub since: u64,
    pub version: u64,
    pub owner: Owner,
}

impl Update {
    /// What watchers see of a stored record (invisible is offline, without note).
    pub fn from_record(user: UserId, r: &Record) -> Update {
        let avail = Availability::parse(&r.state);
        let state = avail.map_or(Shown::Offline, Availability::shown);
        let visible = state != Shown::Offline;
        Update {
            user,
            state,
            note: if visible {
                r.note.clone()
            } else {
                String::new()
            },
            since: r.since,
            version: r.version,
            owner: if avail.is_some() {
                r.owner.clone()
            } else {
                Owner::default()
            },
        }
    }

    /// Never seen: offline since 0.
    pub fn unknown(user: UserId) -> Update {
        Update {
            user,
            state: Shown::Offline,
            note: String::new(),
            since: 0,
            version: 0,
            owner: Owner::default(),
        }
    }

    pub fn to_wire(&self) -> PresenceUpdate {
        PresenceUpdate {
            user: self.user.to_string(),
            state: self.state.as_str().to_owned(),
            note: self.note.clone(),
            since: self.since,
            version: self.version,
            owner_node: self.owner.node.clone(),
            owner_instance: self.owner.instance.clone(),
        }
    }

    pub fn from_wire(u: PresenceUpdate) -> Option<Update> {
        Some(Update {
            user: UserId::new(u.user).ok()?,
            state: Shown::parse(&u.state)?,
            note: Note::new(u.note).ok()?.into(),
            since: u.since,
            version: u.version,
            owner: Owner {
                node: u.owner_node,
                instance: u.owner_instance,
                session: 0,
            },
        })
    }

    fn frame(&self) -> String {
        Message::Presence(Presence {
            user: self.user.clone(),
            state: self.state,
            note: (!self.note.is_empty()).then(|| Note::new(self.note.clone()).unwrap_or_default()),
            since: self.since,
        })
        .to_json()
    }
}

/// A local session's own presence and subscriptions.
#[derive(Debug)]
pub struct Own {
    pub user: UserId,
    pub session: Session,
    pub avail: Availability,
    pub note: String,
    pub since: u64,
    pub subs: HashSet<UserId>,
}

impl Own {
    /// The record this session writes.
    pub fn record(&self, owner: Owner) -> Record {
        Record {
            state: self.avail.as_str().to_owned(),
            note: self.note.clone(),
            since: self.since,
            version: 0,
            owner,
        }
    }
}

/// What one local watcher was last shown of a user: the state, the note and the version of
/// the update (0: not known, e.g. carried by an older node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown1 {
    pub state: Shown,
    pub note: String,
    pub version: u64,
}

impl Shown1 {
    fn of(upd: &Update) -> Shown1 {
        Shown1 {
            state: upd.state,
            note: upd.note.clone(),
            version: upd.version,
        }
    }

    /// Whether showing `upd` to a watcher that was shown this would tell it nothing new: the
    /// same state and note, or an update older than the one it has (a session taken over was
    /// shown by its old node a state this node's slot may not have yet).
    fn covers(&self, upd: &Update) -> bool {
        (self.state == upd.state && self.note == upd.note)
            || (self.version > 0 && self.version >= upd.version)
    }
}

/// What one local watcher was last shown of a user (`None`: nothing yet).
pub type Seen = Option<Shown1>;

#[derive(Debug, Default)]
struct Slot {
    /// The latest update applied (`None` until the first snapshot).
    current: Option<Update>,
    /// A snapshot of the user is being read from the store: it is applied to every watcher
    /// of the slot, so a later subscriber waits for it instead of reading again (one store
    /// round trip per watched user and node, however many sessions subscribe at once).
    fetching: bool,
    watchers: HashMap<u64, Seen>,
}

/// A session that left the index.
#[derive(Debug)]
pub struct Removed {
    pub own: Own,
    /// Its subscriptions and what each was last shown.
    pub seen: Vec<(UserId, Seen)>,
    /// Users nobody on this node watches any more.
    pub gone: Vec<UserId>,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooMany {
    pub max: usize,
    pub have: usize,
}

/// The local index. Not a handle: `Presence` holds it under its mutex.
#[derive(Debug, Default)]
pub struct Index {
    owns: HashMap<u64, Own>,
    slots: HashMap<UserId, Slot>,
    subscriptions: usize,
}

/// Counters of one delivery pass, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub pushed: u64,
    pub suppressed: u64,
    pub failed: u64,
}

impl Index {
    pub fn sessions(&self) -> usize {
        self.owns.len()
    }

    pub fn watched(&self) -> usize {
        self.slots.len()
    }

    pub fn subscriptions(&self) -> usize {
        self.subscriptions
    }

    pub fn own(&self, sid: u64) -> Option<&Own> {
        self.owns.get(&sid)
    }

    pub fn own_mut(&mut self, sid: u64) -> Option<&mut Own> {
        self.owns.get_mut(&sid)
    }

    /// Every local session's own state (for a resync).
    pub fn owns(&self) -> impl Iterator<Item = (&u64, &Own)> {
        self.owns.iter()
    }

    /// Every watched user.
    pub fn watched_users(&self) -> Vec<UserId> {
        self.slots.keys().cloned().collect()
    }

    /// Watched users whose current state belongs to a session of `instance` of `node`.
    pub fn owned_by(&self, mut dead: impl FnMut(&Owner) -> bool) -> Vec<Update> {
        self.slots
            .values()
            .filter_map(|s| s.current.as_ref())
            .filter(|u| !u.owner.is_none() && dead(&u.owner))
            .cloned()
            .collect()
    }

    /// The latest known update of a watched user.
    pub fn current(&self, user: &UserId) -> Option<&Update> {
        self.slots.get(user).and_then(|s| s.current.as_ref())
    }

    /// The state of those of `users` that have a session on this node (serves snapshots
    /// while the store is down): one pass over the local sessions, whatever the number of
    /// users.
    pub fn local_states(
        &self,
        users: &[UserId],
    ) -> HashMap<UserId, (Availability, String, u64, u64)> {
        let wanted: HashSet<&UserId> = users.iter().collect();
        self.owns
            .iter()
            .filter(|(_, o)| wanted.contains(&o.user))
            .map(|(sid, o)| (o.user.clone(), (o.avail, o.note.clone(), o.since, *sid)))
            .collect()
    }

    /// A session starts (or arrives by takeover) with this state.
    pub fn start(&mut self, session: Session, avail: Availability, note: String, since: u64) {
        let sid = session.id();
        let user = session.user().clone();
        self.owns.insert(
            sid,
            Own {
                user,
                session,
                avail,
                note,
                since,
                subs: HashSet::new(),
            },
        );
    }

    /// Adds subscriptions of session `sid` (nothing if that would exceed `max`). Returns the
    /// users that need a snapshot from the store (no local slot had one yet); pushes the
    /// known state of the others at once. `seen`: what the client was already shown (a
    /// session taken over), `None` for a new subscription.
    pub fn subscribe(
        &mut self,
        sid: u64,
        users: &[(UserId, Seen)],
        max: usize,
        out: &mut Delivered,
    ) -> Result<Vec<UserId>, TooMany> {
        let Index {
            owns,
            slots,
            subscriptions,
        } = self;
        let Some(own) = owns.get_mut(&sid) else {
            return Ok(Vec::new());
        };
        // The bound is all or nothing (a frame may name a user twice: counted once). A
        // takeover (no bound) skips the count.
        if max != usize::MAX {
            let fresh: HashSet<&UserId> = users
                .iter()
                .map(|(u, _)| u)
                .filter(|u| !own.subs.contains(*u))
                .collect();
            if own.subs.len() + fresh.len() > max {
                return Err(TooMany {
                    max,
                    have: own.subs.len(),
                });
            }
        }
        let mut need = Vec::new();
        for (user, seen) in users {
            // No clone of the id where it is already there (a takeover of 100 subscriptions
            // of users this node watches already clones none).
            if !own.subs.contains(user) {
                own.subs.insert(user.clone());
                *subscriptions += 1;
            }
            if !slots.contains_key(user) {
                slots.insert(user.clone(), Slot::default());
            }
            let Some(slot) = slots.get_mut(user) else {
                continue;
            };
            // A new subscription is answered with the current state even if an earlier one
            // of this session showed it.
            let entry = slot.watchers.entry(sid).or_insert(None);
            entry.clone_from(seen);
            match &slot.current {
                Some(cur) => deliver_one(&own.session, cur, entry, out),
                // The snapshot in flight is applied to this watcher too.
                None if slot.fetching => {}
                None => {
                    slot.fetching = true;
                    need.push(user.clone());
                }
            }
        }
        Ok(need)
    }

    /// The snapshot of `users` could not be read: a later subscriber (or the resync) reads
    /// it again.
    pub fn fetch_failed(&mut self, users: &[UserId]) {
        for u in users {
            if let Some(slot) = self.slots.get_mut(u) {
                slot.fetching = false;
            }
        }
    }

    /// Watched users that have no state yet (their snapshot failed or found nothing).
    pub fn unknown_users(&self) -> Vec<UserId> {
        self.slots
            .iter()
            .filter(|(_, s)| s.current.is_none())
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// Removes subscriptions of session `sid`; returns the users nobody here watches now.
    pub fn unsubscribe(&mut self, sid: u64, users: &[UserId]) -> Vec<UserId> {
        let mut gone = Vec::new();
        let Some(own) = self.owns.get_mut(&sid) else {
            return gone;
        };
        for user in users {
            if !own.subs.remove(user) {
                continue;
            }
            self.subscriptions -= 1;
            if let Some(slot) = self.slots.get_mut(user) {
                slot.watchers.remove(&sid);
                if slot.watchers.is_empty() {
                    self.slots.remove(user);
                    gone.push(user.clone());
                }
            }
        }
        gone
    }

    /// Session `sid` leaves the index (ended or handed over): its own state and its
    /// subscriptions. Returns it, what each subscription was shown, and the users nobody
    /// here watches now.
    pub fn remove(&mut self, sid: u64) -> Option<Removed> {
        // Moved out, not cloned: a drain hands thousands of sessions with 100
        // subscriptions each over.
        let mut own = self.owns.remove(&sid)?;
        let subs = std::mem::take(&mut own.subs);
        let mut seen = Vec::with_capacity(subs.len());
        let mut gone = Vec::new();
        for user in subs {
            self.subscriptions -= 1;
            let mut shown = None;
            if let Some(slot) = self.slots.get_mut(&user) {
                shown = slot.watchers.remove(&sid).flatten();
                if slot.watchers.is_empty() {
                    self.slots.remove(&user);
                    gone.push(user.clone());
                }
            }
            seen.push((user, shown));
        }
        Some(Removed { own, seen, gone })
    }

    /// Applies an update of a watched user: an older one than the slot has is dropped (the
    /// order of one user's changes is kept); each watcher is pushed the new state unless it
    /// was already shown exactly that. `false` if nobody here watches the user.
    pub fn apply(&mut self, upd: &Update, out: &mut Delivered) -> bool {
        let Some(slot) = self.slots.get_mut(&upd.user) else {
            return false;
        };
        if let Some(cur) = &slot.current {
            if upd.version < cur.version || (upd.version == cur.version && cur == upd) {
                return true;
            }
        }
        slot.current = Some(upd.clone());
        slot.fetching = false;
        let mut frame: Option<String> = None;
        for (sid, seen) in slot.watchers.iter_mut() {
            let Some(own) = self.owns.get(sid) else {
                continue;
            };
            if seen.as_ref().is_some_and(|s| s.covers(upd)) {
                out.suppressed += 1;
                continue;
            }
            let f = frame.get_or_insert_with(|| upd.frame());
            match own.session.push(f, Origin::Node) {
                Ok(_) => {
                    *seen = Some(Shown1::of(upd));
                    out.pushed += 1;
                }
                Err(_) => out.failed += 1,
            }
        }
        true
    }

    /// What a handed-over session carries: its state and, per subscription, what it was shown.
    pub fn carry(own: Own, seen: Vec<(UserId, Seen)>) -> SessionPresence {
        SessionPresence {
            state: own.avail.as_str().to_owned(),
            note: own.note,
            since: own.since,
            subscriptions: seen
                .into_iter()
                .map(|(u, s)| match s {
                    Some(s) => signal_proto::relay::Seen {
                        user: u.into_string(),
                        state: s.state.as_str().to_owned(),
                        note: s.note,
                        version: s.version,
                    },
                    None => signal_proto::relay::Seen {
                        user: u.into_string(),
                        ..Default::default()
                    },
                })
                .collect(),
        }
    }
}

fn deliver_one(session: &Session, cur: &Update, seen: &mut Seen, out: &mut Delivered) {
    if seen.as_ref().is_some_and(|s| s.covers(cur)) {
        out.suppressed += 1;
        return;
    }
    match session.push(&cur.frame(), Origin::Node) {
        Ok(_) => {
            *seen = Some(Shown1::of(cur));
            out.pushed += 1;
        }
        Err(_) => out.failed += 1,
    }
}

/// A subscription as carried by a handover: the user and what the client was shown.
pub fn seen_from_wire(s: signal_proto::relay::Seen) -> Option<(UserId, Seen)> {
    let user = UserId::new(s.user).ok()?;
    let seen = Shown::parse(&s.state).map(|state| Shown1 {
        state,
        note: s.note,
        version: s.version,
    });
    Some((user, seen))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::session::{RingLimits, SessionLimits};
    use std::time::Duration;

    fn session(id: u64, user: &str) -> Session {
        let limits = SessionLimits {
            ring: RingLimits {
                frames: 1024,
                bytes: 1 << 20,
            },
            unwritten_frames: 1024,
            unwritten_bytes: 1 << 20,
            window: Duration::from_secs(30),
        };
        Session::new(id, UserId::new(user).unwrap(), limits, false)
    }

    fn upd(state: Shown, note: &str, version: u64) -> Update {
        Update {
            user: UserId::new("bob").unwrap(),
            state,
            note: note.into(),
            since: version,
            version,
            owner: Owner::default(),
        }
    }

    fn frames(s: &Session) -> usize {
        s.stats().0
    }

    /// Snapshot on subscribe, one frame per real change, older versions dropped (order kept),
    /// an unchanged visible state not shown twice, the subscription limit all or nothing.
    #[test]
    fn apply_orders_suppresses_and_limits() {
        let mut ix = Index::default();
        let alice = session(1, "alice");
        let carol = session(2, "carol");
        ix.start(alice.clone(), Availability::Online, String::new(), 1);
        ix.start(carol.clone(), Availability::Online, String::new(), 1);
        let bob = UserId::new("bob").unwrap();
        let mut out = Delivered::default();
        let need = ix
            .subscribe(1, &[(bob.clone(), None)], 2, &mut out)
            .unwrap();
        assert_eq!(need, vec![bob.clone()]);
        assert!(ix.apply(&upd(Shown::Online, "", 10), &mut out));
        assert_eq!(frames(&alice), 1, "snapshot");
        // A second watcher is answered from the slot, no store round trip.
        let need = ix
            .subscribe(2, &[(bob.clone(), None)], 2, &mut out)
            .unwrap();
        assert!(need.is_empty());
        assert_eq!(frames(&carol), 1);
        ix.apply(&upd(Shown::Away, "x", 12), &mut out);
        ix.apply(&upd(Shown::Busy, "", 11), &mut out); // older: dropped
        assert_eq!((frames(&alice), frames(&carol)), (2, 2));
        assert_eq!(ix.current(&bob).unwrap().state, Shown::Away);
        // Same visible state with a new version (a takeover, a resync): nothing shown.
        let before = out.pushed;
        ix.apply(&upd(Shown::Away, "x", 13), &mut out);
        assert_eq!(out.pushed, before);
        assert_eq!(frames(&alice), 2);
        // Limit: 1 + 2 new > 2 -> refused, nothing added.
        let many: Vec<_> = ["u1", "u2"]
            .iter()
            .map(|u| (UserId::new(*u).unwrap(), None))
            .collect();
        assert_eq!(
            ix.subscribe(1, &many, 2, &mut out),
            Err(TooMany { max: 2, have: 1 })
        );
        assert_eq!(ix.subscriptions(), 2);
        // The end of a session removes its subscriptions; the last watcher removes the slot.
        let r = ix.remove(1).unwrap();
        assert!(r.gone.is_empty());
        assert_eq!(
            r.seen,
            vec![(
                bob.clone(),
                Some(Shown1 {
                    state: Shown::Away,
                    note: "x".to_owned(),
                    version: 12
                })
            )]
        );
        let r = ix.remove(2).unwrap();
        assert_eq!(r.gone, vec![bob.clone()]);
        assert!(
            !ix.apply(&upd(Shown::Online, "", 20), &mut out),
            "nobody watches"
        );
        assert_eq!(ix.watched(), 0);
    }

    /// A session taken over was shown a newer state by its old node than this node's slot
    /// has (the notification is still on its way here): the older state is not shown (it
    /// was a spurious or stale notification), nor is any update older than what it saw;
    /// the next newer one is.
    #[test]
    fn a_carried_subscription_is_not_shown_an_older_state() {
        let mut ix = Index::default();
        let carol = session(2, "carol");
        ix.start(carol.clone(), Availability::Online, String::new(), 1);
        let bob = UserId::new("bob").unwrap();
        let mut out = Delivered::default();
        ix.subscribe(2, &[(bob.clone(), None)], 10, &mut out)
            .unwrap();
        ix.apply(&upd(Shown::Online, "", 10), &mut out);
        assert_eq!(frames(&carol), 1);
        // Alice arrives by takeover; her old node showed her v12 (away "x").
        let alice = session(1, "alice");
        ix.start(alice.clone(), Availability::Online, String::new(), 1);
        let shown = Shown1 {
            state: Shown::Away,
            note: "x".into(),
            version: 12,
        };
        let need = ix
            .subscribe(1, &[(bob.clone(), Some(shown))], usize::MAX, &mut out)
            .unwrap();
        assert!(need.is_empty());
        assert_eq!(frames(&alice), 0, "v10 is older than what alice was shown");
        ix.apply(&upd(Shown::Busy, "y", 11), &mut out);
        assert_eq!(frames(&alice), 0, "v11 too");
        assert_eq!(frames(&carol), 2);
        ix.apply(&upd(Shown::Away, "x", 12), &mut out);
        assert_eq!(frames(&alice), 0, "the state she has");
        ix.apply(&upd(Shown::Online, "z", 13), &mut out);
        assert_eq!(frames(&alice), 1, "a newer change is shown");
        // An older node carries no version (0): the state is compared as before.
        let dave = session(3, "dave");
        ix.start(dave.clone(), Availability::Online, String::new(), 1);
        let old = Shown1 {
            state: Shown::Away,
            note: "x".into(),
            version: 0,
        };
        ix.subscribe(3, &[(bob.clone(), Some(old))], usize::MAX, &mut out)
            .unwrap();
        assert_eq!(frames(&dave), 1);
    }
}
