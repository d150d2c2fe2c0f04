//! Routing of one relayed message: the local table first, then the connection's small route
//! cache or a directory lookup, then a gRPC `Deliver` to the node holding the peer. Decides
//! what the sender sees when that fails (OFFLINE or UNAVAILABLE).

use std::collections::{HashMap, VecDeque};
use std::future::Future;

use signal_proto::relay::{DeliverRequest, DeliverStatus, Location};
use signal_proto::{ErrorType, UserId};

use crate::node::Node;
use crate::outbound::PushError;
use crate::peers::{ForwardError, Liveness, GONE_TIMEOUT, REQUEST_TIMEOUT};
use crate::session::Origin;

/// Entries of a connection's route cache.
const ROUTE_CACHE_SIZE: usize = 32;

/// How a message was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Local,
    Remote,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Local => "local",
            Route::Remote => "remote",
        }
    }
}

/// Why a message was not delivered: the error the sender gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undelivered {
    pub error: ErrorType,
    pub description: String,
}

fn offline(to: &UserId) -> Undelivered {
    Undelivered {
        error: ErrorType::Offline,
        description: format!("{to} is not connected"),
    }
}

fn unavailable(what: impl std::fmt::Display) -> Undelivered {
    Undelivered {
        error: ErrorType::Unavailable,
        description: format!("{what}; retry later"),
    }
}

/// Recently used locations of peers, per connection, FIFO-evicted.
#[derive(Debug, Default)]
struct RouteCache {
    map: HashMap<UserId, Location>,
    order: VecDeque<UserId>,
}

impl RouteCache {
    fn get(&self, user: &UserId) -> Option<Location> {
        self.map.get(user).cloned()
    }

    fn put(&mut self, user: &UserId, loc: Location) {
        if self.map.insert(user.clone(), loc).is_none() {
            self.order.push_back(user.clone());
            while self.order.len() > ROUTE_CACHE_SIZE {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }

    fn remove(&mut self, user: &UserId) {
        if self.map.remove(user).is_some() {
            self.order.retain(|u| u != user);
        }
    }
}

/// The router of one connection (owns its route cache).
pub struct Router {
    node: Node,
    cache: RouteCache,
}

impl Router {
    pub fn new(node: Node) -> Router {
        Router {
            node,
            cache: RouteCache::default(),
        }
    }

    /// The node this router sends from.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Delivers `frame` (validated JSON with `from` filled in, without `n`: the recipient's
    /// session numbers it) to `to`'s session. `origin`: who is told OFFLINE should the
    /// session end before the frame is written.
    pub async fn relay(
        &mut self,
        origin: &Origin,
        to: &UserId,
        frame: &str,
    ) -> Result<Route, Undelivered> {
        // Same node: no directory round trip (also works while the directory is down).
        if let Some(s) = self.node.hub().get(to) {
            match s.push(frame, origin.clone()) {
                Ok(_) => return Ok(Route::Local),
                Err(PushError::Full) => {
                    return Err(unavailable(format!(
                        "{to}'s connection is not reading fast enough and was closed"
                    )))
                }
                // Closing right now: maybe it reconnected elsewhere, ask the directory.
                Err(PushError::Closed) => {}
            }
        }
        let (loc, cached) = match self.cache.get(to) {
            Some(loc) => (loc, true),
            None => (self.lookup(to).await?, false),
        };
        let first = self.try_deliver(origin, to, frame, &loc).await;
        self.settle(origin, to, frame, loc, cached, first).await
    }

    /// Starts relaying `frame` to `to` without waiting for the answer, when that keeps this
    /// sender's order: `to` is not on this node and the route cache names its remote node,
    /// whose delivery stream has room. The frame is then queued behind this connection's
    /// earlier frames for that node, and [`Self::finish`] gets the answer. Otherwise the
    /// frame is given back for [`Self::relay`] (once the frames in flight are answered).
    ///
    /// Order: a frame that the remote node refuses (NOT_HERE: its location is stale) is
    /// looked up again and sent on by `finish`; the frames after it to that location are
    /// refused too (a location does not come back once it is stale, and the remote node
    /// answers in order), and the caller settles all of them, in order, before it relays
    /// anything else (see [`Forwarded::delivered`]), so none is overtaken.
    pub fn start(
        &mut self,
        origin: &Origin,
        to: UserId,
        frame: String,
    ) -> Result<impl Future<Output = Forwarded> + Send + 'static, (UserId, String)> {
        if self.node.hub().get(&to).is_some() {
            return Err((to, frame));
        }
        let Some(loc) = self.cache.get(&to) else {
            return Err((to, frame));
        };
        let peers = self.node.peers();
        let liveness = peers.liveness(&loc);
        if loc.node_id == self.node.id().as_str() || liveness == Liveness::Gone {
            return Err((to, frame));
        }
        let req = deliver_request(origin, &to, frame.clone(), &loc);
        let Some(answer) = peers.start_deliver(&loc, req, REQUEST_TIMEOUT) else {
            return Err((to, frame));
        };
        let origin = origin.clone();
        Ok(async move {
            let outcome = answer.await;
            Forwarded {
                origin,
                to,
                frame,
                loc,
                liveness,
                outcome,
            }
        })
    }

    /// Settles a frame [`Self::start`] sent: its answer, or (a stale location, a refused
    /// connection) the rest of [`Self::relay`]'s steps, from the cached location it went to.
    /// Returns whom the frame was for, with the outcome.
    pub async fn finish(&mut self, f: Forwarded) -> (UserId, Result<Route, Undelivered>) {
        let first = remote_outcome(&f.to, &f.loc.node_id, f.liveness, f.outcome);
        let r = self
            .settle(&f.origin, &f.to, &f.frame, f.loc, true, first)
            .await;
        (f.to, r)
    }

    /// What follows a delivery attempt to `loc` (`cached`: taken from the route cache): done,
    /// or looked up again and retried, as [`Attempt`] says.
    async fn settle(
        &mut self,
        origin: &Origin,
        to: &UserId,
        frame: &str,
        mut loc: Location,
        mut cached: bool,
        mut attempt: Result<Route, Attempt>,
    ) -> Result<Route, Undelivered> {
        // A fresh entry that leads nowhere is looked up once more: the user may have just
        // resumed elsewhere (the new node claims the entry before taking the session over).
        let mut second_look = true;
        loop {
            match attempt {
                Ok(route) => {
                    self.cache.put(to, loc);
                    return Ok(route);
                }
                Err(Attempt::Final(u)) => {
                    self.cache.remove(to);
                    return Err(u);
                }
                Err(Attempt::Dead(u)) => {
                    self.cache.remove(to);
                    self.release_stale(to, &loc);
                    return Err(u);
                }
                Err(Attempt::Retry(u)) => {
                    self.cache.remove(to);
                    if !cached {
                        return Err(u);
                    }
                    cached = false;
                    loc = self.lookup(to).await?;
                }
                Err(Attempt::Stale(u)) => {
                    self.cache.remove(to);
                    let again = if !cached && second_look {
                        second_look = false;
                        Some(self.lookup(to).await?).filter(|again| *again != loc)
                    } else {
                        None
                    };
                    if let Some(again) = again {
                        loc = again;
                    } else if !cached {
                        // A fresh entry that does not lead to the user: remove it (only if
                        // it is still that entry) so that the next sender sees OFFLINE fast.
                        self.release_stale(to, &loc);
                        return Err(u);
                    } else {
                        cached = false;
                        loc = self.lookup(to).await?;
                    }
                }
            }
            attempt = self.try_deliver(origin, to, frame, &loc).await;
        }
    }

    async fn lookup(&self, to: &UserId) -> Result<Location, Undelivered> {
        match self.node.directory().lookup(to).await {
            Ok(Some(loc)) => Ok(loc),
            Ok(None) => Err(offline(to)),
            Err(e) => {
                tracing::debug!(%to, error = %e, "directory lookup failed");
                Err(unavailable("the directory is unreachable"))
            }
        }
    }

    fn release_stale(&self, to: &UserId, loc: &Location) {
        let dir = self.node.directory().clone();
        let to = to.clone();
        let loc = loc.clone();
        tokio::spawn(async move {
            match dir.release(&to, &loc).await {
                Ok(true) => {
                    tracing::info!(user = %to, node = %loc.node_id, "removed stale directory entry")
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(user = %to, error = %e, "cannot remove stale entry"),
            }
        });
    }

    async fn try_deliver(
        &self,
        origin: &Origin,
        to: &UserId,
        frame: &str,
        loc: &Location,
    ) -> Result<Route, Attempt> {
        if loc.node_id == self.node.id().as_str() {
            // Here (or a previous life of this node id), but not in the local table.
            if self.node.is_ours(loc) {
                return match self
                    .node
                    .deliver_local(to, frame, Some(loc), origin.clone(), None)
                {
                    DeliverStatus::Delivered => Ok(Route::Local),
                    DeliverStatus::PeerOverloaded => Err(Attempt::Final(unavailable(format!(
                        "{to}'s connection is not reading fast enough and was closed"
                    )))),
                    _ => Err(Attempt::Stale(offline(to))),
                };
            }
            return Err(Attempt::Stale(offline(to)));
        }
        let liveness = self.node.peers().liveness(loc);
        let req = deliver_request(origin, to, frame.to_owned(), loc);
        let timeout = if liveness == Liveness::Gone {
            GONE_TIMEOUT
        } else {
            REQUEST_TIMEOUT
        };
        let outcome = self.node.peers().deliver(loc, req, timeout).await;
        remote_outcome(to, &loc.node_id, liveness, outcome)
    }
}

/// A frame [`Router::start`] sent to a remote node, with that node's answer.
pub struct Forwarded {
    origin: Origin,
    to: UserId,
    frame: String,
    loc: Location,
    liveness: Liveness,
    outcome: Result<DeliverStatus, ForwardError>,
}

impl Forwarded {
    /// Whether the node it went to delivered it (else [`Router::finish`] retries or fails it,
    /// and the frames sent after it must be settled before anything else is relayed).
    pub fn delivered(&self) -> bool {
        matches!(self.outcome, Ok(DeliverStatus::Delivered))
    }
}

/// The request that asks the node at `loc` to deliver `frame` to `to`'s session there.
fn deliver_request(origin: &Origin, to: &UserId, frame: String, loc: &Location) -> DeliverRequest {
    let (from, session_id, mail_entry) = match origin {
        Origin::Node => (String::new(), String::new(), String::new()),
        Origin::Roap(r) => (r.sender.to_string(), r.session_id.clone(), String::new()),
        Origin::Mail(e) => (String::new(), String::new(), e.to_string()),
    };
    DeliverRequest {
        to: to.to_string(),
        from,
        session_id,
        frame,
        expect: Some(loc.clone()),
        mail_entry,
    }
}

/// What a remote delivery attempt means for the sender and for the directory entry. A
/// directory entry is removed only on definitive evidence: the owning node says the user is
/// not there, or central no longer lists that node instance alive.
fn remote_outcome(
    to: &UserId,
    node_id: &str,
    liveness: Liveness,
    outcome: Result<DeliverStatus, ForwardError>,
) -> Result<Route, Attempt> {
    match outcome {
        Ok(DeliverStatus::Delivered) => Ok(Route::Remote),
        Ok(DeliverStatus::PeerOverloaded) => Err(Attempt::Final(unavailable(format!(
            "{to}'s connection is not reading fast enough and was closed"
        )))),
        Ok(DeliverStatus::NotHere | DeliverStatus::Unspecified) => Err(Attempt::Stale(offline(to))),
        Ok(DeliverStatus::Invalid) => Err(Attempt::Final(unavailable(format!(
            "{to}'s node refused the frame"
        )))),
        Err(ForwardError::Unreachable(e) | ForwardError::BadUrl(e)) => {
            tracing::debug!(node = %node_id, error = %e, "peer node unreachable");
            metrics::counter!("signal_forward_failures_total", "kind" => "unreachable")
                .increment(1);
            if liveness == Liveness::Gone {
                Err(Attempt::Stale(offline(to)))
            } else {
                // Central lists it (or central is silent): do not erase the entry over a
                // refusal; central evicts a dead node within its node timeout, and then
                // the entry is removed as stale.
                Err(Attempt::Retry(offline(to)))
            }
        }
        Err(e @ ForwardError::Transient(_)) if liveness != Liveness::Gone => {
            // The node may be alive and may have delivered the frame: no retry (it could
            // be a duplicate), no entry removal (it would make a live user unreachable).
            tracing::debug!(node = %node_id, error = %e, "forward failed in transport");
            metrics::counter!("signal_forward_failures_total", "kind" => "transport").increment(1);
            Err(Attempt::Final(unavailable(format!(
                "{to}'s node could not be reached"
            ))))
        }
        Err(e @ (ForwardError::Timeout(_) | ForwardError::Transient(_)))
            if liveness == Liveness::Gone =>
        {
            // No retry after a timeout: the request may still be processed (a frozen node
            // that resumes), and a second copy would be a duplicate.
            tracing::debug!(node = %node_id, error = %e, "dead peer node timed out");
            metrics::counter!("signal_forward_failures_total", "kind" => "dead").increment(1);
            Err(Attempt::Dead(offline(to)))
        }
        Err(e) => {
            tracing::debug!(node = %node_id, error = %e, "forward failed");
            let kind = match e {
                ForwardError::Timeout(_) => "timeout",
                _ => "refused",
            };
            metrics::counter!("signal_forward_failures_total", "kind" => kind).increment(1);
            Err(Attempt::Final(unavailable(format!(
                "{to}'s node did not answer"
            ))))
        }
    }
}

#[derive(Debug)]
enum Attempt {
    /// Give this answer to the sender.
    Final(Undelivered),
    /// The location does not lead to the user: look it up again if it came from the cache,
    /// else remove the entry (compare-and-delete) and give this answer.
    Stale(Undelivered),
    /// Like `Stale` but keep the directory entry.
    Retry(Undelivered),
    /// The node is gone but may still process the request: no retry; remove the entry and
    /// give this answer.
    Dead(Undelivered),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    fn loc(conn: u64) -> Location {
        Location {
            node_id: "n".into(),
            instance: "i".into(),
            conn,
            grpc_url: "http://n:1".into(),
        }
    }

    /// The policy: which outcomes answer what, and which remove the directory entry
    /// (`Stale` when the entry was fresh, `Dead`) or keep it (`Retry`, `Final`).
    #[test]
    fn remote_outcomes_remove_entries_only_on_definitive_evidence() {
        use ForwardError::*;
        use Liveness::*;
        let bob = UserId::new("bob").unwrap();
        let kind = |o: Result<Route, Attempt>| match o {
            Ok(r) => format!("ok {}", r.as_str()),
            Err(Attempt::Final(u)) => format!("final {}", u.error),
            Err(Attempt::Stale(u)) => format!("stale {}", u.error),
            Err(Attempt::Retry(u)) => format!("retry {}", u.error),
            Err(Attempt::Dead(u)) => format!("dead {}", u.error),
        };
        let table: Vec<(Liveness, Result<DeliverStatus, ForwardError>, &str)> = vec![
            (Alive, Ok(DeliverStatus::Delivered), "ok remote"),
            (Alive, Ok(DeliverStatus::NotHere), "stale OFFLINE"),
            (Unknown, Ok(DeliverStatus::NotHere), "stale OFFLINE"),
            (
                Alive,
                Ok(DeliverStatus::PeerOverloaded),
                "final UNAVAILABLE",
            ),
            // A refused connection: offline, but the entry stays while central lists the node.
            (Alive, Err(Unreachable("refused".into())), "retry OFFLINE"),
            (Unknown, Err(Unreachable("refused".into())), "retry OFFLINE"),
            (Gone, Err(Unreachable("refused".into())), "stale OFFLINE"),
            // A transport error on a live node: retry later, never remove a live user.
            (Alive, Err(Transient("reset".into())), "final UNAVAILABLE"),
            (Unknown, Err(Transient("reset".into())), "final UNAVAILABLE"),
            (Gone, Err(Transient("reset".into())), "dead OFFLINE"),
            (
                Alive,
                Err(Timeout(Duration::from_secs(2))),
                "final UNAVAILABLE",
            ),
            (
                Unknown,
                Err(Timeout(Duration::from_secs(2))),
                "final UNAVAILABLE",
            ),
            (
                Gone,
                Err(Timeout(Duration::from_millis(500))),
                "dead OFFLINE",
            ),
            (Alive, Err(Refused("internal".into())), "final UNAVAILABLE"),
        ];
        for (liveness, outcome, want) in table {
            let what = format!("{liveness:?} {outcome:?}");
            assert_eq!(
                kind(remote_outcome(&bob, "n2", liveness, outcome)),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn route_cache_is_bounded_and_fifo() {
        let mut c = RouteCache::default();
        let users: Vec<UserId> = (0..ROUTE_CACHE_SIZE + 5)
            .map(|i| UserId::new(format!("u{i}")).unwrap())
            .collect();
        for (i, u) in users.iter().enumerate() {
            c.put(u, loc(i as u64));
        }
        assert_eq!(c.map.len(), ROUTE_CACHE_SIZE);
        assert_eq!(c.order.len(), ROUTE_CACHE_SIZE);
        assert!(c.get(&users[0]).is_none());
        assert_eq!(
            c.get(&users[ROUTE_CACHE_SIZE + 4]).unwrap().conn,
            (ROUTE_CACHE_SIZE + 4) as u64
        );
        // Updating an entry does not grow the order list.
        c.put(&users[10], loc(99));
        assert_eq!(c.order.len(), ROUTE_CACHE_SIZE);
        c.remove(&users[10]);
        assert!(c.get(&users[10]).is_none());
        assert_eq!(c.order.len(), ROUTE_CACHE_SIZE - 1);
    }
}
