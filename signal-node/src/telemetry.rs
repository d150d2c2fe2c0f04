//! Logging and metrics set-up shared by every binary of the workspace: `tracing` subscriber
//! and the global Prometheus recorder.

use std::sync::OnceLock;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use signal_proto::roap::RoapKind;
use tracing_subscriber::EnvFilter;

use crate::router::Route;

/// Relay gRPC calls refused for missing or invalid credentials (label `reason`).
pub const GRPC_AUTH_REFUSED: &str = "signal_grpc_auth_refused_total";

/// Buckets (seconds) of every latency histogram.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Installs the `tracing` subscriber (filter from `RUST_LOG`, default `info`). Idempotent: a
/// second call is a no-op.
/// `RUST_LOG` (default `info`), plus `redis::cluster_handling=error` unless it names a `redis`
/// target itself: the crate's cluster client logs a warning per reconnect attempt, while the
/// directory and the registry already log one line per outage and one per recovery.
fn log_filter(rust_log: Option<String>) -> String {
    let spec = rust_log
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "info".into());
    if spec.split(',').any(|d| d.trim_start().starts_with("redis")) {
        spec
    } else {
        format!("{spec},redis::cluster_handling=error")
    }
}

pub fn init_tracing(json: bool) {
    let filter = EnvFilter::try_new(log_filter(std::env::var("RUST_LOG").ok()))
        .unwrap_or_else(|_| EnvFilter::new(log_filter(None)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The relay's per-frame metrics, `signal_messages_relayed_total{type,route}` and
/// `signal_relay_seconds{route}`, resolved once: a lookup by name and labels per relayed frame
/// was 5 % of a node's CPU under relaybench. Taken at the first relayed frame, from the
/// recorder installed by then (the binaries install it at start-up).
pub struct RelayMetrics {
    relayed: [[Counter; 2]; 6],
    seconds: [Histogram; 2],
}

static RELAY: OnceLock<RelayMetrics> = OnceLock::new();

fn route_index(route: Route) -> usize {
    match route {
        Route::Local => 0,
        Route::Remote => 1,
    }
}

impl RelayMetrics {
    pub fn get() -> &'static RelayMetrics {
        RELAY.get_or_init(|| {
            let routes = [Route::Local, Route::Remote];
            RelayMetrics {
                relayed: RoapKind::ALL.map(|kind| {
                    routes.map(|route| {
                        metrics::counter!("signal_messages_relayed_total", "type" => kind.as_str(), "route" => route.as_str())
                    })
                }),
                seconds: routes.map(|route| {
                    metrics::histogram!("signal_relay_seconds", "route" => route.as_str())
                }),
            }
        })
    }

    /// One frame of type `kind` relayed by `route`, `took` after it was read.
    pub fn relayed(&self, kind: RoapKind, route: Route, took: std::time::Duration) {
        let r = route_index(route);
        self.relayed[kind as usize][r].increment(1);
        self.seconds[r].record(took.as_secs_f64());
    }
}

/// `signal_frames_written_total{by}`: session frames written to client sockets by the
/// producer that queued them while the connection's writer was idle (`producer`: a relay, a
/// room fan-out, the stream from another node) or by the writer (`writer`: a burst, a resume,
/// a socket that was full). Resolved once, as [`RelayMetrics`].
pub struct WriteMetrics {
    pub by_producer: Counter,
    pub by_writer: Counter,
}

static WRITES: OnceLock<WriteMetrics> = OnceLock::new();

impl WriteMetrics {
    pub fn get() -> &'static WriteMetrics {
        WRITES.get_or_init(|| WriteMetrics {
            by_producer: metrics::counter!("signal_frames_written_total", "by" => "producer"),
            by_writer: metrics::counter!("signal_frames_written_total", "by" => "writer"),
        })
    }
}

/// How often buffered histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The handle of the global Prometheus recorder, installing it on first use. Idempotent.
/// Render `/metrics` with `handle.render()`.
pub fn metrics_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = match builder.set_buckets(LATENCY_BUCKETS) {
                Ok(b) => b,
                Err(_) => PrometheusBuilder::new(),
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (e.g. by an embedding application);
            // then this handle renders an empty registry, which is still valid output.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a global metrics recorder was already installed");
            }
            // Histogram samples are buffered until drained; without a periodic upkeep a node
            // that nobody scrapes would grow its memory with every message.
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
            }
            handle
        })
        .clone()
}
