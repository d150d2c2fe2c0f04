//! The node-level steps of a session's life: open a connection (a fresh session, a resume of a
//! session kept here, or a takeover of one kept on another node: one directory claim and one
//! `TakeSession` call to the node it names), hand a session over when another node asks, end a
//! session (and tell the senders of ROAP frames it never delivered: OFFLINE), and expire
//! detached sessions.

use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::time::Instant;

use signal_proto::relay::{
    Location, SessionPresence, TakeSessionRequest, TakeSessionResponse, TakeStatus,
};
use signal_proto::roap::Welcome;
use signal_proto::{ErrorType, Message, SessionId, UserId};

use super::{Detached, HandedOver, Handover, Origin, Refusal, Session};
use crate::error::ApiError;
use crate::node::{Authenticated, Node, CLAIM_STRIPES};
use crate::outbound::{Closer, CLOSE_APP_DISCONNECT, CLOSE_NORMAL};
use crate::outlet::Outlet;
use crate::router::Router;

/// How long a takeover waits for the old connection's reader (within the caller's 1.5 s).
const READER_DRAIN: std::time::Duration = std::time::Duration::from_millis(800);

/// A client's request to continue a session: `?resume=<token>&last=<n>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub token: String,
    pub last: u64,
}

/// A connection that has been accepted (its session in the table and the directory) but
/// whose socket is not served yet. Dropping it detaches the connection, so a failed upgrade
/// leaves nothing behind (a fresh session ends; a resumed one is kept for the window).
pub struct Pending {
    pub node: Node,
    pub session: Session,
    pub conn: u64,
    pub closer: Closer,
    /// The socket's write half once the Welcome is on it, shared with the session.
    pub outlet: Outlet,
    /// The Welcome frame, written first.
    pub welcome: String,
    /// Number of the last frame the client has (the writer starts after it).
    pub start: u64,
    pub resumed: bool,
    pub opened: Instant,
    finished: bool,
}

impl Pending {
    /// The connection ended: keep the session for the resume window (`keep`) or end it.
    /// `written`: the last frame number written to the socket.
    pub fn finish(mut self, keep: bool, written: u64) {
        self.finished = true;
        self.node
            .connection_ended(&self.session, self.conn, keep, written);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.finished {
            self.closer.close(CLOSE_NORMAL, "upgrade failed");
            self.node
                .connection_ended(&self.session, self.conn, self.resumed, self.start);
        }
    }
}

/// Why a session ended when a newer session of the same user replaced it.
pub const REASON_REPLACED: &str = "replaced";
/// Why a session ended when the application backend disconnected it (4403).
pub const REASON_DISCONNECTED: &str = "disconnected";

impl Node {
    fn claim_stripe(user: &UserId) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        user.hash(&mut h);
        (h.finish() as usize) % CLAIM_STRIPES
    }

    fn welcome(&self, session: &Session, resumed: bool) -> String {
        Message::Welcome(Welcome {
            user: session.user().clone(),
            node: self.id().clone(),
            session: Some(session.token()),
            resumed: Some(resumed),
            resume_window_ms: Some(self.config().resume_window.as_millis() as u64),
            extra: Default::default(),
        })
        .to_json()
    }

    /// Accepts a connection of `user`, before the upgrade: continues the session named by
    /// `resume` (here, or taken over from the node the directory names) or starts a fresh
    /// one, enters it in the table and claims the directory entry, so that the user is
    /// reachable from every node once the Welcome is sent. Fails with 503 while draining or
    /// when the directory is down. A connection by ticket counts in `accepted_total`.
    pub async fn open(
        &self,
        auth: Authenticated,
        resume: Option<Resume>,
    ) -> Result<Pending, ApiError> {
        let Authenticated { user, by_ticket } = auth;
        if self.is_draining() {
            return Err(ApiError::Draining);
        }
        let _guard = self.claim_lock(Self::claim_stripe(&user)).lock().await;
        let conn = self.next_id();
        let closer = Closer::default();
        let outlet = Outlet::default();
        let mut refusal = None;

        // A session kept (or still attached) here.
        if let (Some(r), Some(existing)) = (&resume, self.hub().get(&user)) {
            match existing.resume_here(&r.token, r.last, conn, closer.clone(), outlet.clone()) {
                Ok((replay, acked_mail)) => {
                    self.acknowledged_by_resume(&user, acked_mail);
                    let loc = self.location(existing.id());
                    match self.directory().claim(&user, &loc).await {
                        Ok(Some(prev)) if prev != loc => self.replace_elsewhere(&user, prev),
                        Ok(_) => {}
                        // The session is here: serve it; the directory heals on reassert.
                        Err(e) => {
                            tracing::warn!(%user, error = %e, "directory claim failed on resume")
                        }
                    }
                    metrics::counter!("signal_sessions_resumed_total", "where" => "same_node")
                        .increment(1);
                    metrics::counter!("signal_frames_replayed_total").increment(replay);
                    tracing::info!(%user, session = existing.id(), last = r.last, replay, "session resumed on the same node");
                    return Ok(self.pending(
                        existing,
                        conn,
                        (closer, outlet),
                        r.last,
                        true,
                        by_ticket,
                    ));
                }
                Err(why) => refusal = Some(why),
            }
        }

        let id = self.next_id();
        let session = Session::new(id, user.clone(), self.session_limits(), resume.is_some());
        let replaced = self.hub().insert(user.clone(), session.clone());
        let loc = self.location(id);
        let prev = match self.directory().claim(&user, &loc).await {
            Ok(prev) => prev,
            Err(e) => {
                tracing::warn!(%user, error = %e, "directory claim failed: refusing the connection");
                if let Some(old) = replaced {
                    self.hub().restore(&user, id, old);
                }
                return Err(ApiError::DirectoryUnavailable(e.to_string()));
            }
        };
        if let Some(old) = replaced {
            // Not resumed (or its resume was refused): that session ends.
            self.end_session(&old, REASON_REPLACED);
        }
        if resume.is_none() {
            // Online before the previous connection elsewhere is closed: its end then finds
            // the presence record no longer its own and announces nothing.
            self.presence().started(self, &session).await;
        }
        let mut handover = None;
        let mut carried: Option<SessionPresence> = None;
        let mut handed_rooms = Vec::new();
        // A takeover waits for a turn (`--takeover-concurrency`) and holds it until the
        // session, its presence and its rooms are installed here: a drained node's clients
        // all arrive at once, and unbounded they would overrun the old node's handover and
        // the Redis response timeout.
        let remote =
            matches!((&prev, &resume), (Some(p), Some(_)) if p.node_id != self.id().as_str());
        let _turn = if remote {
            self.takeover_turn().await
        } else {
            None
        };
        match (prev, &resume) {
            (Some(prev), Some(r)) if prev.node_id != self.id().as_str() => {
                match self.take_from(&user, prev, r).await {
                    Ok((h, carry, rooms)) => {
                        handover = Some((h, r.last, r.token.clone()));
                        carried = carry;
                        handed_rooms = rooms;
                    }
                    Err(why) => refusal = refusal.or(Some(why)),
                }
            }
            (Some(prev), None) => self.replace_elsewhere(&user, prev),
            (_, Some(_)) => refusal = refusal.or(Some(Refusal::NotFound)),
            (None, None) => {}
        }
        let (resumed, start) = if resume.is_some() {
            let (resumed, replay) = session.install(handover, conn, closer.clone(), outlet.clone());
            let start = resume
                .as_ref()
                .map_or(0, |r| if resumed { r.last } else { 0 });
            match carried.take() {
                Some(carry) if resumed => self.presence().adopted(self, &session, carry).await,
                _ => self.presence().started(self, &session).await,
            }
            if resumed {
                // The memberships move here before the Welcome (no leave/join events).
                self.rooms().adopt(self, &session, handed_rooms).await;
                metrics::counter!("signal_sessions_resumed_total", "where" => "other_node")
                    .increment(1);
                metrics::counter!("signal_frames_replayed_total").increment(replay);
                tracing::info!(%user, session = id, start, replay, "session taken over from another node");
            } else if !handed_rooms.is_empty() {
                // Handed over but not continued (a fresh session): the old session's rooms
                // are left (the others get MemberLeft), as at any session end.
                self.rooms().adopt(self, &session, handed_rooms).await;
                self.rooms().session_ended(self, &session);
            }
            (resumed, start)
        } else {
            session.attach_fresh(conn, closer.clone(), outlet.clone());
            (false, 0)
        };
        if !resumed {
            self.webhooks().user_online(&user, self.id());
            if let Some(why) = refusal {
                metrics::counter!("signal_resume_refused_total", "reason" => why.as_str())
                    .increment(1);
                tracing::info!(%user, reason = why.as_str(), "resume refused: fresh session");
            }
        }
        Ok(self.pending(session, conn, (closer, outlet), start, resumed, by_ticket))
    }

    fn pending(
        &self,
        session: Session,
        conn: u64,
        (closer, outlet): (Closer, Outlet),
        start: u64,
        resumed: bool,
        by_ticket: bool,
    ) -> Pending {
        if by_ticket {
            self.count_accepted();
        }
        Pending {
            node: self.clone(),
            welcome: self.welcome(&session, resumed),
            session,
            conn,
            closer,
            outlet,
            start,
            resumed,
            opened: Instant::now(),
            finished: false,
        }
    }

    /// One `TakeSession` call to the node that keeps the session.
    async fn take_from(
        &self,
        user: &UserId,
        prev: Location,
        r: &Resume,
    ) -> Result<(Handover, Option<SessionPresence>, Vec<String>), Refusal> {
        let req = TakeSessionRequest {
            user: user.to_string(),
            expect: Some(prev.clone()),
            session: r.token.clone(),
            last: r.last,
        };
        match self.peers().take_session(&prev, req).await {
            Ok(resp) => match TakeStatus::try_from(resp.status) {
                Ok(TakeStatus::Taken) => {
                    let mut resp = resp;
                    let presence = resp.presence.take();
                    let rooms = std::mem::take(&mut resp.rooms);
                    Ok((Handover::from_wire(resp), presence, rooms))
                }
                _ => Err(Refusal::from_label(&resp.reason)),
            },
            Err(e) => {
                tracing::info!(%user, node = %prev.node_id, error = %e, "cannot take the session over");
                // Make sure the old connection, if any, does not linger.
                self.replace_elsewhere(user, prev);
                Err(Refusal::Unreachable)
            }
        }
    }

    /// The `TakeSession` handler: hands the user's session over if it is still `expect`. A
    /// valid resume first closes the attached connection (4409) and waits (at most
    /// [`READER_DRAIN`]) for its reader to finish the frames it already read, so that their
    /// answers are in the handed frames and the user's messages stay in order.
    pub async fn hand_over(&self, req: &TakeSessionRequest, user: &UserId) -> TakeSessionResponse {
        let found = self.hub().get(user).filter(|s| {
            req.expect
                .as_ref()
                .is_some_and(|l| self.is_ours(l) && l.conn == s.id())
        });
        let Some(session) = found else {
            return TakeSessionResponse {
                status: TakeStatus::NotFound as i32,
                reason: Refusal::NotFound.as_str().to_owned(),
                ..TakeSessionResponse::default()
            };
        };
        let turn = if session.check_resume(&req.session, req.last).is_ok() {
            session.close_attached("resumed on another node");
            session.reader_turn(READER_DRAIN).await
        } else {
            None
        };
        let result = session.hand_over(&req.session, req.last);
        drop(turn);
        match result {
            Ok(HandedOver {
                handover,
                acked_mail,
            }) => {
                self.hub().remove_if(user, session.id());
                self.acknowledged_by_resume(user, acked_mail);
                let mut resp = handover.into_wire();
                resp.presence = self.presence().handed_over(self, &session);
                resp.rooms = self.rooms().handed_over(&session);
                metrics::counter!("signal_sessions_handed_over_total").increment(1);
                self.drain_progressed(session.id());
                tracing::info!(%user, session = session.id(), frames = resp.frames.len(), "session handed over");
                resp
            }
            Err(why) => {
                // A new connection that cannot resume replaces the session.
                self.end_session(&session, REASON_REPLACED);
                TakeSessionResponse {
                    status: TakeStatus::Refused as i32,
                    reason: why.as_str().to_owned(),
                    ..TakeSessionResponse::default()
                }
            }
        }
    }

    /// A resume's `last` acknowledged these chat frames of `user` (contract section 5): they
    /// leave the mailbox and their senders are told `Delivered`, as for an `Ack`.
    fn acknowledged_by_resume(&self, user: &UserId, mail: crate::session::AckedMail) {
        if mail.is_empty() {
            return;
        }
        metrics::counter!("signal_mail_acked_by_resume_total").increment(mail.len() as u64);
        let node = self.clone();
        let user = user.clone();
        self.tasks().spawn(async move {
            node.mailbox().acknowledged(&node, &user, mail).await;
        });
    }

    /// A connection of `session` ended.
    pub fn connection_ended(&self, session: &Session, conn: u64, keep: bool, written: u64) {
        match session.detach(conn, keep, written) {
            Detached::Kept => {
                metrics::counter!("signal_sessions_kept_total").increment(1);
                let at = tokio::time::Instant::now() + self.config().resume_window;
                self.expiry().arm(at, session.id(), session.user().clone());
            }
            Detached::End => self.end_session(session, "closed"),
            Detached::Gone => {}
        }
    }

    /// Ends `session` if it is still detached and its window has passed.
    pub fn expire(&self, id: u64, user: &UserId) {
        let Some(session) = self.hub().get(user).filter(|s| s.id() == id) else {
            return;
        };
        let window = self.config().resume_window;
        if session
            .detached_since()
            .is_some_and(|since| since.elapsed() + std::time::Duration::from_millis(5) >= window)
        {
            self.end_session(&session, "expired");
        }
    }

    /// Ends a session: out of the table and the directory; every sender of a ROAP frame it
    /// never wrote to a connection gets Error OFFLINE.
    pub fn end_session(&self, session: &Session, reason: &'static str) {
        let already_ended = session.is_ended();
        let owed = session.end();
        self.presence().ended(self, session);
        let user = session.user().clone();
        // A replaced session has a successor (the user is still online).
        if !already_ended && reason != REASON_REPLACED {
            self.webhooks().user_offline(&user);
        }
        self.rooms().session_ended(self, session);
        if self.hub().remove_if(&user, session.id()) {
            let dir = self.directory().clone();
            let loc = self.location(session.id());
            let u = user.clone();
            self.tasks().spawn(async move {
                if let Err(e) = dir.release(&u, &loc).await {
                    tracing::warn!(user = %u, error = %e, "cannot release directory entry");
                }
            });
        }
        self.drain_progressed(session.id());
        metrics::counter!("signal_sessions_ended_total", "reason" => reason).increment(1);
        tracing::debug!(%user, session = session.id(), reason, owed = owed.len(), "session ended");
        if owed.is_empty() {
            return;
        }
        metrics::counter!("signal_session_offline_notices_total").increment(owed.len() as u64);
        let node = self.clone();
        self.tasks().spawn(async move {
            // One router, in order: each sender's notices arrive in the order of its frames.
            let mut router = Router::new(node);
            for e in owed {
                let Origin::Roap(r) = e.origin else {
                    continue;
                };
                let (sender, session_id) = (&r.sender, r.session_id.clone());
                let msg = Message::server_error(
                    sender.clone(),
                    Some(user.clone()),
                    SessionId::new(session_id).ok(),
                    ErrorType::Offline,
                    format!("{user}'s session ended before the message was delivered"),
                );
                let _ = router.relay(&Origin::Node, sender, &msg.to_json()).await;
            }
        });
    }

    /// Closes (ends) the local session of `user` if it is still `loc` (a newer connection
    /// elsewhere replaced it).
    pub fn kick_local(&self, user: &UserId, loc: &Location) -> bool {
        match self.hub().get(user) {
            Some(s) if self.is_ours(loc) && s.id() == loc.conn => {
                self.end_session(&s, REASON_REPLACED);
                true
            }
            _ => false,
        }
    }

    /// Central's server API: closes the user's connection with 4403 and ends its session (no
    /// resume), if it is still `loc`. `false`: no such session here.
    pub fn disconnect_local(&self, user: &UserId, loc: &Location) -> bool {
        match self.hub().get(user) {
            Some(s) if self.is_ours(loc) && s.id() == loc.conn => {
                // The first close reason wins: 4403, not the 4409 of `end`.
                if let Some(c) = s.closer() {
                    c.close(CLOSE_APP_DISCONNECT, "disconnected by the application");
                }
                self.end_session(&s, REASON_DISCONNECTED);
                tracing::info!(%user, session = s.id(), "session ended by the application backend");
                true
            }
            _ => false,
        }
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.id_counter().fetch_add(1, Ordering::Relaxed)
    }
}
