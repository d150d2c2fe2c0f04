//! The node's HTTP surface: `/ws` (authentication and upgrade), `/healthz`, `/readyz`,
//! `/metrics`.

use crate::redis_link::RedisMode;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;

use crate::connection;
use crate::error::ApiError;
use crate::node::Node;
use crate::session::takeover::Resume;

#[derive(Clone)]
struct AppState {
    node: Node,
    metrics: PrometheusHandle,
}

/// The axum router of one node.
pub fn router(node: Node, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/ws", get(ws))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(AppState { node, metrics })
}

#[derive(Debug, Deserialize)]
struct WsQuery {
    token: Option<String>,
    user: Option<String>,
    /// A session token from a Welcome: continue that session (contract section 5).
    resume: Option<String>,
    /// The last frame number the client received (default 0).
    last: Option<String>,
}

/// Longest `?resume=` token accepted (ours are 32 hex digits).
const MAX_RESUME_TOKEN: usize = 128;

fn parse_resume(q: &WsQuery) -> Result<Option<Resume>, ApiError> {
    let Some(token) = q.resume.as_deref().filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    if token.len() > MAX_RESUME_TOKEN {
        return Err(ApiError::BadRequest("resume token too long".into()));
    }
    let last = match q.last.as_deref() {
        None | Some("") => 0,
        Some(l) => l
            .parse::<u64>()
            .map_err(|_| ApiError::BadRequest(format!("last must be a frame number, got {l:?}")))?,
    };
    Ok(Some(Resume {
        token: token.to_owned(),
        last,
    }))
}

async fn ws(
    State(st): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    // Before the ticket is looked at: a page from a foreign origin does not spend it.
    if let Err(e) = crate::origin::check_upgrade(
        &st.node.config().allowed_origins,
        &headers,
        st.node.id().as_str(),
    ) {
        return e.into_response();
    }
    let query: Result<Query<WsQuery>, QueryRejection> = Query::try_from_uri(&uri);
    let Ok(Query(q)) = query else {
        return ApiError::BadRequest("malformed query string".into()).into_response();
    };
    let resume = match parse_resume(&q) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let auth = match st.node.authenticate(q.token.as_deref(), q.user.as_deref()) {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(node = %st.node.id(), error = %e, "upgrade refused");
            metrics::counter!("signal_upgrades_refused_total", "status" => e.status().as_u16().to_string()).increment(1);
            return e.into_response();
        }
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rej) => return rej.into_response(),
    };
    let pending = match st.node.open(auth, resume).await {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(node = %st.node.id(), error = %e, "upgrade refused");
            metrics::counter!("signal_upgrades_refused_total", "status" => e.status().as_u16().to_string()).increment(1);
            return e.into_response();
        }
    };
    let cap = st.node.config().hard_frame_cap();
    let tasks = st.node.tasks().clone();
    // tungstenite's default buffers are 128 KiB each per connection; signaling frames are a
    // few KiB, and the buffers grow on demand up to the frame cap.
    upgrade
        .read_buffer_size(WS_BUFFER_BYTES)
        .write_buffer_size(WS_WRITE_BATCH_BYTES)
        .max_message_size(cap)
        .max_frame_size(cap)
        .on_upgrade(move |socket| tasks.track_future(connection::serve(socket, pending)))
}

/// Read buffer per WebSocket connection: allocated at the upgrade and kept while the socket
/// idles, so it is most of an idle connection's memory. tungstenite asks for at most this much
/// per read and grows the buffer to the size of a larger frame; the socket itself is read up to
/// 8 KiB at a time by `readahead`, so a small buffer no longer costs syscalls.
const WS_BUFFER_BYTES: usize = 1024;

/// Bytes tungstenite gathers before it writes to the socket: the writer feeds a burst of queued
/// frames and flushes once, so an Offer and its Candidates leave in one syscall. The write
/// buffer grows only when a burst is written (an idle connection keeps the Welcome's size).
const WS_WRITE_BATCH_BYTES: usize = 8 * 1024;

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(st): State<AppState>) -> Response {
    let node = &st.node;
    let dir = node.directory().status();
    let central = node.central_status();
    let ready = node.is_ready();
    let body = serde_json::json!({
        "ready": ready,
        "node": node.id().as_str(),
        "instance": node.instance(),
        "draining": node.is_draining(),
        "connections": node.connections(),
        "sessions": node.hub().len(),
        "resumeWindowMs": node.config().resume_window.as_millis() as u64,
        "directory": {
            "backend": dir.backend,
            "mode": dir.mode.map(RedisMode::as_str),
            "healthy": dir.healthy,
            "lastError": dir.last_error,
        },
        "presence": {
            "healthy": !node.presence().is_degraded(),
        },
        "central": {
            "configured": node.config().central.is_some(),
            "registered": central.registered,
            "lastError": central.last_error,
            "livePeers": node.peers().live_nodes(),
        },
        // A receiver that is down shows here (events waiting); it never flips readiness.
        "webhooks": {
            "enabled": node.webhooks().is_enabled(),
            "pending": node.webhooks().pending(),
        },
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn render_metrics(State(st): State<AppState>) -> Response {
    let dir = st.node.directory().status();
    let up = if dir.healthy { 1.0 } else { 0.0 };
    metrics::gauge!("signal_directory_up").set(up);
    if let Some(mode) = dir.mode {
        metrics::gauge!("redis_up", "mode" => mode.as_str()).set(up);
    }
    let presence_up = !st.node.presence().is_degraded();
    metrics::gauge!("signal_presence_store_up").set(if presence_up { 1.0 } else { 0.0 });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}
