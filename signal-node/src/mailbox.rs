//! Chat messages and the offline mailbox (contract section 6): owns the node's handle on the
//! [`store::MailboxStore`] and its limits, and the three steps of a message's life on this
//! node — submit (store first, then push live to the recipient's session if any, answer
//! `Accepted`), push at connect (the stored messages of a fresh session, paged and
//! flow-controlled), and acknowledge (delete what the recipient acknowledged, tell the sender
//! `Delivered`).

pub mod batch;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use signal_proto::chat::{is_chat_frame, stamp_delayed};
use signal_proto::{Accepted, ChatMessage, Delivered, ErrorType, Message, MessageId, UserId};

use crate::node::Node;
use crate::router::Router;
use crate::session::{AckedMail, Origin, Session};
pub use store::{
    Appended, EntryId, MailboxError, MailboxStore, NewMessage, StoreLimits, StoredMessage,
};

/// Messages read from the store per page when pushing at connect.
pub const PUSH_PAGE: usize = 50;

/// Bounds of the mailbox (from the node's flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxLimits {
    pub store: StoreLimits,
    /// `--max-body-bytes`.
    pub max_body_bytes: usize,
    /// `--mailbox-inflight`: chat messages of one connection whose store is under way at
    /// once (their answers and pushes still go out in the order sent); 1: one at a time.
    pub inflight: usize,
    /// `--mailbox-inflight-node`: chat message stores under way at once on this node, all
    /// connections together (past it a connection waits before issuing the next store, so
    /// that a backlog waits in the node, not in Redis against its response timeout).
    pub inflight_node: usize,
}

pub const DEFAULT_MAILBOX_MAX_MESSAGES: usize = 1000;
pub const DEFAULT_MAILBOX_TTL_SECS: u64 = 604_800;
pub const DEFAULT_MAX_BODY_BYTES: usize = 4096;
pub const DEFAULT_MAILBOX_INFLIGHT: usize = 32;
pub const DEFAULT_MAILBOX_INFLIGHT_NODE: usize = 512;

impl Default for MailboxLimits {
    fn default() -> Self {
        MailboxLimits {
            store: StoreLimits {
                max_messages: DEFAULT_MAILBOX_MAX_MESSAGES,
                ttl: Duration::from_secs(DEFAULT_MAILBOX_TTL_SECS),
            },
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            inflight: DEFAULT_MAILBOX_INFLIGHT,
            inflight_node: DEFAULT_MAILBOX_INFLIGHT_NODE,
        }
    }
}

/// Why a message was refused: the Error the sender gets (nothing was stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub error: ErrorType,
    pub description: String,
}

/// A checked chat message on its way to the store: recipient, id, the frame the recipient
/// gets, the body (for the `message.stored` webhook) and the `ts` it was stamped with.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub to: UserId,
    pub id: MessageId,
    pub frame: String,
    body: String,
    ts: u64,
}

/// What [`Mailbox::acknowledged`] reads of a delivered chat frame.
#[derive(serde::Deserialize)]
struct AckedHead<'a> {
    #[serde(borrow)]
    from: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    room: Option<serde::de::IgnoredAny>,
}

/// The node's mailbox: the store and its limits. A cheap `Clone` handle.
#[derive(Debug, Clone)]
pub struct Mailbox {
    store: MailboxStore,
    limits: MailboxLimits,
    /// `inflight_node` permits, one held by each store under way.
    stores: Arc<Semaphore>,
    /// Where the stores go: together with those ready at the same time.
    batcher: batch::Batcher,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Mailbox {
    pub fn new(store: MailboxStore, limits: MailboxLimits) -> Mailbox {
        let stores = Arc::new(Semaphore::new(limits.inflight_node.max(1)));
        let batcher = batch::Batcher::new(store.clone(), limits.store, limits.inflight_node);
        Mailbox {
            store,
            limits,
            stores,
            batcher,
        }
    }

    pub fn limits(&self) -> &MailboxLimits {
        &self.limits
    }

    pub fn store(&self) -> &MailboxStore {
        &self.store
    }

    /// Stores `msg` (validated, `to` set) from `sender` in the recipient's mailbox, then pushes
    /// it to the recipient's session if it has one. Nothing is stored when this fails.
    pub async fn submit(
        &self,
        router: &mut Router,
        sender: &UserId,
        msg: ChatMessage,
    ) -> Result<Accepted, Refused> {
        let prepared = self.prepare(sender, msg)?;
        let stored = self.store_prepared(sender, &prepared).await;
        self.finish(router, sender, prepared, stored).await
    }

    /// The first step of [`Mailbox::submit`], without I/O: checks `msg` and builds the frame
    /// the recipient gets (`from`, `ts` set).
    pub fn prepare(&self, sender: &UserId, mut msg: ChatMessage) -> Result<Prepared, Refused> {
        let Some(to) = msg.to.clone() else {
            return Err(Refused {
                error: ErrorType::BadMessage,
                description: "a Message needs `to`".into(),
            });
        };
        if msg.body.len() > self.limits.max_body_bytes {
            return Err(Refused {
                error: ErrorType::TooLarge,
                description: format!(
                    "body of {} bytes exceeds the limit of {} bytes",
                    msg.body.len(),
                    self.limits.max_body_bytes
                ),
            });
        }
        let ts = now_ms();
        msg.from = Some(sender.clone());
        msg.ts = Some(ts);
        msg.delayed = None;
        let id = msg.id.clone();
        let message = Message::Message(msg);
        let frame = message.to_json();
        let body = match message {
            Message::Message(m) => m.body,
            _ => String::new(),
        };
        Ok(Prepared {
            to,
            id,
            frame,
            body,
            ts,
        })
    }

    /// A permit for one store under way (`--mailbox-inflight-node`); waits while all are
    /// taken. Held by the future of [`Mailbox::store_with`].
    pub async fn store_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.stores.clone().acquire_owned().await.ok()
    }

    /// [`Mailbox::store_prepared`] holding `permit` until the append is done, through the
    /// batcher (appends ready at the same time share a round trip: [`batch`]).
    pub fn store_with(
        &self,
        permit: Option<OwnedSemaphorePermit>,
        sender: UserId,
        p: Prepared,
    ) -> impl std::future::Future<Output = (Prepared, Result<Appended, MailboxError>)> + Send + 'static
    {
        let batcher = self.batcher.clone();
        async move {
            let r = batcher.append(sender, p).await;
            drop(permit);
            r
        }
    }

    /// The second step: the store's append (the only I/O before the answer).
    pub async fn store_prepared(
        &self,
        sender: &UserId,
        p: &Prepared,
    ) -> Result<Appended, MailboxError> {
        self.store
            .append(&p.to, sender, &p.id, &p.frame, p.ts, self.limits.store)
            .await
    }

    /// The last step: after the append `stored`, pushes the message live to the recipient's
    /// session if it has one and gives the answer for the sender.
    pub async fn finish(
        &self,
        router: &mut Router,
        sender: &UserId,
        p: Prepared,
        stored: Result<Appended, MailboxError>,
    ) -> Result<Accepted, Refused> {
        let Prepared {
            to,
            id,
            frame,
            body,
            ts,
        } = p;
        match stored {
            Ok(Appended::Duplicate { ts }) => {
                metrics::counter!("signal_mail_duplicates_total").increment(1);
                Ok(Accepted {
                    id,
                    to: Some(to),
                    room: None,
                    ts,
                    stored: Some(true),
                    recipients: None,
                    extra: Default::default(),
                })
            }
            Ok(Appended::Stored(entry)) => {
                // Best effort: the message is in the mailbox whatever happens here.
                let pushed = router
                    .relay(&Origin::Mail(entry), &to, &frame)
                    .await
                    .is_ok();
                if !pushed {
                    router
                        .node()
                        .webhooks()
                        .message_stored(sender, &to, &id, &body);
                }
                metrics::counter!("signal_mail_accepted_total", "stored" => if pushed { "false" } else { "true" })
                    .increment(1);
                Ok(Accepted {
                    id,
                    to: Some(to),
                    room: None,
                    ts,
                    stored: Some(!pushed),
                    recipients: None,
                    extra: Default::default(),
                })
            }
            Err(MailboxError::Full) => {
                metrics::counter!("signal_mail_refused_total", "reason" => "full").increment(1);
                Err(Refused {
                    error: ErrorType::MailboxFull,
                    description: format!(
                        "{to}'s mailbox holds {} messages, its quota",
                        self.limits.store.max_messages
                    ),
                })
            }
            Err(e) => {
                metrics::counter!("signal_mail_refused_total", "reason" => "unavailable")
                    .increment(1);
                Err(Refused {
                    error: ErrorType::Unavailable,
                    description: format!("{e}; nothing stored, retry later"),
                })
            }
        }
    }

    /// The recipient `user` acknowledged `frames` (every frame up to the Ack): the chat
    /// messages among them leave the mailbox (by entry id when known: one XDEL; else by
    /// their dedupe markers), and their senders are told `Delivered`. Room messages were never
    /// in a mailbox (contract section 8): no store call, no Delivered.
    pub async fn acknowledged(&self, node: &Node, user: &UserId, frames: AckedMail) {
        let mut entries = Vec::new();
        let mut unknown = Vec::new();
        let acked: Vec<(UserId, MessageId)> = frames
            .iter()
            .filter(|(f, _)| is_chat_frame(f))
            .filter_map(|(f, entry)| {
                // The node's own rendering of a Message: only `from`, `id` and `room` are read
                // (borrowed; the body and the other fields are skipped, not copied).
                let head: AckedHead<'_> = serde_json::from_str(f).ok()?;
                if head.room.is_some() {
                    return None;
                }
                let from = UserId::new(head.from?.into_owned()).ok()?;
                let id = MessageId::new(head.id.into_owned()).ok()?;
                match entry {
                    Some(e) => entries.push(*e),
                    None => unknown.push((from.clone(), id.clone())),
                }
                Some((from, id))
            })
            .collect();
        if acked.is_empty() {
            return;
        }
        let deleted = async {
            let a = self.store.delete_entries(user, &entries).await?;
            let b = self.store.delete(user, &unknown).await?;
            Ok::<usize, MailboxError>(a + b)
        };
        match deleted.await {
            Ok(n) => {
                metrics::counter!("signal_mail_acked_total").increment(n as u64);
            }
            Err(e) => {
                // They stay in the mailbox and are delivered again to the next session.
                tracing::info!(%user, error = %e, "acknowledged messages not deleted");
                return;
            }
        }
        let mut router = Router::new(node.clone());
        for (from, id) in acked {
            let d = Message::Delivered(Delivered {
                id,
                from: user.clone(),
                extra: Default::default(),
            })
            .to_json();
            let _ = router.relay(&Origin::Node, &from, &d).await;
        }
    }

    /// Pushes the stored messages of a fresh session (`delayed:true`), a page at a time, never
    /// more than half the session's unwritten bound ahead of its writer. Live chat messages
    /// wait in the session meanwhile and follow when the mailbox has been read to its end
    /// (stored ones come first; each message reaches the session once, by entry id). Stops
    /// when the connection `conn` is no longer the session's: what was not acknowledged is
    /// still in the mailbox; a resume of this session continues the push after the last
    /// entry it delivered.
    pub async fn push_at_connect(&self, session: Session, conn: u64) {
        let ahead = (session.limits().unwritten_frames / 2).max(1) as u64;
        let mut cursor = session.mail_upto();
        let mut backoff = Duration::from_millis(100);
        let mut pushed = 0u64;
        loop {
            let page = match self
                .store
                .page(session.user(), cursor, PUSH_PAGE, self.limits.store)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::info!(user = %session.user(), error = %e, "mailbox push: store unavailable, retrying");
                    if session.unwritten(conn).is_none() {
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            if page.is_empty() {
                match session.mail_live(conn) {
                    Ok(true) | Err(_) => break,
                    // A live message could not wait: read once more.
                    Ok(false) => continue,
                }
            }
            for m in page {
                loop {
                    match session.unwritten(conn) {
                        None => return self.pushed(&session, pushed),
                        Some(u) if u >= ahead => {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Some(_) => break,
                    }
                }
                let frame = stamp_delayed(&m.frame);
                match session.push_stored(conn, frame.as_deref(), m.entry) {
                    Ok(true) => pushed += 1,
                    Ok(false) => {}
                    Err(_) => return self.pushed(&session, pushed),
                }
                cursor = Some(m.entry);
            }
        }
        self.pushed(&session, pushed);
    }

    fn pushed(&self, session: &Session, pushed: u64) {
        if pushed > 0 {
            metrics::counter!("signal_mail_pushed_total").increment(pushed);
            tracing::debug!(user = %session.user(), pushed, "mailbox pushed at connect");
        }
    }
}
