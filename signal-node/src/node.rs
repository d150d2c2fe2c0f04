//! The node's shared state (a cheap `Clone` handle): identity, local connection table,
//! directory, peers, readiness; and the operations on connections that more than one module
//! needs: open (claim + replace), deliver into the local table, kick, drain, reassert.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use signal_proto::relay::{DeliverStatus, Location};
use signal_proto::roap::Welcome;
use signal_proto::ticket::{ticket_signature, unix_now, TicketKey};
use signal_proto::{Message, NodeId, UserId};
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::directory::Directory;
use crate::error::ApiError;
use crate::hub::{ConnHandle, Hub};
use crate::outbound::{self, Closer, OutboundRx, PushError, CLOSE_DRAINING, CLOSE_REPLACED};
use crate::peers::Peers;
use crate::tickets::UsedTickets;

/// Number of per-user locks serialising open (insert + claim) of the same user on this node.
const CLAIM_STRIPES: usize = 64;

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
}

/// Who is connecting, and whether a ticket from central proved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub user: UserId,
    /// `true` for `?token=` (a login central assigned to this node), `false` for dev-auth
    /// `?user=`, which central knows nothing about.
    pub by_ticket: bool,
}

/// A connection that has been accepted (in the table and the directory) but whose socket is
/// not served yet. Dropping it undoes the registration, so a failed upgrade leaves nothing.
pub struct Pending {
    pub node: Node,
    pub user: UserId,
    pub handle: ConnHandle,
    pub rx: Option<OutboundRx>,
    pub opened: Instant,
    /// Set once `finish` ran: nothing left to undo on drop.
    finished: bool,
}

impl Pending {
    /// Removes the connection from the table and releases its directory entry (only if it is
    /// still this connection), awaiting the release so that a draining node leaves no entry.
    pub async fn finish(mut self) {
        self.finished = true;
        let closer = self.handle.out.closer();
        closer.close(outbound::CLOSE_NORMAL, "closed");
        self.node.inner.hub.remove_if(&self.user, self.handle.conn);
        if let Err(e) = self
            .node
            .inner
            .directory
            .release(&self.user, &self.handle.location)
            .await
        {
            tracing::warn!(user = %self.user, error = %e, "cannot release directory entry");
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let node = self.node.clone();
        let user = self.user.clone();
        let handle = self.handle.clone();
        handle.out.closer().close(outbound::CLOSE_NORMAL, "closed");
        node.inner.hub.remove_if(&user, handle.conn);
        let dir = node.inner.directory.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = dir.release(&user, &handle.location).await {
                    tracing::warn!(%user, error = %e, "cannot release directory entry");
                }
            });
        }
    }
}

impl Node {
    pub fn new(config: Config, directory: Directory, ws_url: String, grpc_url: String) -> Node {
        let instance = format!("{:016x}", rand::random::<u64>());
        let tickets = config.secret.as_ref().map(|s| TicketKey::new(s.as_bytes()));
        let registered = config.central.is_none();
        let peers = Peers::new(config.grpc_key(), config.grpc_tls.clone());
        let used_tickets = UsedTickets::new(config.max_used_tickets);
        Node {
            inner: Arc::new(Inner {
                config,
                instance,
                ws_url,
                grpc_url,
                hub: Hub::default(),
                directory,
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
    pub fn peers(&self) -> &Peers {
        &self.inner.peers
    }
    pub fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
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

    fn location(&self, conn: u64) -> Location {
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

    /// Accepts a connection of `user`: queues Welcome, enters it in the local table (closing a
    /// previous local connection with 4409), claims the directory entry (kicking the previous
    /// location on another node) — all before the upgrade, so that the user is reachable from
    /// every node once Welcome is sent. Fails with 503 while draining or when the directory
    /// is down. A connection by ticket counts in [`Node::accepted_total`].
    pub async fn open(&self, auth: Authenticated) -> Result<Pending, ApiError> {
        let Authenticated { user, by_ticket } = auth;
        if self.is_draining() {
            return Err(ApiError::Draining);
        }
        let stripe = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            user.hash(&mut h);
            (h.finish() as usize) % CLAIM_STRIPES
        };
        let _guard = self.inner.claim_locks[stripe].lock().await;
        let conn = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let location = self.location(conn);
        let closer = Closer::default();
        let cfg = &self.inner.config;
        let (out, rx) = outbound::queue(cfg.outbound_queue, cfg.outbound_queue_bytes, closer);
        let welcome = Message::Welcome(Welcome {
            user: user.clone(),
            node: self.id().clone(),
            extra: Default::default(),
        });
        // The queue is empty: the Welcome always fits.
        let _ = out.push(welcome.to_json());
        let handle = ConnHandle {
            conn,
            location: location.clone(),
            out,
        };
        // In the table before the claim: once the directory names this connection, a Deliver
        // for it must find it here.
        let replaced = self.inner.hub.insert(user.clone(), handle.clone());
        let pending = Pending {
            node: self.clone(),
            user: user.clone(),
            handle,
            rx: Some(rx),
            opened: Instant::now(),
            finished: false,
        };
        let prev = match self.inner.directory.claim(&user, &location).await {
            Ok(prev) => prev,
            Err(e) => {
                tracing::warn!(%user, error = %e, "directory claim failed: refusing the connection");
                // The previous connection, if any, stays as it was.
                if let Some(old) = replaced {
                    self.inner.hub.restore(&user, conn, old);
                }
                return Err(ApiError::DirectoryUnavailable(e.to_string()));
            }
        };
        if let Some(old) = replaced {
            old.out
                .closer()
                .close(CLOSE_REPLACED, "replaced by a newer connection");
        }
        if let Some(prev) = prev {
            self.replace_elsewhere(&user, prev);
        }
        if by_ticket {
            self.inner.accepted.fetch_add(1, Ordering::AcqRel);
        }
        Ok(pending)
    }

    /// The directory said `user` was at `prev`: close that connection (4409) if it is on
    /// another live node. Local ones were closed when the table entry was replaced; entries of
    /// a previous life of this node id are stale.
    fn replace_elsewhere(&self, user: &UserId, prev: Location) {
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

    /// Queues `frame` on the local connection of `user`, if it is (still) `expect`.
    pub fn deliver_local(
        &self,
        user: &UserId,
        frame: impl Into<axum::extract::ws::Utf8Bytes>,
        expect: Option<&Location>,
    ) -> DeliverStatus {
        let Some(h) = self.inner.hub.get(user) else {
            return DeliverStatus::NotHere;
        };
        if let Some(exp) = expect {
            if !self.is_ours(exp) || exp.conn != h.conn {
                return DeliverStatus::NotHere;
            }
        }
        match h.out.push(frame) {
            Ok(()) => DeliverStatus::Delivered,
            Err(PushError::Full) => DeliverStatus::PeerOverloaded,
            Err(PushError::Closed) => DeliverStatus::NotHere,
        }
    }

    /// Closes the local connection of `user` with 4409 if it is still `loc`.
    pub fn kick_local(&self, user: &UserId, loc: &Location) -> bool {
        match self.inner.hub.get(user) {
            Some(h) if self.is_ours(loc) && h.conn == loc.conn => h
                .out
                .closer()
                .close(CLOSE_REPLACED, "replaced by a newer connection"),
            _ => false,
        }
    }

    /// Starts draining: `/readyz` and new upgrades answer 503 from now on.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
        metrics::gauge!("signal_draining").set(1.0);
    }

    /// Closes every connection with 1012, spread evenly over `window`, then waits (bounded)
    /// for the connection tasks, including their in-flight forwards, to finish.
    pub async fn drain(&self, window: Duration) {
        self.set_draining();
        let conns = self.inner.hub.snapshot();
        let n = conns.len();
        tracing::info!(node = %self.id(), connections = n, window_ms = window.as_millis() as u64, "draining");
        let start = tokio::time::Instant::now();
        for (i, (_, h)) in conns.into_iter().enumerate() {
            let at = start + window.mul_f64(i as f64 / n as f64);
            tokio::time::sleep_until(at).await;
            h.out.closer().close(CLOSE_DRAINING, "node draining");
        }
        // Connections that slipped in while the snapshot was taken.
        for (_, h) in self.inner.hub.snapshot() {
            h.out.closer().close(CLOSE_DRAINING, "node draining");
        }
        self.inner.tasks.close();
        if tokio::time::timeout(Duration::from_secs(10), self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(node = %self.id(), "connections still open after the drain window");
        }
    }

    /// Puts this node's live connections back into the directory (after Redis lost them);
    /// never overwrites a newer entry.
    pub async fn reassert(&self) {
        let entries: Vec<(UserId, Location)> = self
            .inner
            .hub
            .snapshot()
            .into_iter()
            .map(|(u, h)| (u, h.location))
            .collect();
        match self.inner.directory.reassert(&entries).await {
            Ok(n) => {
                tracing::info!(node = %self.id(), restored = n, live = entries.len(), "directory entries reasserted")
            }
            Err(e) => {
                tracing::warn!(node = %self.id(), error = %e, "cannot reassert directory entries")
            }
        }
    }
}
