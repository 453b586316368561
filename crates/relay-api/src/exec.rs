//! What a session's sandbox and pi's files give clients: `POST /api/sessions/:id/exec`
//! (`{command, timeout?}` → `{exitCode, output}`, with the pi-apps relay's checks in its order:
//! unknown session, no sandbox, body, provider, running), `GET …/history` (pi's conversation
//! entries), `GET …/export` (pi's HTML export, raw) and share links (`POST …/share`,
//! `GET /api/sessions/share/:token`).

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::post;
use bytes::Bytes;
use relay_session::SessionStatus;
use relay_session::exec::exec_timeout;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::sessions::valid_id;
use crate::{AppState, envelope, input};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/sessions/{id}/exec", post(exec))
        .route("/api/sessions/{id}/history", axum::routing::get(history))
        .route("/api/sessions/{id}/export", axum::routing::get(export))
        .route("/api/sessions/{id}/share", post(share))
        .route("/api/sessions/share/{token}", axum::routing::get(shared))
}

/// `POST …/share`: the session's share link (the same on every call).
async fn share(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    valid_id(&id)?;
    let s = state.sessions.share(&id).await?;
    Ok(envelope::ok(json!({
        "token": s.token,
        "sessionId": s.session_id,
        "createdAt": s.created_at,
        "url": format!("/share/{}", s.token),
    })))
}

/// `GET /api/sessions/share/:token`: the session a link names.
async fn shared(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let found = if uuid::Uuid::parse_str(&token).is_ok() {
        state.sessions.shared(&token).await?
    } else {
        None
    };
    let Some((session_id, name)) = found else {
        return Err(ApiError::Client(
            axum::http::StatusCode::NOT_FOUND,
            "Share not found".into(),
        ));
    };
    Ok(envelope::ok(
        json!({"token": token, "sessionId": session_id, "sessionName": name}),
    ))
}

async fn exec(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    valid_id(&id)?;
    let session = state.sessions.get(&id).await?;
    if session.status == SessionStatus::Archived {
        return Err(ApiError::session_not_found());
    }
    if session.sandbox_provider_id.is_none() {
        return Err(ApiError::Client(
            axum::http::StatusCode::CONFLICT,
            "No sandbox running".into(),
        ));
    }
    let v = input::json_object(&body)?;
    let command = match v.get("command") {
        Some(Value::String(c)) if !c.trim().is_empty() => c.clone(),
        _ => return Err(ApiError::bad_request("command is required")),
    };
    let timeout = match v.get("timeout") {
        None | Some(Value::Null) => None,
        Some(t) => Some(
            t.as_f64()
                .ok_or_else(|| ApiError::bad_request("timeout must be a number of seconds"))?,
        ),
    };
    let out = state
        .sessions
        .exec(&id, &command, exec_timeout(timeout))
        .await?;
    Ok(envelope::ok(
        json!({"exitCode": out.exit_code, "output": out.output}),
    ))
}

/// `GET …/history`: pi's conversation entries.
pub(crate) async fn history(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    valid_id(&id)?;
    let entries = state.sessions.history(&id).await?;
    Ok(envelope::ok(json!({"entries": entries})))
}

/// `GET …/export`: the HTML pi's `export_html` wrote, raw.
pub(crate) async fn export(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    use axum::response::IntoResponse;
    valid_id(&id)?;
    let Some(html) = state.sessions.export(&id).await? else {
        return Err(ApiError::Client(
            axum::http::StatusCode::NOT_FOUND,
            "Export not found".into(),
        ));
    };
    let disposition = format!("inline; filename=\"session-{id}.html\"");
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/html; charset=utf-8".to_owned(),
            ),
            (axum::http::header::CONTENT_DISPOSITION, disposition),
        ],
        html,
    )
        .into_response())
}
