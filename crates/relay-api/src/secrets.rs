//! `/api/secrets…`: create, list, update and delete secrets. Values go in and never come out:
//! responses carry `SecretInfo` without the value. Request fields are type-checked here with
//! the protocol's messages; their content is checked by the secrets service. Changes go through
//! the session service, which also brings the secrets of live sessions up to date.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, put};
use bytes::Bytes;
use relay_session::secrets::{NewSecret, SecretChange, SecretInfo, SecretKind};
use secrecy::SecretString;
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::{AppState, envelope, input};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/secrets", get(list).post(create))
        .route("/api/secrets/{id}", put(update).delete(delete))
}

/// `SecretInfo`; `domains` is omitted when there are none.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SecretView {
    id: String,
    name: String,
    env_var: String,
    kind: String,
    enabled: bool,
    created_at: String,
    updated_at: String,
    key_version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    domains: Option<Vec<String>>,
}

impl From<SecretInfo> for SecretView {
    fn from(s: SecretInfo) -> SecretView {
        SecretView {
            id: s.id,
            name: s.name,
            env_var: s.env_var,
            kind: s.kind,
            enabled: s.enabled,
            created_at: s.created_at,
            updated_at: s.updated_at,
            key_version: s.key_version,
            domains: s.domains,
        }
    }
}

fn not_found() -> ApiError {
    ApiError::Client(StatusCode::NOT_FOUND, "Secret not found".into())
}

/// A field that must be a non-blank string when present (`required`: also when absent).
fn text(
    v: &serde_json::Map<String, Value>,
    key: &str,
    required: bool,
) -> Result<Option<String>, ApiError> {
    match v.get(key) {
        None | Some(Value::Null) if !required => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
        _ => Err(ApiError::bad_request(format!("{key} is required"))),
    }
}

fn kind(v: &serde_json::Map<String, Value>) -> Result<Option<SecretKind>, ApiError> {
    match v.get("kind") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => SecretKind::parse(s).map(Some).ok_or_else(bad_kind),
        Some(_) => Err(bad_kind()),
    }
}

fn bad_kind() -> ApiError {
    ApiError::bad_request("kind must be one of: ai_provider, env_var, sandbox_provider")
}

fn enabled(v: &serde_json::Map<String, Value>) -> Result<Option<bool>, ApiError> {
    match v.get("enabled") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::bad_request("enabled must be a boolean")),
    }
}

fn domains(v: &serde_json::Map<String, Value>) -> Result<Option<Vec<String>>, ApiError> {
    let bad = || ApiError::bad_request("domains must be an array of strings");
    match v.get("domains") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|d| d.as_str().map(str::to_owned).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(bad()),
    }
}

async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let all = state.sessions.secrets().list().await?;
    Ok(envelope::ok(
        all.into_iter().map(SecretView::from).collect::<Vec<_>>(),
    ))
}

async fn create(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let v = input::json_object(&body)?;
    let name = text(&v, "name", true)?.unwrap_or_default();
    let env_var = text(&v, "envVar", true)?.unwrap_or_default();
    let value = text(&v, "value", true)?.unwrap_or_default();
    let new = NewSecret {
        name,
        env_var,
        kind: kind(&v)?.unwrap_or(SecretKind::EnvVar),
        value: SecretString::from(value),
        enabled: enabled(&v)?.unwrap_or(true),
        domains: domains(&v)?,
    };
    let info = state.sessions.create_secret(new).await?;
    Ok(envelope::with_status(
        StatusCode::CREATED,
        SecretView::from(info),
    ))
}

async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let v = input::json_object(&body)?;
    let change = SecretChange {
        name: text(&v, "name", false)?,
        // Present but blank is the service's "envVar must not be empty".
        env_var: match v.get("envVar") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(ApiError::bad_request("envVar is required")),
        },
        kind: kind(&v)?,
        value: text(&v, "value", false)?.map(SecretString::from),
        enabled: enabled(&v)?,
        domains: domains(&v)?,
    };
    input::uuid_id(&id, not_found)?;
    state.sessions.update_secret(&id, change).await?;
    Ok(envelope::ok(json!({"ok": true})))
}

async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    input::uuid_id(&id, not_found)?;
    state.sessions.delete_secret(&id).await?;
    Ok(envelope::ok(json!({"ok": true})))
}
