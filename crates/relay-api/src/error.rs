//! [`ApiError`]: the only place errors become HTTP responses. Client errors carry the protocol's
//! exact strings; server errors say "Internal server error" and the cause goes to the log.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use relay_session::SessionError;

use crate::envelope;

/// An error answered to a client.
#[derive(Debug)]
pub enum ApiError {
    /// 4xx with a message for the client.
    Client(StatusCode, String),
    /// 5xx whose message is safe to show.
    Server(StatusCode, String),
    /// 500 whose cause is logged, not shown.
    Internal(String),
}

impl ApiError {
    /// 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::Client(StatusCode::BAD_REQUEST, message.into())
    }

    /// 400 `Invalid JSON body`.
    pub fn invalid_json() -> ApiError {
        ApiError::bad_request("Invalid JSON body")
    }

    /// 404 `Session not found`.
    pub fn session_not_found() -> ApiError {
        ApiError::Client(StatusCode::NOT_FOUND, "Session not found".into())
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> ApiError {
        use SessionError::*;
        let msg = e.to_string();
        match e {
            NotFound
            | EnvironmentNotFound
            | SecretNotFound
            | ExtensionConfigNotFound
            | GitHubAppNotConfigured => ApiError::Client(StatusCode::NOT_FOUND, msg),
            NoDefaultEnvironment | Invalid(_) | InvalidConfigValues(_) | GitHub(_) => {
                ApiError::Client(StatusCode::BAD_REQUEST, msg)
            }
            Conflict(_) => ApiError::Client(StatusCode::CONFLICT, msg),
            GitHubNotConfigured => ApiError::Client(StatusCode::UNAUTHORIZED, msg),
            Archived => ApiError::Client(StatusCode::GONE, msg),
            InErrorState
            | CannotRestartArchived
            | NotRestartable
            | IllegalTransition(_)
            | Changed => ApiError::Client(StatusCode::CONFLICT, msg),
            Unsupported(_) => ApiError::Client(StatusCode::NOT_IMPLEMENTED, msg),
            ProvisioningFailed | ExecTimedOut => {
                ApiError::Server(StatusCode::INTERNAL_SERVER_ERROR, msg)
            }
            ActivateTimeout => ApiError::Server(StatusCode::GATEWAY_TIMEOUT, msg),
            SandboxUnavailable(_) | CatalogUnavailable => {
                ApiError::Server(StatusCode::SERVICE_UNAVAILABLE, msg)
            }
            // A runtime that cannot be reached is worth telling the client; the rest is logged.
            Sandbox(relay_session::SandboxError::Unavailable { .. }) => {
                ApiError::Server(StatusCode::SERVICE_UNAVAILABLE, msg)
            }
            Store(_) | Sandbox(_) | Io(_) | Key(_) | KeyFile { .. } | Crypto(_) => {
                ApiError::Internal(msg)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Client(status, msg) | ApiError::Server(status, msg) => {
                envelope::error(status, &msg)
            }
            ApiError::Internal(cause) => {
                tracing::error!(error = %cause, "request failed");
                envelope::error(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
            }
        }
    }
}
