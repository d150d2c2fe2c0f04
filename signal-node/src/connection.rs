//! One client WebSocket after the upgrade: a reader that processes incoming frames strictly in
//! order (validation, rate limit, relay), and a writer that drains the bounded outbound queue
//! to the socket and sends pings. Ends with one log line and the directory release.

use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use signal_proto::{ErrorType, Message, SessionId, UserId};
use tokio_tungstenite::tungstenite;

use crate::node::{Node, Pending};
use crate::outbound::{
    Closer, OutboundRx, CLOSE_BAD_DATA, CLOSE_NORMAL, CLOSE_PROTOCOL, CLOSE_SLOW, CLOSE_TOO_LARGE,
};
use crate::ratelimit::TokenBucket;
use crate::router::Router;

/// Time allowed to write the close frame (and flush what was queued before it).
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves an upgraded socket until it closes.
pub async fn serve(socket: WebSocket, mut pending: Pending) {
    let node = pending.node.clone();
    let user = pending.user.clone();
    let conn = pending.handle.conn;
    let closer = pending.handle.out.closer().clone();
    let Some(rx) = pending.rx.take() else {
        return;
    };
    tracing::info!(%user, node = %node.id(), conn, "connection open");
    metrics::counter!("signal_connections_opened_total").increment(1);
    let (sink, stream) = socket.split();
    let writer = tokio::spawn(write_loop(
        sink,
        rx,
        closer.clone(),
        node.config().ping_interval,
    ));
    let mut reader = Reader {
        node: node.clone(),
        user: user.clone(),
        pending: &pending,
        closer: closer.clone(),
        bucket: TokenBucket::new(node.config().rate_limit, node.config().rate_burst),
        router: Router::new(node.clone()),
    };
    reader.read_loop(stream).await;
    let _ = writer.await;
    let reason = closer.reason();
    let (code, why) = reason
        .map(|r| (r.code, r.reason))
        .unwrap_or((CLOSE_NORMAL, "closed"));
    tracing::info!(
        %user,
        node = %node.id(),
        conn,
        code,
        reason = why,
        secs = pending.opened.elapsed().as_secs_f64(),
        "connection closed"
    );
    metrics::counter!("signal_connections_closed_total", "code" => code.to_string()).increment(1);
    pending.finish().await;
}

struct Reader<'a> {
    node: Node,
    user: UserId,
    pending: &'a Pending,
    closer: Closer,
    bucket: TokenBucket,
    router: Router,
}

impl Reader<'_> {
    async fn read_loop(&mut self, mut stream: SplitStream<WebSocket>) {
        let idle = self.node.config().idle_timeout;
        loop {
            let next = tokio::select! {
                biased;
                _ = self.closer.closed() => return,
                next = tokio::time::timeout(idle, stream.next()) => next,
            };
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
                    WsMessage::Text(t) => self.on_text(t.as_str()).await,
                    WsMessage::Binary(_) => {
                        if self.allowed(&None, &None) {
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
                        self.closer.close(CLOSE_NORMAL, "client closed");
                        return;
                    }
                },
            }
        }
    }

    /// Takes a rate-limit token; answers RATELIMITED when there is none.
    /// Takes a token; when there is none, answers RATELIMITED (naming the peer and session).
    fn allowed(&mut self, peer: &Option<UserId>, session: &Option<SessionId>) -> bool {
        if self.bucket.take() {
            return true;
        }
        self.reply_error(
            peer.clone(),
            session.clone(),
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
        let parsed = Message::parse_client(text);
        let (peer, session) = match &parsed {
            Ok(m) => (m.to().cloned(), m.session_id().cloned()),
            Err(r) => (r.to.clone(), r.session_id.clone()),
        };
        if text.len() > max {
            if self.allowed(&peer, &session) {
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
        if !self.allowed(&peer, &session) {
            return;
        }
        let mut msg = match parsed {
            Ok(m) => m,
            Err(r) => {
                tracing::info!(user = %self.user, error = %r.error, "bad message");
                self.reply_error(peer, session, ErrorType::BadMessage, r.error.to_string());
                return;
            }
        };
        if matches!(msg, Message::Ping) {
            let _ = self.pending.handle.out.push(Message::Pong.to_json());
            return;
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
        if let Some(from) = msg.from() {
            if from != &self.user {
                tracing::info!(user = %self.user, claimed = %from, "spoofed from refused");
                self.reply_error(
                    Some(to),
                    Some(sid),
                    ErrorType::Forbidden,
                    format!("from must be your own user id ({})", self.user),
                );
                return;
            }
        }
        msg.set_from(self.user.clone());
        let kind = msg.kind();
        let frame = msg.to_json();
        match self
            .router
            .relay(&self.user, &to, sid.as_str(), frame.into())
            .await
        {
            Ok(route) => {
                metrics::counter!("signal_messages_relayed_total", "type" => kind, "route" => route.as_str())
                    .increment(1);
                metrics::histogram!("signal_relay_seconds", "route" => route.as_str())
                    .record(start.elapsed().as_secs_f64());
            }
            Err(u) => {
                tracing::debug!(user = %self.user, %to, error = %u.error, "{}", u.description);
                self.reply_error(Some(to), Some(sid), u.error, u.description);
            }
        }
    }

    /// Sends a server error to this connection's user (`from` = the peer the message was meant
    /// for). If even that does not fit in the queue, the connection is being closed (1013).
    fn reply_error(
        &self,
        peer: Option<UserId>,
        session: Option<SessionId>,
        error: ErrorType,
        description: String,
    ) {
        metrics::counter!("signal_errors_total", "error_type" => error.as_str()).increment(1);
        let m = Message::server_error(self.user.clone(), peer, session, error, description);
        let _ = self.pending.handle.out.push(m.to_json());
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, WsMessage>,
    mut rx: OutboundRx,
    closer: Closer,
    ping_interval: Duration,
) {
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            biased;
            _ = closer.closed() => break,
            frame = rx.recv() => match frame {
                Some(text) => WsMessage::Text(text),
                None => break,
            },
            _ = ping.tick() => WsMessage::Ping(bytes::Bytes::new()),
        };
        let sent = tokio::select! {
            biased;
            _ = closer.closed() => break,
            r = sink.send(msg) => r,
        };
        if sent.is_err() {
            closer.close(CLOSE_NORMAL, "socket write failed");
            return;
        }
    }
    // From here on a push fails (the sender then gets an error): nothing is queued behind
    // the close frame and silently dropped.
    rx.close();
    let Some(reason) = closer.reason() else {
        return;
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        // What was queued before a replacement or drain still goes out; a slow connection
        // gets only the close frame.
        if reason.code != CLOSE_SLOW {
            while let Some(text) = rx.try_recv() {
                if sink.send(WsMessage::Text(text)).await.is_err() {
                    return;
                }
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
}
