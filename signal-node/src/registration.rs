//! The node's registration with central: Register (retried with backoff while central is
//! down, never blocking service), Heartbeat every interval central asks for (re-registering
//! when central forgot the node), the live peer set from every answer, one heartbeat at once
//! when the drain starts (central stops handing the node out but keeps listing it to the other
//! nodes while its sessions move), Deregister when the drain is over.
//! Every call carries the internal gRPC credentials of the cluster secret.

use std::time::Duration;

use signal_proto::grpc_auth::{AuthChannel, Signer};
use signal_proto::registry::registry_client::RegistryClient;
use signal_proto::registry::{DeregisterRequest, HeartbeatRequest, NodeInfo, RegisterRequest};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::node::Node;

const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(2000);
const MIN_HEARTBEAT: Duration = Duration::from_millis(50);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

fn interval_of(ms: u64) -> Duration {
    if ms == 0 {
        DEFAULT_HEARTBEAT
    } else {
        Duration::from_millis(ms).max(MIN_HEARTBEAT)
    }
}

/// A peer list stays authoritative this long without a newer one.
fn freshness(interval: Duration, node_timeout: Duration) -> Duration {
    (interval * 3).max(node_timeout)
}

/// Keeps the node registered until `stop`, then deregisters (bounded by a timeout). When
/// `draining` is cancelled, the next heartbeat (saying so) goes out at once.
pub async fn run(
    node: Node,
    central_url: String,
    draining: CancellationToken,
    stop: CancellationToken,
) {
    let endpoint = Endpoint::from_shared(central_url.clone())
        .and_then(|e| signal_proto::grpc_tls::endpoint(e, node.config().grpc_tls.as_ref()));
    let endpoint = match endpoint {
        Ok(e) => e.connect_timeout(Duration::from_secs(1)),
        Err(e) => {
            tracing::error!(url = %central_url, error = %e, "bad central url: not registering");
            node.set_central_status(false, Some(format!("bad central url: {e}")));
            return;
        }
    };
    let mut client = RegistryClient::new(AuthChannel::new(
        endpoint.connect_lazy(),
        Signer::new(node.config().grpc_key()),
    ));
    let info = NodeInfo {
        node_id: node.id().to_string(),
        instance: node.instance().to_owned(),
        ws_url: node.ws_url().to_owned(),
        grpc_url: node.grpc_url().to_owned(),
        weight: node.config().weight,
    };
    let mut evicted = false;
    // Whether the last peer list named this node instance (see the heartbeat below).
    let mut self_listed = true;
    // `node.accepted_total()` as of the last Register or Heartbeat central acknowledged: the
    // next heartbeat reports the increase, so a lost heartbeat loses no counts.
    let mut acked_accepted;
    // Whether central has been sent a heartbeat since the drain began (reset by Register).
    let mut drain_told;
    'register: loop {
        // Register, with backoff while central is down.
        let mut backoff = BACKOFF_MIN;
        let (mut interval, node_timeout) = loop {
            if stop.is_cancelled() {
                break 'register;
            }
            // Read before the connection count: whatever is accepted in between is counted
            // twice (pending and connected) until the next heartbeat, never not at all.
            let accepted_now = node.accepted_total();
            let req = RegisterRequest {
                node: Some(info.clone()),
                connections: node.hub().len() as u64,
            };
            match tokio::time::timeout(CALL_TIMEOUT, client.register(req)).await {
                Ok(Ok(resp)) => {
                    let resp = resp.into_inner();
                    // A registration starts central's pending assignments from nothing.
                    acked_accepted = accepted_now;
                    // Register carries no draining flag: a draining node says so at once.
                    drain_told = false;
                    let interval = interval_of(resp.heartbeat_interval_ms);
                    let node_timeout = Duration::from_millis(resp.node_timeout_ms);
                    let gone = node
                        .peers()
                        .set_live(&resp.peers, freshness(interval, node_timeout));
                    node.presence().live_changed(&node);
                    node.rooms().nodes_departed(&node, gone);
                    node.set_central_status(true, None);
                    metrics::gauge!("signal_central_registered").set(1.0);
                    if std::mem::take(&mut evicted) {
                        // While central did not list this node, other nodes may have removed
                        // our users' directory entries as stale: put back the missing ones.
                        node.request_reassert();
                    }
                    tracing::info!(node = %node.id(), central = %central_url, interval_ms = interval.as_millis() as u64, peers = resp.peers.len(), "registered with central");
                    break (interval, node_timeout);
                }
                Ok(Err(status)) => fail(&node, &central_url, refusal("register", &status)),
                Err(_) => fail(&node, &central_url, "register: timed out".to_owned()),
            }
            tokio::select! {
                _ = stop.cancelled() => break 'register,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        };
        // Heartbeat.
        loop {
            tokio::select! {
                _ = stop.cancelled() => break 'register,
                _ = draining.cancelled(), if !drain_told => {}
                _ = tokio::time::sleep(interval) => {}
            }
            drain_told = draining.is_cancelled();
            // The accepted count first, then the connections (see Register above).
            let accepted_now = node.accepted_total();
            let req = HeartbeatRequest {
                node_id: info.node_id.clone(),
                instance: info.instance.clone(),
                connections: node.hub().len() as u64,
                draining: node.is_draining(),
                accepted: accepted_now.saturating_sub(acked_accepted),
            };
            match tokio::time::timeout(CALL_TIMEOUT, client.heartbeat(req)).await {
                Ok(Ok(resp)) => {
                    let resp = resp.into_inner();
                    if !resp.known {
                        tracing::warn!(node = %node.id(), "central does not know this node: registering again");
                        evicted = true;
                        continue 'register;
                    }
                    acked_accepted = accepted_now;
                    if resp.heartbeat_interval_ms > 0 {
                        interval = interval_of(resp.heartbeat_interval_ms);
                    }
                    let gone = node
                        .peers()
                        .set_live(&resp.peers, freshness(interval, node_timeout));
                    node.presence().live_changed(&node);
                    node.rooms().nodes_departed(&node, gone);
                    // Central leaves a node it cannot probe out of the live set; other nodes
                    // may then remove our users' entries as stale. Once listed again, put the
                    // missing ones back.
                    let listed = resp
                        .peers
                        .iter()
                        .any(|p| p.node_id == info.node_id && p.instance == info.instance);
                    let was_listed = std::mem::replace(&mut self_listed, listed);
                    if listed && !was_listed {
                        node.request_reassert();
                    }
                    if node.central_status().last_error.is_some() {
                        tracing::info!(node = %node.id(), "central reachable again");
                    }
                    node.set_central_status(true, None);
                }
                Ok(Err(status)) => fail(&node, &central_url, refusal("heartbeat", &status)),
                Err(_) => fail(&node, &central_url, "heartbeat: timed out".to_owned()),
            }
        }
    }
    let req = DeregisterRequest {
        node_id: info.node_id.clone(),
        instance: info.instance.clone(),
    };
    match tokio::time::timeout(Duration::from_secs(1), client.deregister(req)).await {
        Ok(Ok(_)) => tracing::info!(node = %node.id(), "deregistered from central"),
        Ok(Err(status)) => {
            tracing::warn!(node = %node.id(), error = %status.message(), "deregister failed")
        }
        Err(_) => tracing::warn!(node = %node.id(), "deregister timed out"),
    }
    metrics::gauge!("signal_central_registered").set(0.0);
}

fn refusal(call: &str, status: &tonic::Status) -> String {
    if status.code() == tonic::Code::Unauthenticated {
        format!(
            "{call}: central refused our credentials ({}): is --secret the one central has?",
            status.message()
        )
    } else {
        format!("{call}: {}", status.message())
    }
}

fn fail(node: &Node, central: &str, error: String) {
    let first = node.central_status().last_error.is_none();
    if first {
        tracing::warn!(node = %node.id(), central, error = %error, "central unreachable: retrying");
    } else {
        tracing::debug!(node = %node.id(), central, error = %error, "central unreachable");
    }
    node.set_central_status(false, Some(error));
}
