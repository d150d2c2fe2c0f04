//! Room frames (contract section 8): the client's `Join` and `Leave`, and the node's `Joined`,
//! `Left`, `MemberJoined` and `MemberLeft`. Room messages are chat `Message`s with `room`.

use serde::{Deserialize, Serialize};

use crate::ids::{RoomId, UserId};

/// `{"type":"Join","room":"r1"}` (client).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    pub room: RoomId,
}

/// `{"type":"Leave","room":"r1"}` (client).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leave {
    pub room: RoomId,
}

/// The answer to a Join: every member, the joiner included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    pub room: RoomId,
    pub members: Vec<UserId>,
}

/// The answer to a Leave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Left {
    pub room: RoomId,
}

/// Tells the other members that `user` joined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberJoined {
    pub room: RoomId,
    pub user: UserId,
}

/// Tells the other members that `user` left (Leave, session end, or its node died).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberLeft {
    pub room: RoomId,
    pub user: UserId,
}
