//! The node's append batcher: chat message stores that are ready at the same time go to the
//! mailbox store together, grouped by recipient (one script call appends one recipient's
//! messages in the order they came) and, on one Redis server, all groups in one pipeline (one
//! round trip); on Redis Cluster the groups go out concurrently, each to its slot. Nothing
//! waits to fill a batch: a batch is what queued up while the previous ones were issued, so an
//! idle node sends each message at once and a busy one sends fewer, bigger round trips.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::{Appended, MailboxError, MailboxStore, NewMessage, Prepared, StoreLimits};
use signal_proto::UserId;

/// Messages per batch at most (one pipeline; its groups are scripts of a few entries each).
pub const MAX_BATCH: usize = 64;

type Answer = (Prepared, Result<Appended, MailboxError>);

struct Job {
    sender: UserId,
    p: Prepared,
    reply: oneshot::Sender<Answer>,
}

/// A handle on the batcher task (started on first use, on the runtime of that use). Cheap to
/// clone; the task ends when the last handle is gone.
#[derive(Clone)]
pub struct Batcher {
    inner: Arc<Inner>,
}

struct Inner {
    store: MailboxStore,
    limits: StoreLimits,
    /// Bounded by the node's `--mailbox-inflight-node`: every job holds one of its permits.
    bound: usize,
    tx: OnceLock<mpsc::Sender<Job>>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Batcher")
    }
}

impl Batcher {
    pub fn new(store: MailboxStore, limits: StoreLimits, bound: usize) -> Batcher {
        Batcher {
            inner: Arc::new(Inner {
                store,
                limits,
                bound: bound.max(1),
                tx: OnceLock::new(),
            }),
        }
    }

    /// Appends `p` (from `sender`) with whatever else is ready; its own answer.
    pub async fn append(&self, sender: UserId, p: Prepared) -> Answer {
        let tx = self
            .inner
            .tx
            .get_or_init(|| {
                let (tx, rx) = mpsc::channel(self.inner.bound);
                let (store, limits) = (self.inner.store.clone(), self.inner.limits);
                tokio::spawn(run(store, limits, rx));
                tx
            })
            .clone();
        // What the answer names if the batcher is gone (runtime shutting down).
        let gone = |p: Prepared| {
            (
                p,
                Err(MailboxError::Unavailable("mailbox batcher stopped".into())),
            )
        };
        let (to, id, ts) = (p.to.clone(), p.id.clone(), p.ts);
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(job)) = tx.send(Job { sender, p, reply }).await {
            return gone(job.p);
        }
        match answer.await {
            Ok(a) => a,
            Err(_) => gone(Prepared {
                to,
                id,
                frame: String::new(),
                body: String::new(),
                ts,
            }),
        }
    }
}

async fn run(store: MailboxStore, limits: StoreLimits, mut rx: mpsc::Receiver<Job>) {
    let mut inflight = FuturesUnordered::new();
    loop {
        let first = tokio::select! {
            biased;
            Some(()) = inflight.next(), if !inflight.is_empty() => continue,
            j = rx.recv() => match j {
                Some(j) => j,
                None => break,
            },
        };
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        inflight.push(flush(store.clone(), limits, jobs));
    }
    while inflight.next().await.is_some() {}
}

/// One batch: grouped by recipient (in the order the jobs came), stored, each job answered.
async fn flush(store: MailboxStore, limits: StoreLimits, jobs: Vec<Job>) {
    let mut members: Vec<Vec<usize>> = Vec::new();
    {
        let mut slot: HashMap<&UserId, usize> = HashMap::new();
        for (i, j) in jobs.iter().enumerate() {
            let g = *slot.entry(&j.p.to).or_insert_with(|| {
                members.push(Vec::new());
                members.len() - 1
            });
            members[g].push(i);
        }
    }
    let msgs: Vec<Vec<NewMessage<'_>>> = members
        .iter()
        .map(|m| {
            m.iter()
                .map(|&i| NewMessage {
                    sender: &jobs[i].sender,
                    id: &jobs[i].p.id,
                    frame: &jobs[i].p.frame,
                    ts: jobs[i].p.ts,
                })
                .collect()
        })
        .collect();
    let groups: Vec<(&UserId, &[NewMessage<'_>])> = members
        .iter()
        .zip(&msgs)
        .map(|(m, msgs)| (&jobs[m[0]].p.to, msgs.as_slice()))
        .collect();
    let answers = store.append_groups(&groups, limits).await;
    let mut results: Vec<Option<Result<Appended, MailboxError>>> =
        jobs.iter().map(|_| None).collect();
    for (m, a) in members.iter().zip(answers) {
        match a {
            Ok(each) => {
                for (&i, r) in m.iter().zip(each) {
                    results[i] = Some(r);
                }
            }
            Err(e) => {
                for &i in m {
                    results[i] = Some(Err(e.clone()));
                }
            }
        }
    }
    drop(groups);
    drop(msgs);
    for (j, r) in jobs.into_iter().zip(results) {
        let r = r.unwrap_or_else(|| Err(MailboxError::Unavailable("no append answer".into())));
        // The sender's connection may be gone: nothing to answer then.
        let _ = j.reply.send((j.p, r));
    }
}
