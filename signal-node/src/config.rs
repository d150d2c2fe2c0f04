//! The node's configuration as a plain struct (the command line is parsed into it by `cli`).

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use signal_proto::grpc_auth::{GrpcKey, DEV_SECRET};
use signal_proto::grpc_tls::GrpcTls;
use signal_proto::NodeId;

use crate::directory::Directory;
use crate::mailbox::{MailboxLimits, MailboxStore};
use crate::origin::AllowedOrigins;
use crate::presence::store::PresenceStore;
use crate::presence::PresenceLimits;
use crate::rooms::{RoomLimits, RoomStore};

/// Default `--max-message-bytes`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Default outbound queue length (messages) per connection.
pub const DEFAULT_OUTBOUND_QUEUE: usize = 1024;
/// Default outbound queue size (bytes) per connection.
pub const DEFAULT_OUTBOUND_QUEUE_BYTES: usize = 1024 * 1024;

/// Default `--relay-inflight`: an Offer or Answer and its candidates go out together.
pub const DEFAULT_RELAY_INFLIGHT: usize = 16;
/// Default `--resume-window-ms`.
pub const DEFAULT_RESUME_WINDOW_MS: u64 = 30_000;
/// Default `--takeover-concurrency`.
pub const DEFAULT_TAKEOVER_CONCURRENCY: usize = 256;
/// Default of `--drain-inflight`: 64 sessions released and not yet taken over at once. With
/// the draining node kept in the peer list, released all at once (0) the last of 10,000
/// clients were away 2.3 s, queued on the adopting node; paced by 64, at most 0.16 s, and the
/// drain took no longer (docs/benchmarks.md, "Presence: the draining node stays listed").
pub const DEFAULT_DRAIN_INFLIGHT: usize = 64;
/// Default `--resume-buffer-frames`.
pub const DEFAULT_RESUME_BUFFER_FRAMES: usize = 1024;
/// Default `--resume-buffer-bytes`.
pub const DEFAULT_RESUME_BUFFER_BYTES: usize = 1024 * 1024;

/// Where the user directory lives.
#[derive(Clone, Debug)]
pub enum DirectoryConfig {
    /// A shared in-process directory (single node, or several nodes in one process).
    Memory(Directory),
    /// A Redis deployment (standalone URL, cluster seeds or sentinels), e.g.
    /// `RedisConfig::from("redis://127.0.0.1:6379/")`.
    Redis(crate::redis_link::RedisConfig),
}

/// Everything a node needs to run. Build it with [`Config::dev`] or from the command line
/// (`cli::Args::into_config`).
#[derive(Clone)]
pub struct Config {
    /// Unique node id.
    pub id: NodeId,
    /// The WebSocket URL handed to clients; `None` -> `ws://<bound http addr>/ws`.
    pub advertise_url: Option<String>,
    /// The gRPC URL other nodes dial; `None` -> `http://<bound grpc addr>`.
    pub grpc_advertise: Option<String>,
    /// Central's gRPC URL; `None` -> the node does not register anywhere.
    pub central: Option<String>,
    pub directory: DirectoryConfig,
    /// Ticket secret shared with central; `None` only with `dev_auth`.
    pub secret: Option<String>,
    /// Also accept `/ws?user=ID` without a ticket.
    pub dev_auth: bool,
    pub weight: u32,
    /// Text frames above this size get TOOLARGE; above 4x it the connection is closed (1009).
    pub max_message_bytes: usize,
    /// Frames queued for one peer node at most, and sent to it unanswered at most.
    pub forward_queue: usize,
    /// ROAP frames one connection has sent to other nodes and not had answered at most
    /// (`--relay-inflight`): past it the connection's reader waits.
    pub relay_inflight: usize,
    /// Messages per second per connection (0 = unlimited).
    pub rate_limit: u32,
    /// Token bucket size.
    pub rate_burst: u32,
    /// Window over which a draining node closes its connections.
    pub drain: Duration,
    /// Interval of server WebSocket pings.
    pub ping_interval: Duration,
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
    /// Outbound queue per connection, in messages.
    pub outbound_queue: usize,
    /// Outbound queue per connection, in bytes (one message larger than this still passes
    /// when the queue is empty).
    pub outbound_queue_bytes: usize,
    /// How long a session outlives a connection that ended without a client close.
    pub resume_window: Duration,
    /// Unacknowledged frames kept per session, in frames.
    pub resume_buffer_frames: usize,
    /// Unacknowledged frames kept per session, in bytes.
    pub resume_buffer_bytes: usize,
    /// When cancelled, a draining node stops waiting for the takeover of its kept sessions
    /// and ends them (the whole in-process dev cluster stops: nobody is left to resume on).
    pub handover_stop: Option<tokio_util::sync::CancellationToken>,
    /// Takeovers of sessions kept on other nodes in progress at once
    /// (`--takeover-concurrency`); more connections resuming wait for a turn.
    pub takeover_concurrency: usize,
    /// A draining node's sessions released (1012) and not yet taken over elsewhere at once
    /// (`--drain-inflight`, 0 = no bound: evenly over the drain window only).
    pub drain_inflight: usize,
    /// Browser origins allowed to open a WebSocket (a request without `Origin` always may).
    pub allowed_origins: AllowedOrigins,
    /// Where `/metrics` renders from; `None` -> the global recorder of `telemetry`.
    pub metrics: Option<PrometheusHandle>,
    /// Bound of the used-ticket set (see `tickets`): when full, new tickets get 503.
    pub max_used_tickets: usize,
    /// Mutual TLS of the relay server and of the gRPC clients (`--grpc-tls-*`).
    pub grpc_tls: Option<GrpcTls>,
    /// `--mailbox-max-messages`, `--mailbox-ttl-secs`, `--max-body-bytes`.
    pub mailbox: MailboxLimits,
    /// The mailbox store; `None`: Redis at the directory's URL, or memory with a memory
    /// directory (in-process nodes sharing a memory directory share one store here).
    pub mailbox_store: Option<MailboxStore>,
    /// `--webhook-*`: events for the application backend; `None`: no webhooks.
    pub webhooks: Option<crate::webhooks::WebhookConfig>,
    /// `--max-subscriptions`, `--presence-tick-ms`, `--presence-offline-ttl-secs`,
    /// `--presence-max-pending`, `--presence-store-concurrency`.
    pub presence: PresenceLimits,
    /// The presence store; `None`: Redis at the directory's URL, or memory with a memory
    /// directory (in-process nodes of one cluster must share one: set it).
    pub presence_store: Option<PresenceStore>,
    /// `--max-room-members`, `--max-rooms`.
    pub rooms: RoomLimits,
    /// The room membership store; `None`: Redis at the directory's URL, or memory with a
    /// memory directory (in-process nodes of one cluster share one store here).
    pub room_store: Option<RoomStore>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("id", &self.id)
            .field("advertise_url", &self.advertise_url)
            .field("grpc_advertise", &self.grpc_advertise)
            .field("central", &self.central)
            .field("directory", &self.directory)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("dev_auth", &self.dev_auth)
            .field("weight", &self.weight)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("forward_queue", &self.forward_queue)
            .field("relay_inflight", &self.relay_inflight)
            .field("rate_limit", &self.rate_limit)
            .field("rate_burst", &self.rate_burst)
            .field("drain", &self.drain)
            .field("ping_interval", &self.ping_interval)
            .field("idle_timeout", &self.idle_timeout)
            .field("outbound_queue", &self.outbound_queue)
            .field("outbound_queue_bytes", &self.outbound_queue_bytes)
            .field("max_used_tickets", &self.max_used_tickets)
            .field("grpc_tls", &self.grpc_tls.is_some())
            .field("resume_window", &self.resume_window)
            .field("resume_buffer_frames", &self.resume_buffer_frames)
            .field("resume_buffer_bytes", &self.resume_buffer_bytes)
            .field("allowed_origins", &self.allowed_origins.to_string())
            .field("mailbox", &self.mailbox)
            .field("webhooks", &self.webhooks)
            .field("presence", &self.presence)
            .field("rooms", &self.rooms)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Contract defaults with dev-auth on, no secret, a fresh in-memory directory and no
    /// central: for tests and in-process clusters (set `directory` to share one directory).
    ///
    /// # Panics
    /// If `id` is not a valid node id (a programming error in the caller).
    pub fn dev(id: &str) -> Config {
        #[allow(clippy::expect_used)]
        let id = NodeId::new(id).expect("Config::dev needs a valid node id");
        Config {
            id,
            advertise_url: None,
            grpc_advertise: None,
            central: None,
            directory: DirectoryConfig::Memory(Directory::memory()),
            secret: None,
            dev_auth: true,
            weight: 1,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            forward_queue: crate::peers::DEFAULT_FORWARD_QUEUE,
            relay_inflight: DEFAULT_RELAY_INFLIGHT,
            rate_limit: 200,
            rate_burst: 400,
            drain: Duration::from_millis(10_000),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            outbound_queue: DEFAULT_OUTBOUND_QUEUE,
            outbound_queue_bytes: DEFAULT_OUTBOUND_QUEUE_BYTES,
            resume_window: Duration::from_millis(DEFAULT_RESUME_WINDOW_MS),
            resume_buffer_frames: DEFAULT_RESUME_BUFFER_FRAMES,
            resume_buffer_bytes: DEFAULT_RESUME_BUFFER_BYTES,
            handover_stop: None,
            takeover_concurrency: DEFAULT_TAKEOVER_CONCURRENCY,
            drain_inflight: DEFAULT_DRAIN_INFLIGHT,
            allowed_origins: AllowedOrigins::any(),
            metrics: None,
            max_used_tickets: crate::tickets::DEFAULT_MAX_USED_TICKETS,
            grpc_tls: None,
            mailbox: MailboxLimits::default(),
            mailbox_store: None,
            webhooks: None,
            presence: PresenceLimits::default(),
            presence_store: None,
            rooms: RoomLimits::default(),
            room_store: None,
        }
    }

    /// The key of the internal gRPC credentials (the relay server checks them, the relay and
    /// registry clients send them): from `secret`, or without one (dev-auth only) from the
    /// public [`DEV_SECRET`], which protects nothing.
    pub fn grpc_key(&self) -> GrpcKey {
        GrpcKey::new(self.secret.as_deref().unwrap_or(DEV_SECRET).as_bytes())
    }

    /// Largest frame read at all; frames between `max_message_bytes` and this get TOOLARGE and
    /// keep the connection, larger ones close it with 1009.
    pub fn hard_frame_cap(&self) -> usize {
        self.max_message_bytes.saturating_mul(4).max(1024)
    }
}
