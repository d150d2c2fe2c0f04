//! The node's local room index: room -> the sessions of this node that are members (and the
//! room's membership version applied here), and user -> the rooms its session joined. Also
//! orders membership events: each carries the room's version from Redis and is applied to the
//! local members in version order; a gap waits at most [`GAP_WAIT`] (its event may have been
//! lost with a dead node), then is skipped. And caches each room's node set (the node
//! instances holding members, read from the store on a miss) so that a room message costs no
//! store read: every membership event and node-set change for the room drops the cached copy
//! (see `Rooms` for who sends them), and a copy older than [`NODES_TTL`] is read again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use signal_proto::rooms::{MemberJoined, MemberLeft};
use signal_proto::{Message, RoomId, UserId};

use super::store::NodeKey;
use crate::session::{Origin, Session};

/// Longest a cached node set is used before it is read again (a safety net: changes drop it
/// at once).
pub const NODES_TTL: Duration = Duration::from_secs(5);

/// Longest wait for a missing membership event before the ones after it are applied.
pub const GAP_WAIT: Duration = Duration::from_millis(1000);

/// A membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Joined,
    Left,
}

/// A local member: its session and the room version it joined at (it is told only the
/// events after that; earlier ones are in its Joined).
#[derive(Debug, Clone)]
struct Member {
    session: Session,
    since: u64,
}

#[derive(Debug, Default)]
struct Room {
    members: HashMap<UserId, Member>,

    /// The highest version applied here (`None`: no event seen yet).
    applied: Option<u64>,
    /// Events that arrived ahead of a missing one, by version.
    pending: BTreeMap<u64, (EventKind, UserId)>,
    gap_since: Option<Instant>,
    /// The room's node set as last read, and when.
    nodes: Option<(Arc<[NodeKey]>, Instant)>,
    /// Changes with every drop of `nodes`: a read that started before a drop does not fill
    /// the cache with what it read.
    nodes_gen: u64,
}

#[derive(Debug, Default)]
struct State {
    rooms: HashMap<RoomId, Room>,
    /// user -> (its session's id, the rooms it joined).
    sessions: HashMap<UserId, (u64, BTreeSet<RoomId>)>,
    /// Source of `Room::nodes_gen`.
    gen: u64,
    /// Joins of this node under way, per room (their events may arrive before their local
    /// member is added: the gap timer keeps those waiting).
    joining: HashMap<RoomId, usize>,
}

/// The local index. Shared behind the `Rooms` handle.
#[derive(Debug, Default)]
pub struct LocalRooms {
    state: Mutex<State>,
}

fn event_frame(room: &RoomId, kind: EventKind, user: &UserId) -> String {
    match kind {
        EventKind::Joined => Message::MemberJoined(MemberJoined {
            room: room.clone(),
            user: user.clone(),
        }),
        EventKind::Left => Message::MemberLeft(MemberLeft {
            room: room.clone(),
            user: user.clone(),
        }),
    }
    .to_json()
}

impl Room {
    /// Pushes event `version` to every local member but its subject that joined before it.
    fn deliver(&self, room: &RoomId, version: u64, kind: EventKind, user: &UserId) {
        let frame = event_frame(room, kind, user);
        for (u, m) in &self.members {
            if u != user && m.since < version {
                let _ = m.session.push(&frame, Origin::Node);
            }
        }
        metrics::counter!("signal_room_events_delivered_total").increment(1);
    }

    /// Applies the pending events that follow on.
    fn drain(&mut self, room: &RoomId) {
        while let Some((&v, _)) = self.pending.first_key_value() {
            let applied = self.applied.unwrap_or(0);
            if v <= applied {
                self.pending.pop_first();
                continue;
            }
            if v != applied + 1 {
                break;
            }
            if let Some((_, (kind, user))) = self.pending.pop_first() {
                self.deliver(room, v, kind, &user);
                self.applied = Some(v);
            }
        }
        self.gap_since = if self.pending.is_empty() {
            None
        } else {
            self.gap_since.or(Some(Instant::now()))
        };
    }
}

impl LocalRooms {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The rooms session `session_id` of `user` joined.
    pub fn rooms_of(&self, user: &UserId, session_id: u64) -> Vec<RoomId> {
        match self.lock().sessions.get(user) {
            Some((id, rooms)) if *id == session_id => rooms.iter().cloned().collect(),
            _ => Vec::new(),
        }
    }

    pub fn is_member(&self, user: &UserId, session_id: u64, room: &RoomId) -> bool {
        matches!(self.lock().sessions.get(user), Some((id, rooms)) if *id == session_id && rooms.contains(room))
    }

    /// How many rooms the session joined.
    pub fn count(&self, user: &UserId, session_id: u64) -> usize {
        match self.lock().sessions.get(user) {
            Some((id, rooms)) if *id == session_id => rooms.len(),
            _ => 0,
        }
    }

    /// Rooms with local members (gauge).
    pub fn len(&self) -> usize {
        self.lock().rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every room with local members.
    pub fn room_ids(&self) -> Vec<RoomId> {
        self.lock().rooms.keys().cloned().collect()
    }

    /// Makes `session` a local member of `room` and pushes `first` (its Joined) to it under
    /// the index lock, so that no room frame reaches it before the Joined.
    /// `version`: the join's number in the room (0: none); the events before it are reflected
    /// in the Joined, so they are not applied here any more.
    pub fn add(&self, room: &RoomId, session: &Session, first: Option<&str>, version: u64) {
        let mut st = self.lock();
        let user = session.user().clone();
        let entry = st
            .sessions
            .entry(user.clone())
            .or_insert_with(|| (session.id(), BTreeSet::new()));
        if entry.0 != session.id() {
            // A newer session of the same user: the old one's memberships are gone here.
            *entry = (session.id(), BTreeSet::new());
        }
        entry.1.insert(room.clone());
        st.gen += 1;
        let gen = st.gen;
        let r = st.rooms.entry(room.clone()).or_default();
        // A join here may change the node set (and a recreated room gets a new generation).
        r.nodes = None;
        r.nodes_gen = gen;
        if let Some(f) = first {
            let _ = session.push(f, Origin::Node);
        }
        // Joins of one room on this node are serialised (`Rooms::join`), so no later local
        // member joined before this one: the events before its join concern nobody here.
        if r.applied.is_none() && version > 0 {
            r.applied = Some(version - 1);
        }
        r.members.insert(
            user,
            Member {
                session: session.clone(),
                since: version,
            },
        );
        metrics::gauge!("signal_rooms_local").set(st.rooms.len() as f64);
    }

    /// Removes the session from `room` here. Returns whether it was a member.
    pub fn remove(&self, room: &RoomId, user: &UserId, session_id: u64) -> bool {
        let mut st = self.lock();
        let was = match st.sessions.get_mut(user) {
            Some((id, rooms)) if *id == session_id => {
                let was = rooms.remove(room);
                if rooms.is_empty() {
                    st.sessions.remove(user);
                }
                was
            }
            _ => false,
        };
        if was {
            Self::drop_member(&mut st, room, user, session_id);
        }
        metrics::gauge!("signal_rooms_local").set(st.rooms.len() as f64);
        was
    }

    fn drop_member(st: &mut State, room: &RoomId, user: &UserId, session_id: u64) {
        if let Some(r) = st.rooms.get_mut(room) {
            if r.members
                .get(user)
                .is_some_and(|m| m.session.id() == session_id)
            {
                r.members.remove(user);
            }
            if r.members.is_empty() {
                st.rooms.remove(room);
            }
        }
    }

    /// Removes the session from every room here; returns those rooms.
    pub fn remove_session(&self, user: &UserId, session_id: u64) -> Vec<RoomId> {
        let mut st = self.lock();
        let rooms = match st.sessions.get(user) {
            Some((id, _)) if *id == session_id => st
                .sessions
                .remove(user)
                .map(|(_, r)| r.into_iter().collect::<Vec<_>>())
                .unwrap_or_default(),
            _ => return Vec::new(),
        };
        for room in &rooms {
            Self::drop_member(&mut st, room, user, session_id);
        }
        metrics::gauge!("signal_rooms_local").set(st.rooms.len() as f64);
        rooms
    }

    /// Every local membership: (room, member sessions).
    pub fn memberships(&self) -> Vec<(RoomId, Vec<Session>)> {
        self.lock()
            .rooms
            .iter()
            .map(|(r, room)| {
                (
                    r.clone(),
                    room.members.values().map(|m| m.session.clone()).collect(),
                )
            })
            .collect()
    }

    /// The local members of `room` but `except`.
    pub fn recipients(&self, room: &RoomId, except: &UserId) -> Vec<Session> {
        self.lock()
            .rooms
            .get(room)
            .map(|r| {
                r.members
                    .iter()
                    .filter(|(u, _)| *u != except)
                    .map(|(_, m)| m.session.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A join of `room` on this node starts (until [`LocalRooms::join_done`]): events that
    /// arrive for the room meanwhile are kept for the joiner, however long it takes.
    pub fn join_started(&self, room: &RoomId) {
        *self.lock().joining.entry(room.clone()).or_default() += 1;
    }

    /// The join started with [`LocalRooms::join_started`] is over (member added or refused).
    pub fn join_done(&self, room: &RoomId) {
        let mut st = self.lock();
        if let Some(n) = st.joining.get_mut(room) {
            *n -= 1;
            if *n == 0 {
                st.joining.remove(room);
            }
        }
    }

    /// The cached node set of `room`, or (a miss) the generation to hand to
    /// [`LocalRooms::fill_nodes`] with what the store says.
    pub fn cached_nodes(&self, room: &RoomId) -> Result<Arc<[NodeKey]>, u64> {
        let st = self.lock();
        let Some(r) = st.rooms.get(room) else {
            return Err(u64::MAX);
        };
        match &r.nodes {
            Some((nodes, at)) if at.elapsed() < NODES_TTL => Ok(nodes.clone()),
            _ => Err(r.nodes_gen),
        }
    }

    /// Caches `nodes` (read from the store after [`LocalRooms::cached_nodes`] answered `gen`)
    /// unless the set was dropped since.
    pub fn fill_nodes(&self, room: &RoomId, gen: u64, nodes: Arc<[NodeKey]>) {
        let mut st = self.lock();
        if let Some(r) = st.rooms.get_mut(room) {
            if r.nodes_gen == gen {
                r.nodes = Some((nodes, Instant::now()));
            }
        }
    }

    /// The node set of `room` may have changed: the next message reads it from the store.
    pub fn invalidate_nodes(&self, room: &RoomId) {
        let mut st = self.lock();
        st.gen += 1;
        let gen = st.gen;
        if let Some(r) = st.rooms.get_mut(room) {
            r.nodes = None;
            r.nodes_gen = gen;
        }
    }

    /// Every cached node set is dropped (the store may have lost and regained its state).
    pub fn invalidate_all_nodes(&self) {
        let mut st = self.lock();
        st.gen += 1;
        let gen = st.gen;
        for r in st.rooms.values_mut() {
            r.nodes = None;
            r.nodes_gen = gen;
        }
    }

    /// Applies membership event `version` of `room` to the local members, in version order.
    /// `bound`: most events kept waiting for a gap. Returns whether a gap is now open (the
    /// caller arms [`LocalRooms::flush_gap`] after [`GAP_WAIT`]).
    pub fn apply(
        &self,
        room: &RoomId,
        version: u64,
        kind: EventKind,
        user: &UserId,
        bound: usize,
    ) -> bool {
        let mut st = self.lock();
        let r = st.rooms.entry(room.clone()).or_default();
        if r.members.is_empty() && r.applied.is_none() {
            // No local member yet: a join on this node may be under way (its Joined reflects
            // the events before it, this one may come after it). Wait for it; the gap timer
            // drops the entry if nobody joins.
            if r.pending.len() < bound {
                r.pending.insert(version, (kind, user.clone()));
            }
            let new_gap = r.gap_since.is_none();
            r.gap_since.get_or_insert_with(Instant::now);
            return new_gap;
        }
        let before = r.applied;
        match r.applied {
            Some(a) if version <= a => return false,
            Some(a) if version == a + 1 => {
                r.deliver(room, version, kind, user);
                r.applied = Some(version);
            }
            None if r.pending.is_empty() => {
                // The first event seen here: its predecessors are already reflected in the
                // Joined of the member that brought the room to this node.
                r.deliver(room, version, kind, user);
                r.applied = Some(version);
            }
            _ => {
                if r.pending.len() >= bound {
                    // Bounded: give up on the gap.
                    if let Some((&first, _)) = r.pending.first_key_value() {
                        r.applied = Some(first - 1);
                    }
                }
                r.pending.insert(version, (kind, user.clone()));
            }
        }
        let had_gap = r.gap_since.is_some();
        r.drain(room);
        if r.applied != before && r.gap_since.is_some() {
            // Progress: the wait for the gap now open starts now.
            r.gap_since = Some(Instant::now());
        }
        r.gap_since.is_some() && !had_gap
    }

    /// After [`GAP_WAIT`]: if events still wait for a missing one, skip it.
    pub fn flush_gap(&self, room: &RoomId) -> bool {
        let mut st = self.lock();
        let Some(r) = st.rooms.get_mut(room) else {
            return false;
        };
        if r.members.is_empty() {
            if st.joining.contains_key(room) {
                // Its joiner is not added yet: wait on.
                return true;
            }
            st.rooms.remove(room);
            return false;
        }
        let Some(since) = r.gap_since else {
            return false;
        };
        if since.elapsed() + Duration::from_millis(5) < GAP_WAIT {
            return true;
        }
        if let Some((&first, _)) = r.pending.first_key_value() {
            tracing::info!(%room, missing_from = r.applied.unwrap_or(0) + 1, next = first, "room event gap skipped");
            metrics::counter!("signal_room_event_gaps_total").increment(1);
            r.applied = Some(first - 1);
        }
        r.gap_since = None;
        r.drain(room);
        r.gap_since.is_some()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::outbound::Closer;
    use crate::session::{Next, RingLimits, SessionLimits};

    fn session(id: u64, name: &str) -> Session {
        let limits = SessionLimits {
            ring: RingLimits {
                frames: 100,
                bytes: 1 << 20,
            },
            unwritten_frames: 100,
            unwritten_bytes: 1 << 20,
            window: Duration::from_secs(30),
        };
        let s = Session::new(id, UserId::new(name).unwrap(), limits, false);
        s.attach_fresh(id, Closer::default(), crate::outlet::Outlet::default());
        s
    }

    /// The frames queued on `s` so far: (type, user).
    fn frames(s: &Session) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut written = 0;
        while let Next::Frame(n, f) = s.try_next_frame(s.id(), written) {
            written = n;
            let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
            out.push((
                v["type"].as_str().unwrap().to_owned(),
                v["user"].as_str().unwrap_or("").to_owned(),
            ));
        }
        out
    }

    fn u(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    #[test]
    fn events_apply_in_version_order_and_skip_the_joiners_past() {
        let rooms = LocalRooms::default();
        let r = RoomId::new("r").unwrap();
        let alice = session(1, "alice");
        // An event that arrives before the local join it follows waits for it.
        assert!(rooms.apply(&r, 6, EventKind::Joined, &u("carol"), 16));
        rooms.add(&r, &alice, Some(r#"{"type":"Joined","room":"r"}"#), 5);
        // Events before the join (in its Joined) are not told.
        rooms.apply(&r, 4, EventKind::Joined, &u("old"), 16);
        rooms.apply(&r, 5, EventKind::Joined, &u("alice"), 16);
        // 8 before 7: held until 7 arrives.
        assert!(rooms.apply(&r, 8, EventKind::Left, &u("carol"), 16));
        rooms.apply(&r, 7, EventKind::Joined, &u("dave"), 16);
        // A duplicate is dropped.
        rooms.apply(&r, 7, EventKind::Joined, &u("dave"), 16);
        assert_eq!(
            frames(&alice),
            vec![
                ("Joined".into(), "".into()),
                ("MemberJoined".into(), "carol".into()),
                ("MemberJoined".into(), "dave".into()),
                ("MemberLeft".into(), "carol".into()),
            ]
        );
    }

    #[test]
    fn a_gap_is_skipped_after_the_wait() {
        let rooms = LocalRooms::default();
        let r = RoomId::new("r").unwrap();
        let alice = session(1, "alice");
        rooms.add(&r, &alice, None, 1);
        rooms.apply(&r, 1, EventKind::Joined, &u("alice"), 16);
        assert!(rooms.apply(&r, 3, EventKind::Joined, &u("bob"), 16));
        assert!(frames(&alice).is_empty());
        // Not yet: the wait is not over.
        assert!(rooms.flush_gap(&r));
        // Pretend the wait passed.
        rooms.lock().rooms.get_mut(&r).unwrap().gap_since = Some(Instant::now() - GAP_WAIT);
        assert!(!rooms.flush_gap(&r));
        assert_eq!(frames(&alice), vec![("MemberJoined".into(), "bob".into())]);
        // Membership bookkeeping: rooms of a session, removal.
        assert_eq!(rooms.rooms_of(&u("alice"), 1), vec![r.clone()]);
        assert_eq!(rooms.count(&u("alice"), 2), 0);
        assert_eq!(rooms.remove_session(&u("alice"), 1), vec![r.clone()]);
        assert!(rooms.is_empty());
    }
}
