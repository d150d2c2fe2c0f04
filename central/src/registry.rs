//! The node registry: which signal nodes are registered, their load, their pending
//! assignments, and who gets the next login. One handle, two backends with the same rules: in
//! memory (one central) or in Redis (several central replicas giving the same answers, see
//! `registry/redis.rs`). The rule itself is `balance.rs`.

mod redis;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use signal_proto::NodeId;
// tokio's clock, so that tests can pause and advance it.
use tokio::time::Instant;

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
    /// Logins handed to it that its heartbeats have not reported as accepted yet and whose
    /// ticket lifetime has not passed (as of its last heartbeat).
    pub pending: u64,
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

/// What a heartbeat reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Beat {
    /// Connections the node holds now.
    pub connections: u64,
    /// Connections accepted with a ticket since the previous acknowledged heartbeat.
    pub accepted: u64,
    pub draining: bool,
}

impl Beat {
    /// A heartbeat with nothing accepted.
    pub fn load(connections: u64, draining: bool) -> Beat {
        Beat {
            connections,
            accepted: 0,
            draining,
        }
    }
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
    /// An in-memory registry. `assignment_ttl` is the lifetime of the tickets handed out at
    /// login: a pending assignment that old is dropped at the node's next heartbeat.
    pub fn memory(assignment_ttl: Duration) -> Self {
        Registry::Memory(MemoryRegistry::new(assignment_ttl))
    }

    /// A Redis-backed registry. Connects lazily: a Redis that is down at start is not an error.
    /// `assignment_ttl` as for [`Registry::memory`].
    pub fn redis(
        cfg: impl Into<signal_node::redis_link::RedisConfig>,
        assignment_ttl: Duration,
    ) -> Result<Self, RegistryError> {
        RedisRegistry::new(cfg, assignment_ttl).map(Registry::Redis)
    }

    /// Registers a node that may be handed out at once.
    pub async fn register(
        &self,
        info: NodeInfo,
        connections: u64,
    ) -> Result<Registered, RegistryError> {
        self.register_with(info, connections, false).await
    }

    /// Registers a node that is not handed out (it is `down`) until a probe marks it up,
    /// unless it is the same instance, already up (a re-registration after a central
    /// restart with a shared store). What the Register RPC does.
    pub async fn register_unprobed(
        &self,
        info: NodeInfo,
        connections: u64,
    ) -> Result<Registered, RegistryError> {
        self.register_with(info, connections, true).await
    }

    async fn register_with(
        &self,
        info: NodeInfo,
        connections: u64,
        unprobed: bool,
    ) -> Result<Registered, RegistryError> {
        match self {
            Registry::Memory(m) => Ok(m.register(info, connections, unprobed)),
            Registry::Redis(r) => r.register(info, connections, unprobed).await,
        }
    }

    /// Records a heartbeat: the node's load, and `accepted`, the connections it accepted with
    /// a ticket since its previous acknowledged heartbeat, which retire as many of its oldest
    /// pending assignments (after those older than the ticket lifetime expired). `false` when
    /// the node (with this instance) is not registered.
    pub async fn heartbeat(
        &self,
        id: &NodeId,
        instance: &str,
        beat: Beat,
    ) -> Result<bool, RegistryError> {
        match self {
            Registry::Memory(m) => Ok(m.heartbeat(id, instance, beat)),
            Registry::Redis(r) => r.heartbeat(id, instance, beat).await,
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

    /// Picks the node for the next login and counts the assignment as pending.
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

    /// The Redis deployment behind the registry (`None` in memory).
    pub fn redis_mode(&self) -> Option<signal_node::redis_link::RedisMode> {
        match self {
            Registry::Memory(_) => None,
            Registry::Redis(r) => Some(r.mode()),
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
    balancer: Balancer<NodeId, Instant>,
    rng: StdRng,
    /// Lifetime of a pending assignment (the ticket lifetime).
    assignment_ttl: Duration,
}

struct MemNode {
    info: NodeInfo,
    connections: u64,
    draining: bool,
    down: bool,
    beat: Instant,
}

impl MemNode {
    fn load(&self) -> Load {
        Load {
            connections: self.connections,
            weight: self.info.weight,
            draining: self.draining || self.down,
        }
    }
}

impl MemoryRegistry {
    pub fn new(assignment_ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Mutex::new(MemoryInner {
                nodes: HashMap::new(),
                balancer: Balancer::new(),
                rng: StdRng::from_os_rng(),
                assignment_ttl,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing the registry; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, info: NodeInfo, connections: u64, unprobed: bool) -> Registered {
        let mut g = self.lock();
        let id = info.id.clone();
        let (outcome, was_up) = match g.nodes.get(&id) {
            None => (Registered::New, false),
            Some(old) if old.info.instance == info.instance => (Registered::Again, !old.down),
            Some(old) => (
                Registered::Replaced {
                    old_instance: old.info.instance.clone(),
                },
                false,
            ),
        };
        let node = MemNode {
            info,
            connections,
            draining: false,
            down: unprobed && !was_up,
            beat: Instant::now(),
        };
        let g = &mut *g;
        g.balancer.register(id.clone(), node.load(), &mut g.rng);
        g.nodes.insert(id, node);
        outcome
    }

    fn heartbeat(&self, id: &NodeId, instance: &str, beat: Beat) -> bool {
        let mut g = self.lock();
        let g = &mut *g;
        let Some(n) = g.nodes.get_mut(id) else {
            return false;
        };
        if n.info.instance != instance {
            return false;
        }
        let now = Instant::now();
        n.connections = beat.connections;
        n.draining = beat.draining;
        n.beat = now;
        let expire_upto = now.checked_sub(g.assignment_ttl);
        g.balancer
            .heartbeat(id.clone(), n.load(), beat.accepted, expire_upto, &mut g.rng);
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
        let g = &mut *g;
        let Some(n) = g.nodes.get_mut(id) else {
            return false;
        };
        if n.info.instance != instance || n.down == down {
            return false;
        }
        n.down = down;
        // Only the pickable flag changes: the pending assignments stay counted.
        g.balancer.update(id.clone(), n.load(), &mut g.rng);
        true
    }

    fn pick(&self) -> Option<Assignment> {
        let mut g = self.lock();
        let g = &mut *g;
        let id = g.balancer.pick(Instant::now(), &mut g.rng)?;
        let n = g.nodes.get(&id)?;
        Some(Assignment {
            node: id,
            ws_url: n.info.ws_url.clone(),
        })
    }

    fn list(&self) -> Vec<NodeRecord> {
        let g = self.lock();
        let now = Instant::now();
        g.nodes
            .values()
            .map(|n| NodeRecord {
                info: n.info.clone(),
                connections: n.connections,
                pending: g.balancer.pending(&n.info.id).unwrap_or(0),
                draining: n.draining,
                down: n.down,
                since_heartbeat: now.saturating_duration_since(n.beat),
            })
            .collect()
    }

    fn evict(&self, timeout: Duration) -> Vec<NodeId> {
        let mut g = self.lock();
        let now = Instant::now();
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

    const TTL: Duration = Duration::from_secs(60);

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
        let r = Registry::memory(TTL);
        let n1 = NodeId::new("n1").unwrap();
        assert_eq!(r.register(info("n1", "a", 1), 0).await, Ok(Registered::New));
        assert_eq!(
            r.register(info("n1", "a", 1), 0).await,
            Ok(Registered::Again)
        );
        assert_eq!(r.heartbeat(&n1, "a", Beat::load(3, false)).await, Ok(true));
        assert_eq!(
            r.heartbeat(&n1, "zzz", Beat::load(3, false)).await,
            Ok(false)
        );
        assert_eq!(
            r.register(info("n1", "b", 1), 0).await,
            Ok(Registered::Replaced {
                old_instance: "a".into()
            })
        );
        // The old instance is gone: its heartbeats and deregistration do nothing.
        assert_eq!(r.heartbeat(&n1, "a", Beat::load(3, false)).await, Ok(false));
        assert_eq!(r.deregister(&n1, "a").await, Ok(false));
        assert_eq!(r.list().await.unwrap().len(), 1);
        assert_eq!(r.deregister(&n1, "b").await, Ok(true));
        assert!(r.list().await.unwrap().is_empty());
        assert_eq!(r.pick().await, Ok(None));
    }

    #[tokio::test]
    async fn draining_and_down_nodes_are_not_picked() {
        let r = Registry::memory(TTL);
        let n1 = NodeId::new("n1").unwrap();
        let n2 = NodeId::new("n2").unwrap();
        r.register(info("n1", "a", 1), 0).await.unwrap();
        r.register(info("n2", "a", 1), 1000).await.unwrap();
        r.heartbeat(&n1, "a", Beat::load(0, true)).await.unwrap();
        for _ in 0..10 {
            assert_eq!(r.pick().await.unwrap().unwrap().node, n2);
        }
        assert!(r.set_down(&n2, "a", true).await.unwrap());
        assert!(!r.set_down(&n2, "a", true).await.unwrap());
        assert_eq!(r.pick().await, Ok(None));
        assert!(r.set_down(&n2, "a", false).await.unwrap());
        let l = r.list().await.unwrap();
        assert_eq!(l[1].connections + l[1].pending, 1010);
        assert_eq!(r.pick().await.unwrap().unwrap().node, n2);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_nodes_are_evicted_once() {
        let r = Registry::memory(TTL);
        let n1 = NodeId::new("n1").unwrap();
        r.register(info("n1", "a", 1), 0).await.unwrap();
        r.register(info("n2", "a", 1), 0).await.unwrap();
        tokio::time::advance(Duration::from_millis(600)).await;
        r.heartbeat(&n1, "a", Beat::load(0, false)).await.unwrap();
        tokio::time::advance(Duration::from_millis(600)).await;
        let gone = r.evict(Duration::from_secs(1)).await.unwrap();
        assert_eq!(gone, vec![NodeId::new("n2").unwrap()]);
        assert!(r.evict(Duration::from_secs(1)).await.unwrap().is_empty());
        for _ in 0..5 {
            assert_eq!(r.pick().await.unwrap().unwrap().node, n1);
        }
    }

    fn nid(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    async fn pending(r: &Registry, id: &NodeId) -> u64 {
        r.list()
            .await
            .unwrap()
            .into_iter()
            .find(|n| &n.info.id == id)
            .map(|n| n.pending)
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_login_not_yet_connected_at_heartbeat_time_stays_counted() {
        for round in 0..20 {
            let r = Registry::memory(TTL);
            r.register(info("n1", "a", 1), 0).await.unwrap();
            r.register(info("n2", "a", 1), 0).await.unwrap();
            let first = r.pick().await.unwrap().unwrap().node;
            tokio::time::advance(Duration::from_millis(100)).await;
            // Its node heartbeats before the client connected: 0 connections, 0 accepted.
            assert!(r
                .heartbeat(&first, "a", Beat::load(0, false))
                .await
                .unwrap());
            assert_eq!(pending(&r, &first).await, 1);
            let second = r.pick().await.unwrap().unwrap().node;
            assert_ne!(first, second, "round {round}: the second login herded");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn accepted_connections_retire_pending_assignments() {
        let r = Registry::memory(TTL);
        let n1 = nid("n1");
        r.register(info("n1", "a", 1), 0).await.unwrap();
        for _ in 0..3 {
            assert_eq!(r.pick().await.unwrap().unwrap().node, n1);
        }
        assert_eq!(pending(&r, &n1).await, 3);
        let beat = Beat {
            connections: 2,
            accepted: 2,
            draining: false,
        };
        assert!(r.heartbeat(&n1, "a", beat).await.unwrap());
        let l = r.list().await.unwrap();
        assert_eq!((l[0].connections, l[0].pending), (2, 1));
        // Down and back up keeps the pending one.
        assert!(r.set_down(&n1, "a", true).await.unwrap());
        assert!(r.set_down(&n1, "a", false).await.unwrap());
        assert_eq!(pending(&r, &n1).await, 1);
        // A wrong instance retires nothing.
        let all = Beat {
            accepted: 100,
            ..beat
        };
        assert!(!r.heartbeat(&n1, "other", all).await.unwrap());
        assert_eq!(pending(&r, &n1).await, 1);
        assert!(r.heartbeat(&n1, "a", all).await.unwrap());
        assert_eq!(pending(&r, &n1).await, 0);
        // Registering again starts from nothing pending.
        r.pick().await.unwrap();
        r.register(info("n1", "a", 1), 3).await.unwrap();
        assert_eq!(pending(&r, &n1).await, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn pending_assignments_expire_after_the_ticket_ttl() {
        let r = Registry::memory(TTL);
        r.register(info("n1", "a", 1), 0).await.unwrap();
        r.register(info("n2", "a", 1), 0).await.unwrap();
        let first = r.pick().await.unwrap().unwrap().node;
        let other = if first.as_str() == "n1" {
            nid("n2")
        } else {
            nid("n1")
        };
        tokio::time::advance(TTL - Duration::from_millis(1)).await;
        r.heartbeat(&first, "a", Beat::load(0, false))
            .await
            .unwrap();
        assert_eq!(
            pending(&r, &first).await,
            1,
            "still within the ticket lifetime"
        );
        assert_eq!(r.pick().await.unwrap().unwrap().node, other);
        tokio::time::advance(Duration::from_millis(1)).await;
        // The ticket of the first login can no longer be used: its heartbeat drops it.
        r.heartbeat(&first, "a", Beat::load(0, false))
            .await
            .unwrap();
        assert_eq!(pending(&r, &first).await, 0);
        assert_eq!(pending(&r, &other).await, 1);
        assert_eq!(r.pick().await.unwrap().unwrap().node, first);
    }
}
