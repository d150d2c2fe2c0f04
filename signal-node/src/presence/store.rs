//! The presence store behind one interface: each user's state record (state, note, since,
//! version, owning session) and its watcher set (which node instances watch the user). Two
//! backends: memory (`--dev`, in-process tests) and Redis, where both keys of a user share
//! the hash tag `{pr:<user>}` so that a write and the read of the watchers that must hear of
//! it are one atomic, single-slot script (Redis Cluster safe).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use signal_proto::UserId;

use crate::redis_link::RedisConn;

/// Single-slot commands in flight at once where a pipeline may not span slots (Redis Cluster).
const CLUSTER_CONCURRENCY: usize = 64;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("presence store unavailable: {0}")]
    Unavailable(String),
    #[error("bad presence store url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
}

/// The session a record belongs to: node id, node instance, session id. Empty when offline.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct Owner {
    pub node: String,
    pub instance: String,
    pub session: u64,
}

impl Owner {
    pub fn is_none(&self) -> bool {
        self.node.is_empty()
    }
}

/// One user's state as stored: `state` is `online`, `away`, `busy`, `invisible` or `offline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub state: String,
    pub note: String,
    pub since: u64,
    pub version: u64,
    pub owner: Owner,
}

/// A node that watches a user: reached at `grpc_url`; its entry names the instance so that one
/// left by a dead or restarted node is recognisable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WatcherNode {
    pub node: String,
    pub instance: String,
    pub grpc_url: String,
}

impl WatcherNode {
    fn value(&self) -> String {
        format!("{} {}", self.instance, self.grpc_url)
    }

    fn parse(node: String, value: &str) -> Option<WatcherNode> {
        let (instance, url) = value.split_once(' ')?;
        Some(WatcherNode {
            node,
            instance: instance.to_owned(),
            grpc_url: url.to_owned(),
        })
    }
}

/// When a write applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Always (a session starts or arrives by takeover: it is the user's session now).
    Put,
    /// Only if the record still belongs to this session (a change or the end of a session
    /// that may have been replaced meanwhile).
    IfOwner(Owner),
    /// Only if the record belongs to this node instance (the instance died).
    IfInstance { node: String, instance: String },
}

/// What a write found: whether it applied, the record now, and who watches the user.
#[derive(Debug, Clone)]
pub struct Written {
    pub applied: bool,
    pub record: Option<Record>,
    pub watchers: Vec<WatcherNode>,
}

/// KEYS: state hash, watcher hash. ARGV: mode (put|owner|instance), state, note, since,
/// version floor (ms), node, instance, session, expected node, expected instance, expected
/// session, offline ttl (ms). Returns {applied, st, note, since, ver, node, inst, sid,
/// watcher field, value, ...}.
const WRITE_LUA: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'st', 'note', 'since', 'ver', 'node', 'inst', 'sid')
local mode = ARGV[1]
local ok
if mode == 'put' then
  ok = true
elseif mode == 'owner' then
  ok = cur[5] == ARGV[9] and cur[6] == ARGV[10] and cur[7] == ARGV[11]
else
  ok = cur[5] == ARGV[9] and cur[6] == ARGV[10]
end
local out
if ok then
  local ver = math.max((tonumber(cur[4]) or 0) + 1, tonumber(ARGV[5]))
  local v = string.format('%.0f', ver)
  redis.call('HSET', KEYS[1], 'st', ARGV[2], 'note', ARGV[3], 'since', ARGV[4], 'ver', v,
    'node', ARGV[6], 'inst', ARGV[7], 'sid', ARGV[8])
  if ARGV[2] == 'offline' then
    redis.call('PEXPIRE', KEYS[1], ARGV[12])
  else
    redis.call('PERSIST', KEYS[1])
  end
  out = {'1', ARGV[2], ARGV[3], ARGV[4], v, ARGV[6], ARGV[7], ARGV[8]}
else
  out = {'0', cur[1] or '', cur[2] or '', cur[3] or '0', cur[4] or '0', cur[5] or '',
    cur[6] or '', cur[7] or '0'}
end
local w = redis.call('HGETALL', KEYS[2])
for i = 1, #w do
  out[#out + 1] = w[i]
end
return out
";

/// KEYS: watcher hash. ARGV: node, value. Deletes the field only if it is still that value.
const UNWATCH_LUA: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
";

fn state_key(user: &UserId) -> String {
    format!("{{pr:{user}}}:s")
}

fn watchers_key(user: &UserId) -> String {
    format!("{{pr:{user}}}:w")
}

/// The presence store. A cheap `Clone` handle.
#[derive(Clone)]
pub struct PresenceStore {
    backend: Backend,
}

impl std::fmt::Debug for PresenceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.backend {
            Backend::Memory(_) => "PresenceStore(memory)",
            Backend::Redis { .. } => "PresenceStore(redis)",
        })
    }
}

#[derive(Clone)]
enum Backend {
    Memory(Arc<Mutex<Memory>>),
    Redis {
        conn: RedisConn,
        write: Arc<redis::Script>,
    },
}

#[derive(Default)]
struct Memory {
    users: HashMap<UserId, MemUser>,
    writes: u64,
}

#[derive(Default)]
struct MemUser {
    record: Option<(Record, Option<Instant>)>,
    watchers: HashMap<String, String>,
}

impl Memory {
    /// Drops expired offline records and empty entries now and then (bounded by the users
    /// seen within one offline TTL).
    fn sweep(&mut self) {
        self.writes += 1;
        if self.writes % 1024 != 0 {
            return;
        }
        let now = Instant::now();
        self.users.retain(|_, u| {
            if u.record
                .as_ref()
                .is_some_and(|(_, exp)| exp.is_some_and(|e| e <= now))
            {
                u.record = None;
            }
            u.record.is_some() || !u.watchers.is_empty()
        });
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    metrics::counter!("signal_presence_store_errors_total").increment(1);
    StoreError::Unavailable(e.to_string())
}

fn record_of(f: &[Option<String>]) -> Option<Record> {
    let get = |i: usize| f.get(i).cloned().flatten();
    let state = get(0)?;
    Some(Record {
        state,
        note: get(1).unwrap_or_default(),
        since: get(2).and_then(|s| s.parse().ok()).unwrap_or(0),
        version: get(3).and_then(|s| s.parse().ok()).unwrap_or(0),
        owner: Owner {
            node: get(4).unwrap_or_default(),
            instance: get(5).unwrap_or_default(),
            session: get(6).and_then(|s| s.parse().ok()).unwrap_or(0),
        },
    })
}

impl PresenceStore {
    pub fn memory() -> PresenceStore {
        PresenceStore {
            backend: Backend::Memory(Arc::default()),
        }
    }

    /// A Redis store (lazy connection: a Redis down at start is no error).
    pub fn redis(
        cfg: impl Into<crate::redis_link::RedisConfig>,
    ) -> Result<PresenceStore, StoreError> {
        let cfg: crate::redis_link::RedisConfig = cfg.into();
        let conn =
            crate::redis_link::connect_lazy(cfg.clone()).map_err(|e| StoreError::BadUrl {
                url: cfg.urls.join(","),
                reason: e.to_string(),
            })?;
        Ok(PresenceStore {
            backend: Backend::Redis {
                conn,
                write: Arc::new(redis::Script::new(WRITE_LUA)),
            },
        })
    }

    /// Writes `record` (its version is a floor: the stored one grows by at least 1) if `mode`
    /// allows, and returns the record now with the user's watchers.
    pub async fn write(
        &self,
        user: &UserId,
        record: &Record,
        mode: &Mode,
        offline_ttl: Duration,
    ) -> Result<Written, StoreError> {
        match &self.backend {
            Backend::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(PoisonError::into_inner);
                m.sweep();
                let u = m.users.entry(user.clone()).or_default();
                let now = Instant::now();
                if u.record
                    .as_ref()
                    .is_some_and(|(_, exp)| exp.is_some_and(|e| e <= now))
                {
                    u.record = None;
                }
                let cur = u.record.as_ref().map(|(r, _)| r);
                let ok = match mode {
                    Mode::Put => true,
                    Mode::IfOwner(o) => cur.is_some_and(|r| r.owner == *o),
                    Mode::IfInstance { node, instance } => {
                        cur.is_some_and(|r| r.owner.node == *node && r.owner.instance == *instance)
                    }
                };
                if ok {
                    let mut r = record.clone();
                    r.version = r.version.max(cur.map_or(0, |c| c.version) + 1);
                    let exp = (r.state == "offline").then(|| now + offline_ttl);
                    u.record = Some((r, exp));
                }
                let watchers = u
                    .watchers
                    .iter()
                    .filter_map(|(n, v)| WatcherNode::parse(n.clone(), v))
                    .collect();
                Ok(Written {
                    applied: ok,
                    record: u.record.as_ref().map(|(r, _)| r.clone()),
                    watchers,
                })
            }
            Backend::Redis { conn, write } => {
                let (exp_node, exp_inst, exp_sid, mode) = match mode {
                    Mode::Put => (String::new(), String::new(), 0, "put"),
                    Mode::IfOwner(o) => (o.node.clone(), o.instance.clone(), o.session, "owner"),
                    Mode::IfInstance { node, instance } => {
                        (node.clone(), instance.clone(), 0, "instance")
                    }
                };
                let mut inv = write.key(state_key(user));
                inv.key(watchers_key(user))
                    .arg(mode)
                    .arg(&record.state)
                    .arg(&record.note)
                    .arg(record.since)
                    .arg(record.version)
                    .arg(&record.owner.node)
                    .arg(&record.owner.instance)
                    .arg(record.owner.session)
                    .arg(exp_node)
                    .arg(exp_inst)
                    .arg(exp_sid)
                    .arg(offline_ttl.as_millis().max(1) as u64);
                let out: Vec<String> = inv
                    .invoke_async(&mut conn.clone())
                    .await
                    .map_err(unavailable)?;
                let applied = out.first().is_some_and(|s| s == "1");
                let fields: Vec<Option<String>> = out
                    .iter()
                    .skip(1)
                    .take(7)
                    .map(|s| Some(s.clone()))
                    .collect();
                let record = record_of(&fields).filter(|r| !r.state.is_empty());
                let watchers = out
                    .get(8..)
                    .unwrap_or_default()
                    .chunks(2)
                    .filter_map(|c| match c {
                        [n, v] => WatcherNode::parse(n.clone(), v),
                        _ => None,
                    })
                    .collect();
                Ok(Written {
                    applied,
                    record,
                    watchers,
                })
            }
        }
    }

    /// Enters `me` in the watcher sets of `users` and reads their records (in that order per
    /// user: a write that misses the entry has already happened, so the read sees it).
    pub async fn watch(
        &self,
        me: &WatcherNode,
        users: &[UserId],
    ) -> Result<Vec<Option<Record>>, StoreError> {
        match &self.backend {
            Backend::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(PoisonError::into_inner);
                let now = Instant::now();
                Ok(users
                    .iter()
                    .map(|user| {
                        let u = m.users.entry(user.clone()).or_default();
                        u.watchers.insert(me.node.clone(), me.value());
                        u.record
                            .as_ref()
                            .filter(|(_, exp)| exp.is_none_or(|e| e > now))
                            .map(|(r, _)| r.clone())
                    })
                    .collect())
            }
            Backend::Redis { conn, .. } if conn.is_cluster() => {
                // A pipeline may not span slots on a cluster: one pipeline per user (both keys
                // under `{pr:<user>}`), sent concurrently and answered in order.
                use futures::stream::{StreamExt as _, TryStreamExt as _};
                let one = |user: &UserId| {
                    let mut conn = conn.clone();
                    let mut pipe = redis::pipe();
                    pipe.cmd("HSET")
                        .arg(watchers_key(user))
                        .arg(&me.node)
                        .arg(me.value())
                        .ignore();
                    pipe.cmd("HMGET")
                        .arg(state_key(user))
                        .arg(&["st", "note", "since", "ver", "node", "inst", "sid"]);
                    async move {
                        let rows: Vec<Vec<Option<String>>> =
                            pipe.query_async(&mut conn).await.map_err(unavailable)?;
                        Ok::<_, StoreError>(rows.first().and_then(|f| record_of(f)))
                    }
                };
                futures::stream::iter(users)
                    .map(one)
                    .buffered(CLUSTER_CONCURRENCY)
                    .try_collect()
                    .await
            }
            Backend::Redis { conn, .. } => {
                let mut pipe = redis::pipe();
                for user in users {
                    pipe.cmd("HSET")
                        .arg(watchers_key(user))
                        .arg(&me.node)
                        .arg(me.value())
                        .ignore();
                    pipe.cmd("HMGET")
                        .arg(state_key(user))
                        .arg(&["st", "note", "since", "ver", "node", "inst", "sid"]);
                }
                let rows: Vec<Vec<Option<String>>> = pipe
                    .query_async(&mut conn.clone())
                    .await
                    .map_err(unavailable)?;
                Ok(rows.iter().map(|f| record_of(f)).collect())
            }
        }
    }

    /// The records of `users`, in order, without watching them (the server API's
    /// `GET /v1/presence`). One single-key `HMGET` per user, sent concurrently (valid on a
    /// cluster).
    pub async fn read(&self, users: &[UserId]) -> Result<Vec<Option<Record>>, StoreError> {
        match &self.backend {
            Backend::Memory(m) => {
                let m = m.lock().unwrap_or_else(PoisonError::into_inner);
                let now = Instant::now();
                Ok(users
                    .iter()
                    .map(|user| {
                        m.users
                            .get(user)
                            .and_then(|u| u.record.as_ref())
                            .filter(|(_, exp)| exp.is_none_or(|e| e > now))
                            .map(|(r, _)| r.clone())
                    })
                    .collect())
            }
            Backend::Redis { conn, .. } => {
                use futures::stream::{StreamExt as _, TryStreamExt as _};
                let one = |user: &UserId| {
                    let mut conn = conn.clone();
                    let mut cmd = redis::cmd("HMGET");
                    cmd.arg(state_key(user))
                        .arg(&["st", "note", "since", "ver", "node", "inst", "sid"]);
                    async move {
                        let f: Vec<Option<String>> =
                            cmd.query_async(&mut conn).await.map_err(unavailable)?;
                        Ok::<_, StoreError>(record_of(&f))
                    }
                };
                futures::stream::iter(users)
                    .map(one)
                    .buffered(CLUSTER_CONCURRENCY)
                    .try_collect()
                    .await
            }
        }
    }

    /// Removes `me` from the watcher sets of `users` (only entries naming its instance).
    pub async fn unwatch(&self, me: &WatcherNode, users: &[UserId]) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(PoisonError::into_inner);
                let value = me.value();
                for user in users {
                    if let Some(u) = m.users.get_mut(user) {
                        if u.watchers.get(&me.node) == Some(&value) {
                            u.watchers.remove(&me.node);
                        }
                    }
                }
                Ok(())
            }
            Backend::Redis { conn, .. } if conn.is_cluster() => {
                use futures::stream::{StreamExt as _, TryStreamExt as _};
                let value = me.value();
                let one = |user: &UserId| {
                    let mut conn = conn.clone();
                    let mut cmd = redis::cmd("EVAL");
                    cmd.arg(UNWATCH_LUA)
                        .arg(1)
                        .arg(watchers_key(user))
                        .arg(&me.node)
                        .arg(&value);
                    async move { cmd.query_async::<()>(&mut conn).await.map_err(unavailable) }
                };
                futures::stream::iter(users)
                    .map(one)
                    .buffer_unordered(CLUSTER_CONCURRENCY)
                    .try_collect::<Vec<()>>()
                    .await?;
                Ok(())
            }
            Backend::Redis { conn, .. } => {
                let value = me.value();
                for chunk in users.chunks(500) {
                    let mut pipe = redis::pipe();
                    for user in chunk {
                        pipe.cmd("EVAL")
                            .arg(UNWATCH_LUA)
                            .arg(1)
                            .arg(watchers_key(user))
                            .arg(&me.node)
                            .arg(&value)
                            .ignore();
                    }
                    pipe.query_async::<()>(&mut conn.clone())
                        .await
                        .map_err(unavailable)?;
                }
                Ok(())
            }
        }
    }

    /// Whether the store answers (a cheap round trip).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory(_) => Ok(()),
            Backend::Redis { conn, .. } => redis::cmd("PING")
                .query_async::<String>(&mut conn.clone())
                .await
                .map(|_| ())
                .map_err(unavailable),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rec(state: &str, owner: &Owner) -> Record {
        Record {
            state: state.into(),
            note: String::new(),
            since: 5,
            version: 0,
            owner: owner.clone(),
        }
    }

    /// The write modes of the memory backend (the Redis script is checked by the integration
    /// tests against a real Redis).
    #[tokio::test]
    async fn memory_write_modes_and_watchers() {
        let s = PresenceStore::memory();
        let bob = UserId::new("bob").unwrap();
        let a = Owner {
            node: "a".into(),
            instance: "i1".into(),
            session: 1,
        };
        let b = Owner {
            node: "b".into(),
            instance: "i2".into(),
            session: 7,
        };
        let ttl = Duration::from_secs(60);
        let me = WatcherNode {
            node: "w".into(),
            instance: "iw".into(),
            grpc_url: "http://w:1".into(),
        };
        assert_eq!(
            s.watch(&me, std::slice::from_ref(&bob)).await.unwrap(),
            vec![None]
        );
        let w = s
            .write(&bob, &rec("online", &a), &Mode::Put, ttl)
            .await
            .unwrap();
        assert!(w.applied);
        assert_eq!(w.watchers, vec![me.clone()]);
        let v1 = w.record.unwrap().version;
        // A newer session takes over; the old one's end does not apply.
        let w = s
            .write(&bob, &rec("online", &b), &Mode::Put, ttl)
            .await
            .unwrap();
        assert!(w.record.as_ref().unwrap().version > v1);
        let off = rec("offline", &Owner::default());
        let w = s
            .write(&bob, &off, &Mode::IfOwner(a.clone()), ttl)
            .await
            .unwrap();
        assert!(!w.applied);
        assert_eq!(w.record.unwrap().owner, b);
        let dead_a = Mode::IfInstance {
            node: "a".into(),
            instance: "i1".into(),
        };
        assert!(!s.write(&bob, &off, &dead_a, ttl).await.unwrap().applied);
        let dead_b = Mode::IfInstance {
            node: "b".into(),
            instance: "i2".into(),
        };
        let w = s.write(&bob, &off, &dead_b, ttl).await.unwrap();
        assert!(w.applied);
        assert_eq!(w.record.unwrap().state, "offline");
        s.unwatch(&me, std::slice::from_ref(&bob)).await.unwrap();
        let w = s
            .write(&bob, &rec("away", &a), &Mode::Put, ttl)
            .await
            .unwrap();
        assert!(w.watchers.is_empty());
    }
}
