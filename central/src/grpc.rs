//! The `Registry` gRPC service: signal nodes register, heartbeat and deregister here.

use std::time::Duration;

use signal_proto::registry::registry_server::Registry as RegistryRpc;
use signal_proto::registry::{
    DeregisterRequest, DeregisterResponse, HeartbeatRequest, HeartbeatResponse, NodeInfo as PbNode,
    RegisterRequest, RegisterResponse,
};
use signal_proto::NodeId;
use tonic::{Request, Response, Status};

use crate::error::RpcError;
use crate::liveness::ProbeNow;
use crate::registry::{Beat, NodeInfo, NodeRecord, Registered, Registry};

/// Longest URL or instance string accepted from a node.
const MAX_FIELD_BYTES: usize = 2048;

/// The registry service handed to tonic.
#[derive(Clone, Debug)]
pub struct RegistryService {
    registry: Registry,
    heartbeat_interval: Duration,
    node_timeout: Duration,
    probe_now: ProbeNow,
}

impl RegistryService {
    /// `probe_now` wakes the prober at each registration: a new node is handed out only
    /// after it answered a probe.
    pub fn new(
        registry: Registry,
        heartbeat_interval: Duration,
        node_timeout: Duration,
        probe_now: ProbeNow,
    ) -> Self {
        Self {
            registry,
            heartbeat_interval,
            node_timeout,
            probe_now,
        }
    }

    /// The nodes other nodes may route to: registered and answering probes (draining ones
    /// included, they still hold connections).
    async fn peers(&self) -> Result<Vec<PbNode>, RpcError> {
        Ok(self
            .registry
            .list()
            .await?
            .into_iter()
            .filter(|r| !r.down)
            .map(to_pb)
            .collect())
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn to_pb(r: NodeRecord) -> PbNode {
    PbNode {
        node_id: r.info.id.into_string(),
        instance: r.info.instance,
        ws_url: r.info.ws_url,
        grpc_url: r.info.grpc_url,
        weight: r.info.weight,
    }
}

fn node_id(s: &str) -> Result<NodeId, RpcError> {
    NodeId::new(s).map_err(|e| RpcError::Invalid(format!("node_id {e}")))
}

fn instance(s: &str) -> Result<(), RpcError> {
    if s.is_empty() || s.len() > MAX_FIELD_BYTES {
        return Err(RpcError::Invalid(
            "instance must be 1 to 2048 bytes".to_owned(),
        ));
    }
    Ok(())
}

fn url(field: &str, s: &str, schemes: &[&str]) -> Result<(), RpcError> {
    let ok = s.len() <= MAX_FIELD_BYTES
        && schemes.iter().any(|scheme| {
            s.strip_prefix(scheme)
                .and_then(|rest| rest.strip_prefix("://"))
                .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        })
        && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(RpcError::Invalid(format!(
            "{field} {s:?} must be an absolute {} URL",
            schemes.join("/")
        )))
    }
}

/// Checks what a node sent about itself.
pub fn node_info(pb: Option<PbNode>) -> Result<NodeInfo, RpcError> {
    let pb = pb.ok_or_else(|| RpcError::Invalid("missing node".into()))?;
    let id = node_id(&pb.node_id)?;
    instance(&pb.instance)?;
    url("ws_url", &pb.ws_url, &["ws", "wss"])?;
    url("grpc_url", &pb.grpc_url, &["http", "https"])?;
    if pb.weight == 0 {
        return Err(RpcError::Invalid("weight must be at least 1".into()));
    }
    Ok(NodeInfo {
        id,
        instance: pb.instance,
        ws_url: pb.ws_url,
        grpc_url: pb.grpc_url,
        weight: pb.weight,
    })
}

impl RegistryService {
    async fn register(&self, req: RegisterRequest) -> Result<RegisterResponse, RpcError> {
        let info = node_info(req.node)?;
        let (id, inst, ws, weight) = (
            info.id.clone(),
            info.instance.clone(),
            info.ws_url.clone(),
            info.weight,
        );
        // Not handed out before it answered a probe (its URLs are only claims), which the
        // prober makes at once.
        let outcome = self
            .registry
            .register_unprobed(info, req.connections)
            .await?;
        self.probe_now.wake();
        match &outcome {
            Registered::New => {
                tracing::info!(node = %id, instance = %inst, url = %ws, weight, "node registered");
                crate::telemetry::registered("new");
            }
            Registered::Again => {
                tracing::info!(node = %id, instance = %inst, "node registered again");
                crate::telemetry::registered("again");
            }
            Registered::Replaced { old_instance } => {
                tracing::info!(node = %id, instance = %inst, old_instance = %old_instance, "node restarted: new instance replaces the old one");
                crate::telemetry::registered("replaced");
            }
        }
        Ok(RegisterResponse {
            heartbeat_interval_ms: ms(self.heartbeat_interval),
            node_timeout_ms: ms(self.node_timeout),
            peers: self.peers().await?,
        })
    }

    async fn heartbeat(&self, req: HeartbeatRequest) -> Result<HeartbeatResponse, RpcError> {
        let id = node_id(&req.node_id)?;
        instance(&req.instance)?;
        let beat = Beat {
            connections: req.connections,
            accepted: req.accepted,
            draining: req.draining,
        };
        let known = self.registry.heartbeat(&id, &req.instance, beat).await?;
        if !known {
            tracing::info!(node = %id, instance = %req.instance, "heartbeat from an unknown node: asking it to register");
        }
        Ok(HeartbeatResponse {
            known,
            peers: self.peers().await?,
            heartbeat_interval_ms: ms(self.heartbeat_interval),
        })
    }

    async fn deregister(&self, req: DeregisterRequest) -> Result<DeregisterResponse, RpcError> {
        let id = node_id(&req.node_id)?;
        instance(&req.instance)?;
        if self.registry.deregister(&id, &req.instance).await? {
            tracing::info!(node = %id, instance = %req.instance, "node deregistered");
        }
        Ok(DeregisterResponse {})
    }
}

fn answer<T>(what: &str, r: Result<T, RpcError>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(|e| {
        tracing::warn!(rpc = what, error = %e, "registry rpc refused");
        Status::from(e)
    })
}

#[tonic::async_trait]
impl RegistryRpc for RegistryService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        answer(
            "Register",
            RegistryService::register(self, request.into_inner()).await,
        )
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        answer(
            "Heartbeat",
            RegistryService::heartbeat(self, request.into_inner()).await,
        )
    }

    async fn deregister(
        &self,
        request: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        answer(
            "Deregister",
            RegistryService::deregister(self, request.into_inner()).await,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pb(ws: &str, grpc: &str, weight: u32) -> Option<PbNode> {
        Some(PbNode {
            node_id: "n1".into(),
            instance: "i".into(),
            ws_url: ws.into(),
            grpc_url: grpc.into(),
            weight,
        })
    }

    #[test]
    fn node_info_checks() {
        assert!(node_info(pb("ws://h:1/ws", "http://h:2", 1)).is_ok());
        assert!(node_info(pb("wss://h/ws", "https://h", 3)).is_ok());
        assert!(node_info(None).is_err());
        assert!(node_info(pb("http://h/ws", "http://h:2", 1)).is_err());
        assert!(node_info(pb("ws://h/ws", "h:2", 1)).is_err());
        assert!(node_info(pb("ws:///ws", "http://h:2", 1)).is_err());
        assert!(node_info(pb("ws://h/ws", "http://h:2", 0)).is_err());
        let mut bad_id = pb("ws://h/ws", "http://h:2", 1);
        if let Some(n) = bad_id.as_mut() {
            n.node_id = "a b".into();
        }
        assert!(node_info(bad_id).is_err());
    }
}
