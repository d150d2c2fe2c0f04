//! How the node (and central) open their Redis connections, whatever the deployment: one
//! standalone server, a Redis Cluster, or a master found through Sentinel; `rediss://` (TLS,
//! rustls) in each. One place for the URL checks, the timeouts and the reconnect backoff.
//!
//! Feature modules hold a [`RedisConn`] and use it only through `redis::cmd`, `redis::pipe` and
//! `redis::Script`, so the same code runs on every mode. On a cluster each command (and each
//! script, by its first key) goes to the master of its slot; a pipeline must stay within one
//! slot (the crate refuses a cross-slot pipeline with CROSSSLOT), see [`RedisConn::is_cluster`].

mod config;
mod failover;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use self::config::{Built, CONNECT_TIMEOUT, RESPONSE_TIMEOUT};
pub use self::config::{RedisConfig, RedisMode};
use self::failover::{FailedAttempt, LazyCluster, SentinelMaster};

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
    use std::time::Instant;

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
