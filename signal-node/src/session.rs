//! Sessions (contract section 5): what a Welcome starts and what may outlive its connection —
//! the numbered frame stream (its counter, the replay ring that doubles as the outbound queue,
//! the last acknowledgement), the attached connection if any, and the resume token. The node
//! table maps each user to one [`Session`]; producers (the router, the gRPC `Deliver` handler,
//! the connection's own error replies) push into the session, never into a socket.
//!
//! Life of a session: `Installing` (a resume is being taken over from another node; frames
//! that arrive meanwhile wait, unnumbered) -> `Attached` (a connection's writer reads the ring)
//! -> `Detached` (the connection ended without a client close, with 1012 or 1013: kept for the
//! resume window, frames still numbered and buffered) -> `Attached` again on resume, or
//! `Ended`. [`takeover`] holds the node-level steps (open, resume here or elsewhere, end),
//! [`expiry`] the one timer that ends detached sessions, [`writes`] who writes the frames to
//! the attached connection's socket (its writer, or the pusher of a batch).

pub mod expiry;
pub mod ring;
pub mod takeover;
pub mod writes;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use signal_proto::relay::{BufferedFrame, TakeSessionResponse, TakeStatus};
use signal_proto::roap::stamp_frame_number;
use signal_proto::UserId;
use subtle::ConstantTimeEq;
use tokio::sync::Notify;

use crate::mailbox::EntryId;
use crate::outbound::{Closer, PushError, CLOSE_REPLACED, CLOSE_SLOW};
use crate::outlet::Outlet;
use ring::Ring;
pub use ring::{Entry, Origin, RingLimits, RoapSender};
pub use writes::{Flushes, Turn, WRITE_BATCH};

/// Bounds of a session (from the node's flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// `--resume-buffer-frames` / `--resume-buffer-bytes`: everything not acknowledged.
    pub ring: RingLimits,
    /// `--outbound-queue` / `--outbound-queue-bytes`: not yet written to the socket; past
    /// that the reader is slow and its connection is closed with 1013 (the session is kept).
    pub unwritten_frames: usize,
    pub unwritten_bytes: usize,
    /// `--resume-window-ms`.
    pub window: Duration,
}

/// A user's session on this node. A cheap `Clone` handle.
#[derive(Clone, Debug)]
pub struct Session {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Local id, unique in this node instance: the `conn` of the directory's `Location`.
    id: u64,
    user: UserId,
    limits: SessionLimits,
    state: Mutex<State>,
    /// Wakes the attached connection's writer.
    wake: Notify,
    /// Held by the reader of the connection whose frames are being processed: a resumed
    /// connection reads its first frame only once the old one's reader is done, so that the
    /// user's messages are processed in the order sent (see [`Session::reader_turn`]).
    reader: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug)]
struct State {
    /// The resume token (a takeover installs the one the client presented).
    token: String,
    ring: Ring,
    /// Highest frame number written to a connection's socket.
    written: u64,
    /// Highest frame number acknowledged.
    acked: u64,
    phase: Phase,
    mail: MailPush,
}

/// The push at connect of the mailbox as this session sees it (see `mailbox`): what makes
/// every chat message reach the session exactly once and in order, whether it comes live or
/// from the mailbox.
#[derive(Debug, Default)]
struct MailPush {
    /// The pager has not reached the end of the mailbox yet: live chat messages wait in
    /// `pending` (stored ones come first).
    paging: bool,
    /// Live chat messages that arrived while paging, in arrival order; at most the ring's
    /// frame bound.
    pending: VecDeque<(String, EntryId)>,
    /// A live message found `pending` full (it is in the mailbox): the pager reads once more
    /// before going live.
    overflow: bool,
    /// The last mailbox entry the pager pushed. Every entry up to it was read, so a live copy
    /// of one of them is a duplicate (entry ids only grow).
    upto: Option<EntryId>,
    /// The pager reached the end of the mailbox once (a resume need not repeat it).
    complete: bool,
}

#[derive(Debug)]
enum Phase {
    /// Being handed over from another node: frames wait here, numbered once installed.
    Installing {
        early: Vec<(Utf8Bytes, Origin)>,
        bytes: usize,
    },
    Attached(Attachment),
    Detached {
        since: Instant,
    },
    Ended,
}

#[derive(Debug)]
struct Attachment {
    conn: u64,
    closer: Closer,
    /// The connection's socket, written by whoever pushes the next frame while its writer
    /// is idle (see `outlet`).
    outlet: Outlet,
    /// Highest frame number handed to this connection's writer.
    cursor: u64,
    /// Bytes of the frames above `cursor`.
    unwritten_bytes: usize,
}

/// Why a resume is refused (a metric label and a log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The token is not this session's (forged, stale, or another user's).
    Token,
    /// The client claims frames the node never sent.
    Ahead,
    /// Frames after `last` were dropped from the buffer.
    Gap,
    /// No session to resume (expired, or unknown).
    NotFound,
    /// The node keeping the session could not be reached in time.
    Unreachable,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Token => "token",
            Refusal::Ahead => "ahead",
            Refusal::Gap => "gap",
            Refusal::NotFound => "not_found",
            Refusal::Unreachable => "unreachable",
        }
    }

    pub fn from_label(s: &str) -> Refusal {
        match s {
            "token" => Refusal::Token,
            "ahead" => Refusal::Ahead,
            "gap" => Refusal::Gap,
            "unreachable" => Refusal::Unreachable,
            _ => Refusal::NotFound,
        }
    }
}

/// Chat frames a client acknowledged, each with its mailbox entry when this node knows it
/// (`None`: handed over from another node; the store finds it by (from, id)).
pub type AckedMail = Vec<(String, Option<EntryId>)>;

/// What a session hands over to the node the client resumed on.
#[derive(Debug, Clone)]
pub struct Handover {
    pub next_n: u64,
    /// Every buffered frame after the client's `last`, in order.
    pub frames: Vec<Entry>,
    /// The push at connect: the last entry pushed, and whether it reached the end.
    pub mail_upto: Option<EntryId>,
    pub mail_complete: bool,
}

/// What [`Session::hand_over`] gives: the handover, and the chat frames the client's `last`
/// acknowledged (they leave the mailbox).
#[derive(Debug, Clone)]
pub struct HandedOver {
    pub handover: Handover,
    pub acked_mail: AckedMail,
}

impl Handover {
    /// The `TakeSessionResponse` of a handover (status TAKEN).
    pub fn into_wire(self) -> TakeSessionResponse {
        let frames = self
            .frames
            .into_iter()
            .map(|e| {
                let (origin_user, origin_session) = match e.origin {
                    Origin::Node | Origin::Mail(_) => (String::new(), String::new()),
                    Origin::Roap(r) => (r.sender.to_string(), r.session_id.clone()),
                };
                BufferedFrame {
                    n: e.n,
                    frame: e.frame.as_str().to_owned(),
                    origin_user,
                    origin_session,
                }
            })
            .collect();
        TakeSessionResponse {
            status: TakeStatus::Taken as i32,
            reason: String::new(),
            next_n: self.next_n,
            frames,
            mail_upto: self.mail_upto.map(|e| e.to_string()).unwrap_or_default(),
            mail_complete: self.mail_complete,
            presence: None,
            rooms: Vec::new(),
        }
    }

    pub fn from_wire(resp: TakeSessionResponse) -> Handover {
        let frames = resp
            .frames
            .into_iter()
            .map(|f| Entry {
                n: f.n,
                frame: f.frame.into(),
                origin: match UserId::new(f.origin_user) {
                    Ok(sender) => Origin::roap(sender, f.origin_session),
                    Err(_) => Origin::Node,
                },
            })
            .collect();
        Handover {
            next_n: resp.next_n,
            frames,
            mail_upto: EntryId::parse(&resp.mail_upto),
            mail_complete: resp.mail_complete,
        }
    }
}

/// What [`Session::detach`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detached {
    /// Kept for the resume window.
    Kept,
    /// The session must end now (client close, or nothing to keep).
    End,
    /// The connection was no longer the session's (resumed elsewhere, or already ended).
    Gone,
}

/// A new random resume token: 128 random bits, hex.
fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Session {
    /// A new session of `user` with local id `id`, numbering from 1. `installing`: frames
    /// wait unnumbered until [`Session::install`] (a resume being taken over).
    pub fn new(id: u64, user: UserId, limits: SessionLimits, installing: bool) -> Session {
        let phase = if installing {
            Phase::Installing {
                early: Vec::new(),
                bytes: 0,
            }
        } else {
            Phase::Detached {
                since: Instant::now(),
            }
        };
        Session {
            inner: Arc::new(Shared {
                id,
                user,
                limits,
                state: Mutex::new(State {
                    token: new_token(),
                    ring: Ring::new(1, limits.ring),
                    written: 0,
                    acked: 0,
                    phase,
                    mail: MailPush {
                        // A fresh session pushes its mailbox first; one being installed
                        // learns where its push stands from the handover.
                        paging: !installing,
                        ..MailPush::default()
                    },
                }),
                wake: Notify::new(),
                reader: Arc::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Waits (at most `wait`) until no other connection's reader processes frames of this
    /// session, and holds that turn until the guard is dropped. `None`: the old reader did not
    /// finish in time (the caller goes on; order across the two connections is then not
    /// guaranteed).
    pub async fn reader_turn(&self, wait: Duration) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        tokio::time::timeout(wait, self.inner.reader.clone().lock_owned())
            .await
            .ok()
    }

    /// Closes the attached connection, if any, with 4409.
    pub fn close_attached(&self, reason: &'static str) {
        if let Phase::Attached(a) = &self.lock().phase {
            a.closer.close(CLOSE_REPLACED, reason);
        }
    }

    pub fn user(&self) -> &UserId {
        &self.inner.user
    }

    pub fn token(&self) -> String {
        self.lock().token.clone()
    }

    pub fn limits(&self) -> &SessionLimits {
        &self.inner.limits
    }

    /// Whether the session has ended (pushes fail with `Closed`).
    pub fn is_ended(&self) -> bool {
        matches!(self.lock().phase, Phase::Ended)
    }

    /// When it was detached, if it is detached.
    pub fn detached_since(&self) -> Option<Instant> {
        match self.lock().phase {
            Phase::Detached { since } => Some(since),
            _ => None,
        }
    }

    /// The attached connection's closer, if one is attached.
    pub fn closer(&self) -> Option<Closer> {
        match &self.lock().phase {
            Phase::Attached(a) => Some(a.closer.clone()),
            _ => None,
        }
    }

    /// Numbers `frame` (a JSON object without `n`) and queues it for the user: on the attached
    /// connection, or buffered for a resume while detached or being installed. `Full`: no room
    /// (the sender is told UNAVAILABLE); `Closed`: the session has ended. A live chat message
    /// (`Origin::Mail`) the push at connect already delivered is dropped; one that comes while
    /// the push runs waits for its end (stored messages come first).
    pub fn push(&self, frame: &str, origin: Origin) -> Result<u64, PushError> {
        let (r, wake) = self.push_queued(frame, origin);
        if wake {
            self.inner.wake.notify_one();
        }
        r
    }

    /// Like [`Session::push`], but the frame is written by the caller's [`Flushes`] (when it
    /// is dropped, after the rest of the batch) rather than by a woken writer.
    pub fn push_unflushed(&self, frame: &str, origin: Origin) -> Result<u64, PushError> {
        self.push_queued(frame, origin).0
    }

    /// [`Session::push`] without the wake-up: returns whether the writer has a frame to write.
    fn push_queued(&self, frame: &str, origin: Origin) -> (Result<u64, PushError>, bool) {
        let mut guard = self.lock();
        if let Origin::Mail(e) = origin {
            if matches!(guard.phase, Phase::Attached(_) | Phase::Detached { .. }) {
                let frames = self.inner.limits.ring.frames;
                if let Some(held) = Self::hold_mail(&mut guard.mail, frame, e, frames) {
                    return (Ok(held), false);
                }
            }
        }
        self.push_locked(&mut guard, frame, origin)
    }

    /// Whether `self` and `other` are the same session.
    pub fn ptr_eq(&self, other: &Session) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// `Some(0)`: the live chat message `e` is not to be pushed now (delivered already, or
    /// waiting for the push at connect to end).
    fn hold_mail(mail: &mut MailPush, frame: &str, e: EntryId, bound: usize) -> Option<u64> {
        if mail.upto.is_some_and(|u| e <= u) {
            metrics::counter!("signal_mail_live_duplicates_dropped_total").increment(1);
            return Some(0);
        }
        if !mail.paging {
            return None;
        }
        if mail.pending.len() >= bound {
            // It is in the mailbox: the pager reads it.
            mail.overflow = true;
        } else {
            mail.pending.push_back((frame.to_owned(), e));
        }
        Some(0)
    }

    /// Pushes the mailbox entry `e` read by the push at connect of connection `conn` (`frame`
    /// `None`: an entry that cannot be delivered, skipped). `Ok(false)`: already delivered
    /// (a live copy or another pager was first); `Err(Closed)`: `conn` is not the session's.
    pub fn push_stored(
        &self,
        conn: u64,
        frame: Option<&str>,
        e: EntryId,
    ) -> Result<bool, PushError> {
        let mut guard = self.lock();
        match &guard.phase {
            Phase::Attached(a) if a.conn == conn && !a.closer.is_closed() => {}
            _ => return Err(PushError::Closed),
        }
        if guard.mail.upto.is_some_and(|u| e <= u) {
            return Ok(false);
        }
        let Some(frame) = frame else {
            guard.mail.upto = Some(e);
            return Ok(false);
        };
        // Its entry id stays with the frame: the Ack deletes it by id.
        let (r, wake) = self.push_locked(&mut guard, frame, Origin::Mail(e));
        if r.is_ok() {
            let mail = &mut guard.mail;
            mail.upto = Some(e);
            if !mail.pending.is_empty() {
                mail.pending.retain(|(_, p)| *p > e);
            }
        }
        drop(guard);
        if wake {
            self.inner.wake.notify_one();
        }
        r.map(|_| true)
    }

    /// The push at connect of `conn` found the mailbox empty after its last entry: the live
    /// chat messages that waited are pushed (those it did not deliver itself), in order, and
    /// from now on live ones go straight through. `Ok(false)`: read once more first (a live
    /// message was dropped from a full wait list); `Err(Closed)`: `conn` is not the session's.
    pub fn mail_live(&self, conn: u64) -> Result<bool, PushError> {
        let mut guard = self.lock();
        match &guard.phase {
            Phase::Attached(a) if a.conn == conn && !a.closer.is_closed() => {}
            _ => return Err(PushError::Closed),
        }
        let mail = &mut guard.mail;
        if std::mem::take(&mut mail.overflow) {
            return Ok(false);
        }
        let pending = std::mem::take(&mut mail.pending);
        let upto = mail.upto;
        mail.paging = false;
        mail.complete = true;
        let mut wake = false;
        for (frame, e) in pending {
            if upto.is_some_and(|u| e <= u) {
                continue;
            }
            // A failure (no room) leaves it in the mailbox for the next session.
            let (_, w) = self.push_locked(&mut guard, &frame, Origin::Mail(e));
            wake |= w;
        }
        drop(guard);
        if wake {
            self.inner.wake.notify_one();
        }
        Ok(true)
    }

    /// Whether the push at connect reached the end of the mailbox (else a resume repeats it).
    pub fn mail_complete(&self) -> bool {
        self.lock().mail.complete
    }

    /// The last mailbox entry the push at connect delivered (a repeated push continues after it).
    pub fn mail_upto(&self) -> Option<EntryId> {
        self.lock().mail.upto
    }

    /// Frames pushed to connection `conn` and not yet handed to its writer; `None` when `conn`
    /// is not the session's attached connection.
    pub fn unwritten(&self, conn: u64) -> Option<u64> {
        let st = self.lock();
        match &st.phase {
            Phase::Attached(a) if a.conn == conn && !a.closer.is_closed() => {
                Some(st.ring.last_n() - a.cursor)
            }
            _ => None,
        }
    }

    /// Numbers and queues `frame` under the lock; returns the result and whether to wake the
    /// writer.
    fn push_locked(
        &self,
        guard: &mut State,
        frame: &str,
        origin: Origin,
    ) -> (Result<u64, PushError>, bool) {
        let limits = self.inner.limits;
        let st = guard;
        match &mut st.phase {
            Phase::Ended => (Err(PushError::Closed), false),
            Phase::Installing { early, bytes } => {
                if early.len() >= limits.ring.frames
                    || (*bytes > 0 && *bytes + frame.len() > limits.ring.bytes)
                {
                    return (Err(PushError::Full), false);
                }
                *bytes += frame.len();
                early.push((frame.to_owned().into(), origin));
                (Ok(0), false)
            }
            Phase::Attached(a) if !a.closer.is_closed() => {
                let unwritten = st.ring.last_n() - a.cursor;
                if unwritten as usize >= limits.unwritten_frames
                    || (a.unwritten_bytes > 0
                        && a.unwritten_bytes + frame.len() > limits.unwritten_bytes)
                {
                    if a.closer.close(CLOSE_SLOW, "outbound queue full") {
                        metrics::counter!("signal_slow_consumer_closes_total").increment(1);
                        tracing::info!(user = %self.inner.user, unwritten, "slow reader: closing 1013, session kept");
                    }
                    return (Self::buffer(&mut st.ring, st.written, frame, origin), false);
                }
                let n = match Self::append(&mut st.ring, frame, origin) {
                    Ok(n) => n,
                    Err(e) => return (Err(e), false),
                };
                a.unwritten_bytes += st.ring.get(n).map_or(0, |e| e.frame.len());
                let dropped = st.ring.trim(st.written);
                if dropped > 0 {
                    metrics::counter!("signal_resume_buffer_drops_total").increment(dropped as u64);
                }
                if st.ring.over() && a.closer.close(CLOSE_SLOW, "outbound queue full") {
                    // More unwritten than the resume buffer holds.
                    metrics::counter!("signal_slow_consumer_closes_total").increment(1);
                }
                (Ok(n), true)
            }
            Phase::Attached(_) | Phase::Detached { .. } => {
                (Self::buffer(&mut st.ring, st.written, frame, origin), false)
            }
        }
    }

    /// Buffers a frame for a connection that is gone or closing: only if it fits once written
    /// frames make room (an unwritten frame is never dropped).
    fn buffer(
        ring: &mut Ring,
        written: u64,
        frame: &str,
        origin: Origin,
    ) -> Result<u64, PushError> {
        // The stamped frame is a few bytes longer; the bound is approximate by that much.
        if !ring.fits(frame.len(), written) {
            return Err(PushError::Full);
        }
        let n = Self::append(ring, frame, origin)?;
        let dropped = ring.trim(written);
        if dropped > 0 {
            metrics::counter!("signal_resume_buffer_drops_total").increment(dropped as u64);
        }
        Ok(n)
    }

    fn append(ring: &mut Ring, frame: &str, origin: Origin) -> Result<u64, PushError> {
        let stamped = stamp_frame_number(frame, ring.next_n()).ok_or(PushError::Closed)?;
        Ok(ring.push(stamped.into(), origin))
    }

    /// Attaches a new connection to a fresh session (after its Welcome).
    pub fn attach_fresh(&self, conn: u64, closer: Closer, outlet: Outlet) {
        let mut st = self.lock();
        if matches!(st.phase, Phase::Ended) {
            drop(st);
            closer.close(CLOSE_REPLACED, "session ended");
            return;
        }
        let cursor = st.written;
        let unwritten_bytes = st.ring.after(cursor).map(|e| e.frame.len()).sum();
        st.phase = Phase::Attached(Attachment {
            conn,
            closer,
            outlet,
            cursor,
            unwritten_bytes,
        });
        drop(st);
        self.inner.wake.notify_one();
    }

    /// Checks a resume: `token` must be this session's and every frame after `last` buffered.
    pub fn check_resume(&self, token: &str, last: u64) -> Result<(), Refusal> {
        let st = self.lock();
        if matches!(st.phase, Phase::Ended | Phase::Installing { .. }) {
            return Err(Refusal::NotFound);
        }
        Self::check(&st, token, last)
    }

    fn check(st: &State, token: &str, last: u64) -> Result<(), Refusal> {
        if !bool::from(st.token.as_bytes().ct_eq(token.as_bytes())) {
            return Err(Refusal::Token);
        }
        if last > st.ring.last_n() {
            return Err(Refusal::Ahead);
        }
        if last + 1 < st.ring.first_n() {
            return Err(Refusal::Gap);
        }
        Ok(())
    }

    /// Resumes on this node: checks, closes the old connection (4409) if still attached, and
    /// attaches the new one so that its writer starts after `last`. Returns how many frames
    /// will be replayed, and the chat frames `last` acknowledged (they leave the mailbox).
    pub fn resume_here(
        &self,
        token: &str,
        last: u64,
        conn: u64,
        closer: Closer,
        outlet: Outlet,
    ) -> Result<(u64, AckedMail), Refusal> {
        let mut st = self.lock();
        if matches!(st.phase, Phase::Ended | Phase::Installing { .. }) {
            return Err(Refusal::NotFound);
        }
        Self::check(&st, token, last)?;
        if let Phase::Attached(a) = &st.phase {
            a.closer
                .close(CLOSE_REPLACED, "replaced by a newer connection");
        }
        let acked_mail = Self::ack_locked(&mut st, last);
        st.written = st.written.max(last);
        let replay = st.ring.last_n() - last;
        let unwritten_bytes = st.ring.bytes();
        st.phase = Phase::Attached(Attachment {
            conn,
            closer,
            outlet,
            cursor: last,
            unwritten_bytes,
        });
        drop(st);
        self.inner.wake.notify_one();
        Ok((replay, acked_mail))
    }

    /// Hands the session over to another node: checks, closes the connection (4409) if one is
    /// attached, returns the frames after `last` and ends the session here without notifying
    /// anyone (it lives on elsewhere).
    pub fn hand_over(&self, token: &str, last: u64) -> Result<HandedOver, Refusal> {
        let mut st = self.lock();
        if matches!(st.phase, Phase::Ended | Phase::Installing { .. }) {
            return Err(Refusal::NotFound);
        }
        Self::check(&st, token, last)?;
        if let Phase::Attached(a) = &st.phase {
            a.closer.close(CLOSE_REPLACED, "resumed on another node");
        }
        let acked_mail = Self::ack_locked(&mut st, last);
        let frames: Vec<Entry> = st.ring.after(last).cloned().collect();
        let next_n = st.ring.next_n();
        st.ring.drain_all();
        st.phase = Phase::Ended;
        // Live chat messages waiting for the push at connect are in the mailbox: the new
        // node's push continues after `upto` and reads them.
        let mail = std::mem::take(&mut st.mail);
        drop(st);
        self.inner.wake.notify_one();
        Ok(HandedOver {
            handover: Handover {
                next_n,
                frames,
                mail_upto: mail.upto,
                mail_complete: mail.complete,
            },
            acked_mail,
        })
    }

    /// Installs a session being taken over and attaches the connection. `Some`: continue the
    /// numbering with the handed frames (after the client's `last`); `None` (the resume
    /// failed), or a handover whose numbers do not follow on: a fresh stream from 1. Frames
    /// that arrived meanwhile are numbered after the handed ones. Returns whether the session
    /// was resumed and how many frames the writer will send before new ones.
    pub fn install(
        &self,
        handover: Option<(Handover, u64, String)>,
        conn: u64,
        closer: Closer,
        outlet: Outlet,
    ) -> (bool, u64) {
        let limits = self.inner.limits.ring;
        let mut st = self.lock();
        let st = &mut *st;
        let early = match std::mem::replace(&mut st.phase, Phase::Ended) {
            Phase::Installing { early, .. } => early,
            other => {
                st.phase = other;
                return (false, 0);
            }
        };
        let mut cursor = 0;
        let mut resumed = false;
        // A fresh stream pushes the mailbox from its start.
        st.mail = MailPush {
            paging: true,
            ..MailPush::default()
        };
        if let Some((h, last, token)) = handover {
            let first = h.frames.first().map_or(h.next_n, |e| e.n);
            let mut ring = Ring::new(first, limits);
            let follows = first == last + 1
                && h.frames.into_iter().all(|e| ring.push_numbered(e))
                && ring.next_n() == h.next_n;
            if follows {
                st.token = token;
                st.ring = ring;
                st.written = last;
                st.acked = last;
                st.mail = MailPush {
                    paging: !h.mail_complete,
                    upto: h.mail_upto,
                    complete: h.mail_complete,
                    ..MailPush::default()
                };
                cursor = last;
                resumed = true;
            } else {
                tracing::warn!(user = %self.inner.user, "handed-over frames do not follow on: fresh session");
            }
        }
        let bound = limits.frames;
        for (frame, origin) in early {
            if let Origin::Mail(e) = origin {
                if Self::hold_mail(&mut st.mail, frame.as_str(), e, bound).is_some() {
                    continue;
                }
            }
            // `early` had the same bounds as the ring.
            let _ = Self::append(&mut st.ring, frame.as_str(), origin);
        }
        let replay = st.ring.last_n() - cursor;
        let unwritten_bytes = st.ring.bytes();
        st.phase = Phase::Attached(Attachment {
            conn,
            closer,
            outlet,
            cursor,
            unwritten_bytes,
        });
        self.inner.wake.notify_one();
        (resumed, replay)
    }

    /// A cumulative acknowledgement. `Err` if `n` is above the last frame sent. Returns the
    /// chat messages it acknowledged (they leave the mailbox).
    pub fn ack(&self, n: u64) -> Result<AckedMail, u64> {
        let mut st = self.lock();
        if n > st.ring.last_n() {
            return Err(st.ring.last_n());
        }
        Ok(Self::ack_locked(&mut st, n))
    }

    /// Acknowledges every frame up to `n` (an `Ack`, or the `last` of a resume); returns the
    /// chat frames among them (not room messages: they are in no mailbox).
    fn ack_locked(st: &mut State, n: u64) -> AckedMail {
        if n <= st.acked {
            return Vec::new();
        }
        st.acked = n;
        let mail = st
            .ring
            .after(0)
            .take_while(|e| e.n <= n)
            .filter(|e| {
                let f = e.frame.as_str();
                signal_proto::chat::is_chat_frame(f) && !signal_proto::chat::is_room_frame(f)
            })
            .map(|e| {
                let entry = match e.origin {
                    Origin::Mail(m) => Some(m),
                    _ => None,
                };
                (e.frame.as_str().to_owned(), entry)
            })
            .collect();
        st.ring.ack(n);
        mail
    }

    /// The next frame for the writer of `conn` once it has taken its socket back to close it
    /// (`written`: every frame up to it reached the socket).
    pub fn try_next_frame(&self, conn: u64, written: u64) -> Next {
        let mut st = self.lock();
        let st = &mut *st;
        let Phase::Attached(a) = &mut st.phase else {
            return Next::Gone;
        };
        if a.conn != conn {
            return Next::Gone;
        }
        st.written = st.written.max(written);
        // Frames below the ring's start were dropped while unwritten (cannot happen: the
        // bounds close a slow reader first); skip them rather than stall.
        a.cursor = a.cursor.max(st.ring.first_n().saturating_sub(1));
        let next = a.cursor + 1;
        match st.ring.get(next) {
            Some(e) => {
                a.cursor = next;
                a.unwritten_bytes = a.unwritten_bytes.saturating_sub(e.frame.len());
                Next::Frame(next, e.frame.clone())
            }
            None => Next::Wait,
        }
    }

    /// The connection `conn` ended. `keep`: the session is kept for the resume window.
    pub fn detach(&self, conn: u64, keep: bool, written: u64) -> Detached {
        let mut st = self.lock();
        match &st.phase {
            Phase::Attached(a) if a.conn == conn => {}
            _ => return Detached::Gone,
        }
        st.written = st.written.max(written);
        if keep {
            st.phase = Phase::Detached {
                since: Instant::now(),
            };
            Detached::Kept
        } else {
            Detached::End
        }
    }

    /// Ends the session; returns the ROAP frames never written to a connection (their senders
    /// are owed OFFLINE). Idempotent: a second call returns nothing.
    pub fn end(&self) -> Vec<Entry> {
        let mut st = self.lock();
        let st = &mut *st;
        let early = match std::mem::replace(&mut st.phase, Phase::Ended) {
            Phase::Ended => return Vec::new(),
            Phase::Attached(a) => {
                a.closer.close(CLOSE_REPLACED, "session ended");
                Vec::new()
            }
            Phase::Installing { early, .. } => early,
            Phase::Detached { .. } => Vec::new(),
        };
        let written = st.written;
        let mut owed: Vec<Entry> = st
            .ring
            .drain_all()
            .into_iter()
            .filter(|e| e.n > written && matches!(e.origin, Origin::Roap { .. }))
            .collect();
        owed.extend(
            early
                .into_iter()
                .filter(|(_, o)| matches!(o, Origin::Roap { .. }))
                .map(|(frame, origin)| Entry {
                    n: 0,
                    frame,
                    origin,
                }),
        );
        self.inner.wake.notify_one();
        owed
    }

    /// (frames buffered, bytes buffered, last number) for tests and `/readyz`.
    pub fn stats(&self) -> (usize, usize, u64) {
        let st = self.lock();
        (st.ring.len(), st.ring.bytes(), st.ring.last_n())
    }
}

/// What [`Session::try_next_frame`] found.
#[derive(Debug)]
pub enum Next {
    Frame(u64, Utf8Bytes),
    Wait,
    Gone,
}

#[cfg(test)]
mod tests;
