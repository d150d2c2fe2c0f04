//! The node's shared state (a cheap `Clone` handle): identity, local connection table,
//! directory, peers, readiness; and the operations on connections that more than one module
//! needs: deliver into the local table, drain, reassert. Opening and ending sessions is in
//! `session::takeover`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use signal_proto::relay::{DeliverStatus, Location};
use signal_proto::ticket::{ticket_signature, unix_now, TicketKey};
use signal_proto::{NodeId, UserId};
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::directory::Directory;
use crate::error::ApiError;
use crate::hub::Hub;
use crate::mailbox::Mailbox;
use crate::outbound::{PushError, CLOSE_DRAINING};
use crate::peers::Peers;
use crate::presence::Presence;
use crate::rooms::Rooms;
use crate::session::expiry::Expiry;
use crate::session::{Flushes, Origin, RingLimits, SessionLimits};
use crate::tickets::UsedTickets;
use crate::webhooks::Webhooks;

/// Number of per-user locks serialising open (insert + claim + takeover) of the same user on
/// this node.
pub(crate) const CLAIM_STRIPES: usize = 1024;

/// How long a session released by a paced drain counts as in flight (see [`Node::drain`]):
/// a client that does not come back within it does not hold the drain up.
pub const DRAIN_HOLD: Duration = Duration::from_secs(1);

/// State of the registration with central, for `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct CentralStatus {
    pub registered: bool,
    pub last_error: Option<String>,
}

/// The node's shared state. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    instance: String,
    ws_url: String,
    grpc_url: String,
    hub: Hub,
    directory: Directory,
    mailbox: Mailbox,
    webhooks: Webhooks,
    presence: Presence,
    rooms: Rooms,
    peers: Peers,
    tickets: Option<TicketKey>,
    used_tickets: UsedTickets,
    draining: AtomicBool,
    central: Mutex<CentralStatus>,
    next_conn: AtomicU64,
    /// Connections accepted with a central ticket since start (see [`Node::accepted_total`]).
    accepted: AtomicU64,
    claim_locks: Vec<tokio::sync::Mutex<()>>,
    tasks: TaskTracker,
    expiry: Expiry,
    /// Attached connections (the table also holds sessions kept for a resume).
    connections: AtomicUsize,
    /// A reassert is wanted (the heartbeat asks; the main runtime runs it).
    reassert_wanted: tokio::sync::Notify,
    /// Turns for takeovers (`config.takeover_concurrency`).
    takeovers: tokio::sync::Semaphore,
    /// A session was handed over or ended: a paced drain may release the next one.
    drain_progress: tokio::sync::Notify,
    /// Sessions the drain released (1012) that are still here (see [`Node::drain`]).
    released: Mutex<std::collections::HashSet<u64>>,
}

/// Who is connecting, and whether a ticket from central proved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub user: UserId,
    /// `true` for `?token=` (a login central assigned to this node), `false` for dev-auth
    /// `?user=`, which central knows nothing about.
    pub by_ticket: bool,
}

/// The feature modules a node is composed of, each owning its state and its store.
pub struct Features {
    pub directory: Directory,
    pub mailbox: Mailbox,
    pub webhooks: Webhooks,
    pub presence: Presence,
    pub rooms: Rooms,
}

impl Node {
    pub fn new(config: Config, features: Features, ws_url: String, grpc_url: String) -> Node {
        let Features {
            directory,
            mailbox,
            webhooks,
            presence,
            rooms,
        } = features;
        let instance = crate::peers::new_instance();
        let tickets = config.secret.as_ref().map(|s| TicketKey::new(s.as_bytes()));
        let registered = config.central.is_none();
        let peers = Peers::new(config.grpc_key(), config.grpc_tls.clone())
            .with_forward_queue(config.forward_queue);
        let used_tickets = UsedTickets::new(config.max_used_tickets);
        let takeovers = tokio::sync::Semaphore::new(config.takeover_concurrency.max(1));
        Node {
            inner: Arc::new(Inner {
                config,
                instance,
                ws_url,
                grpc_url,
                hub: Hub::default(),
                directory,
                mailbox,
                webhooks,
                presence,
                rooms,
                peers,
                tickets,
                used_tickets,
                draining: AtomicBool::new(false),
                central: Mutex::new(CentralStatus {
                    registered,
                    last_error: None,
                }),
                next_conn: AtomicU64::new(1),
                accepted: AtomicU64::new(0),
                claim_locks: (0..CLAIM_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
                tasks: TaskTracker::new(),
                expiry: Expiry::default(),
                drain_progress: tokio::sync::Notify::new(),
                released: Mutex::default(),
                connections: AtomicUsize::new(0),
                reassert_wanted: tokio::sync::Notify::new(),
                takeovers,
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }
    pub fn id(&self) -> &NodeId {
        &self.inner.config.id
    }
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }
    pub fn ws_url(&self) -> &str {
        &self.inner.ws_url
    }
    pub fn grpc_url(&self) -> &str {
        &self.inner.grpc_url
    }
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }
    pub fn directory(&self) -> &Directory {
        &self.inner.directory
    }
    pub fn mailbox(&self) -> &Mailbox {
        &self.inner.mailbox
    }
    /// Events for the application backend (a no-op without `--webhook-url`).
    pub fn webhooks(&self) -> &Webhooks {
        &self.inner.webhooks
    }

    pub fn presence(&self) -> &Presence {
        &self.inner.presence
    }
    pub fn rooms(&self) -> &Rooms {
        &self.inner.rooms
    }
    pub fn peers(&self) -> &Peers {
        &self.inner.peers
    }
    pub fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }

    /// Connections open now (sessions kept for a resume not counted).
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::Relaxed)
    }

    pub(crate) fn connection_count(&self, delta: isize) {
        if delta > 0 {
            self.inner.connections.fetch_add(1, Ordering::Relaxed);
        } else {
            self.inner.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn expiry(&self) -> &Expiry {
        &self.inner.expiry
    }

    pub(crate) fn claim_lock(&self, stripe: usize) -> &tokio::sync::Mutex<()> {
        &self.inner.claim_locks[stripe % CLAIM_STRIPES]
    }

    pub(crate) fn id_counter(&self) -> &AtomicU64 {
        &self.inner.next_conn
    }

    pub(crate) fn count_accepted(&self) {
        self.inner.accepted.fetch_add(1, Ordering::AcqRel);
    }

    /// The bounds of every session of this node.
    pub fn session_limits(&self) -> SessionLimits {
        let c = &self.inner.config;
        SessionLimits {
            ring: RingLimits {
                frames: c.resume_buffer_frames.max(1),
                bytes: c.resume_buffer_bytes.max(1),
            },
            unwritten_frames: c.outbound_queue.max(1),
            unwritten_bytes: c.outbound_queue_bytes.max(1),
            window: c.resume_window,
        }
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Connections accepted with a central ticket since this node started (monotonic). The
    /// registration loop reports the increase since the last heartbeat central acknowledged,
    /// so that central retires as many pending assignments of this node. Counted after the
    /// connection entered the local table, so a heartbeat that reads this first and the table
    /// size second never reports an accepted connection its `connections` lacks.
    pub fn accepted_total(&self) -> u64 {
        self.inner.accepted.load(Ordering::Acquire)
    }

    pub fn central_status(&self) -> CentralStatus {
        self.inner
            .central
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_central_status(&self, registered: bool, last_error: Option<String>) {
        let mut st = self
            .inner
            .central
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        st.registered |= registered;
        st.last_error = last_error;
    }

    /// Ready: registered with central at least once (when there is one) and not draining.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.central_status().registered
    }

    /// Whether `loc` names a connection of this very process.
    pub fn is_ours(&self, loc: &Location) -> bool {
        loc.node_id == self.id().as_str() && loc.instance == self.inner.instance
    }

    /// Where the directory says session `id` of this node is.
    pub fn location(&self, conn: u64) -> Location {
        Location {
            node_id: self.id().to_string(),
            instance: self.inner.instance.clone(),
            conn,
            grpc_url: self.inner.grpc_url.clone(),
        }
    }

    /// Who is connecting: from `?token=` (verified against this node) or, with dev-auth,
    /// `?user=`.
    pub fn authenticate(
        &self,
        token: Option<&str>,
        user: Option<&str>,
    ) -> Result<Authenticated, ApiError> {
        let dev = self.inner.config.dev_auth;
        let by_dev = |user: UserId| Authenticated {
            user,
            by_ticket: false,
        };
        match (token, &self.inner.tickets) {
            (Some(token), Some(key)) => {
                let now = unix_now();
                let t = key
                    .verify(token, self.id(), now)
                    .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
                // Single-use: a second upgrade with it is refused.
                self.inner
                    .used_tickets
                    .use_once(ticket_signature(token), t.expires_at, now)?;
                Ok(Authenticated {
                    user: t.user,
                    by_ticket: true,
                })
            }
            (Some(_), None) if !(dev && user.is_some()) => Err(ApiError::Unauthorized(
                "this node has no ticket secret (dev-auth only): connect with ?user=".into(),
            )),
            _ => match user {
                Some(u) if dev => UserId::new(u)
                    .map(by_dev)
                    .map_err(|e| ApiError::BadRequest(format!("bad user id: {e}"))),
                Some(_) => Err(ApiError::Unauthorized(
                    "?user= needs dev-auth on this node: connect with ?token=<ticket>".into(),
                )),
                None => Err(ApiError::Unauthorized("missing ticket (?token=)".into())),
            },
        }
    }

    /// The directory said `user` was at `prev`: close that connection (4409) if it is on
    /// another live node. Local ones were closed when the table entry was replaced; entries of
    /// a previous life of this node id are stale.
    pub(crate) fn replace_elsewhere(&self, user: &UserId, prev: Location) {
        if prev.node_id == self.id().as_str() {
            return;
        }
        let peers = self.inner.peers.clone();
        let user = user.clone();
        tokio::spawn(async move {
            match peers.kick(user.as_str(), &prev).await {
                Ok(closed) => {
                    tracing::debug!(%user, node = %prev.node_id, closed, "kicked previous connection")
                }
                Err(e) => {
                    tracing::info!(%user, node = %prev.node_id, error = %e, "cannot kick previous connection")
                }
            }
        });
    }

    /// Queues `frame` (without `n`) on the local session of `user`, if it is (still)
    /// `expect`.
    pub fn deliver_local(
        &self,
        user: &UserId,
        frame: &str,
        expect: Option<&Location>,
        origin: Origin,
        flushes: Option<&mut Flushes>,
    ) -> DeliverStatus {
        let Some(s) = self.inner.hub.get(user) else {
            return DeliverStatus::NotHere;
        };
        if let Some(exp) = expect {
            if !self.is_ours(exp) || exp.conn != s.id() {
                return DeliverStatus::NotHere;
            }
        }
        let pushed = match flushes {
            Some(f) => f.push(&s, frame, origin),
            None => s.push(frame, origin),
        };
        match pushed {
            Ok(_) => DeliverStatus::Delivered,
            Err(PushError::Full) => DeliverStatus::PeerOverloaded,
            Err(PushError::Closed) => DeliverStatus::NotHere,
        }
    }

    /// Starts draining: `/readyz` and new upgrades answer 503 from now on.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
        metrics::gauge!("signal_draining").set(1.0);
    }

    /// Closes every connection with 1012, paced: spread evenly over at least `window`, and
    /// at most `--drain-inflight` sessions released and not yet taken over by another node
    /// at once (each counts for at most [`DRAIN_HOLD`]), so that the other nodes get the
    /// clients at the rate they adopt them instead of a herd that queues there (the queue
    /// is the time a client is away: its watchers' notifications wait in its buffer). The
    /// i-th session is released by `start + (window + resume window / 2) * i / n` however
    /// slow the others are. Then keeps serving the takeover of the sessions it keeps until
    /// each is resumed elsewhere or `start + window + resume window` (the bound as before:
    /// deployments size their grace period by it), ends the rest, and waits (bounded) for
    /// the connection tasks and their notices to finish.
    pub async fn drain(&self, window: Duration) {
        self.set_draining();
        let sessions = self.inner.hub.snapshot();
        let n = sessions.len();
        let resume_window = self.inner.config.resume_window;
        let max_inflight = self.inner.config.drain_inflight;
        tracing::info!(node = %self.id(), sessions = n, window_ms = window.as_millis() as u64, max_inflight, "draining");
        let start = tokio::time::Instant::now();
        let stretch = window + resume_window / 2;
        let cut_short = || {
            self.inner
                .config
                .handover_stop
                .as_ref()
                .is_some_and(|t| t.is_cancelled())
        };
        let mut inflight = std::collections::VecDeque::new();
        let mut waited = Duration::ZERO;
        for (i, (_, s)) in sessions.into_iter().enumerate() {
            let share = i as f64 / n as f64;
            tokio::time::sleep_until(start + window.mul_f64(share)).await;
            if max_inflight > 0 && !cut_short() {
                let t = tokio::time::Instant::now();
                self.drain_turn(&mut inflight, max_inflight, start + stretch.mul_f64(share))
                    .await;
                waited += t.elapsed();
            }
            if let Some(c) = s.closer() {
                if max_inflight > 0 {
                    self.released().insert(s.id());
                    inflight.push_back((tokio::time::Instant::now(), s.id()));
                }
                c.close(CLOSE_DRAINING, "node draining");
            }
        }
        // Connections that slipped in while the snapshot was taken.
        for (_, s) in self.inner.hub.snapshot() {
            if let Some(c) = s.closer() {
                c.close(CLOSE_DRAINING, "node draining");
            }
        }
        tracing::info!(node = %self.id(), sessions = n, secs = start.elapsed().as_secs_f64(), paced_secs = waited.as_secs_f64(), "drain: every connection closed");
        let handover_until =
            (start + window + resume_window).max(tokio::time::Instant::now() + resume_window / 2);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        while !self.inner.hub.is_empty()
            && tokio::time::Instant::now() < handover_until
            && !cut_short()
        {
            tick.tick().await;
        }
        let left = self.inner.hub.snapshot();
        if !left.is_empty() {
            tracing::info!(node = %self.id(), sessions = left.len(), "drain: sessions not resumed elsewhere end");
        }
        for (_, s) in left {
            self.end_session(&s, "drained");
        }
        self.inner.tasks.close();
        if tokio::time::timeout(Duration::from_secs(10), self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(node = %self.id(), "connections still open after the drain window");
        }
    }

    /// Waits until fewer than `max` of the sessions released by the drain are still here
    /// (not yet taken over or ended; each counts for at most [`DRAIN_HOLD`]), or `latest`.
    async fn drain_turn(
        &self,
        inflight: &mut std::collections::VecDeque<(tokio::time::Instant, u64)>,
        max: usize,
        latest: tokio::time::Instant,
    ) {
        loop {
            // Created before the check: a handover between the check and the wait leaves a
            // permit, so it is not missed.
            let progressed = self.inner.drain_progress.notified();
            let (count, oldest) = {
                let mut released = self.released();
                // Oldest first: gone ones and those past the hold leave the queue.
                while let Some((at, id)) = inflight.front() {
                    if at.elapsed() >= DRAIN_HOLD {
                        released.remove(id);
                    } else if released.contains(id) {
                        break;
                    }
                    inflight.pop_front();
                }
                (released.len(), inflight.front().map(|(at, _)| *at))
            };
            let Some(oldest) = oldest else {
                return;
            };
            if count < max || tokio::time::Instant::now() >= latest {
                return;
            }
            let until = (oldest + DRAIN_HOLD).min(latest);
            tokio::select! {
                _ = progressed => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    fn released(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<u64>> {
        self.inner
            .released
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Session `id` left this node (handed over or ended): a paced drain may go on.
    pub(crate) fn drain_progressed(&self, id: u64) {
        if self.is_draining() && self.released().remove(&id) {
            self.inner.drain_progress.notify_one();
        }
    }

    /// Waits for a turn to take a session over from another node (held until the session
    /// and its presence and rooms are installed here).
    pub(crate) async fn takeover_turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        // Never closed: `acquire` fails only on a closed semaphore.
        self.inner.takeovers.acquire().await.ok()
    }

    /// Asks for a [`reassert`](Self::reassert) on the main runtime without waiting for it
    /// (the heartbeat loop must not wait for Redis work); requests made meanwhile coalesce.
    pub fn request_reassert(&self) {
        self.inner.reassert_wanted.notify_one();
    }

    /// Resolves once a reassert has been requested.
    pub async fn reassert_requested(&self) {
        self.inner.reassert_wanted.notified().await;
    }

    /// Puts this node's live connections back into the directory (after Redis lost them);
    /// never overwrites a newer entry.
    pub async fn reassert(&self) {
        let entries: Vec<(UserId, Location)> = self
            .inner
            .hub
            .snapshot()
            .into_iter()
            .map(|(u, s)| {
                let loc = self.location(s.id());
                (u, loc)
            })
            .collect();
        match self.inner.directory.reassert(&entries).await {
            Ok(n) => {
                tracing::info!(node = %self.id(), restored = n, live = entries.len(), "directory entries reasserted")
            }
            Err(e) => {
                tracing::warn!(node = %self.id(), error = %e, "cannot reassert directory entries")
            }
        }
        // The same moments may have cost presence records (Redis lost them, or other nodes
        // announced this node's users offline while central did not list it).
        self.presence().resync(self).await;
        self.inner.rooms.reassert(self).await;
    }
}
