//! Central's errors and the one place where they become HTTP responses and gRPC statuses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::registry::RegistryError;

/// Why a login (`GET /v1/endpoint`) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// Missing or invalid user id.
    #[error("{0}")]
    BadUser(String),
    /// Missing, bad or expired JWT (JWT mode), or a `user` that is not the token's subject.
    #[error("{0}")]
    Unauthorized(String),
    #[error("no live signal node: try again shortly")]
    NoNode,
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl LoginError {
    pub fn status(&self) -> StatusCode {
        match self {
            LoginError::BadUser(_) => StatusCode::BAD_REQUEST,
            LoginError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            LoginError::NoNode | LoginError::Registry(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            LoginError::BadUser(_) => "bad_request",
            LoginError::Unauthorized(_) => "unauthorized",
            LoginError::NoNode => "no_node",
            LoginError::Registry(_) => "registry_unavailable",
        }
    }
}

/// An HTTP API error: status plus `{"error": ".."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<LoginError> for ApiError {
    fn from(e: LoginError) -> Self {
        ApiError::new(e.status(), e.to_string())
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl IntoResponse for LoginError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

/// Why a dev-only request (`central --dev`) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DevError {
    #[error("no dev node {0:?}")]
    UnknownNode(String),
}

impl From<DevError> for ApiError {
    fn from(e: DevError) -> Self {
        match e {
            DevError::UnknownNode(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
        }
    }
}

/// Why a registry RPC was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl From<RpcError> for tonic::Status {
    fn from(e: RpcError) -> Self {
        match &e {
            RpcError::Invalid(_) => tonic::Status::invalid_argument(e.to_string()),
            RpcError::Registry(RegistryError::Unavailable(_)) => {
                tonic::Status::unavailable(e.to_string())
            }
            RpcError::Registry(RegistryError::Corrupt(_)) => tonic::Status::internal(e.to_string()),
        }
    }
}

/// Why `central::run` (or the dev cluster) stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CentralError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("http server: {0}")]
    Http(std::io::Error),
    #[error("grpc server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("signal node {node}: {message}")]
    Node { node: String, message: String },
    #[error("task failed: {0}")]
    Task(String),
}

/// Why a server API request (contract section 11) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerApiError {
    /// `--api-key` not given: the routes answer 404.
    #[error("the server API is not enabled on this central (--api-key)")]
    Disabled,
    #[error("{0}")]
    Unauthorized(#[from] crate::api::keys::KeyError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    NotFound(String),
    /// The recipient's mailbox is at its quota (MAILBOXFULL): retry once it has read some.
    #[error("{0}")]
    MailboxFull(String),
    /// No live node, a node or the directory unreachable (UNAVAILABLE): retry later.
    #[error("{0}")]
    Unavailable(String),
}

impl From<ServerApiError> for ApiError {
    fn from(e: ServerApiError) -> Self {
        let status = match &e {
            ServerApiError::Disabled | ServerApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ServerApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ServerApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServerApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServerApiError::MailboxFull(_) => StatusCode::TOO_MANY_REQUESTS,
            ServerApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ServerApiError {
    fn into_response(self) -> Response {
        let unauthorized = matches!(self, ServerApiError::Unauthorized(_));
        let mut r = ApiError::from(self).into_response();
        if unauthorized {
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}
