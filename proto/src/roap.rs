//! ROAP messages as typed serde enums, and the one function that turns a text frame into one.
//!
//! Every message is a JSON object with a `type` tag. Fields are named as in the original ROAP
//! format (`to`, `from`, `sessionID`, `sdp`, `errorType`); unknown extra fields are kept in
//! `extra` and written back untouched when the message is relayed.

use std::fmt::Write as _;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::chat::{Accepted, ChatMessage, Delivered};
use crate::ids::{NodeId, SessionId, UserId};
use crate::presence::{Presence, SetPresence, Watch};
use crate::rooms::{Join, Joined, Leave, Left, MemberJoined, MemberLeft};

mod relayed;
pub use relayed::Relayed;

/// Extra, unknown fields of a message, relayed untouched.
pub type Extra = Map<String, Value>;

/// Fields every relayed ROAP message carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Head {
    pub to: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<UserId>,
    #[serde(rename = "sessionID")]
    pub session_id: SessionId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    #[serde(flatten)]
    pub head: Head,
    pub sdp: String,
    #[serde(
        rename = "tieBreaker",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub tie_breaker: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    #[serde(flatten)]
    pub head: Head,
    pub sdp: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OkMsg {
    #[serde(flatten)]
    pub head: Head,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shutdown {
    #[serde(flatten)]
    pub head: Head,
}

/// The browser's `RTCIceCandidateInit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(
        rename = "sdpMLineIndex",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_mline_index: Option<u16>,
    #[serde(
        rename = "usernameFragment",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub username_fragment: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

fn required_nullable<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateMsg {
    #[serde(flatten)]
    pub head: Head,
    /// `None` (JSON `null`) means end of candidates. The field itself is required.
    #[serde(deserialize_with = "required_nullable")]
    pub candidate: Option<IceCandidate>,
}

/// Error types: the first six are sent by peers, the rest by the node itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorType {
    #[serde(rename = "NOMATCH")]
    NoMatch,
    #[serde(rename = "TIMEOUT")]
    Timeout,
    #[serde(rename = "REFUSED")]
    Refused,
    #[serde(rename = "CONFLICT")]
    Conflict,
    #[serde(rename = "DOUBLECONFLICT")]
    DoubleConflict,
    #[serde(rename = "FAILED")]
    Failed,
    #[serde(rename = "OFFLINE")]
    Offline,
    #[serde(rename = "BADMESSAGE")]
    BadMessage,
    #[serde(rename = "FORBIDDEN")]
    Forbidden,
    #[serde(rename = "TOOLARGE")]
    TooLarge,
    #[serde(rename = "RATELIMITED")]
    RateLimited,
    #[serde(rename = "UNAVAILABLE")]
    Unavailable,
    #[serde(rename = "MAILBOXFULL")]
    MailboxFull,
    #[serde(rename = "NOTMEMBER")]
    NotMember,
    /// A per-session limit (subscriptions, rooms) would be exceeded; nothing of the frame applied.
    #[serde(rename = "TOOMANY")]
    TooMany,
    /// The room already has `--max-room-members` members.
    #[serde(rename = "ROOMFULL")]
    RoomFull,
}

impl ErrorType {
    /// The wire name, e.g. `"OFFLINE"` (also used as a metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::NoMatch => "NOMATCH",
            ErrorType::Timeout => "TIMEOUT",
            ErrorType::Refused => "REFUSED",
            ErrorType::Conflict => "CONFLICT",
            ErrorType::DoubleConflict => "DOUBLECONFLICT",
            ErrorType::Failed => "FAILED",
            ErrorType::Offline => "OFFLINE",
            ErrorType::BadMessage => "BADMESSAGE",
            ErrorType::Forbidden => "FORBIDDEN",
            ErrorType::TooLarge => "TOOLARGE",
            ErrorType::RateLimited => "RATELIMITED",
            ErrorType::Unavailable => "UNAVAILABLE",
            ErrorType::MailboxFull => "MAILBOXFULL",
            ErrorType::NotMember => "NOTMEMBER",
            ErrorType::TooMany => "TOOMANY",
            ErrorType::RoomFull => "ROOMFULL",
        }
    }

    /// All error types, for metrics pre-registration and reports.
    pub const ALL: [ErrorType; 16] = [
        ErrorType::NoMatch,
        ErrorType::Timeout,
        ErrorType::Refused,
        ErrorType::Conflict,
        ErrorType::DoubleConflict,
        ErrorType::Failed,
        ErrorType::Offline,
        ErrorType::BadMessage,
        ErrorType::Forbidden,
        ErrorType::TooLarge,
        ErrorType::RateLimited,
        ErrorType::Unavailable,
        ErrorType::MailboxFull,
        ErrorType::NotMember,
        ErrorType::TooMany,
        ErrorType::RoomFull,
    ];
}

impl std::fmt::Display for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Value of `origin` on errors the node itself sends.
pub const ORIGIN_SERVER: &str = "server";

/// An Error message: sent by a peer (relayed), or by the node (`origin: "server"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorMsg {
    pub to: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<UserId>,
    /// Required from clients; a server error about an unparsable frame may lack it.
    #[serde(rename = "sessionID", default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(rename = "errorType")]
    pub error_type: ErrorType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl ErrorMsg {
    /// Whether the node (not a peer) sent this error.
    pub fn is_from_server(&self) -> bool {
        self.origin.as_deref() == Some(ORIGIN_SERVER)
    }
}

/// First frame a node sends after the upgrade. `session`, `resumed` and `resumeWindowMs`
/// (contract section 5) are absent only from nodes that predate sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub user: UserId,
    pub node: NodeId,
    /// The session token: present it as `?resume=` to continue this session elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<bool>,
    #[serde(
        rename = "resumeWindowMs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub resume_window_ms: Option<u64>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A client's cumulative acknowledgement: every frame up to `n` arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub n: u64,
}

/// Name of the per-session frame number the node adds to every frame after the Welcome.
pub const FRAME_NUMBER_FIELD: &str = "n";

/// Adds `"n":<n>` to a JSON object's text (the node's own serialisation: a compact object
/// without an `n` field). Returns `None` if `frame` is not an object's text.
pub fn stamp_frame_number(frame: &str, n: u64) -> Option<String> {
    append_field(frame, FRAME_NUMBER_FIELD, n)
}

/// Adds `"<name>":<value>` (`value` written as JSON by its `Display`: a number or a bool) at
/// the end of a JSON object's text the node serialised itself (compact, without `name`): one
/// copy, no parse. `None` if `frame` is not an object's text.
pub fn append_field(frame: &str, name: &str, value: impl std::fmt::Display) -> Option<String> {
    let body = frame.trim_end();
    let open = body.strip_suffix('}')?;
    if !frame.trim_start().starts_with('{') {
        return None;
    }
    let mut out = String::with_capacity(body.len() + name.len() + 24);
    out.push_str(open);
    if !open.trim_end().ends_with('{') {
        out.push(',');
    }
    // Writing into a String cannot fail.
    let _ = write!(out, "\"{name}\":{value}}}");
    Some(out)
}

/// The types a client's frame is relayed to a peer as: the five ROAP messages and a client's
/// Error, as an index (per-type tables such as metric handles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoapKind {
    Offer,
    Answer,
    Ok,
    Candidate,
    Shutdown,
    Error,
}

impl RoapKind {
    pub const ALL: [RoapKind; 6] = [
        RoapKind::Offer,
        RoapKind::Answer,
        RoapKind::Ok,
        RoapKind::Candidate,
        RoapKind::Shutdown,
        RoapKind::Error,
    ];

    /// The type name, as in the frame's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            RoapKind::Offer => "Offer",
            RoapKind::Answer => "Answer",
            RoapKind::Ok => "Ok",
            RoapKind::Candidate => "Candidate",
            RoapKind::Shutdown => "Shutdown",
            RoapKind::Error => "Error",
        }
    }
}

/// Whether `"from":"<from>"` can be spliced into a relayed frame's `text` (an object's text with
/// no `from`) to give what serialising with `from` set would: a user id has no control
/// characters (`ids::UserId`), so one without `"` and `\\` is its own JSON string body; and no
/// `"from"` anywhere in the text (it could be an escaped key).
fn can_splice_from(text: &str, from: &UserId) -> bool {
    !from.as_str().contains(['"', '\\']) && !text.contains("\"from\"")
}

/// `body` (an object's text, starting at its `{`) with `"from":"<from>"` as its first field.
fn splice_from(body: &str, from: &UserId) -> String {
    let id = from.as_str();
    let mut out = String::with_capacity(body.len() + id.len() + 10);
    out.push_str("{\"from\":\"");
    out.push_str(id);
    out.push_str("\",");
    out.push_str(&body[1..]);
    out
}

/// Every frame of the WebSocket protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Message {
    Offer(Offer),
    Answer(Answer),
    Ok(OkMsg),
    Candidate(CandidateMsg),
    Shutdown(Shutdown),
    Error(ErrorMsg),
    Welcome(Welcome),
    Ack(Ack),
    Ping,
    Pong,
    /// A chat message (contract section 6), from a client or delivered to one.
    Message(ChatMessage),
    Accepted(Accepted),
    Delivered(Delivered),
    /// Presence (contract section 7): the client sets its own state.
    SetPresence(SetPresence),
    /// Presence: start watching users (answered with one `Presence` each).
    Subscribe(Watch),
    /// Presence: stop watching users.
    Unsubscribe(Watch),
    /// Presence: a watched user's state (sent by the node).
    Presence(Presence),
    /// Rooms (contract section 8).
    Join(Join),
    Leave(Leave),
    Joined(Joined),
    Left(Left),
    MemberJoined(MemberJoined),
    MemberLeft(MemberLeft),
}

/// Names of the types a client may send, for error messages.
const CLIENT_TYPES: &str =
    "Offer, Answer, Ok, Candidate, Shutdown, Error, Ack, Ping, Message, SetPresence, Subscribe, Unsubscribe, Join, Leave";

/// Why a frame is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("frame is not valid JSON: {0}")]
    NotJson(String),
    #[error("frame is not a JSON object")]
    NotObject,
    #[error("missing field `type`")]
    MissingType,
    #[error("field `type` must be a string")]
    TypeNotString,
    #[error(
        "unknown message type {0:?} (expected one of {CLIENT_TYPES}; names are case-sensitive)"
    )]
    UnknownType(String),
    #[error("{ty} is sent by the server, not by clients")]
    ServerOnly { ty: &'static str },
    #[error("{ty}: {detail}")]
    BadField { ty: &'static str, detail: String },
}

/// A frame that was refused, with what could be read of it so that the error reply can name
/// the peer it was meant for and the sender's session.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub error: ParseError,
    pub to: Option<UserId>,
    pub session_id: Option<SessionId>,
    /// The `id` of a refused chat `Message`, when it could be read (the error reply names it).
    pub id: Option<String>,
}

impl Message {
    /// Parses a frame from any party (used by clients of the cluster: loadgen, tests).
    pub fn parse(text: &str) -> Result<Message, Rejected> {
        // One pass straight into the typed message (the tag and flattened fields are buffered
        // borrowed from `text`). Whatever it refuses (or where it could differ: a duplicate
        // key) goes through the tree below, which decides and names the error.
        match serde_json::from_str::<Message>(text) {
            Ok(m) => Ok(m),
            Err(_) => Message::parse_tree(text),
        }
    }

    /// [`Message::parse`] through a `Value` tree: the reference semantics, and the error.
    fn parse_tree(text: &str) -> Result<Message, Rejected> {
        let value: Value = serde_json::from_str(text).map_err(|e| Rejected {
            error: ParseError::NotJson(e.to_string()),
            to: None,
            session_id: None,
            id: None,
        })?;
        let Some(map) = value.as_object() else {
            return Err(Rejected {
                error: ParseError::NotObject,
                to: None,
                session_id: None,
                id: None,
            });
        };
        // What the error reply can name; read only when the frame is refused.
        let reject = |error| Rejected {
            error,
            to: map
                .get("to")
                .and_then(Value::as_str)
                .and_then(|s| UserId::new(s).ok()),
            session_id: map
                .get("sessionID")
                .and_then(Value::as_str)
                .and_then(|s| SessionId::new(s).ok()),
            id: map
                .get("id")
                .and_then(Value::as_str)
                .filter(|s| crate::chat::MessageId::new(*s).is_ok())
                .map(str::to_owned),
        };
        let ty: &'static str = match map.get("type") {
            None => return Err(reject(ParseError::MissingType)),
            Some(Value::String(s)) => match s.as_str() {
                "Offer" => "Offer",
                "Answer" => "Answer",
                "Ok" => "Ok",
                "Candidate" => "Candidate",
                "Shutdown" => "Shutdown",
                "Error" => "Error",
                "Welcome" => "Welcome",
                "Ack" => "Ack",
                "Ping" => "Ping",
                "Pong" => "Pong",
                "Message" => "Message",
                "Accepted" => "Accepted",
                "Delivered" => "Delivered",
                "SetPresence" => "SetPresence",
                "Subscribe" => "Subscribe",
                "Unsubscribe" => "Unsubscribe",
                "Presence" => "Presence",
                "Join" => "Join",
                "Leave" => "Leave",
                "Joined" => "Joined",
                "Left" => "Left",
                "MemberJoined" => "MemberJoined",
                "MemberLeft" => "MemberLeft",
                other => return Err(reject(ParseError::UnknownType(other.to_owned()))),
            },
            Some(_) => return Err(reject(ParseError::TypeNotString)),
        };
        // Deserialise from the borrowed tree: no copy of the frame's map.
        Message::deserialize(&value).map_err(|e| {
            reject(ParseError::BadField {
                ty,
                detail: e.to_string(),
            })
        })
    }

    /// Parses a frame a client sent: refuses server-only types, requires `sessionID` on Error,
    /// and drops a client's claim to be the server (`origin`).
    pub fn parse_client(text: &str) -> Result<Message, Rejected> {
        let mut msg = Message::parse(text)?;
        match &mut msg {
            Message::Welcome(_)
            | Message::Pong
            | Message::Accepted(_)
            | Message::Delivered(_)
            | Message::Presence(_)
            | Message::Joined(_)
            | Message::Left(_)
            | Message::MemberJoined(_)
            | Message::MemberLeft(_) => {
                return Err(Rejected {
                    error: ParseError::ServerOnly { ty: msg.kind() },
                    to: None,
                    session_id: None,
                    id: None,
                });
            }
            Message::Message(c) => {
                // The node stamps these; a client's own are dropped.
                c.extra.remove(FRAME_NUMBER_FIELD);
                c.ts = None;
                c.delayed = None;
                if c.to.is_some() == c.room.is_some() {
                    return Err(Rejected {
                        error: ParseError::BadField {
                            ty: "Message",
                            detail: "exactly one of `to` and `room` is required".to_owned(),
                        },
                        to: c.to.clone(),
                        session_id: None,
                        id: Some(c.id.as_str().to_owned()),
                    });
                }
            }
            Message::Offer(_)
            | Message::Answer(_)
            | Message::Ok(_)
            | Message::Candidate(_)
            | Message::Shutdown(_) => {
                // `n` is the node's per-session frame number: a client's own is dropped.
                if let Some(h) = msg.head_mut() {
                    h.extra.remove(FRAME_NUMBER_FIELD);
                }
            }
            Message::Error(e) => {
                e.extra.remove(FRAME_NUMBER_FIELD);
                if e.session_id.is_none() {
                    return Err(Rejected {
                        error: ParseError::BadField {
                            ty: "Error",
                            detail: "missing field `sessionID`".to_owned(),
                        },
                        to: Some(e.to.clone()),
                        session_id: None,
                        id: None,
                    });
                }
                e.origin = None;
            }
            _ => {}
        }
        Ok(msg)
    }

    /// Which relayed type this is, if one (see [`Message::is_relayed`]).
    pub fn roap_kind(&self) -> Option<RoapKind> {
        match self {
            Message::Offer(_) => Some(RoapKind::Offer),
            Message::Answer(_) => Some(RoapKind::Answer),
            Message::Ok(_) => Some(RoapKind::Ok),
            Message::Candidate(_) => Some(RoapKind::Candidate),
            Message::Shutdown(_) => Some(RoapKind::Shutdown),
            Message::Error(_) => Some(RoapKind::Error),
            _ => None,
        }
    }

    /// The type name, e.g. `"Offer"` (also used as a metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Offer(_) => "Offer",
            Message::Answer(_) => "Answer",
            Message::Ok(_) => "Ok",
            Message::Candidate(_) => "Candidate",
            Message::Shutdown(_) => "Shutdown",
            Message::Error(_) => "Error",
            Message::Welcome(_) => "Welcome",
            Message::Ack(_) => "Ack",
            Message::Ping => "Ping",
            Message::Pong => "Pong",
            Message::Message(_) => "Message",
            Message::Accepted(_) => "Accepted",
            Message::Delivered(_) => "Delivered",
            Message::SetPresence(_) => "SetPresence",
            Message::Subscribe(_) => "Subscribe",
            Message::Unsubscribe(_) => "Unsubscribe",
            Message::Presence(_) => "Presence",
            Message::Join(_) => "Join",
            Message::Leave(_) => "Leave",
            Message::Joined(_) => "Joined",
            Message::Left(_) => "Left",
            Message::MemberJoined(_) => "MemberJoined",
            Message::MemberLeft(_) => "MemberLeft",
        }
    }

    fn head(&self) -> Option<&Head> {
        match self {
            Message::Offer(m) => Some(&m.head),
            Message::Answer(m) => Some(&m.head),
            Message::Ok(m) => Some(&m.head),
            Message::Candidate(m) => Some(&m.head),
            Message::Shutdown(m) => Some(&m.head),
            _ => None,
        }
    }

    fn head_mut(&mut self) -> Option<&mut Head> {
        match self {
            Message::Offer(m) => Some(&mut m.head),
            Message::Answer(m) => Some(&mut m.head),
            Message::Ok(m) => Some(&mut m.head),
            Message::Candidate(m) => Some(&mut m.head),
            Message::Shutdown(m) => Some(&mut m.head),
            _ => None,
        }
    }

    /// The unknown extra fields of a message that keeps them (relayed ROAP, Error, chat).
    pub fn extra(&self) -> Option<&Extra> {
        match self {
            Message::Error(e) => Some(&e.extra),
            Message::Message(m) => Some(&m.extra),
            Message::Accepted(a) => Some(&a.extra),
            Message::Delivered(d) => Some(&d.extra),
            _ => self.head().map(|h| &h.extra),
        }
    }

    /// The addressee of a relayed message (`None` for Welcome, Ping, Pong).
    pub fn to(&self) -> Option<&UserId> {
        match self {
            Message::Error(e) => Some(&e.to),
            _ => self.head().map(|h| &h.to),
        }
    }

    /// The sender as written in the frame.
    pub fn from(&self) -> Option<&UserId> {
        match self {
            Message::Error(e) => e.from.as_ref(),
            _ => self.head().and_then(|h| h.from.as_ref()),
        }
    }

    /// Sets `from` (the node fills it with the authenticated user).
    pub fn set_from(&mut self, from: UserId) {
        match self {
            Message::Error(e) => e.from = Some(from),
            _ => {
                if let Some(h) = self.head_mut() {
                    h.from = Some(from);
                }
            }
        }
    }

    pub fn session_id(&self) -> Option<&SessionId> {
        match self {
            Message::Error(e) => e.session_id.as_ref(),
            _ => self.head().map(|h| &h.session_id),
        }
    }

    pub fn seq(&self) -> Option<u64> {
        match self {
            Message::Error(e) => e.seq,
            _ => self.head().and_then(|h| h.seq),
        }
    }

    /// The frame to relay for the client text `text` that [`Message::parse_client`] parsed into
    /// `self`, sent by the authenticated `from` (the caller has refused any other `from`).
    ///
    /// A relayed ROAP message (Offer, Answer, Ok, Candidate, Shutdown) keeps the client's own
    /// text, with `"from"` spliced in after its `{` when it has none: one copy, no
    /// serialisation. The splice is taken only where it is exactly what re-serialising would
    /// give: no `"n"` (the node drops a client's frame number), no `\u` escape (an escaped key
    /// could be `from` or `n`), and `"from"` in the text only if it parsed as the sender.
    /// Everything else (Error, which drops `origin`) is serialised with `from` set.
    pub fn into_relay_frame(mut self, text: &str, from: &UserId) -> String {
        if let Some(h) = self.head() {
            let body = text.trim_start();
            let plain = !text.contains("\"n\"") && !text.contains("\\u");
            if plain && body.starts_with('{') {
                if h.from.is_some() {
                    return text.to_owned();
                }
                if can_splice_from(text, from) {
                    return splice_from(body, from);
                }
            }
        }
        self.set_from(from.clone());
        self.to_json()
    }

    /// Whether the message is relayed to a peer (everything but Welcome, Ack, Ping, Pong).
    pub fn is_relayed(&self) -> bool {
        self.to().is_some()
    }

    /// An error the node sends back to `to` about a message meant for `peer`.
    pub fn server_error(
        to: UserId,
        peer: Option<UserId>,
        session_id: Option<SessionId>,
        error_type: ErrorType,
        description: impl Into<String>,
    ) -> Message {
        Message::Error(ErrorMsg {
            to,
            from: peer,
            session_id,
            seq: None,
            error_type,
            description: Some(description.into()),
            origin: Some(ORIGIN_SERVER.to_owned()),
            extra: Extra::new(),
        })
    }

    /// An error the node sends back to `to` about its chat message `id` meant for `peer` (or
    /// `room`): no `sessionID` (contract part two).
    pub fn chat_error(
        to: UserId,
        peer: Option<UserId>,
        id: Option<&str>,
        room: Option<&str>,
        error_type: ErrorType,
        description: impl Into<String>,
    ) -> Message {
        let mut extra = Extra::new();
        if let Some(id) = id {
            extra.insert("id".to_owned(), Value::String(id.to_owned()));
        }
        if let Some(room) = room {
            extra.insert("room".to_owned(), Value::String(room.to_owned()));
        }
        Message::Error(ErrorMsg {
            to,
            from: peer,
            session_id: None,
            seq: None,
            error_type,
            description: Some(description.into()),
            origin: Some(ORIGIN_SERVER.to_owned()),
            extra,
        })
    }

    /// An error the node sends back to `to` about its Join or Leave of `room` (no `sessionID`).
    pub fn room_error(
        to: UserId,
        room: &crate::ids::RoomId,
        error_type: ErrorType,
        description: impl Into<String>,
    ) -> Message {
        Message::chat_error(to, None, None, Some(room.as_str()), error_type, description)
    }

    /// The JSON text of this message.
    pub fn to_json(&self) -> String {
        // Serialising these types cannot fail: every map key is a string and serde_json's
        // `Value` cannot hold a non-finite number.
        #[allow(clippy::expect_used)]
        serde_json::to_string(self).expect("ROAP messages always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bad(text: &str) -> ParseError {
        match Message::parse_client(text) {
            Ok(m) => panic!("accepted {text}: {m:?}"),
            Err(r) => r.error,
        }
    }

    #[test]
    fn parses_every_type() {
        let offer =
            r#"{"type":"Offer","to":"bob","sessionID":"s1","sdp":"v=0","seq":1,"tieBreaker":7}"#;
        let Message::Offer(o) = Message::parse_client(offer).unwrap() else {
            panic!()
        };
        assert_eq!(o.head.to.as_str(), "bob");
        assert_eq!(o.head.seq, Some(1));
        assert_eq!(o.tie_breaker, Some(7));
        for text in [
            r#"{"type":"Answer","to":"bob","sessionID":"s1","sdp":"v=0"}"#,
            r#"{"type":"Ok","to":"bob","sessionID":"s1"}"#,
            r#"{"type":"Shutdown","to":"bob","sessionID":"s1","seq":3}"#,
            r#"{"type":"Candidate","to":"bob","sessionID":"s1","candidate":null}"#,
            r#"{"type":"Candidate","to":"bob","sessionID":"s1","candidate":{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"u"}}"#,
            r#"{"type":"Error","to":"bob","sessionID":"s1","errorType":"NOMATCH","description":"x"}"#,
            r#"{"type":"Ping"}"#,
        ] {
            let m = Message::parse_client(text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            assert_eq!(
                m.kind(),
                serde_json::from_str::<Value>(text).unwrap()["type"]
            );
        }
    }

    #[test]
    fn extra_fields_survive_a_round_trip() {
        let text =
            r#"{"type":"Offer","to":"bob","sessionID":"s1","sdp":"v=0","x-app":{"k":[1,2]},"n":5}"#;
        let mut m = Message::parse_client(text).unwrap();
        m.set_from(UserId::new("alice").unwrap());
        let out: Value = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(
            out,
            json!({"type":"Offer","to":"bob","from":"alice","sessionID":"s1","sdp":"v=0","x-app":{"k":[1,2]}})
        );
        let cand = r#"{"type":"Candidate","to":"b","sessionID":"s","candidate":{"candidate":"c","foo":1}}"#;
        let out: Value =
            serde_json::from_str(&Message::parse_client(cand).unwrap().to_json()).unwrap();
        assert_eq!(out["candidate"], json!({"candidate":"c","foo":1}));
    }

    #[test]
    fn the_one_pass_parse_agrees_with_the_tree() {
        let frames = [
            r#"{"type":"Offer","to":"bob","sessionID":"s1","sdp":"v=0\r\n","seq":1,"tieBreaker":7}"#,
            r#"{"type":"Offer","to":"bob","sessionID":"s1","sdp":"v=0","x-app":{"k":[1,2.5,null]},"n":5}"#,
            r#"{"sessionID":"s1","to":"bob","type":"Answer","sdp":"v=0","from":"al"}"#,
            r#"{"type":"Candidate","to":"b","sessionID":"s","candidate":{"candidate":"c","foo":1}}"#,
            r#"{"type":"Candidate","to":"b","sessionID":"s","candidate":null}"#,
            r#"{"type":"Error","to":"bob","sessionID":"s1","errorType":"NOMATCH","origin":"x"}"#,
            r#"{"type":"Message","to":"bob","id":"m1","body":"hi","ts":1,"n":2}"#,
            r#"{"type":"Subscribe","users":["a","b"]}"#,
            r#"{"type":"Ack","n":3}"#,
            r#"{"type":"Ping"}"#,
            // Refused, or accepted only by the tree's rules.
            r#"{"type":"Offer","to":"bob","to":"carol","sessionID":"s1","sdp":"v=0"}"#,
            r#"{"type":"Offer","type":"Answer","to":"bob","sessionID":"s1","sdp":"v=0"}"#,
            r#"{"type":"Offer","to":"bob","sessionID":"s1","x":1,"x":2,"sdp":"v=0"}"#,
            r#"{"type":"Offer","to":"bob","sessionID":"s1"}"#,
            r#"{"type":"Offer","to":"","sessionID":"s1","sdp":"v=0"}"#,
            r#"{"type":"Offer","to":"bob","sessionID":"s1","sdp":"v=0","seq":1.5}"#,
            r#"{"type":"Nope","to":"bob"}"#,
            r#"{"type":7}"#,
            r#"{"to":"bob"}"#,
            r#"[1]"#,
            r#"{"type":"Offer""#,
            "",
        ];
        for text in frames {
            assert_eq!(Message::parse(text), Message::parse_tree(text), "{text}");
        }
    }

    #[test]
    fn relay_frame_splices_from_or_serialises_the_same_json() {
        let alice = UserId::new("alice").unwrap();
        let odd = UserId::new(r#"al"ice\"#).unwrap();
        let cases = [
            // Spliced: the client's text with "from" in front.
            (
                r#"{"type":"Offer","to":"bob","sessionID":"s1","sdp":"v=0\r\n","x":{"k":[1]}}"#,
                true,
            ),
            (
                r#"  { "type" : "Candidate", "to":"b", "sessionID":"s", "candidate":{"candidate":"c"} } "#,
                true,
            ),
            (
                r#"{"type":"Ok","to":"b","sessionID":"s","from":"alice"}"#,
                true,
            ),
            // Serialised: a client `n`, an escape, `"from"` elsewhere, an Error.
            (
                r#"{"type":"Offer","to":"bob","sessionID":"s1","sdp":"v=0","n":5}"#,
                false,
            ),
            (
                r#"{"type":"Offer","to":"bob","sessionID":"s1","sdp":"v=0","\u006e":5}"#,
                false,
            ),
            (
                r#"{"type":"Answer","to":"bob","sessionID":"s1","sdp":"v=0","from":null}"#,
                false,
            ),
            (
                r#"{"type":"Shutdown","to":"bob","sessionID":"s1","x":"\"from\""}"#,
                true,
            ),
            (
                r#"{"type":"Shutdown","to":"bob","sessionID":"s1","x":"from"}"#,
                false,
            ),
            (
                r#"{"type":"Error","to":"bob","sessionID":"s1","errorType":"FAILED","origin":"x"}"#,
                false,
            ),
        ];
        for (text, spliced) in cases {
            for user in [&alice, &odd] {
                let mut want = Message::parse_client(text).unwrap();
                if want.from().is_some_and(|f| f != user) {
                    continue; // refused before relaying (FORBIDDEN)
                }
                want.set_from(user.clone());
                let want: Value = serde_json::from_str(&want.to_json()).unwrap();
                let out = Message::parse_client(text)
                    .unwrap()
                    .into_relay_frame(text, user);
                let got: Value = serde_json::from_str(&out).unwrap();
                assert_eq!(got, want, "{text} as {user}");
                let kept = out.contains(text.trim().trim_start_matches('{'));
                assert_eq!(kept, spliced && user == &alice, "{text} as {user}: {out}");
                // The frame number goes on after either.
                assert!(stamp_frame_number(&out, 3).is_some());
            }
        }
    }

    #[test]
    fn refuses_malformed_frames() {
        assert!(matches!(bad("not json"), ParseError::NotJson(_)));
        assert!(matches!(bad(""), ParseError::NotJson(_)));
        assert_eq!(bad("[1,2]"), ParseError::NotObject);
        assert_eq!(bad("\"Offer\""), ParseError::NotObject);
        assert_eq!(bad("null"), ParseError::NotObject);
        assert_eq!(bad(r#"{"to":"bob"}"#), ParseError::MissingType);
        assert_eq!(bad(r#"{"type":5}"#), ParseError::TypeNotString);
        assert_eq!(
            bad(r#"{"type":"offer","to":"b","sessionID":"s","sdp":""}"#),
            ParseError::UnknownType("offer".into())
        );
        assert_eq!(
            bad(r#"{"type":"Bogus"}"#),
            ParseError::UnknownType("Bogus".into())
        );
        assert!(matches!(
            bad(r#"{"type":"Welcome","user":"a","node":"n"}"#),
            ParseError::ServerOnly { .. }
        ));
        assert!(matches!(
            bad(r#"{"type":"Pong"}"#),
            ParseError::ServerOnly { .. }
        ));
        // Missing and mistyped fields.
        for text in [
            r#"{"type":"Offer","to":"bob","sessionID":"s1"}"#,
            r#"{"type":"Offer","sessionID":"s1","sdp":"x"}"#,
            r#"{"type":"Offer","to":"bob","sdp":"x"}"#,
            r#"{"type":"Offer","to":"bob","sessionID":"s1","sdp":5}"#,
            r#"{"type":"Offer","to":"bob","sessionID":"s1","sdp":"x","seq":-1}"#,
            r#"{"type":"Offer","to":"bob","sessionID":"s1","sdp":"x","seq":"1"}"#,
            r#"{"type":"Offer","to":"bob","sessionID":"s1","sdp":"x","tieBreaker":4294967296}"#,
            r#"{"type":"Offer","to":7,"sessionID":"s1","sdp":"x"}"#,
            r#"{"type":"Offer","to":"bob","sessionID":7,"sdp":"x"}"#,
            r#"{"type":"Candidate","to":"bob","sessionID":"s1"}"#,
            r#"{"type":"Candidate","to":"bob","sessionID":"s1","candidate":"x"}"#,
            r#"{"type":"Candidate","to":"bob","sessionID":"s1","candidate":{"sdpMid":"0"}}"#,
            r#"{"type":"Error","to":"bob","sessionID":"s1"}"#,
            r#"{"type":"Error","to":"bob","sessionID":"s1","errorType":"nomatch"}"#,
            r#"{"type":"Error","to":"bob","errorType":"NOMATCH"}"#,
            r#"{"type":"Answer","to":"b","sessionID":"s"}"#,
            r#"{"type":"Ok","to":"b"}"#,
            r#"{"type":"Shutdown","sessionID":"s"}"#,
        ] {
            assert!(matches!(bad(text), ParseError::BadField { .. }), "{text}");
        }
    }

    #[test]
    fn refuses_bad_user_ids() {
        for to in ["", "a b", "a\u{1}b", &"x".repeat(129)] {
            let text = json!({"type":"Ok","to":to,"sessionID":"s"}).to_string();
            assert!(matches!(bad(&text), ParseError::BadField { .. }), "{to:?}");
        }
        let text = json!({"type":"Ok","to":"bob","from":"a b","sessionID":"s"}).to_string();
        assert!(matches!(bad(&text), ParseError::BadField { .. }));
    }

    #[test]
    fn refuses_absurd_nesting() {
        let deep = format!(
            r#"{{"type":"Ok","to":"b","sessionID":"s","x":{}1{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(matches!(bad(&deep), ParseError::NotJson(_)));
    }

    #[test]
    fn rejection_keeps_context_for_the_reply() {
        let r =
            Message::parse_client(r#"{"type":"Offer","to":"bob","sessionID":"s9"}"#).unwrap_err();
        assert_eq!(r.to.unwrap().as_str(), "bob");
        assert_eq!(r.session_id.unwrap().as_str(), "s9");
    }

    #[test]
    fn client_cannot_claim_server_origin() {
        let m = Message::parse_client(
            r#"{"type":"Error","to":"bob","sessionID":"s","errorType":"FAILED","origin":"server"}"#,
        )
        .unwrap();
        let Message::Error(e) = m else { panic!() };
        assert!(!e.is_from_server());
    }

    #[test]
    fn server_error_shape() {
        let m = Message::server_error(
            UserId::new("alice").unwrap(),
            Some(UserId::new("bob").unwrap()),
            Some(SessionId::new("s1").unwrap()),
            ErrorType::Offline,
            "bob is not connected",
        );
        let v: Value = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(
            v,
            json!({"type":"Error","to":"alice","from":"bob","sessionID":"s1","errorType":"OFFLINE","description":"bob is not connected","origin":"server"})
        );
        let back = Message::parse(&m.to_json()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn frame_numbers() {
        assert_eq!(
            stamp_frame_number(r#"{"type":"Ok","to":"b"}"#, 7).unwrap(),
            r#"{"type":"Ok","to":"b","n":7}"#
        );
        assert_eq!(stamp_frame_number("{}", 1).unwrap(), r#"{"n":1}"#);
        assert!(stamp_frame_number("[1]", 1).is_none());
        assert!(stamp_frame_number("", 1).is_none());
        let v: Value =
            serde_json::from_str(&stamp_frame_number(&Message::Pong.to_json(), 42).unwrap())
                .unwrap();
        assert_eq!(v["n"], 42);
        let Message::Ack(a) = Message::parse_client(r#"{"type":"Ack","n":12}"#).unwrap() else {
            panic!()
        };
        assert_eq!(a.n, 12);
        assert!(Message::parse_client(r#"{"type":"Ack"}"#).is_err());
        assert!(Message::parse_client(r#"{"type":"Ack","n":-1}"#).is_err());
    }

    #[test]
    fn welcome_ping_pong() {
        assert_eq!(Message::Ping.to_json(), r#"{"type":"Ping"}"#);
        assert_eq!(Message::Pong.to_json(), r#"{"type":"Pong"}"#);
        let w = Message::parse(r#"{"type":"Welcome","user":"a","node":"n1"}"#).unwrap();
        assert!(matches!(w, Message::Welcome(_)));
    }

    #[test]
    fn chat_messages() {
        let m = Message::parse_client(
            r#"{"type":"Message","to":"bob","id":"m-1","body":"hi","x":1,"n":4,"ts":9,"delayed":true}"#,
        )
        .unwrap();
        let Message::Message(c) = &m else { panic!() };
        assert_eq!(c.to.as_ref().unwrap().as_str(), "bob");
        assert_eq!((c.ts, c.delayed, c.extra.get("n")), (None, None, None));
        assert_eq!(c.extra["x"], 1);
        assert!(m.to_json().starts_with(r#"{"type":"Message","#));
        for text in [
            r#"{"type":"Message","to":"bob","body":"hi"}"#,
            r#"{"type":"Message","to":"bob","id":"","body":"hi"}"#,
            r#"{"type":"Message","to":"bob","id":"a b","body":"hi"}"#,
            r#"{"type":"Message","to":"bob","id":"m","body":5}"#,
            r#"{"type":"Message","to":"bob","room":"r","id":"m","body":"x"}"#,
            r#"{"type":"Message","room":"a b","id":"m","body":"x"}"#,
            r#"{"type":"Message","room":"","id":"m","body":"x"}"#,
            r#"{"type":"Message","id":"m","body":"x"}"#,
            r#"{"type":"Message","to":"a b","id":"m","body":"x"}"#,
        ] {
            assert!(matches!(bad(text), ParseError::BadField { .. }), "{text}");
        }
        let long = json!({"type":"Message","to":"bob","id":"x".repeat(65),"body":"x"}).to_string();
        assert!(matches!(bad(&long), ParseError::BadField { .. }));
        let r = Message::parse_client(r#"{"type":"Message","to":"bob","id":"m7","body":5}"#)
            .unwrap_err();
        assert_eq!(r.id.as_deref(), Some("m7"));
        assert!(matches!(
            bad(r#"{"type":"Accepted","id":"m","to":"b","ts":1,"stored":true}"#),
            ParseError::ServerOnly { .. }
        ));
        let e = Message::chat_error(
            UserId::new("alice").unwrap(),
            Some(UserId::new("bob").unwrap()),
            Some("m-1"),
            None,
            ErrorType::MailboxFull,
            "full",
        );
        let v: Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(
            v,
            json!({"type":"Error","to":"alice","from":"bob","id":"m-1","errorType":"MAILBOXFULL","description":"full","origin":"server"})
        );
    }

    #[test]
    fn room_frames() {
        let Message::Join(j) = Message::parse_client(r#"{"type":"Join","room":"r1"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(j.room.as_str(), "r1");
        assert!(matches!(
            Message::parse_client(r#"{"type":"Leave","room":"r1"}"#).unwrap(),
            Message::Leave(_)
        ));
        for text in [
            r#"{"type":"Join"}"#,
            r#"{"type":"Join","room":""}"#,
            r#"{"type":"Join","room":"a b"}"#,
            r#"{"type":"Join","room":7}"#,
            r#"{"type":"Leave","room":"a\u0001"}"#,
        ] {
            assert!(matches!(bad(text), ParseError::BadField { .. }), "{text}");
        }
        let long = json!({"type":"Join","room":"x".repeat(129)}).to_string();
        assert!(matches!(bad(&long), ParseError::BadField { .. }));
        for server_only in [
            r#"{"type":"Joined","room":"r","members":["a"]}"#,
            r#"{"type":"Left","room":"r"}"#,
            r#"{"type":"MemberJoined","room":"r","user":"a"}"#,
            r#"{"type":"MemberLeft","room":"r","user":"a"}"#,
        ] {
            assert!(
                matches!(bad(server_only), ParseError::ServerOnly { .. }),
                "{server_only}"
            );
            let m = Message::parse(server_only).unwrap();
            assert_eq!(
                serde_json::from_str::<Value>(&m.to_json()).unwrap(),
                serde_json::from_str::<Value>(server_only).unwrap()
            );
        }
        let m = Message::parse_client(r#"{"type":"Message","room":"r1","id":"m-2","body":"hi"}"#)
            .unwrap();
        let Message::Message(c) = m else { panic!() };
        assert_eq!(c.room.unwrap().as_str(), "r1");
        let a = Message::Accepted(Accepted {
            id: crate::chat::MessageId::new("m-2").unwrap(),
            to: None,
            room: Some(crate::ids::RoomId::new("r1").unwrap()),
            ts: 5,
            stored: None,
            recipients: Some(3),
            extra: Default::default(),
        });
        assert_eq!(
            serde_json::from_str::<Value>(&a.to_json()).unwrap(),
            json!({"type":"Accepted","id":"m-2","room":"r1","ts":5,"recipients":3})
        );
        let e = Message::room_error(
            UserId::new("alice").unwrap(),
            &crate::ids::RoomId::new("r1").unwrap(),
            ErrorType::RoomFull,
            "full",
        );
        assert_eq!(
            serde_json::from_str::<Value>(&e.to_json()).unwrap(),
            json!({"type":"Error","to":"alice","room":"r1","errorType":"ROOMFULL","description":"full","origin":"server"})
        );
    }
}
