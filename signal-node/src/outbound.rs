//! How a connection is closed: the close codes, the handle that closes a connection once
//! with a code, and which closes keep the session for a resume. (The outbound queue itself is
//! the session's ring: `session.rs`.)

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

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
    inner: Arc<CloserInner>,
}

#[derive(Debug, Default)]
struct CloserInner {
    /// Set once, by the first `close`; read without a lock.
    reason: OnceLock<CloseReason>,
    /// Wakes the [`Closed`] futures after `reason` is set.
    closing: Notify,
}

impl Closer {
    /// Asks the connection to close with `code`; returns false if it was already closing.
    pub fn close(&self, code: u16, reason: &'static str) -> bool {
        if self.inner.reason.set(CloseReason { code, reason }).is_err() {
            return false;
        }
        self.inner.closing.notify_waiters();
        true
    }

    pub fn reason(&self) -> Option<CloseReason> {
        self.inner.reason.get().cloned()
    }

    pub fn is_closed(&self) -> bool {
        self.inner.reason.get().is_some()
    }

    /// Resolves when `close` has been called. Made once per loop and polled with every frame:
    /// a poll is one atomic load while its task's waker stays registered.
    pub fn closed(&self) -> Closed<'_> {
        Closed {
            closer: self,
            notified: self.inner.closing.notified(),
            registered: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Closer::closed`].
    pub struct Closed<'a> {
        closer: &'a Closer,
        #[pin]
        notified: Notified<'a>,
        // The waker the `notified` holds (a poll with the same one need not touch the
        // `Notify`'s lock).
        registered: Option<Waker>,
    }
}

impl Future for Closed<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.closer.is_closed() {
            return Poll::Ready(());
        }
        // `close` sets the reason before it wakes the registered waiters.
        if this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        match this.notified.poll(cx) {
            Poll::Ready(()) => Poll::Ready(()),
            Poll::Pending => {
                *this.registered = Some(cx.waker().clone());
                Poll::Pending
            }
        }
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

    #[tokio::test]
    async fn closed_wakes_every_waiter_once_and_stays_ready() {
        let c = Closer::default();
        let (ready_tx, mut ready) = tokio::sync::mpsc::channel(2);
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let c = c.clone();
                let ready_tx = ready_tx.clone();
                tokio::spawn(async move {
                    let closed = c.closed();
                    tokio::pin!(closed);
                    // Polled again and again (as the loops do with every frame) before the close.
                    for _ in 0..3 {
                        assert!(futures::poll!(closed.as_mut()).is_pending());
                        tokio::task::yield_now().await;
                    }
                    ready_tx.send(()).await.unwrap();
                    closed.await;
                    c.reason().unwrap().code
                })
            })
            .collect();
        for _ in 0..2 {
            ready.recv().await.unwrap();
        }
        assert!(c.close(CLOSE_DRAINING, "node draining"));
        for w in waiters {
            let code = tokio::time::timeout(std::time::Duration::from_secs(5), w)
                .await
                .expect("woken by the close")
                .unwrap();
            assert_eq!(code, CLOSE_DRAINING);
        }
        // Made after the close: ready at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), c.closed())
            .await
            .expect("ready after the close");
    }
}
