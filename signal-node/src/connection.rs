//! One client WebSocket after the upgrade: a reader that processes incoming frames strictly in
//! order (validation, rate limit, acks, relay), and a writer that sends the Welcome and then
//! the session's numbered frames to the socket, with pings. Ends with one log line; the
//! session is then kept for a resume or ended.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, SplitStream};
use futures::{FutureExt, SinkExt, StreamExt};
use signal_proto::roap::{Relayed, RoapKind};
use signal_proto::{ChatMessage, ErrorType, Message, ParseError, RoomId, SessionId, UserId};
use tokio_tungstenite::tungstenite;

use tokio::sync::Notify;

use crate::mailbox::{Appended, MailboxError, Prepared};
use crate::node::Node;
use crate::outbound::{
    CloseReason, Closer, PushError, CLOSE_BAD_DATA, CLOSE_NORMAL, CLOSE_PROTOCOL, CLOSE_REPLACED,
    CLOSE_SLOW, CLOSE_TOO_LARGE, REASON_CLIENT_CLOSED,
};
use crate::outlet::Outlet;
use crate::ratelimit::TokenBucket;
use crate::router::{Forwarded, Route, Router, Undelivered};
use crate::session::takeover::Pending;
use crate::session::{Next, Origin, RoapSender, Session, Turn};
use crate::telemetry::RelayMetrics;

/// Time allowed to write the close frame (and flush what was queued before it).
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long a resumed connection waits for the old connection's reader to finish.
const READER_HANDOFF: Duration = Duration::from_secs(3);

/// Pongs owed at most (they carry no number and are not kept for a resume): a client pinging
/// faster than its socket drains loses pongs, nothing else.
const MAX_OWED_PONGS: u8 = 8;

/// Pongs the writer owes the client: a count, not a queue, since a Pong carries nothing (an
/// mpsc channel here cost a kilobyte per idle connection).
#[derive(Default)]
struct Pongs {
    owed: AtomicU8,
    wake: Notify,
}

impl Pongs {
    fn owe(&self) {
        let more = self
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_OWED_PONGS).then_some(n + 1)
            })
            .is_ok();
        if more {
            self.wake.notify_one();
        }
    }

    /// Completes when a pong is owed, taking it.
    async fn next(&self) {
        loop {
            let took = self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok();
            if took {
                return;
            }
            self.wake.notified().await;
        }
    }
}

/// Serves an upgraded socket until it closes. The setup (split, writer task, reader state)
/// runs before the returned future, so that the future held while the socket idles keeps
/// neither the unsplit socket nor a second copy of `pending` (about 500 B per connection).
pub fn serve(socket: WebSocket, mut pending: Pending) -> impl std::future::Future<Output = ()> {
    let node = pending.node.clone();
    let session = pending.session.clone();
    let user = session.user().clone();
    let conn = pending.conn;
    tracing::info!(%user, node = %node.id(), conn, session = session.id(), resumed = pending.resumed, "connection open");
    metrics::counter!("signal_connections_opened_total").increment(1);
    metrics::gauge!("signal_connections").increment(1.0);
    node.connection_count(1);
    let (sink, stream) = socket.split();
    pending.outlet.install(sink);
    let pongs = Arc::new(Pongs::default());
    let writer = tokio::spawn(write_loop(
        Writer {
            session: session.clone(),
            conn,
            closer: pending.closer.clone(),
            outlet: pending.outlet.clone(),
            welcome: std::mem::take(&mut pending.welcome),
            start: pending.start,
            pongs: pongs.clone(),
        },
        node.config().ping_interval,
    ));
    if !pending.resumed || !session.mail_complete() {
        // A fresh session (or one whose push was cut short): stored chat messages follow.
        let mailbox = node.mailbox().clone();
        let session = session.clone();
        tokio::spawn(async move { mailbox.push_at_connect(session, conn).await });
    }
    let reader = Reader {
        bucket: TokenBucket::new(node.config().rate_limit, node.config().rate_burst),
        router: Router::new(node.clone()),
        node,
        user,
        session,
        closer: pending.closer.clone(),
        pongs,
        roap: None,
        chats: Ordered::default(),
        chats_to: std::collections::VecDeque::new(),
        forwards: Ordered::default(),
    };
    run(reader, stream, writer, pending)
}

/// Reads until the connection closes, then waits for the writer and ends (or keeps) the
/// session.
///
/// A plain `fn` returning an `async move` block, as `write_loop`: an `async fn` keeps a second
/// copy of its arguments (the reader state, `pending`) in the task, about 390 B per connection.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn run(
    mut reader: Reader,
    stream: SplitStream<WebSocket>,
    writer: tokio::task::JoinHandle<u64>,
    pending: Pending,
) -> impl std::future::Future<Output = ()> {
    async move {
        // A resumed session: the old connection's reader (closed 4409) finishes the frames it
        // already read before this one reads its first.
        let turn = reader.session.reader_turn(READER_HANDOFF).await;
        if turn.is_none() {
            tracing::warn!(user = %reader.user, conn = pending.conn, "the previous connection's reader is still busy: reading anyway");
        }
        reader.read_loop(stream).await;
        drop(turn);
        let written = writer.await.unwrap_or(pending.start);
        let reason = reader.closer.reason().unwrap_or(CloseReason {
            code: CLOSE_NORMAL,
            reason: "closed",
        });
        let node = &reader.node;
        let keep = reason.keeps_session() && node.config().resume_window > Duration::ZERO;
        tracing::info!(
            user = %reader.user,
            node = %node.id(),
            conn = pending.conn,
            code = reason.code,
            reason = reason.reason,
            session_kept = keep,
            secs = pending.opened.elapsed().as_secs_f64(),
            "connection closed"
        );
        metrics::counter!("signal_connections_closed_total", "code" => reason.code.to_string())
            .increment(1);
        metrics::gauge!("signal_connections").decrement(1.0);
        node.connection_count(-1);
        pending.finish(keep, written);
    }
}

/// A `FuturesOrdered` allocated at its first use (8 B until then): an empty one is 64 B and an
/// `Arc`'d queue of about 150 B, which every connection that never sends a chat message (or
/// never relays to another node) would keep.
struct Ordered<F: std::future::Future>(Option<Box<FuturesOrdered<F>>>);

impl<F: std::future::Future> Default for Ordered<F> {
    fn default() -> Self {
        Ordered(None)
    }
}

impl<F: std::future::Future> Ordered<F> {
    fn is_empty(&self) -> bool {
        self.0.as_deref().is_none_or(FuturesOrdered::is_empty)
    }

    fn len(&self) -> usize {
        self.0.as_deref().map_or(0, FuturesOrdered::len)
    }

    fn push_back(&mut self, f: F) {
        self.0.get_or_insert_with(Box::default).push_back(f)
    }

    async fn next(&mut self) -> Option<F::Output> {
        match &mut self.0 {
            Some(q) => q.next().await,
            None => None,
        }
    }
}

struct Reader {
    node: Node,
    user: UserId,
    session: Session,
    closer: Closer,
    pongs: Arc<Pongs>,
    bucket: TokenBucket,
    router: Router,
    /// The sender of the last ROAP session this connection relayed for: its frames share one.
    roap: Option<Arc<RoapSender>>,
    /// Chat messages of this connection in flight (at most `--mailbox-inflight`), oldest
    /// first: their stores run at once, their pushes and answers go out in this order.
    chats: Ordered<BoxFuture<'static, ChatStep>>,
    /// The recipient of each entry of `chats` (`None`: an answer waiting its turn). At most
    /// one store per recipient is in flight, so that a recipient's mailbox gets this
    /// sender's messages in the order sent whatever the Redis connection does (reconnects,
    /// a script reload, a cluster redirect).
    chats_to: std::collections::VecDeque<Option<UserId>>,
    /// ROAP frames of this connection sent to other nodes and not answered yet (at most
    /// `--relay-inflight`), oldest first, and the Errors about frames read after them: the
    /// reader goes on reading while they are in flight, and settles them in this order (see
    /// [`Router::start`]). Never at the same time as `chats`: each waits for the other.
    forwards: Ordered<BoxFuture<'static, ForwardStep>>,
}

/// A frame relayed to another node, or an Error waiting behind such frames. Boxed, as
/// [`ChatStep`]: the reader's wait for the next frame holds room for the largest step, in
/// every idle connection's task.
enum ForwardStep {
    Sent(Box<Sent>),
    Answer(String),
}

/// A frame relayed to another node, answered.
struct Sent {
    forwarded: Forwarded,
    kind: RoapKind,
    sid: SessionId,
    start: Instant,
}

/// A chat message in flight, once its turn comes.
enum ChatStep {
    /// Its append finished: push it live, answer.
    Stored(Box<(Prepared, Result<Appended, MailboxError>)>),
    /// An Error about it, already built.
    Answer(String),
}

impl Reader {
    async fn read_loop(&mut self, stream: SplitStream<WebSocket>) {
        self.read_frames(stream).await;
        // Every message read gets its answer (before a resumed connection reads).
        self.drain_forwards().await;
        self.drain_chats().await;
    }

    async fn read_frames(&mut self, mut stream: SplitStream<WebSocket>) {
        let idle = self.node.config().idle_timeout;
        let window = self.node.mailbox().limits().inflight.max(1);
        let relay_window = self.node.config().relay_inflight.max(1);
        // Once the node closes the connection, frames the client sent before it saw the close
        // are still read and relayed (until its close frame, or `CLOSE_GRACE`): they are not
        // numbered, so the client could not tell they were lost.
        let mut grace: Option<tokio::time::Instant> = None;
        // One wait for the close, registered once (not a new waiter per frame).
        let closer = self.closer.clone();
        let closed = closer.closed();
        tokio::pin!(closed);
        loop {
            let wait = match grace {
                Some(until) => until.saturating_duration_since(tokio::time::Instant::now()),
                None => idle,
            };
            let next = tokio::select! {
                biased;
                _ = &mut closed, if grace.is_none() => {
                    let slow = self.closer.reason().is_some_and(|r| r.code == CLOSE_SLOW);
                    if slow {
                        return;
                    }
                    grace = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                    continue;
                }
                Some(step) = self.chats.next(), if !self.chats.is_empty() => {
                    Box::pin(self.chat_step(step)).await;
                    continue;
                }
                Some(step) = self.forwards.next(), if !self.forwards.is_empty() => {
                    Box::pin(self.forward_step(step)).await;
                    continue;
                }
                next = tokio::time::timeout(wait, stream.next()),
                    if self.chats.len() < window && self.forwards.len() < relay_window => next,
            };
            if grace.is_some() {
                match next {
                    Ok(Some(Ok(WsMessage::Text(t)))) => {
                        Box::pin(self.on_text(t.as_str())).await;
                        continue;
                    }
                    Ok(Some(Ok(
                        WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Binary(_),
                    ))) => continue,
                    _ => return,
                }
            }
            match next {
                Err(_) => {
                    self.closer.close(CLOSE_NORMAL, "idle timeout");
                    return;
                }
                Ok(None) => {
                    self.closer.close(CLOSE_NORMAL, "client gone");
                    return;
                }
                Ok(Some(Err(e))) => {
                    // The socket's stream ends after any error: answer what can be answered,
                    // then close with the matching code.
                    let inner = e.into_inner();
                    match inner.downcast_ref::<tungstenite::Error>() {
                        Some(tungstenite::Error::Capacity(_)) => {
                            tracing::info!(user = %self.user, cap = self.node.config().hard_frame_cap(), "frame above the hard cap: closing 1009");
                            metrics::counter!("signal_errors_total", "error_type" => "TOOLARGE")
                                .increment(1);
                            self.closer.close(CLOSE_TOO_LARGE, "message too large");
                        }
                        Some(tungstenite::Error::Utf8(_)) => {
                            tracing::info!(user = %self.user, "text frame is not valid UTF-8: closing 1007");
                            self.reply_error(
                                None,
                                None,
                                ErrorType::BadMessage,
                                "text frame is not valid UTF-8".into(),
                            );
                            self.closer.close(CLOSE_BAD_DATA, "invalid UTF-8");
                        }
                        Some(tungstenite::Error::Protocol(p)) => {
                            tracing::info!(user = %self.user, error = %p, "WebSocket protocol error: closing 1002");
                            self.closer.close(CLOSE_PROTOCOL, "protocol error");
                        }
                        _ => {
                            tracing::debug!(user = %self.user, error = %inner, "socket error");
                            self.closer.close(CLOSE_NORMAL, "socket error");
                        }
                    }
                    return;
                }
                Ok(Some(Ok(msg))) => match msg {
                    // Boxed: the handler's future (relay, mailbox) is most of this task's size
                    // and lives only while one frame is processed, not while the socket idles.
                    WsMessage::Text(t) => Box::pin(self.on_text(t.as_str())).await,
                    WsMessage::Binary(_) => {
                        self.drain_chats().await;
                        if self.allowed(None, None) {
                            self.reply_error(
                                None,
                                None,
                                ErrorType::BadMessage,
                                "binary frames are not accepted: send one JSON object per text frame".into(),
                            );
                        }
                    }
                    WsMessage::Ping(_) | WsMessage::Pong(_) => {}
                    WsMessage::Close(_) => {
                        self.closer.close(CLOSE_NORMAL, REASON_CLIENT_CLOSED);
                        return;
                    }
                },
            }
        }
    }

    /// Takes a rate-limit token; when there is none, answers RATELIMITED (naming the peer and
    /// session).
    fn allowed(&mut self, peer: Option<&UserId>, session: Option<&SessionId>) -> bool {
        if self.bucket.take() {
            return true;
        }
        self.reply_error(
            peer.cloned(),
            session.cloned(),
            ErrorType::RateLimited,
            format!(
                "more than {} messages per second (burst {}): message dropped",
                self.node.config().rate_limit,
                self.node.config().rate_burst
            ),
        );
        false
    }

    /// Takes a token for a chat message; when there is none, answers RATELIMITED with the
    /// message's `id` (and `to` / `room`), so that the sender knows which one to retry.
    fn chat_allowed(&mut self, c: &ChatMessage) -> bool {
        if self.bucket.take() {
            return true;
        }
        self.reply_chat_error(
            c.to.clone(),
            Some(c.id.as_str()),
            c.room.as_ref().map(RoomId::as_str),
            ErrorType::RateLimited,
            format!(
                "more than {} messages per second (burst {}): message dropped",
                self.node.config().rate_limit,
                self.node.config().rate_burst
            ),
        );
        false
    }

    async fn on_text(&mut self, text: &str) {
        let start = Instant::now();
        let max = self.node.config().max_message_bytes;
        if text.len() <= max {
            if let Some(r) = Relayed::read(text, &self.user) {
                return self.on_relayed(r, start).await;
            }
        }
        let parsed = Message::parse_client(text);
        // Frames are processed in order: only direct chat messages (answered in order through
        // `chats`), Pings and Acks (no answer to order) overtake the chat messages in flight.
        let overtakes = matches!(
            &parsed,
            Ok(Message::Ping | Message::Ack(_))
                | Ok(Message::Message(ChatMessage { room: None, .. }))
        );
        if !overtakes {
            self.drain_chats().await;
        }
        // Only ROAP frames (relayed in order through `forwards`) and Pings and Acks overtake
        // the ROAP frames in flight; the Error about a frame that cannot be read waits its turn.
        let relayed = match &parsed {
            Ok(m) => m.roap_kind().is_some() || matches!(m, Message::Ping | Message::Ack(_)),
            Err(_) => true,
        };
        if !relayed {
            self.drain_forwards().await;
        }
        let (peer, session) = match &parsed {
            Ok(m) => (m.to().cloned(), m.session_id().cloned()),
            Err(r) => (r.to.clone(), r.session_id.clone()),
        };
        if text.len() > max {
            if let Ok(Message::Message(c)) = &parsed {
                if self.chat_allowed(c) {
                    tracing::info!(user = %self.user, bytes = text.len(), max, "chat frame too large");
                    self.reply_chat_error(
                        c.to.clone(),
                        Some(c.id.as_str()),
                        c.room.as_ref().map(RoomId::as_str),
                        ErrorType::TooLarge,
                        format!(
                            "frame of {} bytes exceeds the limit of {max} bytes",
                            text.len()
                        ),
                    );
                }
                return;
            }
            if self.allowed(peer.as_ref(), session.as_ref()) {
                tracing::info!(user = %self.user, bytes = text.len(), max, "frame too large");
                self.reply_error(
                    peer,
                    session,
                    ErrorType::TooLarge,
                    format!(
                        "frame of {} bytes exceeds the limit of {max} bytes",
                        text.len()
                    ),
                );
            }
            return;
        }
        let allowed = match &parsed {
            // An Error answering a chat message carries its id (contract, part two).
            Ok(Message::Message(c)) => self.chat_allowed(c),
            _ => self.allowed(peer.as_ref(), session.as_ref()),
        };
        if !allowed {
            return;
        }
        let msg = match parsed {
            Ok(m) => m,
            Err(r) => {
                tracing::info!(user = %self.user, error = %r.error, "bad message");
                if matches!(r.error, ParseError::BadField { ty: "Message", .. }) {
                    self.reply_chat_error(
                        peer,
                        r.id.as_deref(),
                        None,
                        ErrorType::BadMessage,
                        r.error.to_string(),
                    );
                } else {
                    self.reply_error(peer, session, ErrorType::BadMessage, r.error.to_string());
                }
                return;
            }
        };
        match msg {
            Message::Ping => {
                self.pongs.owe();
                return;
            }
            Message::Message(c) => {
                self.on_chat(c).await;
                return;
            }
            Message::SetPresence(s) => {
                self.node.presence().set(&self.node, &self.session, s).await;
                return;
            }
            Message::Subscribe(w) => {
                let users = w.users.as_slice();
                let presence = self.node.presence();
                if let Err(t) = presence.subscribe(&self.node, &self.session, users).await {
                    tracing::info!(user = %self.user, have = t.have, asked = users.len(), max = t.max, "too many subscriptions");
                    self.reply_error(
                        None,
                        None,
                        ErrorType::TooMany,
                        format!(
                            "at most {} subscriptions per session ({} now): none of these {} added",
                            t.max,
                            t.have,
                            users.len()
                        ),
                    );
                }
                return;
            }
            Message::Unsubscribe(w) => {
                let presence = self.node.presence();
                presence.unsubscribe(&self.node, &self.session, w.users.as_slice());
                return;
            }
            Message::Join(j) => {
                let r = self
                    .node
                    .rooms()
                    .join(&self.node, &self.session, j.room.clone())
                    .await;
                self.room_result(&j.room, r);
                return;
            }
            Message::Leave(l) => {
                let r = self
                    .node
                    .rooms()
                    .leave(&self.node, &self.session, l.room.clone())
                    .await;
                self.room_result(&l.room, r);
                return;
            }
            Message::Ack(a) => {
                let acked = self.session.ack(a.n);
                if let Ok(mail) = acked {
                    if !mail.is_empty() {
                        let node = self.node.clone();
                        let user = self.user.clone();
                        tokio::spawn(async move {
                            node.mailbox().acknowledged(&node, &user, mail).await;
                        });
                    }
                } else if let Err(last) = acked {
                    tracing::info!(user = %self.user, n = a.n, last, "ack above the last frame sent");
                    self.reply_error(
                        None,
                        None,
                        ErrorType::BadMessage,
                        format!("Ack n={} is above the last frame sent ({last})", a.n),
                    );
                }
                return;
            }
            _ => {}
        }
        let (Some(to), Some(sid)) = (peer, session) else {
            // Every relayed client message has both (parse_client guarantees it).
            self.reply_error(
                None,
                None,
                ErrorType::BadMessage,
                "not a relayed message".into(),
            );
            return;
        };
        if self.spoofed(msg.from(), &to, &sid) {
            return;
        }
        let Some(kind) = msg.roap_kind() else {
            // Every message with `to` and `sessionID` is one (parse_client guarantees it).
            self.reply_error(
                Some(to),
                Some(sid),
                ErrorType::BadMessage,
                "not a relayed message".into(),
            );
            return;
        };
        // The client's text with `from` spliced in (no second JSON pass), see proto.
        let frame = msg.into_relay_frame(text, &self.user);
        self.relay_roap(start, kind, to, sid, frame).await;
    }

    /// A relayed ROAP message read on the fast path (`Relayed`: the plain frames, borrowed,
    /// no SDP copied): the same steps as [`Self::on_text`] takes for it after the full parse.
    async fn on_relayed(&mut self, r: Relayed<'_>, start: Instant) {
        self.drain_chats().await;
        if !self.allowed(Some(&r.to), Some(&r.session_id)) {
            return;
        }
        if self.spoofed(r.from.as_ref(), &r.to, &r.session_id) {
            return;
        }
        let frame = r.frame(&self.user);
        let Relayed {
            kind,
            to,
            session_id,
            ..
        } = r;
        self.relay_roap(start, kind, to, session_id, frame).await;
    }

    /// Whether the client wrote a `from` other than itself (answered FORBIDDEN).
    fn spoofed(&mut self, from: Option<&UserId>, to: &UserId, sid: &SessionId) -> bool {
        match from {
            Some(from) if from != &self.user => {
                tracing::info!(user = %self.user, claimed = %from, "spoofed from refused");
                self.reply_error(
                    Some(to.clone()),
                    Some(sid.clone()),
                    ErrorType::Forbidden,
                    format!("from must be your own user id ({})", self.user),
                );
                true
            }
            _ => false,
        }
    }

    /// Relays a ROAP `frame` of type `kind` to `to`; an undelivered one is answered.
    async fn relay_roap(
        &mut self,
        start: Instant,
        kind: RoapKind,
        to: UserId,
        sid: SessionId,
        frame: String,
    ) {
        let sender = match &self.roap {
            Some(r) if r.session_id == sid.as_str() => r.clone(),
            _ => {
                let r = Arc::new(RoapSender {
                    sender: self.user.clone(),
                    session_id: sid.as_str().to_owned(),
                });
                self.roap = Some(r.clone());
                r
            }
        };
        let origin = Origin::Roap(sender);
        // To another node, as the route cache says: sent now, answered later (the reader
        // reads on meanwhile, within `--relay-inflight`).
        let (to, frame) = match self.router.start(&origin, to, frame) {
            Ok(answer) => {
                self.forwards.push_back(
                    async move {
                        ForwardStep::Sent(Box::new(Sent {
                            forwarded: answer.await,
                            kind,
                            sid,
                            start,
                        }))
                    }
                    .boxed(),
                );
                return;
            }
            Err(back) => back,
        };
        // Anything else waits for the frames in flight, so that it cannot overtake them.
        self.drain_forwards().await;
        let relayed = self.router.relay(&origin, &to, &frame).await;
        self.settled(kind, to, sid, start, relayed);
    }

    /// Counts a relayed frame, or answers its sender why it was not delivered.
    fn settled(
        &self,
        kind: RoapKind,
        to: UserId,
        sid: SessionId,
        start: Instant,
        relayed: Result<Route, Undelivered>,
    ) {
        match relayed {
            Ok(route) => RelayMetrics::get().relayed(kind, route, start.elapsed()),
            Err(u) => {
                tracing::debug!(user = %self.user, %to, error = %u.error, "{}", u.description);
                let frame = self.error_frame(Some(to), Some(sid), u.error, u.description);
                self.answer(&frame);
            }
        }
    }

    /// The oldest frame in flight to another node got its answer: settle it (retried
    /// elsewhere if its location was stale) and answer its sender if it was not delivered.
    async fn forward_step(&mut self, step: ForwardStep) {
        match step {
            ForwardStep::Answer(frame) => {
                self.answer(&frame);
            }
            ForwardStep::Sent(sent) => {
                let Sent {
                    forwarded,
                    kind,
                    sid,
                    start,
                } = *sent;
                let delivered = forwarded.delivered();
                let (to, relayed) = self.router.finish(forwarded).await;
                self.settled(kind, to, sid, start, relayed);
                if !delivered {
                    // Refused (or lost): the frames sent after it may be on their way to the
                    // same stale location, to be sent on again. Nothing new is relayed before
                    // they are settled, so none can overtake them at the new location.
                    self.drain_forwards().await;
                }
            }
        }
    }

    /// Waits for every frame in flight to another node and settles them (in order).
    async fn drain_forwards(&mut self) {
        while let Some(step) = self.forwards.next().await {
            Box::pin(self.forward_step(step)).await;
        }
    }

    /// A chat message (contract section 6): stored in the recipient's mailbox, pushed live if
    /// the recipient has a session, answered `Accepted` or an Error naming its `id`.
    async fn on_chat(&mut self, msg: ChatMessage) {
        if let Some(from) = &msg.from {
            if from != &self.user {
                tracing::info!(user = %self.user, claimed = %from, "spoofed from refused");
                self.reply_chat_error(
                    msg.to.clone(),
                    Some(msg.id.as_str()),
                    None,
                    ErrorType::Forbidden,
                    format!("from must be your own user id ({})", self.user),
                );
                return;
            }
        }
        if let Some(room) = msg.room.clone() {
            let id = msg.id.clone();
            match self
                .node
                .rooms()
                .message(&self.node, &self.session, msg)
                .await
            {
                Ok(a) => {
                    self.answer(&Message::Accepted(a).to_json());
                }
                Err(r) => {
                    tracing::debug!(user = %self.user, %room, %id, error = %r.error, "{}", r.description);
                    self.reply_chat_error(
                        None,
                        Some(id.as_str()),
                        Some(room.as_str()),
                        r.error,
                        r.description,
                    );
                }
            }
            return;
        }
        let to = msg.to.clone();
        let id = msg.id.clone();
        let mailbox = self.node.mailbox().clone();
        let prepared = match mailbox.prepare(&self.user, msg) {
            Ok(p) => p,
            Err(r) => {
                tracing::debug!(user = %self.user, %id, error = %r.error, "{}", r.description);
                self.reply_chat_error(to, Some(id.as_str()), None, r.error, r.description);
                return;
            }
        };
        // One store per recipient in flight: wait for the earlier one to this recipient.
        while self
            .chats_to
            .iter()
            .any(|t| t.as_ref() == Some(&prepared.to))
        {
            match self.chats.next().await {
                Some(step) => Box::pin(self.chat_step(step)).await,
                None => break,
            }
        }
        // A store permit of the node; this connection's own stores go on meanwhile (they
        // hold permits too).
        let permit = loop {
            tokio::select! {
                biased;
                Some(step) = self.chats.next(), if !self.chats.is_empty() => {
                    Box::pin(self.chat_step(step)).await;
                }
                p = mailbox.store_permit() => break p,
            }
        };
        self.chats_to.push_back(Some(prepared.to.clone()));
        let store = mailbox.store_with(permit, self.user.clone(), prepared);
        self.chats
            .push_back(async move { ChatStep::Stored(Box::new(store.await)) }.boxed());
    }

    /// The next chat message in flight got its turn: push it live and answer.
    async fn chat_step(&mut self, step: ChatStep) {
        self.chats_to.pop_front();
        match step {
            ChatStep::Answer(frame) => {
                self.answer(&frame);
            }
            ChatStep::Stored(stored) => {
                let (p, stored) = *stored;
                let (to, id) = (p.to.clone(), p.id.clone());
                let mailbox = self.node.mailbox().clone();
                match mailbox
                    .finish(&mut self.router, &self.user, p, stored)
                    .await
                {
                    Ok(a) => {
                        self.answer(&Message::Accepted(a).to_json());
                    }
                    Err(r) => {
                        tracing::debug!(user = %self.user, %id, error = %r.error, "{}", r.description);
                        self.reply_chat_error(
                            Some(to),
                            Some(id.as_str()),
                            None,
                            r.error,
                            r.description,
                        );
                    }
                }
            }
        }
    }

    /// Waits for every chat message in flight and answers them (in order).
    async fn drain_chats(&mut self) {
        while let Some(step) = self.chats.next().await {
            Box::pin(self.chat_step(step)).await;
        }
    }

    /// Answers a Join or Leave that was refused (the reply itself was pushed on success).
    fn room_result(&self, room: &RoomId, r: Result<(), crate::rooms::RoomRefusal>) {
        if let Err(r) = r {
            tracing::debug!(user = %self.user, %room, error = %r.error, "{}", r.description);
            metrics::counter!("signal_errors_total", "error_type" => r.error.as_str()).increment(1);
            let m = Message::room_error(self.user.clone(), room, r.error, r.description);
            self.answer(&m.to_json());
        }
    }

    /// Queues an answer (Accepted, an Error) to this connection's user. One that finds the
    /// session gone (ended, or handed over to another node before this reader finished: a
    /// takeover waits for it at most 800 ms) is counted; the client sends every unanswered
    /// message again after it reconnects, and the node answers the copy.
    fn answer(&self, frame: &str) {
        if let Err(e) = self.session.push(frame, Origin::Node) {
            let reason = match e {
                PushError::Full => "full",
                PushError::Closed => "session_gone",
            };
            metrics::counter!("signal_answers_dropped_total", "reason" => reason).increment(1);
            tracing::debug!(user = %self.user, reason, "answer dropped");
        }
    }

    /// An error about chat message `id` (no `sessionID`; `from` = its recipient). Queued
    /// behind the chat messages in flight, so that the sender's answers keep its order.
    fn reply_chat_error(
        &mut self,
        peer: Option<UserId>,
        id: Option<&str>,
        room: Option<&str>,
        error: ErrorType,
        description: String,
    ) {
        metrics::counter!("signal_errors_total", "error_type" => error.as_str()).increment(1);
        let m = Message::chat_error(self.user.clone(), peer, id, room, error, description);
        if self.chats.is_empty() {
            self.answer(&m.to_json());
        } else {
            let frame = m.to_json();
            self.chats_to.push_back(None);
            self.chats
                .push_back(futures::future::ready(ChatStep::Answer(frame)).boxed());
        }
    }

    /// Sends a server error to this connection's user (`from` = the peer the message was meant
    /// for), behind the answers of the frames in flight to other nodes. If even that does not
    /// fit in the queue, the connection is being closed (1013).
    fn reply_error(
        &mut self,
        peer: Option<UserId>,
        session: Option<SessionId>,
        error: ErrorType,
        description: String,
    ) {
        let frame = self.error_frame(peer, session, error, description);
        if self.forwards.is_empty() {
            self.answer(&frame);
        } else {
            self.forwards
                .push_back(futures::future::ready(ForwardStep::Answer(frame)).boxed());
        }
    }

    /// A server error for this connection's user (counted).
    fn error_frame(
        &self,
        peer: Option<UserId>,
        session: Option<SessionId>,
        error: ErrorType,
        description: String,
    ) -> String {
        metrics::counter!("signal_errors_total", "error_type" => error.as_str()).increment(1);
        Message::server_error(self.user.clone(), peer, session, error, description).to_json()
    }
}

/// What the writer of one connection reads from.
struct Writer {
    session: Session,
    conn: u64,
    closer: Closer,
    outlet: Outlet,
    welcome: String,
    /// The last frame number the client already has.
    start: u64,
    pongs: Arc<Pongs>,
}

impl Writer {
    /// The socket failed: the connection closes, and producers leave the socket alone.
    fn socket_failed(&self) {
        self.closer.close(CLOSE_NORMAL, "socket write failed");
        drop(self.outlet.take());
    }
}

/// Writes the Welcome, then shares the socket with the session's producers (see `outlet`) and
/// writes what they leave to it: bursts, replays, frames the socket could not take at once,
/// pongs and pings; until the connection closes. Then it takes the socket back and writes
/// (unless the reader is slow) what is still queued, and the close frame. Returns the last
/// frame number it knows reached the socket.
///
/// A plain `fn` returning an `async move` block: an `async fn` would keep a second copy of its
/// arguments in the task (rustc moves them into locals), about 150 B per idle connection.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn write_loop(mut w: Writer, ping_interval: Duration) -> impl std::future::Future<Output = u64> {
    async move {
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One wait for the close, registered once (not a new waiter per frame).
        let closer = w.closer.clone();
        let closed = closer.closed();
        tokio::pin!(closed);
        let mut welcome = Some(WsMessage::Text(std::mem::take(&mut w.welcome).into()));
        // Written whatever comes: a connection closed at once still gets its Welcome first
        // (then the close frame with its code).
        if !std::future::poll_fn(|cx| w.outlet.poll_send(cx, &mut welcome)).await {
            w.socket_failed();
            return w.start;
        }
        w.outlet.open();
        loop {
            let turn = tokio::select! {
                biased;
                _ = &mut closed => break,
                t = std::future::poll_fn(|cx| w.session.poll_write(w.conn, cx)) => t,
            };
            match turn {
                Turn::More => {
                    // A long replay or a flood: let the other tasks of this worker run.
                    tokio::task::consume_budget().await;
                    continue;
                }
                Turn::Idle => {}
                Turn::Gone => {
                    // The session went on without this connection (resumed elsewhere, ended).
                    w.closer
                        .close(CLOSE_REPLACED, "replaced by a newer connection");
                    break;
                }
                Turn::Failed => {
                    w.socket_failed();
                    return w.session.written();
                }
            }
            let mut msg = tokio::select! {
                biased;
                _ = &mut closed => break,
                _ = w.pongs.next() => Some(WsMessage::Text(Message::Pong.to_json().into())),
                _ = w.session.woken() => None,
                _ = ping.tick() => Some(WsMessage::Ping(bytes::Bytes::new())),
            };
            if msg.is_some() {
                let sent = tokio::select! {
                    biased;
                    _ = &mut closed => break,
                    ok = std::future::poll_fn(|cx| w.outlet.poll_send(cx, &mut msg)) => ok,
                };
                if !sent {
                    w.socket_failed();
                    return w.session.written();
                }
            }
        }
        let mut written = w.session.written();
        // From here on producers leave the socket alone.
        let (Some((mut sink, unflushed)), Some(reason)) = (w.outlet.take(), w.closer.reason())
        else {
            return written;
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            // What was queued before a drain still goes out; a slow connection gets only the
            // close frame (its session keeps the rest for a resume).
            if reason.code != CLOSE_SLOW {
                if sink.flush().await.is_err() {
                    return;
                }
                if let Some(u) = unflushed {
                    written = written.max(u);
                }
                while let Next::Frame(n, text) = w.session.try_next_frame(w.conn, written) {
                    if sink.send(WsMessage::Text(text)).await.is_err() {
                        return;
                    }
                    written = n;
                }
            }
            let frame = CloseFrame {
                code: reason.code,
                reason: reason.reason.into(),
            };
            let _ = sink.send(WsMessage::Close(Some(frame))).await;
            let _ = sink.close().await;
        })
        .await;
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pongs_are_counted_and_bounded() {
        let pongs = Pongs::default();
        for _ in 0..(MAX_OWED_PONGS as usize + 5) {
            pongs.owe();
        }
        for _ in 0..MAX_OWED_PONGS {
            tokio::time::timeout(Duration::from_secs(1), pongs.next())
                .await
                .expect("an owed pong");
        }
        let more = tokio::time::timeout(Duration::from_millis(20), pongs.next()).await;
        assert!(
            more.is_err(),
            "only {MAX_OWED_PONGS} pongs are owed at most"
        );
        pongs.owe();
        tokio::time::timeout(Duration::from_secs(1), pongs.next())
            .await
            .expect("a pong owed after the writer waited");
    }
}
