//! Central's configuration as a plain struct (built by `cli::Args` or by hand in tests).

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use signal_node::origin::AllowedOrigins;
use signal_proto::grpc_tls::GrpcTls;

use crate::ice::IceConfig;

/// Everything `run` needs besides its listeners.
#[derive(Clone)]
pub struct Config {
    /// Where the login API, /v1/nodes, health and metrics listen (used by `main` to bind).
    pub http_listen: SocketAddr,
    /// Where the node registry (gRPC) listens (used by `main` to bind).
    pub grpc_listen: SocketAddr,
    /// Cluster secret that signs node tickets.
    pub secret: String,
    /// When set, login needs `Authorization: Bearer <JWT>` (HS256) signed with this.
    pub jwt_secret: Option<String>,
    /// With a JWT secret: the `aud` the login JWTs must carry.
    pub jwt_audience: Option<String>,
    /// With a JWT secret: the `iss` the login JWTs must carry.
    pub jwt_issuer: Option<String>,
    /// Clock skew tolerated on the login JWT's `exp` and `nbf`.
    pub jwt_leeway: Duration,
    /// Without a JWT secret outside `dev`: `run` refuses to start unless this says that anyone
    /// may log in as anyone (`--open-login`).
    pub open_login: bool,
    /// Browser origins allowed by the API's CORS answers and the login (the dev cluster also
    /// gives it to its nodes).
    pub allowed_origins: AllowedOrigins,
    /// Told to nodes at registration and in every heartbeat answer.
    pub heartbeat_interval: Duration,
    /// A node silent this long is evicted; a node not answering probes this long is down.
    pub node_timeout: Duration,
    /// How often central probes each node (`Relay.Probe`).
    pub probe_interval: Duration,
    /// Lifetime of the tickets handed out at login.
    pub ticket_ttl: Duration,
    /// STUN/TURN servers in the login answer (TURN with short-lived credentials).
    pub ice: IceConfig,
    /// Share the registry between central replicas (`--redis-url`, `--redis-mode`, ...).
    pub redis: Option<signal_node::redis_link::RedisConfig>,
    /// All-in-one local cluster (`central --dev`).
    pub dev: bool,
    /// Number of in-process nodes in dev mode.
    pub dev_nodes: usize,
    /// Drain window of the in-process nodes in dev mode.
    pub dev_drain: Duration,
    /// Log as JSON lines.
    pub log_json: bool,
    /// Where `/metrics` renders from; `None` serves an empty page.
    pub metrics: Option<PrometheusHandle>,
    /// Mutual TLS of the registry server and of the probes (`--grpc-tls-*`).
    pub grpc_tls: Option<GrpcTls>,
    /// The server API (`--api-key` & co.); `None`: its routes answer 404.
    pub api: Option<crate::api::ApiConfig>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("http_listen", &self.http_listen)
            .field("grpc_listen", &self.grpc_listen)
            .field("secret", &"..")
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| ".."))
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_leeway", &self.jwt_leeway)
            .field("open_login", &self.open_login)
            .field("allowed_origins", &self.allowed_origins.to_string())
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("node_timeout", &self.node_timeout)
            .field("probe_interval", &self.probe_interval)
            .field("ticket_ttl", &self.ticket_ttl)
            .field("ice", &self.ice)
            .field("redis", &self.redis)
            .field("dev", &self.dev)
            .field("dev_nodes", &self.dev_nodes)
            .field("dev_drain", &self.dev_drain)
            .field("log_json", &self.log_json)
            .field("grpc_tls", &self.grpc_tls.is_some())
            .field("api", &self.api)
            .finish()
    }
}

impl Config {
    /// The contract's defaults, with a random ticket secret, loopback listeners on port 0 and
    /// no JWT: for tests and in-process clusters.
    pub fn dev() -> Config {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        Config {
            http_listen: loopback,
            grpc_listen: loopback,
            secret: random_secret(),
            jwt_secret: None,
            jwt_audience: None,
            jwt_issuer: None,
            jwt_leeway: Duration::from_secs(crate::auth::DEFAULT_LEEWAY_SECS),
            open_login: false,
            allowed_origins: AllowedOrigins::any(),
            heartbeat_interval: Duration::from_millis(2000),
            node_timeout: Duration::from_millis(6000),
            probe_interval: Duration::from_millis(1000),
            ticket_ttl: Duration::from_secs(60),
            ice: IceConfig::default(),
            redis: None,
            dev: true,
            dev_nodes: 2,
            dev_drain: Duration::from_secs(2),
            log_json: false,
            metrics: None,
            grpc_tls: None,
            api: None,
        }
    }
}

impl Config {
    /// Whether login takes `?user=ID` without a JWT (dev mode or `--open-login`).
    pub fn login_is_open(&self) -> bool {
        self.jwt_secret.is_none()
    }
}

/// A fresh random secret (hex), for dev clusters.
pub fn random_secret() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
