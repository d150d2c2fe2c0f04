//! The directory: where each user is connected (user id -> [`Location`]), in Redis for a real
//! cluster or in memory for nodes that share one process.
//!
//! # Redis layout
//! One string key per user, `sig:u:<user id>`, whose value is the protobuf encoding of
//! [`Location`] (node id, node instance, connection id, node gRPC URL). Every operation touches
//! exactly one key, so the same code runs on Redis Cluster (no cross-slot command):
//!
//! | operation | command | why |
//! |---|---|---|
//! | [`Directory::claim`] | `SET key loc GET` | atomic swap; the previous location is the connection to replace (4409) |
//! | [`Directory::lookup`] | `GET key` | routing |
//! | [`Directory::release`] | Lua compare-and-delete | a user who reconnected elsewhere is never erased by the old connection's cleanup |
//! | [`Directory::reassert`] | `SET key loc NX` per entry, pipelined (on a cluster: sent concurrently, since a pipeline may not span slots) | after Redis lost its data, put back live connections without overwriting newer ones |
//!
//! Entries carry no TTL: a connection may live for days. Entries left by a node that died are
//! recognised by the router (node absent from central's live set, node unreachable, or a node
//! instance that does not match) and removed with the same compare-and-delete.
//!
//! When Redis is down, every operation fails fast with [`DirectoryError::Unavailable`]; the
//! handle keeps trying in the background and bumps [`Directory::reconnects`] when it is back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::redis_link::{RedisConfig, RedisConn, RedisMode};
use prost::Message as _;
use signal_proto::relay::Location;
use signal_proto::UserId;
use tokio::sync::watch;

const KEY_PREFIX: &str = "sig:u:";

/// Compare-and-delete: delete the key only if it still holds ARGV[1].
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Commands in flight at once when reasserting on a Redis Cluster.
const REASSERT_CONCURRENCY: usize = 64;

/// How often an idle Redis directory checks that Redis answers.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);

/// Why a directory operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    #[error("invalid redis url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("directory unavailable: {0}")]
    Unavailable(String),
    #[error("directory entry for {user} is corrupt: {reason}")]
    Corrupt { user: String, reason: String },
}

/// Health of the directory, for `/readyz` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryStatus {
    pub healthy: bool,
    pub backend: &'static str,
    /// The Redis deployment (`None` for the memory backend).
    pub mode: Option<RedisMode>,
    pub last_error: Option<String>,
}

/// Where users are connected. A cheap `Clone` handle.
#[derive(Clone)]
pub struct Directory {
    backend: Backend,
    health: Arc<Health>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("backend", &self.health.backend)
            .finish()
    }
}

#[derive(Clone)]
enum Backend {
    Memory(Arc<Mutex<HashMap<UserId, Location>>>),
    Redis {
        conn: RedisConn,
        release: Arc<redis::Script>,
    },
}

struct Health {
    backend: &'static str,
    mode: Option<RedisMode>,
    state: Mutex<HealthState>,
    reconnects: watch::Sender<u64>,
}

struct HealthState {
    healthy: bool,
    last_error: Option<String>,
}

impl Health {
    fn new(backend: &'static str, mode: Option<RedisMode>) -> Self {
        let (reconnects, _) = watch::channel(0);
        Health {
            backend,
            mode,
            state: Mutex::new(HealthState {
                healthy: true,
                last_error: None,
            }),
            reconnects,
        }
    }

    fn ok(&self) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !st.healthy {
            st.healthy = true;
            drop(st);
            tracing::info!(
                backend = self.backend,
                mode = self.mode.map(RedisMode::as_str),
                "directory reachable again"
            );
            self.reconnects.send_modify(|n| *n += 1);
        }
    }

    fn failed(&self, err: &str) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if st.healthy {
            tracing::warn!(
                backend = self.backend,
                mode = self.mode.map(RedisMode::as_str),
                error = err,
                "directory unreachable"
            );
        }
        st.healthy = false;
        st.last_error = Some(err.to_owned());
    }
}

fn key(user: &UserId) -> String {
    format!("{KEY_PREFIX}{user}")
}

fn decode(user: &UserId, bytes: &[u8]) -> Result<Location, DirectoryError> {
    Location::decode(bytes).map_err(|e| DirectoryError::Corrupt {
        user: user.to_string(),
        reason: e.to_string(),
    })
}

impl Directory {
    /// An in-process directory. Clones share it, so several nodes in one process (tests,
    /// `central --dev`) see one directory.
    pub fn memory() -> Directory {
        Directory {
            backend: Backend::Memory(Arc::new(Mutex::new(HashMap::new()))),
            health: Arc::new(Health::new("memory", None)),
        }
    }

    /// A Redis directory. Fails only on a malformed URL: the connection is made lazily and
    /// re-made with backoff, so a Redis that is down at start is not an error. Must be called
    /// inside a tokio runtime (it starts a health-check task that ends with the last handle).
    pub fn redis(cfg: impl Into<RedisConfig>) -> Result<Directory, DirectoryError> {
        let cfg: RedisConfig = cfg.into();
        let bad = |e: redis::RedisError| DirectoryError::BadUrl {
            url: cfg.urls.join(","),
            reason: e.to_string(),
        };
        let conn = crate::redis_link::connect_lazy(&cfg).map_err(bad)?;
        let mode = conn.mode();
        let dir = Directory {
            backend: Backend::Redis {
                conn,
                release: Arc::new(redis::Script::new(RELEASE_LUA)),
            },
            health: Arc::new(Health::new("redis", Some(mode))),
        };
        dir.spawn_health_check();
        Ok(dir)
    }

    /// Pings Redis in the background so that an outage and the recovery are noticed even
    /// when no traffic needs the directory. Holds only a weak reference to the health state.
    fn spawn_health_check(&self) {
        let Backend::Redis { conn, .. } = &self.backend else {
            return;
        };
        let mut conn = conn.clone();
        let health = Arc::downgrade(&self.health);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEALTH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(health) = health.upgrade() else {
                    return;
                };
                let res: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                match res {
                    Ok(_) => health.ok(),
                    Err(e) => health.failed(&e.to_string()),
                }
            }
        });
    }

    /// Health for `/readyz` and metrics.
    pub fn status(&self) -> DirectoryStatus {
        let st = self
            .health
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        DirectoryStatus {
            healthy: st.healthy,
            backend: self.health.backend,
            mode: self.health.mode,
            last_error: st.last_error.clone(),
        }
    }

    /// Bumped each time the backend is reachable again after a failure: the node then calls
    /// [`reassert`](Self::reassert) with its live connections.
    pub fn reconnects(&self) -> watch::Receiver<u64> {
        self.health.reconnects.subscribe()
    }

    /// Times a Redis command, records metrics and health, maps the error.
    async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, DirectoryError> {
        let start = Instant::now();
        let res = fut.await;
        metrics::histogram!("signal_directory_seconds", "op" => op)
            .record(start.elapsed().as_secs_f64());
        match res {
            Ok(v) => {
                self.health.ok();
                Ok(v)
            }
            Err(e) => {
                metrics::counter!("signal_directory_errors_total", "op" => op).increment(1);
                let msg = e.to_string();
                self.health.failed(&msg);
                Err(DirectoryError::Unavailable(msg))
            }
        }
    }

    /// Records that `user` is connected at `at`; returns where it was connected before (the
    /// connection to close with 4409), if anywhere.
    pub async fn claim(
        &self,
        user: &UserId,
        at: &Location,
    ) -> Result<Option<Location>, DirectoryError> {
        match &self.backend {
            Backend::Memory(map) => {
                let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
                Ok(map.insert(user.clone(), at.clone()))
            }
            Backend::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let prev: Option<Vec<u8>> = self
                    .timed(
                        "claim",
                        redis::cmd("SET")
                            .arg(key(user))
                            .arg(at.encode_to_vec())
                            .arg("GET")
                            .query_async(&mut conn),
                    )
                    .await?;
                match prev {
                    // A corrupt previous entry is overwritten already; there is nothing to kick.
                    Some(bytes) => Ok(decode(user, &bytes).ok()),
                    None => Ok(None),
                }
            }
        }
    }

    /// Where `user` is connected, if anywhere.
    pub async fn lookup(&self, user: &UserId) -> Result<Option<Location>, DirectoryError> {
        match &self.backend {
            Backend::Memory(map) => {
                let map = map.lock().unwrap_or_else(PoisonError::into_inner);
                Ok(map.get(user).cloned())
            }
            Backend::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let bytes: Option<Vec<u8>> = self
                    .timed(
                        "lookup",
                        redis::cmd("GET").arg(key(user)).query_async(&mut conn),
                    )
                    .await?;
                bytes.map(|b| decode(user, &b)).transpose()
            }
        }
    }

    /// Removes the entry of `user` only if it still is `at`; returns whether it did.
    pub async fn release(&self, user: &UserId, at: &Location) -> Result<bool, DirectoryError> {
        match &self.backend {
            Backend::Memory(map) => {
                let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
                if map.get(user) == Some(at) {
                    map.remove(user);
                    Ok(true)
                } else {
                    Ok(false)
                }
            }
            Backend::Redis { conn, release } => {
                let mut conn = conn.clone();
                let mut inv = release.key(key(user));
                inv.arg(at.encode_to_vec());
                let n: i64 = self.timed("release", inv.invoke_async(&mut conn)).await?;
                Ok(n > 0)
            }
        }
    }

    /// Puts back entries that are missing (`SET NX`), never replacing a newer one. Returns how
    /// many were put back.
    pub async fn reassert(&self, entries: &[(UserId, Location)]) -> Result<usize, DirectoryError> {
        match &self.backend {
            Backend::Memory(map) => {
                let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
                let mut n = 0;
                for (user, at) in entries {
                    if !map.contains_key(user) {
                        map.insert(user.clone(), at.clone());
                        n += 1;
                    }
                }
                Ok(n)
            }
            Backend::Redis { conn, .. } if conn.is_cluster() => {
                // One slot per key: a pipeline may not span slots on a cluster, so send the
                // single-key commands concurrently (bounded) over the multiplexed connection.
                use futures::stream::{StreamExt as _, TryStreamExt as _};
                let put = |(user, at): &(UserId, Location)| {
                    let mut conn = conn.clone();
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(key(user)).arg(at.encode_to_vec()).arg("NX");
                    async move {
                        self.timed("reassert", cmd.query_async::<Option<String>>(&mut conn))
                            .await
                    }
                };
                let put_back: Vec<Option<String>> = futures::stream::iter(entries)
                    .map(put)
                    .buffer_unordered(REASSERT_CONCURRENCY)
                    .try_collect()
                    .await?;
                Ok(put_back.iter().filter(|r| r.is_some()).count())
            }
            Backend::Redis { conn, .. } => {
                let mut n = 0;
                for chunk in entries.chunks(512) {
                    let mut pipe = redis::pipe();
                    for (user, at) in chunk {
                        pipe.cmd("SET")
                            .arg(key(user))
                            .arg(at.encode_to_vec())
                            .arg("NX");
                    }
                    let mut conn = conn.clone();
                    let res: Vec<Option<String>> =
                        self.timed("reassert", pipe.query_async(&mut conn)).await?;
                    n += res.iter().filter(|r| r.is_some()).count();
                }
                Ok(n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(node: &str, conn: u64) -> Location {
        Location {
            node_id: node.into(),
            instance: "i1".into(),
            conn,
            grpc_url: format!("http://{node}:9091"),
        }
    }

    async fn exercise(dir: Directory) {
        let alice = UserId::new("alice").unwrap();
        assert_eq!(dir.lookup(&alice).await.unwrap(), None);
        assert_eq!(dir.claim(&alice, &loc("a", 1)).await.unwrap(), None);
        assert_eq!(dir.lookup(&alice).await.unwrap(), Some(loc("a", 1)));
        // Alice moves to b: claim returns a's entry (to kick).
        assert_eq!(
            dir.claim(&alice, &loc("b", 7)).await.unwrap(),
            Some(loc("a", 1))
        );
        // a's late cleanup must not erase b's entry.
        assert!(!dir.release(&alice, &loc("a", 1)).await.unwrap());
        assert_eq!(dir.lookup(&alice).await.unwrap(), Some(loc("b", 7)));
        // reassert never overwrites a newer entry, and fills a missing one.
        let bob = UserId::new("bob").unwrap();
        let n = dir
            .reassert(&[(alice.clone(), loc("a", 1)), (bob.clone(), loc("a", 2))])
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(dir.lookup(&alice).await.unwrap(), Some(loc("b", 7)));
        assert_eq!(dir.lookup(&bob).await.unwrap(), Some(loc("a", 2)));
        assert!(dir.release(&alice, &loc("b", 7)).await.unwrap());
        assert_eq!(dir.lookup(&alice).await.unwrap(), None);
        assert!(dir.status().healthy);
    }

    #[tokio::test]
    async fn memory_directory() {
        exercise(Directory::memory()).await;
    }

    #[tokio::test]
    async fn redis_directory_against_real_redis() {
        let redis = testkit::Redis::start().await;
        exercise(Directory::redis(redis.url()).unwrap()).await;
    }

    #[tokio::test]
    async fn redis_outage_is_unavailable_then_recovers() {
        let mut redis = testkit::Redis::start().await;
        let dir = Directory::redis(redis.url()).unwrap();
        let alice = UserId::new("alice").unwrap();
        dir.claim(&alice, &loc("a", 1)).await.unwrap();
        let mut reconnects = dir.reconnects();
        redis.kill();
        let err = dir.lookup(&alice).await.unwrap_err();
        assert!(matches!(err, DirectoryError::Unavailable(_)), "{err:?}");
        assert!(!dir.status().healthy);
        assert!(dir.status().last_error.is_some());
        redis.restart().await;
        // The health check notices the recovery by itself.
        tokio::time::timeout(Duration::from_secs(10), reconnects.changed())
            .await
            .unwrap()
            .unwrap();
        assert!(dir.status().healthy);
        // Redis restarted without persistence: the entry is gone until reasserted.
        assert_eq!(dir.lookup(&alice).await.unwrap(), None);
        assert_eq!(
            dir.reassert(&[(alice.clone(), loc("a", 1))]).await.unwrap(),
            1
        );
        assert_eq!(dir.lookup(&alice).await.unwrap(), Some(loc("a", 1)));
    }

    #[test]
    fn bad_url_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(matches!(
                Directory::redis("not a url"),
                Err(DirectoryError::BadUrl { .. })
            ));
        });
    }
}
