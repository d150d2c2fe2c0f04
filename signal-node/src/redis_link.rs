//! How the node opens its Redis connections (the directory, the mailbox, and whatever else keeps
//! state in Redis): one place for the URL check, the timeouts and the reconnect backoff.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// The connection every feature module holds: cheap to clone, reconnects by itself. Modules
/// use it only through `redis::cmd`, `redis::pipe` and `redis::Script` (so the same code runs
/// whatever deployment sits behind it) and keep each unit of atomicity under one hash tag.
pub type RedisConn = ConnectionManager;

/// A lazily connected, self-reconnecting connection to `url`. Fails only on a malformed URL:
/// a Redis that is down at start is not an error (each command fails fast meanwhile).
pub fn connect_lazy(url: &str) -> Result<RedisConn, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_secs(1)))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
}
