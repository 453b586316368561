//! `GET /api/models`: the models pi offers, asked of pi itself. pi lists what it has auth for,
//! which here is what the relay's gateway serves (pi's `models.json` with placeholder keys) and
//! the agent template's providers. The answer is kept, with the facts it follows from (the
//! image, the `models.json` a session would get, the template): while they hold, a request starts
//! nothing. Otherwise a short-lived sandbox of the environment is started, asked
//! `get_available_models`, and removed; it has no network and no secrets (listing needs
//! neither). When every environment fails, the last good answer is given, marked degraded.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use relay_sandbox::{OutputChunk, SandboxId, SandboxIo};
use relay_store::EnvironmentRow;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::egress::session_models;
use crate::spec::EnvConfig;
use crate::{SessionError, SessionService};

/// How long one environment may take to answer (start included).
const INTROSPECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// pi's answer is one line; a larger one is refused.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// Where an answer came from (the protocol's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelsSource {
    /// The environment the `models_introspection` setting names.
    ConfiguredEnvironment,
    /// The default environment, or another one.
    FallbackEnvironment,
    /// Every environment failed: the last good answer.
    FallbackCache,
    /// Every environment failed and there is no earlier answer.
    Unavailable,
}

impl ModelsSource {
    /// The protocol's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelsSource::ConfiguredEnvironment => "configured-environment",
            ModelsSource::FallbackEnvironment => "fallback-environment",
            ModelsSource::FallbackCache => "fallback-cache",
            ModelsSource::Unavailable => "unavailable",
        }
    }
}

/// The answer to `GET /api/models`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelsAnswer {
    /// pi's models, as pi describes them.
    pub models: Vec<Value>,
    /// Where they came from.
    pub source: ModelsSource,
    /// The environment asked.
    pub environment_id: Option<String>,
    /// For a degraded answer: what it is.
    pub message: Option<String>,
    /// Not a fresh answer from pi.
    pub degraded: bool,
    /// Why environments failed.
    pub error: Option<String>,
}

/// The kept answer.
#[derive(Debug, Default)]
pub(crate) struct ModelsCache {
    fresh: Option<(String, ModelsAnswer)>,
    last_good: Option<ModelsAnswer>,
}

impl SessionService {
    /// The models pi offers (see the module's description).
    pub async fn models(&self) -> Result<ModelsAnswer, SessionError> {
        let inner = &self.inner;
        let mut cache = inner.models.lock().await;
        let mut errors = Vec::new();
        // The same for every environment: what a new session's pi would be given.
        let models_json = self.introspection_models_json().await;
        for (env, source) in self.candidates().await? {
            let env_cfg = EnvConfig::parse(&env.config);
            let image = env_cfg
                .image
                .clone()
                .unwrap_or_else(|| inner.cfg.default_image.clone());
            let image_id = match inner.image_id(&image).await {
                Ok(i) => i,
                Err(e) => {
                    errors.push(format!("{} ({}): {e}", env.id, env.sandbox_type));
                    continue;
                }
            };
            let fingerprint = format!("{image_id}\n{models_json}");
            if let Some((f, answer)) = &cache.fresh
                && *f == fingerprint
            {
                return Ok(answer.clone());
            }
            match self.ask_pi(&env_cfg, image_id, &models_json).await {
                Ok(models) => {
                    let answer = ModelsAnswer {
                        models,
                        source,
                        environment_id: Some(env.id.clone()),
                        message: None,
                        degraded: false,
                        error: None,
                    };
                    cache.fresh = Some((fingerprint, answer.clone()));
                    cache.last_good = Some(answer.clone());
                    return Ok(answer);
                }
                Err(e) => {
                    tracing::warn!(environment = %env.id, error = %e, "model introspection failed");
                    errors.push(format!("{} ({}): {e}", env.id, env.sandbox_type));
                }
            }
        }
        let error = (!errors.is_empty()).then(|| errors.join(" | "));
        Ok(match &cache.last_good {
            Some(good) => ModelsAnswer {
                source: ModelsSource::FallbackCache,
                message: Some(
                    "Introspection unavailable, using last successful introspection".into(),
                ),
                degraded: true,
                error,
                ..good.clone()
            },
            None => ModelsAnswer {
                models: Vec::new(),
                source: ModelsSource::Unavailable,
                environment_id: None,
                message: Some(
                    "Model introspection unavailable. Configure a working introspection \
                     environment and refresh models."
                        .into(),
                ),
                degraded: true,
                error: Some(error.unwrap_or_else(|| "model introspection unavailable".into())),
            },
        })
    }

    /// Forgets the kept answer: the next request asks pi again.
    pub async fn refresh_models(&self) {
        self.inner.models.lock().await.fresh = None;
    }

    /// The environments to ask, in order: the one the `models_introspection` setting names,
    /// then the default, then the others.
    async fn candidates(&self) -> Result<Vec<(EnvironmentRow, ModelsSource)>, SessionError> {
        let store = &self.inner.store;
        let configured = store
            .setting("models_introspection")
            .await?
            .and_then(|v| serde_json::from_str::<Value>(&v).ok())
            .and_then(|v| v.get("environmentId")?.as_str().map(str::to_owned));
        let all = store.environments().await?;
        let mut out: Vec<(EnvironmentRow, ModelsSource)> = Vec::new();
        if let Some(id) = configured
            && let Some(e) = all.iter().find(|e| e.id == id)
        {
            out.push((e.clone(), ModelsSource::ConfiguredEnvironment));
        }
        let mut rest: Vec<&EnvironmentRow> = all.iter().collect();
        rest.sort_by_key(|e| !e.is_default);
        for e in rest {
            if !out.iter().any(|(o, _)| o.id == e.id) {
                out.push((e.clone(), ModelsSource::FallbackEnvironment));
            }
        }
        Ok(out)
    }

    /// The `models.json` a new session would get.
    async fn introspection_models_json(&self) -> String {
        let inner = &self.inner;
        let template = inner.template_models().await;
        let routes = inner.gateway.routes();
        let models = session_models(template.clone(), template.as_ref(), &routes);
        serde_json::to_string_pretty(&models).unwrap_or_default()
    }

    /// Starts a throwaway sandbox, asks its pi `get_available_models`, removes it.
    async fn ask_pi(
        &self,
        env_cfg: &EnvConfig,
        image_id: String,
        models_json: &str,
    ) -> Result<Vec<Value>, SessionError> {
        let inner = &self.inner;
        let id = uuid::Uuid::new_v4().to_string();
        let storage = inner.sandbox.storage();
        let user = inner.cfg.sandbox_user;
        let work = async {
            storage.prepare(&id, user).await?;
            storage
                .replace_agent_file(
                    &id,
                    user,
                    "models.json",
                    Bytes::from(models_json.to_owned()),
                )
                .await?;
            // No network and no secrets: listing needs neither.
            let mut cfg = env_cfg.clone();
            cfg.network_mode = Some("none".into());
            let spec = crate::spec::spec_for(&inner.cfg, &id, &cfg, image_id, false);
            let cid = inner.sandbox.create(&spec).await?;
            let asked = async {
                let io = inner.sandbox.attach(&cid).await?;
                inner.sandbox.start(&cid).await?;
                read_models(io).await
            }
            .await;
            if let Err(e) = inner.sandbox.remove(&cid).await {
                tracing::warn!(sandbox = %cid.0, error = %e, "cannot remove the introspection sandbox");
            }
            asked
        };
        let result = tokio::time::timeout(INTROSPECTION_TIMEOUT, work)
            .await
            .unwrap_or_else(|_| {
                Err(SessionError::SandboxUnavailable(
                    relay_sandbox::SandboxError::runtime("pi did not list its models in time"),
                ))
            });
        if result.is_err() {
            // A sandbox left by a timeout carries the session labels of `id`: removed here, or
            // as an orphan at the next start.
            let _ = inner
                .sandbox
                .remove(&SandboxId(crate::spec::container_name(&id)))
                .await;
        }
        if let Err(e) = storage.remove(&id).await {
            tracing::warn!(error = %e, "cannot remove the introspection sandbox's files");
        }
        result
    }
}

/// Sends `get_available_models` on pi's stdin and reads its stdout until the answer.
async fn read_models(io: SandboxIo) -> Result<Vec<Value>, SessionError> {
    let SandboxIo {
        mut output,
        mut input,
    } = io;
    let request = b"{\"id\":\"relay-models\",\"type\":\"get_available_models\"}\n";
    input.write_all(request).await?;
    input.flush().await?;
    let mut buf = Vec::new();
    let failed =
        |m: String| SessionError::SandboxUnavailable(relay_sandbox::SandboxError::runtime(m));
    while let Some(chunk) = output.next().await {
        let OutputChunk::Stdout(b) = chunk? else {
            continue;
        };
        buf.extend_from_slice(&b);
        while let Some(nl) = buf.iter().position(|&c| c == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if v["type"] != "response" || v["id"] != "relay-models" {
                continue;
            }
            if v["success"] != true {
                return Err(failed(format!(
                    "pi refused get_available_models: {}",
                    v["error"]
                )));
            }
            return match v.pointer("/data/models").and_then(Value::as_array) {
                Some(m) => Ok(m.clone()),
                None => Err(failed("pi's answer has no models".into())),
            };
        }
        if buf.len() > MAX_ANSWER_BYTES {
            return Err(failed("pi's answer is too large".into()));
        }
    }
    Err(failed("pi exited before listing its models".into()))
}
