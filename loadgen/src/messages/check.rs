//! What each simulated user checks about the chat messages it sends and gets: per (sender,
//! recipient) sequences embedded in the message id, so that every lost, duplicated or
//! reordered message is counted, and a copy the node delivered again to a *new* session (the
//! contract's at-least-once across sessions) is told apart from a true duplicate within one
//! session.

use std::collections::{HashMap, HashSet};

/// A message id: `m<recipient>-<seq>` (unique per sender, as the contract asks).
pub fn message_id(recipient: u32, seq: u64) -> String {
    format!("m{recipient}-{seq}")
}

/// The (recipient, seq) of an id made by [`message_id`].
pub fn parse_id(id: &str) -> Option<(u32, u64)> {
    let (r, seq) = id.strip_prefix('m')?.split_once('-')?;
    Some((r.parse().ok()?, seq.parse().ok()?))
}

/// The body: `<seq> <sent µs> <padding>` up to `bytes`.
pub fn body(seq: u64, sent_us: u64, bytes: usize) -> String {
    let mut b = format!("{seq} {sent_us} ");
    while b.len() < bytes {
        b.push('x');
    }
    b
}

/// The send clock (µs) of a body made by [`body`].
pub fn parse_body(body: &str) -> Option<u64> {
    body.split(' ').nth(1)?.parse().ok()
}

/// How a received message compares with what came before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The first copy ever.
    New,
    /// Seen in an earlier session of this user: delivered again, as the contract allows
    /// (not acknowledged before that session ended).
    Redelivered,
    /// Seen already in this session: a true duplicate.
    Duplicate,
}

#[derive(Debug, Default)]
struct FromSender {
    /// Every seq received, any session.
    ever: HashSet<u64>,
    /// The session the fields below belong to.
    session: u64,
    /// Highest seq of this session.
    last: u64,
    seen: HashSet<u64>,
}

/// A recipient's view of what it got, per sender.
#[derive(Debug, Default)]
pub struct Inbox {
    senders: HashMap<u32, FromSender>,
    /// Bumped by every new session (not by a resume).
    session: u64,
}

impl Inbox {
    /// A Welcome that did not continue the session: the next copies may be redeliveries.
    pub fn new_session(&mut self) {
        self.session += 1;
    }

    /// Message `seq` from `sender`: its verdict, and whether it came after a higher seq of the
    /// same sender in this session (reordered).
    pub fn got(&mut self, sender: u32, seq: u64) -> (Verdict, bool) {
        let s = self.senders.entry(sender).or_default();
        if s.session != self.session {
            s.session = self.session;
            s.last = 0;
            s.seen.clear();
        }
        if !s.seen.insert(seq) {
            return (Verdict::Duplicate, false);
        }
        let reordered = seq < s.last;
        s.last = s.last.max(seq);
        let verdict = if s.ever.insert(seq) {
            Verdict::New
        } else {
            Verdict::Redelivered
        };
        (verdict, reordered)
    }

    /// Whether `seq` from `sender` ever arrived.
    pub fn has(&self, sender: u32, seq: u64) -> bool {
        self.senders
            .get(&sender)
            .is_some_and(|s| s.ever.contains(&seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_bodies_round_trip() {
        assert_eq!(parse_id(&message_id(7, 42)), Some((7, 42)));
        assert_eq!(parse_id("x7-1"), None);
        let b = body(42, 123_456, 64);
        assert_eq!(b.len(), 64);
        assert_eq!(parse_body(&b), Some(123_456));
    }

    #[test]
    fn duplicates_within_a_session_are_told_from_redeliveries() {
        let mut inbox = Inbox::default();
        inbox.new_session();
        assert_eq!(inbox.got(1, 1), (Verdict::New, false));
        assert_eq!(inbox.got(1, 2), (Verdict::New, false));
        assert_eq!(inbox.got(1, 2), (Verdict::Duplicate, false));
        // Another sender has its own sequence.
        assert_eq!(inbox.got(2, 1), (Verdict::New, false));
        // A later seq, then an earlier new one: reordered.
        assert_eq!(inbox.got(1, 4), (Verdict::New, false));
        assert_eq!(inbox.got(1, 3), (Verdict::New, true));
        // A new session gets the unacknowledged ones again, in order: not duplicates.
        inbox.new_session();
        assert_eq!(inbox.got(1, 3), (Verdict::Redelivered, false));
        assert_eq!(inbox.got(1, 4), (Verdict::Redelivered, false));
        assert_eq!(inbox.got(1, 5), (Verdict::New, false));
        assert!(inbox.has(1, 5) && !inbox.has(1, 6));
    }
}
