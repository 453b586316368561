//! `/api/settings…`: read and write relay settings (protected keys are neither shown nor
//! writable), and which sandbox providers are available.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::{AppState, envelope};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/settings", get(all).put(put))
        .route("/api/settings/sandbox-providers", get(providers))
}

async fn all(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(envelope::ok(state.settings.all().await?))
}

async fn put(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let v: Value = serde_json::from_slice(&body).map_err(|_| ApiError::invalid_json())?;
    let Value::Object(obj) = v else {
        return Err(ApiError::invalid_json());
    };
    let key = match obj.get("key") {
        Some(Value::String(k)) if !k.trim().is_empty() => k.clone(),
        _ => return Err(ApiError::bad_request("Key is required")),
    };
    let Some(value) = obj.get("value") else {
        return Err(ApiError::bad_request("value is required"));
    };
    state.settings.put(&key, value).await?;
    Ok(envelope::ok(json!({"ok": true})))
}

/// The relay's provider is available when its runtime answers; this relay runs no Gondolin VMs.
async fn providers(State(state): State<AppState>) -> Response {
    let sandbox = state.sessions.sandbox();
    let available = sandbox.ping().await.is_ok();
    let mut providers = serde_json::Map::new();
    providers.insert("gondolin".into(), json!({"available": false}));
    providers.insert(sandbox.kind().into(), json!({"available": available}));
    envelope::ok(providers)
}
