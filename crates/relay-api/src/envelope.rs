//! The `{ "data": …, "error": … }` envelope of every `/api` response.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    data: Option<T>,
    error: Option<&'a str>,
}

/// 200 `{data, error: null}`.
pub(crate) fn ok<T: Serialize>(data: T) -> Response {
    with_status(StatusCode::OK, data)
}

/// `{data, error: null}` with another success status (201 for created secrets).
pub(crate) fn with_status<T: Serialize>(status: StatusCode, data: T) -> Response {
    let body = Envelope {
        data: Some(data),
        error: None,
    };
    (status, Json(body)).into_response()
}

/// `{data: null, error}`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    let body = Envelope::<()> {
        data: None,
        error: Some(message),
    };
    (status, Json(body)).into_response()
}
