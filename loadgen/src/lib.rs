//! Load generator for the signaling cluster: simulated users log in like real clients, pairs
//! of them set up calls on an open-loop schedule (or closed loop), and the run reports call
//! setup latency per route, throughput and failures. `run(config)` is the whole run.

pub mod arrival;
pub mod client;
pub mod config;
pub mod embedded;
pub mod messages;
pub mod plot;
pub mod presence;
pub mod progress;
pub mod report;
pub mod rooms;
pub mod scenario;
pub mod schedule;
pub mod sdp;
pub mod session;
pub mod stats;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rand::seq::SliceRandom;
use rand::Rng;
use signal_proto::UserId;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use config::{Args, Config, Scenario, Target};
pub use report::Report;

use client::Connector;
use embedded::Embedded;
use progress::Progress;
use scenario::{Pair, Shared};
use schedule::Schedule;
use stats::{Failure, Recorder};

/// Runs the load described by `config` and returns what was measured; also writes `--json`
/// and `--plot` when asked. With `--embedded`, starts the cluster first and stops it after.
pub async fn run(config: Config) -> anyhow::Result<Report> {
    raise_open_files(&config)?;
    let cluster = match config.target {
        Target::Embedded => Some(
            Embedded::start(&config)
                .await
                .context("--embedded: starting the cluster")?,
        ),
        _ => None,
    };
    let mut cluster = cluster;
    let (target, label) = match (&cluster, &config.target) {
        (Some(c), _) => (
            Target::Central(c.central_url()),
            format!(
                "embedded cluster ({} nodes, central {})",
                c.node_ids().len(),
                c.central_url()
            ),
        ),
        (None, Target::Central(url)) => (config.target.clone(), format!("central {url}")),
        (None, Target::Nodes(urls)) => {
            (config.target.clone(), format!("nodes {}", urls.join(", ")))
        }
        (None, Target::Embedded) => bail!("embedded cluster missing"),
    };
    let result = if config.scenario == Scenario::Messages {
        drive_messages(&config, &target)
            .await
            .map(|m| (Recorder::new().finish(), Some(m)))
    } else {
        drive(&config, &target, cluster.as_mut())
            .await
            .map(|s| (s, None))
    };
    if let Some(c) = cluster {
        c.shutdown().await;
    }
    let (stats, messages) = result?;
    let mut report = Report::build(&config, label, &stats);
    report.chat = messages;
    if let Some(path) = &config.json {
        std::fs::write(path, report.to_json())
            .with_context(|| format!("--json: writing {}", path.display()))?;
    }
    if let Some(path) = &config.plot {
        plot::write_svg(&report, path).context("--plot")?;
    }
    Ok(report)
}

/// Raises the open-file limit for this many connections: the soft limit up to the hard one,
/// and (where allowed) the hard one too when it is below what the run needs. Refuses to start
/// a run that cannot have its connections.
fn raise_open_files(config: &Config) -> anyhow::Result<()> {
    let users = if config.scenario == Scenario::Messages {
        config.chat.users
    } else {
        config.pairs * 2
    };
    raise_open_files_for(config, users)
}

/// [`raise_open_files`] for `users` connections.
pub(crate) fn raise_open_files_for(config: &Config, users: usize) -> anyhow::Result<()> {
    use rlimit::Resource;
    // An embedded cluster holds the server side of every connection in this process too.
    let per_user = if config.target == Target::Embedded {
        2
    } else {
        1
    };
    let needed = (users as u64) * per_user + 256;
    if let Ok((soft, hard)) = rlimit::getrlimit(Resource::NOFILE) {
        if hard < needed {
            let cap = std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(needed);
            let want = needed.min(cap);
            if let Err(e) = rlimit::setrlimit(Resource::NOFILE, soft.max(want), want) {
                tracing::debug!(error = %e, "cannot raise the hard open-file limit");
            }
        }
    }
    let limit = rlimit::increase_nofile_limit(u64::MAX).context("raising the open-file limit")?;
    if limit < needed {
        let hint = if per_user == 2 {
            "; --embedded holds both ends of every connection: run the cluster in its own process (central --dev) and use --central"
        } else {
            ""
        };
        bail!(
            "{users} users: needs about {needed} open files but the limit is {limit} (raise it with ulimit -Hn){hint}"
        );
    }
    Ok(())
}

async fn drive_messages(
    config: &Config,
    target: &Target,
) -> anyhow::Result<messages::MessagesReport> {
    let connector = Connector::new(
        target,
        config.jwt_secret.as_deref().map(|s| {
            client::JwtMinter::new(s, config.jwt_audience.clone(), config.jwt_issuer.clone())
        }),
        config.bind_ips.clone(),
        config.timeout,
        config.connect_concurrency,
    )?;
    messages::drive(config, connector, &run_id()).await
}

/// Runs `--scenario presence` (see [`presence`]); also writes `--json` when asked.
pub async fn run_presence(config: Config) -> anyhow::Result<presence::PresenceReport> {
    raise_open_files(&Config {
        pairs: config.users.div_ceil(2),
        ..config.clone()
    })?;
    let cluster = match config.target {
        Target::Embedded => Some(
            Embedded::start(&config)
                .await
                .context("--embedded: starting the cluster")?,
        ),
        _ => None,
    };
    let (target, label) = match (&cluster, &config.target) {
        (Some(c), _) => (
            Target::Central(c.central_url()),
            format!("embedded cluster ({} nodes)", c.node_ids().len()),
        ),
        (None, Target::Central(url)) => (config.target.clone(), format!("central {url}")),
        (None, Target::Nodes(urls)) => {
            (config.target.clone(), format!("nodes {}", urls.join(", ")))
        }
        (None, Target::Embedded) => bail!("embedded cluster missing"),
    };
    let result = presence::run(&config, &target, label).await;
    if let Some(c) = cluster {
        c.shutdown().await;
    }
    let report = result?;
    if let Some(path) = &config.json {
        let text = serde_json::to_string_pretty(&report).context("--json")?;
        std::fs::write(path, text)
            .with_context(|| format!("--json: writing {}", path.display()))?;
    }
    Ok(report)
}

pub(crate) fn run_id() -> String {
    let mut rng = rand::rng();
    (0..6)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
        .collect()
}

async fn drive(
    config: &Config,
    target: &Target,
    cluster: Option<&mut Embedded>,
) -> anyhow::Result<stats::Stats> {
    let recorder = Arc::new(Recorder::new());
    let connector = Connector::new(
        target,
        config.jwt_secret.as_deref().map(|s| {
            client::JwtMinter::new(s, config.jwt_audience.clone(), config.jwt_issuer.clone())
        }),
        config.bind_ips.clone(),
        config.timeout,
        config.connect_concurrency,
    )?;
    let (start_tx, start_rx) = watch::channel(None);
    let stop = CancellationToken::new();
    let shared = Arc::new(Shared {
        connector,
        recorder: recorder.clone(),
        start: start_rx,
        candidates: config.candidates,
        timeout: config.timeout,
        stop: stop.clone(),
    });
    let nodes = match target {
        Target::Nodes(urls) => urls.len().max(1),
        _ => 1,
    };
    let run = run_id();
    let progress = Progress::new(config.progress);
    progress.connecting(config.pairs as u64 * 2);

    // Ramp-up: the users log in one after the other in a random order (so that central's
    // balancing does not line the pairs up on one route), spread over --ramp-up.
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(1024);
    let mut churn = Vec::with_capacity(config.pairs);
    let mut tasks = JoinSet::new();
    let users = config.pairs * 2;
    let spacing = if config.ramp_up.is_zero() {
        Duration::from_micros(20)
    } else {
        config.ramp_up.div_f64(users as f64)
    };
    let mut order: Vec<u32> = (0..users as u32).collect();
    order.shuffle(&mut rand::rng());
    let ramp_start = Instant::now();
    let slot_time = |position: u32| ramp_start + spacing * position;
    for i in 0..config.pairs {
        let user = |s: &str| {
            UserId::new(format!("{}-{run}-{i}{s}", config.user_prefix)).context("--user-prefix")
        };
        let users = (user("a")?, user("b")?);
        // With --node, half the pairs have both users on one node, half on two.
        let slots = (i, i + i / nodes);
        let (churn_tx, churn_rx) = mpsc::channel(1);
        churn.push(churn_tx);
        let at = (slot_time(order[2 * i]), slot_time(order[2 * i + 1]));
        let pair = Pair::new(i, users, slots, shared.clone(), churn_rx);
        tasks.spawn(pair.run(at, ready_tx.clone()));
    }
    drop(ready_tx);
    let mut ready = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while ready < config.pairs {
        tokio::select! {
            r = ready_rx.recv() => match r {
                Some(()) => ready += 1,
                None => break,
            },
            _ = tick.tick() => {}
        }
        let s = recorder.live().open();
        progress.set_connected(s.max(0) as u64, 0);
    }
    if recorder.live().open() <= 0 {
        stop.cancel();
        while tasks.join_next().await.is_some() {}
        progress.finish();
        let why = recorder.connect_error().unwrap_or_default();
        bail!("no user could connect to {target:?}: {why}");
    }
    progress.set_connected(recorder.live().open().max(0) as u64, 0);
    progress.finish();
    tracing::info!(
        open = recorder.live().open(),
        "ramp-up done, starting the schedule"
    );

    // The run.
    let schedule = Arc::new(Schedule::new(
        Instant::now(),
        config.rate,
        config.warmup,
        config.duration,
    ));
    recorder.start_window(&schedule);
    let _ = start_tx.send(Some(schedule.clone()));
    let progress = Progress::new(config.progress);
    let ticker = progress.follow(schedule.clone(), recorder.clone());
    let mut helpers = JoinSet::new();
    if config.churn_rate > 0.0 {
        helpers.spawn(churn_users(churn, config.churn_rate, schedule.clone()));
    }
    let mut cluster = cluster;
    if config.scenario == Scenario::Rolling {
        match cluster.as_deref_mut() {
            Some(c) => roll(c, config, &schedule, &recorder).await?,
            None => tracing::info!("--scenario rolling: the nodes are restarted from outside"),
        }
    }
    if config.scenario == Scenario::Reconnect {
        let c = cluster.context("--scenario reconnect needs --embedded")?;
        let at = schedule.warmup_end() + config.duration / 4;
        tokio::time::sleep_until(at).await;
        let ids = c.node_ids();
        let node = ids
            .get(config.drain_node)
            .with_context(|| format!("--drain-node {} out of range", config.drain_node))?;
        tracing::info!(node, "draining");
        recorder.drain_started(node);
        c.drain_node(config.drain_node)?;
    }
    // Pairs finish their last call after the end; calls still hanging after a grace period
    // are cut off and count as failed.
    let grace = schedule.end() + config.timeout + Duration::from_secs(1);
    tokio::select! {
        _ = async { while tasks.join_next().await.is_some() {} } => {}
        _ = tokio::time::sleep_until(grace) => {
            tracing::warn!("calls still running after the grace period: stopping them");
            stop.cancel();
            while tasks.join_next().await.is_some() {}
        }
    }
    helpers.abort_all();
    ticker.abort();
    progress.finish();
    // Setups that were due but never started (every pair stuck) failed too: no omission.
    while let Some(job) = schedule.claim() {
        recorder.record_failure(None, job.due, Failure::NotStarted);
    }
    Ok(recorder.finish())
}

/// The rolling restart of the embedded cluster: from the end of the warm-up, each node in turn
/// is drained, waited for until stopped, started again and waited for until registered; then
/// `--roll-pause` before the next. Nodes not reached before the end of the run are skipped.
async fn roll(
    cluster: &mut Embedded,
    config: &Config,
    schedule: &Schedule,
    recorder: &Recorder,
) -> anyhow::Result<()> {
    let ids = cluster.node_ids();
    recorder.roll_planned(ids.len());
    tokio::time::sleep_until(schedule.warmup_end()).await;
    for (i, id) in ids.iter().enumerate() {
        if Instant::now() >= schedule.end() {
            tracing::warn!(node = %id, "--scenario rolling: the run ended before this node's turn (raise --duration)");
            break;
        }
        tracing::info!(node = %id, "rolling restart: draining");
        let began = Instant::now();
        cluster.restart_node(i).await?;
        let took = began.elapsed();
        tracing::info!(node = %id, ?took, "rolling restart: node back");
        recorder.rolled(id, took);
        if i + 1 < ids.len() {
            tokio::time::sleep(config.roll_pause).await;
        }
    }
    Ok(())
}

/// Churn: at `rate` per second, one user of a random pair logs out and in again.
async fn churn_users(pairs: Vec<mpsc::Sender<()>>, rate: f64, schedule: Arc<Schedule>) {
    if pairs.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < schedule.end() {
        tick.tick().await;
        let i = rand::rng().random_range(0..pairs.len());
        // A pair that has not handled its last churn yet is skipped.
        let _ = pairs[i].try_send(());
    }
}
