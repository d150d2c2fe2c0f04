//! The local session table: which users have a session on this node (attached to a
//! connection or kept for a resume), and the handle to reach each one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use signal_proto::UserId;

use crate::session::Session;

type ConnHandle = Session;

/// User -> session on this node. A cheap `Clone` handle.
#[derive(Clone, Debug, Default)]
pub struct Hub {
    map: Arc<Mutex<HashMap<UserId, ConnHandle>>>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, ConnHandle>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `handle` the user's session; returns the one it replaces.
    pub fn insert(&self, user: UserId, handle: ConnHandle) -> Option<ConnHandle> {
        let mut map = self.lock();
        let prev = map.insert(user, handle);
        metrics::gauge!("signal_sessions").set(map.len() as f64);
        prev
    }

    pub fn get(&self, user: &UserId) -> Option<ConnHandle> {
        self.lock().get(user).cloned()
    }

    /// Removes the user's entry only if it is still session `conn`.
    pub fn remove_if(&self, user: &UserId, conn: u64) -> bool {
        let mut map = self.lock();
        let removed = match map.get(user) {
            Some(h) if h.id() == conn => map.remove(user).is_some(),
            _ => false,
        };
        metrics::gauge!("signal_sessions").set(map.len() as f64);
        removed
    }

    /// Puts `old` back if the user's entry is still session `conn` (an open that failed).
    pub fn restore(&self, user: &UserId, conn: u64, old: ConnHandle) {
        let mut map = self.lock();
        if map.get(user).is_some_and(|h| h.id() == conn) {
            map.insert(user.clone(), old);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every session, for draining and for reasserting the directory.
    pub fn snapshot(&self) -> Vec<(UserId, ConnHandle)> {
        self.lock()
            .iter()
            .map(|(u, h)| (u.clone(), h.clone()))
            .collect()
    }
}
