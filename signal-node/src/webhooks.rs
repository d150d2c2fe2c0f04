//! Webhooks to the application backend (contract section 11): owns the node's bounded
//! in-memory queue of events (`user.online`, `user.offline`, `message.stored`), their signing
//! (`X-Signal-Signature: sha256=<hex HMAC-SHA256(secret, body)>`) and the delivery tasks
//! (bounded concurrency, a per-request timeout, retries with backoff for `--webhook-retry-secs`).
//!
//! Producers (session start and end, the mailbox) call [`Webhooks::user_online`] & co., which
//! never wait: a full queue drops the event, counts it in `signal_webhook_overflow_total` and
//! logs one line at most every [`OVERFLOW_LOG_EVERY`]. A slow or dead receiver only fills the
//! queue; it never slows relaying. Disabled (no `--webhook-url`), every call is a no-op.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;
use signal_proto::{MessageId, NodeId, UserId};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Signal-Signature";
/// At most one overflow log line per this interval.
pub const OVERFLOW_LOG_EVERY: Duration = Duration::from_secs(10);
/// First retry delay (doubled per attempt up to `backoff_max`, with jitter).
const BACKOFF_START: Duration = Duration::from_millis(250);

pub const DEFAULT_QUEUE: usize = 10_000;
pub const DEFAULT_CONCURRENCY: usize = 8;
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_RETRY_SECS: u64 = 600;
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 30_000;

/// `--webhook-*` flags.
#[derive(Clone)]
pub struct WebhookConfig {
    /// `http://` URL the events are POSTed to.
    pub url: String,
    /// HMAC key of the signature header.
    pub secret: String,
    /// Events waiting for delivery (queued, not yet taken by a delivery task).
    pub queue: usize,
    /// Deliveries in flight at once (each retrying its event until acknowledged).
    pub concurrency: usize,
    /// One HTTP request, connection included.
    pub timeout: Duration,
    /// How long one event is retried before it is dropped (counted, logged).
    pub retry_for: Duration,
    /// Largest delay between two attempts of one event.
    pub backoff_max: Duration,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("queue", &self.queue)
            .field("concurrency", &self.concurrency)
            .field("timeout", &self.timeout)
            .field("retry_for", &self.retry_for)
            .field("backoff_max", &self.backoff_max)
            .finish()
    }
}

/// HMAC-SHA256 of `body` with `secret`, as the header value `sha256=<hex>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    #[allow(clippy::expect_used)]
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// One event, serialised and signed once.
struct Event {
    id: String,
    kind: &'static str,
    body: bytes::Bytes,
    signature: String,
}

struct Inner {
    config: WebhookConfig,
    tx: mpsc::Sender<Event>,
    rx: tokio::sync::Mutex<mpsc::Receiver<Event>>,
    client: reqwest::Client,
    /// Events taken by a delivery task and not finished yet.
    in_flight: AtomicUsize,
    seq: AtomicU64,
    /// Random per process: with `seq`, the event ids.
    prefix: String,
    /// Overflow count not yet logged, and when the last line was logged.
    overflow: Mutex<(u64, Option<Instant>)>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// The node's webhook queue. A cheap `Clone` handle; [`Webhooks::disabled`] does nothing.
#[derive(Clone, Default)]
pub struct Webhooks {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            None => f.write_str("Webhooks(disabled)"),
            Some(i) => write!(f, "Webhooks({})", i.config.url),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Webhooks {
    pub fn disabled() -> Webhooks {
        Webhooks { inner: None }
    }

    /// Starts `config.concurrency` delivery tasks (inside the current runtime).
    pub fn start(config: WebhookConfig) -> Result<Webhooks, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(2)))
            .pool_max_idle_per_host(config.concurrency)
            .build()?;
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let inner = Arc::new(Inner {
            tx,
            rx: tokio::sync::Mutex::new(rx),
            client,
            in_flight: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
            prefix: format!("{:016x}", rand::random::<u64>()),
            overflow: Mutex::new((0, None)),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            config,
        });
        for _ in 0..inner.config.concurrency.max(1) {
            let i = inner.clone();
            inner.tasks.spawn(async move { i.worker().await });
        }
        inner.tasks.close();
        metrics::gauge!("signal_webhook_queue").set(0.0);
        tracing::info!(url = %inner.config.url, queue = inner.config.queue, concurrency = inner.config.concurrency, "webhooks enabled");
        Ok(Webhooks { inner: Some(inner) })
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// A session started on `node` (not a resume).
    pub fn user_online(&self, user: &UserId, node: &NodeId) {
        self.emit(
            "user.online",
            || json!({ "user": user.as_str(), "node": node.as_str() }),
        );
    }

    /// A session ended (not a resumed blip, not a replacement by a newer session).
    pub fn user_offline(&self, user: &UserId) {
        self.emit("user.offline", || json!({ "user": user.as_str() }));
    }

    /// A chat message was stored for a recipient with no session (push notification).
    pub fn message_stored(&self, from: &UserId, to: &UserId, id: &MessageId, body: &str) {
        self.emit(
            "message.stored",
            || json!({ "from": from.as_str(), "to": to.as_str(), "id": id.as_str(), "body": body }),
        );
    }

    /// Events queued and not yet acknowledged (queued + in flight).
    pub fn pending(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.pending())
    }

    /// Stops: gives the queue up to `grace` to empty, then stops the delivery tasks; what is
    /// still queued is lost (logged).
    pub async fn shutdown(&self, grace: Duration) {
        let Some(i) = &self.inner else {
            return;
        };
        let deadline = Instant::now() + grace;
        while i.pending() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = i.pending();
        if left > 0 {
            tracing::warn!(
                events = left,
                "webhooks: stopping with undelivered events (lost)"
            );
        }
        i.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), i.tasks.wait()).await;
    }

    fn emit(&self, kind: &'static str, fields: impl FnOnce() -> Value) {
        let Some(i) = &self.inner else {
            return;
        };
        if i.stop.is_cancelled() {
            return;
        }
        let id = format!("{}-{}", i.prefix, i.seq.fetch_add(1, Ordering::Relaxed));
        let mut obj = Map::new();
        obj.insert("id".into(), Value::String(id.clone()));
        obj.insert("type".into(), Value::String(kind.into()));
        obj.insert("ts".into(), Value::from(now_ms()));
        if let Value::Object(f) = fields() {
            obj.extend(f);
        }
        let body = bytes::Bytes::from(Value::Object(obj).to_string());
        let signature = signature(i.config.secret.as_bytes(), &body);
        let event = Event {
            id,
            kind,
            body,
            signature,
        };
        match i.tx.try_send(event) {
            Ok(()) => {
                metrics::counter!("signal_webhook_events_total", "type" => kind).increment(1);
                metrics::gauge!("signal_webhook_queue").set(i.queued() as f64);
            }
            Err(_) => i.overflowed(kind),
        }
    }
}

impl Inner {
    fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    fn pending(&self) -> usize {
        self.queued() + self.in_flight.load(Ordering::Acquire)
    }

    fn overflowed(&self, kind: &'static str) {
        metrics::counter!("signal_webhook_overflow_total", "type" => kind).increment(1);
        let mut o = self.overflow.lock().unwrap_or_else(PoisonError::into_inner);
        o.0 += 1;
        let due = o.1.is_none_or(|at| at.elapsed() >= OVERFLOW_LOG_EVERY);
        if due {
            tracing::warn!(
                dropped = o.0,
                queue = self.config.queue,
                url = %self.config.url,
                "webhook queue full: events dropped (receiver slow or down)"
            );
            *o = (0, Some(Instant::now()));
        }
    }

    async fn worker(self: Arc<Self>) {
        loop {
            let next = {
                let mut rx = tokio::select! {
                    _ = self.stop.cancelled() => return,
                    rx = self.rx.lock() => rx,
                };
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    e = rx.recv() => e,
                }
            };
            let Some(event) = next else {
                return;
            };
            // Counted in flight before the queue gauge drops, so `pending` never dips to 0
            // while an event is still being delivered.
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            metrics::gauge!("signal_webhook_queue").set(self.queued() as f64);
            self.deliver(&event).await;
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Attempts `event` until a 2xx, the retry horizon, or stop.
    async fn deliver(&self, event: &Event) {
        let first = Instant::now();
        let mut backoff = BACKOFF_START.min(self.config.backoff_max);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let start = Instant::now();
            let request = self
                .client
                .post(&self.config.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, &event.signature)
                .body(event.body.clone())
                .send();
            let sent = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = request => r,
            };
            metrics::histogram!("signal_webhook_request_seconds")
                .record(start.elapsed().as_secs_f64());
            let failure = match sent {
                Ok(r) if r.status().is_success() => {
                    metrics::counter!("signal_webhook_delivered_total", "type" => event.kind)
                        .increment(1);
                    if attempts > 1 {
                        tracing::info!(event = %event.id, attempts, "webhook delivered after retries");
                    }
                    return;
                }
                Ok(r) => format!("HTTP {}", r.status().as_u16()),
                Err(e) if e.is_timeout() => format!("no answer within {:?}", self.config.timeout),
                Err(e) => format!("request failed: {e}"),
            };
            metrics::counter!("signal_webhook_failed_attempts_total").increment(1);
            if attempts == 1 {
                tracing::info!(event = %event.id, kind = event.kind, error = %failure, "webhook attempt failed: retrying with backoff");
            }
            // +/- 20 % jitter so that retries of many events spread out.
            let jitter = 0.8 + rand::random::<f64>() * 0.4;
            let wait = backoff.mul_f64(jitter);
            if first.elapsed() + wait > self.config.retry_for {
                metrics::counter!("signal_webhook_expired_total", "type" => event.kind)
                    .increment(1);
                tracing::warn!(event = %event.id, kind = event.kind, attempts, error = %failure, retry_s = self.config.retry_for.as_secs(), "webhook dropped: not acknowledged within the retry horizon");
                return;
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(self.config.backoff_max);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn signature_is_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[tokio::test]
    async fn disabled_does_nothing() {
        let w = Webhooks::disabled();
        let u = UserId::new("a").unwrap();
        w.user_offline(&u);
        assert_eq!(w.pending(), 0);
        assert!(!w.is_enabled());
    }
}
