//! The Redis backend of the registry: what several central replicas share.
//!
//! Key layout (every key carries the hash tag `{central}`, so all of them live in one slot and
//! the Lua scripts below stay valid on Redis Cluster):
//! - `{central}:node:<id>`: hash `id instance ws grpc weight conns draining down beat seq`
//! - `{central}:pending:<id>`: sorted set of the node's pending assignments (member: a unique
//!   sequence number from the hash's `seq`, score: time of the pick in ms); it expires by
//!   itself one ticket lifetime after the last pick
//! - `{central}:scores`: sorted set of the pickable nodes (not draining, not down), scored
//!   `(conns + ZCARD pending) / weight`, the rule of `balance.rs`
//! - `{central}:beats`: sorted set of every registered node, scored by its last heartbeat
//!
//! One slot for everything is deliberate: a pick must see every node's score and pending count
//! atomically, which on a cluster means one slot. The scripts also reach node hashes and
//! pending sets they build from ids (not declared in KEYS); that is valid because they share
//! the `{central}` slot. The load is one small script per login and per heartbeat, far below
//! what one Redis master serves, so the hot slot is not a bottleneck.
//!
//! Times are milliseconds of Redis' own clock, so replicas' clocks do not matter.
//!
//! Every change is one Lua script, so it is atomic: a pick takes the lowest score, draws a
//! random one among the nodes sharing it (from a random number the replica passes in), adds a
//! pending assignment and re-scores the node; a heartbeat drops the pending assignments as old
//! as the ticket lifetime, then retires the `accepted` oldest ones and re-scores; eviction
//! removes the nodes whose heartbeat is older than the timeout and returns them, so whichever
//! replica runs it first counts them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Script;
use signal_node::redis_link::{RedisConfig, RedisConn, RedisMode};
use signal_proto::NodeId;

use super::{Assignment, Beat, NodeInfo, NodeRecord, Registered, RegistryError, StoreHealth};

const NODE_PREFIX: &str = "{central}:node:";
const PENDING_PREFIX: &str = "{central}:pending:";
const SCORES: &str = "{central}:scores";
const BEATS: &str = "{central}:beats";

/// Redis time in milliseconds; `replicate_commands` lets Redis < 7 accept TIME before writes.
const NOW: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function fmt(x) return string.format('%.17g', x) end
"#;

// KEYS: node hash, scores, beats, pending. ARGV: id instance ws grpc weight conns unprobed(0|1).
// Returns the previous instance ('' when the node was not registered). A registration starts
// with nothing pending: the node counts accepted connections from here on. An unprobed
// registration starts down (not pickable) unless it is the same instance, already up.
const REGISTER: &str = r#"
local old = redis.call('HGET', KEYS[1], 'instance') or ''
local was_down = redis.call('HGET', KEYS[1], 'down') or '1'
local down = 0
if ARGV[7] == '1' and (old ~= ARGV[2] or was_down == '1') then down = 1 end
redis.call('DEL', KEYS[1], KEYS[4])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'instance', ARGV[2], 'ws', ARGV[3], 'grpc', ARGV[4],
  'weight', ARGV[5], 'conns', ARGV[6], 'draining', 0, 'down', down, 'beat', now, 'seq', 0)
if down == 1 then
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[2], fmt(tonumber(ARGV[6]) / tonumber(ARGV[5])), ARGV[1])
end
redis.call('ZADD', KEYS[3], now, ARGV[1])
return old
"#;

// KEYS: node hash, scores, beats, pending. ARGV: id instance conns draining(0|1) accepted
// ttl_ms. Expires the pending assignments as old as the ticket lifetime, then retires the
// `accepted` oldest remaining ones. Returns 1 if known.
const HEARTBEAT: &str = r#"
if redis.call('HGET', KEYS[1], 'instance') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'conns', ARGV[3], 'draining', ARGV[4], 'beat', now)
redis.call('ZADD', KEYS[3], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', fmt(now - tonumber(ARGV[6])))
local pending = redis.call('ZCARD', KEYS[4])
local accepted = math.min(tonumber(ARGV[5]), pending)
if accepted > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, accepted - 1)
  pending = pending - accepted
end
local w = tonumber(redis.call('HGET', KEYS[1], 'weight'))
if ARGV[4] == '1' or redis.call('HGET', KEYS[1], 'down') == '1' then
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[2], fmt((tonumber(ARGV[3]) + pending) / w), ARGV[1])
end
return 1
"#;

// KEYS: node hash, scores, beats, pending. ARGV: id instance. Returns 1 if removed.
const DEREGISTER: &str = r#"
if redis.call('HGET', KEYS[1], 'instance') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1], KEYS[4])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"#;

// KEYS: node hash, scores, pending. ARGV: id instance down(0|1). Returns 1 if the flag changed.
const SET_DOWN: &str = r#"
if redis.call('HGET', KEYS[1], 'instance') ~= ARGV[2] then return 0 end
if redis.call('HGET', KEYS[1], 'down') == ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'down', ARGV[3])
if ARGV[3] == '1' or redis.call('HGET', KEYS[1], 'draining') == '1' then
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  local h = redis.call('HMGET', KEYS[1], 'conns', 'weight')
  local pending = redis.call('ZCARD', KEYS[3])
  redis.call('ZADD', KEYS[2], fmt((tonumber(h[1]) + pending) / tonumber(h[2])), ARGV[1])
end
return 1
"#;

// KEYS: scores. ARGV: node key prefix, random in [0,1), pending key prefix, ttl_ms.
// Returns {id, ws} or false. The nodes sharing the lowest score hold ranks 0..n-1, so the
// random draw among them is a rank lookup: O(log n). The pending set expires one ticket
// lifetime after its newest member, when every member has expired anyway.
const PICK: &str = r#"
for _ = 1, 3 do
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if #first == 0 then return false end
  local n = redis.call('ZCOUNT', KEYS[1], first[2], first[2])
  local i = math.floor(tonumber(ARGV[2]) * n)
  if i >= n then i = n - 1 end
  if i < 0 then i = 0 end
  local id = redis.call('ZRANGE', KEYS[1], i, i)[1]
  local key = ARGV[1] .. id
  local h = redis.call('HMGET', key, 'conns', 'weight', 'ws')
  if h[1] then
    local pkey = ARGV[3] .. id
    local seq = redis.call('HINCRBY', key, 'seq', 1)
    redis.call('ZADD', pkey, now, seq)
    redis.call('PEXPIRE', pkey, ARGV[4])
    local pending = redis.call('ZCARD', pkey)
    redis.call('ZADD', KEYS[1], fmt((tonumber(h[1]) + pending) / tonumber(h[2])), id)
    return {id, h[3]}
  end
  -- A score without its node record: drop it and pick again.
  redis.call('ZREM', KEYS[1], id)
end
return false
"#;

// KEYS: beats. ARGV: node key prefix, pending key prefix.
// Returns {{now}, {hgetall..., 'pending', n}, ...}.
const LIST: &str = r#"
local out = {{tostring(now)}}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local h = redis.call('HGETALL', ARGV[1] .. id)
  if #h > 0 then
    table.insert(h, 'pending')
    table.insert(h, tostring(redis.call('ZCARD', ARGV[2] .. id)))
    table.insert(out, h)
  end
end
return out
"#;

// KEYS: beats, scores. ARGV: node key prefix, timeout ms, pending key prefix.
// Returns the evicted ids.
const EVICT: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[2])), 'LIMIT', 0, 1000)
for _, id in ipairs(ids) do
  redis.call('DEL', ARGV[1] .. id, ARGV[3] .. id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
return ids
"#;

struct Scripts {
    register: Script,
    heartbeat: Script,
    deregister: Script,
    set_down: Script,
    pick: Script,
    list: Script,
    evict: Script,
}

impl Scripts {
    fn new() -> Self {
        let with_now = |body: &str| Script::new(&format!("{NOW}{body}"));
        Self {
            register: with_now(REGISTER),
            heartbeat: with_now(HEARTBEAT),
            deregister: Script::new(DEREGISTER),
            set_down: with_now(SET_DOWN),
            pick: with_now(PICK),
            list: with_now(LIST),
            evict: with_now(EVICT),
        }
    }
}

/// The Redis-backed registry handle: cheap to clone.
#[derive(Clone)]
pub struct RedisRegistry {
    conn: RedisConn,
    scripts: Arc<Scripts>,
    /// Lifetime of a pending assignment (the ticket lifetime), in ms.
    assignment_ttl_ms: u64,
    /// The last error seen talking to Redis, cleared by the next success.
    last_error: Arc<Mutex<Option<String>>>,
}

fn node_key(id: &str) -> String {
    format!("{NODE_PREFIX}{id}")
}

fn pending_key(id: &str) -> String {
    format!("{PENDING_PREFIX}{id}")
}

impl RedisRegistry {
    /// Checks the URL and prepares a connection that is made lazily and re-made after an
    /// outage: Redis being down at start is not an error.
    pub fn new(
        cfg: impl Into<RedisConfig>,
        assignment_ttl: Duration,
    ) -> Result<Self, RegistryError> {
        let conn = signal_node::redis_link::connect_lazy(cfg)
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        Ok(Self {
            conn,
            scripts: Arc::new(Scripts::new()),
            assignment_ttl_ms: u64::try_from(assignment_ttl.as_millis())
                .unwrap_or(u64::MAX)
                // Redis takes at most i64 milliseconds; a lifetime below 1 ms is 1 ms.
                .clamp(1, i64::MAX as u64 / 2),
            last_error: Arc::new(Mutex::new(Some("not connected yet".into()))),
        })
    }

    /// The Redis deployment behind the registry.
    pub fn mode(&self) -> RedisMode {
        self.conn.mode()
    }

    pub fn health(&self) -> StoreHealth {
        match &*self.last_error.lock().unwrap_or_else(|p| p.into_inner()) {
            None => StoreHealth::RedisUp,
            Some(e) => StoreHealth::RedisDown(e.clone()),
        }
    }

    fn note<T>(&self, r: redis::RedisResult<T>) -> Result<T, RegistryError> {
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        match r {
            Ok(v) => {
                if let Some(e) = last.take() {
                    tracing::info!(previous_error = %e, "redis reachable again");
                }
                Ok(v)
            }
            Err(e) => {
                let msg = e.to_string();
                if last.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(error = %msg, "redis request failed");
                }
                *last = Some(msg.clone());
                Err(RegistryError::Unavailable(msg))
            }
        }
    }

    pub async fn register(
        &self,
        info: NodeInfo,
        connections: u64,
        unprobed: bool,
    ) -> Result<Registered, RegistryError> {
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<String> = self
            .scripts
            .register
            .key(node_key(info.id.as_str()))
            .key(SCORES)
            .key(BEATS)
            .key(pending_key(info.id.as_str()))
            .arg(info.id.as_str())
            .arg(&info.instance)
            .arg(&info.ws_url)
            .arg(&info.grpc_url)
            .arg(info.weight.max(1))
            .arg(connections)
            .arg(if unprobed { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await;
        let old = self.note(r)?;
        Ok(if old.is_empty() {
            Registered::New
        } else if old == info.instance {
            Registered::Again
        } else {
            Registered::Replaced { old_instance: old }
        })
    }

    pub async fn heartbeat(
        &self,
        id: &NodeId,
        instance: &str,
        beat: Beat,
    ) -> Result<bool, RegistryError> {
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<i64> = self
            .scripts
            .heartbeat
            .key(node_key(id.as_str()))
            .key(SCORES)
            .key(BEATS)
            .key(pending_key(id.as_str()))
            .arg(id.as_str())
            .arg(instance)
            .arg(beat.connections)
            .arg(if beat.draining { "1" } else { "0" })
            // Lua numbers are doubles: anything above the pending count retires them all.
            .arg(beat.accepted.min(1 << 52))
            .arg(self.assignment_ttl_ms)
            .invoke_async(&mut conn)
            .await;
        Ok(self.note(r)? == 1)
    }

    pub async fn deregister(&self, id: &NodeId, instance: &str) -> Result<bool, RegistryError> {
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<i64> = self
            .scripts
            .deregister
            .key(node_key(id.as_str()))
            .key(SCORES)
            .key(BEATS)
            .key(pending_key(id.as_str()))
            .arg(id.as_str())
            .arg(instance)
            .invoke_async(&mut conn)
            .await;
        Ok(self.note(r)? == 1)
    }

    pub async fn set_down(
        &self,
        id: &NodeId,
        instance: &str,
        down: bool,
    ) -> Result<bool, RegistryError> {
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<i64> = self
            .scripts
            .set_down
            .key(node_key(id.as_str()))
            .key(SCORES)
            .key(pending_key(id.as_str()))
            .arg(id.as_str())
            .arg(instance)
            .arg(if down { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await;
        Ok(self.note(r)? == 1)
    }

    pub async fn pick(&self) -> Result<Option<Assignment>, RegistryError> {
        let mut conn = self.conn.clone();
        let random: f64 = rand::random();
        let r: redis::RedisResult<Option<(String, String)>> = self
            .scripts
            .pick
            .key(SCORES)
            .arg(NODE_PREFIX)
            .arg(format!("{random:.17}"))
            .arg(PENDING_PREFIX)
            .arg(self.assignment_ttl_ms)
            .invoke_async(&mut conn)
            .await;
        let Some((id, ws_url)) = self.note(r)? else {
            return Ok(None);
        };
        let node = NodeId::new(id).map_err(|e| RegistryError::Corrupt(format!("node id {e}")))?;
        Ok(Some(Assignment { node, ws_url }))
    }

    pub async fn list(&self) -> Result<Vec<NodeRecord>, RegistryError> {
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<Vec<Vec<String>>> = self
            .scripts
            .list
            .key(BEATS)
            .arg(NODE_PREFIX)
            .arg(PENDING_PREFIX)
            .invoke_async(&mut conn)
            .await;
        let rows = self.note(r)?;
        let mut rows = rows.into_iter();
        let now: u64 = rows
            .next()
            .and_then(|r| r.first().and_then(|s| s.parse().ok()))
            .ok_or_else(|| RegistryError::Corrupt("list without a time".into()))?;
        let mut out = Vec::new();
        for row in rows {
            let mut h = HashMap::new();
            let mut it = row.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                h.insert(k, v);
            }
            match record(&h, now) {
                Some(r) => out.push(r),
                None => {
                    tracing::warn!(fields = ?h.keys().collect::<Vec<_>>(), "skipping unreadable node record in redis")
                }
            }
        }
        Ok(out)
    }

    pub async fn evict(&self, timeout: Duration) -> Result<Vec<NodeId>, RegistryError> {
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<Vec<String>> = self
            .scripts
            .evict
            .key(BEATS)
            .key(SCORES)
            .arg(NODE_PREFIX)
            .arg(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
            .arg(PENDING_PREFIX)
            .invoke_async(&mut conn)
            .await;
        Ok(self
            .note(r)?
            .into_iter()
            .filter_map(|id| NodeId::new(id).ok())
            .collect())
    }
}

fn record(h: &HashMap<String, String>, now_ms: u64) -> Option<NodeRecord> {
    let num = |k: &str| h.get(k).and_then(|v| v.parse::<u64>().ok());
    let flag = |k: &str| h.get(k).map(|v| v == "1");
    let beat = num("beat")?;
    Some(NodeRecord {
        info: NodeInfo {
            id: NodeId::new(h.get("id")?.clone()).ok()?,
            instance: h.get("instance")?.clone(),
            ws_url: h.get("ws")?.clone(),
            grpc_url: h.get("grpc")?.clone(),
            weight: u32::try_from(num("weight")?).ok()?,
        },
        connections: num("conns")?,
        pending: num("pending")?,
        draining: flag("draining")?,
        down: flag("down")?,
        since_heartbeat: Duration::from_millis(now_ms.saturating_sub(beat)),
    })
}
