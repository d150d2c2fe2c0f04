//! The node registry: which signal nodes are registered, their load, and who gets the next
//! login. One handle, two backends with the same rules: in memory (one central) or in Redis
//! (several central replicas giving the same answers, see `registry/redis.rs`).

mod redis;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use signal_proto::NodeId;

use crate::balance::{Balancer, Load};

pub use self::redis::RedisRegistry;

/// What a node tells about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: NodeId,
    /// Random per process start of the node.
    pub instance: String,
    /// WebSocket URL handed to clients.
    pub ws_url: String,
    /// gRPC URL other nodes (and central's probe) dial.
    pub grpc_url: String,
    pub weight: u32,
}

/// A registered node as the registry holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub info: NodeInfo,
    /// Connections reported at the last heartbeat.
    pub connections: u64,
    /// Logins handed to it since the last heartbeat.
    pub assigned: u64,
    pub draining: bool,
    /// Registered but not answering central's probes: not handed out.
    pub down: bool,
    /// Time since the last registration or heartbeat.
    pub since_heartbeat: Duration,
}

impl NodeRecord {
    /// Whether logins may go to this node.
    pub fn pickable(&self) -> bool {
        !self.draining && !self.down
    }
}

/// What registering did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    New,
    /// Same node id and instance (e.g. after central restarted).
    Again,
    /// Same node id, new instance: the old one is gone.
    Replaced {
        old_instance: String,
    },
}

/// The node a login was assigned to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub node: NodeId,
    pub ws_url: String,
}

/// Why the registry could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The shared store (Redis) is unreachable or failed.
    #[error("node registry unavailable (redis): {0}")]
    Unavailable(String),
    /// The stored data could not be read.
    #[error("node registry holds unreadable data: {0}")]
    Corrupt(String),
}

/// Health of the registry's backing store, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    Memory,
    RedisUp,
    RedisDown(String),
}

/// The registry handle: cheap to clone.
#[derive(Clone)]
pub enum Registry {
    Memory(MemoryRegistry),
    Redis(RedisRegistry),
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Registry::Memory(_) => "Registry(memory)",
            Registry::Redis(_) => "Registry(redis)",
        })
    }
}

impl Registry {
    pub fn memory() -> Self {
        Registry::Memory(MemoryRegistry::default())
    }

    /// A Redis-backed registry. Connects lazily: a Redis that is down at start is not an error.
    pub fn redis(url: &str) -> Result<Self, RegistryError> {
        RedisRegistry::new(url).map(Registry::Redis)
    }

    pub async fn register(
        &self,
        info: NodeInfo,
        connections: u64,
    ) -> Result<Registered, RegistryError> {
        match self {
            Registry::Memory(m) => Ok(m.register(info, connections)),
            Registry::Redis(r) => r.register(info, connections).await,
        }
    }

    /// Records a heartbeat. `false` when the node (with this instance) is not registered.
    pub async fn heartbeat(
        &self,
        id: &NodeId,
        instance: &str,
        connections: u64,
        draining: bool,
    ) -> Result<bool, RegistryError> {
        match self {
            Registry::Memory(m) => Ok(m.heartbeat(id, instance, connections, draining)),
            Registry::Redis(r) => r.heartbeat(id, instance, connections, draining).await,
        }
    }

    /// Removes the node if it is still this instance. `true` when something was removed.
    pub async fn deregister(&self, id: &NodeId, instance: &str) -> Result<bool, RegistryError> {
        match self {
            Registry::Memory(m) => Ok(m.deregister(id, instance)),
            Registry::Redis(r) => r.deregister(id, instance).await,
        }
    }

    /// Marks a node down (not answering probes) or up again. `true` when the flag changed.
    pub async fn set_down(
        &self,
        id: &NodeId,
        instance: &str,
        down: bool,
    ) -> Result<bool, RegistryError> {
        match self {
            Registry::Memory(m) => Ok(m.set_down(id, instance, down)),
            Registry::Redis(r) => r.set_down(id, instance, down).await,
        }
    }

    /// Picks the node for the next login and counts the assignment.
    pub async fn pick(&self) -> Result<Option<Assignment>, RegistryError> {
        match self {
            Registry::Memory(m) => Ok(m.pick()),
            Registry::Redis(r) => r.pick().await,
        }
    }

    /// Every registered node, sorted by id.
    pub async fn list(&self) -> Result<Vec<NodeRecord>, RegistryError> {
        let mut v = match self {
            Registry::Memory(m) => m.list(),
            Registry::Redis(r) => r.list().await?,
        };
        v.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        Ok(v)
    }

    /// Removes the nodes silent for longer than `timeout` and returns them. Idempotent and safe
    /// to run from every replica: a node is returned by exactly one call.
    pub async fn evict(&self, timeout: Duration) -> Result<Vec<NodeId>, RegistryError> {
        match self {
            Registry::Memory(m) => Ok(m.evict(timeout)),
            Registry::Redis(r) => r.evict(timeout).await,
        }
    }

    pub fn health(&self) -> StoreHealth {
        match self {
            Registry::Memory(_) => StoreHealth::Memory,
            Registry::Redis(r) => r.health(),
        }
    }
}

/// The in-memory backend.
#[derive(Clone)]
pub struct MemoryRegistry {
    inner: Arc<Mutex<MemoryInner>>,
}

struct MemoryInner {
    nodes: HashMap<NodeId, MemNode>,
    balancer: Balancer<NodeId>,
    rng: StdRng,
}

struct MemNode {
    info: NodeInfo,
    connections: u64,
    draining: bool,
    down: bool,
    beat: tokio::time::Instant,
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self {
            inner: Arc::new(Mutex::new(MemoryInner {
                nodes: HashMap::new(),
                balancer: Balancer::new(),
                rng: StdRng::from_os_rng(),
            })),
        }
    }
}

impl MemoryInner {
    fn rebalance(&mut self, id: &NodeId) {
        let Some(n) = self.nodes.get(id) else {
            self.balancer.remove(id);
            return;
        };
        let load = Load {
            connections: n.connections,
            weight: n.info.weight,
            draining: n.draining || n.down,
        };
        self.balancer.set(id.clone(), load, &mut self.rng);
    }
}

impl MemoryRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing the registry; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, info: NodeInfo, connections: u64) -> Registered {
        let mut g = self.lock();
        let id = info.id.clone();
        let outcome = match g.nodes.get(&id) {
            None => Registered::New,
            Some(old) if old.info.instance == info.instance => Registered::Again,
            Some(old) => Registered::Replaced {
                old_instance: old.info.instance.clone(),
            },
        };
        g.nodes.insert(
            id.clone(),
            MemNode {
                info,
                connections,
                draining: false,
                down: false,
                beat: tokio::time::Instant::now(),
            },
        );
        g.rebalance(&id);
        outcome
    }

    fn heartbeat(&self, id: &NodeId, instance: &str, connections: u64, draining: bool) -> bool {
        let mut g = self.lock();
        let Some(n) = g.nodes.get_mut(id) else {
            return false;
        };
        if n.info.instance != instance {
            return false;
        }
        n.connections = connections;
        n.draining = draining;
        n.beat = tokio::time::Instant::now();
        g.rebalance(id);
        true
    }

    fn deregister(&self, id: &NodeId, instance: &str) -> bool {
        let mut g = self.lock();
        match g.nodes.get(id) {
            Some(n) if n.info.instance == instance => {
                g.nodes.remove(id);
                g.balancer.remove(id);
                true
            }
            _ => false,
        }
    }

    fn set_down(&self, id: &NodeId, instance: &str, down: bool) -> bool {
        let mut g = self.lock();
        let Some(n) = g.nodes.get_mut(id) else {
            return false;
        };
        if n.info.instance != instance || n.down == down {
            return false;
        }
        n.down = down;
        // Keep the assignments counted so far: only the pickable flag changes.
        let assigned = g.balancer.assigned(id).unwrap_or(0);
        g.rebalance(id);
        if assigned > 0 {
            // `rebalance` reset the count; a node coming back up has had no heartbeat in
            // between, so add the count back into its connections to keep its score.
            if let Some(n) = g.nodes.get_mut(id) {
                n.connections = n.connections.saturating_add(assigned);
            }
            g.rebalance(id);
        }
        true
    }

    fn pick(&self) -> Option<Assignment> {
        let mut g = self.lock();
        let g = &mut *g;
        let id = g.balancer.pick(&mut g.rng)?;
        let n = g.nodes.get(&id)?;
        Some(Assignment {
            node: id,
            ws_url: n.info.ws_url.clone(),
        })
    }

    fn list(&self) -> Vec<NodeRecord> {
        let g = self.lock();
        let now = tokio::time::Instant::now();
        g.nodes
            .values()
            .map(|n| NodeRecord {
                info: n.info.clone(),
                connections: n.connections,
                assigned: g.balancer.assigned(&n.info.id).unwrap_or(0),
                draining: n.draining,
                down: n.down,
                since_heartbeat: now.saturating_duration_since(n.beat),
            })
            .collect()
    }

    fn evict(&self, timeout: Duration) -> Vec<NodeId> {
        let mut g = self.lock();
        let now = tokio::time::Instant::now();
        let gone: Vec<NodeId> = g
            .nodes
            .iter()
            .filter(|(_, n)| now.saturating_duration_since(n.beat) > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            g.nodes.remove(id);
            g.balancer.remove(id);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, instance: &str, weight: u32) -> NodeInfo {
        NodeInfo {
            id: NodeId::new(id).unwrap(),
            instance: instance.into(),
            ws_url: format!("ws://{id}/ws"),
            grpc_url: format!("http://{id}:1"),
            weight,
        }
    }

    #[tokio::test]
    async fn register_heartbeat_replace_deregister() {
        let r = Registry::memory();
        let n1 = NodeId::new("n1").unwrap();
        assert_eq!(r.register(info("n1", "a", 1), 0).await, Ok(Registered::New));
        assert_eq!(
            r.register(info("n1", "a", 1), 0).await,
            Ok(Registered::Again)
        );
        assert_eq!(r.heartbeat(&n1, "a", 3, false).await, Ok(true));
        assert_eq!(r.heartbeat(&n1, "zzz", 3, false).await, Ok(false));
        assert_eq!(
            r.register(info("n1", "b", 1), 0).await,
            Ok(Registered::Replaced {
                old_instance: "a".into()
            })
        );
        // The old instance is gone: its heartbeats and deregistration do nothing.
        assert_eq!(r.heartbeat(&n1, "a", 3, false).await, Ok(false));
        assert_eq!(r.deregister(&n1, "a").await, Ok(false));
        assert_eq!(r.list().await.unwrap().len(), 1);
        assert_eq!(r.deregister(&n1, "b").await, Ok(true));
        assert!(r.list().await.unwrap().is_empty());
        assert_eq!(r.pick().await, Ok(None));
    }

    #[tokio::test]
    async fn draining_and_down_nodes_are_not_picked() {
        let r = Registry::memory();
        let n1 = NodeId::new("n1").unwrap();
        let n2 = NodeId::new("n2").unwrap();
        r.register(info("n1", "a", 1), 0).await.unwrap();
        r.register(info("n2", "a", 1), 1000).await.unwrap();
        r.heartbeat(&n1, "a", 0, true).await.unwrap();
        for _ in 0..10 {
            assert_eq!(r.pick().await.unwrap().unwrap().node, n2);
        }
        assert!(r.set_down(&n2, "a", true).await.unwrap());
        assert!(!r.set_down(&n2, "a", true).await.unwrap());
        assert_eq!(r.pick().await, Ok(None));
        assert!(r.set_down(&n2, "a", false).await.unwrap());
        let l = r.list().await.unwrap();
        assert_eq!(l[1].connections + l[1].assigned, 1010);
        assert_eq!(r.pick().await.unwrap().unwrap().node, n2);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_nodes_are_evicted_once() {
        let r = Registry::memory();
        let n1 = NodeId::new("n1").unwrap();
        r.register(info("n1", "a", 1), 0).await.unwrap();
        r.register(info("n2", "a", 1), 0).await.unwrap();
        tokio::time::advance(Duration::from_millis(600)).await;
        r.heartbeat(&n1, "a", 0, false).await.unwrap();
        tokio::time::advance(Duration::from_millis(600)).await;
        let gone = r.evict(Duration::from_secs(1)).await.unwrap();
        assert_eq!(gone, vec![NodeId::new("n2").unwrap()]);
        assert!(r.evict(Duration::from_secs(1)).await.unwrap().is_empty());
        for _ in 0..5 {
            assert_eq!(r.pick().await.unwrap().unwrap().node, n1);
        }
    }
}
