//! The `signal-node` command line (every flag also reads an environment variable) and its
//! translation into a [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use signal_proto::grpc_tls::GrpcTls;
use signal_proto::NodeId;

use crate::config::{
    Config, DirectoryConfig, DEFAULT_OUTBOUND_QUEUE_BYTES, DEFAULT_RESUME_BUFFER_BYTES,
    DEFAULT_RESUME_BUFFER_FRAMES,
};
use crate::directory::Directory;
use crate::mailbox::{MailboxLimits, StoreLimits};
use crate::origin::AllowedOrigins;
use crate::redis_link::{RedisConfig, RedisMode};

/// A flag whose value cannot be used. The message names the flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value for --{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
    #[error("--secret (SIGNAL_SECRET) is required unless --dev-auth is set")]
    MissingSecret,
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        reason: reason.into(),
    }
}

fn default_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| NodeId::new(s.as_str()).is_ok())
        .unwrap_or_else(|| "signal-node".to_owned())
}

/// Stateless WebSocket relay node of the signaling cluster.
#[derive(Debug, Clone, Parser)]
#[command(name = "signal-node", version, about)]
pub struct Args {
    /// Unique node id (default: the host name).
    #[arg(long, env = "SIGNAL_ID", default_value_t = default_id())]
    pub id: String,
    /// Address of the HTTP server: WebSocket /ws, /healthz, /readyz, /metrics.
    #[arg(long, env = "SIGNAL_LISTEN", default_value = "0.0.0.0:8090")]
    pub listen: SocketAddr,
    /// The WebSocket URL central hands to clients (default: ws://(listen)/ws).
    #[arg(long, env = "SIGNAL_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Address of the node-to-node relay (gRPC).
    #[arg(long, env = "SIGNAL_GRPC_LISTEN", default_value = "0.0.0.0:9091")]
    pub grpc_listen: SocketAddr,
    /// What other nodes dial to reach this one (default: http://(grpc-listen)).
    #[arg(long, env = "SIGNAL_GRPC_ADVERTISE")]
    pub grpc_advertise: Option<String>,
    /// Central's gRPC URL, e.g. http://central:9090 (default: do not register).
    #[arg(long, env = "SIGNAL_CENTRAL")]
    pub central: Option<String>,
    /// Redis URL of the user directory (default: in memory, single node): one `redis://` or
    /// `rediss://` URL (standalone), or comma-separated seed URLs (cluster) or sentinel URLs
    /// (sentinel).
    #[arg(long, env = "SIGNAL_REDIS_URL")]
    pub redis_url: Option<String>,
    /// The Redis deployment behind --redis-url.
    #[arg(long, env = "SIGNAL_REDIS_MODE", value_enum, default_value_t = RedisMode::Standalone)]
    pub redis_mode: RedisMode,
    /// With --redis-mode sentinel: the master name the sentinels monitor.
    #[arg(long, env = "SIGNAL_REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,
    /// PEM file of the CA certificates `rediss://` servers are verified against (default: the
    /// system's roots).
    #[arg(long, env = "SIGNAL_REDIS_TLS_CA")]
    pub redis_tls_ca: Option<std::path::PathBuf>,
    /// Secret that verifies the tickets central mints (required unless --dev-auth).
    #[arg(long, env = "SIGNAL_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Also accept /ws?user=ID without a ticket (development only).
    #[arg(long, env = "SIGNAL_DEV_AUTH", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub dev_auth: bool,
    /// Capacity weight for load balancing.
    #[arg(long, env = "SIGNAL_WEIGHT", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub weight: u32,
    /// Text frames larger than this get TOOLARGE (above 4x it the connection is closed, 1009).
    #[arg(long, env = "SIGNAL_MAX_MESSAGE_BYTES", default_value_t = 65536, value_parser = clap::value_parser!(u64).range(64..=(64 * 1024 * 1024)))]
    pub max_message_bytes: u64,
    /// Frames queued for one peer node at most (all connections together; a frame that finds
    /// the queue full waits within its relay timeout), and frames sent to it and not yet
    /// answered at most.
    #[arg(long, env = "SIGNAL_FORWARD_QUEUE", default_value_t = crate::peers::DEFAULT_FORWARD_QUEUE as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub forward_queue: u64,
    /// ROAP frames one connection has sent to other nodes and not had answered at most: the
    /// connection reads on while they are in flight (their order kept), and past this waits.
    #[arg(long, env = "SIGNAL_RELAY_INFLIGHT", default_value_t = crate::config::DEFAULT_RELAY_INFLIGHT as u64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub relay_inflight: u64,
    /// Messages per second per connection (0 = unlimited).
    #[arg(long, env = "SIGNAL_RATE_LIMIT", default_value_t = 200)]
    pub rate_limit: u32,
    /// Burst of the per-connection rate limit.
    #[arg(long, env = "SIGNAL_RATE_BURST", default_value_t = 400, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_burst: u32,
    /// Window over which a draining node closes its connections (1012), in milliseconds.
    #[arg(long, env = "SIGNAL_DRAIN_MS", default_value_t = 10_000)]
    pub drain_ms: u64,
    /// A draining node's sessions released (1012) and not yet resumed on another node at
    /// once: past it the drain waits (beyond the drain window if need be, at most half the
    /// resume window more) so that the other nodes get the clients at the rate they take them
    /// over. 0: no bound (spread evenly over the drain window only).
    #[arg(long, env = "SIGNAL_DRAIN_INFLIGHT", default_value_t = crate::config::DEFAULT_DRAIN_INFLIGHT as u64, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub drain_inflight: u64,
    /// Outbound queue per connection, in messages: a connection whose queue is full is closed
    /// (1013) and the sender of the message that did not fit gets UNAVAILABLE.
    #[arg(long, env = "SIGNAL_OUTBOUND_QUEUE", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub outbound_queue: u64,
    /// Outbound queue per connection, in bytes.
    #[arg(long, env = "SIGNAL_OUTBOUND_QUEUE_BYTES", default_value_t = DEFAULT_OUTBOUND_QUEUE_BYTES as u64, value_parser = clap::value_parser!(u64).range(1024..))]
    pub outbound_queue_bytes: u64,
    /// How long a session outlives a connection that ended without a client close (network
    /// loss, 1012 drain, 1013 slow reader), in milliseconds: within it the client resumes with
    /// nothing lost.
    #[arg(long, env = "SIGNAL_RESUME_WINDOW_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub resume_window_ms: u64,
    /// Takeovers of sessions kept on other nodes (a resume arriving here) in progress at
    /// once; more wait for a turn (a drained node's clients arrive all at once).
    #[arg(long, env = "SIGNAL_TAKEOVER_CONCURRENCY", default_value_t = crate::config::DEFAULT_TAKEOVER_CONCURRENCY as u64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub takeover_concurrency: u64,
    /// Unacknowledged frames kept per session for a resume, in frames (past it the oldest
    /// written ones are dropped).
    #[arg(long, env = "SIGNAL_RESUME_BUFFER_FRAMES", default_value_t = DEFAULT_RESUME_BUFFER_FRAMES as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub resume_buffer_frames: u64,
    /// Unacknowledged frames kept per session for a resume, in bytes.
    #[arg(long, env = "SIGNAL_RESUME_BUFFER_BYTES", default_value_t = DEFAULT_RESUME_BUFFER_BYTES as u64, value_parser = clap::value_parser!(u64).range(1024..=(1024 * 1024 * 1024)))]
    pub resume_buffer_bytes: u64,
    /// Chat messages kept per recipient in the offline mailbox; past it senders get MAILBOXFULL.
    #[arg(long, env = "SIGNAL_MAILBOX_MAX_MESSAGES", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub mailbox_max_messages: u64,
    /// How long a chat message (and its dedupe marker) is kept in the mailbox, in seconds.
    #[arg(long, env = "SIGNAL_MAILBOX_TTL_SECS", default_value_t = 604_800, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub mailbox_ttl_secs: u64,
    /// Largest chat message `body`, in bytes; larger ones get TOOLARGE.
    #[arg(long, env = "SIGNAL_MAX_BODY_BYTES", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=(16 * 1024 * 1024)))]
    pub max_body_bytes: u64,
    /// Chat messages of one connection being stored at once (pipelined; answers and pushes
    /// stay in the order sent); 1: one at a time.
    #[arg(long, env = "SIGNAL_MAILBOX_INFLIGHT", default_value_t = crate::mailbox::DEFAULT_MAILBOX_INFLIGHT as u64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub mailbox_inflight: u64,
    /// Chat messages being stored at once on this node, all connections together (past it
    /// connections wait before storing more).
    #[arg(long, env = "SIGNAL_MAILBOX_INFLIGHT_NODE", default_value_t = crate::mailbox::DEFAULT_MAILBOX_INFLIGHT_NODE as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub mailbox_inflight_node: u64,
    /// Presence subscriptions per session; a Subscribe beyond it gets TOOMANY (nothing added).
    #[arg(long, env = "SIGNAL_MAX_SUBSCRIPTIONS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_subscriptions: u64,
    /// Presence changes are sent to watching nodes once per tick, in milliseconds (changes of
    /// one user within a tick are coalesced: the last wins).
    #[arg(long, env = "SIGNAL_PRESENCE_TICK_MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub presence_tick_ms: u64,
    /// How long the presence record of an offline user (its `since`) is kept, in seconds.
    #[arg(long, env = "SIGNAL_PRESENCE_OFFLINE_TTL_SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub presence_offline_ttl_secs: u64,
    /// Session ends remembered while the presence store (Redis) is down, written when it is
    /// back; beyond it they are counted and logged, and their records wait for the owner check.
    #[arg(long, env = "SIGNAL_PRESENCE_MAX_PENDING", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub presence_max_pending: u64,
    /// Presence snapshot reads and resync writes in flight at once against the presence store
    /// (a subscription burst waits here instead of queueing on the Redis connection).
    #[arg(long, env = "SIGNAL_PRESENCE_STORE_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub presence_store_concurrency: u64,
    /// Members one room may have; a Join past it gets ROOMFULL.
    #[arg(long, env = "SIGNAL_MAX_ROOM_MEMBERS", default_value_t = crate::rooms::DEFAULT_MAX_ROOM_MEMBERS as u64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_room_members: u64,
    /// Rooms one session may join; a Join past it gets TOOMANY.
    #[arg(long, env = "SIGNAL_MAX_ROOMS", default_value_t = crate::rooms::DEFAULT_MAX_ROOMS as u64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_rooms: u64,
    /// Interval of server WebSocket pings, in milliseconds.
    #[arg(long, env = "SIGNAL_PING_INTERVAL_MS", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub ping_interval_ms: u64,
    /// A connection silent this long is closed, in milliseconds.
    #[arg(long, env = "SIGNAL_IDLE_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub idle_timeout_ms: u64,
    /// Tickets remembered as used until they expire (each ticket is single-use); when this
    /// many unexpired ones are remembered, new tickets are refused with 503.
    #[arg(long, env = "SIGNAL_MAX_USED_TICKETS", default_value_t = crate::tickets::DEFAULT_MAX_USED_TICKETS as u64, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub max_used_tickets: u64,
    /// Mutual TLS of the relay gRPC and of the calls to central and peers (with --grpc-tls-key
    /// and --grpc-tls-ca; URLs are then https://): this PEM certificate.
    #[arg(long, env = "SIGNAL_GRPC_TLS_CERT", value_name = "PEM")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --grpc-tls-cert.
    #[arg(long, env = "SIGNAL_GRPC_TLS_KEY", value_name = "PEM")]
    pub grpc_tls_key: Option<PathBuf>,
    /// CA (PEM) that signs every certificate of the cluster's internal gRPC.
    #[arg(long, env = "SIGNAL_GRPC_TLS_CA", value_name = "PEM")]
    pub grpc_tls_ca: Option<PathBuf>,
    /// Browser origins allowed to open a WebSocket, comma-separated scheme://host[:port]
    /// (e.g. https://app.example.com); others get 403 before the upgrade. Requests without an
    /// Origin header (non-browser clients) are not affected. [default: * (any)]
    #[arg(long, env = "SIGNAL_ALLOWED_ORIGINS", value_name = "ORIGINS")]
    pub allowed_origins: Option<AllowedOrigins>,
    /// POST the application backend's events (user.online, user.offline, message.stored) to
    /// this http:// URL (needs --webhook-secret) [default: no webhooks]
    #[arg(long, env = "SIGNAL_WEBHOOK_URL", value_name = "URL")]
    pub webhook_url: Option<String>,
    /// Signs each webhook body: header X-Signal-Signature: sha256=<hex HMAC-SHA256(secret, body)>.
    #[arg(
        long,
        env = "SIGNAL_WEBHOOK_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub webhook_secret: Option<String>,
    /// Webhook events waiting for delivery, in memory; past it new events are dropped (counted
    /// in signal_webhook_overflow_total, logged).
    #[arg(long, env = "SIGNAL_WEBHOOK_QUEUE", default_value_t = crate::webhooks::DEFAULT_QUEUE as u64, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub webhook_queue: u64,
    /// Webhook requests in flight at once.
    #[arg(long, env = "SIGNAL_WEBHOOK_CONCURRENCY", default_value_t = crate::webhooks::DEFAULT_CONCURRENCY as u64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub webhook_concurrency: u64,
    /// Timeout of one webhook request, in milliseconds.
    #[arg(long, env = "SIGNAL_WEBHOOK_TIMEOUT_MS", default_value_t = crate::webhooks::DEFAULT_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub webhook_timeout_ms: u64,
    /// How long one webhook event is retried (with backoff) before it is dropped, in seconds
    /// (at least 300: the contract's 5 minutes).
    #[arg(long, env = "SIGNAL_WEBHOOK_RETRY_SECS", default_value_t = crate::webhooks::DEFAULT_RETRY_SECS, value_parser = clap::value_parser!(u64).range(300..=604_800))]
    pub webhook_retry_secs: u64,
    /// Largest delay between two attempts of one webhook event, in milliseconds.
    #[arg(long, env = "SIGNAL_WEBHOOK_BACKOFF_MAX_MS", default_value_t = crate::webhooks::DEFAULT_BACKOFF_MAX_MS, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub webhook_backoff_max_ms: u64,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "SIGNAL_LOG_JSON", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub log_json: bool,
}

fn check_url(flag: &'static str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(flag, format!("{url:?}: {e}")))?;
    let scheme = uri.scheme_str().unwrap_or("");
    if !schemes.contains(&scheme) {
        return Err(invalid(
            flag,
            format!("{url:?}: scheme must be one of {}", schemes.join(", ")),
        ));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid(flag, format!("{url:?}: no host")));
    }
    Ok(())
}

impl Args {
    /// Validates the flags into a [`Config`] (nothing is connected yet: a `--redis-url` is only
    /// parsed here; `run` creates the directory handle).
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let id = NodeId::new(self.id.as_str()).map_err(|e| invalid("id", format!("{e}")))?;
        if let Some(u) = &self.advertise_url {
            check_url("advertise-url", u, &["ws", "wss"])?;
        }
        if let Some(u) = &self.grpc_advertise {
            check_url("grpc-advertise", u, &["http", "https"])?;
        }
        if let Some(u) = &self.central {
            check_url("central", u, &["http", "https"])?;
        }
        let directory = match &self.redis_url {
            None => DirectoryConfig::Memory(Directory::memory()),
            Some(u) => {
                let cfg = RedisConfig::parse(
                    self.redis_mode,
                    u,
                    self.redis_sentinel_master.clone(),
                    self.redis_tls_ca.clone(),
                );
                cfg.check()
                    .map_err(|e| invalid(cfg.flag_at_fault(), format!("{u:?}: {e}")))?;
                DirectoryConfig::Redis(cfg)
            }
        };
        let secret = self.secret.filter(|s| !s.is_empty());
        if secret.is_none() && !self.dev_auth {
            return Err(ConfigError::MissingSecret);
        }
        if self.rate_limit > 0 && self.rate_burst == 0 {
            return Err(invalid("rate-burst", "must be at least 1"));
        }
        let mut c = Config::dev(id.as_str());
        c.id = id;
        c.advertise_url = self.advertise_url;
        c.grpc_advertise = self.grpc_advertise;
        c.central = self.central;
        c.directory = directory;
        c.secret = secret;
        c.dev_auth = self.dev_auth;
        c.weight = self.weight;
        c.max_message_bytes = usize::try_from(self.max_message_bytes)
            .map_err(|_| invalid("max-message-bytes", "too large"))?;
        c.forward_queue = usize::try_from(self.forward_queue)
            .map_err(|_| invalid("forward-queue", "too large"))?;
        c.relay_inflight = usize::try_from(self.relay_inflight)
            .map_err(|_| invalid("relay-inflight", "too large"))?;
        c.rate_limit = self.rate_limit;
        c.rate_burst = self.rate_burst;
        c.drain = Duration::from_millis(self.drain_ms);
        c.ping_interval = Duration::from_millis(self.ping_interval_ms);
        c.idle_timeout = Duration::from_millis(self.idle_timeout_ms);
        c.outbound_queue = usize::try_from(self.outbound_queue)
            .map_err(|_| invalid("outbound-queue", "too large"))?;
        c.outbound_queue_bytes = usize::try_from(self.outbound_queue_bytes)
            .map_err(|_| invalid("outbound-queue-bytes", "too large"))?;
        c.grpc_tls = GrpcTls::from_flags(
            self.grpc_tls_cert.as_ref(),
            self.grpc_tls_key.as_ref(),
            self.grpc_tls_ca.as_ref(),
        )
        .map_err(|e| invalid("grpc-tls-cert", e.to_string()))?;
        c.max_used_tickets = usize::try_from(self.max_used_tickets)
            .map_err(|_| invalid("max-used-tickets", "too large"))?;
        c.resume_window = Duration::from_millis(self.resume_window_ms);
        c.drain_inflight = usize::try_from(self.drain_inflight)
            .map_err(|_| invalid("drain-inflight", "too large"))?;
        c.takeover_concurrency = usize::try_from(self.takeover_concurrency)
            .map_err(|_| invalid("takeover-concurrency", "too large"))?;
        c.resume_buffer_frames = usize::try_from(self.resume_buffer_frames)
            .map_err(|_| invalid("resume-buffer-frames", "too large"))?;
        c.resume_buffer_bytes = usize::try_from(self.resume_buffer_bytes)
            .map_err(|_| invalid("resume-buffer-bytes", "too large"))?;
        c.allowed_origins = self.allowed_origins.unwrap_or_default();
        c.mailbox = MailboxLimits {
            store: StoreLimits {
                max_messages: usize::try_from(self.mailbox_max_messages)
                    .map_err(|_| invalid("mailbox-max-messages", "too large"))?,
                ttl: Duration::from_secs(self.mailbox_ttl_secs),
            },
            max_body_bytes: usize::try_from(self.max_body_bytes)
                .map_err(|_| invalid("max-body-bytes", "too large"))?,
            inflight: usize::try_from(self.mailbox_inflight)
                .map_err(|_| invalid("mailbox-inflight", "too large"))?,
            inflight_node: usize::try_from(self.mailbox_inflight_node)
                .map_err(|_| invalid("mailbox-inflight-node", "too large"))?,
        };
        let webhook_url = self.webhook_url.filter(|u| !u.is_empty());
        c.webhooks = match (webhook_url, self.webhook_secret.filter(|s| !s.is_empty())) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "webhook-secret",
                    "is required with --webhook-url (it signs the events)",
                ))
            }
            (Some(url), Some(secret)) => {
                // This build's HTTP client speaks plain HTTP only (no TLS stack in the tree):
                // put a TLS-terminating proxy or an in-cluster receiver in front.
                check_url("webhook-url", &url, &["http"])?;
                Some(crate::webhooks::WebhookConfig {
                    url,
                    secret,
                    queue: usize::try_from(self.webhook_queue)
                        .map_err(|_| invalid("webhook-queue", "too large"))?,
                    concurrency: usize::try_from(self.webhook_concurrency)
                        .map_err(|_| invalid("webhook-concurrency", "too large"))?,
                    timeout: Duration::from_millis(self.webhook_timeout_ms),
                    retry_for: Duration::from_secs(self.webhook_retry_secs),
                    backoff_max: Duration::from_millis(self.webhook_backoff_max_ms),
                })
            }
        };
        c.presence = crate::presence::PresenceLimits {
            max_subscriptions: usize::try_from(self.max_subscriptions)
                .map_err(|_| invalid("max-subscriptions", "too large"))?,
            tick: Duration::from_millis(self.presence_tick_ms),
            offline_ttl: Duration::from_secs(self.presence_offline_ttl_secs),
            max_pending: usize::try_from(self.presence_max_pending)
                .map_err(|_| invalid("presence-max-pending", "too large"))?,
            store_concurrency: usize::try_from(self.presence_store_concurrency)
                .map_err(|_| invalid("presence-store-concurrency", "too large"))?,
        };
        c.rooms = crate::rooms::RoomLimits {
            max_members: usize::try_from(self.max_room_members)
                .map_err(|_| invalid("max-room-members", "too large"))?,
            max_rooms: usize::try_from(self.max_rooms)
                .map_err(|_| invalid("max-rooms", "too large"))?,
        };
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut v = vec!["signal-node"];
        v.extend_from_slice(args);
        let a = Args::try_parse_from(v).map_err(|e| e.to_string())?;
        a.into_config().map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn defaults_and_errors() {
        let c = parse(&["--secret", "s", "--id", "n1"]).unwrap();
        assert_eq!(c.max_message_bytes, 65536);
        assert_eq!((c.rate_limit, c.rate_burst), (200, 400));
        assert_eq!(c.drain, Duration::from_secs(10));
        assert!(!c.dev_auth);
        assert_eq!(c.resume_window, Duration::from_secs(30));
        assert_eq!(
            (c.resume_buffer_frames, c.resume_buffer_bytes),
            (1024, 1 << 20)
        );
        assert!(parse(&["--dev-auth", "--resume-buffer-frames", "0"])
            .unwrap_err()
            .contains("--resume-buffer-frames"));
        assert!(parse(&["--id", "n1"]).unwrap_err().contains("--secret"));
        assert!(parse(&["--dev-auth", "--id", "n1"]).is_ok());
        assert!(parse(&["--dev-auth", "--listen", "nope"])
            .unwrap_err()
            .contains("--listen"));
        assert!(parse(&["--dev-auth", "--central", "ftp://x"])
            .unwrap_err()
            .contains("--central"));
        assert!(parse(&["--dev-auth", "--redis-url", "nope://"])
            .unwrap_err()
            .contains("--redis-url"));
        let r = "redis://127.0.0.1:1";
        assert!(parse(&["--dev-auth", "--redis-url", &format!("{r},{r}")])
            .unwrap_err()
            .contains("--redis-url"));
        assert!(parse(&[
            "--dev-auth",
            "--redis-mode",
            "cluster",
            "--redis-url",
            &format!("{r},{r}")
        ])
        .is_ok());
        assert!(
            parse(&["--dev-auth", "--redis-mode", "sentinel", "--redis-url", r])
                .unwrap_err()
                .contains("--redis-sentinel-master")
        );
        assert!(parse(&[
            "--dev-auth",
            "--redis-mode",
            "sentinel",
            "--redis-url",
            r,
            "--redis-sentinel-master",
            "m"
        ])
        .is_ok());
        assert!(parse(&[
            "--dev-auth",
            "--redis-url",
            "rediss://127.0.0.1:1",
            "--redis-tls-ca",
            "/nonexistent.pem"
        ])
        .unwrap_err()
        .contains("--redis-tls-ca"));
        assert!(parse(&["--dev-auth", "--redis-mode", "ring", "--redis-url", r]).is_err());
        assert!(parse(&["--dev-auth", "--advertise-url", "http://x/ws"])
            .unwrap_err()
            .contains("--advertise-url"));
        assert!(parse(&["--dev-auth", "--id", "a b"])
            .unwrap_err()
            .contains("--id"));
        assert_eq!(
            parse(&["--dev-auth"]).unwrap().max_used_tickets,
            crate::tickets::DEFAULT_MAX_USED_TICKETS
        );
        assert!(parse(&["--dev-auth", "--max-used-tickets", "0"])
            .unwrap_err()
            .contains("--max-used-tickets"));
        assert!(c.allowed_origins.is_any());
        assert!(
            parse(&["--dev-auth", "--allowed-origins", "app.example.com"])
                .unwrap_err()
                .contains("--allowed-origins")
        );
        let c = parse(&["--dev-auth", "--allowed-origins", "https://a.example"]).unwrap();
        assert_eq!(c.allowed_origins.origins(), ["https://a.example"]);
        assert!(c.webhooks.is_none());
        assert!(parse(&["--dev-auth", "--webhook-url", "http://h:1/hook"])
            .unwrap_err()
            .contains("--webhook-secret"));
        assert!(parse(&[
            "--dev-auth",
            "--webhook-url",
            "https://h/x",
            "--webhook-secret",
            "k"
        ])
        .unwrap_err()
        .contains("--webhook-url"));
        assert!(parse(&["--dev-auth", "--webhook-retry-secs", "10"])
            .unwrap_err()
            .contains("--webhook-retry-secs"));
        let w = parse(&[
            "--dev-auth",
            "--webhook-url",
            "http://h:1/x",
            "--webhook-secret",
            "k",
        ])
        .unwrap()
        .webhooks
        .unwrap();
        assert_eq!((w.queue, w.concurrency), (10_000, 8));
        assert_eq!(w.retry_for, Duration::from_secs(600));
    }
}
