//! The HTTP and WebSocket API of pi-relay: the pi-apps relay protocol's routes, its envelope,
//! status codes and error strings, permissive CORS, and optional bearer-token access control.
//! Only this crate knows axum; handlers parse, call the session, secrets, environment and
//! settings services, and shape the answer.

mod envelope;
mod environments;
mod error;
mod http;
mod secrets;
mod sessions;
mod settings;
mod ws;

use std::future::Future;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use relay_session::SessionService;
use relay_session::environments::EnvironmentService;
use relay_session::secrets::SecretService;
use relay_session::settings::SettingsService;
use serde_json::json;

pub use error::ApiError;
pub use ws::MAX_CLIENT_MESSAGE;

/// Everything handlers need.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The session service.
    pub sessions: SessionService,
    /// Secrets (`/api/secrets`).
    pub secrets: SecretService,
    /// Environments (`/api/environments`).
    pub environments: EnvironmentService,
    /// Settings (`/api/settings`).
    pub settings: SettingsService,
    /// Required bearer token, if any.
    pub auth_token: Option<String>,
    /// Build commit shown by `/health` (`GIT_COMMIT`, else `dev`).
    pub commit: String,
}

/// The relay's version as `/health` reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The whole application.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/api", get(api_index))
        .route("/ws/sessions/{id}", get(ws::upgrade))
        .merge(sessions::router())
        .merge(secrets::router())
        .merge(environments::router())
        .merge(settings::router())
        .fallback(http::not_found)
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

/// Serves `router` on `listener` until `shutdown` resolves, then waits for open requests.
/// Connections are accepted and spoken to on the runtime this runs on; every handler but
/// `/health` runs on `work` (see [`http::on_work_runtime`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    work: tokio::runtime::Handle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Without TCP_NODELAY, Nagle holds a small frame back until the previous one is acked,
    // and the client's delayed ACK turns that into up to 40 ms per streamed event.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let app = router(state).layer(axum::middleware::from_fn_with_state(
        work,
        http::on_work_runtime,
    ));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
