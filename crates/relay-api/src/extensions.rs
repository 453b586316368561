//! `/api/extension-configs` (pi packages configured for every session, a mode's sessions or one
//! session, with their configurations) and `/api/packages` (the catalogue of pi packages in the
//! npm registry), with the pi-apps relay's shapes, errors and `meta`.

use std::collections::HashMap;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use relay_session::extensions::{ExtensionConfig, NewExtensionConfig};
use relay_session::{ExtensionScope, SessionError};
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::input::{json_object, uuid_id};
use crate::{AppState, envelope};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/extension-configs", get(list).post(create))
        .route("/api/extension-configs/resolved/{id}", get(resolved))
        .route("/api/extension-configs/validation/cancel", post(cancel))
        .route("/api/extension-configs/{id}", put(update).delete(remove))
        .route("/api/packages", get(packages))
}

const SCOPES: &str = "global, chat, code, session";

fn view(c: ExtensionConfig) -> Value {
    json!({
        "id": c.row.id,
        "scope": c.row.scope.as_str(),
        "sessionId": c.row.session_id,
        "package": c.row.package,
        "configJson": c.row.config_json,
        "createdAt": c.row.created_at,
        "manifest": c.manifest,
    })
}

/// `{data, error: null, meta}`.
fn with_meta(data: Value, meta: Value) -> Response {
    Json(json!({"data": data, "error": null, "meta": meta})).into_response()
}

/// The protocol's answer to a configuration that leaves required fields empty.
fn invalid_config(fields: Vec<String>) -> Response {
    let errors: Vec<Value> = fields
        .into_iter()
        .map(|f| json!({"field": f, "message": "Required"}))
        .collect();
    let body = json!({
        "data": null,
        "error": "Invalid config values",
        "meta": {"fieldErrors": errors},
    });
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

fn answer(r: Result<Response, SessionError>) -> Response {
    match r {
        Ok(res) => res,
        Err(SessionError::InvalidConfigValues(fields)) => invalid_config(fields),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// A `config` given as a JSON object (or absent or null).
fn config_of(body: &Map<String, Value>) -> Result<Option<Map<String, Value>>, ApiError> {
    match body.get("config") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o.clone())),
        Some(_) => Err(ApiError::bad_request("config must be an object")),
    }
}

async fn list(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let scope: ExtensionScope = q.get("scope").and_then(|s| s.parse().ok()).ok_or_else(|| {
        ApiError::bad_request(format!(
            "scope query param required, must be one of: {SCOPES}"
        ))
    })?;
    let session = match scope {
        ExtensionScope::Session => Some(
            q.get("sessionId")
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    ApiError::bad_request("sessionId query param required for session scope")
                })?
                .as_str(),
        ),
        _ => None,
    };
    let configs = state.sessions.extension_configs(scope, session).await?;
    Ok(envelope::ok(
        configs.into_iter().map(view).collect::<Vec<_>>(),
    ))
}

async fn create(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let body = json_object(&body)?;
    let scope: ExtensionScope = body
        .get("scope")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::bad_request(format!("scope must be one of: {SCOPES}")))?;
    let session_id = match scope {
        ExtensionScope::Session => {
            let id = body
                .get("sessionId")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| ApiError::bad_request("sessionId is required for session scope"))?;
            uuid_id(id, ApiError::session_not_found)?;
            Some(id.to_owned())
        }
        _ => None,
    };
    let package = body
        .get("package")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::bad_request("package is required"))?;
    let new = NewExtensionConfig {
        scope,
        session_id,
        package: package.to_owned(),
        config: config_of(&body)?,
    };
    Ok(answer(state.sessions.add_extension_config(new).await.map(
        |(config, change)| {
            with_meta(
                view(config),
                json!({
                    "staleSessionCount": change.stale_sessions,
                    // Packages are not installed to try them: pi installs them when a
                    // session's sandbox starts, and reports a failure in its logs.
                    "validationSkipped": true,
                    "manifestMissing": change.manifest_missing,
                }),
            )
        },
    )))
}

async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_object(&body)?;
    let config = config_of(&body)?;
    Ok(answer(
        state
            .sessions
            .set_extension_config(&id, config)
            .await
            .map(|(config, change)| {
                with_meta(
                    view(config),
                    json!({"staleSessionCount": change.stale_sessions}),
                )
            }),
    ))
}

async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let stale = state.sessions.remove_extension_config(&id).await?;
    Ok(if stale > 0 {
        with_meta(json!({"ok": true}), json!({"staleSessionCount": stale}))
    } else {
        envelope::ok(json!({"ok": true}))
    })
}

async fn resolved(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    uuid_id(&id, ApiError::session_not_found)?;
    let packages = state.sessions.resolved_extensions(&id).await?;
    Ok(envelope::ok(json!({"packages": packages})))
}

/// Nothing is ever being validated (packages are not installed to try them).
async fn cancel() -> Response {
    envelope::ok(json!({"canceled": false}))
}

async fn packages(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let tag = q
        .get("tag")
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .unwrap_or("pi-package");
    let query = q.get("query").map_or("", |s| s.trim());
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<u32>().ok())
        .unwrap_or(20);
    let found = state.sessions.search_packages(tag, query, limit).await?;
    Ok(envelope::ok(json!({
        "packages": found.packages,
        "fetchedAt": found.fetched_at,
        "stale": found.stale,
    })))
}
