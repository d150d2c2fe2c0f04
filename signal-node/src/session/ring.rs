//! The replay ring of one session: every numbered frame not yet acknowledged, in order, bounded
//! by frames and bytes. It is also the connection's outbound queue: the writer reads from it
//! with a cursor, so a frame exists once in memory whether it is queued, written or kept for
//! a resume.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use signal_proto::UserId;

use crate::mailbox::EntryId;

/// Who is owed an answer if a frame is never written to the recipient's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A frame the node itself originated (server errors, notices): nobody to tell.
    Node,
    /// A relayed ROAP message: its sender gets Error OFFLINE should the session end first.
    /// Shared by every frame of one ROAP session (no copy of the ids per frame).
    Roap(Arc<RoapSender>),
    /// A live chat message, stored in the recipient's mailbox under this entry (nobody to
    /// tell: it stays there until acknowledged). The entry lets the session deliver it once
    /// whether it comes live or from the push at connect.
    Mail(EntryId),
}

/// Who sent a relayed ROAP message, in which ROAP session.
#[derive(Debug, PartialEq, Eq)]
pub struct RoapSender {
    pub sender: UserId,
    pub session_id: String,
}

impl Origin {
    pub fn roap(sender: UserId, session_id: String) -> Origin {
        Origin::Roap(Arc::new(RoapSender { sender, session_id }))
    }
}

/// One numbered frame.
#[derive(Debug, Clone)]
pub struct Entry {
    pub n: u64,
    /// The JSON text, `n` included.
    pub frame: Utf8Bytes,
    pub origin: Origin,
}

/// Bounds of a ring (`--resume-buffer-frames`, `--resume-buffer-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLimits {
    pub frames: usize,
    pub bytes: usize,
}

/// Frames `first()..next_n` of a session.
#[derive(Debug)]
pub struct Ring {
    entries: VecDeque<Entry>,
    bytes: usize,
    next_n: u64,
    limits: RingLimits,
}

impl Ring {
    /// An empty ring whose next frame is number `next_n` (1 for a new session).
    pub fn new(next_n: u64, limits: RingLimits) -> Ring {
        Ring {
            entries: VecDeque::new(),
            bytes: 0,
            next_n,
            limits,
        }
    }

    /// The number the next frame gets.
    pub fn next_n(&self) -> u64 {
        self.next_n
    }

    /// The highest number assigned so far (0 if none).
    pub fn last_n(&self) -> u64 {
        self.next_n - 1
    }

    /// Number of the oldest buffered frame (`next_n` when empty).
    pub fn first_n(&self) -> u64 {
        self.entries.front().map_or(self.next_n, |e| e.n)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether one more frame of `len` bytes fits once every frame numbered `<= droppable`
    /// may be dropped to make room (a frame larger than the byte bound fits alone).
    pub fn fits(&self, len: usize, droppable: u64) -> bool {
        let mut frames = self.entries.len();
        let mut bytes = self.bytes;
        for e in &self.entries {
            if frames < self.limits.frames && (bytes == 0 || bytes + len <= self.limits.bytes) {
                break;
            }
            if e.n > droppable {
                break;
            }
            frames -= 1;
            bytes -= e.frame.len();
        }
        frames < self.limits.frames && (bytes == 0 || bytes + len <= self.limits.bytes)
    }

    /// Appends a frame already carrying number [`Ring::next_n`].
    pub fn push(&mut self, frame: Utf8Bytes, origin: Origin) -> u64 {
        let n = self.next_n;
        self.next_n += 1;
        self.bytes += frame.len();
        self.entries.push_back(Entry { n, frame, origin });
        n
    }

    /// Appends a frame with its original number (a handed-over session). Numbers must follow
    /// on; a frame out of sequence is refused.
    pub fn push_numbered(&mut self, entry: Entry) -> bool {
        if entry.n != self.next_n {
            return false;
        }
        self.next_n += 1;
        self.bytes += entry.frame.len();
        self.entries.push_back(entry);
        true
    }

    /// Drops the oldest frames numbered `<= droppable` while the ring is over its bounds;
    /// returns how many were dropped.
    pub fn trim(&mut self, droppable: u64) -> usize {
        let mut dropped = 0;
        while self.entries.len() > self.limits.frames
            || (self.bytes > self.limits.bytes && self.entries.len() > 1)
        {
            match self.entries.front() {
                Some(e) if e.n <= droppable => {
                    self.bytes -= e.frame.len();
                    self.entries.pop_front();
                    dropped += 1;
                }
                _ => break,
            }
        }
        dropped
    }

    /// Whether the ring is over its bounds.
    pub fn over(&self) -> bool {
        self.entries.len() > self.limits.frames
            || (self.bytes > self.limits.bytes && self.entries.len() > 1)
    }

    /// Drops every frame numbered `<= n` (a cumulative acknowledgement).
    pub fn ack(&mut self, n: u64) {
        while let Some(e) = self.entries.front() {
            if e.n > n {
                break;
            }
            self.bytes -= e.frame.len();
            self.entries.pop_front();
        }
        if self.entries.is_empty() {
            self.entries.shrink_to(8);
        }
    }

    /// The frame numbered `n`, if buffered.
    pub fn get(&self, n: u64) -> Option<&Entry> {
        let first = self.first_n();
        if n < first {
            return None;
        }
        self.entries.get(usize::try_from(n - first).ok()?)
    }

    /// Every frame numbered above `n`.
    pub fn after(&self, n: u64) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.n > n)
    }

    /// Removes every frame.
    pub fn drain_all(&mut self) -> Vec<Entry> {
        self.bytes = 0;
        self.entries.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ring(frames: usize, bytes: usize) -> Ring {
        Ring::new(1, RingLimits { frames, bytes })
    }

    #[test]
    fn numbers_ack_and_get() {
        let mut r = ring(10, 1000);
        for i in 0..5 {
            assert_eq!(r.push(format!("f{i}").into(), Origin::Node), i + 1);
        }
        assert_eq!((r.first_n(), r.last_n(), r.len()), (1, 5, 5));
        assert_eq!(r.get(3).unwrap().frame.as_str(), "f2");
        r.ack(2);
        assert_eq!(r.first_n(), 3);
        assert!(r.get(2).is_none());
        assert_eq!(r.after(3).map(|e| e.n).collect::<Vec<_>>(), vec![4, 5]);
        r.ack(99);
        assert!(r.is_empty());
        assert_eq!(r.first_n(), 6);
        assert_eq!(r.bytes(), 0);
    }

    #[test]
    fn bounds_drop_only_what_may_be_dropped() {
        let mut r = ring(3, 1000);
        for _ in 0..3 {
            r.push("x".into(), Origin::Node);
        }
        // Nothing written yet: no room.
        assert!(!r.fits(1, 0));
        // Frame 1 written: it can make room.
        assert!(r.fits(1, 1));
        r.push("y".into(), Origin::Node);
        assert!(r.over());
        assert_eq!(r.trim(0), 0);
        assert_eq!(r.trim(1), 1);
        assert!(!r.over());
        assert_eq!(r.first_n(), 2);

        let mut r = ring(100, 10);
        r.push("0123456789abc".into(), Origin::Node); // alone, larger than the bound
        assert!(!r.fits(1, 0));
        assert!(r.fits(1, 1));
    }

    #[test]
    fn handed_over_frames_keep_their_numbers() {
        let mut r = Ring::new(
            7,
            RingLimits {
                frames: 10,
                bytes: 100,
            },
        );
        let e = |n| Entry {
            n,
            frame: "f".into(),
            origin: Origin::Node,
        };
        assert!(r.push_numbered(e(7)));
        assert!(!r.push_numbered(e(9)));
        assert!(r.push_numbered(e(8)));
        assert_eq!(r.push("g".into(), Origin::Node), 9);
    }
}
