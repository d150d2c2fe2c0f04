//! Central's HTTP API: login (`/v1/endpoint`), `/v1/nodes`, health, metrics and the demo.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::json;
use signal_node::origin::AllowedOrigins;

use crate::dev::DevNodes;
use crate::error::{ApiError, LoginError};
use crate::login::Login;
use crate::registry::{Registry, StoreHealth};

/// What the HTTP handlers share: cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub login: Login,
    /// Browser origins allowed by the API's CORS answers and the login.
    pub allowed_origins: AllowedOrigins,
    pub registry: Registry,
    /// False once shutdown began: `/readyz` answers 503.
    pub ready: Arc<AtomicBool>,
    pub metrics: Option<PrometheusHandle>,
    /// The dev cluster's nodes (`central --dev` only): enables the dev-only routes.
    pub dev_nodes: Option<DevNodes>,
    /// The server API for the application backend (`--api-key`); `None`: its routes 404.
    pub api: Option<crate::api::ServerApi>,
    /// `--api-max-body-bytes`.
    pub api_max_body_bytes: usize,
}

/// The whole HTTP router. The dev-only routes exist only when `state.dev_nodes` is set (the
/// dev cluster's central); anywhere else they fall through to the 404 of the fallback.
pub fn router(state: AppState) -> Router {
    let mut api = Router::new()
        .route("/v1/endpoint", get(endpoint))
        .route("/v1/nodes", get(nodes));
    if state.dev_nodes.is_some() {
        api = api.route("/v1/dev/nodes/{id}/drain", post(dev_drain));
    }
    let api = api.layer(crate::cors::layer(&state.allowed_origins));
    // The server API is for the application's backend, not browsers: no CORS layer.
    let server_api = crate::api::routes(state.api.clone(), state.api_max_body_bytes);
    Router::new()
        .merge(api)
        .merge(server_api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(crate::assets::serve)
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct EndpointQuery {
    user: Option<String>,
}

async fn endpoint(
    State(state): State<AppState>,
    query: Result<Query<EndpointQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    crate::cors::check_login(&state.allowed_origins, &headers)?;
    let query = query.map_err(|e| {
        ApiError::from(LoginError::BadUser(format!(
            "bad query string: {}",
            e.body_text()
        )))
    })?;
    let authorization = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::from(LoginError::Unauthorized(
                "Authorization header is not ASCII".into(),
            ))
        })?),
    };
    match state
        .login
        .endpoint(query.0.user.as_deref(), authorization)
        .await
    {
        Ok(e) => {
            tracing::debug!(node = %e.node, "login assigned");
            // A ticket is a credential: never cached.
            Ok(([(header::CACHE_CONTROL, "no-store")], Json(e)).into_response())
        }
        Err(e) => {
            tracing::info!(status = e.status().as_u16(), error = %e, "login refused");
            Err(e.into())
        }
    }
}

/// One node as `/v1/nodes` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub id: String,
    pub url: String,
    pub weight: u32,
    pub connections: u64,
    /// `active` or `draining`.
    pub state: &'static str,
    pub seconds_since_heartbeat: f64,
    /// Pending assignments: logins handed to it that its heartbeats have not reported as
    /// accepted connections yet (and whose ticket lifetime has not passed).
    pub assigned: u64,
    /// False when it does not answer central's probes (then it is not handed out).
    pub reachable: bool,
    pub grpc_url: String,
    pub instance: String,
}

async fn nodes(State(state): State<AppState>) -> Result<Response, ApiError> {
    let nodes: Vec<NodeView> = state
        .registry
        .list()
        .await?
        .into_iter()
        .map(|r| NodeView {
            state: if r.draining { "draining" } else { "active" },
            reachable: !r.down,
            seconds_since_heartbeat: (r.since_heartbeat.as_millis() as f64 / 1000.0),
            connections: r.connections,
            assigned: r.pending,
            weight: r.info.weight,
            id: r.info.id.into_string(),
            url: r.info.ws_url,
            grpc_url: r.info.grpc_url,
            instance: r.info.instance,
        })
        .collect();
    Ok(Json(json!({ "nodes": nodes })).into_response())
}

/// Dev cluster only: starts the graceful drain of node `id` (its clients get close 1012 and go
/// back to central). 202 `{"node":..,"state":"draining"}`; 404 for an unknown node.
async fn dev_drain(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let Some(dev) = &state.dev_nodes else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not found"));
    };
    dev.drain(&id).map_err(|e| {
        tracing::info!(node = %id, error = %e, "dev drain refused");
        ApiError::from(e)
    })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "node": id, "state": "draining" })),
    )
        .into_response())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    let registry = match state.registry.health() {
        StoreHealth::Memory => json!({"store": "memory", "ok": true}),
        StoreHealth::RedisUp => json!({"store": "redis", "ok": true}),
        StoreHealth::RedisDown(e) => json!({"store": "redis", "ok": false, "error": e}),
    };
    let mut registry = registry;
    if let Some(mode) = state.registry.redis_mode() {
        registry["mode"] = json!(mode.as_str());
    }
    // Anyone may log in as anyone (dev mode or --open-login): operators should see it.
    let open_login = state.login.is_open();
    // A Redis outage alone does not make central unready (contract: a shared dependency's
    // outage degrades the cluster instead of taking every replica out at once); it shows here.
    if state.ready.load(Ordering::SeqCst) {
        (
            StatusCode::OK,
            Json(json!({"ready": true, "openLogin": open_login, "registry": registry})),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"ready": false, "reason": "shutting down", "openLogin": open_login, "registry": registry}),
            ),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let body = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
