//! `--scenario presence` (contract section 7): `--users` simulated users, each watching
//! `--watch` others (a circulant graph: every user is watched by exactly `--watch` users, spread
//! over the nodes); at `--rate` per second a random user either sets a new state (its note names
//! the change, so every notification is matched to its change) or drops its connection and
//! resumes its session (which must announce nothing). Reports change -> notified latency,
//! notifications per change, wrong or spurious notifications, and at the end (after a quiet
//! period) every watcher's view of every watched user against the truth: missing or stale.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context};
use rand::Rng;
use serde_json::{json, Value};
use signal_proto::UserId;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{Conn, Connector};
use crate::config::{Config, Target};
use crate::stats::Hist;

const STATES: [&str; 3] = ["online", "away", "busy"];
/// Frames between two acknowledgements.
const ACK_EVERY: u64 = 32;
/// Quiet time before the final check.
const SETTLE: Duration = Duration::from_secs(3);
/// A notification later than this is counted in the per-second breakdown (the target's p99).
const LATE: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy)]
enum Event {
    Change,
    Reconnect,
}

#[derive(Default)]
struct Counters {
    changes: AtomicU64,
    reconnects: AtomicU64,
    resumed: AtomicU64,
    fresh: AtomicU64,
    notified: AtomicU64,
    wrong: AtomicU64,
    spurious: AtomicU64,
    snapshots: AtomicU64,
    drops: AtomicU64,
}

struct Shared {
    connector: Connector,
    users: Vec<UserId>,
    index: HashMap<UserId, usize>,
    watch: usize,
    stride: usize,
    /// change seq -> (user index, state, sent at)
    sent: Mutex<HashMap<u64, (usize, &'static str, Instant)>>,
    next_seq: AtomicU64,
    /// Per user, the state and note it last set (the truth).
    truth: Vec<Mutex<(String, String)>>,
    /// Per watcher, what it was last shown of each watched user.
    seen: Vec<Mutex<HashMap<usize, (String, String)>>>,
    latency: Mutex<Hist>,
    /// The same, split by whether the watcher reconnected between the change and its
    /// notification (its own absence is then part of the latency) or stayed connected.
    latency_stayed: Mutex<Hist>,
    latency_moved: Mutex<Hist>,
    /// Per user, when its last reconnect completed (a watcher that came back after a change
    /// was sent was away for part of that change's latency).
    back: Vec<Mutex<Option<Instant>>>,
    /// Notifications later than [`LATE`], by the second of the run their change was sent in.
    late_by_second: Mutex<std::collections::BTreeMap<u64, (u64, u64)>>,
    started: Mutex<Option<Instant>>,
    c: Counters,
    stop: CancellationToken,
}

impl Shared {
    fn watched(&self, i: usize) -> Vec<usize> {
        let n = self.users.len();
        (1..=self.watch)
            .map(|k| (i + k * self.stride) % n)
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the run measured.
#[derive(Debug, serde::Serialize)]
pub struct PresenceReport {
    pub target: String,
    pub users: usize,
    pub watch: usize,
    pub seconds: f64,
    pub changes: u64,
    pub reconnects: u64,
    pub resumed: u64,
    pub fresh: u64,
    pub notified: u64,
    pub notifications_per_change: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
    /// Notifications to a watcher connected from the change to its notification.
    pub stayed: u64,
    pub stayed_ms_p50: f64,
    pub stayed_ms_p99: f64,
    pub stayed_ms_max: f64,
    /// Notifications to a watcher that reconnected (resumed) in between.
    pub moved: u64,
    pub moved_ms_p50: f64,
    pub moved_ms_p99: f64,
    pub moved_ms_max: f64,
    /// Notifications later than 250 ms by the second (of the run) their change was sent in:
    /// (second, to watchers that stayed, to watchers that moved).
    pub late_by_second: Vec<(u64, u64, u64)>,
    pub wrong: u64,
    pub spurious: u64,
    pub missing: u64,
    pub stale: u64,
    pub dropped_connections: u64,
}

impl PresenceReport {
    /// Whether anything went wrong (for `--fail-on-errors`).
    pub fn failures(&self) -> u64 {
        self.wrong + self.missing + self.stale + self.fresh
    }
}

impl std::fmt::Display for PresenceReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "presence: {} users watching {} each, {}",
            self.users, self.watch, self.target
        )?;
        writeln!(
            f,
            "  {:.1} s: {} changes, {} reconnects (resumed {}, fresh {})",
            self.seconds, self.changes, self.reconnects, self.resumed, self.fresh
        )?;
        writeln!(
            f,
            "  change -> notified: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} notifications, {:.2} per change, expected {})",
            self.latency_ms_p50,
            self.latency_ms_p99,
            self.latency_ms_max,
            self.notified,
            self.notifications_per_change,
            self.watch
        )?;
        writeln!(
            f,
            "  watcher stayed connected: {} notifications, p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            self.stayed, self.stayed_ms_p50, self.stayed_ms_p99, self.stayed_ms_max
        )?;
        writeln!(
            f,
            "  watcher reconnected in between: {} notifications, p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            self.moved, self.moved_ms_p50, self.moved_ms_p99, self.moved_ms_max
        )?;
        if !self.late_by_second.is_empty() {
            let late: Vec<String> = self
                .late_by_second
                .iter()
                .map(|(s, a, b)| format!("{s}s:{a}+{b}"))
                .collect();
            writeln!(
                f,
                "  later than 250 ms, by second of the change (stayed+moved): {}",
                late.join(" ")
            )?;
        }
        write!(
            f,
            "  wrong {}  spurious {}  final check: missing {}  stale {}  connections dropped {}",
            self.wrong, self.spurious, self.missing, self.stale, self.dropped_connections
        )
    }
}

/// Runs the presence scenario against `target` (an embedded cluster is given as its central).
pub async fn run(
    config: &Config,
    target: &Target,
    label: String,
) -> anyhow::Result<PresenceReport> {
    let n = config.users;
    if config.watch >= n {
        bail!("--watch must be below --users");
    }
    let connector = Connector::new(
        target,
        config.jwt_secret.as_deref().map(|s| {
            crate::client::JwtMinter::new(s, config.jwt_audience.clone(), config.jwt_issuer.clone())
        }),
        config.bind_ips.clone(),
        config.timeout,
        config.connect_concurrency,
    )?;
    let run: u32 = rand::rng().random_range(0..1_000_000);
    let users: Vec<UserId> = (0..n)
        .map(|i| UserId::new(format!("{}-p{run}-{i}", config.user_prefix)).context("--user-prefix"))
        .collect::<anyhow::Result<_>>()?;
    let index = users
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, u)| (u, i))
        .collect();
    // A stride coprime-ish with n spreads each user's contacts over the ring (and the nodes).
    let stride = (n / config.watch.max(1)).max(1);
    let shared = Arc::new(Shared {
        connector,
        users,
        index,
        watch: config.watch,
        stride,
        sent: Mutex::default(),
        next_seq: AtomicU64::new(1),
        truth: (0..n)
            .map(|_| Mutex::new(("online".into(), String::new())))
            .collect(),
        seen: (0..n).map(|_| Mutex::default()).collect(),
        latency: Mutex::new(crate::stats::new_hist()),
        latency_stayed: Mutex::new(crate::stats::new_hist()),
        latency_moved: Mutex::new(crate::stats::new_hist()),
        back: (0..n).map(|_| Mutex::default()).collect(),
        late_by_second: Mutex::default(),
        started: Mutex::default(),
        c: Counters::default(),
        stop: CancellationToken::new(),
    });
    // Connect everyone, then subscribe everyone (so that snapshots show everyone online).
    let mut tasks = JoinSet::new();
    let mut cmds = Vec::with_capacity(n);
    let (ready_tx, mut ready_rx) = mpsc::channel::<anyhow::Result<()>>(n.max(1));
    let go = CancellationToken::new();
    for i in 0..n {
        let (tx, rx) = mpsc::channel(4);
        cmds.push(tx);
        tasks.spawn(user(shared.clone(), i, rx, ready_tx.clone(), go.clone()));
    }
    drop(ready_tx);
    for _ in 0..n {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                shared.stop.cancel();
                go.cancel();
                return Err(e.context("connecting the presence users"));
            }
            None => break,
        }
    }
    tracing::info!(users = n, "presence: everyone connected; subscribing");
    go.cancel();
    // Snapshots: every user gets `watch` Presence frames.
    let want = (n * config.watch) as u64;
    // About 10,000 snapshots a second on a small shared box, plus the usual timeout.
    let deadline = Instant::now() + config.timeout + Duration::from_secs(want / 5_000);
    while shared.c.snapshots.load(Ordering::Relaxed) < want {
        if Instant::now() > deadline {
            bail!(
                "subscriptions answered {} of {want} snapshots in time",
                shared.c.snapshots.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!("presence: snapshots complete; changes start");
    tokio::time::sleep(config.warmup).await;
    // Events at --rate per second over --duration.
    let start = Instant::now();
    *lock(&shared.started) = Some(start);
    let rate = config.rate.max(1.0);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while start.elapsed() < config.duration {
        tick.tick().await;
        let i = rand::rng().random_range(0..n);
        let ev = if rand::rng().random_bool(config.reconnect_share) {
            Event::Reconnect
        } else {
            Event::Change
        };
        let _ = cmds[i].try_send(ev);
    }
    let seconds = start.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    // The final check: every watcher's view against the truth.
    let (mut missing, mut stale) = (0u64, 0u64);
    for i in 0..n {
        let seen = lock(&shared.seen[i]);
        for j in shared.watched(i) {
            let truth = lock(&shared.truth[j]).clone();
            match seen.get(&j) {
                None => missing += 1,
                Some(s) if *s != truth => {
                    if stale < 5 {
                        tracing::warn!(watcher = i, user = j, seen = ?s, ?truth, "stale presence");
                    }
                    stale += 1;
                }
                Some(_) => {}
            }
        }
    }
    shared.stop.cancel();
    while tasks.join_next().await.is_some() {}
    let c = &shared.c;
    let changes = c.changes.load(Ordering::Relaxed);
    let notified = c.notified.load(Ordering::Relaxed);
    let h = lock(&shared.latency);
    let stayed = lock(&shared.latency_stayed);
    let moved = lock(&shared.latency_moved);
    let late_by_second = lock(&shared.late_by_second)
        .iter()
        .map(|(s, (a, b))| (*s, *a, *b))
        .collect();
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(PresenceReport {
        target: label,
        users: n,
        watch: config.watch,
        seconds,
        changes,
        reconnects: c.reconnects.load(Ordering::Relaxed),
        resumed: c.resumed.load(Ordering::Relaxed),
        fresh: c.fresh.load(Ordering::Relaxed),
        notified,
        notifications_per_change: if changes > 0 {
            notified as f64 / changes as f64
        } else {
            0.0
        },
        latency_ms_p50: ms(h.value_at_quantile(0.5)),
        latency_ms_p99: ms(h.value_at_quantile(0.99)),
        latency_ms_max: ms(h.max()),
        stayed: stayed.len(),
        stayed_ms_p50: ms(stayed.value_at_quantile(0.5)),
        stayed_ms_p99: ms(stayed.value_at_quantile(0.99)),
        stayed_ms_max: ms(stayed.max()),
        moved: moved.len(),
        moved_ms_p50: ms(moved.value_at_quantile(0.5)),
        moved_ms_p99: ms(moved.value_at_quantile(0.99)),
        moved_ms_max: ms(moved.max()),
        late_by_second,
        wrong: c.wrong.load(Ordering::Relaxed),
        spurious: c.spurious.load(Ordering::Relaxed),
        missing,
        stale,
        dropped_connections: c.drops.load(Ordering::Relaxed),
    })
}

/// One user: connect, subscribe when told, then serve events and read notifications until
/// the run stops; a dropped connection (a drain) resumes its session.
async fn user(
    s: Arc<Shared>,
    i: usize,
    mut events: mpsc::Receiver<Event>,
    ready: mpsc::Sender<anyhow::Result<()>>,
    go: CancellationToken,
) {
    let me = s.users[i].clone();
    let mut conn = match s.connector.connect(&me, i, None).await {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            return;
        }
    };
    let _ = ready.send(Ok(())).await;
    drop(ready);
    let mut token = conn.session.clone().unwrap_or_default();
    let mut last_n = 0u64;
    let mut acked = 0u64;
    let mut state_ix = 0usize;
    go.cancelled().await;
    let watched: Vec<String> = s
        .watched(i)
        .iter()
        .map(|&j| s.users[j].to_string())
        .collect();
    if conn
        .send_text(json!({"type":"Subscribe","users":watched}).to_string())
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            _ = s.stop.cancelled() => break,
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    Event::Change => {
                        state_ix = (state_ix + 1) % STATES.len();
                        let state = STATES[state_ix];
                        let seq = s.next_seq.fetch_add(1, Ordering::Relaxed);
                        let note = format!("c{seq}");
                        *lock(&s.truth[i]) = (state.to_owned(), note.clone());
                        lock(&s.sent).insert(seq, (i, state, Instant::now()));
                        s.c.changes.fetch_add(1, Ordering::Relaxed);
                        let frame = json!({"type":"SetPresence","state":state,"note":note});
                        if conn.send_text(frame.to_string()).await.is_err() {
                            s.c.drops.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Event::Reconnect => {
                        s.c.reconnects.fetch_add(1, Ordering::Relaxed);
                        drop(conn); // no close frame: the session is kept
                        match reconnect(&s, i, &token, last_n).await {
                            Some(c) => conn = c,
                            None => return,
                        }
                        if !conn.resumed {
                            last_n = 0;
                            acked = 0;
                        }
                        *lock(&s.back[i]) = Some(Instant::now());
                        token = conn.session.clone().unwrap_or_default();
                    }
                }
            }
            frame = conn.next_text() => match frame {
                Ok(text) => {
                    let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                    if let Some(n) = v["n"].as_u64() {
                        last_n = n;
                        if n >= acked + ACK_EVERY {
                            acked = n;
                            let _ = conn.send_text(json!({"type":"Ack","n":n}).to_string()).await;
                        }
                    }
                    if v["type"] == "Presence" {
                        on_presence(&s, i, &v);
                    }
                }
                Err(code) => {
                    // Drained (1012) or dropped: log in again and resume.
                    if s.stop.is_cancelled() {
                        break;
                    }
                    tracing::debug!(user = %me, ?code, "presence user disconnected: resuming");
                    s.c.drops.fetch_add(1, Ordering::Relaxed);
                    conn.reply_close().await;
                    match reconnect(&s, i, &token, last_n).await {
                        Some(c) => conn = c,
                        None => return,
                    }
                    if !conn.resumed {
                        last_n = 0;
                        acked = 0;
                    }
                    *lock(&s.back[i]) = Some(Instant::now());
                    token = conn.session.clone().unwrap_or_default();
                }
            }
        }
    }
    conn.close().await;
}

/// Resumes the session (any node central picks); a fresh session subscribes again.
async fn reconnect(s: &Shared, i: usize, token: &str, last: u64) -> Option<Conn> {
    let me = &s.users[i];
    for attempt in 0..50u32 {
        if s.stop.is_cancelled() {
            return None;
        }
        match s
            .connector
            .connect(me, i + attempt as usize, Some((token, last)))
            .await
        {
            Ok(mut c) => {
                if c.resumed {
                    s.c.resumed.fetch_add(1, Ordering::Relaxed);
                } else {
                    s.c.fresh.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(user = %me, "resume refused: fresh session, subscribing again");
                    // A fresh session starts online (contract 7): that is the truth now.
                    *lock(&s.truth[i]) = ("online".to_owned(), String::new());
                    let watched: Vec<String> = s
                        .watched(i)
                        .iter()
                        .map(|&j| s.users[j].to_string())
                        .collect();
                    let _ = c
                        .send_text(json!({"type":"Subscribe","users":watched}).to_string())
                        .await;
                }
                return Some(c);
            }
            Err(e) => {
                tracing::debug!(user = %me, error = %e, "reconnect failed: retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    tracing::warn!(user = %me, "presence user could not reconnect");
    None
}

fn on_presence(s: &Shared, i: usize, v: &Value) {
    let Some(j) = v["user"]
        .as_str()
        .and_then(|u| UserId::new(u).ok())
        .and_then(|u| s.index.get(&u).copied())
    else {
        return;
    };
    let state = v["state"].as_str().unwrap_or_default().to_owned();
    let note = v["note"].as_str().unwrap_or_default().to_owned();
    let first = lock(&s.seen[i])
        .insert(j, (state.clone(), note.clone()))
        .is_none();
    if first {
        s.c.snapshots.fetch_add(1, Ordering::Relaxed);
    }
    let Some(seq) = note.strip_prefix('c').and_then(|n| n.parse::<u64>().ok()) else {
        if !first && !s.stop.is_cancelled() {
            // A notification that is no change (a resume or reconnect must announce nothing).
            if s.c.spurious.fetch_add(1, Ordering::Relaxed) < 5 {
                tracing::warn!(watcher = i, frame = %v, "notification without a change");
            }
        }
        return;
    };
    let sent = lock(&s.sent).get(&seq).copied();
    match sent {
        Some((who, st, at)) if who == j => {
            if st != state {
                s.c.wrong.fetch_add(1, Ordering::Relaxed);
            }
            s.c.notified.fetch_add(1, Ordering::Relaxed);
            let took = at.elapsed();
            let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
            lock(&s.latency).saturating_record(us);
            let moved = lock(&s.back[i]).is_some_and(|back| back > at);
            if moved {
                lock(&s.latency_moved).saturating_record(us);
            } else {
                lock(&s.latency_stayed).saturating_record(us);
            }
            if took > LATE {
                let second =
                    lock(&s.started).map_or(0, |t0| at.saturating_duration_since(t0).as_secs());
                let mut late = lock(&s.late_by_second);
                let e = late.entry(second).or_default();
                if moved {
                    e.1 += 1;
                } else {
                    e.0 += 1;
                }
            }
        }
        _ => {
            s.c.wrong.fetch_add(1, Ordering::Relaxed);
        }
    }
}
