//! `RoomStore`: room membership behind one interface, in memory (`--dev`, in-process tests) or
//! in Redis. Each room's keys share the hash tag `{rm:<room>}` and every operation is one Lua
//! script on that one slot (Redis Cluster safe):
//!
//! | key | type | content |
//! |---|---|---|
//! | `{rm:<room>}:m` | hash | member user -> `"<session> <instance> <node id> <grpc url>"` |
//! | `{rm:<room>}:n` | hash | `"<instance> <node id> <grpc url>"` -> members on that node instance |
//! | `{rm:<room>}:v` | string | the room's membership version (joins and leaves numbered 1, 2, ...) |
//!
//! The room exists while it has members: the last leave deletes all three keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use signal_proto::{RoomId, UserId};

use crate::redis_link::RedisConn;

/// Why a membership operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomStoreError {
    #[error("room store unavailable: {0}")]
    Unavailable(String),
    #[error("bad Redis URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
}

/// A node instance that holds members of a room: what other nodes dial to reach them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeKey {
    pub instance: String,
    pub node_id: String,
    pub grpc_url: String,
}

impl NodeKey {
    pub fn encode(&self) -> String {
        format!("{} {} {}", self.instance, self.node_id, self.grpc_url)
    }

    pub fn decode(s: &str) -> Option<NodeKey> {
        let mut it = s.splitn(3, ' ');
        Some(NodeKey {
            instance: it.next()?.to_owned(),
            node_id: it.next()?.to_owned(),
            grpc_url: it.next()?.to_owned(),
        })
    }
}

/// One member's entry: its session on a node instance. Leaves compare the whole entry, so the
/// cleanup of an ended session never removes a newer session of the same user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberEntry {
    pub session: u64,
    pub node: NodeKey,
}

impl MemberEntry {
    pub fn encode(&self) -> String {
        format!("{} {}", self.session, self.node.encode())
    }

    pub fn decode(s: &str) -> Option<MemberEntry> {
        let (session, node) = s.split_once(' ')?;
        Some(MemberEntry {
            session: session.parse().ok()?,
            node: NodeKey::decode(node)?,
        })
    }
}

/// What a join did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutcome {
    /// A member now. `version`: the join's number, 0 when the user was a member already (no
    /// event). `members`: every member, the joiner included; `nodes`: every node instance.
    Joined {
        version: u64,
        members: Vec<UserId>,
        nodes: Vec<NodeKey>,
        /// The room's node set changed (this node instance is new in it, or the user's
        /// previous entry was the last one of `previous`): the nodes caching it must be told.
        nodes_changed: bool,
        /// The node instance of the user's previous entry, when it had one (a new session).
        previous: Option<NodeKey>,
    },
    /// The room has `max` members.
    Full,
}

/// A member moved to another session (`move_member`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// The room's node set changed (see [`JoinOutcome::Joined`]).
    pub nodes_changed: bool,
    /// The node instance the entry was on before (`None`: it was this entry already).
    pub previous: Option<NodeKey>,
    /// Every node instance holding members now.
    pub nodes: Vec<NodeKey>,
}

/// A leave that happened: its number and the node instances still holding members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveOutcome {
    pub version: u64,
    pub nodes: Vec<NodeKey>,
}

/// KEYS: m, n, v. ARGV: user, entry, node key, max members. Returns {version, members,
/// node keys, node set changed (0/1), previous entry's node key or ''}.
const JOIN_LUA: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
local ver = 0
local changed = 0
local prev = ''
if old ~= ARGV[2] then
  if not old and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
    return {-1, {}, {}, 0, ''}
  end
  if old then
    prev = string.sub(old, (string.find(old, ' ', 1, true) or 0) + 1)
    if redis.call('HINCRBY', KEYS[2], prev, -1) <= 0 then
      redis.call('HDEL', KEYS[2], prev)
      changed = 1
    end
  end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  if redis.call('HINCRBY', KEYS[2], ARGV[3], 1) == 1 then changed = 1 end
  if not old then ver = redis.call('INCR', KEYS[3]) end
  if prev == ARGV[3] then changed = 0 end
end
return {ver, redis.call('HKEYS', KEYS[1]), redis.call('HKEYS', KEYS[2]), changed, prev}
";

/// KEYS: m, n, v. ARGV: user, entry. Returns {0, {}} when the user is not that member.
const LEAVE_LUA: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old ~= ARGV[2] then return {0, {}} end
redis.call('HDEL', KEYS[1], ARGV[1])
local ok = string.sub(old, (string.find(old, ' ', 1, true) or 0) + 1)
if redis.call('HINCRBY', KEYS[2], ok, -1) <= 0 then redis.call('HDEL', KEYS[2], ok) end
local ver = redis.call('INCR', KEYS[3])
local nodes = redis.call('HKEYS', KEYS[2])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[1], KEYS[2], KEYS[3]) end
return {ver, nodes}
";

/// KEYS: m, n. ARGV: user, new entry, new node key. Moves a member's entry to the session
/// that resumed it (no event). Returns {0, 0, '', {}} if the user is no longer a member, else
/// {1, node set changed (0/1), previous node key or '', node keys}.
const MOVE_LUA: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return {0, 0, '', {}} end
if old == ARGV[2] then return {1, 0, '', redis.call('HKEYS', KEYS[2])} end
local changed = 0
local ok = string.sub(old, (string.find(old, ' ', 1, true) or 0) + 1)
if redis.call('HINCRBY', KEYS[2], ok, -1) <= 0 then
  redis.call('HDEL', KEYS[2], ok)
  changed = 1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('HINCRBY', KEYS[2], ARGV[3], 1) == 1 then changed = 1 end
if ok == ARGV[3] then changed = 0 end
return {1, changed, ok, redis.call('HKEYS', KEYS[2])}
";

fn keys(room: &RoomId) -> [String; 3] {
    let tag = format!("{{rm:{room}}}");
    [format!("{tag}:m"), format!("{tag}:n"), format!("{tag}:v")]
}

#[derive(Default)]
struct MemRoom {
    members: HashMap<UserId, String>,
    nodes: HashMap<String, u64>,
    version: u64,
}

impl MemRoom {
    /// Uncounts the entry's node; returns that node key and whether it left the node set.
    fn uncount(&mut self, entry: &str) -> (String, bool) {
        let key = entry.split_once(' ').map_or("", |(_, k)| k).to_owned();
        let mut gone = false;
        if let Some(c) = self.nodes.get_mut(&key) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.nodes.remove(&key);
                gone = true;
            }
        }
        (key, gone)
    }

    /// Counts a member on node `key`; returns whether the node is new in the set.
    fn count(&mut self, key: String) -> bool {
        let c = self.nodes.entry(key).or_default();
        *c += 1;
        *c == 1
    }

    fn node_keys(&self) -> Vec<NodeKey> {
        self.nodes
            .keys()
            .filter_map(|k| NodeKey::decode(k))
            .collect()
    }
}

#[derive(Clone)]
enum Backend {
    Memory(Arc<Mutex<HashMap<RoomId, MemRoom>>>),
    Redis {
        conn: RedisConn,
        join: Arc<redis::Script>,
        leave: Arc<redis::Script>,
        moved: Arc<redis::Script>,
    },
}

/// The membership store. A cheap `Clone` handle (memory stores are shared by their clones).
#[derive(Clone)]
pub struct RoomStore {
    backend: Backend,
}

impl std::fmt::Debug for RoomStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.backend {
            Backend::Memory(_) => "RoomStore(memory)",
            Backend::Redis { .. } => "RoomStore(redis)",
        })
    }
}

fn unavailable(e: redis::RedisError) -> RoomStoreError {
    metrics::counter!("signal_room_store_errors_total").increment(1);
    RoomStoreError::Unavailable(e.to_string())
}

fn users(v: Vec<String>) -> Vec<UserId> {
    v.into_iter().filter_map(|u| UserId::new(u).ok()).collect()
}

fn nodes(v: Vec<String>) -> Vec<NodeKey> {
    v.iter().filter_map(|k| NodeKey::decode(k)).collect()
}

impl RoomStore {
    pub fn memory() -> RoomStore {
        RoomStore {
            backend: Backend::Memory(Arc::default()),
        }
    }

    /// A Redis store (lazy connection: a Redis down at start is no error).
    pub fn redis(
        cfg: impl Into<crate::redis_link::RedisConfig>,
    ) -> Result<RoomStore, RoomStoreError> {
        let cfg: crate::redis_link::RedisConfig = cfg.into();
        let conn =
            crate::redis_link::connect_lazy(cfg.clone()).map_err(|e| RoomStoreError::BadUrl {
                url: cfg.urls.join(","),
                reason: e.to_string(),
            })?;
        Ok(RoomStore {
            backend: Backend::Redis {
                conn,
                join: Arc::new(redis::Script::new(JOIN_LUA)),
                leave: Arc::new(redis::Script::new(LEAVE_LUA)),
                moved: Arc::new(redis::Script::new(MOVE_LUA)),
            },
        })
    }

    fn mem(
        m: &Mutex<HashMap<RoomId, MemRoom>>,
    ) -> std::sync::MutexGuard<'_, HashMap<RoomId, MemRoom>> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `user` (its session `entry`) a member unless the room has `max` members.
    pub async fn join(
        &self,
        room: &RoomId,
        user: &UserId,
        entry: &MemberEntry,
        max: usize,
    ) -> Result<JoinOutcome, RoomStoreError> {
        let value = entry.encode();
        let node = entry.node.encode();
        match &self.backend {
            Backend::Memory(m) => {
                let mut m = Self::mem(m);
                let r = m.entry(room.clone()).or_default();
                let old = r.members.get(user).cloned();
                let mut version = 0;
                let mut nodes_changed = false;
                let mut previous = None;
                if old.as_deref() != Some(value.as_str()) {
                    if old.is_none() && r.members.len() >= max {
                        if r.members.is_empty() {
                            m.remove(room);
                        }
                        return Ok(JoinOutcome::Full);
                    }
                    if let Some(old) = &old {
                        let (key, gone) = r.uncount(old);
                        nodes_changed |= gone;
                        previous = NodeKey::decode(&key);
                    }
                    r.members.insert(user.clone(), value);
                    let same_node = previous.as_ref().is_some_and(|p| p.encode() == node);
                    nodes_changed |= r.count(node);
                    nodes_changed &= !same_node;
                    if old.is_none() {
                        r.version += 1;
                        version = r.version;
                    }
                }
                Ok(JoinOutcome::Joined {
                    version,
                    members: r.members.keys().cloned().collect(),
                    nodes: r.node_keys(),
                    nodes_changed,
                    previous,
                })
            }
            Backend::Redis { conn, join, .. } => {
                let mut conn = conn.clone();
                let mut inv = join.prepare_invoke();
                for k in keys(room) {
                    inv.key(k);
                }
                inv.arg(user.as_str()).arg(value).arg(node).arg(max);
                let (version, members, node_keys, changed, previous): (
                    i64,
                    Vec<String>,
                    Vec<String>,
                    i64,
                    String,
                ) = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
                if version < 0 {
                    return Ok(JoinOutcome::Full);
                }
                Ok(JoinOutcome::Joined {
                    version: version as u64,
                    members: users(members),
                    nodes: nodes(node_keys),
                    nodes_changed: changed == 1,
                    previous: NodeKey::decode(&previous),
                })
            }
        }
    }

    /// Removes `user` if it is still the member `entry`. `None`: it was not.
    pub async fn leave(
        &self,
        room: &RoomId,
        user: &UserId,
        entry: &MemberEntry,
    ) -> Result<Option<LeaveOutcome>, RoomStoreError> {
        let value = entry.encode();
        match &self.backend {
            Backend::Memory(m) => {
                let mut m = Self::mem(m);
                let Some(r) = m.get_mut(room) else {
                    return Ok(None);
                };
                if r.members.get(user) != Some(&value) {
                    return Ok(None);
                }
                r.members.remove(user);
                let _ = r.uncount(&value);
                r.version += 1;
                let out = LeaveOutcome {
                    version: r.version,
                    nodes: r.nodes.keys().filter_map(|k| NodeKey::decode(k)).collect(),
                };
                if r.members.is_empty() {
                    m.remove(room);
                }
                Ok(Some(out))
            }
            Backend::Redis { conn, leave, .. } => {
                let mut conn = conn.clone();
                let mut inv = leave.prepare_invoke();
                for k in keys(room) {
                    inv.key(k);
                }
                inv.arg(user.as_str()).arg(value);
                let (version, node_keys): (u64, Vec<String>) =
                    inv.invoke_async(&mut conn).await.map_err(unavailable)?;
                Ok((version > 0).then(|| LeaveOutcome {
                    version,
                    nodes: nodes(node_keys),
                }))
            }
        }
    }

    /// Moves `user`'s membership to `entry` (a resumed session), without an event. `None`:
    /// the user is no longer a member.
    pub async fn move_member(
        &self,
        room: &RoomId,
        user: &UserId,
        entry: &MemberEntry,
    ) -> Result<Option<Moved>, RoomStoreError> {
        let value = entry.encode();
        let node = entry.node.encode();
        match &self.backend {
            Backend::Memory(m) => {
                let mut m = Self::mem(m);
                let Some(r) = m.get_mut(room) else {
                    return Ok(None);
                };
                let Some(old) = r.members.get(user).cloned() else {
                    return Ok(None);
                };
                let mut moved = Moved {
                    nodes_changed: false,
                    previous: None,
                    nodes: Vec::new(),
                };
                if old != value {
                    let (key, gone) = r.uncount(&old);
                    r.members.insert(user.clone(), value);
                    let same_node = key == node;
                    moved.nodes_changed = (r.count(node) || gone) && !same_node;
                    moved.previous = NodeKey::decode(&key);
                }
                moved.nodes = r.node_keys();
                Ok(Some(moved))
            }
            Backend::Redis { conn, moved, .. } => {
                let mut conn = conn.clone();
                let [m, n, _] = keys(room);
                let mut inv = moved.prepare_invoke();
                inv.key(m).key(n).arg(user.as_str()).arg(value).arg(node);
                let (ok, changed, previous, node_keys): (i64, i64, String, Vec<String>) =
                    inv.invoke_async(&mut conn).await.map_err(unavailable)?;
                Ok((ok == 1).then(|| Moved {
                    nodes_changed: changed == 1,
                    previous: NodeKey::decode(&previous),
                    nodes: nodes(node_keys),
                }))
            }
        }
    }

    /// The node instances that hold members (one read, one key).
    pub async fn nodes(&self, room: &RoomId) -> Result<Vec<NodeKey>, RoomStoreError> {
        match &self.backend {
            Backend::Memory(m) => Ok(Self::mem(m)
                .get(room)
                .map(|r| r.nodes.keys().filter_map(|k| NodeKey::decode(k)).collect())
                .unwrap_or_default()),
            Backend::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let [_, n, _] = keys(room);
                let keys: Vec<String> = redis::cmd("HKEYS")
                    .arg(n)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                Ok(nodes(keys))
            }
        }
    }

    /// Every member and its entry (for the cleanup after a node died).
    pub async fn members(
        &self,
        room: &RoomId,
    ) -> Result<Vec<(UserId, MemberEntry)>, RoomStoreError> {
        let raw: Vec<(String, String)> = match &self.backend {
            Backend::Memory(m) => Self::mem(m)
                .get(room)
                .map(|r| {
                    r.members
                        .iter()
                        .map(|(u, e)| (u.to_string(), e.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            Backend::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let [m, _, _] = keys(room);
                let map: HashMap<String, String> = redis::cmd("HGETALL")
                    .arg(m)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                map.into_iter().collect()
            }
        };
        Ok(raw
            .into_iter()
            .filter_map(|(u, e)| Some((UserId::new(u).ok()?, MemberEntry::decode(&e)?)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(session: u64, instance: &str) -> MemberEntry {
        MemberEntry {
            session,
            node: NodeKey {
                instance: instance.into(),
                node_id: format!("n-{instance}"),
                grpc_url: format!("http://{instance}:1"),
            },
        }
    }

    #[test]
    fn entries_round_trip() {
        let e = entry(7, "abc");
        assert_eq!(MemberEntry::decode(&e.encode()), Some(e.clone()));
        assert_eq!(NodeKey::decode(&e.node.encode()), Some(e.node));
        assert_eq!(MemberEntry::decode("x"), None);
    }

    /// The semantics every backend has (the Redis one runs in the integration tests).
    #[tokio::test]
    async fn memory_store_semantics() {
        let s = RoomStore::memory();
        let r = RoomId::new("r1").unwrap();
        let (a, b, c) = (
            UserId::new("a").unwrap(),
            UserId::new("b").unwrap(),
            UserId::new("c").unwrap(),
        );
        let JoinOutcome::Joined {
            version,
            members,
            nodes,
            nodes_changed,
            previous,
        } = s.join(&r, &a, &entry(1, "i1"), 2).await.unwrap()
        else {
            panic!()
        };
        assert_eq!((version, members.len(), nodes.len()), (1, 1, 1));
        assert!(nodes_changed, "the first member's node is new in the set");
        assert_eq!(previous, None);
        // Joining again: no new version.
        let JoinOutcome::Joined { version, .. } = s.join(&r, &a, &entry(1, "i1"), 2).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(version, 0);
        let JoinOutcome::Joined {
            version,
            nodes,
            nodes_changed,
            ..
        } = s.join(&r, &b, &entry(2, "i2"), 2).await.unwrap()
        else {
            panic!()
        };
        assert_eq!((version, nodes.len()), (2, 2));
        assert!(nodes_changed, "i2 is new in the node set");
        // A new session of `a` on the same instance: no version, node set unchanged.
        let JoinOutcome::Joined {
            version,
            nodes_changed,
            previous,
            ..
        } = s.join(&r, &a, &entry(11, "i1"), 2).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (version, previous.map(|p| p.instance)),
            (0, Some("i1".into()))
        );
        assert!(!nodes_changed);
        let JoinOutcome::Joined { .. } = s.join(&r, &a, &entry(1, "i1"), 2).await.unwrap() else {
            panic!()
        };
        assert_eq!(
            s.join(&r, &c, &entry(3, "i2"), 2).await.unwrap(),
            JoinOutcome::Full
        );
        // A leave of another session of `a` is a no-op.
        assert_eq!(s.leave(&r, &a, &entry(9, "i1")).await.unwrap(), None);
        // Moving `b` to instance i1 leaves one node.
        let moved = s
            .move_member(&r, &b, &entry(5, "i1"))
            .await
            .unwrap()
            .unwrap();
        assert!(moved.nodes_changed, "i2 left the node set");
        assert_eq!(moved.previous.map(|p| p.instance), Some("i2".into()));
        assert_eq!(moved.nodes.len(), 1);
        assert_eq!(s.nodes(&r).await.unwrap().len(), 1);
        let out = s.leave(&r, &a, &entry(1, "i1")).await.unwrap().unwrap();
        assert_eq!((out.version, out.nodes.len()), (3, 1));
        let out = s.leave(&r, &b, &entry(5, "i1")).await.unwrap().unwrap();
        assert_eq!((out.version, out.nodes.len()), (4, 0));
        // Empty: gone, versions start again.
        assert!(s.members(&r).await.unwrap().is_empty());
        assert!(s
            .move_member(&r, &b, &entry(5, "i1"))
            .await
            .unwrap()
            .is_none());
        let JoinOutcome::Joined { version, .. } = s.join(&r, &c, &entry(3, "i2"), 2).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(version, 1);
    }
}
