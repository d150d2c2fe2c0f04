//! What a run measured: HdrHistograms of setup, connect and message latency per route and per
//! second, failures by type, churn and drain/reconnect figures, plus live counters for the
//! progress bar. One [`Recorder`] is shared by every pair (`Arc`); `finish` hands out [`Stats`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use signal_proto::ErrorType;
use tokio::time::Instant;

use crate::schedule::{Phase, Schedule};

/// Highest latency a histogram holds (longer ones are clamped), in microseconds: one hour.
const MAX_US: u64 = 3_600_000_000;
/// Longest run the per-second timeline covers; later seconds fold into the last one.
const MAX_TIMELINE_S: usize = 7_200;
/// A relayed message slower than this counts as slow.
pub const SLOW_MESSAGE: Duration = Duration::from_secs(1);

/// A latency histogram in microseconds.
pub type Hist = Histogram<u64>;

fn hist(sigfig: u8) -> Hist {
    // The bounds and precision are constants within hdrhistogram's limits.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, MAX_US, sigfig).expect("valid histogram bounds")
}

/// An empty latency histogram (µs, 3 significant figures).
pub fn new_hist() -> Hist {
    hist(3)
}

fn record(h: &mut Hist, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    h.saturating_record(us);
}

/// Whether a call's two users are on the same node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    SameNode,
    CrossNode,
}

impl Route {
    pub fn of(offerer_node: &str, answerer_node: &str) -> Route {
        if offerer_node == answerer_node {
            Route::SameNode
        } else {
            Route::CrossNode
        }
    }
}

/// Why a call setup failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// An Error frame for the call's session (from the node or the peer).
    Server(ErrorType),
    /// A step did not complete within `--timeout`.
    Timeout,
    /// A connection closed during the call.
    ConnectionLost,
    /// A user could not (re)connect for the call.
    ConnectFailed,
    /// A frame of the call's session came that the call does not allow at that point.
    Unexpected,
    /// The setup was due but no pair could start it before the run ended (server stuck).
    NotStarted,
}

impl Failure {
    /// The label in `errors_by_type`: the ROAP errorType, or loadgen's own upper-case name.
    pub fn label(self) -> &'static str {
        match self {
            Failure::Server(t) => t.as_str(),
            Failure::Timeout => "CLIENT_TIMEOUT",
            Failure::ConnectionLost => "CONNECTION_LOST",
            Failure::ConnectFailed => "CONNECT_FAILED",
            Failure::Unexpected => "UNEXPECTED",
            Failure::NotStarted => "NOT_STARTED",
        }
    }
}

/// Setups of one route.
#[derive(Debug, Clone)]
pub struct RouteStats {
    pub setups: u64,
    pub errors: u64,
    /// Due time -> the answerer has the Ok (the whole setup).
    pub setup: Hist,
    /// Due time -> the offerer has the Answer.
    pub answer: Hist,
    /// Offer sent -> the answerer has the Ok (service time, without the wait for the start).
    pub service: Hist,
}

impl RouteStats {
    fn new() -> RouteStats {
        RouteStats {
            setups: 0,
            errors: 0,
            setup: hist(3),
            answer: hist(3),
            service: hist(3),
        }
    }
}

/// One second of the run (by due time, counted from the start of the warm-up).
#[derive(Debug, Clone)]
pub struct Second {
    pub setups: u64,
    pub errors: u64,
    pub setup: Hist,
}

/// The mass-reconnect figures: a node drained mid-run.
#[derive(Debug, Clone, Default)]
pub struct DrainStats {
    pub node: String,
    pub started: Option<Instant>,
    /// Users connected to the node when the drain started.
    pub users_on_node: u64,
    /// Users closed with 1012 since.
    pub closed: u64,
    /// Of those, how many reconnected (Welcome from another node).
    pub back: u64,
    /// When the last one was back (all `users_on_node` closed and back).
    pub all_back: Option<Instant>,
    /// Failed setups from the drain start until all were back (or the end of the run).
    pub failed_setups: u64,
    /// Close 1012 -> Welcome again, per user.
    pub reconnect: Option<Hist>,
    waiting: HashSet<String>,
}

impl DrainStats {
    fn active(&self) -> bool {
        self.started.is_some() && self.all_back.is_none()
    }
}

/// Everything measured, handed out by [`Recorder::finish`].
#[derive(Debug, Clone)]
pub struct Stats {
    pub schedule_start: Option<Instant>,
    /// Login + WebSocket upgrade + Welcome, every (re)connection.
    pub connect: Hist,
    pub connections: u64,
    pub connect_failures: u64,
    /// The first connection error.
    pub connect_error: Option<String>,
    /// Users that connected at least once in the initial ramp-up.
    pub initial_connections: u64,
    routes: [RouteStats; 2],
    /// Setups and failures due in the warm-up (left out of the figures above).
    pub warmup_setups: u64,
    pub warmup_errors: u64,
    /// Failures of setups due in the measured window, by label.
    pub errors_by_type: BTreeMap<String, u64>,
    /// The first description seen of each server error type.
    pub error_examples: BTreeMap<String, String>,
    /// Relayed messages received in the measured window.
    pub messages: u64,
    /// One-way latency of those (sender's send -> receiver's read).
    pub message_latency: Hist,
    /// Due time -> the Offer was sent (loadgen's own timer slack, and waits for a free pair).
    pub start_lag: Hist,
    /// Messages of the whole run slower than [`SLOW_MESSAGE`].
    pub slow_messages: u64,
    /// Frames that belonged to no running call (late replies to failed calls).
    pub stale_frames: u64,
    pub timeline: Vec<Second>,
    /// Churn: logouts and the following logins.
    pub churn_logouts: u64,
    pub churn_logins: u64,
    /// Connections lost outside a logout (drain, node gone), and how many came back.
    pub disconnects: u64,
    pub reconnects: u64,
    pub drain: Option<DrainStats>,
    /// Numbered frames of all sessions (whole run): received, missing, seen twice, late.
    pub session_frames: crate::session::Counts,
    /// Reconnections that continued the session (`resumed:true`) or started a new one.
    pub resumed: u64,
    pub fresh: u64,
    /// The rolling restart: nodes planned, and each node restarted with how long it took.
    pub roll_planned: usize,
    pub rolled: Vec<(String, Duration)>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            schedule_start: None,
            connect: hist(3),
            connections: 0,
            connect_failures: 0,
            connect_error: None,
            initial_connections: 0,
            routes: [RouteStats::new(), RouteStats::new()],
            warmup_setups: 0,
            warmup_errors: 0,
            errors_by_type: BTreeMap::new(),
            error_examples: BTreeMap::new(),
            messages: 0,
            message_latency: hist(3),
            start_lag: hist(3),
            slow_messages: 0,
            stale_frames: 0,
            timeline: Vec::new(),
            churn_logouts: 0,
            churn_logins: 0,
            disconnects: 0,
            reconnects: 0,
            drain: None,
            session_frames: crate::session::Counts::default(),
            resumed: 0,
            fresh: 0,
            roll_planned: 0,
            rolled: Vec::new(),
        }
    }

    pub fn route(&self, route: Route) -> &RouteStats {
        match route {
            Route::SameNode => &self.routes[0],
            Route::CrossNode => &self.routes[1],
        }
    }

    fn route_mut(&mut self, route: Route) -> &mut RouteStats {
        match route {
            Route::SameNode => &mut self.routes[0],
            Route::CrossNode => &mut self.routes[1],
        }
    }

    /// Setups (successful) of the measured window, both routes.
    pub fn setups(&self) -> u64 {
        self.routes.iter().map(|r| r.setups).sum()
    }

    /// Failed setups of the measured window.
    pub fn errors(&self) -> u64 {
        self.errors_by_type.values().sum()
    }

    fn second_mut(&mut self, due: Instant) -> Option<&mut Second> {
        let start = self.schedule_start?;
        let i = (due.saturating_duration_since(start).as_secs() as usize).min(MAX_TIMELINE_S);
        while self.timeline.len() <= i {
            self.timeline.push(Second {
                setups: 0,
                errors: 0,
                setup: hist(2),
            });
        }
        self.timeline.get_mut(i)
    }
}

/// Counters read by the progress bar while the run goes on.
#[derive(Debug, Default)]
pub struct Live {
    open: AtomicI64,
    setups: AtomicU64,
    errors: AtomicU64,
    messages: AtomicU64,
}

impl Live {
    /// Connections open now.
    pub fn open(&self) -> i64 {
        self.open.load(Ordering::Relaxed)
    }
    /// Setups finished so far (warm-up included).
    pub fn setups(&self) -> u64 {
        self.setups.load(Ordering::Relaxed)
    }
    /// Failed setups so far (warm-up included).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
    /// Relayed messages received so far.
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }
}

/// Shared sink of measurements (`Arc<Recorder>`); short critical sections only.
#[derive(Debug)]
pub struct Recorder {
    origin: Instant,
    live: Live,
    window: Mutex<Option<Window>>,
    stats: Mutex<Stats>,
    /// Connections per node id, to know who is on a node when it drains.
    by_node: Mutex<HashMap<String, i64>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    warmup_end: Instant,
    end: Instant,
}

impl Window {
    fn phase(&self, t: Instant) -> Phase {
        if t < self.warmup_end {
            Phase::Warmup
        } else if t < self.end {
            Phase::Measured
        } else {
            Phase::After
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            origin: Instant::now(),
            live: Live::default(),
            window: Mutex::new(None),
            stats: Mutex::new(Stats::new()),
            by_node: Mutex::new(HashMap::new()),
        }
    }

    pub fn live(&self) -> &Live {
        &self.live
    }

    /// Microseconds since this recorder was made: the timestamp loadgen puts in its frames.
    pub fn clock_us(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Starts the warm-up and measured windows of `schedule`.
    pub fn start_window(&self, schedule: &Schedule) {
        *lock(&self.window) = Some(Window {
            warmup_end: schedule.warmup_end(),
            end: schedule.end(),
        });
        lock(&self.stats).schedule_start = Some(schedule.start());
    }

    fn phase(&self, t: Instant) -> Phase {
        match *lock(&self.window) {
            Some(w) => w.phase(t),
            None => Phase::Warmup,
        }
    }

    /// A user connected (got its Welcome from `node`) after `took`.
    pub fn connected(&self, node: &str, took: Duration, initial: bool) {
        self.live.open.fetch_add(1, Ordering::Relaxed);
        *lock(&self.by_node).entry(node.to_owned()).or_default() += 1;
        let mut s = lock(&self.stats);
        record(&mut s.connect, took);
        s.connections += 1;
        if initial {
            s.initial_connections += 1;
        }
    }

    /// A connection attempt failed.
    pub fn connect_failed(&self, error: &anyhow::Error) {
        let mut s = lock(&self.stats);
        s.connect_failures += 1;
        if s.connect_error.is_none() {
            tracing::warn!(
                error = format!("{error:#}"),
                "first failed connection attempt"
            );
            s.connect_error = Some(format!("{error:#}"));
        }
    }

    /// The first connection error of the run, if any.
    pub fn connect_error(&self) -> Option<String> {
        lock(&self.stats).connect_error.clone()
    }

    /// A connection to `node` is gone (closed by either side).
    pub fn disconnected(&self, node: &str) {
        self.live.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(n) = lock(&self.by_node).get_mut(node) {
            *n -= 1;
        }
    }

    /// Connections open to `node` now.
    pub fn users_on(&self, node: &str) -> i64 {
        lock(&self.by_node).get(node).copied().unwrap_or(0)
    }

    /// A setup due at `due` completed: the offerer had the Answer at `answered`, the answerer
    /// the Ok at `done`.
    pub fn record_setup(&self, route: Route, due: Instant, answered: Instant, done: Instant) {
        self.live.setups.fetch_add(1, Ordering::Relaxed);
        let phase = self.phase(due);
        let mut s = lock(&self.stats);
        match phase {
            Phase::Warmup => s.warmup_setups += 1,
            Phase::Measured | Phase::After => {
                let r = s.route_mut(route);
                r.setups += 1;
                record(&mut r.setup, done.saturating_duration_since(due));
                record(&mut r.answer, answered.saturating_duration_since(due));
            }
        }
        if let Some(sec) = s.second_mut(due) {
            sec.setups += 1;
            record(&mut sec.setup, done.saturating_duration_since(due));
        }
    }

    /// A setup due at `due` sent its Offer at `started` and was complete at `done`.
    pub fn record_start(&self, route: Route, due: Instant, started: Instant, done: Instant) {
        if self.phase(due) == Phase::Warmup {
            return;
        }
        let mut s = lock(&self.stats);
        record(&mut s.start_lag, started.saturating_duration_since(due));
        record(
            &mut s.route_mut(route).service,
            done.saturating_duration_since(started),
        );
    }

    /// A setup due at `due` failed (`route` when both users were connected).
    pub fn record_failure(&self, route: Option<Route>, due: Instant, why: Failure) {
        self.live.errors.fetch_add(1, Ordering::Relaxed);
        let phase = self.phase(due);
        let mut s = lock(&self.stats);
        match phase {
            Phase::Warmup => s.warmup_errors += 1,
            Phase::Measured | Phase::After => {
                *s.errors_by_type.entry(why.label().to_owned()).or_default() += 1;
                if let Some(route) = route {
                    s.route_mut(route).errors += 1;
                }
            }
        }
        if let Some(sec) = s.second_mut(due) {
            sec.errors += 1;
        }
        if let Some(d) = s.drain.as_mut() {
            if d.active() {
                d.failed_setups += 1;
            }
        }
    }

    /// A relayed message sent at `sent_us` (see [`clock_us`](Self::clock_us)) was read now.
    pub fn record_message(&self, sent_us: Option<u64>, read: Instant) {
        self.live.messages.fetch_add(1, Ordering::Relaxed);
        let latency =
            sent_us.map(|sent| Duration::from_micros(self.clock_us().saturating_sub(sent)));
        let phase = self.phase(read);
        let mut s = lock(&self.stats);
        if let Some(l) = latency {
            if l > SLOW_MESSAGE {
                s.slow_messages += 1;
            }
        }
        if phase == Phase::Measured {
            s.messages += 1;
            if let Some(l) = latency {
                record(&mut s.message_latency, l);
            }
        }
    }

    /// Keeps the first description of each server error type, for the report.
    pub fn error_example(&self, error_type: ErrorType, description: Option<&str>) {
        let mut s = lock(&self.stats);
        if !s.error_examples.contains_key(error_type.as_str()) {
            let text = description.unwrap_or("(no description)");
            let text: String = text.chars().take(200).collect();
            tracing::warn!(error_type = error_type.as_str(), description = %text, "first call setup failing with this error");
            s.error_examples
                .insert(error_type.as_str().to_owned(), text);
        }
    }

    /// A frame that belongs to no running call.
    pub fn stale_frame(&self) {
        lock(&self.stats).stale_frames += 1;
    }

    pub fn churn_logout(&self) {
        lock(&self.stats).churn_logouts += 1;
    }

    pub fn churn_login(&self) {
        lock(&self.stats).churn_logins += 1;
    }

    /// The node `node` starts draining now.
    pub fn drain_started(&self, node: &str) {
        let users = self.users_on(node).max(0) as u64;
        lock(&self.stats).drain = Some(DrainStats {
            node: node.to_owned(),
            started: Some(Instant::now()),
            users_on_node: users,
            reconnect: Some(hist(3)),
            ..DrainStats::default()
        });
    }

    /// `user` lost its connection to `node` with close `code` (not a logout of ours).
    pub fn connection_lost(&self, user: &str, node: &str, code: Option<u16>) {
        let mut s = lock(&self.stats);
        s.disconnects += 1;
        if let Some(d) = s.drain.as_mut() {
            if d.started.is_some()
                && d.node == node
                && code == Some(1012)
                && d.waiting.insert(user.to_owned())
            {
                d.closed += 1;
            }
        }
    }

    /// `user`, which had lost its connection at `lost`, is connected again.
    pub fn reconnected(&self, user: &str, lost: Instant) {
        let now = Instant::now();
        let mut s = lock(&self.stats);
        s.reconnects += 1;
        if let Some(d) = s.drain.as_mut() {
            if d.waiting.remove(user) {
                d.back += 1;
                if let Some(h) = d.reconnect.as_mut() {
                    record(h, now.saturating_duration_since(lost));
                }
                if d.back >= d.users_on_node && d.all_back.is_none() {
                    d.all_back = Some(now);
                }
            }
        }
    }

    /// A user's session ended (or the run did): its frame counters.
    pub fn session_counts(&self, c: crate::session::Counts) {
        let mut s = lock(&self.stats);
        let t = &mut s.session_frames;
        t.frames += c.frames;
        t.lost += c.lost;
        t.duplicated += c.duplicated;
        t.reordered += c.reordered;
    }

    /// What a (re)connection's Welcome said about the session.
    pub fn welcomed(&self, w: crate::session::Welcomed) {
        use crate::session::Welcomed;
        let mut s = lock(&self.stats);
        match w {
            Welcomed::First => {}
            Welcomed::Resumed => s.resumed += 1,
            Welcomed::Fresh => s.fresh += 1,
        }
    }

    /// The rolling restart will restart `n` nodes.
    pub fn roll_planned(&self, n: usize) {
        lock(&self.stats).roll_planned = n;
    }

    /// Node `node` was drained and is back (registered again) after `took`.
    pub fn rolled(&self, node: &str, took: Duration) {
        lock(&self.stats).rolled.push((node.to_owned(), took));
    }

    /// Takes what was measured.
    pub fn finish(&self) -> Stats {
        std::mem::replace(&mut *lock(&self.stats), Stats::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_synthetic_delay_shows_up_in_the_percentiles() {
        let start = Instant::now();
        let schedule = Schedule::new(
            start,
            1000.0,
            Duration::from_secs(1),
            Duration::from_secs(10),
        );
        let r = Recorder::new();
        r.start_window(&schedule);
        // 10 000 measured setups: 2 ms each, except one in 100 that takes 300 ms, and a
        // single one of 5 s.
        for i in 0..10_000u64 {
            let due = start + Duration::from_secs(1) + Duration::from_micros(i * 900);
            let took = if i == 4_242 {
                Duration::from_secs(5)
            } else if i % 100 == 7 {
                Duration::from_millis(300)
            } else {
                Duration::from_millis(2)
            };
            let route = if i % 2 == 0 {
                Route::SameNode
            } else {
                Route::CrossNode
            };
            r.record_setup(route, due, due + took / 2, due + took);
        }
        // A warm-up setup is not in the figures.
        r.record_setup(
            Route::SameNode,
            start,
            start,
            start + Duration::from_secs(60),
        );
        let s = r.finish();
        assert_eq!(s.setups(), 10_000);
        assert_eq!(s.warmup_setups, 1);
        let same = &s.route(Route::SameNode).setup;
        let cross = &s.route(Route::CrossNode).setup;
        assert_eq!(same.len() + cross.len(), 10_000);
        let mut all = hist(3);
        all.add(same).unwrap();
        all.add(cross).unwrap();
        let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
        assert!((1.9..2.1).contains(&ms(0.5)), "p50 {}", ms(0.5));
        assert!((1.9..2.1).contains(&ms(0.9)), "p90 {}", ms(0.9));
        assert!((299.0..301.0).contains(&ms(0.995)), "p99.5 {}", ms(0.995));
        assert!((299.0..301.0).contains(&ms(0.999)), "p99.9 {}", ms(0.999));
        assert!((4_990.0..5_010.0).contains(&(all.max() as f64 / 1000.0)));
        // The Answer half-way through.
        let answers = &s.route(Route::SameNode).answer;
        assert!((0.9..1.1).contains(&(answers.value_at_quantile(0.5) as f64 / 1000.0)));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_counted_by_type_and_phase() {
        let start = Instant::now();
        let schedule = Schedule::new(start, 10.0, Duration::from_secs(1), Duration::from_secs(1));
        let r = Recorder::new();
        r.start_window(&schedule);
        let measured = start + Duration::from_millis(1500);
        r.record_failure(
            Some(Route::CrossNode),
            measured,
            Failure::Server(ErrorType::Offline),
        );
        r.record_failure(
            Some(Route::CrossNode),
            measured,
            Failure::Server(ErrorType::Offline),
        );
        r.record_failure(None, measured, Failure::Timeout);
        r.record_failure(None, start, Failure::ConnectionLost);
        assert_eq!(r.live().errors(), 4);
        let s = r.finish();
        assert_eq!(s.errors(), 3);
        assert_eq!(s.warmup_errors, 1);
        assert_eq!(s.errors_by_type.get("OFFLINE"), Some(&2));
        assert_eq!(s.errors_by_type.get("CLIENT_TIMEOUT"), Some(&1));
        assert_eq!(s.route(Route::CrossNode).errors, 2);
        assert_eq!(s.timeline[1].errors, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_messages_are_counted_separately() {
        let start = Instant::now();
        let schedule = Schedule::new(start, 10.0, Duration::ZERO, Duration::from_secs(10));
        let r = Recorder::new();
        r.start_window(&schedule);
        let sent = r.clock_us();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        r.record_message(Some(sent), Instant::now());
        let sent = r.clock_us();
        tokio::time::sleep(Duration::from_millis(20)).await;
        r.record_message(Some(sent), Instant::now());
        r.record_message(None, Instant::now());
        let s = r.finish();
        assert_eq!(s.messages, 3);
        assert_eq!(s.slow_messages, 1);
        assert_eq!(s.message_latency.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_counts_users_until_all_are_back() {
        let r = Recorder::new();
        r.connected("node-1", Duration::from_millis(3), true);
        r.connected("node-1", Duration::from_millis(3), true);
        r.connected("node-2", Duration::from_millis(3), true);
        r.drain_started("node-1");
        let lost = Instant::now();
        r.disconnected("node-1");
        r.connection_lost("u1", "node-1", Some(1012));
        r.record_failure(None, lost, Failure::ConnectionLost);
        tokio::time::sleep(Duration::from_millis(50)).await;
        r.connected("node-2", Duration::from_millis(3), false);
        r.reconnected("u1", lost);
        r.disconnected("node-1");
        r.connection_lost("u2", "node-1", Some(1012));
        tokio::time::sleep(Duration::from_millis(50)).await;
        r.connected("node-2", Duration::from_millis(3), false);
        r.reconnected("u2", lost);
        // After everyone is back, failures no longer count against the drain.
        r.record_failure(None, lost, Failure::Timeout);
        let s = r.finish();
        let d = s.drain.unwrap();
        assert_eq!((d.users_on_node, d.closed, d.back), (2, 2, 2));
        assert_eq!(d.failed_setups, 1);
        assert_eq!(
            d.all_back.unwrap() - d.started.unwrap(),
            Duration::from_millis(100)
        );
        assert_eq!(r.users_on("node-2"), 3);
    }
}
