//! The write half of a client's socket, shared by its connection's writer task and the code
//! that pushes a batch of frames into its session. After such a batch (a room message's
//! fan-out, a batch of frames from another node), the pusher writes each recipient's new frames
//! itself, one non-blocking send under the session's lock (`session::Flushes`), if that
//! recipient's writer is idle, instead of waking the writer: a fan-out to 500 members costs 500
//! socket writes, not also 500 task wake-ups, each a place at the back of the runtime's queue.
//! What cannot go out at once (the socket's buffer is full, the read half holds the socket) stays
//! in the sink, and the writer is woken to finish it.
//!
//! Order: every write of session frames, by the writer or a pusher, happens under the session's
//! lock and in frame-number order (the attachment's cursor), so frames reach the socket in the
//! order they were numbered whoever writes them.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use axum::extract::ws::{Message as WsMessage, Utf8Bytes, WebSocket};
use futures::stream::SplitSink;
use futures::Sink;

type WsSink = SplitSink<WebSocket, WsMessage>;

/// The shared write half of one connection. A cheap `Clone` handle; pushers leave it alone
/// until the writer has sent the Welcome ([`Outlet::open`]) and once it has taken the socket
/// back to close it ([`Outlet::take`]).
#[derive(Clone, Default, Debug)]
pub struct Outlet {
    inner: Arc<Mutex<Slot>>,
}

#[derive(Default)]
struct Slot {
    sink: Option<WsSink>,
    /// The Welcome is on the socket: pushers may write.
    open: bool,
    /// Session frames up to this number are in the sink but not flushed (a write that could
    /// not complete): only the writer writes until it has flushed them.
    unflushed: Option<u64>,
    /// The writer's last write has not completed and its task waits for the socket: a
    /// pusher's write would replace it as the one woken when the socket drains.
    writer_waiting: bool,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("socket", &self.sink.is_some())
            .field("open", &self.open)
            .field("unflushed", &self.unflushed)
            .field("writer_waiting", &self.writer_waiting)
            .finish()
    }
}

/// How a pusher's write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direct {
    /// Every frame taken is on the socket, up to this number.
    Written(u64),
    /// Frames were taken into the sink but are not on the socket yet: the writer must be
    /// woken to flush them.
    Queued,
    /// Nothing taken (no socket yet or any more, or the writer is busy with it): the writer
    /// must be woken.
    NotNow,
    /// The socket failed: the connection is to be closed.
    Failed,
}

/// How the writer's turn at the socket went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything taken is on the socket, up to this frame number (if any frame was taken).
    Done(Option<u64>),
    /// The socket failed.
    Failed,
}

impl Outlet {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands the socket to the writer (the outlet holds it from the start, so that the
    /// writer's task does not keep a second place for it).
    pub fn install(&self, sink: WsSink) {
        self.lock().sink = Some(sink);
    }

    /// The Welcome is on the socket: pushers may write from now on.
    pub fn open(&self) {
        self.lock().open = true;
    }

    /// Takes the socket back to close it; pushers write no more. Returns it and the last
    /// frame number left unflushed in it, if any.
    pub fn take(&self) -> Option<(WsSink, Option<u64>)> {
        let mut slot = self.lock();
        let sink = slot.sink.take()?;
        Some((sink, slot.unflushed.take()))
    }

    /// A pusher's write of `frames` (the next ones after everything written; the iterator
    /// claims a frame as it yields it). Never waits: one poll with a waker that does nothing,
    /// the writer being woken for anything left over.
    pub fn write_direct(&self, frames: &mut dyn Iterator<Item = (u64, Utf8Bytes)>) -> Direct {
        let mut slot = self.lock();
        if !slot.open || slot.writer_waiting || slot.unflushed.is_some() || slot.sink.is_none() {
            return Direct::NotNow;
        }
        // Outside tokio's cooperative budget: a fan-out writes hundreds of sockets in one poll
        // of its task, and past the budget (128 socket operations) every write would be
        // refused and left to the writers, which is what this is here to avoid. The fan-out
        // itself is bounded (`--max-room-members`, the batch from another node).
        let mut write =
            tokio::task::unconstrained(std::future::poll_fn(|cx| slot.poll_write(cx, frames)));
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        match Pin::new(&mut write).poll(&mut cx) {
            Poll::Ready(Flushed::Done(Some(n))) => Direct::Written(n),
            Poll::Ready(Flushed::Done(None)) => Direct::NotNow,
            Poll::Ready(Flushed::Failed) => Direct::Failed,
            Poll::Pending => {
                drop(write);
                if slot.unflushed.is_some() {
                    Direct::Queued
                } else {
                    Direct::NotNow
                }
            }
        }
    }

    /// The writer's turn: flushes what is in the sink, feeding first the `frames` it can take
    /// (as [`Outlet::write_direct`]). `Pending`: the socket is full, the task is woken when it
    /// drains; call again.
    pub fn poll_write(
        &self,
        cx: &mut Context<'_>,
        frames: &mut dyn Iterator<Item = (u64, Utf8Bytes)>,
    ) -> Poll<Flushed> {
        let mut slot = self.lock();
        let r = slot.poll_write(cx, frames);
        slot.writer_waiting = r.is_pending();
        r
    }

    /// The writer sends a frame outside the session's stream (a ping, a pong).
    pub fn poll_send(&self, cx: &mut Context<'_>, msg: &mut Option<WsMessage>) -> Poll<bool> {
        let mut slot = self.lock();
        let slot = &mut *slot;
        let Some(sink) = slot.sink.as_mut() else {
            return Poll::Ready(false);
        };
        let mut sink = Pin::new(sink);
        if msg.is_some() {
            match sink.as_mut().poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(false),
                Poll::Pending => {
                    slot.writer_waiting = true;
                    return Poll::Pending;
                }
            }
            if let Some(m) = msg.take() {
                if sink.as_mut().start_send(m).is_err() {
                    return Poll::Ready(false);
                }
            }
        }
        match sink.poll_flush(cx) {
            Poll::Ready(r) => {
                slot.writer_waiting = false;
                Poll::Ready(r.is_ok())
            }
            Poll::Pending => {
                slot.writer_waiting = true;
                Poll::Pending
            }
        }
    }
}

impl Slot {
    /// Feeds the frames the sink takes now, then flushes.
    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        frames: &mut dyn Iterator<Item = (u64, Utf8Bytes)>,
    ) -> Poll<Flushed> {
        let Some(sink) = self.sink.as_mut() else {
            return Poll::Ready(Flushed::Failed);
        };
        let mut sink = Pin::new(sink);
        loop {
            match sink.as_mut().poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Flushed::Failed),
                Poll::Pending => break,
            }
            let Some((n, frame)) = frames.next() else {
                break;
            };
            if sink.as_mut().start_send(WsMessage::Text(frame)).is_err() {
                return Poll::Ready(Flushed::Failed);
            }
            self.unflushed = Some(n);
        }
        match sink.poll_flush(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Flushed::Done(self.unflushed.take())),
            Poll::Ready(Err(_)) => Poll::Ready(Flushed::Failed),
            Poll::Pending => Poll::Pending,
        }
    }
}
