//! The mailbox store behind one interface: every chat message kept per recipient until the
//! recipient acknowledges it, with a per-(sender, id) dedupe marker for the TTL, the quota and
//! the TTL expiry. Two backends: memory (`--dev`, in-process tests) and Redis (one hash tag
//! `{mb:<user>}` per recipient: a stream of messages and a dedupe key per (sender, id); one Lua
//! script per append or page, a plain XDEL per ack).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::redis_link::RedisConn;
use signal_proto::{MessageId, UserId};

/// Quota and expiry (`--mailbox-max-messages`, `--mailbox-ttl-secs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    pub max_messages: usize,
    pub ttl: Duration,
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailboxError {
    #[error("the recipient's mailbox is full")]
    Full,
    #[error("mailbox unavailable: {0}")]
    Unavailable(String),
    #[error("bad mailbox url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
}

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored under this entry id.
    Stored(EntryId),
    /// The same (sender, id) was already accepted within the TTL, at `ts`.
    Duplicate { ts: u64 },
}

/// A stored message: its entry id (the page cursor) and the delivered frame (without `n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub entry: EntryId,
    pub frame: String,
}

/// Where a message sits in its recipient's mailbox: the stream entry id `<ms>-<seq>`. Entry
/// ids of one mailbox only grow (a later append gets a higher id), so a session that pushed
/// every entry up to `e` knows that a live copy of an entry `<= e` is a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    /// Parses `<ms>-<seq>` (or a bare `<ms>`); `None` if malformed.
    pub fn parse(s: &str) -> Option<EntryId> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Some(EntryId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Appends messages for one or more recipients: per recipient (a group), in the order given,
/// after dropping its expired entries once, each message unless a duplicate; the quota is
/// checked per message (once full, every later message of the group is refused too: nothing
/// is stored out of order). KEYS: per group its stream, then one dedupe marker per message.
/// ARGV: max, ttl_ms, the number of groups G, the number of messages of each group (G
/// values), then frame and ts per message. Returns, per group, {expired, status1, v1, ...}
/// one after the other: status 0 stored (v = entry id), 1 duplicate (v = the marker
/// "<first ts> <entry id>"), 2 full. On Redis Cluster a call has one group (one hash tag).
const APPEND_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local groups = tonumber(ARGV[3])
local out = {}
local k = 1
local a = 4 + groups
for g = 1, groups do
  local n = tonumber(ARGV[3 + g])
  local s = KEYS[k]
  local e = #out + 1
  out[e] = 0
  local len = redis.call('XLEN', s)
  if len > 0 then
    out[e] = redis.call('XTRIM', s, 'MINID', tostring(now - ttl))
    len = len - out[e]
  end
  local added = false
  for i = 1, n do
    local d = redis.call('GET', KEYS[k + i])
    if d then
      out[#out + 1] = 1
      out[#out + 1] = d
    elseif len >= max then
      out[#out + 1] = 2
      out[#out + 1] = ''
    else
      local eid = redis.call('XADD', s, '*', 'f', ARGV[a])
      redis.call('SET', KEYS[k + i], ARGV[a + 1] .. ' ' .. eid, 'PX', ttl)
      len = len + 1
      added = true
      out[#out + 1] = 0
      out[#out + 1] = eid
    end
    a = a + 2
  end
  -- Twice the TTL: an idle mailbox vanishes, but not before its expired entries are
  -- counted by the next append or page within that time.
  if added then
    redis.call('PEXPIRE', s, 2 * ttl)
  end
  k = k + n + 1
end
return out
";

/// A page after a cursor, after dropping expired entries. KEYS: stream. ARGV: after, count,
/// ttl_ms. Returns {expired, id1, frame1, id2, frame2, ...}.
const PAGE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {0}
local len = redis.call('XLEN', KEYS[1])
if len == 0 then
  return out
end
out[1] = redis.call('XTRIM', KEYS[1], 'MINID', tostring(now - tonumber(ARGV[3])))
local r = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
for _, e in ipairs(r) do
  out[#out + 1] = e[1]
  local f = e[2]
  for i = 1, #f, 2 do
    if f[i] == 'f' then
      out[#out + 1] = f[i + 1]
    end
  end
end
return out
";

/// Deletes the entries that dedupe markers point at (acknowledged frames whose entry id is
/// not known here: handed over from another node). KEYS: stream, dedupe markers.
/// Returns how many entries were deleted.
const DELETE_LUA: &str = r"
local n = 0
for i = 2, #KEYS do
  local d = redis.call('GET', KEYS[i])
  if d then
    local eid = string.match(d, ' (.+)$')
    if eid then
      n = n + redis.call('XDEL', KEYS[1], eid)
    end
  end
end
return n
";

fn tag(user: &UserId) -> String {
    format!("{{mb:{user}}}")
}

fn stream_key(user: &UserId) -> String {
    format!("{}:s", tag(user))
}

/// Length-prefixed so that no (sender, id) pair can collide with another.
fn dedupe_key(user: &UserId, sender: &UserId, id: &MessageId) -> String {
    format!("{}:d:{}:{sender}:{id}", tag(user), sender.as_str().len())
}

/// The mailbox store. A cheap `Clone` handle.
#[derive(Clone)]
pub struct MailboxStore {
    backend: Backend,
}

impl std::fmt::Debug for MailboxStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.backend {
            Backend::Memory(_) => "MailboxStore(memory)",
            Backend::Redis { .. } => "MailboxStore(redis)",
        })
    }
}

#[derive(Clone)]
enum Backend {
    Memory(Arc<Mutex<Memory>>),
    Redis {
        conn: RedisConn,
        append: Arc<redis::Script>,
        page: Arc<redis::Script>,
        delete: Arc<redis::Script>,
    },
}

#[derive(Default)]
struct Memory {
    boxes: HashMap<UserId, MemBox>,
    /// Entry ids of every mailbox (one counter: a mailbox removed and created again still
    /// gets higher ids).
    next: u64,
}

#[derive(Default)]
struct MemBox {
    /// (entry seq, stored at, frame)
    entries: VecDeque<(u64, Instant, String)>,
    /// (sender, id) -> (first ts, entry seq, expires)
    seen: HashMap<(UserId, MessageId), (u64, u64, Instant)>,
}

impl MemBox {
    /// Drops expired entries and markers; returns how many entries expired.
    fn expire(&mut self, ttl: Duration) -> usize {
        let now = Instant::now();
        let before = self.entries.len();
        while self
            .entries
            .front()
            .is_some_and(|(_, at, _)| now.duration_since(*at) >= ttl)
        {
            self.entries.pop_front();
        }
        self.seen.retain(|_, (_, _, exp)| *exp > now);
        before - self.entries.len()
    }
}

fn expired_metric(n: usize) {
    if n > 0 {
        metrics::counter!("signal_mailbox_expired_total").increment(n as u64);
    }
}

fn unavailable(e: redis::RedisError) -> MailboxError {
    metrics::counter!("signal_mailbox_errors_total").increment(1);
    MailboxError::Unavailable(e.to_string())
}

impl Memory {
    /// [`MailboxStore::append_batch`] in memory.
    fn append(
        &mut self,
        to: &UserId,
        msgs: &[NewMessage<'_>],
        limits: StoreLimits,
    ) -> Vec<Result<Appended, MailboxError>> {
        let mut out = Vec::with_capacity(msgs.len());
        let mut next = self.next;
        let b = self.boxes.entry(to.clone()).or_default();
        expired_metric(b.expire(limits.ttl));
        for msg in msgs {
            let key = (msg.sender.clone(), msg.id.clone());
            if let Some((first, _, _)) = b.seen.get(&key) {
                out.push(Ok(Appended::Duplicate { ts: *first }));
                continue;
            }
            if b.entries.len() >= limits.max_messages {
                out.push(Err(MailboxError::Full));
                continue;
            }
            next += 1;
            let now = Instant::now();
            b.entries.push_back((next, now, msg.frame.to_owned()));
            b.seen.insert(key, (msg.ts, next, now + limits.ttl));
            out.push(Ok(Appended::Stored(EntryId { ms: 0, seq: next })));
        }
        self.next = next;
        out
    }
}

/// One message of an append: who sent it, its id, the frame the recipient gets, its `ts`.
#[derive(Debug, Clone, Copy)]
pub struct NewMessage<'a> {
    pub sender: &'a UserId,
    pub id: &'a MessageId,
    pub frame: &'a str,
    pub ts: u64,
}

/// The EVALSHA of [`APPEND_LUA`] for `groups` (recipient, its messages).
fn append_cmd(
    script: &redis::Script,
    groups: &[(&UserId, &[NewMessage<'_>])],
    limits: StoreLimits,
) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    let keys: usize = groups.iter().map(|(_, m)| 1 + m.len()).sum();
    cmd.arg(script.get_hash()).arg(keys);
    for (to, msgs) in groups {
        cmd.arg(stream_key(to));
        for m in *msgs {
            cmd.arg(dedupe_key(to, m.sender, m.id));
        }
    }
    cmd.arg(limits.max_messages)
        .arg(ttl_ms(limits.ttl))
        .arg(groups.len());
    for (_, msgs) in groups {
        cmd.arg(msgs.len());
    }
    for (_, msgs) in groups {
        for m in *msgs {
            cmd.arg(m.frame).arg(m.ts);
        }
    }
    cmd
}

fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// `cmd` (an EVALSHA of `script`), loading the script first if the server lost it.
async fn eval_loading(
    conn: &mut RedisConn,
    script: &redis::Script,
    cmd: &redis::Cmd,
) -> redis::RedisResult<redis::Value> {
    match cmd.query_async(conn).await {
        Err(e) if is_noscript(&e) => {
            script.load_async(conn).await?;
            cmd.query_async(conn).await
        }
        r => r,
    }
}

/// The answers of one append script for `groups`: per group, per message in its order.
type GroupAnswers = Result<Vec<Result<Appended, MailboxError>>, MailboxError>;

fn append_answers(
    v: redis::Value,
    groups: &[(&UserId, &[NewMessage<'_>])],
) -> Result<Vec<GroupAnswers>, MailboxError> {
    let bad = |what: &str| MailboxError::Unavailable(format!("bad append answer: {what}"));
    let out: Vec<redis::Value> = redis::from_redis_value(v).map_err(|e| bad(&e.to_string()))?;
    let want: usize = groups.iter().map(|(_, m)| 1 + 2 * m.len()).sum();
    if out.len() != want {
        return Err(bad("wrong length"));
    }
    let mut it = out.into_iter();
    let mut all = Vec::with_capacity(groups.len());
    for (_, msgs) in groups {
        let expired: usize = it
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or(0);
        expired_metric(expired);
        let mut answers = Vec::with_capacity(msgs.len());
        for m in *msgs {
            let (Some(status), Some(v)) = (it.next(), it.next()) else {
                return Err(bad("too short"));
            };
            let status: i64 = redis::from_redis_value(status).map_err(|e| bad(&e.to_string()))?;
            let v: String = redis::from_redis_value(v).map_err(|e| bad(&e.to_string()))?;
            answers.push(match status {
                0 => EntryId::parse(&v)
                    .map(Appended::Stored)
                    .ok_or_else(|| MailboxError::Unavailable(format!("bad stream entry id {v:?}"))),
                1 => {
                    let ts = v
                        .split(' ')
                        .next()
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(m.ts);
                    Ok(Appended::Duplicate { ts })
                }
                _ => Err(MailboxError::Full),
            });
        }
        all.push(Ok(answers));
    }
    Ok(all)
}

impl MailboxStore {
    pub fn memory() -> MailboxStore {
        MailboxStore {
            backend: Backend::Memory(Arc::default()),
        }
    }

    /// A Redis store (lazy connection, retried with backoff: a Redis down at start is no error).
    pub fn redis(
        cfg: impl Into<crate::redis_link::RedisConfig>,
    ) -> Result<MailboxStore, MailboxError> {
        let cfg: crate::redis_link::RedisConfig = cfg.into();
        let bad = |e: redis::RedisError| MailboxError::BadUrl {
            url: cfg.urls.join(","),
            reason: e.to_string(),
        };
        let conn = crate::redis_link::connect_lazy(&cfg).map_err(bad)?;
        Ok(MailboxStore {
            backend: Backend::Redis {
                conn,
                append: Arc::new(redis::Script::new(APPEND_LUA)),
                page: Arc::new(redis::Script::new(PAGE_LUA)),
                delete: Arc::new(redis::Script::new(DELETE_LUA)),
            },
        })
    }

    /// Stores `frame` for `to` unless (sender, id) was accepted within the TTL.
    pub async fn append(
        &self,
        to: &UserId,
        sender: &UserId,
        id: &MessageId,
        frame: &str,
        ts: u64,
        limits: StoreLimits,
    ) -> Result<Appended, MailboxError> {
        let msg = NewMessage {
            sender,
            id,
            frame,
            ts,
        };
        let mut r = self.append_batch(to, &[msg], limits).await?;
        r.pop()
            .unwrap_or_else(|| Err(MailboxError::Unavailable("empty append answer".into())))
    }

    /// Stores `msgs` for `to`, in this order, in one store call (one script on Redis): each
    /// gets its own answer (stored, duplicate, full). `Err`: none of them was stored.
    pub async fn append_batch(
        &self,
        to: &UserId,
        msgs: &[NewMessage<'_>],
        limits: StoreLimits,
    ) -> Result<Vec<Result<Appended, MailboxError>>, MailboxError> {
        let mut r = self.append_groups(&[(to, msgs)], limits).await;
        r.pop()
            .unwrap_or_else(|| Err(MailboxError::Unavailable("empty append answer".into())))
    }

    /// [`MailboxStore::append_batch`] for several recipients at once, in one round trip: on
    /// one Redis server (standalone, Sentinel) one script call for all of them; on Redis
    /// Cluster (a call must not cross hash tags) one call per recipient, issued concurrently,
    /// each to its slot. One answer per group, in the order given. A failed call is the
    /// failure of each of its groups (nothing of a failed group is answered stored).
    pub async fn append_groups(
        &self,
        groups: &[(&UserId, &[NewMessage<'_>])],
        limits: StoreLimits,
    ) -> Vec<Result<Vec<Result<Appended, MailboxError>>, MailboxError>> {
        match &self.backend {
            Backend::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(PoisonError::into_inner);
                groups
                    .iter()
                    .map(|(to, msgs)| Ok(m.append(to, msgs, limits)))
                    .collect()
            }
            Backend::Redis { conn, append, .. } => {
                // One script call for every group on one server; on Redis Cluster one per
                // recipient (its hash tag), issued concurrently.
                let calls: Vec<&[(&UserId, &[NewMessage<'_>])]> = if conn.is_cluster() {
                    groups.chunks(1).collect()
                } else {
                    vec![groups]
                };
                let calls = calls.into_iter().map(|part| {
                    let mut conn = conn.clone();
                    let cmd = append_cmd(append, part, limits);
                    async move {
                        let v = eval_loading(&mut conn, append, &cmd)
                            .await
                            .map_err(unavailable)?;
                        append_answers(v, part)
                    }
                });
                futures::future::join_all(calls)
                    .await
                    .into_iter()
                    .zip(if conn.is_cluster() {
                        groups.chunks(1)
                    } else {
                        groups.chunks(groups.len().max(1))
                    })
                    .flat_map(|(r, part)| match r {
                        Ok(each) => each,
                        Err(e) => part.iter().map(|_| Err(e.clone())).collect(),
                    })
                    .collect()
            }
        }
    }

    /// Up to `count` messages of `user` stored after the entry `after` (`None`: from the
    /// start), oldest first. Nothing is removed.
    pub async fn page(
        &self,
        user: &UserId,
        after: Option<EntryId>,
        count: usize,
        limits: StoreLimits,
    ) -> Result<Vec<StoredMessage>, MailboxError> {
        match &self.backend {
            Backend::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(b) = m.boxes.get_mut(user) else {
                    return Ok(Vec::new());
                };
                expired_metric(b.expire(limits.ttl));
                let after = after.unwrap_or_default();
                Ok(b.entries
                    .iter()
                    .filter(|(seq, _, _)| EntryId { ms: 0, seq: *seq } > after)
                    .take(count)
                    .map(|(seq, _, f)| StoredMessage {
                        entry: EntryId { ms: 0, seq: *seq },
                        frame: f.clone(),
                    })
                    .collect())
            }
            Backend::Redis { conn, page, .. } => {
                let mut conn = conn.clone();
                let mut inv = page.key(stream_key(user));
                inv.arg(after.unwrap_or_default().to_string())
                    .arg(count)
                    .arg(ttl_ms(limits.ttl));
                let out: Vec<redis::Value> =
                    inv.invoke_async(&mut conn).await.map_err(unavailable)?;
                let mut it = out.into_iter();
                let expired: usize = it
                    .next()
                    .and_then(|v| redis::from_redis_value(v).ok())
                    .unwrap_or(0);
                expired_metric(expired);
                let mut msgs = Vec::new();
                while let (Some(e), Some(f)) = (it.next(), it.next()) {
                    if let (Some(entry), Ok(frame)) = (
                        redis::from_redis_value::<String>(e)
                            .ok()
                            .and_then(|e| EntryId::parse(&e)),
                        redis::from_redis_value::<String>(f),
                    ) {
                        msgs.push(StoredMessage { entry, frame });
                    }
                }
                Ok(msgs)
            }
        }
    }

    /// Removes the entries `entries` of `user` (acknowledged; one XDEL). Their dedupe
    /// markers stay for the TTL. Returns how many were removed.
    pub async fn delete_entries(
        &self,
        user: &UserId,
        entries: &[EntryId],
    ) -> Result<usize, MailboxError> {
        if entries.is_empty() {
            return Ok(0);
        }
        match &self.backend {
            Backend::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(b) = m.boxes.get_mut(user) else {
                    return Ok(0);
                };
                let before = b.entries.len();
                b.entries
                    .retain(|(seq, _, _)| !entries.contains(&EntryId { ms: 0, seq: *seq }));
                let n = before - b.entries.len();
                if b.entries.is_empty() && b.seen.is_empty() {
                    m.boxes.remove(user);
                }
                Ok(n)
            }
            Backend::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let mut cmd = redis::cmd("XDEL");
                cmd.arg(stream_key(user));
                for e in entries {
                    cmd.arg(e.to_string());
                }
                cmd.query_async(&mut conn).await.map_err(unavailable)
            }
        }
    }

    /// Removes the messages (sender, id) of `user` (acknowledged), found by their dedupe
    /// markers. Their markers stay for the TTL. Returns how many were removed.
    pub async fn delete(
        &self,
        user: &UserId,
        acked: &[(UserId, MessageId)],
    ) -> Result<usize, MailboxError> {
        if acked.is_empty() {
            return Ok(0);
        }
        match &self.backend {
            Backend::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(b) = m.boxes.get_mut(user) else {
                    return Ok(0);
                };
                let seqs: Vec<u64> = acked
                    .iter()
                    .filter_map(|k| b.seen.get(k).map(|(_, seq, _)| *seq))
                    .collect();
                let before = b.entries.len();
                b.entries.retain(|(seq, _, _)| !seqs.contains(seq));
                let n = before - b.entries.len();
                if b.entries.is_empty() && b.seen.is_empty() {
                    m.boxes.remove(user);
                }
                Ok(n)
            }
            Backend::Redis { conn, delete, .. } => {
                let mut conn = conn.clone();
                let mut inv = delete.key(stream_key(user));
                for (sender, id) in acked {
                    inv.key(dedupe_key(user, sender, id));
                }
                inv.invoke_async(&mut conn).await.map_err(unavailable)
            }
        }
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}
