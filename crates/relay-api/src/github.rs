//! `/api/github/*`: the personal access token (checked with GitHub, kept sealed, never
//! returned), the repositories it can see, and a GitHub App (connected with its id and private
//! key, which must sign a token GitHub accepts; status; installations).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use relay_session::SessionError;
use relay_session::github::RepoRow;
use relay_session::github::TokenStatus;
use relay_session::github_app::AppConnection;
use secrecy::SecretString;
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
        Ok((source, repos)) => Ok(envelope::ok(json!({
            "mode": source.as_str(),
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
    let a = state.sessions.github_app_status().await?;
    let configured = a.app_id.is_some() && a.has_private_key;
    let mut data = json!({
        "configured": configured,
        "hasPrivateKey": a.has_private_key,
        "hasWebhookSecret": a.has_webhook_secret,
        "installationIds": a.installation_ids,
        "preferredMode": if configured { "github_app" } else if pat { "pat" } else { "none" },
        "patConfigured": pat,
    });
    if let Some(id) = a.app_id {
        data["appId"] = json!(id);
    }
    match a.app {
        Ok(Some(app)) => {
            data["appName"] = app["name"].clone();
            data["appSlug"] = app["slug"].clone();
        }
        Ok(None) => {}
        Err(why) => data["error"] = json!(why),
    }
    Ok(envelope::ok(data))
}

async fn app_connect(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let body = json_object(&body)?;
    let app_id = body
        .get("appId")
        .and_then(Value::as_u64)
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::bad_request("appId is required"))?;
    let text = |key: &str| {
        body.get(key)
            .and_then(Value::as_str)
            .map(|s| SecretString::from(s.to_owned()))
    };
    let private_key =
        text("privateKey").ok_or_else(|| ApiError::bad_request("privateKey is required"))?;
    let installation_ids = match body.get("installationIds") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).collect(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "installationIds must be an array of numbers",
            ));
        }
    };
    let config = state
        .sessions
        .connect_github_app(AppConnection {
            app_id,
            private_key,
            webhook_secret: text("webhookSecret"),
            installation_ids,
        })
        .await?;
    Ok(envelope::ok(json!({"ok": true, "config": config})))
}

async fn app_disconnect(State(state): State<AppState>) -> Result<Response, ApiError> {
    state.sessions.disconnect_github_app().await?;
    Ok(envelope::ok(json!({"ok": true})))
}

async fn app_installations(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(envelope::ok(
        state.sessions.github_app_installations().await?,
    ))
}
