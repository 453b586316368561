//! `/api/environments…`: create, list, get, update and delete environments, and list the
//! sandbox images present on the host. Request fields are type-checked here; configs are
//! validated by the environment service (including that the image exists).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use relay_session::environments::{Environment, EnvironmentChange, NewEnvironment};
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::{AppState, envelope, input};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/environments", get(list).post(create))
        .route("/api/environments/images", get(images))
        .route("/api/environments/probe", post(probe))
        .route("/api/environments/gondolin", get(gondolin))
        .route("/api/environments/gondolin/install", post(gondolin_install))
        .route(
            "/api/environments/{id}",
            get(one).put(update).delete(delete),
        )
}

fn view(e: Environment) -> Value {
    json!({
        "id": e.id,
        "name": e.name,
        "sandboxType": e.sandbox_type,
        "config": e.config,
        "isDefault": e.is_default,
        "createdAt": e.created_at,
        "updatedAt": e.updated_at,
    })
}

fn not_found() -> ApiError {
    ApiError::Client(StatusCode::NOT_FOUND, "Environment not found".into())
}

fn sandbox_type(v: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    match v.get("sandboxType") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(
            "sandboxType must be one of: docker, cloudflare, gondolin",
        )),
    }
}

fn is_default(v: &Map<String, Value>) -> Result<Option<bool>, ApiError> {
    match v.get("isDefault") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::bad_request("isDefault must be a boolean")),
    }
}

async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let all = state.environments.list().await?;
    Ok(envelope::ok(all.into_iter().map(view).collect::<Vec<_>>()))
}

async fn images(State(state): State<AppState>) -> Result<Response, ApiError> {
    let all = state.environments.images().await?;
    Ok(envelope::ok(
        all.into_iter()
            .map(|i| {
                json!({
                    "id": i.id,
                    "name": i.name,
                    "image": i.image,
                    "description": i.description,
                    "isDefault": i.is_default,
                })
            })
            .collect::<Vec<_>>(),
    ))
}

async fn probe(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let v = input::json_object(&body)?;
    let sandbox_type = sandbox_type(&v)?.ok_or_else(|| {
        ApiError::bad_request("sandboxType must be one of: docker, cloudflare, gondolin")
    })?;
    let config = match v.get("config") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(c) => c.clone(),
    };
    let found = state.environments.probe(&sandbox_type, &config).await?;
    let mut data = json!({"available": found.available, "sandboxType": sandbox_type});
    if let Some(e) = found.error {
        data["error"] = json!(e);
    }
    Ok(envelope::ok(data))
}

/// Gondolin (micro-VMs) does not run here: its asset status, in the protocol's shape, says
/// nothing is installed and how to get sessions instead.
async fn gondolin() -> Response {
    envelope::ok(json!({
        "available": false,
        "defaultInstallBaseDir": null,
        "installCommand": null,
        "checkedPath": null,
        "assetsExist": false,
        "installedAssetDirs": [],
        "error": GONDOLIN_UNSUPPORTED,
    }))
}

async fn gondolin_install() -> Result<Response, ApiError> {
    Err(ApiError::Client(
        StatusCode::NOT_IMPLEMENTED,
        GONDOLIN_UNSUPPORTED.into(),
    ))
}

const GONDOLIN_UNSUPPORTED: &str = "Gondolin sandboxes are not supported by this relay; use docker";

async fn one(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    input::uuid_id(&id, not_found)?;
    Ok(envelope::ok(view(state.environments.get(&id).await?)))
}

async fn create(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let v = input::json_object(&body)?;
    let name = match v.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => return Err(ApiError::bad_request("name is required")),
    };
    let sandbox_type = sandbox_type(&v)?.ok_or_else(|| {
        ApiError::bad_request("sandboxType must be one of: docker, cloudflare, gondolin")
    })?;
    let new = NewEnvironment {
        name,
        sandbox_type,
        // No config: the relay's defaults (its image, the medium tier).
        config: match v.get("config") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(c) => c.clone(),
        },
        is_default: is_default(&v)?,
    };
    Ok(envelope::ok(view(state.environments.create(new).await?)))
}

async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let v = input::json_object(&body)?;
    let change = EnvironmentChange {
        name: match v.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(ApiError::bad_request("name is required")),
        },
        sandbox_type: sandbox_type(&v)?,
        config: match v.get("config") {
            None | Some(Value::Null) => None,
            Some(c) => Some(c.clone()),
        },
        is_default: is_default(&v)?,
    };
    input::uuid_id(&id, not_found)?;
    Ok(envelope::ok(view(
        state.environments.update(&id, change).await?,
    )))
}

async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    input::uuid_id(&id, not_found)?;
    state.environments.delete(&id).await?;
    Ok(envelope::ok(json!({"ok": true})))
}
