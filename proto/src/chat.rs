//! Chat frames (contract section 6): the client's `Message` (pager mode, to a user or a room),
//! the delivered `Message`, and the node's `Accepted` and `Delivered` answers.

use serde::{Deserialize, Serialize};

use crate::ids::{RoomId, UserId};
use crate::roap::Extra;

/// Longest message id, in bytes.
pub const MAX_MESSAGE_ID_BYTES: usize = 64;

/// A message id: 1 to 64 bytes, no whitespace or control characters, unique per sender.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MessageId(String);

/// Why a message id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageIdError {
    #[error("message id must be 1 to {MAX_MESSAGE_ID_BYTES} bytes (got {0})")]
    Length(usize),
    #[error("message id must not contain whitespace or control characters")]
    BadChar,
}

impl MessageId {
    pub fn new(s: impl Into<String>) -> Result<MessageId, MessageIdError> {
        let s = s.into();
        if s.is_empty() || s.len() > MAX_MESSAGE_ID_BYTES {
            return Err(MessageIdError::Length(s.len()));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(MessageIdError::BadChar);
        }
        Ok(MessageId(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MessageId {
    type Error = MessageIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        MessageId::new(s)
    }
}

impl From<MessageId> for String {
    fn from(id: MessageId) -> String {
        id.0
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A chat message: as a client sends it (`to` or `room`, `id`, `body`), and as the recipient
/// gets it (`from`, `ts`, and `delayed` when it comes from the mailbox at connect).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<RoomId>,
    pub id: MessageId,
    pub body: String,
    #[serde(
        rename = "contentType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delayed: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The node's answer to the sender: a message to a user is stored (and maybe pushed at once:
/// `to`, `stored`), a room message was handed to the room's members (`room`, `recipients`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub id: MessageId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<RoomId>,
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<bool>,
    /// Room messages: how many other members' sessions it was queued on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<u64>,
    /// Fields added on the way (the session's frame number `n`), kept when a client parses it.
    #[serde(flatten, default)]
    pub extra: Extra,
}

/// Tells the sender that the recipient (`from`) acknowledged the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    pub id: MessageId,
    pub from: UserId,
    /// Fields added on the way (the session's frame number `n`), kept when a client parses it.
    #[serde(flatten, default)]
    pub extra: Extra,
}

/// Adds `"delayed":true` to the node's own serialisation of a delivered message (a compact
/// object without `delayed`). `None` if `frame` is not an object's text.
pub fn stamp_delayed(frame: &str) -> Option<String> {
    crate::roap::append_field(frame, "delayed", true)
}

/// Whether `frame` is the node's serialisation of a chat `Message` (the tag comes first).
pub fn is_chat_frame(frame: &str) -> bool {
    frame.starts_with(r#"{"type":"Message","#)
}

/// Whether `frame` is the node's serialisation of a room `Message`: `from` (a JSON string)
/// comes right after the tag, then `room` (a message to a user has `to` there). No parse: the
/// `from` string is skipped with its escapes.
pub fn is_room_frame(frame: &str) -> bool {
    let Some(rest) = frame.strip_prefix(r#"{"type":"Message","from":""#) else {
        return false;
    };
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '"' => return rest[i + 1..].starts_with(r#","room":"#),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids() {
        assert!(MessageId::new("m-1").is_ok());
        assert!(MessageId::new("").is_err());
        assert!(MessageId::new("a b").is_err());
        assert!(MessageId::new("a\u{1}").is_err());
        assert!(MessageId::new("x".repeat(64)).is_ok());
        assert!(MessageId::new("x".repeat(65)).is_err());
    }

    #[test]
    fn room_frames_are_told_apart_without_a_parse() {
        let msg = |to: Option<&str>, room: Option<&str>, from: &str| {
            crate::Message::Message(ChatMessage {
                from: Some(UserId::new(from).unwrap()),
                to: to.map(|t| UserId::new(t).unwrap()),
                room: room.map(|r| RoomId::new(r).unwrap()),
                id: MessageId::new("m-1").unwrap(),
                body: r#","room":"x"#.into(),
                content_type: None,
                ts: Some(1),
                delayed: None,
                extra: Default::default(),
            })
            .to_json()
        };
        let room = msg(None, Some("r1"), "alice");
        assert!(is_chat_frame(&room) && is_room_frame(&room));
        let odd = msg(None, Some("r1"), r#"a\"b",x"#);
        assert!(is_room_frame(&odd), "{odd}");
        for f in [
            msg(Some("bob"), None, "alice"),
            msg(Some("bob"), None, r#"a","room":"#),
            r#"{"type":"Ack","n":1}"#.to_owned(),
        ] {
            assert!(!is_room_frame(&f), "{f}");
        }
    }

    #[test]
    fn delayed_stamp() {
        assert_eq!(
            stamp_delayed(r#"{"type":"Message","id":"a"}"#).unwrap(),
            r#"{"type":"Message","id":"a","delayed":true}"#
        );
        assert!(is_chat_frame(r#"{"type":"Message","id":"a"}"#));
        assert!(!is_chat_frame(r#"{"type":"Offer"}"#));
    }
}
