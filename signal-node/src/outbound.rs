//! How a connection is closed: the close codes, the handle that closes a connection once
//! with a code, and which closes keep the session for a resume. (The outbound queue itself is
//! the session's ring: `session.rs`.)

use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

/// Close code of a connection whose outbound queue overflowed (the client does not read fast
/// enough): 1013 "try again later".
pub const CLOSE_SLOW: u16 = 1013;
/// Close code when the node shuts down without a drain window.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code of a draining node: go back to central for a new endpoint.
pub const CLOSE_DRAINING: u16 = 1012;
/// Close code of a connection replaced by a newer one of the same user.
pub const CLOSE_REPLACED: u16 = 4409;
/// Close code of a frame above the hard cap.
pub const CLOSE_TOO_LARGE: u16 = 1009;
/// A text frame that is not UTF-8 (the WebSocket layer cannot go on after it).
pub const CLOSE_BAD_DATA: u16 = 1007;
/// A WebSocket protocol violation.
pub const CLOSE_PROTOCOL: u16 = 1002;
/// Normal closure (also used for the idle timeout).
pub const CLOSE_NORMAL: u16 = 1000;
/// Disconnected by the application backend: clients do not reconnect.
pub const CLOSE_APP_DISCONNECT: u16 = 4403;

/// The reason recorded when the client sent a close frame: the session ends.
pub const REASON_CLIENT_CLOSED: &str = "client closed";

/// Why a frame could not be queued on a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// No room: the reader is too slow and its session's buffer is full.
    Full,
    /// The session has ended.
    Closed,
}

/// How and why a connection is being closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

impl CloseReason {
    /// Whether the session outlives a connection closed this way (contract section 5): yes
    /// unless the client closed it, the application disconnected it, or the node stops
    /// without a drain.
    pub fn keeps_session(&self) -> bool {
        !(self.reason == REASON_CLIENT_CLOSED
            || self.code == CLOSE_APP_DISCONNECT
            || self.code == CLOSE_GOING_AWAY)
    }
}

/// Closes a connection once; the first reason wins.
#[derive(Clone, Debug, Default)]
pub struct Closer {
    token: CancellationToken,
    reason: Arc<Mutex<Option<CloseReason>>>,
}

impl Closer {
    /// Asks the connection to close with `code`; returns false if it was already closing.
    pub fn close(&self, code: u16, reason: &'static str) -> bool {
        let mut r = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
        if r.is_some() {
            return false;
        }
        *r = Some(CloseReason { code, reason });
        drop(r);
        self.token.cancel();
        true
    }

    pub fn reason(&self) -> Option<CloseReason> {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn is_closed(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when `close` has been called.
    pub async fn closed(&self) {
        self.token.cancelled().await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn first_reason_wins() {
        let c = Closer::default();
        assert!(c.close(CLOSE_SLOW, "slow"));
        assert!(!c.close(CLOSE_NORMAL, "later"));
        assert_eq!(c.reason().unwrap().code, CLOSE_SLOW);
        assert!(c.is_closed());
        assert!(!CloseReason {
            code: CLOSE_NORMAL,
            reason: REASON_CLIENT_CLOSED
        }
        .keeps_session());
        assert!(CloseReason {
            code: CLOSE_DRAINING,
            reason: "node draining"
        }
        .keeps_session());
    }
}
