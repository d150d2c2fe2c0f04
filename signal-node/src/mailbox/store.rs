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

/// Appends a message unless a duplicate, after dropping expired entries; quota checked in
/// the same script. KEYS: stream, dedupe. ARGV: frame, ts, max, ttl_ms.
/// Returns {status (0 stored, 1 duplicate, 2 full), first ts or entry id, expired}.
const APPEND_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[4])
local expired = 0
local len = redis.call('XLEN', KEYS[1])
if len > 0 then
  expired = redis.call('XTRIM', KEYS[1], 'MINID', tostring(now - ttl))
  len = len - expired
end
local d = redis.call('GET', KEYS[2])
if d then
  return {1, d, expired}
end
if len >= tonumber(ARGV[3]) then
  return {2, '', expired}
end
local eid = redis.call('XADD', KEYS[1], '*', 'f', ARGV[1])
redis.call('SET', KEYS[2], ARGV[2] .. ' ' .. eid, 'PX', ttl)
-- Twice the TTL: an idle mailbox vanishes, but not before its expired entries are counted
-- by the next append or page within that time.
redis.call('PEXPIRE', KEYS[1], 2 * ttl)
return {0, eid, expired}
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
        match &self.backend {
            Backend::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(PoisonError::into_inner);
                m.next += 1;
                let seq = m.next;
                let b = m.boxes.entry(to.clone()).or_default();
                expired_metric(b.expire(limits.ttl));
                let key = (sender.clone(), id.clone());
                if let Some((first, _, _)) = b.seen.get(&key) {
                    return Ok(Appended::Duplicate { ts: *first });
                }
                if b.entries.len() >= limits.max_messages {
                    return Err(MailboxError::Full);
                }
                let now = Instant::now();
                b.entries.push_back((seq, now, frame.to_owned()));
                b.seen.insert(key, (ts, seq, now + limits.ttl));
                Ok(Appended::Stored(EntryId { ms: 0, seq }))
            }
            Backend::Redis { conn, append, .. } => {
                let mut conn = conn.clone();
                let mut inv = append.key(stream_key(to));
                inv.key(dedupe_key(to, sender, id))
                    .arg(frame)
                    .arg(ts)
                    .arg(limits.max_messages)
                    .arg(ttl_ms(limits.ttl));
                let (status, v, expired): (i64, String, usize) =
                    inv.invoke_async(&mut conn).await.map_err(unavailable)?;
                expired_metric(expired);
                match status {
                    0 => EntryId::parse(&v).map(Appended::Stored).ok_or_else(|| {
                        MailboxError::Unavailable(format!("bad stream entry id {v:?}"))
                    }),
                    1 => {
                        let ts = v
                            .split(' ')
                            .next()
                            .and_then(|t| t.parse().ok())
                            .unwrap_or(ts);
                        Ok(Appended::Duplicate { ts })
                    }
                    _ => Err(MailboxError::Full),
                }
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
