//! The node's error types, and the one place where they become HTTP responses and gRPC
//! statuses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use signal_proto::IdError;

use crate::directory::DirectoryError;
use crate::tickets::UseError;

/// Why `run` failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("directory: {0}")]
    Directory(#[from] DirectoryError),
    #[error("mailbox: {0}")]
    Mailbox(#[from] crate::mailbox::MailboxError),
    #[error("presence: {0}")]
    Presence(#[from] crate::presence::store::StoreError),
    #[error("rooms: {0}")]
    Rooms(#[from] crate::rooms::RoomStoreError),
    #[error("{server} server failed: {reason}")]
    Serve {
        server: &'static str,
        reason: String,
    },
}

/// Why an HTTP request (a WebSocket upgrade) is refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing, bad, expired or other-node ticket; `?user=` without dev-auth.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    BadRequest(String),
    /// A browser page from an origin not on `--allowed-origins`.
    #[error("{0}")]
    Forbidden(String),
    #[error("node is draining: ask central for another endpoint")]
    Draining,
    #[error("directory unavailable, retry later: {0}")]
    DirectoryUnavailable(String),
    /// A bounded resource (the used-ticket set) is full.
    #[error("{0}")]
    Busy(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Draining | ApiError::DirectoryUnavailable(_) | ApiError::Busy(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.to_string() });
        (self.status(), Json(body)).into_response()
    }
}

impl From<UseError> for ApiError {
    fn from(e: UseError) -> Self {
        match e {
            UseError::Replayed => ApiError::Unauthorized(e.to_string()),
            UseError::Full(_) => ApiError::Busy(e.to_string()),
        }
    }
}

/// Why a node-to-node relay call is refused.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("bad user id: {0}")]
    BadUser(#[from] IdError),
    #[error("missing location")]
    MissingLocation,
}

impl From<RelayError> for tonic::Status {
    fn from(e: RelayError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}
