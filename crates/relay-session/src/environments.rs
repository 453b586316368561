//! [`EnvironmentService`]: how the sandboxes of a session are made (`/api/environments`): the
//! Docker image, the resource tier (CPU and memory limits), the idle timeout, non-secret
//! environment variables and the network mode, stored as the environment's JSON config with the
//! keys the session service reads (`image`, `resourceTier`, `idleTimeoutSeconds`, `envVars`,
//! `networkMode`). Configs are validated before they are stored, including that the image is
//! present on the host (the relay never pulls). There is always exactly one default
//! environment: it cannot be un-marked or deleted, only replaced by marking another.

use std::sync::Arc;

use relay_sandbox::{LABEL_BUILD_HASH, Network, Sandbox, SandboxError};
use relay_store::{EnvironmentPatch, EnvironmentRow, EnvironmentWrite, Store};
use serde_json::{Map, Value};

use crate::{SessionError, text};

/// Sandbox types of the protocol; only `docker` runs here.
pub const SANDBOX_TYPES: &[&str] = &["docker", "cloudflare", "gondolin"];
/// Resource tiers: small (1 CPU, 1 GiB), medium (2 CPUs, 2 GiB, the default), large (4 CPUs,
/// 4 GiB).
pub const RESOURCE_TIERS: &[&str] = &["small", "medium", "large"];
/// Bounds of `idleTimeoutSeconds`.
pub const IDLE_TIMEOUT_RANGE: std::ops::RangeInclusive<i64> = 60..=86_400;

/// An environment as clients see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Environment {
    /// The environment's id (a UUID).
    pub id: String,
    /// Its name.
    pub name: String,
    /// The provider type it runs on (`docker`).
    pub sandbox_type: String,
    /// Its configuration (image, resource tier, idle timeout, variables, network).
    pub config: Value,
    /// Sessions created without an environment use this one.
    pub is_default: bool,
    /// When it was created (ISO 8601, UTC).
    pub created_at: String,
    /// When it last changed (ISO 8601, UTC).
    pub updated_at: String,
}

impl From<EnvironmentRow> for Environment {
    fn from(r: EnvironmentRow) -> Environment {
        Environment {
            config: serde_json::from_str(&r.config).unwrap_or_else(|_| Value::Object(Map::new())),
            id: r.id,
            name: r.name,
            sandbox_type: r.sandbox_type,
            is_default: r.is_default,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// An environment to create.
#[derive(Clone, Debug)]
pub struct NewEnvironment {
    /// Its name.
    pub name: String,
    /// The provider type it runs on.
    pub sandbox_type: String,
    /// Its configuration, validated before it is stored.
    pub config: Value,
    /// Defaults to true for the first environment.
    pub is_default: Option<bool>,
}

/// A change: `None` fields stay; `config` replaces the whole config.
#[derive(Clone, Debug, Default)]
pub struct EnvironmentChange {
    /// A new name.
    pub name: Option<String>,
    /// Only used to validate `config` (an environment's type never changes).
    pub sandbox_type: Option<String>,
    /// A new configuration.
    pub config: Option<Value>,
    /// `Some(true)` makes it the default.
    pub is_default: Option<bool>,
}

/// A sandbox image present on the host, as `GET /api/environments/images` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxImage {
    /// The reference, which is what `config.image` takes.
    pub id: String,
    /// The name shown to clients (the reference).
    pub name: String,
    /// The reference again (the field clients read).
    pub image: String,
    /// The image's description label, or its short id.
    pub description: String,
    /// Whether this is the image of sessions whose environment names none.
    pub is_default: bool,
}

/// What a probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Sessions could run there now.
    pub available: bool,
    /// Why not.
    pub error: Option<String>,
}

/// The environment service; cheap to clone.
#[derive(Clone, Debug)]
pub struct EnvironmentService {
    store: Store,
    sandbox: Arc<dyn Sandbox>,
    default_image: String,
}

fn invalid(m: impl Into<String>) -> SessionError {
    SessionError::Invalid(m.into())
}

/// Checks the sandbox type: one of the protocol's, and the one this relay's provider runs.
pub fn validate_sandbox_type(t: &str, provider: &str) -> Result<(), SessionError> {
    if !SANDBOX_TYPES.contains(&t) {
        return Err(invalid(format!(
            "sandboxType must be one of: {}",
            SANDBOX_TYPES.join(", ")
        )));
    }
    if t != provider {
        return Err(invalid(format!(
            "sandboxType '{t}' is not supported by this relay; use {provider}"
        )));
    }
    Ok(())
}

/// Checks a config and returns it normalized (env var keys trimmed, empty keys dropped). Keys
/// the relay does not know are kept. Whether the image exists is checked separately.
pub fn normalize_config(config: &Value) -> Result<Value, SessionError> {
    let Some(obj) = config.as_object() else {
        return Err(invalid("config must be an object"));
    };
    let mut out = obj.clone();
    match obj.get("image") {
        None | Some(Value::Null) => {
            out.remove("image");
        }
        Some(Value::String(s)) if !s.trim().is_empty() && !s.chars().any(char::is_whitespace) => {}
        Some(_) => {
            return Err(invalid(
                "config.image must be an image reference such as pi-relay/sandbox-debian:1.6.0",
            ));
        }
    }
    match obj.get("resourceTier") {
        None | Some(Value::Null) => {
            out.remove("resourceTier");
        }
        Some(Value::String(s)) if RESOURCE_TIERS.contains(&s.as_str()) => {}
        Some(_) => {
            return Err(invalid(format!(
                "config.resourceTier must be one of: {}",
                RESOURCE_TIERS.join(", ")
            )));
        }
    }
    match obj.get("idleTimeoutSeconds") {
        None | Some(Value::Null) => {
            out.remove("idleTimeoutSeconds");
        }
        Some(v) if v.as_i64().is_some_and(|n| IDLE_TIMEOUT_RANGE.contains(&n)) => {}
        Some(_) => {
            return Err(invalid(
                "config.idleTimeoutSeconds must be an integer between 60 and 86400",
            ));
        }
    }
    match obj.get("networkMode") {
        None | Some(Value::Null) => {
            out.remove("networkMode");
        }
        // `container:<id>` (joining another sandbox's network) is not a network name.
        Some(Value::String(s)) if s.parse::<Network>().is_ok() => {}
        Some(_) => {
            return Err(invalid(
                "config.networkMode must be bridge, none, host or the name of a network",
            ));
        }
    }
    match obj.get("egressPolicy") {
        None | Some(Value::Null) => {
            out.remove("egressPolicy");
        }
        Some(Value::String(s)) => {
            s.parse::<relay_gateway::EgressMode>()
                .map_err(|e| invalid(format!("config.egressPolicy: {e}")))?;
        }
        Some(_) => {
            return Err(invalid(
                "config.egressPolicy must be \"deny\", \"allowlist\" or \"open\"",
            ));
        }
    }
    match obj.get("egressAllow") {
        None | Some(Value::Null) => {
            out.remove("egressAllow");
        }
        Some(Value::Array(items)) => {
            out.insert("egressAllow".into(), normalize_allow(items)?);
        }
        Some(_) => {
            return Err(invalid(
                "config.egressAllow must be an array of host names (`example.com`, \
                 `*.example.com`, optionally with `:port`)",
            ));
        }
    }
    match obj.get("envVars") {
        None | Some(Value::Null) => {
            out.remove("envVars");
        }
        Some(Value::Array(items)) => {
            out.insert("envVars".into(), Value::Array(normalize_env_vars(items)?));
        }
        Some(_) => return Err(invalid("config.envVars must be an array")),
    }
    Ok(Value::Object(out))
}

/// Most hosts an environment's allowlist names.
const MAX_ALLOW: usize = 256;

/// An allowlist's patterns, checked, lower-cased and without duplicates.
fn normalize_allow(items: &[Value]) -> Result<Value, SessionError> {
    if items.len() > MAX_ALLOW {
        return Err(invalid(format!(
            "config.egressAllow names at most {MAX_ALLOW} hosts"
        )));
    }
    let mut out: Vec<Value> = Vec::new();
    for item in items {
        let Some(raw) = item.as_str() else {
            return Err(invalid("config.egressAllow must be an array of strings"));
        };
        raw.parse::<relay_gateway::HostPattern>()
            .map_err(|e| invalid(format!("config.egressAllow: {e}")))?;
        let normal = Value::String(raw.trim().to_ascii_lowercase());
        if !out.contains(&normal) {
            out.push(normal);
        }
    }
    Ok(Value::Array(out))
}

fn normalize_env_vars(items: &[Value]) -> Result<Vec<Value>, SessionError> {
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for item in items {
        let Some(obj) = item.as_object() else {
            return Err(invalid(
                "config.envVars must be an array of {key, value} objects",
            ));
        };
        let key = match obj.get("key") {
            Some(Value::String(k)) => k.trim().to_owned(),
            _ => return Err(invalid("Invalid env var key: key must be a string")),
        };
        if key.is_empty() {
            continue;
        }
        let mut chars = key.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
            && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(invalid(format!("Invalid env var key: {key}")));
        }
        // The same names a secret may not take (a replaced `PATH` would not find pi, an
        // `LD_PRELOAD` would run in every process of the sandbox).
        if crate::secrets::is_reserved_variable(&key) {
            return Err(invalid(format!(
                "Env var key is reserved by the relay: {key}"
            )));
        }
        let Some(Value::String(value)) = obj.get("value") else {
            return Err(invalid(format!("Env var value must be a string: {key}")));
        };
        if value.contains('\0') {
            return Err(invalid(format!(
                "Env var value must not contain NUL bytes: {key}"
            )));
        }
        if seen.contains(&key) {
            return Err(invalid(format!("Duplicate env var key: {key}")));
        }
        seen.push(key.clone());
        out.push(serde_json::json!({"key": key, "value": value}));
    }
    Ok(out)
}

impl EnvironmentService {
    /// A service over `store`; images are checked against `sandbox`, and `default_image` is the
    /// image of environments that name none.
    pub fn new(store: Store, sandbox: Arc<dyn Sandbox>, default_image: String) -> Self {
        EnvironmentService {
            store,
            sandbox,
            default_image,
        }
    }

    /// Every environment, in creation order.
    pub async fn list(&self) -> Result<Vec<Environment>, SessionError> {
        Ok(self
            .store
            .environments()
            .await?
            .into_iter()
            .map(Environment::from)
            .collect())
    }

    /// One environment.
    pub async fn get(&self, id: &str) -> Result<Environment, SessionError> {
        self.store
            .environment(id)
            .await?
            .map(Environment::from)
            .ok_or(SessionError::EnvironmentNotFound)
    }

    /// Checks a config for `sandbox_type`, including that its image is on the host.
    async fn validate(&self, sandbox_type: &str, config: &Value) -> Result<Value, SessionError> {
        validate_sandbox_type(sandbox_type, self.sandbox.kind())?;
        let config = normalize_config(config)?;
        if let Some(image) = config.get("image").and_then(Value::as_str) {
            match self.sandbox.pin_image(image).await {
                Ok(_) => {}
                // The provider says where it looked and what to do.
                Err(SandboxError::ImageNotFound(m)) => return Err(invalid(m)),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(config)
    }

    /// Whether an environment of `sandbox_type` with `config` could run sessions now: the
    /// config is checked as for create (400 when it is invalid); then whether the provider
    /// answers. A type this relay does not run is "not available", with the reason.
    pub async fn probe(&self, sandbox_type: &str, config: &Value) -> Result<Probe, SessionError> {
        if !SANDBOX_TYPES.contains(&sandbox_type) {
            validate_sandbox_type(sandbox_type, self.sandbox.kind())?;
        }
        if sandbox_type != self.sandbox.kind() {
            return Ok(Probe {
                available: false,
                error: Some(format!(
                    "sandboxType '{sandbox_type}' is not supported by this relay; use {}",
                    self.sandbox.kind()
                )),
            });
        }
        self.validate(sandbox_type, config).await?;
        Ok(match self.sandbox.ping().await {
            Ok(()) => Probe {
                available: true,
                error: None,
            },
            Err(e) => Probe {
                available: false,
                error: Some(e.to_string()),
            },
        })
    }

    /// Creates an environment. The first one becomes the default unless told otherwise;
    /// marking one default un-marks the previous default.
    pub async fn create(&self, new: NewEnvironment) -> Result<Environment, SessionError> {
        let name = new.name.trim();
        if name.is_empty() {
            return Err(invalid("name is required"));
        }
        text::check_label("name", name, text::MAX_NAME_CHARS)?;
        let config = self.validate(&new.sandbox_type, &new.config).await?;
        let first = self.store.environment_count().await? == 0;
        let id = uuid::Uuid::new_v4().to_string();
        let now = relay_hub::timestamp();
        self.store
            .insert_environment(EnvironmentRow {
                id: id.clone(),
                name: name.to_owned(),
                sandbox_type: new.sandbox_type,
                config: config.to_string(),
                // Never zero defaults: the first environment is the default whatever it says.
                is_default: first || new.is_default.unwrap_or(false),
                created_at: now.clone(),
                updated_at: now,
            })
            .await?;
        self.get(&id).await
    }

    /// Changes an environment; `config` replaces the whole config.
    pub async fn update(
        &self,
        id: &str,
        change: EnvironmentChange,
    ) -> Result<Environment, SessionError> {
        let current = self.get(id).await?;
        let name = match change.name.as_deref().map(str::trim) {
            Some("") => return Err(invalid("name is required")),
            Some(n) => {
                text::check_label("name", n, text::MAX_NAME_CHARS)?;
                Some(n.to_owned())
            }
            None => None,
        };
        if let Some(t) = &change.sandbox_type {
            validate_sandbox_type(t, self.sandbox.kind())?;
        }
        let config = match &change.config {
            Some(c) => {
                let t = change
                    .sandbox_type
                    .as_deref()
                    .unwrap_or(&current.sandbox_type);
                Some(self.validate(t, c).await?.to_string())
            }
            None => None,
        };
        let patch = EnvironmentPatch {
            name,
            config,
            is_default: change.is_default,
            updated_at: relay_hub::timestamp(),
        };
        match self.store.update_environment(id, patch).await? {
            EnvironmentWrite::Done => self.get(id).await,
            EnvironmentWrite::NotFound => Err(SessionError::EnvironmentNotFound),
            EnvironmentWrite::IsDefault => Err(invalid(
                "The default environment stays the default until another environment is made \
                 the default (isDefault: true on that one)",
            )),
            EnvironmentWrite::InUse(_) => {
                Err(SessionError::Conflict("Environment is in use".into()))
            }
        }
    }

    /// Deletes an environment, unless sessions use it or it is the default.
    pub async fn delete(&self, id: &str) -> Result<(), SessionError> {
        match self.store.delete_environment(id).await? {
            EnvironmentWrite::Done => Ok(()),
            EnvironmentWrite::NotFound => Err(SessionError::EnvironmentNotFound),
            EnvironmentWrite::InUse(n) => Err(SessionError::Conflict(format!(
                "Environment is used by {n} session(s) that are not archived; archive or delete \
                 them first"
            ))),
            EnvironmentWrite::IsDefault => Err(SessionError::Conflict(
                "Cannot delete the default environment; make another environment the default \
                 first"
                    .into(),
            )),
        }
    }

    /// Sandbox images present on the host: the relay's default image (if present) and every
    /// local image built by this repository's image scripts (label `pi-relay.build-hash`).
    pub async fn images(&self) -> Result<Vec<SandboxImage>, SessionError> {
        let mut out: Vec<SandboxImage> = Vec::new();
        match self.sandbox.pin_image(&self.default_image).await {
            Ok(_) => out.push(SandboxImage {
                id: self.default_image.clone(),
                name: self.default_image.clone(),
                image: self.default_image.clone(),
                description: "The relay's default sandbox image (SANDBOX_DOCKER_IMAGE)".into(),
                is_default: true,
            }),
            Err(SandboxError::ImageNotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        if !self.sandbox.capabilities().image_listing {
            return Ok(out);
        }
        let mut listed = self.sandbox.list_images(LABEL_BUILD_HASH).await?;
        listed.sort_by(|a, b| a.tags.cmp(&b.tags));
        for img in listed {
            for tag in img.tags {
                if out.iter().any(|o| o.image == tag) {
                    continue;
                }
                let description = img
                    .labels
                    .get("org.opencontainers.image.description")
                    .cloned()
                    .unwrap_or_else(|| {
                        let short = img.id.trim_start_matches("sha256:");
                        format!("Local sandbox image {}", short.get(..12).unwrap_or(short))
                    });
                out.push(SandboxImage {
                    id: tag.clone(),
                    name: tag.clone(),
                    image: tag,
                    description,
                    is_default: false,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn msg(config: Value) -> String {
        normalize_config(&config).unwrap_err().to_string()
    }

    #[test]
    fn a_full_config_is_kept_and_env_var_keys_are_trimmed() {
        let c = normalize_config(&json!({
            "image": "pi-relay/sandbox-debian:1.6.0",
            "resourceTier": "large",
            "idleTimeoutSeconds": 600,
            "networkMode": "none",
            "envVars": [{"key": " FOO ", "value": "1"}, {"key": "", "value": "dropped"}],
            "custom": true,
        }))
        .unwrap();
        assert_eq!(c["envVars"], json!([{"key": "FOO", "value": "1"}]));
        assert_eq!(c["resourceTier"], "large");
        assert_eq!(c["custom"], true);
        assert_eq!(normalize_config(&json!({})).unwrap(), json!({}));
    }

    #[test]
    fn bad_tiers_timeouts_networks_and_images_are_refused() {
        assert!(msg(json!([])).contains("config must be an object"));
        assert!(msg(json!({"resourceTier": "huge"})).contains("small, medium, large"));
        for t in [
            json!(0),
            json!(-60),
            json!(59),
            json!(86_401),
            json!(60.5),
            json!("600"),
        ] {
            assert_eq!(
                msg(json!({"idleTimeoutSeconds": t})),
                "config.idleTimeoutSeconds must be an integer between 60 and 86400"
            );
        }
        assert!(normalize_config(&json!({"idleTimeoutSeconds": 60})).is_ok());
        assert!(normalize_config(&json!({"idleTimeoutSeconds": 86_400})).is_ok());
        for n in [json!("container:abc"), json!(""), json!(3), json!("a b")] {
            assert!(
                msg(json!({"networkMode": n})).contains("networkMode"),
                "{n}"
            );
        }
        for n in ["bridge", "host", "none", "my-net_1.x"] {
            assert!(normalize_config(&json!({"networkMode": n})).is_ok(), "{n}");
        }
        assert!(msg(json!({"image": ""})).contains("config.image"));
        assert!(msg(json!({"image": 7})).contains("config.image"));
    }

    #[test]
    fn env_vars_follow_the_protocols_rules() {
        let env = |v: Value| msg(json!({"envVars": v}));
        assert_eq!(env(json!({})), "config.envVars must be an array");
        assert_eq!(
            env(json!([{"key": "lower", "value": "x"}])),
            "Invalid env var key: lower"
        );
        assert_eq!(
            env(json!([{"key": "1A", "value": "x"}])),
            "Invalid env var key: 1A"
        );
        assert_eq!(
            env(json!([{"key": "A", "value": "1"}, {"key": " A", "value": "2"}])),
            "Duplicate env var key: A"
        );
        assert_eq!(
            env(json!([{"key": "A", "value": 1}])),
            "Env var value must be a string: A"
        );
        assert!(env(json!([{"key": "HOME", "value": "/x"}])).contains("reserved"));
        assert!(env(json!(["A=1"])).contains("{key, value}"));
    }

    #[test]
    fn egress_settings_are_checked_and_the_allowlist_normalized() {
        let c = normalize_config(&json!({
            "egressPolicy": "allowlist",
            "egressAllow": ["GitHub.com", "*.npmjs.org:443", "github.com"],
        }))
        .unwrap();
        assert_eq!(c["egressAllow"], json!(["github.com", "*.npmjs.org:443"]));
        assert_eq!(
            msg(json!({"egressPolicy": "everything"})),
            "config.egressPolicy: egress policy must be deny, allowlist or open, not \"everything\""
        );
        assert!(msg(json!({"egressPolicy": true})).contains("\"deny\", \"allowlist\" or \"open\""));
        assert!(msg(json!({"egressAllow": "github.com"})).contains("must be an array"));
        assert!(msg(json!({"egressAllow": [1]})).contains("array of strings"));
        for bad in ["https://github.com", "10.0.0.1", "a.*.com", "x.com:0"] {
            assert!(
                msg(json!({"egressAllow": [bad]})).starts_with("config.egressAllow: "),
                "{bad}"
            );
        }
        let many: Vec<String> = (0..=MAX_ALLOW).map(|i| format!("h{i}.example")).collect();
        assert!(msg(json!({"egressAllow": many})).contains("at most 256"));
        assert!(
            msg(json!({"envVars": [{"key": "HTTPS_PROXY", "value": "x"}]})).contains("reserved")
        );
    }

    #[test]
    fn only_docker_runs_here() {
        assert!(validate_sandbox_type("docker", "docker").is_ok());
        assert_eq!(
            validate_sandbox_type("vm", "docker")
                .unwrap_err()
                .to_string(),
            "sandboxType must be one of: docker, cloudflare, gondolin"
        );
        assert!(
            validate_sandbox_type("gondolin", "docker")
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
    }
}
