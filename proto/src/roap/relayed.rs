//! The relay fast path: a client's Offer, Answer, Ok, Candidate or Shutdown read borrowed from
//! its text (the SDP is checked, not copied or unescaped; no buffering of the object), for the
//! frames where that gives exactly what [`Message::parse_client`] and
//! [`Message::into_relay_frame`] give. Every other frame (unknown fields, `\u` escapes, a field
//! of the wrong type, anything refused) goes through the full parse, which decides and names
//! the error: this path only ever accepts a subset of what the full parse accepts.
//!
//! [`Message::parse_client`]: crate::Message::parse_client
//! [`Message::into_relay_frame`]: crate::Message::into_relay_frame

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::{can_splice_from, splice_from, RoapKind};
use crate::ids::{SessionId, UserId};

/// Every field the five types know; any other field (kept in `extra` by the full parse) sends
/// the frame down the full path.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct View<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    to: &'a str,
    #[serde(default)]
    from: Option<&'a str>,
    #[serde(rename = "sessionID")]
    session_id: &'a str,
    /// Only checked (a number or null), as the full parse reads it.
    #[serde(default)]
    #[allow(dead_code)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    sdp: Option<&'a RawValue>,
    #[serde(rename = "tieBreaker", default)]
    tie_breaker: Option<u32>,
    /// `None`: absent; `Some(None)`: `null` (end of candidates).
    #[serde(default, borrow, deserialize_with = "present")]
    candidate: Option<Option<&'a RawValue>>,
}

/// The browser's `RTCIceCandidateInit`, as [`crate::roap::IceCandidate`] reads it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read to be checked
struct Ice<'a> {
    candidate: &'a str,
    #[serde(rename = "sdpMid", default)]
    sdp_mid: Option<&'a str>,
    #[serde(rename = "sdpMLineIndex", default)]
    sdp_mline_index: Option<u16>,
    #[serde(rename = "usernameFragment", default)]
    username_fragment: Option<&'a str>,
}

fn present<'de, D>(d: D) -> Result<Option<Option<&'de RawValue>>, D::Error>
where
    D: Deserializer<'de>,
{
    Option::<&'de RawValue>::deserialize(d).map(Some)
}

fn is_string(raw: &RawValue) -> bool {
    raw.get().starts_with('"')
}

/// A relayed ROAP message a client sent, read without building the [`crate::Message`].
#[derive(Debug, Clone, PartialEq)]
pub struct Relayed<'a> {
    pub kind: RoapKind,
    pub to: UserId,
    /// The sender's own `from`, if it wrote one (the caller refuses any other than itself).
    pub from: Option<UserId>,
    pub session_id: SessionId,
    text: &'a str,
}

impl<'a> Relayed<'a> {
    /// Reads `text`, sent by `sender`, when it is a relayed ROAP message of the plain shape
    /// (see the module). `None`: take the full parse.
    pub fn read(text: &'a str, sender: &UserId) -> Option<Relayed<'a>> {
        // Every ROAP frame names its session: anything else (an Ack, a Ping, a chat message)
        // goes to the full parse at once instead of failing this one (a serde error is an
        // allocation and a formatted message: 2.6 % of a node's CPU when it was every Ack).
        if !text.contains("\"sessionID\"") {
            return None;
        }
        // Both as in `into_relay_frame`: an object's text, and no `\u` escape (the full parse
        // refuses a lone surrogate that a skipped string would let through).
        if !text.trim_start().starts_with('{') || text.contains("\\u") {
            return None;
        }
        let v: View<'_> = serde_json::from_str(text).ok()?;
        let kind = match v.ty {
            "Offer" => RoapKind::Offer,
            "Answer" => RoapKind::Answer,
            "Ok" => RoapKind::Ok,
            "Candidate" => RoapKind::Candidate,
            "Shutdown" => RoapKind::Shutdown,
            _ => return None,
        };
        // A field of one type is an extra field of the others: taken here only with a value
        // the full parse reads the same way either way.
        match (kind, v.sdp) {
            (RoapKind::Offer | RoapKind::Answer, None) => return None,
            (_, Some(sdp)) if !is_string(sdp) => return None,
            _ => {}
        }
        if v.tie_breaker.is_some() && kind != RoapKind::Offer {
            return None;
        }
        match (kind, v.candidate) {
            (RoapKind::Candidate, None) => return None,
            (RoapKind::Candidate, Some(Some(c))) => {
                if !c.get().starts_with('{') {
                    return None;
                }
                serde_json::from_str::<Ice<'_>>(c.get()).ok()?;
            }
            (RoapKind::Candidate, Some(None)) => {}
            (_, Some(_)) => return None,
            (_, None) => {}
        }
        let from = match v.from {
            Some(f) => Some(UserId::new(f).ok()?),
            // The splice needs a `from` that is its own JSON string body, and no `"from"`
            // anywhere else in the text.
            None if !can_splice_from(text, sender) => return None,
            None => None,
        };
        Some(Relayed {
            kind,
            to: UserId::new(v.to).ok()?,
            from,
            session_id: SessionId::new(v.session_id).ok()?,
            text,
        })
    }

    /// The frame to relay, sent by `sender` (the caller has refused any other `from`): the
    /// client's text, with `"from"` spliced in after its `{` when it has none.
    pub fn frame(&self, sender: &UserId) -> String {
        if self.from.is_some() {
            return self.text.to_owned();
        }
        splice_from(self.text.trim_start(), sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    fn u(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    /// Whatever the fast path takes, the full path takes the same way: same type, ids and
    /// relayed frame.
    fn same_as_full(text: &str, sender: &UserId) -> bool {
        let Some(r) = Relayed::read(text, sender) else {
            return false;
        };
        let m = Message::parse_client(text).expect("the full parse accepts it too");
        assert_eq!(Some(r.kind), m.roap_kind(), "{text}");
        assert_eq!(Some(&r.to), m.to(), "{text}");
        assert_eq!(r.from.as_ref(), m.from(), "{text}");
        assert_eq!(Some(&r.session_id), m.session_id(), "{text}");
        assert_eq!(r.frame(sender), m.into_relay_frame(text, sender), "{text}");
        true
    }

    #[test]
    fn plain_roap_frames_take_the_fast_path_and_relay_as_the_full_parse_does() {
        let me = u("alice");
        for text in [
            r#"{"type":"Offer","to":"bob","sessionID":"s1","sdp":"v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n"}"#,
            r#"{"type":"Offer","to":"bob","sessionID":"s1","seq":3,"tieBreaker":77,"sdp":"v=0\r\n"}"#,
            r#" {"type":"Answer","to":"bob","from":"alice","sessionID":"s1","sdp":"v=0 \"q\""}"#,
            r#"{"type":"Ok","to":"bob","sessionID":"s1","seq":null}"#,
            r#"{"type":"Shutdown","to":"bob","sessionID":"s1"}"#,
            r#"{"type":"Candidate","to":"bob","sessionID":"s1","candidate":null}"#,
            r#"{"type":"Candidate","to":"bob","sessionID":"s1","candidate":{"candidate":"candidate:1 1 udp 1 10.0.0.1 9 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":null}}"#,
            r#"{"type":"Ok","to":"bob","sessionID":"s1","sdp":"stray but a string"}"#,
        ] {
            assert!(same_as_full(text, &me), "fast path refused {text}");
        }
    }

    #[test]
    fn anything_unusual_takes_the_full_parse() {
        let me = u("alice");
        for text in [
            // Not ROAP: no session named.
            r#"{"type":"Ack","n":4}"#,
            r#"{"type":"Ok","to":"bob"}"#,
            // Unknown fields (kept in `extra`), a client's `n`, `\u` escapes, escaped ids.
            r#"{"type":"Offer","to":"bob","sessionID":"s1","sdp":"x","x-app":{"a":1e999}}"#,
            r#"{"type":"Ok","to":"bob","sessionID":"s1","n":4}"#,
            r#"{"type":"Offer","to":"bob","sessionID":"s1","sdp":"\ud800"}"#,
            r#"{"type":"Ok","to":"b\/ob","sessionID":"s1"}"#,
            // Missing or mistyped fields: the full parse names the error.
            r#"{"type":"Offer","to":"bob","sessionID":"s1"}"#,
            r#"{"type":"Offer","to":"bob","sessionID":"s1","sdp":5}"#,
            r#"{"type":"Candidate","to":"bob","sessionID":"s1"}"#,
            r#"{"type":"Candidate","to":"bob","sessionID":"s1","candidate":["c"]}"#,
            r#"{"type":"Candidate","to":"bob","sessionID":"s1","candidate":{"candidate":"c","foundation":"1"}}"#,
            r#"{"type":"Ok","to":"bob","sessionID":"s1","sdp":1e999}"#,
            r#"{"type":"Answer","to":"bob","sessionID":"s1","sdp":"x","tieBreaker":1}"#,
            r#"{"type":"Ok","to":"bob","sessionID":"s1","candidate":null}"#,
            r#"{"type":"Ok","to":"","sessionID":"s1"}"#,
            r#"{"type":"Ok","to":"bob","to":"carol","sessionID":"s1"}"#,
            r#"{"type":"Ok","type":"Offer","to":"bob","sessionID":"s1"}"#,
            r#"["Ok","bob","s1"]"#,
            // Not relayed types, and a `"from"` the splice cannot go around.
            r#"{"type":"Ping"}"#,
            r#"{"type":"Message","to":"bob","id":"1","body":"hi"}"#,
            r#"{"type":"Ok","to":"from","sessionID":"s1"}"#,
        ] {
            assert!(Relayed::read(text, &me).is_none(), "fast path took {text}");
        }
        // A sender whose id is not its own JSON string body.
        let odd = u("al\"ice");
        assert!(Relayed::read(r#"{"type":"Ok","to":"bob","sessionID":"s1"}"#, &odd).is_none());
    }
}
