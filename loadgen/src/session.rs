//! One simulated user's session (contract section 5): the resume token, the highest frame
//! number `n` seen, what was acknowledged, and the frames found missing, duplicated or late.
//! It outlives the user's connections: a reconnect resumes from here.

use std::collections::BTreeSet;

use signal_proto::roap::FRAME_NUMBER_FIELD;
use signal_proto::Message;

/// Acknowledge at least every this many frames (and once per call setup).
pub const ACK_EVERY: u64 = 64;
/// Missing frame numbers remembered per session (to tell a late frame from a duplicate);
/// older gaps past this are forgotten (they stay counted as lost).
const MAX_MISSING: usize = 4096;

/// The frame number the node stamped on `m` (`None` for Pong and for nodes without sessions).
pub fn frame_number(m: &Message) -> Option<u64> {
    let extra = m.extra()?;
    extra
        .get(FRAME_NUMBER_FIELD)
        .and_then(serde_json::Value::as_u64)
}

/// What a numbered frame is, relative to what came before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The next one (or one after a gap: the frames in between are counted lost).
    New,
    /// A number found missing before, arriving late (counted reordered, no longer lost).
    Late,
    /// A number already seen: dropped.
    Duplicate,
}

/// What a reconnection gave, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Welcomed {
    /// The first connection of the user.
    First,
    /// The old session continues (`resumed:true`).
    Resumed,
    /// A reconnection that started a new session (`resumed:false`, or the node has none).
    Fresh,
}

/// Frame counters of one session (summed into the run's stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub frames: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
}

#[derive(Debug, Default)]
pub struct Session {
    token: Option<String>,
    /// Highest `n` seen in this session.
    last: u64,
    /// Highest `n` acknowledged to the node.
    acked: u64,
    missing: BTreeSet<u64>,
    pub counts: Counts,
}

impl Session {
    /// `?resume=<token>&last=<n>` for the next connection, if there is a session to resume.
    pub fn resume(&self) -> Option<(&str, u64)> {
        self.token.as_deref().map(|t| (t, self.last))
    }

    /// A Welcome arrived with `token` (`None`: a node without sessions) and `resumed`.
    pub fn welcomed(&mut self, token: Option<String>, resumed: bool) -> Welcomed {
        let first = self.token.is_none() && self.last == 0 && self.acked == 0;
        // `resumed:true` continues the numbering (the token is the same by the contract; a
        // node that hands out a new one is believed, and the new one used from then on).
        let continued = resumed && self.token.is_some();
        if continued && token != self.token {
            tracing::debug!("resumed with a different session token");
        }
        if !continued {
            // A new numbering starts; gaps of the old session stay counted as lost.
            self.last = 0;
            self.acked = 0;
            self.missing.clear();
        }
        self.token = token;
        match (first, continued) {
            (_, true) => Welcomed::Resumed,
            (true, false) => Welcomed::First,
            (false, false) => Welcomed::Fresh,
        }
    }

    /// Classifies frame number `n` and updates the counters.
    pub fn seen(&mut self, n: u64) -> Seen {
        if n > self.last {
            let gap = n - self.last - 1;
            if gap > 0 {
                self.counts.lost += gap;
                for missing in (self.last + 1)..n {
                    if self.missing.len() >= MAX_MISSING {
                        self.missing.pop_first();
                    }
                    self.missing.insert(missing);
                }
            }
            self.last = n;
            self.counts.frames += 1;
            Seen::New
        } else if self.missing.remove(&n) {
            self.counts.lost = self.counts.lost.saturating_sub(1);
            self.counts.reordered += 1;
            self.counts.frames += 1;
            Seen::Late
        } else {
            self.counts.duplicated += 1;
            Seen::Duplicate
        }
    }

    /// The number to acknowledge now, if any (`force`: once per setup; otherwise only when
    /// [`ACK_EVERY`] frames are unacknowledged). The caller sends it, then [`acked`](Self::acked).
    pub fn ack_due(&self, force: bool) -> Option<u64> {
        let behind = self.last.saturating_sub(self.acked);
        (behind > 0 && (force || behind >= ACK_EVERY)).then_some(self.last)
    }

    pub fn acked(&mut self, n: u64) {
        self.acked = self.acked.max(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_duplicates_and_late_frames() {
        let mut s = Session::default();
        assert_eq!(s.welcomed(Some("t1".into()), false), Welcomed::First);
        assert_eq!(s.seen(1), Seen::New);
        assert_eq!(s.seen(2), Seen::New);
        assert_eq!(s.seen(2), Seen::Duplicate);
        assert_eq!(s.seen(5), Seen::New);
        assert_eq!(s.counts.lost, 2);
        assert_eq!(s.seen(3), Seen::Late);
        assert_eq!(s.seen(3), Seen::Duplicate);
        assert_eq!(
            s.counts,
            Counts {
                frames: 4,
                lost: 1,
                duplicated: 2,
                reordered: 1
            }
        );
        assert_eq!(s.resume(), Some(("t1", 5)));
    }

    #[test]
    fn acks_once_per_setup_or_every_64_frames() {
        let mut s = Session::default();
        s.welcomed(Some("t".into()), false);
        assert_eq!(s.ack_due(true), None);
        for n in 1..ACK_EVERY {
            s.seen(n);
        }
        assert_eq!(s.ack_due(false), None);
        assert_eq!(s.ack_due(true), Some(ACK_EVERY - 1));
        s.seen(ACK_EVERY);
        assert_eq!(s.ack_due(false), Some(ACK_EVERY));
        s.acked(ACK_EVERY);
        assert_eq!(s.ack_due(true), None);
    }

    #[test]
    fn a_refused_resume_starts_a_new_numbering() {
        let mut s = Session::default();
        s.welcomed(Some("old".into()), false);
        s.seen(1);
        s.seen(2);
        assert_eq!(s.welcomed(Some("old".into()), true), Welcomed::Resumed);
        assert_eq!(s.seen(3), Seen::New);
        assert_eq!(s.welcomed(Some("new".into()), false), Welcomed::Fresh);
        assert_eq!(s.resume(), Some(("new", 0)));
        assert_eq!(s.seen(1), Seen::New);
        assert_eq!(s.counts.duplicated, 0);
    }

    #[test]
    fn the_frame_number_is_read_from_the_wire() {
        let m =
            Message::parse(r#"{"type":"Ok","to":"b","from":"a","sessionID":"s","n":42}"#).unwrap();
        assert_eq!(frame_number(&m), Some(42));
        assert_eq!(frame_number(&Message::Pong), None);
    }
}
