//! The one timer of a node that ends detached sessions when their resume window passes: a
//! set of (deadline, session id, user) ordered by deadline and one task that sleeps until the
//! earliest (the mini-redis pattern: a std `Mutex` never held across `.await`, a `Notify` when
//! a new deadline becomes the earliest).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use signal_proto::UserId;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Pending deadlines. A cheap `Clone` handle.
#[derive(Clone, Debug, Default)]
pub struct Expiry {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    set: Mutex<BTreeSet<(Instant, u64, UserId)>>,
    wake: Notify,
}

impl Expiry {
    /// Arms a deadline for session `id` of `user`. A session resumed meanwhile is recognised
    /// when the deadline fires (the callback checks), so nothing needs disarming.
    pub fn arm(&self, at: Instant, id: u64, user: UserId) {
        let mut set = self
            .inner
            .set
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let earliest = set.first().is_none_or(|(t, _, _)| at < *t);
        set.insert((at, id, user));
        metrics::gauge!("signal_session_deadlines").set(set.len() as f64);
        drop(set);
        if earliest {
            self.inner.wake.notify_one();
        }
    }

    /// Number of armed deadlines.
    pub fn len(&self) -> usize {
        self.inner
            .set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn due(&self, now: Instant) -> (Vec<(u64, UserId)>, Option<Instant>) {
        let mut set = self
            .inner
            .set
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut due = Vec::new();
        while let Some((t, _, _)) = set.first() {
            if *t > now {
                break;
            }
            if let Some((_, id, user)) = set.pop_first() {
                due.push((id, user));
            }
        }
        metrics::gauge!("signal_session_deadlines").set(set.len() as f64);
        (due, set.first().map(|(t, _, _)| *t))
    }

    /// Runs until `stop`: calls `fire(id, user)` for each deadline that passes.
    pub async fn run(self, stop: CancellationToken, fire: impl Fn(u64, UserId)) {
        loop {
            let (due, next) = self.due(Instant::now());
            for (id, user) in due {
                fire(id, user);
            }
            let notified = self.inner.wake.notified();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = notified => {}
                _ = async {
                    match next {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn fires_in_deadline_order_once() {
        let e = Expiry::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(e.clone().run(stop.clone(), move |id, _| {
            let _ = tx.send(id);
        }));
        let now = Instant::now();
        let u = UserId::new("u").unwrap();
        e.arm(now + Duration::from_secs(30), 2, u.clone());
        e.arm(now + Duration::from_secs(10), 1, u.clone());
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(rx.try_recv().is_err());
        assert_eq!(rx.recv().await.unwrap(), 1);
        assert_eq!(rx.recv().await.unwrap(), 2);
        assert!(Instant::now() >= now + Duration::from_secs(30));
        assert!(e.is_empty());
        stop.cancel();
        task.await.unwrap();
    }
}
