//! `/api/github/*`: the personal access token (checked with GitHub, kept sealed, never
//! returned), the repositories it can see, and the GitHub App routes, which answer that no App
//! is connected (App connections are not built yet).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use relay_session::SessionError;
use relay_session::github::RepoRow;
use relay_session::github::TokenStatus;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::input::json_object;
use crate::{AppState, envelope};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/github/token",
            get(token_status).post(set_token).delete(delete_token),
        )
        .route("/api/github/repos", get(repos))
        .route("/api/github/app/status", get(app_status))
        .route(
            "/api/github/app/connect",
            axum::routing::post(app_connect).delete(app_disconnect),
        )
        .route("/api/github/app/installations", get(app_installations))
}

/// The protocol's `GitHubRepo`.
fn repo_view(r: RepoRow) -> Value {
    json!({
        "id": r.id.parse::<u64>().map_or(json!(r.id), |n| json!(n)),
        "name": r.name,
        "fullName": r.full_name,
        "owner": r.owner,
        "isPrivate": r.is_private,
        "description": r.description,
        "htmlUrl": r.html_url,
        "cloneUrl": r.clone_url,
        "sshUrl": r.ssh_url,
        "defaultBranch": r.default_branch,
    })
}

async fn token_status(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(envelope::ok(
        match state.sessions.github_token_status().await? {
            TokenStatus::NotConfigured => json!({"configured": false}),
            TokenStatus::Invalid(error) => {
                json!({"configured": true, "valid": false, "error": error})
            }
            TokenStatus::Valid(o) => json!({
                "configured": true,
                "valid": true,
                "user": o.user,
                "scopes": o.scopes,
                "rateLimitRemaining": o.rate_limit_remaining,
            }),
        },
    ))
}

async fn set_token(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let body = json_object(&body)?;
    let token = body
        .get("token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let owner = state.sessions.set_github_token(token).await?;
    Ok(envelope::ok(
        json!({"user": owner.user, "scopes": owner.scopes}),
    ))
}

async fn delete_token(State(state): State<AppState>) -> Result<Response, ApiError> {
    state.sessions.delete_github_token().await?;
    Ok(envelope::ok(json!({"ok": true})))
}

async fn repos(State(state): State<AppState>) -> Result<Response, ApiError> {
    match state.sessions.github_repos().await {
        Ok(repos) => Ok(envelope::ok(json!({
            "mode": "pat",
            "repos": repos.into_iter().map(repo_view).collect::<Vec<_>>(),
        }))),
        // What GitHub said is worth telling; the protocol answers it with 500.
        Err(SessionError::GitHub(why)) => {
            Err(ApiError::Server(StatusCode::INTERNAL_SERVER_ERROR, why))
        }
        Err(e) => Err(e.into()),
    }
}

async fn app_status(State(state): State<AppState>) -> Result<Response, ApiError> {
    let pat = state.sessions.github_token_configured().await?;
    Ok(envelope::ok(json!({
        "configured": false,
        "hasPrivateKey": false,
        "hasWebhookSecret": false,
        "installationIds": [],
        "preferredMode": if pat { "pat" } else { "none" },
        "patConfigured": pat,
    })))
}

async fn app_connect() -> Result<Response, ApiError> {
    Err(ApiError::Client(
        StatusCode::NOT_IMPLEMENTED,
        "GitHub App connections are not supported yet; add a personal access token instead".into(),
    ))
}

/// Nothing is connected, so nothing is left connected.
async fn app_disconnect() -> Response {
    envelope::ok(json!({"ok": true}))
}

async fn app_installations() -> Result<Response, ApiError> {
    Err(ApiError::Client(
        StatusCode::NOT_FOUND,
        "GitHub App not configured".into(),
    ))
}
