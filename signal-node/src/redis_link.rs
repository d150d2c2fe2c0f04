//! How the node (and central) open their Redis connections, whatever the deployment: one
//! standalone server, a Redis Cluster, or a master found through Sentinel; `rediss://` (TLS,
//! rustls) in each. One place for the URL checks, the timeouts and the reconnect backoff.
//!
//! Feature modules hold a [`RedisConn`] and use it only through `redis::cmd`, `redis::pipe` and
//! `redis::Script`, so the same code runs on every mode. On a cluster each command (and each
//! script, by its first key) goes to the master of its slot; a pipeline must stay within one
//! slot (the crate refuses a cross-slot pipeline with CROSSSLOT), see [`RedisConn::is_cluster`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo, Pipeline,
    RedisError, RedisFuture, RedisResult, ServerErrorKind, TlsCertificates, TlsMode, Value,
};

/// How long connecting to one server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one command may wait for its answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long asking the sentinels for the master (and connecting to it) may take.
const DISCOVER_TIMEOUT: Duration = Duration::from_secs(2);

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

    fn build(&self) -> Result<Built, RedisError> {
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

enum Built {
    Standalone(redis::Client),
    Cluster(ClusterClient),
    Sentinel(SentinelClient),
}

/// The connection every feature module holds: cheap to clone, reconnects by itself, the same
/// `ConnectionLike` whatever the deployment. Modules use it only through `redis::cmd`,
/// `redis::pipe` and `redis::Script` and keep each unit of atomicity under one hash tag.
#[derive(Clone)]
pub struct RedisConn {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Standalone(ConnectionManager),
    Cluster(Arc<LazyCluster>),
    Sentinel(Arc<SentinelMaster>),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConn")
            .field("mode", &self.mode())
            .finish()
    }
}

/// A lazily connected, self-reconnecting connection to the deployment `cfg` describes (a
/// `&str` URL is a standalone config). Fails only on a bad config: a Redis that is down at
/// start is not an error (each command fails fast meanwhile).
pub fn connect_lazy(cfg: impl Into<RedisConfig>) -> Result<RedisConn, RedisError> {
    let cfg: RedisConfig = cfg.into();
    let inner = match cfg.build()? {
        Built::Standalone(client) => {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_millis(500));
            Inner::Standalone(ConnectionManager::new_lazy_with_config(client, config)?)
        }
        Built::Cluster(client) => Inner::Cluster(Arc::new(LazyCluster {
            client,
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            failed: FailedAttempt::default(),
        })),
        Built::Sentinel(client) => Inner::Sentinel(Arc::new(SentinelMaster {
            sentinels: tokio::sync::Mutex::new(client),
            current: Mutex::new(None),
            generation: Mutex::new(0),
            failed: FailedAttempt::default(),
        })),
    };
    Ok(RedisConn { inner })
}

impl RedisConn {
    /// The deployment behind this connection.
    pub fn mode(&self) -> RedisMode {
        match self.inner {
            Inner::Standalone(_) => RedisMode::Standalone,
            Inner::Cluster(_) => RedisMode::Cluster,
            Inner::Sentinel(_) => RedisMode::Sentinel,
        }
    }

    /// Whether commands are spread over slots: a pipeline must then stay within one slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner, Inner::Cluster(_))
    }
}

/// Whether `e` means the connection (or the server behind it) is no longer the one to talk
/// to: the master moved, the socket broke, or it stopped answering.
fn is_stale(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly)
                | ErrorKind::Server(ServerErrorKind::MasterDown)
                | ErrorKind::Server(ServerErrorKind::BusyLoading)
        )
}

/// Remembers the last failed attempt to connect (or to discover the master), so that commands
/// queued behind one attempt fail fast with its error instead of each trying again in turn:
/// during an outage a command waits for at most one attempt.
#[derive(Default)]
struct FailedAttempt(Mutex<Option<(Instant, String)>>);

/// How long a failed connect attempt answers for the commands that come after it.
const RETRY_AFTER: Duration = Duration::from_millis(250);

impl FailedAttempt {
    fn recent(&self) -> Option<RedisError> {
        let last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match last.as_ref() {
            Some((at, e)) if at.elapsed() < RETRY_AFTER => Some(RedisError::from((
                ErrorKind::Io,
                "redis unreachable (retrying)",
                e.clone(),
            ))),
            _ => None,
        }
    }

    fn record<T>(&self, r: RedisResult<T>) -> RedisResult<T> {
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match &r {
            Ok(_) => *last = None,
            Err(e) => *last = Some((Instant::now(), e.to_string())),
        }
        r
    }
}

/// A cluster connection made on first use. Once made, the crate's `ClusterConnection` follows
/// the topology by itself (MOVED/ASK, slot refresh, reconnects to each node).
struct LazyCluster {
    client: ClusterClient,
    conn: Mutex<Option<ClusterConnection>>,
    connecting: tokio::sync::Mutex<()>,
    failed: FailedAttempt,
}

impl LazyCluster {
    async fn get(&self) -> RedisResult<ClusterConnection> {
        if let Some(c) = self
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            return Ok(c.clone());
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            return Ok(c.clone());
        }
        if let Some(e) = self.failed.recent() {
            return Err(e);
        }
        let c = self
            .failed
            .record(self.client.get_async_connection().await)?;
        *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = Some(c.clone());
        Ok(c)
    }
}

/// The master the sentinels name, reconnected (and asked for again) after an error that says
/// the connection is stale: a failover recovers without a restart.
struct SentinelMaster {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    /// The current master connection and its generation.
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    generation: Mutex<u64>,
    failed: FailedAttempt,
}

impl SentinelMaster {
    async fn get(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(c) = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            return Ok(c.clone());
        }
        let mut sentinels = self.sentinels.lock().await;
        if let Some(c) = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            return Ok(c.clone());
        }
        if let Some(e) = self.failed.recent() {
            return Err(e);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let found = tokio::time::timeout(DISCOVER_TIMEOUT, async {
            let client = sentinels.async_get_client().await?;
            let addr = client.get_connection_info().addr().to_string();
            let conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            Ok::<_, RedisError>((addr, conn))
        })
        .await
        .map_err(|_| {
            RedisError::from((
                ErrorKind::Io,
                "sentinel discovery timed out",
                format!("{DISCOVER_TIMEOUT:?}"),
            ))
        })
        .and_then(|r| r);
        let (addr, conn) = self.failed.record(found)?;
        let generation = {
            let mut g = self
                .generation
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *g += 1;
            *g
        };
        tracing::info!(master = %addr, generation, "redis sentinel: connected to the master");
        metrics::counter!("redis_sentinel_master_switches_total").increment(1);
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    /// Forgets the connection of `generation` (not a newer one) so the next command asks the
    /// sentinels again.
    fn invalidate(&self, generation: u64, e: &RedisError) {
        let mut cur = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(cur.as_ref(), Some((g, _)) if *g == generation) {
            *cur = None;
            drop(cur);
            tracing::warn!(error = %e, "redis sentinel: master connection stale, rediscovering");
        }
    }

    fn check<T>(&self, generation: u64, r: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &r {
            if is_stale(e) {
                self.invalidate(generation, e);
            }
        }
        r
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.inner {
            Inner::Standalone(c) => c.req_packed_command(cmd),
            Inner::Cluster(l) => {
                let l = Arc::clone(l);
                Box::pin(async move {
                    let mut c = l.get().await?;
                    c.req_packed_command(cmd).await
                })
            }
            Inner::Sentinel(s) => {
                let s = Arc::clone(s);
                Box::pin(async move {
                    let (generation, mut c) = s.get().await?;
                    let r = c.req_packed_command(cmd).await;
                    s.check(generation, r)
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.inner {
            Inner::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Inner::Cluster(l) => {
                let l = Arc::clone(l);
                Box::pin(async move {
                    let mut c = l.get().await?;
                    c.req_packed_commands(pipeline, offset, count).await
                })
            }
            Inner::Sentinel(s) => {
                let s = Arc::clone(s);
                Box::pin(async move {
                    let (generation, mut c) = s.get().await?;
                    let r = c.req_packed_commands(pipeline, offset, count).await;
                    s.check(generation, r)
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Standalone(c) => c.get_db(),
            Inner::Cluster(_) => 0,
            Inner::Sentinel(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_checked_without_connecting() {
        assert!(RedisConfig::from("redis://127.0.0.1:1/").check().is_ok());
        assert!(RedisConfig::from("nope://").check().is_err());
        let two = RedisConfig::parse(
            RedisMode::Standalone,
            "redis://a:1, redis://b:2",
            None,
            None,
        );
        assert_eq!(two.urls, ["redis://a:1", "redis://b:2"]);
        assert!(two.check().is_err());
        let cluster = RedisConfig {
            mode: RedisMode::Cluster,
            ..two.clone()
        };
        assert!(cluster.check().is_ok());
        let sentinel = RedisConfig {
            mode: RedisMode::Sentinel,
            ..two
        };
        assert!(sentinel.check().is_err(), "needs a master name");
        let named = RedisConfig {
            sentinel_master: Some("mymaster".into()),
            ..sentinel
        };
        assert!(named.check().is_ok());
        let no_ca = RedisConfig {
            tls_ca: Some("/nonexistent/ca.pem".into()),
            ..RedisConfig::from("rediss://127.0.0.1:1/")
        };
        assert!(no_ca.check().unwrap_err().to_string().contains("CA"));
    }

    #[tokio::test]
    async fn a_lazy_connection_to_a_silent_server_fails_fast_in_every_mode() {
        // Accepts TCP connections (the kernel's backlog) but never answers: every attempt
        // runs into a timeout. 50 commands at once must share attempts, not queue 50 of them.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("redis://{}", silent.local_addr().unwrap());
        for cfg in [
            RedisConfig::from(url.as_str()),
            RedisConfig::parse(RedisMode::Cluster, &url, None, None),
            RedisConfig::parse(RedisMode::Sentinel, &url, Some("m".into()), None),
        ] {
            let conn = connect_lazy(&cfg).unwrap();
            let start = Instant::now();
            let pings = (0..50).map(|_| {
                let mut conn = conn.clone();
                async move { redis::cmd("PING").query_async::<String>(&mut conn).await }
            });
            let results = futures::future::join_all(pings).await;
            assert!(results.iter().all(Result::is_err), "{cfg:?}");
            assert!(
                start.elapsed() < Duration::from_secs(8),
                "{:?}: {:?}",
                cfg.mode,
                start.elapsed()
            );
        }
        drop(silent);
    }
}
