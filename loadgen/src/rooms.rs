//! `--scenario rooms`: `--rooms` R rooms of `--room-members` M users each, spread over the
//! nodes; each room gets `--room-rate` messages per second (open loop, senders in turn). Every
//! member checks per-sender order; the run reports send -> last member (p50/p99/max) and
//! send -> each member, both as read by this client and as arrived at the member's socket (the
//! kernel's receive timestamp, see `arrival`), deliveries per second, lost, reordered and
//! duplicated deliveries.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use signal_proto::rooms::Join;
use signal_proto::{ChatMessage, Message, MessageId, RoomId, UserId};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{Connector, Frame, JwtMinter};
use crate::config::{Config, Target};
use crate::embedded::Embedded;
use crate::session::frame_number;
use crate::stats::Hist;

/// Acknowledge after this many numbered frames (keeps the node's resume buffer short).
const ACK_EVERY: u64 = 64;
/// Room frames are a few hundred bytes: a larger frame grows the buffer for itself.
const ROOM_READ_BUFFER: usize = 256;
/// After the last send, how long deliveries may still arrive before they count as lost.
const DRAIN: Duration = Duration::from_secs(3);

fn hist() -> Hist {
    #[allow(clippy::expect_used)]
    Hist::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// The fields of a frame the measured loop reads, borrowed from its text: no full parse of
/// every delivery (a `Message` parse buffers every field, and the client reads 1,000 frames
/// per message of a 1,000-member room on the same cores as the nodes).
#[derive(serde::Deserialize)]
struct Light<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    body: Option<Cow<'a, str>>,
    /// The frame number (contract section 5).
    #[serde(default)]
    n: Option<u64>,
    #[serde(rename = "errorType", default, borrow)]
    error_type: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    description: Option<Cow<'a, str>>,
}

/// One message in flight: how many members have not got it yet.
struct InFlight {
    sender: u32,
    sent: Instant,
    /// The same moment on the wall clock (the kernel stamps arrivals with it).
    sent_wall: SystemTime,
    /// The latest arrival at a member's socket so far.
    arrived: Option<SystemTime>,
    remaining: usize,
    measured: bool,
}

#[derive(Default)]
struct Tally {
    /// Per room, by sequence number (a handful each: no hashing per delivery, which was
    /// 3 % of the client's samples in a 1,000-member room).
    in_flight: Vec<BTreeMap<u64, InFlight>>,
    /// Messages in `in_flight`.
    open: usize,
    last_member: Option<Hist>,
    each_member: Option<Hist>,
    /// As above, to the arrival at the member's socket.
    last_arrived: Option<Hist>,
    each_arrived: Option<Hist>,
    sent: u64,
    accepted: u64,
    refused: u64,
    delivered: u64,
    delivered_measured: u64,
    reordered: u64,
    duplicates: u64,
    /// Frames a member did not expect (other rooms, unknown senders).
    stray: u64,
    /// Deliveries without the kernel's receive timestamp (counted as arrived when read).
    unstamped: u64,
}

/// Shared by every member task.
struct Tracker {
    tally: Mutex<Tally>,
    members: usize,
    measure_from: Instant,
    measure_until: Instant,
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sending(&self, room: u32, sender: u32, seq: u64, at: Instant, wall: SystemTime) {
        let mut t = self.lock();
        let t = &mut *t;
        t.sent += 1;
        let Some(room) = t.in_flight.get_mut(room as usize) else {
            return;
        };
        let fresh = InFlight {
            sender,
            sent: at,
            sent_wall: wall,
            arrived: None,
            remaining: self.members - 1,
            measured: at >= self.measure_from && at < self.measure_until,
        };
        if room.insert(seq, fresh).is_none() {
            t.open += 1;
        }
    }

    fn received(&self, room: u32, sender: u32, seq: u64, at: Instant, arrival: Option<SystemTime>) {
        let mut t = self.lock();
        let t = &mut *t;
        let Some(room) = t.in_flight.get_mut(room as usize) else {
            t.stray += 1;
            return;
        };
        let Some(f) = room.get_mut(&seq).filter(|f| f.sender == sender) else {
            t.duplicates += 1;
            return;
        };
        t.delivered += 1;
        let took = at.saturating_duration_since(f.sent);
        // A frame the kernel did not stamp counts as arrived when it was read (never earlier).
        if arrival.is_none() {
            t.unstamped += 1;
        }
        let arrival = arrival.unwrap_or(f.sent_wall + took);
        let arrived = arrival.duration_since(f.sent_wall).unwrap_or_default();
        f.arrived = f.arrived.max(Some(arrival));
        if f.measured {
            t.delivered_measured += 1;
            t.each_member
                .get_or_insert_with(hist)
                .saturating_record(us(took));
            t.each_arrived
                .get_or_insert_with(hist)
                .saturating_record(us(arrived));
        }
        f.remaining = f.remaining.saturating_sub(1);
        if f.remaining == 0 {
            if f.measured {
                t.last_member
                    .get_or_insert_with(hist)
                    .saturating_record(us(took));
                if let Some(last) = f.arrived {
                    let a = last.duration_since(f.sent_wall).unwrap_or_default();
                    t.last_arrived
                        .get_or_insert_with(hist)
                        .saturating_record(us(a));
                }
            }
            room.remove(&seq);
            t.open -= 1;
        }
    }
}

/// What a rooms run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomsReport {
    pub target: String,
    pub rooms: usize,
    pub members_per_room: usize,
    pub rate_per_room: f64,
    pub duration_s: f64,
    /// Members per node (from the Welcomes).
    pub nodes: BTreeMap<String, usize>,
    pub sent: u64,
    pub accepted: u64,
    pub refused: u64,
    pub delivered: u64,
    pub deliveries_per_s: f64,
    pub lost: u64,
    pub reordered: u64,
    pub duplicates: u64,
    pub stray: u64,
    pub last_member_p50_ms: f64,
    pub last_member_p99_ms: f64,
    pub last_member_max_ms: f64,
    pub each_member_p50_ms: f64,
    pub each_member_p99_ms: f64,
    /// Send -> arrival at the member's socket (kernel receive timestamp): the server's part,
    /// without the time this client takes to read a thousand sockets on shared cores.
    pub last_member_arrived_p50_ms: f64,
    pub last_member_arrived_p99_ms: f64,
    pub last_member_arrived_max_ms: f64,
    pub each_member_arrived_p50_ms: f64,
    pub each_member_arrived_p99_ms: f64,
    /// Deliveries the kernel did not stamp: their arrival is when they were read.
    pub unstamped: u64,
}

impl RoomsReport {
    pub fn failed(&self) -> u64 {
        self.lost + self.reordered + self.duplicates + self.refused
    }
}

impl std::fmt::Display for RoomsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "rooms scenario against {}", self.target)?;
        writeln!(
            f,
            "  {} rooms x {} members, {} msg/s per room, {:.1} s measured; members per node: {:?}",
            self.rooms, self.members_per_room, self.rate_per_room, self.duration_s, self.nodes
        )?;
        writeln!(
            f,
            "  sent {}  accepted {}  refused {}  delivered {}  ({:.0} deliveries/s measured)",
            self.sent, self.accepted, self.refused, self.delivered, self.deliveries_per_s
        )?;
        writeln!(
            f,
            "  send -> last member: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            self.last_member_p50_ms, self.last_member_p99_ms, self.last_member_max_ms
        )?;
        writeln!(
            f,
            "  send -> each member: p50 {:.2} ms  p99 {:.2} ms",
            self.each_member_p50_ms, self.each_member_p99_ms
        )?;
        writeln!(
            f,
            "  arrived at the socket: last member p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms; each member p50 {:.2} ms  p99 {:.2} ms ({} unstamped)",
            self.last_member_arrived_p50_ms,
            self.last_member_arrived_p99_ms,
            self.last_member_arrived_max_ms,
            self.each_member_arrived_p50_ms,
            self.each_member_arrived_p99_ms,
            self.unstamped
        )?;
        write!(
            f,
            "  lost {}  reordered {}  duplicates {}  stray {}",
            self.lost, self.reordered, self.duplicates, self.stray
        )
    }
}

fn ms(h: &Option<Hist>, q: f64) -> f64 {
    h.as_ref()
        .map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0)
}

/// Runs the rooms scenario (starts and stops the embedded cluster with `--embedded`).
pub async fn run(config: &Config) -> anyhow::Result<RoomsReport> {
    crate::raise_open_files_for(config, config.rooms * config.room_members)?;
    let cluster = match config.target {
        Target::Embedded => Some(
            Embedded::start(config)
                .await
                .context("--embedded: starting the cluster")?,
        ),
        _ => None,
    };
    let (target, label) = match (&cluster, &config.target) {
        (Some(c), _) => (
            Target::Central(c.central_url()),
            format!("embedded cluster (central {})", c.central_url()),
        ),
        (None, Target::Central(url)) => (config.target.clone(), format!("central {url}")),
        (None, Target::Nodes(urls)) => {
            (config.target.clone(), format!("nodes {}", urls.join(", ")))
        }
        (None, Target::Embedded) => bail!("embedded cluster missing"),
    };
    let result = drive(config, &target, label).await;
    if let Some(c) = cluster {
        c.shutdown().await;
    }
    let report = result?;
    if let Some(path) = &config.json {
        let text = serde_json::to_string_pretty(&report).context("report as JSON")?;
        std::fs::write(path, text)
            .with_context(|| format!("--json: writing {}", path.display()))?;
    }
    Ok(report)
}

enum Cmd {
    Send(u64),
}

async fn drive(config: &Config, target: &Target, label: String) -> anyhow::Result<RoomsReport> {
    let (rooms, members) = (config.rooms, config.room_members);
    if members < 2 {
        bail!("--room-members must be at least 2");
    }
    let connector = Arc::new(
        Connector::new(
            target,
            config
                .jwt_secret
                .as_deref()
                .map(|s| JwtMinter::new(s, config.jwt_audience.clone(), config.jwt_issuer.clone())),
            config.bind_ips.clone(),
            config.timeout,
            config.connect_concurrency,
        )?
        .with_read_buffer(ROOM_READ_BUFFER)
        .with_arrival_stamps(),
    );
    let run = crate::run_id();
    let now = Instant::now();
    // Placeholder until everyone joined; replaced below.
    let tracker_cell: Arc<Mutex<Option<Arc<Tracker>>>> = Arc::default();
    let stop = CancellationToken::new();
    let (ready_tx, mut ready_rx) = mpsc::channel::<anyhow::Result<String>>(1024);
    let mut tasks = JoinSet::new();
    let mut senders: Vec<Vec<mpsc::Sender<Cmd>>> = Vec::with_capacity(rooms);
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    for r in 0..rooms {
        let room = RoomId::new(format!("{}-{run}-room{r}", config.user_prefix))
            .context("--user-prefix")?;
        let mut room_senders = Vec::with_capacity(members);
        for m in 0..members {
            let user = UserId::new(format!("{}-{run}-r{r}m{m}", config.user_prefix))
                .context("--user-prefix")?;
            let (tx, rx) = mpsc::channel(64);
            room_senders.push(tx);
            let member = Member {
                room: room.clone(),
                room_ix: r as u32,
                me: m as u32,
                user,
                slot: r * members + m,
                room_size: members,
            };
            tasks.spawn(member.run(
                connector.clone(),
                rx,
                ready_tx.clone(),
                go_rx.clone(),
                tracker_cell.clone(),
                stop.clone(),
            ));
        }
        senders.push(room_senders);
    }
    drop(ready_tx);
    let total = rooms * members;
    let mut nodes: BTreeMap<String, usize> = BTreeMap::new();
    let mut joined = 0;
    while joined < total {
        match ready_rx.recv().await {
            Some(Ok(node)) => {
                *nodes.entry(node).or_default() += 1;
                joined += 1;
            }
            Some(Err(e)) => {
                stop.cancel();
                return Err(e.context("a member could not connect and join"));
            }
            None => bail!("member tasks ended before joining"),
        }
    }
    tracing::info!(
        rooms,
        members,
        took_ms = now.elapsed().as_millis() as u64,
        "every member joined"
    );
    let start = Instant::now();
    let tracker = Arc::new(Tracker {
        tally: Mutex::new(Tally {
            in_flight: (0..rooms).map(|_| BTreeMap::new()).collect(),
            ..Tally::default()
        }),
        members,
        measure_from: start + config.warmup,
        measure_until: start + config.warmup + config.duration,
    });
    *tracker_cell.lock().unwrap_or_else(PoisonError::into_inner) = Some(tracker.clone());
    let _ = go_tx.send(true);
    // One open-loop schedule per room, phases spread evenly.
    let interval = Duration::from_secs_f64(1.0 / config.room_rate.max(0.001));
    let end = start + config.warmup + config.duration;
    let mut schedulers = JoinSet::new();
    for (r, room_senders) in senders.into_iter().enumerate() {
        let phase = interval.mul_f64(r as f64 / rooms as f64);
        let tracker = tracker.clone();
        schedulers.spawn(async move {
            let mut at = start + phase;
            let mut seq = 0u64;
            while at < end {
                tokio::time::sleep_until(at).await;
                let sender = (seq as usize) % room_senders.len();
                tracker.sending(
                    r as u32,
                    sender as u32,
                    seq,
                    Instant::now(),
                    SystemTime::now(),
                );
                if room_senders[sender].send(Cmd::Send(seq)).await.is_err() {
                    break;
                }
                seq += 1;
                at += interval;
            }
        });
    }
    while schedulers.join_next().await.is_some() {}
    // Let the last deliveries and the last answers arrive (a sender's Accepted follows the
    // fan-out, so it can come after every member has the message).
    let drain_until = Instant::now() + DRAIN;
    let settled = |t: &Tally| t.open == 0 && t.accepted + t.refused >= t.sent;
    while Instant::now() < drain_until && !settled(&tracker.lock()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    let t = tracker.lock();
    let lost: u64 = t
        .in_flight
        .iter()
        .flat_map(|r| r.values())
        .map(|f| f.remaining as u64)
        .sum();
    Ok(RoomsReport {
        target: label,
        rooms,
        members_per_room: members,
        rate_per_room: config.room_rate,
        duration_s: config.duration.as_secs_f64(),
        nodes,
        sent: t.sent,
        accepted: t.accepted,
        refused: t.refused,
        delivered: t.delivered,
        deliveries_per_s: t.delivered_measured as f64 / config.duration.as_secs_f64(),
        lost,
        reordered: t.reordered,
        duplicates: t.duplicates,
        stray: t.stray,
        last_member_p50_ms: ms(&t.last_member, 0.5),
        last_member_p99_ms: ms(&t.last_member, 0.99),
        last_member_max_ms: ms(&t.last_member, 1.0),
        each_member_p50_ms: ms(&t.each_member, 0.5),
        each_member_p99_ms: ms(&t.each_member, 0.99),
        last_member_arrived_p50_ms: ms(&t.last_arrived, 0.5),
        last_member_arrived_p99_ms: ms(&t.last_arrived, 0.99),
        last_member_arrived_max_ms: ms(&t.last_arrived, 1.0),
        each_member_arrived_p50_ms: ms(&t.each_arrived, 0.5),
        each_member_arrived_p99_ms: ms(&t.each_arrived, 0.99),
        unstamped: t.unstamped,
    })
}

struct Member {
    room: RoomId,
    room_ix: u32,
    me: u32,
    user: UserId,
    slot: usize,
    room_size: usize,
}

impl Member {
    #[allow(clippy::too_many_arguments)]
    async fn run(
        self,
        connector: Arc<Connector>,
        mut cmds: mpsc::Receiver<Cmd>,
        ready: mpsc::Sender<anyhow::Result<String>>,
        mut go: tokio::sync::watch::Receiver<bool>,
        tracker: Arc<Mutex<Option<Arc<Tracker>>>>,
        stop: CancellationToken,
    ) {
        let mut conn = match connector.connect(&self.user, self.slot, None).await {
            Ok(c) => c,
            Err(e) => {
                let _ = ready.send(Err(e)).await;
                return;
            }
        };
        if let Err(e) = conn
            .send(&Message::Join(Join {
                room: self.room.clone(),
            }))
            .await
        {
            let _ = ready.send(Err(e)).await;
            return;
        }
        let mut last_n = 0u64;
        // Wait for the Joined, then for a MemberJoined of every member not in it: the run
        // starts on quiet connections (no backlog of join events in the measured window).
        let mut joined: Option<usize> = None;
        let mut member_joined = 0usize;
        loop {
            if joined.is_some_and(|k| k + member_joined >= self.room_size) {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(30), conn.next()).await {
                Ok(Frame::Msg(m, _)) => {
                    last_n = frame_number(&m).unwrap_or(last_n).max(last_n);
                    match m {
                        Message::Joined(j) => joined = Some(j.members.len()),
                        Message::MemberJoined(_) if joined.is_some() => member_joined += 1,
                        Message::Error(e) => {
                            let _ = ready
                                .send(Err(anyhow::anyhow!(
                                    "Join refused: {:?} {:?}",
                                    e.error_type,
                                    e.description
                                )))
                                .await;
                            return;
                        }
                        _ => {}
                    }
                }
                Ok(Frame::Garbage) => {}
                Ok(Frame::Closed(code)) => {
                    let _ = ready
                        .send(Err(anyhow::anyhow!("closed while joining ({code:?})")))
                        .await;
                    return;
                }
                Err(_) => {
                    let _ = ready
                        .send(Err(anyhow::anyhow!(
                            "no Joined and member list within 30 s ({joined:?} + {member_joined} of {})",
                            self.room_size
                        )))
                        .await;
                    return;
                }
            }
        }
        let _ = ready.send(Ok(conn.node.clone())).await;
        // Until the run starts, read (and drop) the others' MemberJoined.
        while !*go.borrow() {
            tokio::select! {
                _ = go.changed() => {}
                f = conn.next() => if let Frame::Msg(m, _) = f {
                    last_n = frame_number(&m).unwrap_or(last_n).max(last_n);
                },
            }
        }
        let Some(tracker) = tracker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        else {
            return;
        };
        // Per sender (a member index): the next sequence number expected.
        let mut next_seq: Vec<u64> = vec![0; self.room_size];
        // Each member acks every ACK_EVERY frames, but not all at the same frame: the members
        // of a room see the same frame numbers, and 1,000 acks at once (every 64th message)
        // queued behind that message's fan-out on both nodes and in the client.
        let mut next_ack = last_n + 1 + (self.slot as u64 % ACK_EVERY);
        // One wait for the stop (not a new waiter on the shared token per frame), and no more
        // polls of the command channel once the room's scheduler is done: a closed channel is
        // ready at once, and polling it again spun every member task during the drain,
        // delaying the last deliveries of the measured window.
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        let mut sending = true;
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                cmd = cmds.recv(), if sending => {
                    let Some(Cmd::Send(seq)) = cmd else {
                        sending = false;
                        continue;
                    };
                    let Ok(id) = MessageId::new(format!("{}-{seq}", self.me)) else { continue };
                    let msg = Message::Message(ChatMessage {
                        from: None,
                        to: None,
                        room: Some(self.room.clone()),
                        id,
                        body: format!("{}:{seq}", self.me),
                        content_type: None,
                        ts: None,
                        delayed: None,
                        extra: Default::default(),
                    });
                    if conn.send(&msg).await.is_err() {
                        break;
                    }
                }
                f = conn.next_text_at() => match f {
                    Ok((text, at)) => {
                        let Ok(m) = serde_json::from_str::<Light<'_>>(text.as_str()) else {
                            tracker.lock().stray += 1;
                            continue;
                        };
                        if let Some(n) = m.n {
                            last_n = last_n.max(n);
                        }
                        match &*m.kind {
                            "Message" => {
                                let parsed = m.body.as_deref().and_then(|b| b.split_once(':')).and_then(|(s, q)| {
                                    Some((s.parse::<u32>().ok()?, q.parse::<u64>().ok()?))
                                });
                                let ours = m.room.as_deref() == Some(self.room.as_str());
                                match parsed {
                                    Some((sender, seq)) if ours && sender != self.me => {
                                        let Some(e) = next_seq.get_mut(sender as usize) else {
                                            tracker.lock().stray += 1;
                                            continue;
                                        };
                                        if seq < *e {
                                            tracker.lock().reordered += 1;
                                        } else {
                                            *e = seq + 1;
                                        }
                                        tracker.received(self.room_ix, sender, seq, at, conn.arrival());
                                    }
                                    _ => tracker.lock().stray += 1,
                                }
                            }
                            "Accepted" => tracker.lock().accepted += 1,
                            "Error" => {
                                let mut t = tracker.lock();
                                t.refused += 1;
                                if t.refused <= 5 {
                                    tracing::warn!(user = %self.user, error = ?m.error_type, description = ?m.description, "room message refused");
                                }
                            }
                            _ => {}
                        }
                        if last_n >= next_ack {
                            if conn.ack(last_n).await.is_err() {
                                break;
                            }
                            next_ack = last_n + ACK_EVERY;
                        }
                    }
                    Err(code) => {
                        tracing::warn!(user = %self.user, ?code, "member connection closed");
                        break;
                    }
                },
            }
        }
        conn.close().await;
    }
}
