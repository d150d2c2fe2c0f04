//! The server API for the application backend (contract section 11): owns the API keys, the
//! handle on the nodes' directory that central reads users from, and central's calls to the
//! nodes' `Relay` (`Submit`, `Disconnect`). Routes: `POST /v1/messages`, `GET /v1/presence`,
//! `GET /v1/users/{id}`, `DELETE /v1/users/{id}/session`, all behind `Authorization: Bearer
//! <api key>`; without `--api-key` they answer 404.
//!
//! Central never duplicates the mailbox: a message is handed to a live node's `Submit`, which
//! runs exactly that node's chat path (store in the recipient's mailbox with its quota and
//! dedupe, push live, `Accepted` or an error).

pub mod keys;
pub mod presence;

use std::time::Instant;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use rand::seq::SliceRandom;
use serde::Deserialize;
use serde_json::json;
use signal_node::peers::{ForwardError, Peers};
use signal_node::presence::store::PresenceStore;
use signal_node::Directory;
use signal_proto::relay::{Location, SubmitRequest, SubmitStatus};
use signal_proto::{ErrorType, MessageId, UserId};

pub use crate::error::ServerApiError;
use crate::registry::{NodeRecord, Registry};
use keys::ApiKeys;

/// Default `--api-max-body-bytes`.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Default `--api-max-presence-users`.
pub const DEFAULT_MAX_PRESENCE_USERS: usize = 100;
/// Nodes tried for one message (a retry is safe: the node dedupes by (from, to, id)).
const SUBMIT_ATTEMPTS: usize = 2;

/// `--api-*` flags.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub keys: ApiKeys,
    /// Largest request body (`--api-max-body-bytes`): 413 beyond.
    pub max_body_bytes: usize,
    /// Most users of one `GET /v1/presence` (`--api-max-presence-users`): 400 beyond.
    pub max_presence_users: usize,
    /// The nodes' Redis, for their directory and presence records (`--api-redis-url`, default
    /// `--redis-url`, in central's `--redis-mode`); `None` in `--dev`, where the dev cluster
    /// passes its in-memory stores.
    pub redis: Option<signal_node::redis_link::RedisConfig>,
}

/// The API's shared state: cheap to clone.
#[derive(Clone)]
pub struct ServerApi {
    keys: ApiKeys,
    max_presence_users: usize,
    directory: Directory,
    presence: PresenceStore,
    peers: Peers,
    registry: Registry,
}

impl ServerApi {
    pub fn new(
        config: &ApiConfig,
        (directory, presence): (Directory, PresenceStore),
        peers: Peers,
        registry: Registry,
    ) -> Self {
        ServerApi {
            keys: config.keys.clone(),
            max_presence_users: config.max_presence_users.max(1),
            directory,
            presence,
            peers,
            registry,
        }
    }

    async fn nodes(&self) -> Result<Vec<NodeRecord>, ServerApiError> {
        self.registry
            .list()
            .await
            .map_err(|e| ServerApiError::Unavailable(format!("node registry: {e}")))
    }
}

/// The API routes. `api = None` (no `--api-key`): every route answers 404 JSON.
pub fn routes<S: Clone + Send + Sync + 'static>(
    api: Option<ServerApi>,
    max_body_bytes: usize,
) -> Router<S> {
    Router::new()
        .route("/v1/messages", post(post_message))
        .route("/v1/presence", get(get_presence))
        .route("/v1/users/{id}", get(get_user))
        .route("/v1/users/{id}/session", delete(delete_session))
        .layer(axum::middleware::from_fn_with_state(api.clone(), guard))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(api)
}

/// 404 when disabled, 401 without a valid key; counts every request by route and status.
async fn guard(State(api): State<Option<ServerApi>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let response = match &api {
        None => ServerApiError::Disabled.into_response(),
        Some(api) => {
            let auth = req
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            match api.keys.check(auth) {
                Ok(()) => next.run(req).await,
                Err(e) => {
                    tracing::info!(%route, error = %e, "server API request refused");
                    ServerApiError::from(e).into_response()
                }
            }
        }
    };
    let status = response.status().as_u16().to_string();
    metrics::counter!(crate::telemetry::API_REQUESTS, "route" => format!("{method} {route}"), "status" => status)
        .increment(1);
    metrics::histogram!(crate::telemetry::API_SECONDS).record(start.elapsed().as_secs_f64());
    response
}

/// The enabled API (the guard let the request through only when there is one).
fn enabled(api: Option<ServerApi>) -> Result<ServerApi, ServerApiError> {
    api.ok_or(ServerApiError::Disabled)
}

fn user_id(what: &str, s: &str) -> Result<UserId, ServerApiError> {
    UserId::new(s).map_err(|e| ServerApiError::BadRequest(format!("bad {what} {s:?}: {e}")))
}

/// Where `user` has a session on a registered node instance, if anywhere.
pub(crate) async fn live_location(
    directory: &Directory,
    nodes: &[NodeRecord],
    user: &UserId,
) -> Result<Option<Location>, ServerApiError> {
    let loc = directory
        .lookup(user)
        .await
        .map_err(|e| ServerApiError::Unavailable(format!("{e}: retry later")))?;
    Ok(loc.filter(|l| is_live(nodes, l)))
}

fn is_live(nodes: &[NodeRecord], loc: &Location) -> bool {
    nodes
        .iter()
        .any(|n| n.info.id.as_str() == loc.node_id && n.info.instance == loc.instance)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PostMessage {
    from: String,
    to: String,
    id: String,
    body: String,
    #[serde(default)]
    content_type: Option<String>,
}

fn json_error(e: JsonRejection) -> ServerApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ServerApiError::TooLarge(format!("request body too large: {}", e.body_text()))
    } else {
        ServerApiError::BadRequest(e.body_text())
    }
}

/// `POST /v1/messages` -> 202 `{id, ts, stored}`.
async fn post_message(
    State(api): State<Option<ServerApi>>,
    body: Result<Json<PostMessage>, JsonRejection>,
) -> Result<Response, ServerApiError> {
    let api = enabled(api)?;
    let Json(m) = body.map_err(json_error)?;
    let from = user_id("from", &m.from)?;
    let to = user_id("to", &m.to)?;
    let id = MessageId::new(m.id.as_str())
        .map_err(|e| ServerApiError::BadRequest(format!("bad id {:?}: {e}", m.id)))?;
    let req = SubmitRequest {
        from: from.to_string(),
        to: to.to_string(),
        id: id.to_string(),
        body: m.body,
        content_type: m.content_type.unwrap_or_default(),
    };
    // Active nodes first (in random order), draining ones as a last resort.
    let mut nodes = api.nodes().await?;
    nodes.retain(|n| !n.down);
    nodes.shuffle(&mut rand::rng());
    nodes.sort_by_key(|n| n.draining);
    let mut last: Option<(String, ForwardError)> = None;
    for n in nodes.iter().take(SUBMIT_ATTEMPTS) {
        match api.peers.submit(&n.info.grpc_url, req.clone()).await {
            Ok(r) if r.status == SubmitStatus::Accepted as i32 => {
                tracing::debug!(%from, %to, %id, node = %n.info.id, stored = r.stored, "api message accepted");
                return Ok((
                    StatusCode::ACCEPTED,
                    Json(json!({"id": id.as_str(), "ts": r.ts, "stored": r.stored})),
                )
                    .into_response());
            }
            Ok(r) => {
                tracing::info!(%from, %to, %id, error = %r.error_type, "{}", r.description);
                let error = serde_json::from_value::<ErrorType>(json!(r.error_type)).ok();
                return Err(match error {
                    Some(ErrorType::MailboxFull) => ServerApiError::MailboxFull(r.description),
                    Some(ErrorType::TooLarge) => ServerApiError::TooLarge(r.description),
                    Some(ErrorType::BadMessage) => ServerApiError::BadRequest(r.description),
                    _ => ServerApiError::Unavailable(r.description),
                });
            }
            Err(e) => {
                tracing::info!(node = %n.info.id, error = %e, "api message: node call failed, trying another");
                last = Some((n.info.id.to_string(), e));
            }
        }
    }
    Err(ServerApiError::Unavailable(match last {
        Some((node, e)) => format!("node {node}: {e}; nothing stored, retry with the same id"),
        None => "no live signal node: retry later".into(),
    }))
}

/// `GET /v1/users/{id}` -> `{user, online, node}`.
async fn get_user(
    State(api): State<Option<ServerApi>>,
    Path(id): Path<String>,
) -> Result<Response, ServerApiError> {
    let api = enabled(api)?;
    let user = user_id("user id", &id)?;
    let nodes = api.nodes().await?;
    let loc = live_location(&api.directory, &nodes, &user).await?;
    Ok(Json(json!({
        "user": user.as_str(),
        "online": loc.is_some(),
        "node": loc.map(|l| l.node_id),
    }))
    .into_response())
}

/// `GET /v1/presence?user=a&user=b` -> `{"presence":[...]}` in the order asked (duplicates
/// answered once).
async fn get_presence(
    State(api): State<Option<ServerApi>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ServerApiError> {
    let api = enabled(api)?;
    let Query(pairs) = query.map_err(|e| ServerApiError::BadRequest(e.body_text()))?;
    let mut users: Vec<UserId> = Vec::new();
    for (k, v) in pairs {
        if k != "user" {
            return Err(ServerApiError::BadRequest(format!(
                "unknown query parameter {k:?} (use ?user=a&user=b)"
            )));
        }
        let u = user_id("user", &v)?;
        if !users.contains(&u) {
            users.push(u);
        }
        if users.len() > api.max_presence_users {
            return Err(ServerApiError::BadRequest(format!(
                "at most {} users per request (--api-max-presence-users)",
                api.max_presence_users
            )));
        }
    }
    if users.is_empty() {
        return Err(ServerApiError::BadRequest(
            "at least one ?user= is required".into(),
        ));
    }
    let nodes = api.nodes().await?;
    let views = presence::presence_of(&api.presence, &nodes, &users).await?;
    Ok(Json(json!({ "presence": views })).into_response())
}

/// `DELETE /v1/users/{id}/session` -> 204 (the user's connection closed with 4403, its session
/// ended), 404 when the user has no session.
async fn delete_session(
    State(api): State<Option<ServerApi>>,
    Path(id): Path<String>,
) -> Result<Response, ServerApiError> {
    let api = enabled(api)?;
    let user = user_id("user id", &id)?;
    let nodes = api.nodes().await?;
    let mut tried: Option<Location> = None;
    // A second look catches a session that moved (resume on another node) between the
    // lookup and the call.
    for _ in 0..2 {
        let Some(loc) = live_location(&api.directory, &nodes, &user).await? else {
            break;
        };
        if tried.as_ref() == Some(&loc) {
            break;
        }
        match api.peers.disconnect(user.as_str(), &loc).await {
            Ok(true) => {
                tracing::info!(%user, node = %loc.node_id, "api: session ended (4403)");
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
            Ok(false) => tried = Some(loc),
            Err(e) => {
                return Err(ServerApiError::Unavailable(format!(
                    "node {} holding {user}: {e}; retry later",
                    loc.node_id
                )))
            }
        }
    }
    Err(ServerApiError::NotFound(format!("{user} has no session")))
}
