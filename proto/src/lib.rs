//! Wire types of the signaling cluster, shared by every crate: ROAP messages, ids, tickets, the
//! internal gRPC services and their credentials. Frames are parsed once, at the edge, into these types.

pub mod chat;
pub mod grpc_auth;
pub mod grpc_tls;
pub mod ids;
pub mod presence;
pub mod roap;
pub mod rooms;
pub mod ticket;

pub use chat::{Accepted, ChatMessage, Delivered, MessageId};
pub use ids::{IdError, NodeId, RoomId, SessionId, UserId};
pub use presence::{Availability, Note, Presence, SetPresence, Shown, Watch};
pub use roap::{ErrorType, Message, ParseError};

/// Node-to-node relay service (generated).
pub mod relay {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("signal.relay.v1");
}

/// Central's node registry service (generated).
pub mod registry {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("signal.registry.v1");
}
