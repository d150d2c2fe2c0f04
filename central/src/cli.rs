//! Command-line flags (each also read from an environment variable) and their checks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use signal_node::origin::AllowedOrigins;
use signal_node::redis_link::{RedisConfig, RedisMode};
use signal_proto::grpc_tls::GrpcTls;

use crate::api::keys::ApiKeys;
use crate::api::ApiConfig;
use crate::config::{random_secret, Config};
use crate::ice::{parse_urls, IceConfig, TurnConfig, UrlKind};

/// Coordinator of the signaling cluster: node registry, weighted least connections, login.
#[derive(Debug, Clone, Parser)]
#[command(name = "central", version, about)]
pub struct Args {
    /// Login API, /v1/nodes, health and metrics [default: 0.0.0.0:8080, 127.0.0.1:8080 with --dev]
    #[arg(long, env = "CENTRAL_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,

    /// Node registry (gRPC) [default: 0.0.0.0:9090, 127.0.0.1:0 with --dev]
    #[arg(long, env = "CENTRAL_GRPC_LISTEN", value_name = "ADDR")]
    pub grpc_listen: Option<SocketAddr>,

    /// Signs node tickets; required unless --dev (then random)
    #[arg(long, env = "CENTRAL_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// Login needs an `Authorization: Bearer <JWT>` (HS256, `sub` = user id, `exp` required)
    /// signed with this; required unless --dev or --open-login
    #[arg(long, env = "CENTRAL_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Without --jwt-secret: anyone may log in as any user id (`?user=ID`). For a demo, or a
    /// private network behind the application's own gate; logs a warning at start
    #[arg(long, env = "CENTRAL_OPEN_LOGIN", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub open_login: bool,

    /// Login JWTs must carry this audience (`aud` claim) [default: `aud` not checked]
    #[arg(long, env = "CENTRAL_JWT_AUDIENCE", value_name = "AUD")]
    pub jwt_audience: Option<String>,

    /// Login JWTs must carry this issuer (`iss` claim) [default: `iss` not checked]
    #[arg(long, env = "CENTRAL_JWT_ISSUER", value_name = "ISS")]
    pub jwt_issuer: Option<String>,

    /// Clock skew tolerated on the login JWT's `exp` and `nbf`
    #[arg(
        long,
        env = "CENTRAL_JWT_LEEWAY_SECS",
        default_value_t = 30,
        value_name = "SECS",
        value_parser = clap::value_parser!(u64).range(0..=600)
    )]
    pub jwt_leeway_secs: u64,

    /// Browser origins allowed to call the API (CORS) and log in, comma-separated
    /// scheme://host[:port]; with --dev also given to the in-process nodes (WebSocket Origin
    /// check). Requests without an Origin header are not affected [default: * (any)]
    #[arg(long, env = "CENTRAL_ALLOWED_ORIGINS", value_name = "ORIGINS")]
    pub allowed_origins: Option<AllowedOrigins>,

    /// Heartbeat interval told to nodes at registration
    #[arg(
        long,
        env = "CENTRAL_HEARTBEAT_INTERVAL_MS",
        default_value_t = 2000,
        value_name = "MS"
    )]
    pub heartbeat_interval_ms: u64,

    /// A node silent this long is evicted (and one not answering probes this long is down)
    #[arg(
        long,
        env = "CENTRAL_NODE_TIMEOUT_MS",
        default_value_t = 6000,
        value_name = "MS"
    )]
    pub node_timeout_ms: u64,

    /// How often central probes every node's Relay.Probe
    #[arg(
        long,
        env = "CENTRAL_PROBE_INTERVAL_MS",
        default_value_t = 1000,
        value_name = "MS"
    )]
    pub probe_interval_ms: u64,

    /// Lifetime of the node tickets handed out at login
    #[arg(
        long,
        env = "CENTRAL_TICKET_TTL_SECS",
        default_value_t = 60,
        value_name = "SECS"
    )]
    pub ticket_ttl_secs: u64,

    /// STUN servers for the login answer's iceServers, comma-separated stun:/stuns: URLs
    #[arg(long, env = "CENTRAL_STUN_URLS", value_name = "URLS")]
    pub stun_urls: Option<String>,

    /// TURN servers for the login answer's iceServers, comma-separated turn:/turns: URLs
    /// (needs --turn-secret)
    #[arg(long, env = "CENTRAL_TURN_URLS", value_name = "URLS")]
    pub turn_urls: Option<String>,

    /// Shared with the TURN server (coturn's static-auth-secret): signs the TURN credentials
    /// (unused without --turn-urls)
    #[arg(
        long,
        env = "CENTRAL_TURN_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub turn_secret: Option<String>,

    /// Lifetime of the TURN credentials handed out at login
    #[arg(
        long,
        env = "CENTRAL_TURN_TTL_SECS",
        default_value_t = 3600,
        value_name = "SECS"
    )]
    pub turn_ttl_secs: u64,

    /// Share the registry between central replicas, e.g. redis://127.0.0.1:6379/ (rediss://
    /// for TLS; comma-separated seeds for a cluster, the sentinels for sentinel)
    #[arg(long, env = "CENTRAL_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,

    /// The Redis deployment behind --redis-url
    #[arg(long, env = "CENTRAL_REDIS_MODE", value_enum, default_value_t = RedisMode::Standalone)]
    pub redis_mode: RedisMode,

    /// With --redis-mode sentinel: the master name the sentinels monitor
    #[arg(long, env = "CENTRAL_REDIS_SENTINEL_MASTER", value_name = "NAME")]
    pub redis_sentinel_master: Option<String>,

    /// PEM file of the CA certificates rediss:// servers are verified against (default: the
    /// system's roots)
    #[arg(long, env = "CENTRAL_REDIS_TLS_CA", value_name = "FILE")]
    pub redis_tls_ca: Option<PathBuf>,

    /// All-in-one local cluster: central plus in-process signal nodes on loopback
    #[arg(long, env = "CENTRAL_DEV")]
    pub dev: bool,

    /// Number of in-process signal nodes with --dev
    #[arg(long, env = "CENTRAL_DEV_NODES", default_value_t = 2, value_name = "N")]
    pub dev_nodes: usize,

    /// Drain window of the in-process signal nodes with --dev
    #[arg(
        long,
        env = "CENTRAL_DEV_DRAIN_MS",
        default_value_t = 2000,
        value_name = "MS"
    )]
    pub dev_drain_ms: u64,

    /// Log as JSON lines
    #[arg(long, env = "CENTRAL_LOG_JSON")]
    pub log_json: bool,

    /// Enables the server API for the application backend (POST /v1/messages, GET
    /// /v1/presence, GET /v1/users/{id}, DELETE /v1/users/{id}/session), called with
    /// `Authorization: Bearer <key>`. Comma-separated to rotate (add the new key, switch the
    /// backend, remove the old one); each at least 16 characters [default: API disabled, 404]
    #[arg(
        long,
        env = "CENTRAL_API_KEYS",
        hide_env_values = true,
        value_name = "KEYS"
    )]
    pub api_key: Option<String>,

    /// The nodes' directory Redis the server API reads users from (the signal nodes'
    /// --redis-url) [default: --redis-url; in-memory with --dev]
    #[arg(long, env = "CENTRAL_API_REDIS_URL", value_name = "URL")]
    pub api_redis_url: Option<String>,

    /// Largest server API request body; larger ones get 413
    #[arg(
        long,
        env = "CENTRAL_API_MAX_BODY_BYTES",
        default_value_t = crate::api::DEFAULT_MAX_BODY_BYTES as u64,
        value_name = "BYTES",
        value_parser = clap::value_parser!(u64).range(1024..=(16 * 1024 * 1024))
    )]
    pub api_max_body_bytes: u64,

    /// Most users in one GET /v1/presence; more get 400
    #[arg(
        long,
        env = "CENTRAL_API_MAX_PRESENCE_USERS",
        default_value_t = crate::api::DEFAULT_MAX_PRESENCE_USERS as u64,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..=10_000)
    )]
    pub api_max_presence_users: u64,

    /// Mutual TLS of the registry gRPC (with --grpc-tls-key and --grpc-tls-ca): this PEM certificate
    #[arg(long, env = "CENTRAL_GRPC_TLS_CERT", value_name = "PEM")]
    pub grpc_tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --grpc-tls-cert
    #[arg(long, env = "CENTRAL_GRPC_TLS_KEY", value_name = "PEM")]
    pub grpc_tls_key: Option<PathBuf>,

    /// CA (PEM) that signed the nodes' client certificates and their server certificates
    #[arg(long, env = "CENTRAL_GRPC_TLS_CA", value_name = "PEM")]
    pub grpc_tls_ca: Option<PathBuf>,
}

/// Why central does not start without a JWT secret outside `--dev` (it names both flags).
pub const OPEN_LOGIN_REFUSED: &str =
    "is required unless --dev or --open-login (CENTRAL_OPEN_LOGIN): \
without it anyone could log in as any user; pass the JWT secret your application's backend \
signs logins with, or --open-login to allow that on purpose";

/// A flag with a bad value; the message names the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub message: String,
}

fn bad(flag: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        message: message.into(),
    }
}

impl Args {
    /// Checks the flags together and builds the configuration.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let api = self.api_config()?;
        let secret = match (self.secret, self.dev) {
            (Some(s), _) if s.is_empty() => {
                return Err(bad("--secret (CENTRAL_SECRET)", "must not be empty"))
            }
            (Some(s), _) => s,
            (None, true) => random_secret(),
            (None, false) => {
                return Err(bad(
                    "--secret (CENTRAL_SECRET)",
                    "is required unless --dev (it signs the node tickets)",
                ))
            }
        };
        if self.jwt_secret.as_deref() == Some("") {
            return Err(bad(
                "--jwt-secret (CENTRAL_JWT_SECRET)",
                "must not be empty",
            ));
        }
        if self.heartbeat_interval_ms == 0 {
            return Err(bad("--heartbeat-interval-ms", "must be at least 1"));
        }
        if self.node_timeout_ms <= self.heartbeat_interval_ms {
            return Err(bad(
                "--node-timeout-ms",
                format!(
                    "must be larger than --heartbeat-interval-ms ({} <= {})",
                    self.node_timeout_ms, self.heartbeat_interval_ms
                ),
            ));
        }
        if self.probe_interval_ms == 0 {
            return Err(bad("--probe-interval-ms", "must be at least 1"));
        }
        if self.ticket_ttl_secs == 0 {
            return Err(bad("--ticket-ttl-secs", "must be at least 1"));
        }
        let redis = match &self.redis_url {
            None => None,
            Some(url) => {
                let cfg = RedisConfig::parse(
                    self.redis_mode,
                    url,
                    self.redis_sentinel_master.clone(),
                    self.redis_tls_ca.clone(),
                );
                if let Err(e) = cfg.check() {
                    let flag = match cfg.flag_at_fault() {
                        "redis-sentinel-master" => {
                            "--redis-sentinel-master (CENTRAL_REDIS_SENTINEL_MASTER)"
                        }
                        "redis-tls-ca" => "--redis-tls-ca (CENTRAL_REDIS_TLS_CA)",
                        _ => "--redis-url (CENTRAL_REDIS_URL)",
                    };
                    return Err(bad(flag, format!("invalid {url:?}: {e}")));
                }
                Some(cfg)
            }
        };
        let ice = ice_config(
            self.stun_urls.as_deref().unwrap_or(""),
            self.turn_urls.as_deref().unwrap_or(""),
            self.turn_secret,
            self.turn_ttl_secs,
        )?;
        if self.dev && self.dev_nodes == 0 {
            return Err(bad("--dev-nodes", "must be at least 1"));
        }
        let grpc_tls = GrpcTls::from_flags(
            self.grpc_tls_cert.as_ref(),
            self.grpc_tls_key.as_ref(),
            self.grpc_tls_ca.as_ref(),
        )
        .map_err(|e| {
            bad(
                "--grpc-tls-cert/--grpc-tls-key/--grpc-tls-ca",
                e.to_string(),
            )
        })?;
        // Last: a bad value of another flag is reported first.
        if self.jwt_secret.is_some() && self.open_login {
            return Err(bad(
                "--open-login (CENTRAL_OPEN_LOGIN)",
                "conflicts with --jwt-secret (CENTRAL_JWT_SECRET): choose JWT login or open login",
            ));
        }
        if self.jwt_secret.is_none() && !self.open_login && !self.dev {
            return Err(bad("--jwt-secret (CENTRAL_JWT_SECRET)", OPEN_LOGIN_REFUSED));
        }
        for (flag, v) in [
            ("--jwt-audience (CENTRAL_JWT_AUDIENCE)", &self.jwt_audience),
            ("--jwt-issuer (CENTRAL_JWT_ISSUER)", &self.jwt_issuer),
        ] {
            match v.as_deref() {
                Some("") => return Err(bad(flag, "must not be empty")),
                Some(_) if self.jwt_secret.is_none() => {
                    return Err(bad(flag, "needs --jwt-secret (CENTRAL_JWT_SECRET)"))
                }
                _ => {}
            }
        }
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
        Ok(Config {
            http_listen: self.http_listen.unwrap_or(if self.dev {
                loopback(8080)
            } else {
                any(8080)
            }),
            grpc_listen: self
                .grpc_listen
                .unwrap_or(if self.dev { loopback(0) } else { any(9090) }),
            secret,
            jwt_secret: self.jwt_secret,
            jwt_audience: self.jwt_audience,
            jwt_issuer: self.jwt_issuer,
            jwt_leeway: Duration::from_secs(self.jwt_leeway_secs),
            open_login: self.open_login,
            allowed_origins: self.allowed_origins.unwrap_or_default(),
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms),
            node_timeout: Duration::from_millis(self.node_timeout_ms),
            probe_interval: Duration::from_millis(self.probe_interval_ms),
            ticket_ttl: Duration::from_secs(self.ticket_ttl_secs),
            ice,
            redis,
            dev: self.dev,
            dev_nodes: self.dev_nodes,
            dev_drain: Duration::from_millis(self.dev_drain_ms),
            log_json: self.log_json,
            metrics: None,
            grpc_tls,
            api,
        })
    }

    /// The server API flags together: keys parsed, a directory to read users from.
    fn api_config(&self) -> Result<Option<ApiConfig>, ConfigError> {
        const KEYS: &str = "--api-key (CENTRAL_API_KEYS)";
        const REDIS: &str = "--api-redis-url (CENTRAL_API_REDIS_URL)";
        let keys =
            ApiKeys::parse(self.api_key.as_deref().unwrap_or("")).map_err(|e| bad(KEYS, e))?;
        let Some(keys) = keys else {
            return Ok(None);
        };
        let api_redis_url = self.api_redis_url.clone().filter(|u| !u.is_empty());
        let redis_url = self.redis_url.clone().filter(|u| !u.is_empty());
        let directory_url = api_redis_url.clone().or(redis_url);
        // The nodes' Redis is the same kind of deployment as central's (`--redis-mode`, the
        // sentinel master, the TLS CA).
        let redis = directory_url.as_deref().map(|url| {
            RedisConfig::parse(
                self.redis_mode,
                url,
                self.redis_sentinel_master.clone(),
                self.redis_tls_ca.clone(),
            )
        });
        if let (Some(url), Some(cfg)) = (&api_redis_url, &redis) {
            if let Err(e) = cfg.check() {
                return Err(bad(REDIS, format!("invalid URL {url:?}: {e}")));
            }
        }
        if directory_url.is_none() && !self.dev {
            return Err(bad(
                KEYS,
                "needs the nodes' directory: --api-redis-url (CENTRAL_API_REDIS_URL) or --redis-url",
            ));
        }
        Ok(Some(ApiConfig {
            keys,
            max_body_bytes: usize::try_from(self.api_max_body_bytes)
                .map_err(|_| bad("--api-max-body-bytes", "too large"))?,
            max_presence_users: usize::try_from(self.api_max_presence_users)
                .map_err(|_| bad("--api-max-presence-users", "too large"))?,
            redis: if self.dev { None } else { redis },
        }))
    }
}

/// The ICE flags together: URLs checked, TURN URLs only with a secret. A secret without TURN
/// URLs is unused (so a deployment may always pass it and switch TURN on by the URLs alone).
fn ice_config(
    stun_urls: &str,
    turn_urls: &str,
    turn_secret: Option<String>,
    turn_ttl_secs: u64,
) -> Result<IceConfig, ConfigError> {
    const STUN: &str = "--stun-urls (CENTRAL_STUN_URLS)";
    const TURN: &str = "--turn-urls (CENTRAL_TURN_URLS)";
    const SECRET: &str = "--turn-secret (CENTRAL_TURN_SECRET)";
    let stun_urls = parse_urls(stun_urls, UrlKind::Stun).map_err(|e| bad(STUN, e.to_string()))?;
    let turn_urls = parse_urls(turn_urls, UrlKind::Turn).map_err(|e| bad(TURN, e.to_string()))?;
    if turn_ttl_secs == 0 {
        return Err(bad(
            "--turn-ttl-secs (CENTRAL_TURN_TTL_SECS)",
            "must be at least 1",
        ));
    }
    let secret = turn_secret.filter(|s| !s.is_empty());
    let turn = match (turn_urls.is_empty(), secret) {
        (true, _) => None,
        (false, Some(secret)) => Some(TurnConfig {
            urls: turn_urls,
            secret,
            ttl: Duration::from_secs(turn_ttl_secs),
        }),
        (false, None) => {
            return Err(bad(
                SECRET,
                "is required with --turn-urls (coturn's static-auth-secret; must not be empty)",
            ))
        }
    };
    Ok(IceConfig { stun_urls, turn })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut v = vec!["central"];
        v.extend_from_slice(args);
        Args::try_parse_from(v)
            .map_err(|e| e.to_string())?
            .into_config()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = parse(&["--secret", "s", "--open-login"]).unwrap();
        assert_eq!(c.http_listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.grpc_listen.to_string(), "0.0.0.0:9090");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(c.node_timeout, Duration::from_secs(6));
        assert_eq!(c.ticket_ttl, Duration::from_secs(60));
        assert!(c.jwt_secret.is_none() && c.redis.is_none() && !c.dev);
        assert!(c.open_login && c.allowed_origins.is_any());
        assert_eq!(c.jwt_leeway, Duration::from_secs(30));
        let d = parse(&["--dev"]).unwrap();
        assert_eq!(d.http_listen.to_string(), "127.0.0.1:8080");
        assert!(!d.secret.is_empty());
        let d = parse(&["--dev", "--http-listen", "127.0.0.1:9999"]).unwrap();
        assert_eq!(d.http_listen.to_string(), "127.0.0.1:9999");
    }

    #[test]
    fn api_flags() {
        let c = parse(&["--secret", "s", "--open-login"]).unwrap();
        assert!(c.api.is_none());
        let e = parse(&[
            "--secret",
            "s",
            "--open-login",
            "--api-key",
            "k0123456789abcdef",
        ])
        .unwrap_err();
        assert!(e.contains("--api-redis-url"), "{e}");
        let e = parse(&["--dev", "--api-key", "short"]).unwrap_err();
        assert!(e.contains("--api-key"), "{e}");
        let c = parse(&[
            "--secret",
            "s",
            "--open-login",
            "--redis-url",
            "redis://127.0.0.1:1/",
            "--api-key",
            "k0123456789abcdef,k2-0123456789abcdef",
        ])
        .unwrap();
        let api = c.api.unwrap();
        assert_eq!(api.keys.len(), 2);
        assert_eq!(
            api.redis.map(|r| r.urls),
            Some(vec!["redis://127.0.0.1:1/".to_owned()])
        );
        assert_eq!(api.max_presence_users, 100);
        let c = parse(&["--dev", "--api-key", "k0123456789abcdef"]).unwrap();
        assert!(c.api.unwrap().redis.is_none());
    }

    #[test]
    fn login_is_authenticated_unless_dev_or_open_login() {
        let e = parse(&["--secret", "s"]).unwrap_err();
        assert!(
            e.contains("--jwt-secret") && e.contains("--open-login"),
            "{e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
        let c = parse(&["--secret", "s", "--jwt-secret", "j"]).unwrap();
        assert!(!c.open_login && c.jwt_secret.is_some());
        assert!(parse(&["--dev"]).is_ok());
        let e = parse(&["--secret", "s", "--jwt-secret", "j", "--open-login"]).unwrap_err();
        assert!(
            e.contains("--open-login") && e.contains("--jwt-secret"),
            "{e}"
        );
        let c = parse(&[
            "--secret",
            "s",
            "--jwt-secret",
            "j",
            "--jwt-audience",
            "signal",
            "--jwt-issuer",
            "https://app",
            "--jwt-leeway-secs",
            "5",
        ])
        .unwrap();
        assert_eq!(c.jwt_audience.as_deref(), Some("signal"));
        assert_eq!(c.jwt_issuer.as_deref(), Some("https://app"));
        assert_eq!(c.jwt_leeway, Duration::from_secs(5));
        assert!(
            parse(&["--secret", "s", "--open-login", "--jwt-audience", "a"])
                .unwrap_err()
                .contains("--jwt-audience")
        );
        assert!(parse(&[
            "--secret",
            "s",
            "--jwt-secret",
            "j",
            "--jwt-leeway-secs",
            "601"
        ])
        .unwrap_err()
        .contains("--jwt-leeway-secs"));
    }

    #[test]
    fn allowed_origins() {
        let c = parse(&[
            "--dev",
            "--allowed-origins",
            "https://a.example,http://localhost:3000",
        ])
        .unwrap();
        assert_eq!(
            c.allowed_origins.origins(),
            ["https://a.example", "http://localhost:3000"]
        );
        assert!(parse(&["--dev", "--allowed-origins", "a.example"])
            .unwrap_err()
            .contains("--allowed-origins"));
    }

    #[test]
    fn bad_values_name_the_flag() {
        assert!(parse(&[]).unwrap_err().contains("--secret"));
        assert!(parse(&["--secret", ""]).unwrap_err().contains("--secret"));
        assert!(parse(&["--secret", "s", "--http-listen", "nope"])
            .unwrap_err()
            .contains("--http-listen"));
        assert!(parse(&["--secret", "s", "--redis-url", "http://x"])
            .unwrap_err()
            .contains("--redis-url"));
        assert!(parse(&["--secret", "s", "--node-timeout-ms", "100"])
            .unwrap_err()
            .contains("--node-timeout-ms"));
        assert!(parse(&["--secret", "s", "--heartbeat-interval-ms", "x"])
            .unwrap_err()
            .contains("--heartbeat-interval-ms"));
    }

    #[test]
    fn ice_flags() {
        let c = parse(&["--secret", "s", "--open-login"]).unwrap();
        assert_eq!(c.ice, IceConfig::default());
        let c = parse(&[
            "--dev",
            "--stun-urls",
            "stun:127.0.0.1:3478",
            "--turn-urls",
            "turn:127.0.0.1:3478?transport=udp,turns:turn.example:5349",
            "--turn-secret",
            "north",
            "--turn-ttl-secs",
            "600",
        ])
        .unwrap();
        assert_eq!(c.ice.stun_urls, ["stun:127.0.0.1:3478"]);
        let turn = c.ice.turn.clone().unwrap();
        assert_eq!(turn.urls.len(), 2);
        assert_eq!(turn.ttl, Duration::from_secs(600));
        assert_eq!(turn.secret, "north");
        assert!(!format!("{c:?}").contains("north"), "secret in Debug");
        // Empty values mean none (unset variables in compose); a secret alone is unused.
        let c = parse(&[
            "--secret",
            "s",
            "--open-login",
            "--turn-urls",
            "",
            "--turn-secret",
            "",
        ])
        .unwrap();
        assert!(c.ice.turn.is_none());
        let c = parse(&[
            "--secret",
            "s",
            "--open-login",
            "--stun-urls",
            " ",
            "--turn-secret",
            "k",
        ])
        .unwrap();
        assert_eq!(c.ice, IceConfig::default());
        for (args, flag) in [
            (&["--turn-urls", "http://x"][..], "--turn-urls"),
            (
                &["--turn-urls", "stun:x", "--turn-secret", "k"],
                "--turn-urls",
            ),
            (&["--stun-urls", "turn:x"], "--stun-urls"),
            (&["--turn-urls", "turn:x"], "--turn-secret"),
            (
                &["--turn-urls", "turn:x", "--turn-secret", ""],
                "--turn-secret",
            ),
            (
                &[
                    "--turn-urls",
                    "turn:x",
                    "--turn-secret",
                    "k",
                    "--turn-ttl-secs",
                    "0",
                ],
                "--turn-ttl-secs",
            ),
        ] {
            let mut v = vec!["--secret", "s"];
            v.extend_from_slice(args);
            let e = parse(&v).unwrap_err();
            assert!(e.contains(flag), "{args:?}: {e}");
        }
    }
}
