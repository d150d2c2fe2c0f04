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
