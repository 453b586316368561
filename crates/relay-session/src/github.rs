//! GitHub, as the relay uses it with a personal access token: the token checked against the
//! API (`GET /user`) and kept sealed by the vault (never in plain text, never listed with
//! secrets, never given to a sandbox), and the repositories it can see, every page followed and
//! recorded for code sessions. The API's base URL is the operator's (GitHub Enterprise, or a
//! local fake in tests).

use std::time::Duration;

pub use relay_store::RepoRow;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::{SessionError, SessionService};

/// GitHub's public API.
pub const DEFAULT_GITHUB_API: &str = "https://api.github.com";
/// The token's id among the relay's credentials (also what its sealing is bound to).
const TOKEN_ID: &str = "relay-credential:github-token";
/// Largest answer read from the API.
const MAX_ANSWER: usize = 16 * 1024 * 1024;
/// Deadline of one API request.
const API_TIMEOUT: Duration = Duration::from_secs(20);
/// Pages of repositories followed at most (100 each).
const MAX_PAGES: usize = 50;
/// The error when no token is configured.
pub const NOT_CONFIGURED: &str =
    "GitHub auth not configured. Connect a GitHub App or add a Personal Access Token.";

/// Who a token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenOwner {
    /// Their login.
    pub user: String,
    /// The token's OAuth scopes (empty for fine-grained tokens).
    pub scopes: Vec<String>,
    /// Requests left in the current rate-limit window, when GitHub says.
    pub rate_limit_remaining: Option<u64>,
}

/// What `GET /api/github/token` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenStatus {
    /// No token.
    NotConfigured,
    /// A token GitHub refuses or could not check, and why.
    Invalid(String),
    /// A working token.
    Valid(TokenOwner),
}

/// The URL of the next page in a `Link` header, if any.
pub fn next_link(link: &str) -> Option<&str> {
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"");
        let url = url.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then_some(url)
    })
}

/// A repository from GitHub's JSON.
pub fn repo_of(v: &Value) -> Option<RepoRow> {
    let id = v["id"].as_u64()?;
    Some(RepoRow {
        id: id.to_string(),
        name: v["name"].as_str()?.to_owned(),
        full_name: v["full_name"].as_str()?.to_owned(),
        owner: v["owner"]["login"].as_str()?.to_owned(),
        is_private: v["private"].as_bool().unwrap_or(false),
        description: v["description"].as_str().map(str::to_owned),
        html_url: v["html_url"].as_str().unwrap_or_default().to_owned(),
        clone_url: v["clone_url"].as_str()?.to_owned(),
        ssh_url: v["ssh_url"].as_str().map(str::to_owned),
        default_branch: v["default_branch"].as_str().unwrap_or("main").to_owned(),
    })
}

impl SessionService {
    fn github_api(&self) -> &str {
        self.inner.cfg.github_api.trim_end_matches('/')
    }

    pub(crate) async fn github_get(
        &self,
        url: &str,
        token: &SecretString,
    ) -> Result<relay_gateway::Fetched, SessionError> {
        self.github_call(relay_gateway::Method::GET, url, token)
            .await
    }

    /// A request without a body to GitHub's API with `token`.
    pub(crate) async fn github_call(
        &self,
        method: relay_gateway::Method,
        url: &str,
        token: &SecretString,
    ) -> Result<relay_gateway::Fetched, SessionError> {
        let auth = format!("Bearer {}", token.expose_secret());
        let headers = [
            ("authorization", auth.as_str()),
            ("accept", "application/vnd.github+json"),
            ("x-github-api-version", "2022-11-28"),
        ];
        self.inner
            .gateway
            .request(method, url, &headers, MAX_ANSWER, API_TIMEOUT)
            .await
            .map_err(|e| {
                SessionError::GitHub(format!(
                    "GitHub API unreachable: {}",
                    relay_gateway::error_chain(&e)
                ))
            })
    }

    /// Who `token` belongs to, as GitHub says; `Invalid token` when GitHub refuses it.
    async fn token_owner(&self, token: &SecretString) -> Result<TokenOwner, SessionError> {
        let got = self
            .github_get(&format!("{}/user", self.github_api()), token)
            .await?;
        match got.status {
            200 => {}
            401 => return Err(SessionError::GitHub("Invalid token".into())),
            s => {
                let body =
                    String::from_utf8_lossy(&got.body[..got.body.len().min(500)]).into_owned();
                return Err(SessionError::GitHub(format!(
                    "GitHub API error: {s} {body}"
                )));
            }
        }
        let user: Value = serde_json::from_slice(&got.body)
            .map_err(|_| SessionError::GitHub("GitHub API error: the user is not JSON".into()))?;
        let header = |name: &str| got.headers.get(name).and_then(|v| v.to_str().ok());
        Ok(TokenOwner {
            user: user["login"].as_str().unwrap_or_default().to_owned(),
            scopes: header("x-oauth-scopes")
                .map(|s| {
                    s.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            rate_limit_remaining: header("x-ratelimit-remaining").and_then(|v| v.parse().ok()),
        })
    }

    async fn github_token(&self) -> Result<Option<SecretString>, SessionError> {
        let Some(sealed) = self.inner.store.credential(TOKEN_ID).await? else {
            return Ok(None);
        };
        Ok(Some(
            self.inner.secrets.vault().open_secret(TOKEN_ID, &sealed)?,
        ))
    }

    /// Whether a token is configured and works.
    pub async fn github_token_status(&self) -> Result<TokenStatus, SessionError> {
        let Some(token) = self.github_token().await? else {
            return Ok(TokenStatus::NotConfigured);
        };
        match self.token_owner(&token).await {
            Ok(owner) => Ok(TokenStatus::Valid(owner)),
            Err(SessionError::GitHub(why)) => Ok(TokenStatus::Invalid(why)),
            Err(e) => Err(e),
        }
    }

    /// Checks `token` with GitHub and keeps it, sealed.
    pub async fn set_github_token(&self, token: &str) -> Result<TokenOwner, SessionError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(SessionError::Invalid("Token is required".into()));
        }
        if token.len() > 1024 || token.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(SessionError::Invalid("Invalid token".into()));
        }
        let token = SecretString::from(token.to_owned());
        let owner = self.token_owner(&token).await?;
        let sealed = self.inner.secrets.vault().seal_secret(TOKEN_ID, &token);
        self.inner
            .store
            .set_credential(TOKEN_ID, sealed, &relay_hub::timestamp())
            .await?;
        Ok(owner)
    }

    /// Forgets the token.
    pub async fn delete_github_token(&self) -> Result<(), SessionError> {
        self.inner.store.delete_credential(TOKEN_ID).await?;
        Ok(())
    }

    /// Whether a token is configured (without asking GitHub).
    pub async fn github_token_configured(&self) -> Result<bool, SessionError> {
        Ok(self.inner.store.credential(TOKEN_ID).await?.is_some())
    }

    /// The repositories GitHub lists from `url` on, every page on the same API (the token goes
    /// nowhere else): a page is an array, or an object holding one under `field`.
    pub(crate) async fn repo_pages(
        &self,
        mut url: String,
        token: &SecretString,
        field: Option<&str>,
    ) -> Result<Vec<RepoRow>, SessionError> {
        let api = self.github_api().to_owned();
        let mut repos = Vec::new();
        for _ in 0..MAX_PAGES {
            let got = self.github_get(&url, token).await?;
            if got.status != 200 {
                let body =
                    String::from_utf8_lossy(&got.body[..got.body.len().min(500)]).into_owned();
                return Err(SessionError::GitHub(match got.status {
                    401 => "Invalid token".into(),
                    s => format!("GitHub API error: {s} {body}"),
                }));
            }
            let page: Value = serde_json::from_slice(&got.body).map_err(|_| {
                SessionError::GitHub("GitHub API error: the repositories are not JSON".into())
            })?;
            let list = match field {
                Some(f) => &page[f],
                None => &page,
            };
            repos.extend(list.as_array().into_iter().flatten().filter_map(repo_of));
            let next = got
                .headers
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(next_link);
            match next {
                Some(n) if n.starts_with(&format!("{api}/")) => url = n.to_owned(),
                Some(n) => {
                    tracing::warn!(
                        next = n,
                        "GitHub's next page is not on its API; not followed"
                    );
                    break;
                }
                None => break,
            }
        }
        Ok(repos)
    }

    /// The repositories the relay can reach, recorded for code sessions: the GitHub App's
    /// installations' when an App is connected (the personal access token's if that fails), else
    /// the token's. Also which of the two answered.
    pub async fn github_repos(&self) -> Result<(RepoSource, Vec<RepoRow>), SessionError> {
        let app_failure = match self.github_app_repos().await {
            Ok(Some(repos)) => return self.recorded(RepoSource::App, repos).await,
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "the GitHub App's repositories could not be listed; trying the token");
                Some(e)
            }
        };
        let Some(token) = self.github_token().await? else {
            return Err(match app_failure {
                Some(e) => SessionError::GitHub(format!(
                    "{e} PAT fallback is not configured, so the operation cannot continue."
                )),
                None => SessionError::GitHubNotConfigured,
            });
        };
        let url = format!(
            "{}/user/repos?per_page=100&affiliation=owner,collaborator,organization_member&sort=full_name",
            self.github_api()
        );
        let repos = self.repo_pages(url, &token, None).await?;
        self.recorded(RepoSource::Token, repos).await
    }

    async fn recorded(
        &self,
        source: RepoSource,
        repos: Vec<RepoRow>,
    ) -> Result<(RepoSource, Vec<RepoRow>), SessionError> {
        self.inner
            .store
            .upsert_repos(repos.clone(), &relay_hub::timestamp())
            .await?;
        Ok((source, repos))
    }
}

/// Which credential listed repositories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoSource {
    /// The personal access token (`pat`).
    Token,
    /// The GitHub App's installations (`github_app`).
    App,
}

impl RepoSource {
    /// The protocol's name.
    pub fn as_str(self) -> &'static str {
        match self {
            RepoSource::Token => "pat",
            RepoSource::App => "github_app",
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_next_page_is_found_among_the_links() {
        let link = r#"<https://api.github.com/user/repos?page=2>; rel="next", <https://api.github.com/user/repos?page=5>; rel="last""#;
        assert_eq!(
            next_link(link),
            Some("https://api.github.com/user/repos?page=2")
        );
        let last = r#"<https://api.github.com/user/repos?page=1>; rel="prev", <https://api.github.com/user/repos?page=1>; rel="first""#;
        assert_eq!(next_link(last), None);
        assert_eq!(next_link(""), None);
    }

    #[test]
    fn a_repository_is_read_from_githubs_json() {
        let r = repo_of(&json!({
            "id": 1296269, "name": "Hello-World", "full_name": "octocat/Hello-World",
            "owner": {"login": "octocat"}, "private": false, "description": null,
            "html_url": "https://github.com/octocat/Hello-World",
            "clone_url": "https://github.com/octocat/Hello-World.git",
            "ssh_url": "git@github.com:octocat/Hello-World.git"
        }))
        .unwrap();
        assert_eq!(r.id, "1296269");
        assert_eq!(r.owner, "octocat");
        assert_eq!(r.default_branch, "main");
        assert!(repo_of(&json!({"id": "x"})).is_none());
    }
}
