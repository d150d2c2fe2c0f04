//! Presence frames (contract section 7): the client's `SetPresence`, `Subscribe` and
//! `Unsubscribe`, and the node's `Presence` notification; the states and their limits.

use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// Longest presence note, in bytes of UTF-8.
pub const MAX_NOTE_BYTES: usize = 256;
/// Most user ids in one `Subscribe` or `Unsubscribe` frame.
pub const MAX_USERS_PER_FRAME: usize = 1000;

/// What a user sets: `invisible` is shown to watchers as `offline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    Online,
    Away,
    Busy,
    Invisible,
}

/// What watchers see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shown {
    Online,
    Away,
    Busy,
    Offline,
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Online => "online",
            Availability::Away => "away",
            Availability::Busy => "busy",
            Availability::Invisible => "invisible",
        }
    }

    /// Parses the wire name (`None` for anything else, `offline` included).
    pub fn parse(s: &str) -> Option<Availability> {
        match s {
            "online" => Some(Availability::Online),
            "away" => Some(Availability::Away),
            "busy" => Some(Availability::Busy),
            "invisible" => Some(Availability::Invisible),
            _ => None,
        }
    }

    /// How watchers see this state.
    pub fn shown(self) -> Shown {
        match self {
            Availability::Online => Shown::Online,
            Availability::Away => Shown::Away,
            Availability::Busy => Shown::Busy,
            Availability::Invisible => Shown::Offline,
        }
    }
}

impl Shown {
    pub fn as_str(self) -> &'static str {
        match self {
            Shown::Online => "online",
            Shown::Away => "away",
            Shown::Busy => "busy",
            Shown::Offline => "offline",
        }
    }

    pub fn parse(s: &str) -> Option<Shown> {
        match s {
            "online" => Some(Shown::Online),
            "away" => Some(Shown::Away),
            "busy" => Some(Shown::Busy),
            "offline" => Some(Shown::Offline),
            _ => None,
        }
    }
}

/// A presence note: at most [`MAX_NOTE_BYTES`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(try_from = "String", into = "String")]
pub struct Note(String);

/// Why a note is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("note must be at most {MAX_NOTE_BYTES} bytes (got {0})")]
pub struct NoteTooLong(pub usize);

impl Note {
    pub fn new(s: impl Into<String>) -> Result<Note, NoteTooLong> {
        let s = s.into();
        if s.len() > MAX_NOTE_BYTES {
            return Err(NoteTooLong(s.len()));
        }
        Ok(Note(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<String> for Note {
    type Error = NoteTooLong;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Note::new(s)
    }
}

impl From<Note> for String {
    fn from(n: Note) -> String {
        n.0
    }
}

/// 1 to [`MAX_USERS_PER_FRAME`] user ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<UserId>", into = "Vec<UserId>")]
pub struct UserList(Vec<UserId>);

/// Why a user list is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("users must list 1 to {MAX_USERS_PER_FRAME} user ids (got {0})")]
pub struct BadUserList(pub usize);

impl UserList {
    pub fn new(users: Vec<UserId>) -> Result<UserList, BadUserList> {
        if users.is_empty() || users.len() > MAX_USERS_PER_FRAME {
            return Err(BadUserList(users.len()));
        }
        Ok(UserList(users))
    }

    pub fn as_slice(&self) -> &[UserId] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<UserId> {
        self.0
    }
}

impl TryFrom<Vec<UserId>> for UserList {
    type Error = BadUserList;
    fn try_from(v: Vec<UserId>) -> Result<Self, Self::Error> {
        UserList::new(v)
    }
}

impl From<UserList> for Vec<UserId> {
    fn from(l: UserList) -> Vec<UserId> {
        l.0
    }
}

/// `{"type":"SetPresence","state":"away","note":"in a meeting"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetPresence {
    pub state: Availability,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<Note>,
}

/// `{"type":"Subscribe","users":[...]}` and `{"type":"Unsubscribe","users":[...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    pub users: UserList,
}

/// `{"type":"Presence","user":"bob","state":"online","note":"...","since":<ms>}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub user: UserId,
    pub state: Shown,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<Note>,
    /// Milliseconds since the Unix epoch at which this state began.
    pub since: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::roap::{Message, ParseError};
    use serde_json::{json, Value};

    fn bad(text: &str) -> ParseError {
        match Message::parse_client(text) {
            Ok(m) => panic!("accepted {text}: {m:?}"),
            Err(r) => r.error,
        }
    }

    #[test]
    fn set_presence() {
        let m = Message::parse_client(r#"{"type":"SetPresence","state":"away","note":"lunch"}"#)
            .unwrap();
        let Message::SetPresence(s) = m else { panic!() };
        assert_eq!(s.state, Availability::Away);
        assert_eq!(s.note.unwrap().as_str(), "lunch");
        let m = Message::parse_client(r#"{"type":"SetPresence","state":"invisible"}"#).unwrap();
        let Message::SetPresence(s) = m else { panic!() };
        assert_eq!(s.state.shown(), Shown::Offline);
        assert!(s.note.is_none());
        let ok_note = json!({"type":"SetPresence","state":"busy","note":"é".repeat(128)});
        assert!(Message::parse_client(&ok_note.to_string()).is_ok());
        for text in [
            r#"{"type":"SetPresence","state":"offline"}"#.to_owned(),
            r#"{"type":"SetPresence","state":"Online"}"#.to_owned(),
            r#"{"type":"SetPresence","state":"gone"}"#.to_owned(),
            r#"{"type":"SetPresence"}"#.to_owned(),
            r#"{"type":"SetPresence","state":"away","note":5}"#.to_owned(),
            json!({"type":"SetPresence","state":"away","note":"x".repeat(257)}).to_string(),
            json!({"type":"SetPresence","state":"away","note":"é".repeat(129)}).to_string(),
        ] {
            assert!(matches!(bad(&text), ParseError::BadField { .. }), "{text}");
        }
    }

    #[test]
    fn subscribe_lists() {
        let m = Message::parse_client(r#"{"type":"Subscribe","users":["bob","carol"]}"#).unwrap();
        let Message::Subscribe(w) = m else { panic!() };
        assert_eq!(w.users.as_slice().len(), 2);
        let users: Vec<String> = (0..1000).map(|i| format!("u{i}")).collect();
        let ok = json!({"type":"Unsubscribe","users":users});
        assert!(matches!(
            Message::parse_client(&ok.to_string()).unwrap(),
            Message::Unsubscribe(_)
        ));
        let users: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
        for text in [
            json!({"type":"Subscribe","users":users}).to_string(),
            r#"{"type":"Subscribe","users":[]}"#.to_owned(),
            r#"{"type":"Subscribe"}"#.to_owned(),
            r#"{"type":"Subscribe","users":"bob"}"#.to_owned(),
            r#"{"type":"Subscribe","users":["a b"]}"#.to_owned(),
            r#"{"type":"Subscribe","users":[""]}"#.to_owned(),
            r#"{"type":"Unsubscribe","users":["ok",7]}"#.to_owned(),
        ] {
            assert!(matches!(bad(&text), ParseError::BadField { .. }), "{text}");
        }
    }

    #[test]
    fn presence_is_server_only_and_round_trips() {
        let p = Message::Presence(Presence {
            user: UserId::new("bob").unwrap(),
            state: Shown::Away,
            note: Some(Note::new("brb").unwrap()),
            since: 1234,
        });
        let v: Value = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(
            v,
            json!({"type":"Presence","user":"bob","state":"away","note":"brb","since":1234})
        );
        assert_eq!(Message::parse(&p.to_json()).unwrap(), p);
        assert!(matches!(
            bad(&p.to_json()),
            ParseError::ServerOnly { ty: "Presence" }
        ));
        let off = Message::Presence(Presence {
            user: UserId::new("bob").unwrap(),
            state: Shown::Offline,
            note: None,
            since: 1,
        });
        assert_eq!(
            off.to_json(),
            r#"{"type":"Presence","user":"bob","state":"offline","since":1}"#
        );
    }

    #[test]
    fn names() {
        for a in [
            Availability::Online,
            Availability::Away,
            Availability::Busy,
            Availability::Invisible,
        ] {
            assert_eq!(Availability::parse(a.as_str()), Some(a));
        }
        for s in [Shown::Online, Shown::Away, Shown::Busy, Shown::Offline] {
            assert_eq!(Shown::parse(s.as_str()), Some(s));
        }
        assert_eq!(Availability::parse("offline"), None);
        assert_eq!(Shown::parse("invisible"), None);
    }
}
