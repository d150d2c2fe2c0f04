//! `RedisConfig`: what `--redis-mode`, `--redis-url`, `--redis-sentinel-master` and
//! `--redis-tls-ca` say, checked without connecting and turned into the crate's clients.

use std::path::PathBuf;
use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisError, RedisResult, TlsCertificates,
    TlsMode,
};

/// How long connecting to one server may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one command may wait for its answer.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long asking the sentinels for the master (and connecting to it) may take.
pub(super) const DISCOVER_TIMEOUT: Duration = Duration::from_secs(2);

/// The Redis deployment behind `--redis-url`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RedisMode {
    /// One server (`--redis-url redis://host:6379/`).
    #[default]
    Standalone,
    /// A Redis Cluster (`--redis-url` lists seed nodes, comma-separated).
    Cluster,
    /// A master found through Sentinel (`--redis-url` lists the sentinels,
    /// `--redis-sentinel-master` names the master).
    Sentinel,
}

impl RedisMode {
    /// The label used in `/readyz`, logs and the `redis_up{mode=...}` metric.
    pub fn as_str(self) -> &'static str {
        match self {
            RedisMode::Standalone => "standalone",
            RedisMode::Cluster => "cluster",
            RedisMode::Sentinel => "sentinel",
        }
    }
}

/// Where Redis is: the flags `--redis-mode`, `--redis-url`, `--redis-sentinel-master` and
/// `--redis-tls-ca`. `From<&str>` gives a standalone config for one URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    pub mode: RedisMode,
    /// One URL (standalone), the seed nodes (cluster) or the sentinels (sentinel).
    pub urls: Vec<String>,
    /// The master name the sentinels monitor (sentinel mode only).
    pub sentinel_master: Option<String>,
    /// A PEM file of CA certificates that `rediss://` servers are verified against, instead
    /// of the system's roots.
    pub tls_ca: Option<PathBuf>,
}

impl RedisConfig {
    /// A standalone config for one URL.
    pub fn standalone(url: impl Into<String>) -> Self {
        Self {
            mode: RedisMode::Standalone,
            urls: vec![url.into()],
            sentinel_master: None,
            tls_ca: None,
        }
    }

    /// A config from the flags: `urls` is `--redis-url` as given (comma-separated).
    pub fn parse(
        mode: RedisMode,
        urls: &str,
        sentinel_master: Option<String>,
        tls_ca: Option<PathBuf>,
    ) -> Self {
        Self {
            mode,
            urls: urls
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect(),
            sentinel_master,
            tls_ca,
        }
    }

    /// Checks everything that can be checked without connecting: the URLs parse, the mode
    /// has what it needs, the CA file reads. The error names what is wrong.
    pub fn check(&self) -> Result<(), RedisError> {
        self.build().map(|_| ())
    }

    /// The flag (without `--`) that [`check`](Self::check)'s error is most likely about.
    pub fn flag_at_fault(&self) -> &'static str {
        if self.mode == RedisMode::Sentinel
            && self.sentinel_master.as_deref().is_none_or(str::is_empty)
        {
            "redis-sentinel-master"
        } else if self.tls_ca.is_some() && self.certs().is_err() {
            "redis-tls-ca"
        } else {
            "redis-url"
        }
    }

    fn certs(&self) -> Result<Option<TlsCertificates>, RedisError> {
        let Some(path) = &self.tls_ca else {
            return Ok(None);
        };
        let pem = std::fs::read(path).map_err(|e| {
            RedisError::from((
                ErrorKind::InvalidClientConfig,
                "cannot read the TLS CA file",
                format!("{}: {e}", path.display()),
            ))
        })?;
        if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "the TLS CA file holds no PEM certificate",
                path.display().to_string(),
            )));
        }
        Ok(Some(TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        }))
    }

    fn invalid(what: &'static str, detail: String) -> RedisError {
        RedisError::from((ErrorKind::InvalidClientConfig, what, detail))
    }

    pub(super) fn build(&self) -> Result<Built, RedisError> {
        if self.urls.is_empty() {
            return Err(Self::invalid("no Redis URL given", String::new()));
        }
        let certs = self.certs()?;
        match self.mode {
            RedisMode::Standalone => {
                let [url] = self.urls.as_slice() else {
                    return Err(Self::invalid(
                        "standalone mode takes one URL",
                        format!(
                            "{} given (use --redis-mode cluster for seeds)",
                            self.urls.len()
                        ),
                    ));
                };
                let client = match certs {
                    Some(c) => redis::Client::build_with_tls(url.as_str(), c)?,
                    None => redis::Client::open(url.as_str())?,
                };
                Ok(Built::Standalone(client))
            }
            RedisMode::Cluster => {
                let mut b = ClusterClient::builder(self.urls.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    // Fail fast during a failover (UNAVAILABLE), the health check and the
                    // next commands pick up the new topology.
                    .retries(2)
                    .min_retry_wait(50)
                    .max_retry_wait(300);
                if let Some(c) = certs {
                    b = b.certs(c);
                }
                Ok(Built::Cluster(b.build()?))
            }
            RedisMode::Sentinel => {
                let Some(master) = self.sentinel_master.as_deref().filter(|m| !m.is_empty()) else {
                    return Err(Self::invalid(
                        "sentinel mode needs the master name",
                        "--redis-sentinel-master".into(),
                    ));
                };
                let infos = self
                    .urls
                    .iter()
                    .map(|u| u.as_str().into_connection_info())
                    .collect::<RedisResult<Vec<_>>>()?;
                let tls = infos
                    .iter()
                    .any(|i| matches!(i.addr(), ConnectionAddr::TcpTls { .. }));
                let first = infos[0].redis_settings().clone();
                let mut b = SentinelClientBuilder::new(
                    infos.iter().map(|i| i.addr().clone()),
                    master,
                    SentinelServerType::Master,
                )?;
                if let Some(user) = first.username() {
                    b = b
                        .set_client_to_redis_username(user)
                        .set_client_to_sentinel_username(user);
                }
                if let Some(pass) = first.password() {
                    b = b
                        .set_client_to_redis_password(pass)
                        .set_client_to_sentinel_password(pass);
                }
                b = b.set_client_to_redis_db(first.db());
                if tls {
                    b = b
                        .set_client_to_redis_tls_mode(TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(TlsMode::Secure);
                    if let Some(c) = certs {
                        b = b
                            .set_client_to_redis_certificates(c.clone())
                            .set_client_to_sentinel_certificates(c);
                    }
                }
                Ok(Built::Sentinel(b.build()?))
            }
        }
    }
}

impl From<&str> for RedisConfig {
    fn from(url: &str) -> Self {
        Self::standalone(url)
    }
}

impl From<&String> for RedisConfig {
    fn from(url: &String) -> Self {
        Self::standalone(url.as_str())
    }
}

impl From<String> for RedisConfig {
    fn from(url: String) -> Self {
        Self::standalone(url)
    }
}

impl From<&RedisConfig> for RedisConfig {
    fn from(cfg: &RedisConfig) -> Self {
        cfg.clone()
    }
}

pub(super) enum Built {
    Standalone(redis::Client),
    Cluster(ClusterClient),
    Sentinel(SentinelClient),
}
