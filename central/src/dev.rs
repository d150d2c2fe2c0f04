//! The all-in-one local cluster: central plus N in-process signal nodes on loopback, sharing
//! one in-memory directory, with dev login and real gRPC between all of them. Each node runs on
//! its own runtime (its own threads), as a node process would: a node saturated with work
//! does not queue the other node's tasks, and central's, behind its own.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use signal_node::mailbox::MailboxStore;
use signal_node::origin::AllowedOrigins;
use signal_node::{Directory, DirectoryConfig, NodeError};
use signal_proto::NodeId;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::DevError;
use crate::registry::Registry;
use crate::{CentralError, Config, Listeners};

/// How long `start` waits for every node to register.
const REGISTER_WAIT: Duration = Duration::from_secs(10);
/// How long `shutdown` waits for a node or central to stop.
const STOP_WAIT: Duration = Duration::from_secs(30);

/// What to start.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Central's configuration (its `http_listen`/`grpc_listen` are where it binds; port 0
    /// picks a free port). Dev login is on unless `jwt_secret` is set.
    pub central: Config,
    /// Number of signal nodes (ids `node-1`, `node-2`, ...).
    pub nodes: usize,
    /// Capacity weight of each node (missing entries are 1).
    pub weights: Vec<u32>,
    /// Drain window of the nodes.
    pub node_drain: Duration,
    /// Where the nodes' HTTP (WebSocket) listeners bind; port 0 for each.
    pub node_host: std::net::IpAddr,
    /// Metrics handle for central and the nodes (`/metrics`).
    pub metrics: Option<PrometheusHandle>,
}

impl Default for DevOptions {
    fn default() -> Self {
        Self {
            central: Config::dev(),
            nodes: 2,
            weights: Vec::new(),
            node_drain: Duration::from_secs(2),
            node_host: std::net::IpAddr::from([127, 0, 0, 1]),
            metrics: None,
        }
    }
}

struct DevNode {
    id: NodeId,
    ws_url: String,
    grpc_url: String,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), NodeError>>>,
}

/// The dev cluster's drain triggers, shared with central's HTTP API so that
/// `POST /v1/dev/nodes/{id}/drain` (served only by the dev cluster's central) and
/// [`DevCluster::drain_node`] do the same thing. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct DevNodes {
    nodes: Arc<Mutex<Vec<(NodeId, CancellationToken)>>>,
}

impl DevNodes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(NodeId, CancellationToken)>> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, id: NodeId, stop: CancellationToken) {
        self.lock().push((id, stop));
    }

    /// The restarted node `i` answers to `stop` now.
    fn replace(&self, i: usize, stop: CancellationToken) {
        if let Some(entry) = self.lock().get_mut(i) {
            entry.1 = stop;
        }
    }

    /// Starts the graceful drain of node `i` (in start order). `false` if there is no such
    /// node. Draining a node twice is harmless.
    pub fn drain_index(&self, i: usize) -> bool {
        let nodes = self.lock();
        match nodes.get(i) {
            Some((id, stop)) => {
                if !stop.is_cancelled() {
                    tracing::info!(node = %id, "dev cluster: draining node on request");
                }
                stop.cancel();
                true
            }
            None => false,
        }
    }

    /// Starts the graceful drain of the node named `id`.
    pub fn drain(&self, id: &str) -> Result<(), DevError> {
        let i = self
            .lock()
            .iter()
            .position(|(n, _)| n.as_str() == id)
            .ok_or_else(|| DevError::UnknownNode(id.to_owned()))?;
        self.drain_index(i);
        Ok(())
    }
}

/// A running dev cluster. Stop it with [`DevCluster::shutdown`]; dropping it stops the
/// servers' tasks without waiting.
pub struct DevCluster {
    http: SocketAddr,
    grpc: SocketAddr,
    registry: Registry,
    stop: CancellationToken,
    central: Option<JoinHandle<Result<(), CentralError>>>,
    nodes: Vec<DevNode>,
    control: DevNodes,
    /// Cancelled when the whole cluster stops (see `signal_node::Config::handover_stop`).
    handover_stop: CancellationToken,
    /// What starting a node takes (kept for [`DevCluster::restart_node`]).
    node_base: NodeBase,
}

/// The parts of the nodes' configuration shared by all of them.
#[derive(Clone)]
struct NodeBase {
    opts: DevOptions,
    grpc: SocketAddr,
    secret: String,
    metrics: Option<PrometheusHandle>,
    directory: Directory,
    /// One mailbox for every node (as Redis would be): a message stored through one node is
    /// pushed at connect by another.
    mailbox: MailboxStore,
    /// One presence store for every node of the dev cluster.
    presence: signal_node::presence::store::PresenceStore,
    /// Room membership shared by the in-process nodes.
    rooms: signal_node::rooms::RoomStore,
    allowed_origins: AllowedOrigins,
    handover_stop: CancellationToken,
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, CentralError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| CentralError::Config(format!("{what} {addr}: cannot listen: {e}")))
}

impl DevCluster {
    /// Starts central and the nodes and waits until every node has registered and answered
    /// central's first probe (so that logins find them).
    pub async fn start(opts: DevOptions) -> Result<DevCluster, CentralError> {
        let mut config = opts.central.clone();
        if config.metrics.is_none() {
            config.metrics = opts.metrics.clone();
        }
        if config.redis.is_some() {
            return Err(CentralError::Config(
                "the dev cluster keeps its registry in memory: drop --redis-url".into(),
            ));
        }
        let listeners = Listeners {
            http: bind(config.http_listen, "--http-listen").await?,
            grpc: bind(config.grpc_listen, "--grpc-listen").await?,
        };
        let http = listeners.http.local_addr()?;
        let grpc = listeners.grpc.local_addr()?;
        let registry = Registry::memory(config.ticket_ttl);
        let stop = CancellationToken::new();
        let control = DevNodes::default();
        let directory = Directory::memory();
        let presence = signal_node::presence::store::PresenceStore::memory();
        let central = tokio::spawn(crate::serve_dev(
            config.clone(),
            listeners,
            registry.clone(),
            control.clone(),
            (directory.clone(), presence.clone()),
            stop.clone().cancelled_owned(),
        ));
        let handover_stop = CancellationToken::new();
        let node_base = NodeBase {
            opts: opts.clone(),
            grpc,
            secret: config.secret.clone(),
            metrics: config.metrics.clone(),
            directory,
            mailbox: MailboxStore::memory(),
            presence,
            rooms: signal_node::rooms::RoomStore::memory(),
            allowed_origins: config.allowed_origins.clone(),
            handover_stop: handover_stop.clone(),
        };
        let mut cluster = DevCluster {
            http,
            grpc,
            registry,
            stop,
            central: Some(central),
            nodes: Vec::new(),
            control: control.clone(),
            handover_stop: handover_stop.clone(),
            node_base,
        };
        for i in 0..opts.nodes {
            let node = cluster.node_base.start(i).await?;
            control.add(node.id.clone(), node.stop.clone());
            cluster.nodes.push(node);
        }
        cluster.wait_registered().await?;
        tracing::info!(central = %cluster.central_url(), nodes = ?cluster.node_ws_urls(), "dev cluster up");
        Ok(cluster)
    }

    /// Restarts node `i` as a rolling restart does: drains it (its clients get 1012 and
    /// resume elsewhere), waits until it has stopped (it serves the takeover of its sessions
    /// until they are resumed or their window ends), starts it again with the same id (on new
    /// ports) and waits until it has registered.
    pub async fn restart_node(&mut self, i: usize) -> Result<(), CentralError> {
        let node = self
            .nodes
            .get_mut(i)
            .ok_or_else(|| CentralError::Config(format!("there is no node {i}")))?;
        node.stop.cancel();
        if let Some(task) = node.task.take() {
            match tokio::time::timeout(STOP_WAIT, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    tracing::warn!(node = %node.id, error = %e, "node stopped with an error")
                }
                Ok(Err(e)) => return Err(CentralError::Task(e.to_string())),
                Err(_) => {
                    return Err(CentralError::Node {
                        node: node.id.to_string(),
                        message: "did not stop in time".into(),
                    })
                }
            }
        }
        let fresh = self.node_base.start(i).await?;
        self.control.replace(i, fresh.stop.clone());
        self.nodes[i] = fresh;
        self.wait_registered().await
    }

    async fn wait_registered(&mut self) -> Result<(), CentralError> {
        let deadline = tokio::time::Instant::now() + REGISTER_WAIT;
        loop {
            let listed = self.registry.list().await?;
            if self
                .nodes
                .iter()
                .all(|n| listed.iter().any(|r| r.info.id == n.id && !r.down))
            {
                return Ok(());
            }
            for n in &mut self.nodes {
                if n.task.as_ref().is_some_and(|t| t.is_finished()) {
                    let message = match n.task.take() {
                        Some(t) => match t.await {
                            Ok(Ok(())) => "stopped before registering".to_owned(),
                            Ok(Err(e)) => e.to_string(),
                            Err(e) => e.to_string(),
                        },
                        None => "stopped".to_owned(),
                    };
                    return Err(CentralError::Node {
                        node: n.id.to_string(),
                        message,
                    });
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(CentralError::Task(format!(
                    "the nodes did not register with central within {REGISTER_WAIT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Central's HTTP base URL, e.g. `http://127.0.0.1:8080`.
    pub fn central_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Central's gRPC URL (what the nodes register with).
    pub fn central_grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The nodes' WebSocket URLs, in node order.
    pub fn node_ws_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.ws_url.clone()).collect()
    }

    /// The nodes' gRPC URLs, in node order.
    pub fn node_grpc_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.grpc_url.clone()).collect()
    }

    /// The node ids, in node order (`node-1`, ...).
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id.clone()).collect()
    }

    /// Central's registry (in memory).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Starts node `i`'s graceful drain: it deregisters, its clients get close 1012 and go
    /// back to central. `false` if there is no node `i`. Central's dev-only
    /// `POST /v1/dev/nodes/{id}/drain` does the same.
    pub fn drain_node(&self, i: usize) -> bool {
        self.control.drain_index(i)
    }

    /// Stops the nodes (graceful drain), then central.
    pub async fn shutdown(mut self) -> Result<(), CentralError> {
        // The whole cluster stops: no node is left to take kept sessions over.
        self.handover_stop.cancel();
        for n in &self.nodes {
            n.stop.cancel();
        }
        let mut result = Ok(());
        for n in &mut self.nodes {
            if let Some(task) = n.task.take() {
                match tokio::time::timeout(STOP_WAIT, task).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => {
                        result = Err(CentralError::Node {
                            node: n.id.to_string(),
                            message: e.to_string(),
                        })
                    }
                    Ok(Err(e)) => result = Err(CentralError::Task(e.to_string())),
                    Err(_) => {
                        result = Err(CentralError::Node {
                            node: n.id.to_string(),
                            message: "did not stop in time".into(),
                        })
                    }
                }
            }
        }
        self.stop.cancel();
        if let Some(task) = self.central.take() {
            match tokio::time::timeout(STOP_WAIT, task).await {
                Ok(Ok(r)) => r?,
                Ok(Err(e)) => return Err(CentralError::Task(e.to_string())),
                Err(_) => return Err(CentralError::Task("central did not stop in time".into())),
            }
        }
        result
    }
}

impl NodeBase {
    /// Starts node `i` (`node-{i+1}`) on new ports.
    async fn start(&self, i: usize) -> Result<DevNode, CentralError> {
        let opts = &self.opts;
        let id = format!("node-{}", i + 1);
        let node_id = NodeId::new(id.clone())
            .map_err(|e| CentralError::Config(format!("node id {id:?} {e}")))?;
        let mut nc = signal_node::Config::dev(&id);
        nc.central = Some(format!("http://{}", self.grpc));
        nc.directory = DirectoryConfig::Memory(self.directory.clone());
        nc.mailbox_store = Some(self.mailbox.clone());
        nc.presence_store = Some(self.presence.clone());
        nc.room_store = Some(self.rooms.clone());
        nc.secret = Some(self.secret.clone());
        nc.dev_auth = true;
        nc.weight = opts.weights.get(i).copied().unwrap_or(1).max(1);
        nc.drain = opts.node_drain;
        nc.allowed_origins = self.allowed_origins.clone();
        nc.handover_stop = Some(self.handover_stop.clone());
        nc.metrics = self.metrics.clone();
        let node_listeners = signal_node::Listeners {
            http: bind(SocketAddr::new(opts.node_host, 0), "node http").await?,
            grpc: bind(SocketAddr::new(opts.node_host, 0), "node grpc").await?,
        };
        let ws_url = format!("ws://{}/ws", node_listeners.http.local_addr()?);
        let grpc_url = format!("http://{}", node_listeners.grpc.local_addr()?);
        let stop = CancellationToken::new();
        let task = run_on_own_runtime(&id, nc, node_listeners, stop.clone())?;
        Ok(DevNode {
            id: node_id,
            ws_url,
            grpc_url,
            stop,
            task: Some(task),
        })
    }
}

/// Runs one node on a runtime of its own, on its own threads (as many workers as the machine
/// has cores, as a node process would get); the returned task ends with the node.
fn run_on_own_runtime(
    id: &str,
    config: signal_node::Config,
    listeners: signal_node::Listeners,
    stop: CancellationToken,
) -> Result<JoinHandle<Result<(), NodeError>>, CentralError> {
    // The sockets move to the node's runtime (their readiness is its I/O driver's).
    let http = listeners.http.into_std()?;
    let grpc = listeners.grpc.into_std()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(format!("{id}-worker"))
        .build()?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(id.to_owned())
        .spawn(move || {
            let result = runtime.block_on(async move {
                let listeners = signal_node::Listeners {
                    http: TcpListener::from_std(http)?,
                    grpc: TcpListener::from_std(grpc)?,
                };
                signal_node::run(config, listeners, stop.cancelled_owned()).await
            });
            // What the node left running (a takeover in flight) gets a moment, not forever.
            runtime.shutdown_timeout(Duration::from_secs(1));
            let _ = done_tx.send(result);
        })?;
    Ok(tokio::spawn(async move {
        done_rx.await.unwrap_or_else(|_| {
            Err(NodeError::Serve {
                server: "node runtime",
                reason: "its thread ended without a result".into(),
            })
        })
    }))
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        self.handover_stop.cancel();
        for n in &self.nodes {
            n.stop.cancel();
        }
        self.stop.cancel();
    }
}
