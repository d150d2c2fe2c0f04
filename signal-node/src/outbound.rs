//! The bounded outbound queue of one connection (messages and bytes) and the handle that
//! closes the connection with a code.
//!
//! Producers (the local relay, the gRPC `Deliver` handler, the connection itself for error
//! replies) never wait on a slow socket: `push` either queues at once or fails with `Full`, and
//! a full queue closes that connection with 1013 (try again later). Memory per connection is
//! thus at most `outbound_queue` messages and about `outbound_queue_bytes` bytes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;
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

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue is full: the connection is being closed (1013).
    Full,
    /// The connection is already closing.
    Closed,
}

/// How and why a connection is being closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
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

/// Producer side of a connection's outbound queue. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Outbound {
    tx: mpsc::Sender<Utf8Bytes>,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    closer: Closer,
}

/// Consumer side, owned by the connection's writer.
#[derive(Debug)]
pub struct OutboundRx {
    rx: mpsc::Receiver<Utf8Bytes>,
    bytes: Arc<AtomicUsize>,
}

/// A queue of at most `max_messages` frames and about `max_bytes` bytes.
pub fn queue(max_messages: usize, max_bytes: usize, closer: Closer) -> (Outbound, OutboundRx) {
    let (tx, rx) = mpsc::channel(max_messages.max(1));
    let bytes = Arc::new(AtomicUsize::new(0));
    (
        Outbound {
            tx,
            bytes: bytes.clone(),
            max_bytes,
            closer,
        },
        OutboundRx { rx, bytes },
    )
}

impl Outbound {
    /// Queues a text frame without waiting. On `Full` the connection is closed with 1013.
    pub fn push(&self, text: impl Into<Utf8Bytes>) -> Result<(), PushError> {
        let text: Utf8Bytes = text.into();
        if self.closer.is_closed() {
            return Err(PushError::Closed);
        }
        let len = text.len();
        let before = self.bytes.fetch_add(len, Ordering::AcqRel);
        // One frame larger than the byte budget still passes when nothing else is queued.
        if before > 0 && before + len > self.max_bytes {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(self.overflow());
        }
        match self.tx.try_send(text) {
            Ok(()) => {
                metrics::gauge!("signal_outbound_queued_bytes").increment(len as f64);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.bytes.fetch_sub(len, Ordering::AcqRel);
                Err(self.overflow())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.bytes.fetch_sub(len, Ordering::AcqRel);
                Err(PushError::Closed)
            }
        }
    }

    fn overflow(&self) -> PushError {
        if self.closer.close(CLOSE_SLOW, "outbound queue full") {
            metrics::counter!("signal_slow_consumer_closes_total").increment(1);
        }
        PushError::Full
    }

    pub fn closer(&self) -> &Closer {
        &self.closer
    }
}

impl OutboundRx {
    /// Next queued frame; `None` when every producer is gone.
    pub async fn recv(&mut self) -> Option<Utf8Bytes> {
        let text = self.rx.recv().await?;
        self.bytes.fetch_sub(text.len(), Ordering::AcqRel);
        metrics::gauge!("signal_outbound_queued_bytes").decrement(text.len() as f64);
        Some(text)
    }
}

impl OutboundRx {
    /// Refuses every further push (`PushError::Closed`); what is queued stays receivable.
    pub fn close(&mut self) {
        self.rx.close();
    }

    /// A queued frame if there is one, without waiting.
    pub fn try_recv(&mut self) -> Option<Utf8Bytes> {
        let text = self.rx.try_recv().ok()?;
        self.bytes.fetch_sub(text.len(), Ordering::AcqRel);
        metrics::gauge!("signal_outbound_queued_bytes").decrement(text.len() as f64);
        Some(text)
    }
}

impl Drop for OutboundRx {
    fn drop(&mut self) {
        self.rx.close();
        let left = self.bytes.swap(0, Ordering::AcqRel);
        metrics::gauge!("signal_outbound_queued_bytes").decrement(left as f64);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bounded_by_messages_and_bytes() {
        let closer = Closer::default();
        let (tx, _rx) = queue(2, 1000, closer.clone());
        tx.push("a").unwrap();
        tx.push("b").unwrap();
        assert_eq!(tx.push("c"), Err(PushError::Full));
        assert_eq!(closer.reason().unwrap().code, CLOSE_SLOW);
        assert_eq!(tx.push("d"), Err(PushError::Closed));

        let closer = Closer::default();
        let (tx, _rx) = queue(100, 10, closer.clone());
        tx.push("x".repeat(50)).unwrap(); // alone, larger than the budget: passes
        assert_eq!(tx.push("y"), Err(PushError::Full));
    }

    #[tokio::test]
    async fn receiving_frees_bytes() {
        let (tx, mut rx) = queue(100, 10, Closer::default());
        tx.push("12345678").unwrap();
        assert_eq!(rx.recv().await.unwrap(), "12345678");
        tx.push("12345678").unwrap();
    }
}
