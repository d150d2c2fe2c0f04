//! Who writes a session's frames to its connection's socket, and how (see `outlet`): the
//! writer's turn ([`Session::poll_write`]), a pusher's write after a batch ([`Flushes`],
//! [`Session::flush`]), and the claim of the frames after the attachment's cursor that both
//! make under the session's lock, which keeps the socket in frame-number order whoever writes.

use std::task::{Context, Poll};

use axum::extract::ws::Utf8Bytes;

use super::{Attachment, Origin, Phase, Ring, Session, State};
use crate::outbound::{PushError, CLOSE_NORMAL};
use crate::outlet::{Direct, Flushed, Outlet};
use crate::telemetry::WriteMetrics;

/// Frames written to a socket with one flush at most, by its writer or a pusher (bounds the
/// sink's buffer: 64 frames of at most `--max-message-bytes` each, past tungstenite's own write
/// buffer it writes out).
pub const WRITE_BATCH: usize = 64;

impl Session {
    /// Resolves when a frame was queued for the writer to write (or the session moved on).
    pub fn woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.wake.notified()
    }

    /// The highest frame number written to a socket.
    pub fn written(&self) -> u64 {
        self.lock().written
    }

    /// The writer of connection `conn` writes the frames queued and not yet written (at most
    /// [`WRITE_BATCH`] per call, with one flush), and finishes what a producer left
    /// unflushed. Call again on `More`; `Pending` when the socket cannot take more (the task
    /// is woken when it can).
    pub fn poll_write(&self, conn: u64, cx: &mut Context<'_>) -> Poll<Turn> {
        let mut guard = self.lock();
        let State {
            ring,
            phase,
            written,
            ..
        } = &mut *guard;
        let Phase::Attached(a) = phase else {
            return Poll::Ready(Turn::Gone);
        };
        if a.conn != conn {
            return Poll::Ready(Turn::Gone);
        }
        let (r, fed) = a.write_next(ring, |outlet, frames| outlet.poll_write(cx, frames));
        if fed > 0 {
            WriteMetrics::get().by_writer.increment(fed);
        }
        match r {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Flushed::Failed) => Poll::Ready(Turn::Failed),
            Poll::Ready(Flushed::Done(upto)) => {
                if let Some(u) = upto {
                    *written = (*written).max(u);
                }
                if a.cursor < ring.last_n() {
                    Poll::Ready(Turn::More)
                } else {
                    Poll::Ready(Turn::Idle)
                }
            }
        }
    }

    /// Writes the frames queued and not yet written to the attached connection's socket
    /// (at most `WRITE_BATCH`, one flush) if its writer is idle, else wakes the writer.
    pub fn flush(&self) {
        let mut guard = self.lock();
        let wake = Self::write_through(&mut guard);
        drop(guard);
        if wake {
            self.inner.wake.notify_one();
        }
    }

    /// [`Session::flush`] under the lock: returns whether the writer must be woken.
    fn write_through(st: &mut State) -> bool {
        let State {
            ring,
            phase,
            written,
            ..
        } = st;
        let Phase::Attached(a) = phase else {
            return false;
        };
        if a.closer.is_closed() || a.cursor >= ring.last_n() {
            // A closing connection's writer writes what is left itself.
            return false;
        }
        let (direct, fed) = a.write_next(ring, |outlet, frames| outlet.write_direct(frames));
        if fed > 0 {
            WriteMetrics::get().by_producer.increment(fed);
        }
        match direct {
            Direct::Written(upto) => {
                *written = (*written).max(upto);
                a.cursor < ring.last_n()
            }
            Direct::Queued | Direct::NotNow => true,
            Direct::Failed => {
                a.closer.close(CLOSE_NORMAL, "socket write failed");
                true
            }
        }
    }
}

impl Attachment {
    /// Hands `write` the connection's outlet and the frames after the cursor, at most
    /// [`WRITE_BATCH`], each claimed (the cursor moves past it) as it is taken; returns what
    /// `write` returned and how many frames it took. Used by the writer and by a pusher alike.
    fn write_next<R>(
        &mut self,
        ring: &Ring,
        write: impl FnOnce(&Outlet, &mut dyn Iterator<Item = (u64, Utf8Bytes)>) -> R,
    ) -> (R, u64) {
        // Frames below the ring's start were dropped while unwritten (cannot happen: the
        // bounds close a slow reader first); skip them rather than stall.
        self.cursor = self.cursor.max(ring.first_n().saturating_sub(1));
        let (cursor, unwritten_bytes) = (&mut self.cursor, &mut self.unwritten_bytes);
        let mut fed = 0;
        let mut batch = WRITE_BATCH;
        let mut frames = std::iter::from_fn(|| {
            if batch == 0 {
                return None;
            }
            let e = ring.get(*cursor + 1)?;
            batch -= 1;
            fed += 1;
            *cursor = e.n;
            *unwritten_bytes = unwritten_bytes.saturating_sub(e.frame.len());
            Some((e.n, e.frame.clone()))
        });
        let r = write(&self.outlet, &mut frames);
        (r, fed)
    }
}

/// Sessions pushed to with [`Session::push_unflushed`], each flushed once when this is
/// dropped: a batch of frames (a room message's fan-out, a batch from another node) costs
/// each recipient one socket write by the pusher, not a wake-up of its writer per frame.
#[derive(Default)]
pub struct Flushes(Vec<Session>);

impl Flushes {
    /// Pushes `frame` to `session`, to be written when `self` is dropped.
    pub fn push(
        &mut self,
        session: &Session,
        frame: &str,
        origin: Origin,
    ) -> Result<u64, PushError> {
        let r = session.push_unflushed(frame, origin);
        if !self.0.last().is_some_and(|s| s.ptr_eq(session)) {
            self.0.push(session.clone());
        }
        r
    }

    /// Flushes now, spread over the runtime's workers when there are many recipients (one
    /// part per [`WRITE_BATCH`] recipients begun, at most one per worker): all parts but the
    /// first in tasks of their own, the first here. A room message's 500 local members are
    /// written by two workers at once, as their writers would have been.
    pub fn spread(mut self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let parts = rt
            .metrics()
            .num_workers()
            .min(self.0.len().div_ceil(WRITE_BATCH))
            .max(1);
        let per = self.0.len().div_ceil(parts);
        while self.0.len() > per {
            let part = self.0.split_off(self.0.len() - per);
            rt.spawn(async move { drop(Flushes(part)) });
        }
    }
}

impl Drop for Flushes {
    fn drop(&mut self) {
        for s in self.0.drain(..) {
            s.flush();
        }
    }
}

/// How the writer's turn at the socket went ([`Session::poll_write`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Everything queued is on the socket.
    Idle,
    /// A batch went out and more is queued.
    More,
    /// The connection is no longer the session's (closed, resumed elsewhere, ended).
    Gone,
    /// The socket failed.
    Failed,
}
