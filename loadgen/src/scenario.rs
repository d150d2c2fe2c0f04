//! What one pair of users does for the whole run: connect (in the ramp-up), then set up calls
//! as the schedule says — Offer -> Answer -> Ok, K Candidates each way, Shutdown — while
//! answering the node's pings, logging out and in when churned, and going back to central
//! when its node drains (close 1012) or the connection is lost, resuming its session there
//! (a call in progress carries on after the resume).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use signal_proto::roap::{Answer, CandidateMsg, Head, Offer, OkMsg, Shutdown};
use signal_proto::{Message, SessionId, UserId};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{Conn, Connector, Frame, SENT_FIELD};
use crate::schedule::{Job, Schedule};
use crate::sdp;
use crate::session::{self, Seen, Session, Welcomed};
use crate::stats::{Failure, Recorder, Route};

/// Longest pause between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The last stretch before a setup is due, waited for with a precise (thread) sleep.
const PRECISE_WAIT: Duration = Duration::from_millis(2);
/// Frames kept per side while a call waits for another one (more are dropped as stale).
const MAX_PENDING: usize = 4096;

/// What every pair shares.
pub struct Shared {
    pub connector: Connector,
    pub recorder: Arc<Recorder>,
    /// Set when the ramp-up is over and the schedule starts.
    pub start: watch::Receiver<Option<Arc<Schedule>>>,
    pub candidates: usize,
    pub timeout: Duration,
    /// Cancelled when the run must stop at once.
    pub stop: CancellationToken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    A,
    B,
}

/// What kind of frame a call step waits for (compared as enum variants, never as names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Offer,
    Answer,
    Ok,
    Candidate,
    Shutdown,
}

impl Want {
    fn matches(self, m: &Message) -> bool {
        matches!(
            (self, m),
            (Want::Offer, Message::Offer(_))
                | (Want::Answer, Message::Answer(_))
                | (Want::Ok, Message::Ok(_))
                | (Want::Candidate, Message::Candidate(_))
                | (Want::Shutdown, Message::Shutdown(_))
        )
    }
}

/// One user of a pair.
struct Side {
    user: UserId,
    /// Which `--node` URL this user uses.
    slot: usize,
    conn: Option<Conn>,
    /// Frames read but not yet consumed by the running call.
    pending: VecDeque<(Message, Instant)>,
    /// When the connection was lost (not by a logout of ours).
    lost_at: Option<Instant>,
    endpoint: sdp::Endpoint,
    /// The session, kept across reconnections.
    session: Session,
}

impl Side {
    fn node(&self) -> Option<&str> {
        self.conn.as_ref().map(|c| c.node.as_str())
    }
}

/// A pair of users calling each other: `a` offers, `b` answers.
pub struct Pair {
    index: usize,
    a: Side,
    b: Side,
    shared: Arc<Shared>,
    churn: mpsc::Receiver<()>,
    calls: u64,
    churn_flip: bool,
    /// The setup running now (recorded as failed if the run cuts it off).
    in_flight: Option<Job>,
}

impl Pair {
    pub fn new(
        index: usize,
        users: (UserId, UserId),
        slots: (usize, usize),
        shared: Arc<Shared>,
        churn: mpsc::Receiver<()>,
    ) -> Pair {
        let side = |user, slot| Side {
            user,
            slot,
            conn: None,
            pending: VecDeque::new(),
            lost_at: None,
            endpoint: sdp::Endpoint::random(),
            session: Session::default(),
        };
        Pair {
            index,
            a: side(users.0, slots.0),
            b: side(users.1, slots.1),
            shared,
            churn,
            calls: 0,
            churn_flip: false,
            in_flight: None,
        }
    }

    fn side(&mut self, who: Who) -> &mut Side {
        match who {
            Who::A => &mut self.a,
            Who::B => &mut self.b,
        }
    }

    /// The pair's whole life: ramp-up connect (user a at `connect_at.0`, b at `.1`), wait
    /// for the start, run the schedule, log out. Reports the end of its ramp-up on `ready`.
    pub async fn run(mut self, connect_at: (Instant, Instant), ready: mpsc::Sender<()>) {
        let stop = self.shared.stop.clone();
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = self.life(connect_at, ready) => {}
        }
        if let Some(job) = self.in_flight.take() {
            let route = self.route();
            self.shared
                .recorder
                .record_failure(route, job.due, Failure::Timeout);
        }
        for who in [Who::A, Who::B] {
            let side = self.side(who);
            let counts = side.session.counts;
            if let Some(conn) = side.conn.take() {
                self.shared.recorder.disconnected(&conn.node);
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
            }
            self.shared.recorder.session_counts(counts);
        }
    }

    async fn life(&mut self, connect_at: (Instant, Instant), ready: mpsc::Sender<()>) {
        let mut times = [(connect_at.0, Who::A), (connect_at.1, Who::B)];
        times.sort_by_key(|t| t.0);
        for (at, who) in times {
            tokio::time::sleep_until(at).await;
            if let Err(e) = self.connect(who, true).await {
                tracing::debug!(pair = self.index, error = %e, "initial connection failed");
            }
        }
        let _ = ready.send(()).await;
        drop(ready);
        let mut start = self.shared.start.clone();
        let schedule = loop {
            if let Some(s) = start.borrow_and_update().clone() {
                break s;
            }
            self.reconnect_lost(Instant::now() + self.shared.timeout)
                .await;
            tokio::select! {
                changed = start.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                (who, frame) = next_frame(&mut self.a, &mut self.b) => self.idle_frame(who, frame).await,
            }
        };
        while let Some(job) = schedule.claim() {
            // Claimed: from here on the job ends as a setup or a failure, whatever happens.
            self.in_flight = Some(job);
            self.idle_until(job.due).await;
            let route = self.route();
            let result = self.call(job).await;
            self.in_flight = None;
            match result {
                Ok((route, started, answered, done)) => {
                    let recorder = &self.shared.recorder;
                    recorder.record_setup(route, job.due, answered, done);
                    recorder.record_start(route, job.due, started, done);
                }
                Err(why) => {
                    tracing::debug!(pair = self.index, error = why.label(), "call setup failed");
                    self.shared.recorder.record_failure(route, job.due, why);
                }
            }
        }
        // No more setups for this pair: stay connected (and answer pings) until the end.
        self.idle_until(schedule.end()).await;
    }

    fn route(&self) -> Option<Route> {
        Some(Route::of(self.a.node()?, self.b.node()?))
    }

    /// Until `until` (when the next setup is due): read (and drop) stray frames, reconnect
    /// lost users, obey churn (a churn request that came during a call is served here, even
    /// when the next setup is already due, as in a closed loop).
    async fn idle_until(&mut self, until: Instant) {
        loop {
            if self.churn.try_recv().is_ok() {
                self.churn_one().await;
            }
            self.reconnect_lost(until).await;
            let now = Instant::now();
            if now >= until {
                return;
            }
            // tokio's timers tick in whole milliseconds: the last stretch is slept on a
            // blocking thread (nanosleep, ~0.1 ms late at most) so that a setup starts when it
            // is due, not up to a millisecond after.
            if until - now <= PRECISE_WAIT {
                let rest = until - now;
                let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
                return;
            }
            tokio::select! {
                biased;
                Some(()) = self.churn.recv() => self.churn_one().await,
                _ = tokio::time::sleep_until(until - PRECISE_WAIT) => {}
                (who, frame) = next_frame(&mut self.a, &mut self.b) => self.idle_frame(who, frame).await,
            }
        }
    }

    /// A frame outside a call: a late reply (stale), or a lost connection.
    async fn idle_frame(&mut self, who: Who, frame: Frame) {
        match frame {
            Frame::Msg(m, at) => {
                if self.numbered(who, &m) {
                    self.count_message(&m, at);
                    self.shared.recorder.stale_frame();
                }
                self.ack(who, false).await;
            }
            Frame::Garbage => self.shared.recorder.stale_frame(),
            Frame::Closed(code) => self.lost(who, code),
        }
    }

    /// Checks `m`'s frame number against `who`'s session: `false` for a duplicate (dropped).
    fn numbered(&mut self, who: Who, m: &Message) -> bool {
        match session::frame_number(m) {
            Some(n) => {
                let side = self.side(who);
                let seen = side.session.seen(n);
                if seen == Seen::Duplicate {
                    tracing::debug!(user = %side.user, n, kind = m.kind(), "duplicate frame");
                }
                seen != Seen::Duplicate
            }
            None => true,
        }
    }

    /// Acknowledges what `who` received, if due (`force`: at the end of a setup). A failed
    /// send is left to the next read, which sees the connection end.
    async fn ack(&mut self, who: Who, force: bool) {
        let side = self.side(who);
        let (Some(conn), Some(n)) = (side.conn.as_mut(), side.session.ack_due(force)) else {
            return;
        };
        if conn.ack(n).await.is_ok() {
            side.session.acked(n);
        }
    }

    fn count_message(&self, m: &Message, at: Instant) {
        if !m.is_relayed() {
            return;
        }
        if let Some(sent) = sent_us(m) {
            self.shared.recorder.record_message(Some(sent), at);
        }
    }

    fn lost(&mut self, who: Who, code: Option<u16>) {
        let recorder = self.shared.recorder.clone();
        let side = self.side(who);
        if let Some(conn) = side.conn.take() {
            tracing::debug!(user = %side.user, node = %conn.node, ?code, "connection lost");
            recorder.disconnected(&conn.node);
            recorder.connection_lost(side.user.as_str(), &conn.node, code);
            side.lost_at = Some(Instant::now());
        }
    }

    /// Logs in and connects `who` (once).
    async fn connect(&mut self, who: Who, initial: bool) -> anyhow::Result<()> {
        let shared = self.shared.clone();
        let side = self.side(who);
        match shared
            .connector
            .connect(&side.user, side.slot, side.session.resume())
            .await
        {
            Ok(conn) => {
                shared.recorder.connected(&conn.node, conn.took, initial);
                let welcomed = side.session.welcomed(conn.session.clone(), conn.resumed);
                shared.recorder.welcomed(welcomed);
                if welcomed == Welcomed::Fresh {
                    tracing::debug!(user = %side.user, node = %conn.node, "resume refused: a new session");
                }
                side.conn = Some(conn);
                // Frames already read stay valid when the session continues.
                if welcomed != Welcomed::Resumed {
                    side.pending.clear();
                }
                if let Some(lost) = side.lost_at.take() {
                    shared.recorder.reconnected(side.user.as_str(), lost);
                }
                Ok(())
            }
            Err(e) => {
                shared.recorder.connect_failed(&e);
                Err(e)
            }
        }
    }

    /// Reconnects every user without a connection, retrying with backoff until `deadline`.
    async fn reconnect_lost(&mut self, deadline: Instant) {
        for who in [Who::A, Who::B] {
            let mut backoff = Duration::from_millis(50);
            while self.side(who).conn.is_none() {
                match self.connect(who, false).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::debug!(pair = self.index, error = %e, "reconnect failed");
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        tokio::time::sleep_until((now + backoff).min(deadline)).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    }

    /// Churn: one user of the pair logs out, then logs in again.
    async fn churn_one(&mut self) {
        self.churn_flip = !self.churn_flip;
        let who = if self.churn_flip { Who::A } else { Who::B };
        let recorder = self.shared.recorder.clone();
        let side = self.side(who);
        if let Some(conn) = side.conn.take() {
            recorder.disconnected(&conn.node);
            recorder.churn_logout();
            conn.close().await;
            // A logout ends the session: the next login starts a new one.
            recorder.session_counts(side.session.counts);
            side.session = Session::default();
        }
        if self.connect(who, false).await.is_ok() {
            recorder.churn_login();
        }
    }

    fn head(&self, to: &UserId, sid: &SessionId, seq: u64) -> Head {
        let mut extra = serde_json::Map::new();
        extra.insert(
            SENT_FIELD.to_owned(),
            self.shared.recorder.clock_us().into(),
        );
        Head {
            to: to.clone(),
            from: None,
            session_id: sid.clone(),
            seq: Some(seq),
            extra,
        }
    }

    /// One call setup; on success the route, when the Offer was sent, when the offerer had
    /// the Answer and when the answerer had the Ok.
    async fn call(&mut self, job: Job) -> Result<(Route, Instant, Instant, Instant), Failure> {
        self.reconnect_lost(Instant::now() + self.shared.timeout)
            .await;
        let route = self.route().ok_or(Failure::ConnectFailed)?;
        for side in [&mut self.a, &mut self.b] {
            for _ in side.pending.drain(..) {
                self.shared.recorder.stale_frame();
            }
        }
        self.calls += 1;
        let sid = SessionId::new(format!("{}-{}-{}", self.a.user, self.index, job.index))
            .map_err(|_| Failure::Unexpected)?;
        let (a_user, b_user) = (self.a.user.clone(), self.b.user.clone());
        let k = self.shared.candidates;

        let offer = Message::Offer(Offer {
            head: self.head(&b_user, &sid, 1),
            sdp: self.a.endpoint.sdp(false, self.calls),
            tie_breaker: Some(rand::random()),
        });
        let started = Instant::now();
        self.send(Who::A, &[offer]).await?;
        self.expect(Who::B, Want::Offer, &sid).await?;
        let answer = Message::Answer(Answer {
            head: self.head(&a_user, &sid, 1),
            sdp: self.b.endpoint.sdp(true, self.calls),
        });
        self.send(Who::B, &[answer]).await?;
        let answered = self.expect(Who::A, Want::Answer, &sid).await?;
        let ok = Message::Ok(OkMsg {
            head: self.head(&b_user, &sid, 2),
        });
        self.send(Who::A, &[ok]).await?;
        let done = self.expect(Who::B, Want::Ok, &sid).await?;

        let a_cands: Vec<Message> = (0..k)
            .map(|n| {
                Message::Candidate(CandidateMsg {
                    head: self.head(&b_user, &sid, 3 + n as u64),
                    candidate: Some(self.a.endpoint.candidate(n)),
                })
            })
            .collect();
        let b_cands: Vec<Message> = (0..k)
            .map(|n| {
                Message::Candidate(CandidateMsg {
                    head: self.head(&a_user, &sid, 2 + n as u64),
                    candidate: Some(self.b.endpoint.candidate(n)),
                })
            })
            .collect();
        self.send(Who::A, &a_cands).await?;
        self.send(Who::B, &b_cands).await?;
        for _ in 0..k {
            self.expect(Who::B, Want::Candidate, &sid).await?;
        }
        for _ in 0..k {
            self.expect(Who::A, Want::Candidate, &sid).await?;
        }
        let bye = Message::Shutdown(Shutdown {
            head: self.head(&b_user, &sid, 3 + k as u64),
        });
        self.send(Who::A, &[bye]).await?;
        self.expect(Who::B, Want::Shutdown, &sid).await?;
        self.ack(Who::A, true).await;
        self.ack(Who::B, true).await;
        Ok((route, started, answered, done))
    }

    /// Sends `msgs` on `who`'s connection. A connection found lost (or failing the write) is
    /// resumed first and the frames sent on the new one (once: a write that failed did not
    /// reach the node, client frames have no numbers to resend by).
    async fn send(&mut self, who: Who, msgs: &[Message]) -> Result<(), Failure> {
        let timeout = self.shared.timeout;
        for attempt in 0..2 {
            if self.side(who).conn.is_none() {
                // Lost between two steps: resume first (the session kept what was sent to us).
                self.reconnect_lost(Instant::now() + timeout).await;
            }
            let side = self.side(who);
            let conn = side.conn.as_mut().ok_or(Failure::ConnectionLost)?;
            let sent = tokio::time::timeout(timeout, async {
                for m in msgs {
                    conn.feed(m).await?;
                }
                conn.flush().await
            })
            .await;
            match sent {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => {
                    tracing::debug!(user = %side.user, attempt, error = %e, "send failed");
                    self.lost(who, None);
                }
                Err(_) => return Err(Failure::Timeout),
            }
        }
        Err(Failure::ConnectionLost)
    }

    /// Waits for the next frame of call `sid` on `who`'s connection, which must be `want`;
    /// an Error for `sid` on either connection fails the call. Returns when it was read.
    async fn expect(&mut self, who: Who, want: Want, sid: &SessionId) -> Result<Instant, Failure> {
        let deadline = Instant::now() + self.shared.timeout;
        loop {
            // An error about this call, on either side, ends it.
            for side in [&self.a, &self.b] {
                for (m, _) in &side.pending {
                    if let Message::Error(e) = m {
                        if e.session_id.as_ref() == Some(sid) {
                            self.shared
                                .recorder
                                .error_example(e.error_type, e.description.as_deref());
                            return Err(Failure::Server(e.error_type));
                        }
                    }
                }
            }
            let recorder = self.shared.recorder.clone();
            let side = self.side(who);
            while let Some((m, at)) = side.pending.pop_front() {
                if m.session_id() != Some(sid) {
                    recorder.stale_frame();
                    continue;
                }
                if want.matches(&m) {
                    return Ok(at);
                }
                tracing::debug!(user = %side.user, got = m.kind(), ?want, "unexpected frame in a call");
                return Err(Failure::Unexpected);
            }
            let next =
                tokio::time::timeout_at(deadline, next_frame(&mut self.a, &mut self.b)).await;
            match next {
                Err(_) => {
                    let side = self.side(who);
                    tracing::debug!(user = %side.user, node = ?side.node(), ?want, %sid, "call step timed out");
                    return Err(Failure::Timeout);
                }
                Ok((from, Frame::Msg(m, at))) => {
                    if !self.numbered(from, &m) {
                        continue;
                    }
                    self.count_message(&m, at);
                    let side = self.side(from);
                    if side.pending.len() >= MAX_PENDING {
                        side.pending.pop_front();
                        recorder.stale_frame();
                    }
                    side.pending.push_back((m, at));
                    self.ack(from, false).await;
                }
                Ok((_, Frame::Garbage)) => recorder.stale_frame(),
                Ok((from, Frame::Closed(code))) => {
                    self.lost(from, code);
                    // Resume right away: the session kept (and buffers) what is sent to this
                    // user meanwhile, so the call carries on.
                    self.reconnect_lost(deadline).await;
                    if self.side(from).conn.is_none() {
                        return Err(Failure::ConnectionLost);
                    }
                }
            }
        }
    }
}

/// The next frame from either user's connection (waits forever when neither is connected).
async fn next_frame(a: &mut Side, b: &mut Side) -> (Who, Frame) {
    match (a.conn.as_mut(), b.conn.as_mut()) {
        (Some(ca), Some(cb)) => tokio::select! {
            f = ca.next() => (Who::A, f),
            f = cb.next() => (Who::B, f),
        },
        (Some(ca), None) => (Who::A, ca.next().await),
        (None, Some(cb)) => (Who::B, cb.next().await),
        (None, None) => std::future::pending().await,
    }
}

/// The sender's clock stamped in a frame by loadgen.
fn sent_us(m: &Message) -> Option<u64> {
    let extra = m.extra()?;
    extra.get(SENT_FIELD).and_then(serde_json::Value::as_u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_time_survives_the_wire_and_kinds_match_by_variant() {
        let mut extra = serde_json::Map::new();
        extra.insert(SENT_FIELD.to_owned(), 123_456u64.into());
        let head = Head {
            to: UserId::new("bob").unwrap(),
            from: None,
            session_id: SessionId::new("s1").unwrap(),
            seq: Some(1),
            extra,
        };
        let ok = Message::Ok(OkMsg { head: head.clone() });
        let back = Message::parse(&ok.to_json()).unwrap();
        assert_eq!(sent_us(&back), Some(123_456));
        assert!(Want::Ok.matches(&back));
        assert!(!Want::Answer.matches(&back));
        let bye = Message::Shutdown(Shutdown { head });
        assert!(Want::Shutdown.matches(&bye));
        assert_eq!(sent_us(&Message::Pong), None);
    }
}
