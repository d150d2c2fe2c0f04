//! Which registered nodes are alive: eviction of nodes that stopped heartbeating, and the
//! active health probe (central calls every node's `Relay.Probe`; a node that stays registered
//! but does not answer for the node timeout is marked down and not handed out until it
//! answers again). A node that registers is probed at once and handed out only after its
//! first successful probe. Probes carry the internal gRPC credentials.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use signal_proto::grpc_auth::{AuthChannel, Signer};
use signal_proto::grpc_tls::GrpcTls;
use signal_proto::relay::relay_client::RelayClient;
use signal_proto::relay::ProbeRequest;
use signal_proto::NodeId;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::registry::{NodeRecord, Registry, StoreHealth};

/// How often the eviction sweep runs for a given node timeout.
pub fn sweep_interval(node_timeout: Duration) -> Duration {
    (node_timeout / 10).clamp(Duration::from_millis(20), Duration::from_millis(500))
}

/// Evicts silent nodes and refreshes the node gauges until `stop` fires.
pub async fn sweep(registry: Registry, node_timeout: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(sweep_interval(node_timeout));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match registry.evict(node_timeout).await {
            Ok(gone) if !gone.is_empty() => {
                for id in &gone {
                    tracing::warn!(node = %id, timeout_ms = node_timeout.as_millis() as u64, "node evicted: no heartbeat within the node timeout");
                }
                crate::telemetry::evicted(gone.len());
            }
            Ok(_) => {}
            // Logged once per distinct error by the registry; retried next tick.
            Err(_) => {}
        }
        if let Ok(nodes) = registry.list().await {
            let down = nodes.iter().filter(|n| n.down).count();
            let draining = nodes.iter().filter(|n| !n.down && n.draining).count();
            crate::telemetry::nodes(nodes.len() - down - draining, draining, down);
        }
        crate::telemetry::registry_up(
            !matches!(registry.health(), StoreHealth::RedisDown(_)),
            registry.redis_mode(),
        );
    }
}

/// Wakes the prober before its next tick (a node registered). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ProbeNow(Arc<Notify>);

impl ProbeNow {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// How the prober runs.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    pub interval: Duration,
    pub node_timeout: Duration,
    /// Signs the probes (the nodes refuse unsigned calls).
    pub signer: Signer,
    /// Probe before the next tick when woken.
    pub now: ProbeNow,
    /// Mutual TLS towards `https://` node URLs.
    pub tls: Option<GrpcTls>,
}

type ProbeClient = RelayClient<AuthChannel<Channel>>;

/// Probe state of one node instance as seen by this replica.
struct Probed {
    client: ProbeClient,
    grpc_url: String,
    last_ok: Instant,
    /// Answered a probe at least once.
    proven: bool,
    /// The first failed probe of a node not yet proven was logged.
    warned: bool,
}

/// Probes every registered node every `interval` (and at once when woken) until `stop` fires.
pub async fn probe(registry: Registry, cfg: ProbeConfig, stop: CancellationToken) {
    let ProbeConfig {
        interval,
        node_timeout,
        signer,
        now: wake,
        tls,
    } = cfg;
    let mut seen: HashMap<(NodeId, String), Probed> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A probe may take up to the interval (bounded to keep the loop lively).
    let probe_timeout = interval.clamp(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            _ = wake.0.notified() => {}
        }
        let Ok(nodes) = registry.list().await else {
            continue;
        };
        let now = Instant::now();
        // Forget instances that left the registry.
        seen.retain(|(id, inst), _| {
            nodes
                .iter()
                .any(|n| &n.info.id == id && &n.info.instance == inst)
        });
        let mut probes = Vec::new();
        for n in &nodes {
            let key = (n.info.id.clone(), n.info.instance.clone());
            let entry = match seen.get_mut(&key) {
                Some(p) if p.grpc_url == n.info.grpc_url => p,
                _ => {
                    let Some(client) =
                        client_for(&n.info.grpc_url, probe_timeout, &signer, tls.as_ref())
                    else {
                        continue;
                    };
                    seen.insert(
                        key.clone(),
                        Probed {
                            client,
                            grpc_url: n.info.grpc_url.clone(),
                            // A new node gets the whole timeout to answer its first probe.
                            last_ok: now,
                            proven: false,
                            warned: false,
                        },
                    );
                    match seen.get_mut(&key) {
                        Some(p) => p,
                        None => continue,
                    }
                }
            };
            let mut client = entry.client.clone();
            let record = n.clone();
            probes.push(async move {
                let r = tokio::time::timeout(probe_timeout, client.probe(ProbeRequest {})).await;
                let ok = match r {
                    Ok(Ok(resp)) => {
                        let p = resp.into_inner();
                        p.node_id == record.info.id.as_str() && p.instance == record.info.instance
                    }
                    _ => false,
                };
                (record, ok)
            });
        }
        let results = futures::future::join_all(probes).await;
        for (record, ok) in results {
            let key = (record.info.id.clone(), record.info.instance.clone());
            let Some(p) = seen.get_mut(&key) else {
                continue;
            };
            if ok {
                p.last_ok = Instant::now();
                let first = !std::mem::replace(&mut p.proven, true);
                if record.down {
                    mark(&registry, &record, false, first).await;
                }
            } else {
                crate::telemetry::probe_failed(record.info.id.as_str());
                if !record.down && p.last_ok.elapsed() > node_timeout {
                    mark(&registry, &record, true, false).await;
                } else if record.down && !p.proven && !std::mem::replace(&mut p.warned, true) {
                    tracing::warn!(node = %record.info.id, url = %record.info.grpc_url, "registered node does not answer its first probe (signed with the cluster secret): not handed out");
                }
            }
        }
    }
}

async fn mark(registry: &Registry, record: &NodeRecord, down: bool, first: bool) {
    match registry
        .set_down(&record.info.id, &record.info.instance, down)
        .await
    {
        Ok(true) if first => {
            tracing::info!(node = %record.info.id, "node answered its first probe: handed out from now on")
        }
        Ok(true) if down => {
            tracing::warn!(node = %record.info.id, url = %record.info.grpc_url, "node does not answer probes: marked down, not handed out")
        }
        Ok(true) => {
            tracing::info!(node = %record.info.id, "node answers probes again: back in rotation")
        }
        Ok(false) | Err(_) => {}
    }
}

fn client_for(
    url: &str,
    timeout: Duration,
    signer: &Signer,
    tls: Option<&GrpcTls>,
) -> Option<ProbeClient> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .and_then(|e| signal_proto::grpc_tls::endpoint(e, tls));
    match endpoint {
        Ok(e) => Some(RelayClient::new(AuthChannel::new(
            e.connect_timeout(timeout).timeout(timeout).connect_lazy(),
            signer.clone(),
        ))),
        Err(e) => {
            tracing::warn!(url, error = %e, "cannot probe node: bad grpc url");
            None
        }
    }
}
