//! The `Relay` gRPC service other nodes call: deliver a frame into the local table, kick a
//! replaced connection, hand a session over to the node it resumed on, probe; and the two
//! calls of central's server API: submit a chat message, disconnect a user.

use signal_proto::relay::relay_server::Relay;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use signal_proto::relay::{
    DeliverAcks, DeliverBatch, DeliverRequest, DeliverResponse, DeliverStatus, DisconnectRequest,
    DisconnectResponse, KickRequest, KickResponse, NotifyRequest, NotifyResponse, ProbeRequest,
    ProbeResponse, RoomEventRequest, RoomEventResponse, RoomMessageRequest, RoomMessageResponse,
    SubmitRequest, SubmitResponse, SubmitStatus, TakeSessionRequest, TakeSessionResponse,
};
use signal_proto::{ChatMessage, ErrorType, MessageId, UserId};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::error::RelayError;
use crate::mailbox::EntryId;
use crate::mailbox::Refused;
use crate::node::Node;
use crate::router::Router;
use crate::session::{Flushes, Origin};

/// The node's side of node-to-node relay.
pub struct RelayService {
    node: Node,
    /// Ends the delivery streams when the node stops (the server waits for open streams).
    stop: CancellationToken,
}

impl RelayService {
    pub fn new(node: Node, stop: CancellationToken) -> Self {
        RelayService { node, stop }
    }
}

/// Delivers one forwarded frame into the local table.
fn deliver_one(
    node: &Node,
    req: DeliverRequest,
    flushes: Option<&mut Flushes>,
) -> Result<DeliverStatus, RelayError> {
    let to = UserId::new(req.to)?;
    let origin = match (UserId::new(req.from), EntryId::parse(&req.mail_entry)) {
        (Ok(sender), _) => Origin::roap(sender, req.session_id),
        (Err(_), Some(e)) => Origin::Mail(e),
        (Err(_), None) => Origin::Node,
    };
    let status = node.deliver_local(&to, &req.frame, req.expect.as_ref(), origin, flushes);
    if status == DeliverStatus::Delivered {
        metrics::counter!("signal_grpc_delivered_total").increment(1);
    }
    Ok(status)
}

#[tonic::async_trait]
impl Relay for RelayService {
    async fn deliver(
        &self,
        request: Request<DeliverRequest>,
    ) -> Result<Response<DeliverResponse>, Status> {
        let status = deliver_one(&self.node, request.into_inner(), None)?;
        Ok(Response::new(DeliverResponse {
            status: status as i32,
        }))
    }

    type DeliverStreamStream =
        Pin<Box<dyn Stream<Item = Result<DeliverAcks, Status>> + Send + 'static>>;

    async fn deliver_stream(
        &self,
        request: Request<Streaming<DeliverBatch>>,
    ) -> Result<Response<Self::DeliverStreamStream>, Status> {
        let node = self.node.clone();
        let acks = request
            .into_inner()
            .take_until(self.stop.clone().cancelled_owned())
            .map(move |batch| {
                let batch = batch?;
                // The recipients' sockets are written once the whole batch is queued, by this
                // task (see `outlet`), before the answer goes back.
                let mut flushes = Flushes::default();
                let statuses = batch
                    .frames
                    .into_iter()
                    .map(|req| match deliver_one(&node, req, Some(&mut flushes)) {
                        Ok(s) => s as i32,
                        Err(e) => {
                            tracing::debug!(error = %e, "invalid forwarded frame");
                            DeliverStatus::Invalid as i32
                        }
                    })
                    .collect();
                Ok(DeliverAcks { statuses })
            });
        Ok(Response::new(Box::pin(acks)))
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
        Ok(Response::new(self.node.hand_over(&req, &user).await))
    }

    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        let req = request.into_inner();
        let refused = |error: ErrorType, description: String| SubmitResponse {
            status: SubmitStatus::Refused as i32,
            ts: 0,
            stored: false,
            error_type: error.as_str().to_owned(),
            description,
        };
        let parsed = (|| {
            let from = UserId::new(req.from).map_err(|e| format!("bad from: {e}"))?;
            let to = UserId::new(req.to).map_err(|e| format!("bad to: {e}"))?;
            let id = MessageId::new(req.id).map_err(|e| format!("bad id: {e}"))?;
            Ok::<_, String>((from, to, id))
        })();
        let (from, to, id) = match parsed {
            Ok(p) => p,
            Err(e) => return Ok(Response::new(refused(ErrorType::BadMessage, e))),
        };
        let msg = ChatMessage {
            from: None,
            to: Some(to),
            room: None,
            id,
            body: req.body,
            content_type: (!req.content_type.is_empty()).then_some(req.content_type),
            ts: None,
            delayed: None,
            extra: Default::default(),
        };
        let mut router = Router::new(self.node.clone());
        let resp = match self.node.mailbox().submit(&mut router, &from, msg).await {
            Ok(a) => SubmitResponse {
                status: SubmitStatus::Accepted as i32,
                ts: a.ts,
                stored: a.stored.unwrap_or(true),
                error_type: String::new(),
                description: String::new(),
            },
            Err(Refused { error, description }) => refused(error, description),
        };
        Ok(Response::new(resp))
    }

    async fn disconnect(
        &self,
        request: Request<DisconnectRequest>,
    ) -> Result<Response<DisconnectResponse>, Status> {
        let req = request.into_inner();
        let user = UserId::new(req.user).map_err(RelayError::from)?;
        let loc = req.location.ok_or(RelayError::MissingLocation)?;
        let ended = self.node.disconnect_local(&user, &loc);
        Ok(Response::new(DisconnectResponse { ended }))
    }

    async fn notify(
        &self,
        request: Request<NotifyRequest>,
    ) -> Result<Response<NotifyResponse>, Status> {
        let req = request.into_inner();
        let unwatched = self.node.presence().notified(req.updates);
        Ok(Response::new(NotifyResponse { unwatched }))
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
