//! The `Relay` gRPC service other nodes call: deliver a frame into the local table, kick a
//! replaced connection, hand a session over to the node it resumed on, probe.

use signal_proto::relay::relay_server::Relay;
use signal_proto::relay::{
    DeliverRequest, DeliverResponse, DeliverStatus, KickRequest, KickResponse, ProbeRequest,
    ProbeResponse, RoomEventRequest, RoomEventResponse, RoomMessageRequest, RoomMessageResponse,
    TakeSessionRequest, TakeSessionResponse,
};
use signal_proto::UserId;
use tonic::{Request, Response, Status};

use crate::error::RelayError;
use crate::node::Node;
use crate::session::Origin;

/// The node's side of node-to-node relay.
pub struct RelayService {
    node: Node,
}

impl RelayService {
    pub fn new(node: Node) -> Self {
        RelayService { node }
    }
}

#[tonic::async_trait]
impl Relay for RelayService {
    async fn deliver(
        &self,
        request: Request<DeliverRequest>,
    ) -> Result<Response<DeliverResponse>, Status> {
        let req = request.into_inner();
        let to = UserId::new(req.to).map_err(RelayError::from)?;
        let origin = match UserId::new(req.from) {
            Ok(sender) => Origin::Roap {
                sender,
                session_id: req.session_id,
            },
            Err(_) => Origin::Node,
        };
        let status = self
            .node
            .deliver_local(&to, &req.frame, req.expect.as_ref(), origin);
        if status == DeliverStatus::Delivered {
            metrics::counter!("signal_grpc_delivered_total").increment(1);
        }
        Ok(Response::new(DeliverResponse {
            status: status as i32,
        }))
    }

    async fn kick(&self, request: Request<KickRequest>) -> Result<Response<KickResponse>, Status> {
        let req = request.into_inner();
        let user = UserId::new(req.user).map_err(RelayError::from)?;
        let loc = req.location.ok_or(RelayError::MissingLocation)?;
        let closed = self.node.kick_local(&user, &loc);
        Ok(Response::new(KickResponse { closed }))
    }

    async fn take_session(
        &self,
        request: Request<TakeSessionRequest>,
    ) -> Result<Response<TakeSessionResponse>, Status> {
        let req = request.into_inner();
        let user = UserId::new(req.user.as_str()).map_err(RelayError::from)?;
        Ok(Response::new(self.node.hand_over(&req, &user)))
    }

    async fn room_message(
        &self,
        request: Request<RoomMessageRequest>,
    ) -> Result<Response<RoomMessageResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(
            self.node.rooms().on_room_message(&self.node, &req),
        ))
    }

    async fn room_event(
        &self,
        request: Request<RoomEventRequest>,
    ) -> Result<Response<RoomEventResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(
            self.node.rooms().on_room_event(&self.node, &req),
        ))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse {
            node_id: self.node.id().to_string(),
            instance: self.node.instance().to_owned(),
            connections: self.node.hub().len() as u64,
            draining: self.node.is_draining(),
        }))
    }
}
