//! A GitHub App connected to the relay: its id and installations in the protected setting
//! `github_app_config`, its private key (and webhook secret) sealed among the relay's
//! credentials. The relay proves it is the App with a short-lived RS256 JWT (`iss` = the App's
//! id), checked against `GET /app` when it connects.

use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use relay_store::RepoRow;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::{SessionError, SessionService};

/// The App's configuration among the settings (protected: never shown or set by clients).
const CONFIG_KEY: &str = "github_app_config";
/// The App's private key among the relay's credentials.
const KEY_ID: &str = "relay-credential:github-app-private-key";
/// The App's webhook secret among the relay's credentials.
const WEBHOOK_ID: &str = "relay-credential:github-app-webhook-secret";

/// An installation token is renewed when it has less than this left (GitHub gives an hour).
const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

/// Installation id → its token and when it expires.
pub(crate) type InstallationTokens =
    tokio::sync::Mutex<std::collections::HashMap<u64, (SecretString, SystemTime)>>;

/// An App to connect.
#[derive(Debug)]
pub struct AppConnection {
    /// Its id.
    pub app_id: u64,
    /// Its private key (PEM).
    pub private_key: SecretString,
    /// Its webhook secret, if any.
    pub webhook_secret: Option<SecretString>,
    /// The installations the relay uses (all when empty).
    pub installation_ids: Vec<u64>,
}

/// What `GET /api/github/app/status` reports.
#[derive(Clone, Debug, PartialEq)]
pub struct AppStatus {
    /// The App's id, when one is connected.
    pub app_id: Option<u64>,
    /// What GitHub says of it (`name`, `slug`), or why it could not be asked.
    pub app: Result<Option<Value>, String>,
    /// Whether its private key is kept.
    pub has_private_key: bool,
    /// Whether its webhook secret is kept.
    pub has_webhook_secret: bool,
    /// The installations the relay uses.
    pub installation_ids: Vec<u64>,
}

/// A JWT that identifies App `app_id`, valid for nine minutes (GitHub allows ten), issued a
/// minute in the past for clocks that drift.
pub fn app_jwt(app_id: u64, key: &EncodingKey, now: u64) -> Result<String, SessionError> {
    let claims =
        json!({"iat": now.saturating_sub(60), "exp": now + 540, "iss": app_id.to_string()});
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, key)
        .map_err(|e| SessionError::GitHub(format!("cannot sign the App's token: {e}")))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn key_of(pem: &SecretString) -> Result<EncodingKey, SessionError> {
    EncodingKey::from_rsa_pem(pem.expose_secret().trim().as_bytes())
        .map_err(|e| SessionError::Invalid(format!("Invalid private key: {e}")))
}

impl SessionService {
    async fn app_config(&self) -> Result<Option<(u64, Vec<u64>)>, SessionError> {
        let Some(text) = self.inner.store.setting(CONFIG_KEY).await? else {
            return Ok(None);
        };
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let Some(app_id) = v["appId"].as_u64() else {
            return Ok(None);
        };
        let ids = v["installationIds"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        Ok(Some((app_id, ids)))
    }

    async fn app_credential(&self, id: &str) -> Result<Option<SecretString>, SessionError> {
        match self.inner.store.credential(id).await? {
            Some(sealed) => Ok(Some(self.inner.secrets.vault().open_secret(id, &sealed)?)),
            None => Ok(None),
        }
    }

    /// `GET <api>/app` as App `app_id`: what GitHub says of it.
    async fn app_get(
        &self,
        path: &str,
        app_id: u64,
        key: &EncodingKey,
    ) -> Result<Value, SessionError> {
        let jwt = SecretString::from(app_jwt(app_id, key, now())?);
        let url = format!("{}{path}", self.inner.cfg.github_api.trim_end_matches('/'));
        let got = self.github_get(&url, &jwt).await?;
        if got.status != 200 {
            let body = String::from_utf8_lossy(&got.body[..got.body.len().min(500)]).into_owned();
            return Err(SessionError::GitHub(format!(
                "GitHub App check failed: {} {body}",
                got.status
            )));
        }
        serde_json::from_slice(&got.body)
            .map_err(|_| SessionError::GitHub("GitHub API error: the answer is not JSON".into()))
    }

    /// Connects a GitHub App: its key must sign a token GitHub accepts (`GET /app`).
    pub async fn connect_github_app(&self, app: AppConnection) -> Result<Value, SessionError> {
        if app.app_id == 0 {
            return Err(SessionError::Invalid("appId is required".into()));
        }
        if app.private_key.expose_secret().trim().is_empty() {
            return Err(SessionError::Invalid("privateKey is required".into()));
        }
        let key = key_of(&app.private_key)?;
        self.app_get("/app", app.app_id, &key).await?;
        let mut ids = app.installation_ids;
        ids.sort_unstable();
        ids.dedup();
        ids.retain(|i| *i > 0);
        let mut config = json!({"appId": app.app_id});
        if !ids.is_empty() {
            config["installationIds"] = json!(ids);
        }
        let vault = self.inner.secrets.vault();
        let at = relay_hub::timestamp();
        let trimmed = SecretString::from(app.private_key.expose_secret().trim().to_owned());
        let store = &self.inner.store;
        store
            .set_credential(KEY_ID, vault.seal_secret(KEY_ID, &trimmed), &at)
            .await?;
        match app
            .webhook_secret
            .filter(|w| !w.expose_secret().trim().is_empty())
        {
            Some(w) => {
                store
                    .set_credential(WEBHOOK_ID, vault.seal_secret(WEBHOOK_ID, &w), &at)
                    .await?
            }
            None => {
                store.delete_credential(WEBHOOK_ID).await?;
            }
        }
        store
            .put_setting(CONFIG_KEY, &config.to_string(), &at)
            .await?;
        Ok(config)
    }

    /// Disconnects the GitHub App (its configuration and keys are forgotten).
    pub async fn disconnect_github_app(&self) -> Result<(), SessionError> {
        let store = &self.inner.store;
        store.delete_setting(CONFIG_KEY).await?;
        store.delete_credential(KEY_ID).await?;
        store.delete_credential(WEBHOOK_ID).await?;
        Ok(())
    }

    /// The connected App, if any, and what GitHub says of it.
    pub async fn github_app_status(&self) -> Result<AppStatus, SessionError> {
        let config = self.app_config().await?;
        let key = self.app_credential(KEY_ID).await?;
        let has_webhook_secret = self.inner.store.credential(WEBHOOK_ID).await?.is_some();
        let app = match (&config, &key) {
            (Some((app_id, _)), Some(pem)) => match key_of(pem) {
                Ok(k) => match self.app_get("/app", *app_id, &k).await {
                    Ok(v) => Ok(Some(v)),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            },
            _ => Ok(None),
        };
        Ok(AppStatus {
            app_id: config.as_ref().map(|c| c.0),
            app,
            has_private_key: key.is_some(),
            has_webhook_secret,
            installation_ids: config.map(|c| c.1).unwrap_or_default(),
        })
    }

    /// The App's installations (those configured, when some are).
    pub async fn github_app_installations(&self) -> Result<Vec<Value>, SessionError> {
        let (Some((app_id, ids)), Some(pem)) =
            (self.app_config().await?, self.app_credential(KEY_ID).await?)
        else {
            return Err(SessionError::GitHubAppNotConfigured);
        };
        let list = self
            .app_get("/app/installations?per_page=100", app_id, &key_of(&pem)?)
            .await?;
        Ok(list
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| ids.is_empty() || i["id"].as_u64().is_some_and(|id| ids.contains(&id)))
            .map(|i| {
                json!({
                    "id": i["id"],
                    "account": {"login": i["account"]["login"], "type": i["account"]["type"]},
                    "repositorySelection": i["repository_selection"],
                    "accessTokensUrl": i["access_tokens_url"],
                    "repositoriesUrl": i["repositories_url"],
                    "suspendedAt": i["suspended_at"],
                })
            })
            .collect())
    }

    /// A token of installation `installation`: kept while it has more than five minutes left,
    /// else asked of GitHub (`POST /app/installations/:id/access_tokens`).
    pub(crate) async fn installation_token(
        &self,
        app_id: u64,
        key: &EncodingKey,
        installation: u64,
    ) -> Result<SecretString, SessionError> {
        let mut tokens = self.inner.installation_tokens.lock().await;
        if let Some((token, expires)) = tokens.get(&installation)
            && SystemTime::now() + RENEW_BEFORE < *expires
        {
            return Ok(token.clone());
        }
        let jwt = SecretString::from(app_jwt(app_id, key, now())?);
        let url = format!(
            "{}/app/installations/{installation}/access_tokens",
            self.inner.cfg.github_api.trim_end_matches('/')
        );
        let got = self
            .github_call(relay_gateway::Method::POST, &url, &jwt)
            .await?;
        let v: Value = serde_json::from_slice(&got.body).unwrap_or(Value::Null);
        let (Some(token), Some(expires)) = (
            v["token"].as_str().filter(|_| got.status == 201),
            v["expires_at"]
                .as_str()
                .and_then(|e| humantime::parse_rfc3339_weak(e).ok()),
        ) else {
            let body = String::from_utf8_lossy(&got.body[..got.body.len().min(500)]).into_owned();
            return Err(SessionError::GitHub(format!(
                "GitHub App token for installation {installation} refused: {} {body}",
                got.status
            )));
        };
        let token = SecretString::from(token.to_owned());
        tokens.insert(installation, (token.clone(), expires));
        Ok(token)
    }

    /// The repositories of the App's installations (the configured ones, else all), sorted by
    /// full name; `None` when no App is connected.
    pub(crate) async fn github_app_repos(&self) -> Result<Option<Vec<RepoRow>>, SessionError> {
        let (Some((app_id, configured)), Some(pem)) =
            (self.app_config().await?, self.app_credential(KEY_ID).await?)
        else {
            return Ok(None);
        };
        let key = key_of(&pem)?;
        let ids: Vec<u64> = if configured.is_empty() {
            self.app_get("/app/installations?per_page=100", app_id, &key)
                .await?
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["id"].as_u64())
                .collect()
        } else {
            configured
        };
        let mut repos: Vec<RepoRow> = Vec::new();
        for id in ids {
            let token = self.installation_token(app_id, &key, id).await?;
            let url = format!(
                "{}/installation/repositories?per_page=100",
                self.inner.cfg.github_api.trim_end_matches('/')
            );
            for r in self.repo_pages(url, &token, Some("repositories")).await? {
                if !repos.iter().any(|have| have.id == r.id) {
                    repos.push(r);
                }
            }
        }
        repos.sort_by(|a, b| a.full_name.cmp(&b.full_name));
        Ok(Some(repos))
    }
}
