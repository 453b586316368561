//! `/api/models`: the models pi offers (asked of pi itself by the session service, kept while
//! what they follow from holds) and `POST /api/models/refresh`. Always 200: a degraded answer
//! carries both `data` and an `error`, as in the pi-apps relay.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::error::ApiError;
use crate::{AppState, envelope};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/models", get(models))
        .route("/api/models/refresh", post(refresh))
}

async fn models(State(state): State<AppState>) -> Result<Response, ApiError> {
    let a = state.sessions.models().await?;
    let mut data = json!({"models": a.models, "source": a.source.as_str()});
    if let Some(e) = a.environment_id {
        data["environmentId"] = json!(e);
    }
    if let Some(m) = a.message {
        data["message"] = json!(m);
    }
    if a.degraded {
        data["degraded"] = json!(true);
    }
    Ok(Json(json!({"data": data, "error": a.error})).into_response())
}

async fn refresh(State(state): State<AppState>) -> Response {
    state.sessions.refresh_models().await;
    envelope::ok(json!({"ok": true}))
}
