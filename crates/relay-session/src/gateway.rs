//! The egress gateway's part in sessions' lives: the providers it serves (worked out from the
//! secrets and the agent template at startup and whenever secrets change), a session's socket
//! opened before its sandbox starts and closed when it is archived or deleted, its `models.json`
//! written before pi starts, and what the gateway saw for a session.

use bytes::Bytes;
use relay_gateway::Routes;
use relay_store::{EnvironmentRow, SessionRow};
use serde_json::Value;

use crate::egress::{plan_providers, session_models};
use crate::service::Inner;
use crate::spec::{EnvConfig, has_egress};
use crate::{EgressView, SessionError, SessionService};

/// pi's model configuration in its agent directory.
const MODELS_JSON: &str = "models.json";
/// Largest `models.json` the relay reads (a session's or the template's).
const MAX_MODELS_BYTES: u64 = 4 * 1024 * 1024;

impl Inner {
    /// Whether a sandbox of an environment with `env` uses the gateway.
    pub(crate) fn egress_for(&self, env: &EnvConfig) -> bool {
        has_egress(
            &env.network(&self.cfg.network),
            self.sandbox.capabilities().egress,
        )
    }

    /// The environment of session `row` (the default one when it names none).
    pub(crate) async fn environment_of(
        &self,
        row: &SessionRow,
    ) -> Result<EnvironmentRow, SessionError> {
        let env = match &row.environment_id {
            Some(e) => self.store.environment(e).await?,
            None => None,
        };
        match env {
            Some(e) => Ok(e),
            None => self
                .store
                .default_environment()
                .await?
                .ok_or(SessionError::NoDefaultEnvironment),
        }
    }

    /// Serves session `id`'s egress socket with its environment's policy (a session served
    /// already only gets the policy). Nothing for a sandbox without the gateway.
    pub(crate) fn open_gateway(&self, id: &str, env: &EnvConfig) -> Result<(), SessionError> {
        if !self.egress_for(env) {
            return Ok(());
        }
        let socket = self.sandbox.storage().egress_socket(id);
        self.gateway
            .open(id, &socket, env.egress_policy())
            .map_err(|e| SessionError::Io(std::io::Error::other(e)))
    }

    /// Before pi starts in session `id`'s sandbox (none of it runs): its socket served and its
    /// `models.json` pointing at the gateway.
    pub(crate) async fn prepare_egress(
        &self,
        id: &str,
        env: &EnvConfig,
    ) -> Result<(), SessionError> {
        if !self.egress_for(env) {
            return Ok(());
        }
        self.open_gateway(id, env)?;
        self.write_models(id).await
    }

    /// The agent template's `models.json`, if it has one that parses.
    pub(crate) async fn template_models(&self) -> Option<Value> {
        let path = self.cfg.agent_template.as_ref()?.join(MODELS_JSON);
        let read = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the agent template's models.json");
                    return None;
                }
            };
            let mut text = Vec::new();
            if let Err(e) = file.take(MAX_MODELS_BYTES).read_to_end(&mut text) {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the agent template's models.json");
                return None;
            }
            match serde_json::from_slice::<Value>(&text) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "the agent template's models.json is not JSON (comments are not supported here); its providers are not served by the gateway");
                    None
                }
            }
        })
        .await;
        read.ok().flatten()
    }

    /// Points session `id`'s `models.json` at the gateway (see [`session_models`]). A file that
    /// does not parse is kept beside as `models.json.invalid`, and the session told.
    async fn write_models(&self, id: &str) -> Result<(), SessionError> {
        let storage = self.sandbox.storage();
        let user = self.cfg.sandbox_user;
        let raw = storage
            .read_agent_file(id, MODELS_JSON, MAX_MODELS_BYTES)
            .await?;
        let current = match raw.as_deref().map(serde_json::from_slice::<Value>) {
            None => None,
            Some(Ok(v)) => Some(v),
            Some(Err(e)) => {
                let note = format!(
                    "relay: {MODELS_JSON} is not JSON ({e}); it was kept as {MODELS_JSON}.invalid \
                     and a new one written"
                );
                tracing::warn!(session = %id, "{note}");
                if let Ok(hub) = self.hubs.get_or_create(id).await {
                    hub.log(note);
                }
                let old = raw.clone().unwrap_or_default();
                storage
                    .replace_agent_file(id, user, &format!("{MODELS_JSON}.invalid"), old)
                    .await?;
                None
            }
        };
        let template = self.template_models().await;
        let routes = self.gateway.routes();
        if current.is_none() && routes.ids().next().is_none() {
            // Nothing to point anywhere: pi keeps its defaults.
            return Ok(());
        }
        let models = session_models(current.clone(), template.as_ref(), &routes);
        if current.as_ref() == Some(&models) {
            return Ok(());
        }
        let mut text = serde_json::to_vec_pretty(&models).map_err(std::io::Error::other)?;
        text.push(b'\n');
        storage
            .replace_agent_file(id, user, MODELS_JSON, Bytes::from(text))
            .await?;
        Ok(())
    }
}

impl SessionService {
    /// Works out the providers the gateway serves from the `ai_provider` secrets and the agent
    /// template, and serves them from now on, with the secrets bound to domains. Problems are
    /// logged.
    pub async fn refresh_providers(&self) -> Result<(), SessionError> {
        let inner = &self.inner;
        let keys = inner.secrets.provider_keys().await?;
        let template = inner.template_models().await;
        let plan = plan_providers(&keys, template.as_ref());
        for w in &plan.warnings {
            tracing::warn!("{w}");
        }
        let ids: Vec<String> = plan.routes.iter().map(|r| r.id.clone()).collect();
        inner.gateway.set_routes(Routes::new(plan.routes));
        inner
            .gateway
            .set_domain_secrets(inner.secrets.domain_secrets().await?);
        tracing::info!(providers = ?ids, "model providers served by the egress gateway");
        Ok(())
    }

    /// What session `id`'s sandbox may reach and what it did through the gateway.
    pub async fn egress(&self, id: &str) -> Result<EgressView, SessionError> {
        let inner = &self.inner;
        let row = inner.row(id).await?;
        let env = EnvConfig::parse(&inner.environment_of(&row).await?.config);
        let gateway = inner.egress_for(&env);
        let routes = inner.gateway.routes();
        Ok(EgressView {
            gateway,
            network: env.network(&inner.cfg.network).to_string(),
            policy: env.egress_policy(),
            providers: if gateway {
                routes.ids().map(str::to_owned).collect()
            } else {
                Vec::new()
            },
            usage: inner.gateway.usage(id),
        })
    }
}
