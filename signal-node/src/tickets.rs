//! The tickets this node has accepted, remembered until they expire so that each is used
//! once: a second upgrade with the same ticket is refused (401), also within its lifetime.
//!
//! Bounded (`--max-used-tickets`): when full of unexpired tickets, new tickets are refused
//! (503, retry later) rather than an old one forgotten, which would make it replayable. The
//! set is in memory: after a node restart, a ticket used before it could be used once more
//! until it expires (at most the ticket lifetime, 60 s by default).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::{Mutex, PoisonError};

/// Default `--max-used-tickets`: 1000 logins a second to one node over a 60 s lifetime
/// fit four times over (about 100 bytes each).
pub const DEFAULT_MAX_USED_TICKETS: usize = 262_144;

/// Why a ticket cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UseError {
    #[error("ticket already used: ask central for a new one")]
    Replayed,
    #[error("too many tickets in use (--max-used-tickets {0}): retry later")]
    Full(usize),
}

#[derive(Debug, Default)]
struct State {
    used: HashSet<Box<str>>,
    /// (expiry unix seconds, signature), soonest first.
    expiry: BinaryHeap<Reverse<(u64, Box<str>)>>,
}

/// The used-ticket set. Shared by every upgrade of the node.
#[derive(Debug)]
pub struct UsedTickets {
    max: usize,
    state: Mutex<State>,
}

impl UsedTickets {
    pub fn new(max: usize) -> Self {
        UsedTickets {
            max: max.max(1),
            state: Mutex::default(),
        }
    }

    /// Marks the ticket with `signature` (see `signal_proto::ticket::ticket_signature`),
    /// valid until `expires_at`, as used at `now` (unix seconds). Forgets the expired ones
    /// first.
    pub fn use_once(&self, signature: &str, expires_at: u64, now: u64) -> Result<(), UseError> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let st = &mut *st;
        while let Some(Reverse((exp, _))) = st.expiry.peek() {
            if *exp > now {
                break;
            }
            if let Some(Reverse((_, sig))) = st.expiry.pop() {
                st.used.remove(&sig);
            }
        }
        if st.used.contains(signature) {
            metrics::counter!("signal_tickets_refused_total", "reason" => "replayed").increment(1);
            return Err(UseError::Replayed);
        }
        if st.used.len() >= self.max {
            metrics::counter!("signal_tickets_refused_total", "reason" => "full").increment(1);
            return Err(UseError::Full(self.max));
        }
        let sig: Box<str> = signature.into();
        st.used.insert(sig.clone());
        st.expiry.push(Reverse((expires_at, sig)));
        metrics::gauge!("signal_tickets_used").set(st.used.len() as f64);
        Ok(())
    }

    /// Tickets remembered now.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .used
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_until_expiry_and_bounded() {
        let t = UsedTickets::new(2);
        assert_eq!(t.use_once("a", 100, 10), Ok(()));
        assert_eq!(t.use_once("a", 100, 11), Err(UseError::Replayed));
        assert_eq!(t.use_once("b", 50, 11), Ok(()));
        // Full of unexpired tickets: refuse, do not forget.
        assert_eq!(t.use_once("c", 100, 12), Err(UseError::Full(2)));
        assert_eq!(t.use_once("a", 100, 12), Err(UseError::Replayed));
        // b expired at 50: room again.
        assert_eq!(t.use_once("c", 100, 50), Ok(()));
        assert_eq!(t.len(), 2);
        assert_eq!(t.use_once("a", 100, 99), Err(UseError::Replayed));
        // Everything expired.
        assert_eq!(t.use_once("d", 200, 100), Ok(()));
        assert_eq!(t.len(), 1);
    }
}
