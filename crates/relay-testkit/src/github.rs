//! [`FakeGitHub`]: the GitHub REST calls the relay makes, on loopback, in GitHub's shapes:
//! `GET /user` (401 without the right token; `x-oauth-scopes`, `x-ratelimit-remaining`) and
//! `GET /user/repos?per_page=&page=` (pages linked with `Link: <…>; rel="next"`), and for a
//! GitHub App `GET /app` and `GET /app/installations`, which take only an RS256 JWT signed with
//! [`GITHUB_APP_TEST_KEY`] whose `iss` is the App's id.

/// A private key made for these tests only (`keys/`), the fake's App's.
pub const GITHUB_APP_TEST_KEY: &str = include_str!("../keys/github-app-test.pem");
const GITHUB_APP_TEST_PUBLIC_KEY: &str = include_str!("../keys/github-app-test.pub.pem");
/// The fake's App's id.
pub const GITHUB_APP_TEST_ID: u64 = 424242;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct Shared {
    token: String,
    login: String,
    repos: usize,
    base: Mutex<String>,
    /// A host the last page's `next` link points at instead, if set.
    next_elsewhere: Mutex<Option<String>>,
    failing: AtomicBool,
    authorizations: Mutex<Vec<String>>,
    /// Installation tokens given out: `(installation, token)`.
    minted: Mutex<Vec<(u64, String)>>,
    /// How long an installation token lasts, in seconds.
    token_lifetime: std::sync::atomic::AtomicU64,
}

/// The fake; it stops when dropped.
#[derive(Debug)]
pub struct FakeGitHub {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

impl FakeGitHub {
    /// Serves user `login`, who owns `repos` repositories (`login/repo-000`, …), to `token`.
    pub async fn start(token: &str, login: &str, repos: usize) -> std::io::Result<FakeGitHub> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            token: token.into(),
            login: login.into(),
            repos,
            base: Mutex::new(format!("http://{addr}")),
            next_elsewhere: Mutex::new(None),
            failing: AtomicBool::new(false),
            authorizations: Mutex::new(Vec::new()),
            minted: Mutex::new(Vec::new()),
            token_lifetime: std::sync::atomic::AtomicU64::new(3600),
        });
        let app = Router::new()
            .route("/app", axum::routing::get(app))
            .route("/app/installations", axum::routing::get(installations))
            .route(
                "/app/installations/{id}/access_tokens",
                axum::routing::post(access_token),
            )
            .route(
                "/installation/repositories",
                axum::routing::get(installation_repos),
            )
            .route("/user", axum::routing::get(user))
            .route("/user/repos", axum::routing::get(user_repos))
            .with_state(shared.clone());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Ok(FakeGitHub {
            addr,
            shared,
            shutdown,
        })
    }

    /// The API's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every `authorization` header received, in order.
    pub fn authorizations(&self) -> Vec<String> {
        lock(&self.shared.authorizations).clone()
    }

    /// From now on every request is answered 500 (`true`) or served again.
    pub fn set_failing(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::SeqCst);
    }

    /// Installation tokens given out so far, `(installation, token)`.
    pub fn minted(&self) -> Vec<(u64, String)> {
        lock(&self.shared.minted).clone()
    }

    /// Installation tokens given from now on last `seconds` (GitHub's last an hour).
    pub fn set_token_lifetime(&self, seconds: u64) {
        self.shared.token_lifetime.store(seconds, Ordering::SeqCst);
    }

    /// The first page's `next` link points at `base` (another host) instead of this API.
    pub fn link_elsewhere(&self, base: &str) {
        *lock(&self.shared.next_elsewhere) = Some(base.to_owned());
    }
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records the request's credentials; an answer when it may not go on.
fn check(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    lock(&shared.authorizations).push(auth.clone());
    if shared.failing.load(Ordering::SeqCst) {
        return Some(
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "{\"message\":\"Server Error\"}",
            )
                .into_response(),
        );
    }
    if auth != format!("Bearer {}", shared.token) {
        return Some(
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"})),
            )
                .into_response(),
        );
    }
    None
}

async fn user(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    if let Some(r) = check(&shared, req.headers()) {
        return r;
    }
    let mut res =
        Json(json!({"login": shared.login, "id": 583231, "type": "User"})).into_response();
    let h = res.headers_mut();
    h.insert("x-oauth-scopes", "repo, read:org".parse().unwrap());
    h.insert("x-ratelimit-remaining", "4999".parse().unwrap());
    res
}

async fn user_repos(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Response {
    if let Some(r) = check(&shared, req.headers()) {
        return r;
    }
    let per_page: usize = q
        .get("per_page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let page: usize = q
        .get("page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let start = (page - 1) * per_page;
    let items: Vec<_> = (start..shared.repos.min(start + per_page))
        .map(|i| {
            let name = format!("repo-{i:03}");
            let full = format!("{}/{name}", shared.login);
            json!({
                "id": 1000 + i, "node_id": "R_x", "name": name, "full_name": full,
                "private": i % 2 == 0, "owner": {"login": shared.login, "type": "User"},
                "html_url": format!("https://github.com/{full}"),
                "description": if i % 3 == 0 { json!(null) } else { json!(format!("Repository {i}")) },
                "clone_url": format!("https://github.com/{full}.git"),
                "ssh_url": format!("git@github.com:{full}.git"),
                "default_branch": if i == 0 { "trunk" } else { "main" },
            })
        })
        .collect();
    let mut res = Json(items).into_response();
    if start + per_page < shared.repos {
        let base = lock(&shared.next_elsewhere)
            .clone()
            .unwrap_or_else(|| lock(&shared.base).clone());
        let link = format!(
            "<{base}/user/repos?per_page={per_page}&page={}>; rel=\"next\", <{base}/user/repos?per_page={per_page}&page=1>; rel=\"first\"",
            page + 1
        );
        res.headers_mut().insert("link", link.parse().unwrap());
    }
    res
}

/// Whether the request carries a JWT of the fake's App, signed with its key and unexpired.
fn app_authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    lock(&shared.authorizations).push(auth.to_owned());
    let Some(jwt) = auth.strip_prefix("Bearer ") else {
        return false;
    };
    let Ok(key) = jsonwebtoken::DecodingKey::from_rsa_pem(GITHUB_APP_TEST_PUBLIC_KEY.as_bytes())
    else {
        return false;
    };
    let mut rules = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    rules.set_issuer(&[GITHUB_APP_TEST_ID.to_string()]);
    rules.set_required_spec_claims(&["exp", "iat", "iss"]);
    jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &rules).is_ok()
}

fn refused() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"message": "A JSON web token could not be decoded"})),
    )
        .into_response()
}

async fn app(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    if !app_authorized(&shared, req.headers()) {
        return refused();
    }
    Json(
        json!({"id": GITHUB_APP_TEST_ID, "slug": "pi-relay-test", "name": "pi-relay test",
                "owner": {"login": shared.login}}),
    )
    .into_response()
}

async fn installations(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    if !app_authorized(&shared, req.headers()) {
        return refused();
    }
    let one = |id: u64, login: &str, kind: &str| {
        json!({"id": id, "account": {"login": login, "type": kind},
               "repository_selection": "selected",
               "access_tokens_url": format!("https://api.github.com/app/installations/{id}/access_tokens"),
               "repositories_url": "https://api.github.com/installation/repositories",
               "suspended_at": null, "app_id": GITHUB_APP_TEST_ID})
    };
    Json(json!([
        one(11, &shared.login, "User"),
        one(12, "acme", "Organization")
    ]))
    .into_response()
}

async fn access_token(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(id): axum::extract::Path<u64>,
    req: Request,
) -> Response {
    if !app_authorized(&shared, req.headers()) {
        return refused();
    }
    if ![11, 12].contains(&id) {
        return (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"}))).into_response();
    }
    let mut minted = lock(&shared.minted);
    let token = format!("ghs_{id}_{}", minted.len());
    minted.push((id, token.clone()));
    let lifetime = shared.token_lifetime.load(Ordering::SeqCst);
    let expires = std::time::SystemTime::now() + std::time::Duration::from_secs(lifetime);
    (
        StatusCode::CREATED,
        Json(json!({"token": token, "expires_at": humantime::format_rfc3339_seconds(expires).to_string(),
                    "permissions": {"contents": "write"}, "repository_selection": "selected"})),
    )
        .into_response()
}

async fn installation_repos(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    lock(&shared.authorizations).push(auth.clone());
    let installation = lock(&shared.minted)
        .iter()
        .find(|(_, t)| auth == format!("Bearer {t}"))
        .map(|(i, _)| *i);
    let Some(installation) = installation else {
        return refused();
    };
    let (owner, n) = if installation == 11 {
        (shared.login.clone(), 3)
    } else {
        ("acme".to_owned(), 2)
    };
    let repos: Vec<_> = (0..n)
        .map(|i| {
            let full = format!("{owner}/app-{i}");
            json!({"id": installation * 100 + i, "name": format!("app-{i}"), "full_name": full,
                   "private": true, "owner": {"login": owner},
                   "html_url": format!("https://github.com/{full}"),
                   "clone_url": format!("https://github.com/{full}.git"),
                   "ssh_url": format!("git@github.com:{full}.git"), "default_branch": "main"})
        })
        .collect();
    Json(json!({"total_count": n, "repositories": repos})).into_response()
}
