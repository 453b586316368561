//! `/api/sessions…`: request parsing and validation with the protocol's exact errors, calls into
//! the session service, and the JSON shapes clients decode.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post, put};
use bytes::Bytes;
use relay_session::{Mode, NewSessionRequest, SandboxState, SandboxStatus, Session};
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::{AppState, envelope};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/sessions", get(list).post(create))
        .route("/api/sessions/{id}", get(one).delete(delete))
        .route("/api/sessions/{id}/activate", post(activate))
        .route("/api/sessions/{id}/events", get(events))
        .route("/api/sessions/{id}/sandbox", get(sandbox))
        .route("/api/sessions/{id}/logs", get(logs))
        .route("/api/sessions/{id}/archive", post(archive))
        .route("/api/sessions/{id}/restart", post(restart))
        .route(
            "/api/sessions/{id}/clients/{client_id}/capabilities",
            put(capabilities),
        )
}

/// The session object, keys in the pi-apps relay's order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionView {
    id: String,
    mode: &'static str,
    status: &'static str,
    /// Not in the pi-apps relay: why the session is in `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    status_reason: Option<String>,
    sandbox_provider: Option<String>,
    sandbox_provider_id: Option<String>,
    environment_id: Option<String>,
    sandbox_image_digest: Option<String>,
    repo_id: Option<String>,
    repo_path: Option<String>,
    branch_name: Option<String>,
    branch_creation_deferred: bool,
    name: Option<String>,
    first_user_message: Option<String>,
    current_model_provider: Option<String>,
    current_model_id: Option<String>,
    system_prompt: Option<String>,
    extensions_stale: bool,
    created_at: String,
    last_activity_at: String,
    repo_full_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ws_endpoint: Option<String>,
}

impl From<Session> for SessionView {
    fn from(s: Session) -> SessionView {
        SessionView {
            id: s.id,
            mode: s.mode.as_str(),
            status: s.status.as_str(),
            status_reason: s
                .status_reason
                .filter(|_| s.status == relay_session::SessionStatus::Error),
            sandbox_provider: s.sandbox_provider,
            sandbox_provider_id: s.sandbox_provider_id,
            environment_id: s.environment_id,
            sandbox_image_digest: s.sandbox_image_digest,
            repo_id: s.repo_id,
            repo_path: s.repo_path,
            branch_name: s.branch_name,
            branch_creation_deferred: s.branch_creation_deferred,
            name: s.name,
            first_user_message: s.first_user_message,
            current_model_provider: s.current_model_provider,
            current_model_id: s.current_model_id,
            system_prompt: s.system_prompt,
            extensions_stale: s.extensions_stale,
            created_at: s.created_at,
            last_activity_at: s.last_activity_at,
            repo_full_name: None,
            ws_endpoint: None,
        }
    }
}

fn ws_endpoint(id: &str) -> String {
    format!("/ws/sessions/{id}")
}

/// Session ids are UUIDs; anything else cannot exist, so it is "not found" without a lookup.
pub(crate) fn valid_id(id: &str) -> Result<(), ApiError> {
    crate::input::uuid_id(id, ApiError::session_not_found)
}

/// A client id is a label: no hidden characters, at most 128 characters.
pub(crate) fn check_client_id(client_id: &str) -> Result<(), relay_session::SessionError> {
    let max = relay_session::text::MAX_CLIENT_ID_CHARS;
    relay_session::text::check_label("clientId", client_id, max)
}

fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|_| ApiError::invalid_json())
}

/// An optional string field: absent or null is `None`; another type is an error.
fn opt_string(v: &Value, key: &str) -> Result<Option<String>, ApiError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(format!("{key} must be a string"))),
    }
}

async fn list(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    // Names that are no status match no session, as in the pi-apps relay.
    let statuses = q
        .get("status")
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
        .map(|names| names.iter().filter_map(|n| n.parse().ok()).collect());
    let sessions = state.sessions.list(statuses).await?;
    Ok(envelope::ok(
        sessions
            .into_iter()
            .map(SessionView::from)
            .collect::<Vec<_>>(),
    ))
}

async fn create(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let v = parse_json(&body)?;
    if !v.is_object() {
        return Err(ApiError::invalid_json());
    }
    let mode = v
        .get("mode")
        .and_then(Value::as_str)
        .and_then(|m| m.parse::<Mode>().ok())
        .ok_or_else(|| ApiError::bad_request("mode must be 'chat' or 'code'"))?;
    let repo_id = match v.get("repoId") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    if mode == Mode::Code && repo_id.is_none() {
        return Err(ApiError::bad_request("repoId is required for code mode"));
    }
    let req = NewSessionRequest {
        mode,
        repo_id,
        environment_id: opt_string(&v, "environmentId")?,
        model_provider: opt_string(&v, "modelProvider")?,
        model_id: opt_string(&v, "modelId")?,
        session_name: opt_string(&v, "sessionName")?,
        first_prompt: opt_string(&v, "firstPrompt")?,
        system_prompt: opt_string(&v, "systemPrompt")?,
    };
    let session = state.sessions.create(req).await?;
    let mut view = SessionView::from(session);
    view.ws_endpoint = Some(ws_endpoint(&view.id));
    Ok(envelope::ok(view))
}

/// How long `GET /api/sessions/:id` waits for a session being created to start. The pi-apps
/// dashboard reads a new session once, right after creating it, and shows "Starting…" for as
/// long as what it read says `creating`.
const STARTING_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

async fn one(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    valid_id(&id)?;
    Ok(envelope::ok(SessionView::from(
        state.sessions.get_when_started(&id, STARTING_WAIT).await?,
    )))
}

async fn activate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    // clientId is checked before the session exists, as clients expect.
    let v = parse_json(&body)?;
    let client_id = v
        .get("clientId")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::bad_request("clientId is required"))?;
    check_client_id(client_id)?;
    valid_id(&id)?;
    let a = state.sessions.activate(&id, client_id).await?;
    Ok(envelope::ok(json!({
        "sessionId": a.session_id,
        "status": "active",
        "lastSeq": a.last_seq,
        "sandboxStatus": "running",
        "wsEndpoint": ws_endpoint(&id),
    })))
}

fn query_u64(q: &HashMap<String, String>, key: &str, default: u64) -> Result<u64, ApiError> {
    match q.get(key).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(default),
        Some(s) => s
            .parse()
            .map_err(|_| ApiError::bad_request(format!("{key} must be a non-negative integer"))),
    }
}

async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    valid_id(&id)?;
    let after = query_u64(&q, "afterSeq", 0)?;
    let limit = query_u64(&q, "limit", 100)?;
    let page = state
        .sessions
        .events(&id, after, usize::try_from(limit).unwrap_or(usize::MAX))
        .await?;
    let events: Vec<EventView> = page.events.into_iter().map(EventView::from).collect();
    Ok(envelope::ok(EventPageView {
        events,
        last_seq: page.last_seq,
    }))
}

/// A journal page. Payloads are embedded as the stored text, not re-parsed into a value tree:
/// a page holds up to 10,000 of pi's lines, some of them hundreds of KiB.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventPageView {
    events: Vec<EventView>,
    last_seq: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventView {
    seq: u64,
    #[serde(rename = "type")]
    ty: String,
    payload: Payload,
    created_at: String,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Payload {
    Json(Box<serde_json::value::RawValue>),
    /// A stored line that is not JSON (never written by the relay) is shown as a string.
    Text(String),
}

impl From<relay_session::EventRow> for EventView {
    fn from(e: relay_session::EventRow) -> EventView {
        let is_json = serde_json::from_str::<&serde_json::value::RawValue>(&e.payload).is_ok();
        let payload = if is_json {
            match serde_json::value::RawValue::from_string(e.payload) {
                Ok(raw) => Payload::Json(raw),
                Err(e) => Payload::Text(e.to_string()),
            }
        } else {
            Payload::Text(e.payload)
        };
        EventView {
            seq: e.seq,
            ty: e.ty,
            payload,
            created_at: e.created_at,
        }
    }
}

async fn sandbox(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    valid_id(&id)?;
    let v = state.sessions.sandbox_view(&id).await?;
    let status = match v.state {
        SandboxState::NotProvisioned => "stopped",
        SandboxState::Provisioning => "creating",
        SandboxState::Present(s) => sandbox_status_name(s),
        SandboxState::Gone | SandboxState::Unreachable => "error",
    };
    let capabilities = matches!(v.state, SandboxState::Present(_)).then(|| {
        json!({
            "losslessPause": v.capabilities.pause,
            // The workspace and pi's files outlive every sandbox of the session.
            "persistentDisk": true,
            "exec": v.capabilities.exec,
            "terminal": v.capabilities.terminal,
        })
    });
    let mut data = json!({
        "sessionId": id,
        "provider": v.provider,
        "providerId": v.provider_id,
        "status": status,
        "capabilities": capabilities,
    });
    if v.provider_id.is_some() {
        data["imageDigest"] = json!(v.image_digest);
    }
    Ok(envelope::ok(data))
}

/// The protocol's name of a sandbox status (`GET …/sandbox`, `sandbox_status` messages).
fn sandbox_status_name(s: SandboxStatus) -> &'static str {
    match s {
        SandboxStatus::Created => "creating",
        SandboxStatus::Running => "running",
        SandboxStatus::Paused => "paused",
        SandboxStatus::Exited => "stopped",
    }
}

async fn logs(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    valid_id(&id)?;
    Ok(envelope::ok(
        json!({"lines": state.sessions.logs(&id).await?}),
    ))
}

async fn archive(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    valid_id(&id)?;
    state.sessions.archive(&id).await?;
    Ok(envelope::ok(json!({"ok": true})))
}

async fn restart(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    valid_id(&id)?;
    state.sessions.restart(&id).await?;
    Ok(envelope::ok(
        json!({"ok": true, "sandboxStatus": "creating"}),
    ))
}

async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    valid_id(&id)?;
    state.sessions.delete(&id).await?;
    Ok(envelope::ok(json!({"ok": true})))
}

async fn capabilities(
    State(state): State<AppState>,
    Path((id, client_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    valid_id(&id)?;
    check_client_id(&client_id)?;
    state.sessions.get(&id).await?;
    let v = parse_json(&body)?;
    let caps = v.get("capabilities").cloned().unwrap_or(Value::Null);
    let extension_ui = caps
        .get("extensionUI")
        .and_then(Value::as_bool)
        .ok_or_else(|| ApiError::bad_request("capabilities.extensionUI is required"))?;
    state
        .sessions
        .set_capabilities(&id, &client_id, extension_ui)
        .await?;
    Ok(envelope::ok(json!({
        "sessionId": id,
        "clientId": client_id,
        "capabilities": caps,
    })))
}
