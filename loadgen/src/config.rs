//! The run's configuration: the clap command line (every flag with a `LOADGEN_*` env var) and
//! the plain [`Config`] it is validated into.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};

/// What the clients talk to.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Start central + nodes in this process (`central::dev::DevCluster`) and use its central.
    Embedded,
    /// Log in through central's `/v1/endpoint` (e.g. `http://127.0.0.1:8080`).
    Central(String),
    /// Connect straight to these nodes' WebSocket URLs in dev-auth mode (`?user=`).
    Nodes(Vec<String>),
}

/// What the users do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Call setups only.
    Setup,
    /// Call setups while users log out and in again at `--churn-rate` per second.
    Churn,
    /// Call setups while one node drains mid-run (embedded only): its users reconnect.
    Reconnect,
    /// Call setups while every node is drained and restarted, one after the other (with
    /// --embedded loadgen restarts them; with --central the restarts come from outside, e.g.
    /// loadgen/bench/rolling.sh): users resume their sessions, no setup may fail.
    Rolling,
    /// Chat messages through the mailbox (`--users`, `--rate` messages/s or `--window`
    /// closed loop): `--offline-share` of the users log in after `--offline-delay`, users
    /// drop their connection or log out and come back at `--churn-rate`; reports send ->
    /// Accepted and send -> delivered latency and every lost, duplicated or reordered message.
    Messages,
    /// Presence (contract section 7): `--users` users each watching `--watch` others; at
    /// `--rate` per second one of them changes its state, or (a `--reconnect-share` of the
    /// events) drops its connection and resumes its session; change -> notified latency,
    /// notifications per change, and wrong or missing states at the end. With --central,
    /// nodes may be restarted from outside meanwhile (loadgen/bench/presence.sh).
    Presence,
    /// Rooms (no calls): `--rooms` rooms of `--room-members` members, `--room-rate` messages
    /// per second per room; reports send -> last member latency, deliveries/s, lost/reordered.
    Rooms,
}

/// A set of IPv4 source addresses to spread client sockets over.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BindIps {
    /// (first address, count) runs.
    runs: Vec<(u32, u32)>,
    total: u64,
}

impl BindIps {
    /// Parses `127.0.0.1-127.0.0.50`, `127.0.0.0/24`, `127.0.0.7`, or a comma list of those.
    pub fn parse(s: &str) -> Result<BindIps, String> {
        let mut ips = BindIps::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (first, count) = if let Some((a, b)) = part.split_once('-') {
                let a = parse_v4(a)?;
                let b = parse_v4(b)?;
                if b < a {
                    return Err(format!("range {part} ends before it starts"));
                }
                (a, b - a + 1)
            } else if let Some((a, bits)) = part.split_once('/') {
                let a = parse_v4(a)?;
                let bits: u32 = bits
                    .trim()
                    .parse()
                    .ok()
                    .filter(|b| *b <= 32)
                    .ok_or_else(|| format!("bad prefix length in {part}"))?;
                let size: u64 = 1u64 << (32 - bits);
                let net = if bits == 0 {
                    0
                } else {
                    a & (u32::MAX << (32 - bits))
                };
                if size >= 4 {
                    // Skip the network and broadcast addresses.
                    (net + 1, (size - 2) as u32)
                } else {
                    (net, size as u32)
                }
            } else {
                (parse_v4(part)?, 1)
            };
            ips.total += u64::from(count);
            ips.runs.push((first, count));
        }
        if ips.total == 0 {
            return Err("no address given".to_owned());
        }
        Ok(ips)
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn len(&self) -> u64 {
        self.total
    }

    /// The `i`-th address, round robin over the whole set; `None` when the set is empty.
    pub fn nth(&self, i: u64) -> Option<Ipv4Addr> {
        if self.total == 0 {
            return None;
        }
        let mut i = i % self.total;
        for &(first, count) in &self.runs {
            if i < u64::from(count) {
                return Some(Ipv4Addr::from(first + i as u32));
            }
            i -= u64::from(count);
        }
        None
    }
}

fn parse_v4(s: &str) -> Result<u32, String> {
    s.trim()
        .parse::<Ipv4Addr>()
        .map(u32::from)
        .map_err(|_| format!("{:?} is not an IPv4 address", s.trim()))
}

/// Everything a run needs (plain struct: tests build it directly).
#[derive(Debug, Clone)]
pub struct Config {
    pub target: Target,
    /// Number of nodes `--embedded` starts.
    pub embedded_nodes: usize,
    /// Mint HS256 JWTs (`sub` = user) with this secret for central's login.
    pub jwt_secret: Option<String>,
    /// The `aud` of those JWTs (central's `--jwt-audience`).
    pub jwt_audience: Option<String>,
    /// The `iss` of those JWTs (central's `--jwt-issuer`).
    pub jwt_issuer: Option<String>,
    pub scenario: Scenario,
    /// Pairs of users; each pair has its own two connections.
    pub pairs: usize,
    /// Target call setups per second over all pairs; 0 = closed loop.
    pub rate: f64,
    /// Measured time (after the warm-up).
    pub duration: Duration,
    /// Time before the measured window; its setups run but are left out of the figures.
    pub warmup: Duration,
    /// Candidates each way per call.
    pub candidates: usize,
    /// Source addresses for the client sockets (empty: let the OS choose).
    pub bind_ips: BindIps,
    /// Connections being opened at once.
    pub connect_concurrency: usize,
    /// Spread the first connections over this long.
    pub ramp_up: Duration,
    /// Give up on a step of a call (or a connection attempt) after this long.
    pub timeout: Duration,
    /// Logouts+logins per second in the churn scenario.
    pub churn_rate: f64,
    /// Index of the node drained in the reconnect scenario.
    pub drain_node: usize,
    /// Drain window of the embedded nodes (how long a drain spreads its closes over).
    pub drain_window: Duration,
    /// Rolling scenario: pause after a node is back before the next one is drained.
    pub roll_pause: Duration,
    /// Presence scenario: users, watched users each, share of events that are reconnects.
    pub users: usize,
    pub watch: usize,
    pub reconnect_share: f64,
    /// Rooms scenario: rooms, members per room, messages per second per room.
    pub rooms: usize,
    pub room_members: usize,
    pub room_rate: f64,
    /// Prefix of the generated user ids (a random run id is appended).
    pub user_prefix: String,
    /// Messages scenario: the chat settings.
    pub chat: ChatConfig,
    pub json: Option<PathBuf>,
    pub plot: Option<PathBuf>,
    pub fail_on_errors: bool,
    /// Show a progress bar (only when stdout is a terminal).
    pub progress: bool,
}

/// The messages scenario's settings (`--rate` is messages per second there).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatConfig {
    /// Users; each sends to random others.
    pub users: usize,
    /// Closed loop (`--rate 0`): messages each user has sent and not yet seen Accepted.
    pub window: usize,
    /// Share of the users that start offline and log in after `offline_delay`.
    pub offline_share: f64,
    pub offline_delay: Duration,
    /// Bytes of each message body.
    pub body_bytes: usize,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            users: 100,
            window: 8,
            offline_share: 0.2,
            offline_delay: Duration::from_secs(2),
            body_bytes: 64,
        }
    }
}

impl Config {
    /// A small embedded run, for tests and as the base of the CLI defaults.
    pub fn embedded() -> Config {
        Config {
            target: Target::Embedded,
            embedded_nodes: 2,
            jwt_secret: None,
            jwt_audience: None,
            jwt_issuer: None,
            scenario: Scenario::Setup,
            pairs: 20,
            rate: 50.0,
            duration: Duration::from_secs(3),
            warmup: Duration::from_secs(1),
            candidates: 4,
            bind_ips: BindIps::default(),
            connect_concurrency: 256,
            ramp_up: Duration::ZERO,
            timeout: Duration::from_secs(10),
            churn_rate: 0.0,
            drain_node: 0,
            drain_window: Duration::from_secs(2),
            roll_pause: Duration::from_secs(1),
            users: 100,
            watch: 10,
            reconnect_share: 0.1,
            rooms: 10,
            room_members: 10,
            room_rate: 1.0,
            user_prefix: "lg".to_owned(),
            chat: ChatConfig::default(),
            json: None,
            plot: None,
            fail_on_errors: false,
            progress: false,
        }
    }

    /// Whether setups run open loop (at a target rate).
    pub fn open_loop(&self) -> bool {
        self.rate > 0.0
    }
}

/// Load generator for the signaling cluster: call-setup latency and throughput.
///
/// Each pair of users repeatedly sets up a call: Offer -> Answer -> Ok, K Candidates each way,
/// Shutdown. Latency is measured from the moment a setup was scheduled (open loop), so a
/// stalled server shows up as latency rather than as fewer samples.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, allow_negative_numbers = true)]
pub struct Args {
    /// Start central + nodes in this process and run against them (one-line demo).
    #[arg(long, env = "LOADGEN_EMBEDDED", conflicts_with_all = ["central", "node"], value_parser = clap::builder::BoolishValueParser::new())]
    pub embedded: bool,

    /// Number of signal nodes `--embedded` starts.
    #[arg(long, env = "LOADGEN_EMBEDDED_NODES", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub embedded_nodes: u16,

    /// Central's HTTP URL (login via /v1/endpoint), e.g. http://127.0.0.1:8080.
    #[arg(long, env = "LOADGEN_CENTRAL", value_name = "URL", value_parser = parse_http_url, conflicts_with = "node")]
    pub central: Option<String>,

    /// A node's WebSocket URL (dev-auth, ?user=), e.g. ws://127.0.0.1:8090/ws; repeatable.
    #[arg(long, env = "LOADGEN_NODE", value_name = "URL", value_parser = parse_ws_url, value_delimiter = ',')]
    pub node: Vec<String>,

    /// Log in with HS256 JWTs signed with this secret (central in JWT mode).
    #[arg(
        long,
        env = "LOADGEN_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,

    /// The audience (`aud`) of those JWTs, for a central with --jwt-audience.
    #[arg(
        long,
        env = "LOADGEN_JWT_AUDIENCE",
        value_name = "AUD",
        requires = "jwt_secret"
    )]
    pub jwt_audience: Option<String>,

    /// The issuer (`iss`) of those JWTs, for a central with --jwt-issuer.
    #[arg(
        long,
        env = "LOADGEN_JWT_ISSUER",
        value_name = "ISS",
        requires = "jwt_secret"
    )]
    pub jwt_issuer: Option<String>,

    /// What the users do.
    #[arg(long, env = "LOADGEN_SCENARIO", value_enum, default_value_t = Scenario::Setup)]
    pub scenario: Scenario,

    /// Pairs of users (two connections each).
    #[arg(long, env = "LOADGEN_PAIRS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub pairs: u32,

    /// Target call setups per second over all pairs (open loop); 0 = closed loop.
    #[arg(long, env = "LOADGEN_RATE", value_name = "SETUPS_PER_S", default_value_t = 100.0, value_parser = parse_rate)]
    pub rate: f64,

    /// Measured seconds (after the warm-up).
    #[arg(long, env = "LOADGEN_DURATION", value_name = "SECONDS", default_value = "10", value_parser = parse_positive_secs)]
    pub duration: Duration,

    /// Seconds of warm-up before the measured window (excluded from the figures).
    #[arg(long, env = "LOADGEN_WARMUP", value_name = "SECONDS", default_value = "2", value_parser = parse_secs)]
    pub warmup: Duration,

    /// ICE candidates each way per call.
    #[arg(long, env = "LOADGEN_CANDIDATES", value_name = "K", default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub candidates: u32,

    /// Source IPv4 addresses for the client sockets: 127.0.0.1-127.0.0.50, 127.0.0.0/16, or a comma list.
    #[arg(long, env = "LOADGEN_BIND_IPS", value_name = "RANGE", value_parser = BindIps::parse)]
    pub bind_ips: Option<BindIps>,

    /// Connections opened at the same time.
    #[arg(long, env = "LOADGEN_CONNECT_CONCURRENCY", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connect_concurrency: u32,

    /// Spread the initial connections over this many seconds.
    #[arg(long, env = "LOADGEN_RAMP_UP", value_name = "SECONDS", default_value = "0", value_parser = parse_secs)]
    pub ramp_up: Duration,

    /// Seconds before a call step or a connection attempt counts as failed.
    #[arg(long, env = "LOADGEN_TIMEOUT", value_name = "SECONDS", default_value = "10", value_parser = parse_positive_secs)]
    pub timeout: Duration,

    /// Logouts + logins per second (churn scenario).
    #[arg(long, env = "LOADGEN_CHURN_RATE", value_name = "PER_S", default_value_t = 10.0, value_parser = parse_rate)]
    pub churn_rate: f64,

    /// Node index drained mid-run (reconnect scenario, embedded only).
    #[arg(long, env = "LOADGEN_DRAIN_NODE", default_value_t = 0)]
    pub drain_node: usize,

    /// Drain window of the embedded nodes, in seconds.
    #[arg(long, env = "LOADGEN_DRAIN_WINDOW", value_name = "SECONDS", default_value = "2", value_parser = parse_secs)]
    pub drain_window: Duration,

    /// Rolling scenario: seconds between a node being back and the drain of the next one.
    #[arg(long, env = "LOADGEN_ROLL_PAUSE", value_name = "SECONDS", default_value = "1", value_parser = parse_secs)]
    pub roll_pause: Duration,

    /// Messages and presence scenarios: number of users.
    #[arg(long, env = "LOADGEN_USERS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(2..=1_000_000))]
    pub users: u32,

    /// Messages scenario with --rate 0 (closed loop): messages per user awaiting Accepted.
    #[arg(long, env = "LOADGEN_WINDOW", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub window: u32,

    /// Messages scenario: share of the users (0..1) that start offline and log in later.
    #[arg(long, env = "LOADGEN_OFFLINE_SHARE", default_value_t = 0.2, value_parser = parse_share)]
    pub offline_share: f64,

    /// Messages scenario: seconds after the start at which the offline users log in.
    #[arg(long, env = "LOADGEN_OFFLINE_DELAY", value_name = "SECONDS", default_value = "2", value_parser = parse_secs)]
    pub offline_delay: Duration,

    /// Messages scenario: bytes of each message body (at least 40: it carries the sequence and clock).
    #[arg(long, env = "LOADGEN_BODY_BYTES", default_value_t = 64, value_parser = clap::value_parser!(u32).range(40..=65_536))]
    pub body_bytes: u32,

    /// Presence scenario: users each user watches (at most 1000, fewer than --users).
    #[arg(long, env = "LOADGEN_WATCH", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub watch: u32,

    /// Presence scenario: share of the events that are a reconnect (drop + resume) instead of
    /// a state change, 0 to 1.
    #[arg(long, env = "LOADGEN_RECONNECT_SHARE", default_value_t = 0.1, value_parser = parse_share)]
    pub reconnect_share: f64,
    /// Rooms scenario: number of rooms.
    #[arg(long, env = "LOADGEN_ROOMS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rooms: u32,

    /// Rooms scenario: members per room (each its own connection).
    #[arg(long, env = "LOADGEN_ROOM_MEMBERS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(2..=100_000))]
    pub room_members: u32,

    /// Rooms scenario: messages per second per room (senders take turns).
    #[arg(long, env = "LOADGEN_ROOM_RATE", value_name = "PER_S", default_value_t = 1.0, value_parser = parse_rate)]
    pub room_rate: f64,

    /// Prefix of the generated user ids.
    #[arg(long, env = "LOADGEN_USER_PREFIX", default_value = "lg", value_parser = parse_prefix)]
    pub user_prefix: String,

    /// Write the report as JSON to this file.
    #[arg(long, env = "LOADGEN_JSON", value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write an SVG plot of the latency percentiles over time to this file.
    #[arg(long, env = "LOADGEN_PLOT", value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,

    /// Exit non-zero when any call setup failed.
    #[arg(long, env = "LOADGEN_FAIL_ON_ERRORS", value_parser = clap::builder::BoolishValueParser::new())]
    pub fail_on_errors: bool,

    /// Never show the progress bar.
    #[arg(long, env = "LOADGEN_NO_PROGRESS", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_progress: bool,
}

impl Args {
    /// Validates the combination of flags into a [`Config`].
    pub fn into_config(self) -> anyhow::Result<Config> {
        let target = if self.embedded {
            Target::Embedded
        } else if let Some(url) = self.central {
            Target::Central(url)
        } else if !self.node.is_empty() {
            Target::Nodes(self.node)
        } else {
            bail!("one of --embedded, --central URL or --node URL is required");
        };
        if self.scenario == Scenario::Reconnect {
            if target != Target::Embedded {
                bail!("--scenario reconnect needs --embedded (loadgen drains one of its nodes)");
            }
            if self.drain_node >= usize::from(self.embedded_nodes) {
                bail!(
                    "--drain-node {} is out of range: --embedded-nodes is {}",
                    self.drain_node,
                    self.embedded_nodes
                );
            }
            if self.embedded_nodes < 2 {
                bail!("--embedded-nodes must be at least 2 for --scenario reconnect");
            }
        }
        if self.scenario == Scenario::Rolling {
            if matches!(target, Target::Nodes(_)) {
                bail!("--scenario rolling needs --embedded or --central (users go back to central for a new node)");
            }
            if target == Target::Embedded && self.embedded_nodes < 2 {
                bail!("--embedded-nodes must be at least 2 for --scenario rolling");
            }
        }
        if self.scenario == Scenario::Presence && self.watch >= self.users {
            bail!("--watch must be below --users for --scenario presence");
        }
        if self.scenario == Scenario::Churn && self.churn_rate <= 0.0 {
            bail!("--churn-rate must be above 0 for --scenario churn");
        }
        if matches!(target, Target::Nodes(_)) && self.jwt_secret.is_some() {
            bail!("--jwt-secret needs --central (nodes are reached in dev-auth mode)");
        }
        if let Some(p) = &self.plot {
            check_parent(p).context("--plot")?;
        }
        if let Some(p) = &self.json {
            check_parent(p).context("--json")?;
        }
        Ok(Config {
            target,
            embedded_nodes: usize::from(self.embedded_nodes),
            jwt_secret: self.jwt_secret,
            jwt_audience: self.jwt_audience,
            jwt_issuer: self.jwt_issuer,
            scenario: self.scenario,
            pairs: self.pairs as usize,
            rate: self.rate,
            duration: self.duration,
            warmup: self.warmup,
            candidates: self.candidates as usize,
            bind_ips: self.bind_ips.unwrap_or_default(),
            connect_concurrency: self.connect_concurrency as usize,
            ramp_up: self.ramp_up,
            timeout: self.timeout,
            churn_rate: if matches!(self.scenario, Scenario::Churn | Scenario::Messages) {
                self.churn_rate
            } else {
                0.0
            },
            drain_node: self.drain_node,
            drain_window: self.drain_window,
            roll_pause: self.roll_pause,
            users: self.users as usize,
            watch: self.watch as usize,
            reconnect_share: self.reconnect_share,
            rooms: self.rooms as usize,
            room_members: self.room_members as usize,
            room_rate: self.room_rate,
            user_prefix: self.user_prefix,
            chat: ChatConfig {
                users: self.users as usize,
                window: self.window as usize,
                offline_share: self.offline_share,
                offline_delay: self.offline_delay,
                body_bytes: self.body_bytes as usize,
            },
            json: self.json,
            plot: self.plot,
            fail_on_errors: self.fail_on_errors,
            progress: !self.no_progress,
        })
    }
}

fn check_parent(p: &std::path::Path) -> anyhow::Result<()> {
    match p.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
            bail!("directory {} does not exist", dir.display())
        }
        _ => Ok(()),
    }
}

fn parse_http_url(s: &str) -> Result<String, String> {
    parse_url(s, &["http"]).map(|u| u.trim_end_matches('/').to_owned())
}

fn parse_ws_url(s: &str) -> Result<String, String> {
    parse_url(s, &["ws"])
}

fn parse_url(s: &str, schemes: &[&str]) -> Result<String, String> {
    let uri: tokio_tungstenite::tungstenite::http::Uri =
        s.parse().map_err(|e| format!("not a URL: {e}"))?;
    let scheme = uri.scheme_str().unwrap_or("");
    if !schemes.contains(&scheme) {
        return Err(format!(
            "scheme must be {} (TLS is not supported)",
            schemes.join(" or ")
        ));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("no host".to_owned());
    }
    Ok(s.to_owned())
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || !(0.0..=86_400.0).contains(&v) {
        return Err("must be between 0 and 86400 seconds".to_owned());
    }
    Ok(Duration::from_secs_f64(v))
}

fn parse_positive_secs(s: &str) -> Result<Duration, String> {
    let d = parse_secs(s)?;
    if d.is_zero() {
        return Err("must be above 0".to_owned());
    }
    Ok(d)
}

fn parse_share(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !v.is_finite() || !(0.0..=1.0).contains(&v) {
        return Err("must be between 0 and 1".to_owned());
    }
    Ok(v)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !v.is_finite() || !(0.0..=10_000_000.0).contains(&v) {
        return Err("must be between 0 and 10000000".to_owned());
    }
    Ok(v)
}

fn parse_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 64 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("1 to 64 bytes, no whitespace or control characters".to_owned());
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut v = vec!["loadgen"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v)
    }

    #[test]
    fn bind_ip_ranges() {
        let r = BindIps::parse("127.0.0.1-127.0.0.3").unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r.nth(0), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(r.nth(2), Some(Ipv4Addr::new(127, 0, 0, 3)));
        assert_eq!(r.nth(3), Some(Ipv4Addr::new(127, 0, 0, 1)));
        let c = BindIps::parse("127.0.1.9/24").unwrap();
        assert_eq!(c.len(), 254);
        assert_eq!(c.nth(0), Some(Ipv4Addr::new(127, 0, 1, 1)));
        assert_eq!(c.nth(253), Some(Ipv4Addr::new(127, 0, 1, 254)));
        let big = BindIps::parse("127.0.0.0/8").unwrap();
        assert_eq!(big.len(), (1 << 24) - 2);
        let list = BindIps::parse("127.0.0.5, 127.0.0.9-127.0.0.10").unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list.nth(1), Some(Ipv4Addr::new(127, 0, 0, 9)));
        for bad in [
            "",
            "x",
            "127.0.0.5-127.0.0.1",
            "127.0.0.0/33",
            "::1",
            "1.2.3/8",
        ] {
            assert!(BindIps::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_and_targets() {
        let c = args(&["--embedded"]).unwrap().into_config().unwrap();
        assert_eq!(c.target, Target::Embedded);
        assert!(c.open_loop());
        let c = args(&[
            "--node",
            "ws://127.0.0.1:1/ws",
            "--node",
            "ws://127.0.0.1:2/ws",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        assert_eq!(
            c.target,
            Target::Nodes(vec![
                "ws://127.0.0.1:1/ws".into(),
                "ws://127.0.0.1:2/ws".into()
            ])
        );
        let c = args(&["--central", "http://127.0.0.1:8080/", "--rate", "0"])
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(c.target, Target::Central("http://127.0.0.1:8080".into()));
        assert!(!c.open_loop());
    }

    #[test]
    fn bad_values_name_the_flag() {
        for (flags, name) in [
            (vec!["--central", "ftp://x"], "--central"),
            (vec!["--node", "http://x/ws"], "--node"),
            (vec!["--embedded", "--rate", "-1"], "--rate"),
            (vec!["--embedded", "--pairs", "0"], "--pairs"),
            (vec!["--embedded", "--duration", "0"], "--duration"),
            (vec!["--embedded", "--warmup", "abc"], "--warmup"),
            (vec!["--embedded", "--bind-ips", "10.0.0.300"], "--bind-ips"),
        ] {
            let e = args(&flags).unwrap_err().to_string();
            assert!(e.contains(name), "{flags:?}: {e}");
        }
        let e = args(&[]).unwrap().into_config().unwrap_err().to_string();
        assert!(e.contains("--embedded"), "{e}");
        let e = args(&["--central", "http://x:1", "--scenario", "reconnect"])
            .unwrap()
            .into_config()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--scenario reconnect"), "{e}");
        let e = args(&["--node", "ws://x:1/ws", "--scenario", "rolling"])
            .unwrap()
            .into_config()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--scenario rolling"), "{e}");
        let e = args(&["--embedded", "--roll-pause", "x"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--roll-pause"), "{e}");
        let c = args(&["--central", "http://x:1", "--scenario", "rolling"])
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(c.roll_pause, Duration::from_secs(1));
    }
}
