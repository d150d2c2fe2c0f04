//! How a cluster or sentinel connection is made on first use and re-made after a failover:
//! the lazily made `ClusterConnection`, the sentinel-discovered master, and the gate that
//! makes commands queued behind one failed attempt fail fast.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::SentinelClient;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, RedisResult, ServerErrorKind};

use super::config::{CONNECT_TIMEOUT, DISCOVER_TIMEOUT, RESPONSE_TIMEOUT};

/// Whether `e` means the connection (or the server behind it) is no longer the one to talk
/// to: the master moved, the socket broke, or it stopped answering.
pub(super) fn is_stale(e: &RedisError) -> bool {
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
pub(super) struct FailedAttempt(Mutex<Option<(Instant, String)>>);

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
pub(super) struct LazyCluster {
    pub(super) client: ClusterClient,
    pub(super) conn: Mutex<Option<ClusterConnection>>,
    pub(super) connecting: tokio::sync::Mutex<()>,
    pub(super) failed: FailedAttempt,
}

impl LazyCluster {
    pub(super) async fn get(&self) -> RedisResult<ClusterConnection> {
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
pub(super) struct SentinelMaster {
    pub(super) sentinels: tokio::sync::Mutex<SentinelClient>,
    /// The current master connection and its generation.
    pub(super) current: Mutex<Option<(u64, MultiplexedConnection)>>,
    pub(super) generation: Mutex<u64>,
    pub(super) failed: FailedAttempt,
}

impl SentinelMaster {
    pub(super) async fn get(&self) -> RedisResult<(u64, MultiplexedConnection)> {
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

    pub(super) fn check<T>(&self, generation: u64, r: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &r {
            if is_stale(e) {
                self.invalidate(generation, e);
            }
        }
        r
    }
}
