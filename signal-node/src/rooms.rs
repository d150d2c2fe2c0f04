//! Rooms (contract section 8): owns room membership — the [`store::RoomStore`] (room -> members
//! and room -> node instances, in Redis or memory), the node's [`local::LocalRooms`] index —,
//! the room limits, and the two gRPC calls (`RoomMessage`, `RoomEvent`) that carry a room
//! message or a membership change once to each node instance holding members. Hooks: join,
//! leave, message (from the connection), session end (leave every room), handover and
//! takeover (the membership moves, no events), dead nodes (their members leave).
//!
//! A room message reads the room's node set from the node's cache (`LocalRooms`), not from the
//! store. A node whose join adds it to a room's node set (or whose join or takeover moves a
//! member between nodes) tells every node of the set (and the previous one) before the joiner
//! gets its Joined; every node drops its copy when it hears a membership event or such a
//! change, before it tells its own members. So a message sent after the sender's node heard of
//! a join reaches the joiner.

pub mod local;
pub mod store;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use signal_proto::relay::{
    Location, RoomEventKind, RoomEventRequest, RoomEventResponse, RoomMessageRequest,
    RoomMessageResponse,
};
use signal_proto::rooms::{Joined, Left};
use signal_proto::{Accepted, ChatMessage, ErrorType, Message, RoomId, UserId};

use crate::node::Node;
use crate::peers::{Liveness, GONE_TIMEOUT, REQUEST_TIMEOUT};
use crate::session::{Flushes, Origin, Session};
pub use local::{EventKind, LocalRooms, GAP_WAIT};
pub use store::{
    JoinOutcome, LeaveOutcome, MemberEntry, Moved, NodeKey, RoomStore, RoomStoreError,
};

/// Default `--max-room-members`.
pub const DEFAULT_MAX_ROOM_MEMBERS: usize = 100;
/// Default `--max-rooms` (per session).
pub const DEFAULT_MAX_ROOMS: usize = 32;

/// Stripes of the per-room lock that serialises the joins of one room on this node.
const JOIN_STRIPES: usize = 64;

/// Bounds of rooms (from the node's flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomLimits {
    /// `--max-room-members`: past it a Join gets ROOMFULL.
    pub max_members: usize,
    /// `--max-rooms`: rooms one session may join; past it TOOMANY.
    pub max_rooms: usize,
}

impl Default for RoomLimits {
    fn default() -> Self {
        RoomLimits {
            max_members: DEFAULT_MAX_ROOM_MEMBERS,
            max_rooms: DEFAULT_MAX_ROOMS,
        }
    }
}

/// Why a room request was refused: the Error its sender gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRefusal {
    pub error: ErrorType,
    pub description: String,
}

fn refusal(error: ErrorType, description: impl Into<String>) -> RoomRefusal {
    metrics::counter!("signal_room_refused_total", "reason" => error.as_str()).increment(1);
    RoomRefusal {
        error,
        description: description.into(),
    }
}

fn unavailable(e: &RoomStoreError) -> RoomRefusal {
    refusal(ErrorType::Unavailable, format!("{e}; retry later"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The node's rooms. A cheap `Clone` handle.
#[derive(Clone, Debug)]
pub struct Rooms {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: RoomStore,
    local: LocalRooms,
    limits: RoomLimits,
    /// Joins of one room on this node run one at a time (script, then local index), so local
    /// members are added in version order (see `LocalRooms::add`).
    join_locks: Vec<tokio::sync::Mutex<()>>,
}

impl Rooms {
    pub fn new(store: RoomStore, limits: RoomLimits) -> Rooms {
        Rooms {
            inner: Arc::new(Inner {
                store,
                local: LocalRooms::default(),
                limits,
                join_locks: (0..JOIN_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
            }),
        }
    }

    pub fn limits(&self) -> RoomLimits {
        self.inner.limits
    }

    pub fn local(&self) -> &LocalRooms {
        &self.inner.local
    }

    /// Events kept waiting for a gap, per room.
    fn pending_bound(&self) -> usize {
        self.inner.limits.max_members.saturating_mul(2).max(16)
    }

    fn me(node: &Node) -> NodeKey {
        NodeKey {
            instance: node.instance().to_owned(),
            node_id: node.id().to_string(),
            grpc_url: node.grpc_url().to_owned(),
        }
    }

    fn entry(node: &Node, session: &Session) -> MemberEntry {
        MemberEntry {
            session: session.id(),
            node: Self::me(node),
        }
    }

    /// `Join`: a member afterwards (Joined pushed to the session), or the refusal.
    pub async fn join(
        &self,
        node: &Node,
        session: &Session,
        room: RoomId,
    ) -> Result<(), RoomRefusal> {
        let user = session.user().clone();
        let local = &self.inner.local;
        if !local.is_member(&user, session.id(), &room)
            && local.count(&user, session.id()) >= self.inner.limits.max_rooms
        {
            return Err(refusal(
                ErrorType::TooMany,
                format!(
                    "a session may join at most {} rooms",
                    self.inner.limits.max_rooms
                ),
            ));
        }
        let stripe = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            room.hash(&mut h);
            (h.finish() as usize) % JOIN_STRIPES
        };
        let guard = self.inner.join_locks[stripe].lock().await;
        local.join_started(&room);
        let r = self.join_locked(node, session, &room, &user).await;
        local.join_done(&room);
        drop(guard);
        let Some((version, nodes_changed, nodes)) = r? else {
            return Ok(());
        };
        metrics::counter!("signal_room_joins_total").increment(1);
        tracing::debug!(%user, %room, version, "joined room");
        if nodes_changed {
            self.apply_here(&room, version, EventKind::Joined, &user);
        } else {
            self.fan_out_event(node, &room, version, EventKind::Joined, &user, nodes)
                .await;
        }
        Ok(())
    }

    /// The part of a join under the room's join lock: the store, the other nodes when the node
    /// set changed, the local member. `None`: a member already (no event).
    async fn join_locked(
        &self,
        node: &Node,
        session: &Session,
        room: &RoomId,
        user: &UserId,
    ) -> Result<Option<(u64, bool, Vec<NodeKey>)>, RoomRefusal> {
        let local = &self.inner.local;
        let entry = Self::entry(node, session);
        let outcome = self
            .inner
            .store
            .join(room, user, &entry, self.inner.limits.max_members)
            .await
            .map_err(|e| unavailable(&e))?;
        let (version, mut members, nodes, nodes_changed, previous) = match outcome {
            JoinOutcome::Full => {
                return Err(refusal(
                    ErrorType::RoomFull,
                    format!(
                        "room {room} has {} members, its limit",
                        self.inner.limits.max_members
                    ),
                ))
            }
            JoinOutcome::Joined {
                version,
                members,
                nodes,
                nodes_changed,
                previous,
            } => (version, members, nodes, nodes_changed, previous),
        };
        members.sort();
        let joined = Message::Joined(Joined {
            room: room.clone(),
            members,
        })
        .to_json();
        if nodes_changed {
            // The other nodes cache the room's node set: they hear of this node (the event
            // drops their copy) before the joiner gets its Joined, so that what a member sends
            // after this join reaches the joiner.
            let mut targets = nodes.clone();
            targets.extend(previous.filter(|p| !nodes.contains(p)));
            let kind = if version > 0 {
                RoomEventKind::MemberJoined
            } else {
                RoomEventKind::NodesChanged
            };
            self.send_event(node, room, version, kind, user, targets)
                .await;
        }
        local.add(room, session, Some(&joined), version);
        Ok((version > 0).then_some((version, nodes_changed, nodes)))
    }

    /// `Leave`: Left pushed to the session, or NOTMEMBER.
    pub async fn leave(
        &self,
        node: &Node,
        session: &Session,
        room: RoomId,
    ) -> Result<(), RoomRefusal> {
        let user = session.user().clone();
        if !self.inner.local.is_member(&user, session.id(), &room) {
            return Err(refusal(
                ErrorType::NotMember,
                format!("you have not joined room {room}"),
            ));
        }
        let out = self
            .inner
            .store
            .leave(&room, &user, &Self::entry(node, session))
            .await
            .map_err(|e| unavailable(&e))?;
        self.inner.local.remove(&room, &user, session.id());
        let left = Message::Left(Left { room: room.clone() }).to_json();
        let _ = session.push(&left, Origin::Node);
        metrics::counter!("signal_room_leaves_total", "reason" => "leave").increment(1);
        if let Some(out) = out {
            self.fan_out_event(node, &room, out.version, EventKind::Left, &user, out.nodes)
                .await;
        }
        Ok(())
    }

    /// A room message (validated, `room` set, `from` checked): pushed to every other member,
    /// once per node instance that holds members. Returns the sender's Accepted.
    pub async fn message(
        &self,
        node: &Node,
        session: &Session,
        mut msg: ChatMessage,
    ) -> Result<Accepted, RoomRefusal> {
        let user = session.user().clone();
        let Some(room) = msg.room.clone() else {
            return Err(refusal(
                ErrorType::BadMessage,
                "a room Message needs `room`",
            ));
        };
        let max_body = node.mailbox().limits().max_body_bytes;
        if msg.body.len() > max_body {
            return Err(refusal(
                ErrorType::TooLarge,
                format!(
                    "body of {} bytes exceeds the limit of {max_body} bytes",
                    msg.body.len()
                ),
            ));
        }
        if !self.inner.local.is_member(&user, session.id(), &room) {
            return Err(refusal(
                ErrorType::NotMember,
                format!("you have not joined room {room}"),
            ));
        }
        let nodes = self.nodes_of(&room).await?;
        let ts = now_ms();
        msg.from = Some(user.clone());
        msg.to = None;
        msg.ts = Some(ts);
        msg.delayed = None;
        let id = msg.id.clone();
        let frame = Message::Message(msg).to_json();
        // One forward to every other node instance, started (polled once: the requests are
        // queued on their channels) before this node's own fan-out, so that the nodes fan out
        // in parallel rather than one after the other; the sender's next frame is read only
        // after all answered (per-sender order).
        let me = node.instance();
        let calls = nodes.iter().filter(|k| k.instance != me).map(|k| {
            let k = k.clone();
            let req = RoomMessageRequest {
                room: room.to_string(),
                instance: k.instance.clone(),
                from: user.to_string(),
                frame: frame.clone(),
            };
            async move {
                let loc = location(&k);
                let liveness = node.peers().liveness(&loc);
                let timeout = if liveness == Liveness::Gone {
                    GONE_TIMEOUT
                } else {
                    REQUEST_TIMEOUT
                };
                metrics::counter!("signal_room_forwards_total", "route" => "remote").increment(1);
                let r = node.peers().room_message(&k.grpc_url, req, timeout).await;
                (k, liveness, r)
            }
        });
        let remote = join_all(calls);
        tokio::pin!(remote);
        let started = futures::poll!(&mut remote);
        let mut recipients = self.deliver_here(&room, &user, &frame);
        metrics::counter!("signal_room_forwards_total", "route" => "local").increment(1);
        let answers = match started {
            std::task::Poll::Ready(answers) => answers,
            std::task::Poll::Pending => remote.await,
        };
        for (k, liveness, r) in answers {
            match r {
                Ok(RoomMessageResponse {
                    wrong_instance: false,
                    delivered,
                }) => recipients += delivered,
                Ok(_) => self.clean_instance(node, &room, &k.node_id, &k.instance),
                Err(e) => {
                    tracing::debug!(%room, node = %k.node_id, error = %e, "room forward failed");
                    metrics::counter!("signal_room_forward_failures_total").increment(1);
                    if liveness == Liveness::Gone {
                        self.clean_instance(node, &room, &k.node_id, &k.instance);
                    }
                }
            }
        }
        metrics::counter!("signal_room_messages_total").increment(1);
        Ok(Accepted {
            id,
            to: None,
            room: Some(room),
            ts,
            stored: None,
            recipients: Some(recipients),
            extra: Default::default(),
        })
    }

    /// The node instances holding members of `room`: the cached set, or read from the store
    /// (and cached unless a change came in meanwhile).
    async fn nodes_of(&self, room: &RoomId) -> Result<Arc<[NodeKey]>, RoomRefusal> {
        let gen = match self.inner.local.cached_nodes(room) {
            Ok(nodes) => {
                metrics::counter!("signal_room_node_set_reads_total", "source" => "cache")
                    .increment(1);
                return Ok(nodes);
            }
            Err(gen) => gen,
        };
        metrics::counter!("signal_room_node_set_reads_total", "source" => "store").increment(1);
        let nodes: Arc<[NodeKey]> = self
            .inner
            .store
            .nodes(room)
            .await
            .map_err(|e| unavailable(&e))?
            .into();
        self.inner.local.fill_nodes(room, gen, nodes.clone());
        Ok(nodes)
    }

    /// Pushes `frame` to the local members of `room` but `from`; returns how many took it.
    /// Every member's frame is numbered first, then written (see `outlet`).
    fn deliver_here(&self, room: &RoomId, from: &UserId, frame: &str) -> u64 {
        let mut n = 0;
        let mut flushes = Flushes::default();
        for s in self.inner.local.recipients(room, from) {
            // A slow member's own bounds apply (1013, session kept); the others go on.
            if flushes.push(&s, frame, Origin::Node).is_ok() {
                n += 1;
            }
        }
        flushes.spread();
        metrics::counter!("signal_room_deliveries_total").increment(n);
        n
    }

    /// Applies a membership event here and sends it once to every other node instance.
    async fn fan_out_event(
        &self,
        node: &Node,
        room: &RoomId,
        version: u64,
        kind: EventKind,
        user: &UserId,
        nodes: Vec<NodeKey>,
    ) {
        self.inner.local.invalidate_nodes(room);
        self.apply_here(room, version, kind, user);
        let wire_kind = match kind {
            EventKind::Joined => RoomEventKind::MemberJoined,
            EventKind::Left => RoomEventKind::MemberLeft,
        };
        self.send_event(node, room, version, wire_kind, user, nodes)
            .await;
    }

    /// Sends a membership event (or a node-set change) once to every other node instance of
    /// `nodes`, and waits for their answers (or their timeouts).
    async fn send_event(
        &self,
        node: &Node,
        room: &RoomId,
        version: u64,
        wire_kind: RoomEventKind,
        user: &UserId,
        nodes: Vec<NodeKey>,
    ) {
        let me = node.instance();
        let calls = nodes.into_iter().filter(|k| k.instance != me).map(|k| {
            let req = RoomEventRequest {
                room: room.to_string(),
                instance: k.instance.clone(),
                version,
                kind: wire_kind as i32,
                user: user.to_string(),
            };
            async move {
                let liveness = node.peers().liveness(&location(&k));
                let timeout = if liveness == Liveness::Gone {
                    GONE_TIMEOUT
                } else {
                    REQUEST_TIMEOUT
                };
                let r = node.peers().room_event(&k.grpc_url, req, timeout).await;
                (k, liveness, r)
            }
        });
        for (k, liveness, r) in join_all(calls).await {
            match r {
                Ok(RoomEventResponse {
                    wrong_instance: false,
                }) => {}
                Ok(_) => self.clean_instance(node, room, &k.node_id, &k.instance),
                Err(e) => {
                    tracing::debug!(%room, node = %k.node_id, error = %e, "room event forward failed");
                    metrics::counter!("signal_room_forward_failures_total").increment(1);
                    if liveness == Liveness::Gone {
                        self.clean_instance(node, room, &k.node_id, &k.instance);
                    }
                }
            }
        }
    }

    /// Applies an event to the local members, in version order (arms the gap timer).
    fn apply_here(&self, room: &RoomId, version: u64, kind: EventKind, user: &UserId) {
        if self
            .inner
            .local
            .apply(room, version, kind, user, self.pending_bound())
        {
            self.arm_gap(room.clone());
        }
    }

    fn arm_gap(&self, room: RoomId) {
        let rooms = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(GAP_WAIT).await;
                if !rooms.inner.local.flush_gap(&room) {
                    break;
                }
            }
        });
    }

    /// `RoomMessage` from another node: push to the local members.
    pub fn on_room_message(&self, node: &Node, req: &RoomMessageRequest) -> RoomMessageResponse {
        if req.instance != node.instance() {
            return RoomMessageResponse {
                delivered: 0,
                wrong_instance: true,
            };
        }
        let (Ok(room), Ok(from)) = (
            RoomId::new(req.room.as_str()),
            UserId::new(req.from.as_str()),
        ) else {
            return RoomMessageResponse::default();
        };
        RoomMessageResponse {
            delivered: self.deliver_here(&room, &from, &req.frame),
            wrong_instance: false,
        }
    }

    /// `RoomEvent` from another node.
    pub fn on_room_event(&self, node: &Node, req: &RoomEventRequest) -> RoomEventResponse {
        if req.instance != node.instance() {
            return RoomEventResponse {
                wrong_instance: true,
            };
        }
        let kind = match RoomEventKind::try_from(req.kind) {
            Ok(RoomEventKind::MemberJoined) => Some(EventKind::Joined),
            Ok(RoomEventKind::MemberLeft) => Some(EventKind::Left),
            Ok(RoomEventKind::NodesChanged) => None,
            _ => return RoomEventResponse::default(),
        };
        let Ok(room) = RoomId::new(req.room.as_str()) else {
            return RoomEventResponse::default();
        };
        // Before the members hear of it: what they send next uses the new node set.
        self.inner.local.invalidate_nodes(&room);
        if let (Some(kind), Ok(user)) = (kind, UserId::new(req.user.as_str())) {
            self.apply_here(&room, req.version, kind, &user);
        }
        RoomEventResponse::default()
    }

    /// The session ended: it leaves every room (MemberLeft to the others).
    pub fn session_ended(&self, node: &Node, session: &Session) {
        let user = session.user().clone();
        let rooms = self.inner.local.remove_session(&user, session.id());
        if rooms.is_empty() {
            return;
        }
        let entry = Self::entry(node, session);
        let this = self.clone();
        let node = node.clone();
        node.clone().tasks().spawn(async move {
            for room in rooms {
                match this.inner.store.leave(&room, &user, &entry).await {
                    Ok(Some(out)) => {
                        metrics::counter!("signal_room_leaves_total", "reason" => "session_end")
                            .increment(1);
                        this.fan_out_event(&node, &room, out.version, EventKind::Left, &user, out.nodes)
                            .await;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        // The entry stays until a node finds this instance dead or the user
                        // joins again; counted in signal_room_store_errors_total.
                        tracing::warn!(%user, %room, error = %e, "cannot leave room at session end");
                    }
                }
            }
        });
    }

    /// The session is handed over to another node: it stays a member (no event); returns
    /// its rooms for the `TakeSession` answer.
    pub fn handed_over(&self, session: &Session) -> Vec<String> {
        self.inner
            .local
            .remove_session(session.user(), session.id())
            .into_iter()
            .map(RoomId::into_string)
            .collect()
    }

    /// A session taken over from another node with `rooms`: its memberships move here.
    pub async fn adopt(&self, node: &Node, session: &Session, rooms: Vec<String>) {
        let entry = Self::entry(node, session);
        for room in rooms.into_iter().take(self.inner.limits.max_rooms) {
            let Ok(room) = RoomId::new(room) else {
                continue;
            };
            match self
                .inner
                .store
                .move_member(&room, session.user(), &entry)
                .await
            {
                Ok(Some(moved)) => {
                    self.inner.local.add(&room, session, None, 0);
                    if moved.nodes_changed {
                        let mut targets = moved.nodes;
                        targets.extend(moved.previous.filter(|p| !targets.contains(p)));
                        self.send_event(
                            node,
                            &room,
                            0,
                            RoomEventKind::NodesChanged,
                            session.user(),
                            targets,
                        )
                        .await;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(user = %session.user(), %room, error = %e, "cannot move room membership on takeover")
                }
            }
        }
    }

    /// Puts this node's memberships back into the store (after Redis came back: it may have
    /// lost them). An entry still there is left as it is; no events are sent.
    /// The store has its own connection, which may notice the outage's end a moment after the
    /// directory's: retried with backoff for a few seconds.
    pub async fn reassert(&self, node: &Node) {
        let mut backoff = std::time::Duration::from_millis(100);
        for _ in 0..8 {
            match self.try_reassert(node).await {
                Ok(restored) => {
                    if restored > 0 {
                        tracing::info!(node = %node.id(), restored, "room memberships reasserted");
                    }
                    return;
                }
                Err(e) => {
                    tracing::info!(node = %node.id(), error = %e, "cannot reassert room memberships yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                }
            }
        }
        tracing::warn!(node = %node.id(), "room memberships not reasserted");
    }

    async fn try_reassert(&self, node: &Node) -> Result<u64, RoomStoreError> {
        // The store may have lost node sets: every cached copy is read again.
        self.inner.local.invalidate_all_nodes();
        let mut restored = 0u64;
        for (room, sessions) in self.inner.local.memberships() {
            for s in sessions {
                let entry = Self::entry(node, &s);
                let max = self.inner.limits.max_members;
                if let JoinOutcome::Joined {
                    version,
                    nodes,
                    nodes_changed,
                    ..
                } = self.inner.store.join(&room, s.user(), &entry, max).await?
                {
                    restored += u64::from(version > 0);
                    if nodes_changed {
                        // The others may have cached a set without this node meanwhile.
                        self.send_event(
                            node,
                            &room,
                            0,
                            RoomEventKind::NodesChanged,
                            s.user(),
                            nodes,
                        )
                        .await;
                    }
                }
            }
        }
        Ok(restored)
    }

    /// Central's live set lost these node instances: their members leave every room this node
    /// has members in (compare-and-delete, so only one node announces each MemberLeft).
    pub fn nodes_departed(&self, node: &Node, gone: Vec<(String, String)>) {
        if gone.is_empty() {
            return;
        }
        for room in self.inner.local.room_ids() {
            for (node_id, instance) in &gone {
                self.clean_instance(node, &room, node_id, instance);
            }
        }
    }

    /// Removes the members of node instance `instance` from `room` (in the background).
    fn clean_instance(&self, node: &Node, room: &RoomId, node_id: &str, instance: &str) {
        self.inner.local.invalidate_nodes(room);
        let this = self.clone();
        let node = node.clone();
        let room = room.clone();
        let node_id = node_id.to_owned();
        let instance = instance.to_owned();
        tokio::spawn(async move {
            let members = match this.inner.store.members(&room).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::info!(%room, error = %e, "cannot read room members for the cleanup");
                    return;
                }
            };
            for (user, entry) in members {
                if entry.node.instance != instance {
                    continue;
                }
                if let Ok(Some(out)) = this.inner.store.leave(&room, &user, &entry).await {
                    tracing::info!(%room, %user, node = %node_id, "member of a dead node left the room");
                    metrics::counter!("signal_room_leaves_total", "reason" => "node_gone")
                        .increment(1);
                    this.fan_out_event(
                        &node,
                        &room,
                        out.version,
                        EventKind::Left,
                        &user,
                        out.nodes,
                    )
                    .await;
                }
            }
        });
    }
}

fn location(k: &NodeKey) -> Location {
    Location {
        node_id: k.node_id.clone(),
        instance: k.instance.clone(),
        conn: 0,
        grpc_url: k.grpc_url.clone(),
    }
}
