//! `--scenario messages`: chat messages through the mailbox (contract section 6). N users each
//! send to random others, at `--rate` messages/s over all users (open loop) or keeping
//! `--window` messages awaiting `Accepted` (closed loop). A share of them starts offline and
//! logs in after `--offline-delay` (their messages wait in the mailbox); at `--churn-rate`
//! a random user drops its connection (and resumes its session) or logs out (and starts a new
//! one), then comes back. Every user acknowledges its numbered frames, so messages leave the
//! mailbox, and checks what it gets ([`check`]): nothing lost, nothing twice within a
//! session, nothing out of order.

pub mod check;
pub mod report;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use rand::seq::SliceRandom;
use rand::Rng;
use signal_proto::{ChatMessage, Message, MessageId, UserId};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::client::{Conn, Connector, Frame};
use crate::config::{ChatConfig, Config};
use crate::report::Latency;
use crate::session::{self, Welcomed};
use crate::stats::Hist;
use check::{Inbox, Verdict};
pub use report::MessagesReport;

/// How often a user acknowledges what it got (at least), and at most how many frames behind.
const ACK_TICK: Duration = Duration::from_millis(20);
/// How long a churned user stays away.
const AWAY: (u64, u64) = (100, 600);

fn hist() -> Hist {
    #[allow(clippy::expect_used)] // constant bounds within hdrhistogram's limits
    Hist::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// The run's timeline, in µs of the shared clock.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    from_us: u64,
    to_us: u64,
}

/// What every user shares.
struct Shared {
    connector: Connector,
    chat: ChatConfig,
    users: Vec<UserId>,
    rate_per_user: f64,
    origin: Instant,
    /// Whole-run counters the end of the run waits on.
    accepted: AtomicU64,
    received: AtomicU64,
    inflight: AtomicI64,
    connect_failures: AtomicU64,
    connect_error: std::sync::Mutex<Option<String>>,
    /// Users that sent and may stop (set at the end of the measured window).
    stop_sending: CancellationToken,
    /// Every user closes and reports.
    stop: CancellationToken,
}

impl Shared {
    fn clock_us(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// What woke a user up.
#[allow(clippy::large_enum_variant)] // one at a time, moved once
enum Event {
    Stop,
    /// A send is due (`false`: the sending is over).
    Send(bool),
    Ack,
    Churn,
    Frame(Frame),
}

/// A message awaiting its Accepted.
#[derive(Debug, Clone)]
struct Inflight {
    order: u64,
    to: u32,
    seq: u64,
    sent_us: u64,
    frame: Message,
}

/// What one user measured (merged at the end).
struct Tally {
    accept: Hist,
    live: Hist,
    stored: Hist,
    sent: u64,
    accepted: u64,
    refused: HashMap<String, u64>,
    duplicated: u64,
    reordered: u64,
    redelivered: u64,
    delivered_notices: u64,
    delivered_in_window: u64,
    connections: u64,
    resumed: u64,
    fresh: u64,
    lost_conns: u64,
    churn_drops: u64,
    churn_logouts: u64,
    frames: session::Counts,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            accept: hist(),
            live: hist(),
            stored: hist(),
            sent: 0,
            accepted: 0,
            refused: HashMap::new(),
            duplicated: 0,
            reordered: 0,
            redelivered: 0,
            delivered_notices: 0,
            delivered_in_window: 0,
            connections: 0,
            resumed: 0,
            fresh: 0,
            lost_conns: 0,
            churn_drops: 0,
            churn_logouts: 0,
            frames: session::Counts::default(),
        }
    }
}

/// What a user hands back at the end.
struct Outcome {
    index: u32,
    tally: Tally,
    inbox: Inbox,
    /// Per recipient, the seqs answered Accepted.
    accepted: HashMap<u32, Vec<u64>>,
    unanswered: u64,
}

struct User {
    index: u32,
    shared: Arc<Shared>,
    conn: Option<Conn>,
    session: session::Session,
    /// Start a new session at the next connection (after a logout).
    fresh_next: bool,
    online_at: Instant,
    next_seq: HashMap<u32, u64>,
    inflight: HashMap<String, Inflight>,
    order: u64,
    accepted: HashMap<u32, Vec<u64>>,
    inbox: Inbox,
    tally: Tally,
    window: Window,
    churn_flip: bool,
}

impl User {
    fn me(&self) -> &UserId {
        &self.shared.users[self.index as usize]
    }

    fn in_window(&self, sent_us: u64) -> bool {
        (self.window.from_us..self.window.to_us).contains(&sent_us)
    }

    async fn connect(&mut self) -> bool {
        let resume = if self.fresh_next {
            None
        } else {
            self.session.resume()
        };
        let user = self.me().clone();
        let r = self
            .shared
            .connector
            .connect(&user, self.index as usize, resume)
            .await;
        match r {
            Ok(conn) => {
                self.fresh_next = false;
                self.tally.connections += 1;
                match self.session.welcomed(conn.session.clone(), conn.resumed) {
                    Welcomed::Resumed => self.tally.resumed += 1,
                    w => {
                        if w == Welcomed::Fresh {
                            self.tally.fresh += 1;
                        }
                        self.inbox.new_session();
                    }
                }
                self.conn = Some(conn);
                // What is still unanswered is sent again with the same ids, after a resume too
                // (as the browser client does): a frame written just before the connection went
                // may never have reached the node, and nothing numbers what a client sends. The
                // node answers a duplicate with its first Accepted and stores it once.
                let mut again: Vec<Inflight> = self.inflight.values().cloned().collect();
                again.sort_by_key(|i| i.order);
                for i in again {
                    if !self.send_frame(&i.frame).await {
                        break;
                    }
                }
                true
            }
            Err(e) => {
                self.shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut slot) = self.shared.connect_error.lock() {
                    slot.get_or_insert_with(|| format!("{e:#}"));
                }
                tracing::debug!(user = %self.me(), error = %e, "connection failed");
                self.online_at = Instant::now() + Duration::from_millis(200);
                false
            }
        }
    }

    /// Sends a frame; a failure loses the connection (the user reconnects).
    async fn send_frame(&mut self, m: &Message) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        if conn.send(m).await.is_err() {
            self.lost();
            return false;
        }
        true
    }

    fn lost(&mut self) {
        if self.conn.take().is_some() {
            self.tally.lost_conns += 1;
        }
        self.online_at = Instant::now() + Duration::from_millis(50);
    }

    async fn send_one(&mut self) {
        let users = self.shared.users.len() as u32;
        let to = {
            let mut rng = rand::rng();
            let mut to = rng.random_range(0..users - 1);
            if to >= self.index {
                to += 1;
            }
            to
        };
        let seq = {
            let s = self.next_seq.entry(to).or_insert(0);
            *s += 1;
            *s
        };
        let sent_us = self.shared.clock_us();
        let Ok(id) = MessageId::new(check::message_id(to, seq)) else {
            return;
        };
        let frame = Message::Message(ChatMessage {
            from: None,
            to: Some(self.shared.users[to as usize].clone()),
            room: None,
            id: id.clone(),
            body: check::body(seq, sent_us, self.shared.chat.body_bytes),
            content_type: None,
            ts: None,
            delayed: None,
            extra: Default::default(),
        });
        self.order += 1;
        self.inflight.insert(
            id.as_str().to_owned(),
            Inflight {
                order: self.order,
                to,
                seq,
                sent_us,
                frame: frame.clone(),
            },
        );
        self.shared.inflight.fetch_add(1, Ordering::Relaxed);
        if self.in_window(sent_us) {
            self.tally.sent += 1;
        }
        self.send_frame(&frame).await;
    }

    fn answered(&mut self, id: &str) -> Option<Inflight> {
        let i = self.inflight.remove(id)?;
        self.shared.inflight.fetch_sub(1, Ordering::Relaxed);
        Some(i)
    }

    fn on_frame(&mut self, m: Message, at: Instant) {
        if let Some(n) = session::frame_number(&m) {
            self.session.seen(n);
        }
        match m {
            Message::Message(c) => {
                let (Some(from), Some(sent_us)) = (c.from.as_ref(), check::parse_body(&c.body))
                else {
                    return;
                };
                let Some(sender) = from
                    .as_str()
                    .rsplit_once("-u")
                    .and_then(|(_, i)| i.parse::<u32>().ok())
                else {
                    return;
                };
                let Some((_, seq)) = check::parse_id(c.id.as_str()) else {
                    return;
                };
                let (verdict, reordered) = self.inbox.got(sender, seq);
                if reordered {
                    self.tally.reordered += 1;
                    tracing::warn!(user = %self.me(), %from, id = %c.id, "message out of order");
                }
                match verdict {
                    Verdict::Duplicate => {
                        self.tally.duplicated += 1;
                        tracing::warn!(user = %self.me(), %from, id = %c.id, "duplicate within a session");
                    }
                    Verdict::Redelivered => self.tally.redelivered += 1,
                    Verdict::New => {
                        self.shared.received.fetch_add(1, Ordering::Relaxed);
                        if self.in_window(sent_us) {
                            self.tally.delivered_in_window += 1;
                            let now_us = u64::try_from(
                                at.saturating_duration_since(self.shared.origin).as_micros(),
                            )
                            .unwrap_or(u64::MAX);
                            let us = now_us.saturating_sub(sent_us).max(1);
                            let h = if c.delayed == Some(true) {
                                &mut self.tally.stored
                            } else {
                                &mut self.tally.live
                            };
                            h.saturating_record(us);
                        }
                    }
                }
            }
            Message::Accepted(a) => {
                if let Some(i) = self.answered(a.id.as_str()) {
                    self.shared.accepted.fetch_add(1, Ordering::Relaxed);
                    self.accepted.entry(i.to).or_default().push(i.seq);
                    if self.in_window(i.sent_us) {
                        self.tally.accepted += 1;
                        let now_us = u64::try_from(
                            at.saturating_duration_since(self.shared.origin).as_micros(),
                        )
                        .unwrap_or(u64::MAX);
                        self.tally
                            .accept
                            .saturating_record(now_us.saturating_sub(i.sent_us).max(1));
                    }
                }
            }
            Message::Delivered(_) => self.tally.delivered_notices += 1,
            Message::Error(e) => {
                let id = e
                    .extra
                    .get("id")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned);
                if let Some(i) = id.and_then(|id| self.answered(&id)) {
                    if self.in_window(i.sent_us) {
                        *self
                            .tally
                            .refused
                            .entry(e.error_type.as_str().to_owned())
                            .or_default() += 1;
                    }
                    tracing::debug!(user = %self.me(), error = ?e.error_type, description = ?e.description, "message refused");
                }
            }
            _ => {}
        }
    }

    async fn ack(&mut self, force: bool) {
        if let Some(n) = self.session.ack_due(force) {
            if let Some(conn) = self.conn.as_mut() {
                if conn.ack(n).await.is_ok() {
                    self.session.acked(n);
                } else {
                    self.lost();
                }
            }
        }
    }

    /// Churn: drop the connection (no close frame: the session is kept and resumed) or log
    /// out (a new session at the next login), in turn; come back after a short while.
    async fn churn(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        self.churn_flip = !self.churn_flip;
        if self.churn_flip {
            self.tally.churn_drops += 1;
            drop(conn);
        } else {
            self.tally.churn_logouts += 1;
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
            self.fresh_next = true;
        }
        let away = rand::rng().random_range(AWAY.0..AWAY.1);
        self.online_at = Instant::now() + Duration::from_millis(away);
    }

    async fn run(mut self, mut churn: mpsc::Receiver<()>) -> Outcome {
        let shared = self.shared.clone();
        let open_loop = shared.rate_per_user > 0.0;
        let period = if open_loop {
            Duration::from_secs_f64(1.0 / shared.rate_per_user)
        } else {
            Duration::from_secs(3600)
        };
        let phase = period.mul_f64(rand::rng().random_range(0.0..1.0));
        let mut tick = tokio::time::interval_at(self.window.start + phase, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut acks = tokio::time::interval(ACK_TICK);
        acks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let stop_sending = shared.stop_sending.clone();
        let stop = shared.stop.clone();
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep_until(self.window.start) => {}
        }
        loop {
            if stop.is_cancelled() {
                break;
            }
            if self.conn.is_none() {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep_until(self.online_at) => {}
                }
                self.connect().await;
                continue;
            }
            let sending = !stop_sending.is_cancelled();
            let room = !open_loop && self.inflight.len() < shared.chat.window;
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            let event = tokio::select! {
                _ = stop.cancelled() => Event::Stop,
                _ = tick.tick(), if open_loop => Event::Send(sending),
                _ = std::future::ready(()), if sending && room => Event::Send(true),
                _ = acks.tick() => Event::Ack,
                Some(()) = churn.recv() => Event::Churn,
                f = conn.next() => Event::Frame(f),
            };
            match event {
                Event::Stop => break,
                Event::Send(true) => self.send_one().await,
                Event::Send(false) => {}
                Event::Ack => self.ack(true).await,
                Event::Churn => self.churn().await,
                Event::Frame(Frame::Msg(m, at)) => {
                    self.on_frame(m, at);
                    self.ack(false).await;
                }
                Event::Frame(Frame::Garbage) => {}
                Event::Frame(Frame::Closed(code)) => {
                    tracing::debug!(user = %self.me(), ?code, "connection lost");
                    self.lost();
                }
            }
        }
        // The last acknowledgement, then log out.
        self.ack(true).await;
        if let Some(conn) = self.conn.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
        }
        let unanswered = self.inflight.len() as u64;
        self.tally.frames = self.session.counts;
        Outcome {
            index: self.index,
            tally: self.tally,
            inbox: self.inbox,
            accepted: self.accepted,
            unanswered,
        }
    }
}

/// Runs the messages scenario against `target`'s cluster (a resolved target: central or nodes).
pub async fn drive(
    config: &Config,
    connector: Connector,
    run: &str,
) -> anyhow::Result<MessagesReport> {
    let chat = config.chat.clone();
    let n = chat.users;
    if n < 2 {
        bail!("--users must be at least 2");
    }
    let users: Vec<UserId> = (0..n)
        .map(|i| UserId::new(format!("{}-{run}-u{i}", config.user_prefix)))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("--user-prefix: {e}"))?;
    let shared = Arc::new(Shared {
        connector,
        chat: chat.clone(),
        users,
        rate_per_user: config.rate / n as f64,
        origin: Instant::now(),
        accepted: AtomicU64::new(0),
        received: AtomicU64::new(0),
        inflight: AtomicI64::new(0),
        connect_failures: AtomicU64::new(0),
        connect_error: std::sync::Mutex::new(None),
        stop_sending: CancellationToken::new(),
        stop: CancellationToken::new(),
    });
    // Who starts offline.
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.shuffle(&mut rand::rng());
    let offline_count = ((n as f64) * chat.offline_share).round() as usize;
    let offline: std::collections::HashSet<u32> =
        order.iter().take(offline_count).copied().collect();

    // The online users connect first.
    let ramp = Instant::now();
    let (ready_tx, mut ready_rx) = mpsc::channel::<u32>(1024);
    let (start_tx, start_rx) = watch::channel::<Option<Window>>(None);
    let mut churn_txs = Vec::with_capacity(n);
    let mut tasks = JoinSet::new();
    for i in 0..n as u32 {
        let (churn_tx, churn_rx) = mpsc::channel(1);
        churn_txs.push(churn_tx);
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let mut start = start_rx.clone();
        let starts_offline = offline.contains(&i);
        let offline_delay = chat.offline_delay;
        tasks.spawn(async move {
            let placeholder = Window {
                start: ramp,
                from_us: 0,
                to_us: 0,
            };
            let mut user = User {
                index: i,
                shared: shared.clone(),
                conn: None,
                session: session::Session::default(),
                fresh_next: false,
                online_at: ramp,
                next_seq: HashMap::new(),
                inflight: HashMap::new(),
                order: 0,
                accepted: HashMap::new(),
                inbox: Inbox::default(),
                tally: Tally::new(),
                window: placeholder,
                churn_flip: false,
            };
            if !starts_offline {
                user.connect().await;
            }
            let _ = ready.send(i).await;
            drop(ready);
            let window = loop {
                if let Some(w) = *start.borrow_and_update() {
                    break w;
                }
                if start.changed().await.is_err() {
                    return user.run(churn_rx).await;
                }
            };
            user.window = window;
            if starts_offline {
                user.online_at = window.start + offline_delay;
            }
            // Frames that came during the ramp (none are sent yet) are read in `run`.
            user.run(churn_rx).await
        });
    }
    drop(ready_tx);
    let mut ready = 0;
    while ready < n {
        match ready_rx.recv().await {
            Some(_) => ready += 1,
            None => break,
        }
    }
    let failed = shared.connect_failures.load(Ordering::Relaxed) as usize;
    if n > offline_count && failed >= n - offline_count {
        shared.stop.cancel();
        while tasks.join_next().await.is_some() {}
        let why = shared
            .connect_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .unwrap_or_default();
        bail!("no user could connect: {why}");
    }
    let start = Instant::now() + Duration::from_millis(100);
    let from_us = u64::try_from(
        (start + config.warmup)
            .duration_since(shared.origin)
            .as_micros(),
    )
    .unwrap_or(0);
    let to_us = from_us + u64::try_from(config.duration.as_micros()).unwrap_or(u64::MAX);
    let end = start + config.warmup + config.duration;
    let _ = start_tx.send(Some(Window {
        start,
        from_us,
        to_us,
    }));
    tracing::info!(
        users = n,
        offline = offline_count,
        "messages: ramp-up done, sending"
    );
    let churn = if config.churn_rate > 0.0 {
        Some(tokio::spawn(churn_users(
            churn_txs,
            config.churn_rate,
            start,
            end,
        )))
    } else {
        None
    };
    tokio::time::sleep_until(end).await;
    shared.stop_sending.cancel();
    if let Some(c) = churn {
        c.abort();
    }
    // Settle: every answer back, every accepted message received (or the timeout).
    let settle_start = Instant::now();
    let deadline = settle_start + config.timeout.max(chat.offline_delay);
    loop {
        let done = shared.inflight.load(Ordering::Relaxed) <= 0
            && shared.received.load(Ordering::Relaxed) >= shared.accepted.load(Ordering::Relaxed);
        if done || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let settle = settle_start.elapsed();
    shared.stop.cancel();
    let mut outcomes = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        if let Ok(o) = r {
            outcomes.push(o);
        }
    }
    outcomes.sort_by_key(|o| o.index);
    Ok(build(config, &shared, outcomes, settle))
}

fn build(
    config: &Config,
    shared: &Shared,
    outcomes: Vec<Outcome>,
    settle: Duration,
) -> MessagesReport {
    let mut accept = hist();
    let mut live = hist();
    let mut stored = hist();
    let mut r = MessagesReport {
        users: config.chat.users,
        rate: config.rate,
        window: config.chat.window,
        duration_s: config.duration.as_secs_f64(),
        connect_failures: shared.connect_failures.load(Ordering::Relaxed),
        settle_s: (settle.as_secs_f64() * 10.0).round() / 10.0,
        ..MessagesReport::default()
    };
    let mut delivered_in_window = 0;
    for o in &outcomes {
        let t = &o.tally;
        let _ = accept.add(&t.accept);
        let _ = live.add(&t.live);
        let _ = stored.add(&t.stored);
        r.sent += t.sent;
        r.accepted += t.accepted;
        for (k, v) in &t.refused {
            *r.refused.entry(k.clone()).or_default() += v;
        }
        r.duplicated += t.duplicated;
        r.reordered += t.reordered;
        r.redelivered += t.redelivered;
        r.delivered_notices += t.delivered_notices;
        delivered_in_window += t.delivered_in_window;
        r.connections += t.connections;
        r.resumed += t.resumed;
        r.fresh_sessions += t.fresh;
        r.connections_lost += t.lost_conns;
        r.churn_drops += t.churn_drops;
        r.churn_logouts += t.churn_logouts;
        r.frames_lost += t.frames.lost;
        r.frames_duplicated += t.frames.duplicated;
        r.unanswered += o.unanswered;
    }
    // Lost: accepted for a recipient that never got it.
    let by_index: HashMap<u32, &Outcome> = outcomes.iter().map(|o| (o.index, o)).collect();
    for o in &outcomes {
        for (to, seqs) in &o.accepted {
            let Some(rcpt) = by_index.get(to) else {
                r.lost += seqs.len() as u64;
                continue;
            };
            let missing = seqs
                .iter()
                .filter(|s| !rcpt.inbox.has(o.index, **s))
                .count();
            if missing > 0 {
                tracing::warn!(
                    from = o.index,
                    to,
                    missing,
                    "accepted messages never received"
                );
            }
            r.lost += missing as u64;
        }
    }
    let secs = config.duration.as_secs_f64().max(1e-9);
    r.accepted_per_s = (r.accepted as f64 / secs).round();
    r.delivered_per_s = (delivered_in_window as f64 / secs).round();
    r.accept = Latency::of(&accept);
    r.deliver_live = Latency::of(&live);
    r.deliver_stored = Latency::of(&stored);
    r
}

/// At `rate` per second, one random user drops its connection or logs out, and comes back.
async fn churn_users(users: Vec<mpsc::Sender<()>>, rate: f64, start: Instant, end: Instant) {
    tokio::time::sleep_until(start).await;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while Instant::now() < end {
        tick.tick().await;
        let i = rand::rng().random_range(0..users.len());
        let _ = users[i].try_send(());
    }
}
