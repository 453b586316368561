//! The HTTP and WebSocket API of pi-relay: the pi-apps relay protocol's routes, its envelope,
//! status codes and error strings, permissive CORS, and optional bearer-token access control.
//! Only this crate knows axum; handlers parse, call the session, secrets, environment and
//! settings services, and shape the answer.

mod admission;
mod egress;
mod envelope;
mod environments;
mod error;
mod exec;
mod extensions;
mod files;
mod github;
mod http;
mod input;
mod models;
mod secrets;
mod server;
mod sessions;
mod settings;
mod stream;
mod terminal;
mod ws;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use relay_session::SessionService;
use relay_session::environments::EnvironmentService;
use relay_session::settings::SettingsService;
use serde_json::json;

pub use admission::ConnectionStats;
pub use error::ApiError;
pub use server::{
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
    HttpLimits,
};
pub use ws::{DEFAULT_WRITE_STALL_TIMEOUT, MAX_CLIENT_MESSAGE};

/// Everything handlers need.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The session service.
    pub sessions: SessionService,
    /// Environments (`/api/environments`).
    pub environments: EnvironmentService,
    /// Settings (`/api/settings`).
    pub settings: SettingsService,
    /// Required bearer token, if any.
    pub auth_token: Option<secrecy::SecretString>,
    /// Build commit shown by `/health` (`GIT_COMMIT`, else `dev`).
    pub commit: String,
    /// How long a write to a WebSocket client may take nothing before the client is cut off.
    pub write_stall_timeout: std::time::Duration,
}

/// The relay's version as `/health` reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Largest request body of the session routes: a first prompt and a system prompt.
pub const MAX_SESSION_BODY: usize = 1024 * 1024;
/// Largest request body of the secret and environment routes (a secret's value is at most 64 KiB).
pub const MAX_CONFIG_BODY: usize = 256 * 1024;
/// Largest request body of the settings routes (a value is at most 256 KiB as JSON).
pub const MAX_SETTINGS_BODY: usize = 512 * 1024;

/// The whole application.
pub fn router(state: AppState) -> Router {
    let limit = axum::extract::DefaultBodyLimit::max;
    Router::new()
        .route("/health", get(health))
        .route("/api", get(api_index))
        .route("/api/meta/version", get(meta_version))
        .route("/ws/sessions/{id}", get(ws::upgrade))
        .route("/ws/sessions/{id}/terminal", get(terminal::upgrade))
        .merge(sessions::router().layer(limit(MAX_SESSION_BODY)))
        .merge(egress::router().layer(limit(MAX_CONFIG_BODY)))
        .merge(models::router().layer(limit(MAX_CONFIG_BODY)))
        .merge(files::router())
        .merge(exec::router().layer(limit(MAX_SESSION_BODY)))
        .merge(secrets::router().layer(limit(MAX_CONFIG_BODY)))
        .merge(environments::router().layer(limit(MAX_CONFIG_BODY)))
        .merge(settings::router().layer(limit(MAX_SETTINGS_BODY)))
        .merge(extensions::router().layer(limit(MAX_SETTINGS_BODY)))
        .merge(github::router().layer(limit(MAX_CONFIG_BODY)))
        .fallback(http::not_found)
        .layer(axum::middleware::from_fn(http::enveloped_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            http::auth,
        ))
        .layer(axum::middleware::from_fn(http::cors))
        .layer(axum::middleware::from_fn(http::request_id))
        .with_state(state)
}

async fn health(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    axum::Json(json!({"ok": true, "version": VERSION, "commit": state.commit})).into_response()
}

async fn api_index(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    axum::Json(json!({
        "name": "pi-relay",
        "version": VERSION,
        "commit": state.commit,
        "endpoints": {
            "health": "GET /health",
            "sessions": "GET /api/sessions",
            "session": "GET /api/sessions/:id",
            "egress": "GET /api/sessions/:id/egress",
            "githubToken": "GET|POST|DELETE /api/github/token",
            "githubRepos": "GET /api/github/repos",
            "settings": "GET|PUT /api/settings",
            "secrets": "GET|POST /api/secrets, PUT|DELETE /api/secrets/:id",
            "environments": "GET|POST /api/environments, GET|PUT|DELETE /api/environments/:id",
            "rpc": "WS /rpc (not yet implemented)",
        },
    }))
    .into_response()
}

/// `GET /api/meta/version`: the relay's version and commit (`GIT_COMMIT`); the dashboard's
/// commit and the build time when the environment says them.
async fn meta_version(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    let var = |names: &[&str]| {
        names
            .iter()
            .filter_map(|n| std::env::var(n).ok())
            .map(|v| v.trim().to_owned())
            .find(|v| !v.is_empty())
    };
    let mut data = json!({
        "relayVersion": VERSION,
        "serverHash": state.commit,
        "dashboardHash": var(&["DASHBOARD_GIT_COMMIT", "PI_DASHBOARD_COMMIT"]).unwrap_or_else(|| "dev".into()),
    });
    if let Some(at) = var(&["BUILT_AT", "PI_BUILD_AT"]) {
        data["builtAt"] = json!(at);
    }
    envelope::ok(data)
}

/// Serves the API on `listener` until `stop` is cancelled, then waits for requests in progress.
/// Connections are accepted, and HTTP spoken, on the runtime this runs on (the API thread's);
/// every handler but `/health` runs on `work`, and so do WebSocket sessions, sockets included
/// (see the `server`, `stream` and `http` modules). `stats` counts the connections.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    work: tokio::runtime::Handle,
    limits: HttpLimits,
    stats: std::sync::Arc<ConnectionStats>,
    stop: tokio_util::sync::CancellationToken,
) {
    let app = router(state).layer(axum::middleware::from_fn_with_state(
        work,
        http::on_work_runtime,
    ));
    server::serve(listener, app, limits, stats, stop).await;
}
