//! Extension configurations: pi packages configured for every session, the sessions of a mode or
//! one session, each with an optional configuration (a JSON object) checked against its
//! package's schema. A session's packages reach pi through `settings.json` in its agent
//! directory, written before pi starts: the relay's `packages` and `extensionConfig` entries are
//! replaced, and whatever pi or the user put there themselves (other settings, packages
//! installed by hand) is kept. A change reaches a running session at its next start; until
//! then the session is marked `extensionsStale`.

use bytes::Bytes;
use relay_model::{ExtensionScope, Mode};
use relay_store::{ExtensionConfigRow, Upserted};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::packages::{PackageSearch, missing_required};
use crate::service::Inner;
use crate::{SessionError, SessionService};

/// pi's settings in its agent directory.
const SETTINGS_JSON: &str = "settings.json";
/// Largest `settings.json` the relay reads.
const MAX_SETTINGS_BYTES: u64 = 4 * 1024 * 1024;

/// A configured package as clients see it: the row and its package's manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtensionConfig {
    /// The row.
    pub row: ExtensionConfigRow,
    /// What the npm registry says of the package (`None` for git and path packages, unknown
    /// ones, or when the registry cannot be asked).
    pub manifest: Option<Value>,
}

/// A package to configure.
#[derive(Clone, Debug)]
pub struct NewExtensionConfig {
    /// Where it applies.
    pub scope: ExtensionScope,
    /// The session, for [`ExtensionScope::Session`].
    pub session_id: Option<String>,
    /// pi's package reference.
    pub package: String,
    /// Its configuration, a JSON object.
    pub config: Option<Map<String, Value>>,
}

/// What a change did besides itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtensionChange {
    /// Active sessions that now run with stale extensions.
    pub stale_sessions: u64,
    /// Whether the package had no manifest (so its configuration could not be checked).
    pub manifest_missing: bool,
}

/// A package as a session gets it: its configuration merged over the scopes that name it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResolvedPackage {
    /// pi's package reference.
    pub package: String,
    /// The merged configuration.
    pub config: Map<String, Value>,
}

/// What the relay last wrote in a session's `settings.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Applied {
    packages: Vec<String>,
    configs: Vec<String>,
}

/// The packages of `rows` (global, then the mode's, then the session's): each package once, in
/// first-seen order, its configurations merged key by key, later scopes winning.
pub fn resolve(rows: &[ExtensionConfigRow]) -> Vec<ResolvedPackage> {
    let mut out: Vec<ResolvedPackage> = Vec::new();
    for row in rows {
        let config = row
            .config_json
            .as_deref()
            .and_then(|c| serde_json::from_str::<Map<String, Value>>(c).ok())
            .unwrap_or_default();
        match out.iter_mut().find(|p| p.package == row.package) {
            Some(p) => p.config.extend(config),
            None => out.push(ResolvedPackage {
                package: row.package.clone(),
                config,
            }),
        }
    }
    out
}

/// The source a `packages` entry of pi's settings names (a string, or an object's `source`).
fn source_of(entry: &Value) -> Option<&str> {
    entry.as_str().or_else(|| entry["source"].as_str())
}

/// pi's settings with the relay's packages: entries the relay wrote last time (`previous`)
/// replaced by `resolved`, everything else kept. Also what the relay wrote this time.
fn merged_settings(
    current: Map<String, Value>,
    previous: &Applied,
    resolved: &[ResolvedPackage],
) -> (Map<String, Value>, Applied) {
    let mut settings = current;
    let ours = |s: &str| {
        previous.packages.iter().any(|p| p == s) || resolved.iter().any(|r| r.package == s)
    };
    let mut packages: Vec<Value> = match settings.remove("packages") {
        Some(Value::Array(a)) => a
            .into_iter()
            .filter(|e| source_of(e).is_none_or(|s| !ours(s)))
            .collect(),
        _ => Vec::new(),
    };
    packages.extend(resolved.iter().map(|r| Value::String(r.package.clone())));
    if !packages.is_empty() {
        settings.insert("packages".into(), Value::Array(packages));
    }
    let mut configs = match settings.remove("extensionConfig") {
        Some(Value::Object(o)) => o,
        _ => Map::new(),
    };
    configs.retain(|k, _| !previous.configs.contains(k));
    let mut applied = Applied {
        packages: resolved.iter().map(|r| r.package.clone()).collect(),
        configs: Vec::new(),
    };
    for r in resolved.iter().filter(|r| !r.config.is_empty()) {
        configs.insert(r.package.clone(), Value::Object(r.config.clone()));
        applied.configs.push(r.package.clone());
    }
    if !configs.is_empty() {
        settings.insert("extensionConfig".into(), Value::Object(configs));
    }
    (settings, applied)
}

impl Inner {
    /// Before pi starts in session `id` (none of its sandbox runs): its `settings.json` holds
    /// the packages configured for it, and it is no longer stale.
    pub(crate) async fn write_extension_settings(
        &self,
        id: &str,
        mode: Mode,
    ) -> Result<(), SessionError> {
        let resolved = resolve(&self.store.extension_configs_for(id, mode).await?);
        let previous: Applied = match self.store.applied_extensions(id).await? {
            Some(text) => serde_json::from_str(&text).unwrap_or_default(),
            None => Applied::default(),
        };
        if resolved.is_empty() && previous == Applied::default() {
            return Ok(());
        }
        let storage = self.sandbox.storage();
        let user = self.cfg.sandbox_user;
        let raw = storage
            .read_agent_file(id, SETTINGS_JSON, MAX_SETTINGS_BYTES)
            .await?;
        let current = match raw.as_deref().map(serde_json::from_slice::<Value>) {
            None => Map::new(),
            Some(Ok(Value::Object(o))) => o,
            Some(_) => {
                let note = format!(
                    "relay: {SETTINGS_JSON} is not a JSON object; it was kept as \
                     {SETTINGS_JSON}.invalid and a new one written with the configured packages"
                );
                tracing::warn!(session = %id, "{note}");
                if let Ok(hub) = self.hubs.get_or_create(id).await {
                    hub.log(note);
                }
                let old = raw.clone().unwrap_or_default();
                storage
                    .replace_agent_file(id, user, &format!("{SETTINGS_JSON}.invalid"), old)
                    .await?;
                Map::new()
            }
        };
        let unchanged = current.clone();
        let (settings, applied) = merged_settings(current, &previous, &resolved);
        if settings != unchanged {
            let mut text = serde_json::to_vec_pretty(&Value::Object(settings))
                .map_err(std::io::Error::other)?;
            text.push(b'\n');
            storage
                .replace_agent_file(id, user, SETTINGS_JSON, Bytes::from(text))
                .await?;
        }
        let applied = serde_json::to_string(&applied).map_err(std::io::Error::other)?;
        self.store.set_applied_extensions(id, applied).await?;
        Ok(())
    }

    async fn with_manifest(&self, row: ExtensionConfigRow) -> ExtensionConfig {
        let manifest = match self.packages.manifest(&row.package).await {
            Ok(m) => m,
            Err(why) => {
                tracing::warn!(package = %row.package, error = %why, "cannot read the package's manifest");
                None
            }
        };
        ExtensionConfig { row, manifest }
    }

    async fn mark_stale(&self, row: &ExtensionConfigRow) -> Result<u64, SessionError> {
        let n = self
            .store
            .mark_extensions_stale(row.scope, row.session_id.as_deref())
            .await?;
        if n > 0 {
            self.changed();
        }
        Ok(n)
    }
}

impl SessionService {
    /// The packages configured at `scope` (one session's: `session`).
    pub async fn extension_configs(
        &self,
        scope: ExtensionScope,
        session: Option<&str>,
    ) -> Result<Vec<ExtensionConfig>, SessionError> {
        let inner = &self.inner;
        let rows = inner.store.extension_configs(scope, session).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(inner.with_manifest(row).await);
        }
        Ok(out)
    }

    /// Configures a package (or, configured there already, replaces its configuration when one
    /// is given). Its configuration is checked against its package's schema.
    pub async fn add_extension_config(
        &self,
        new: NewExtensionConfig,
    ) -> Result<(ExtensionConfig, ExtensionChange), SessionError> {
        let inner = &self.inner;
        if let Some(session) = &new.session_id {
            inner.row(session).await?;
        }
        let package = new.package.trim().to_owned();
        if package.is_empty() {
            return Err(SessionError::Invalid("package is required".into()));
        }
        crate::text::check_label("package", &package, 1024)?;
        let probe = inner
            .with_manifest(ExtensionConfigRow {
                id: uuid::Uuid::new_v4().to_string(),
                scope: new.scope,
                session_id: new.session_id,
                package,
                config_json: None,
                created_at: relay_hub::timestamp(),
            })
            .await;
        if let Some(config) = &new.config {
            check_config(config, probe.manifest.as_ref())?;
        }
        let mut row = probe.row;
        row.config_json = new.config.map(|c| Value::Object(c).to_string());
        let (row, did) = inner.store.upsert_extension_config(row).await?;
        let stale_sessions = match did {
            Upserted::Unchanged => 0,
            Upserted::Created | Upserted::Replaced => inner.mark_stale(&row).await?,
        };
        let change = ExtensionChange {
            stale_sessions,
            manifest_missing: probe.manifest.is_none(),
        };
        Ok((
            ExtensionConfig {
                row,
                manifest: probe.manifest,
            },
            change,
        ))
    }

    /// Replaces a configured package's configuration (none given: an empty one).
    pub async fn set_extension_config(
        &self,
        id: &str,
        config: Option<Map<String, Value>>,
    ) -> Result<(ExtensionConfig, ExtensionChange), SessionError> {
        let inner = &self.inner;
        let row = inner
            .store
            .extension_config(id)
            .await?
            .ok_or(SessionError::ExtensionConfigNotFound)?;
        let current = inner.with_manifest(row).await;
        let config = config.unwrap_or_default();
        check_config(&config, current.manifest.as_ref())?;
        let row = inner
            .store
            .set_extension_config(id, Value::Object(config).to_string())
            .await?
            .ok_or(SessionError::ExtensionConfigNotFound)?;
        let stale_sessions = inner.mark_stale(&row).await?;
        let change = ExtensionChange {
            stale_sessions,
            manifest_missing: current.manifest.is_none(),
        };
        Ok((
            ExtensionConfig {
                row,
                manifest: current.manifest,
            },
            change,
        ))
    }

    /// Removes a configured package; how many active sessions now run with stale extensions.
    pub async fn remove_extension_config(&self, id: &str) -> Result<u64, SessionError> {
        let inner = &self.inner;
        let row = inner
            .store
            .delete_extension_config(id)
            .await?
            .ok_or(SessionError::ExtensionConfigNotFound)?;
        inner.mark_stale(&row).await
    }

    /// The packages session `id` gets, as its `settings.json` holds them from its next start.
    pub async fn resolved_extensions(
        &self,
        id: &str,
    ) -> Result<Vec<ResolvedPackage>, SessionError> {
        let inner = &self.inner;
        let row = inner.row(id).await?;
        Ok(resolve(
            &inner.store.extension_configs_for(id, row.mode).await?,
        ))
    }

    /// Searches the catalogue of pi packages (the npm registry, by keyword `tag`).
    pub async fn search_packages(
        &self,
        tag: &str,
        query: &str,
        limit: u32,
    ) -> Result<PackageSearch, SessionError> {
        self.inner.packages.search(tag, query, limit).await
    }
}

/// Refuses a configuration that leaves required fields empty.
fn check_config(config: &Map<String, Value>, manifest: Option<&Value>) -> Result<(), SessionError> {
    let missing = missing_required(&Value::Object(config.clone()), manifest);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(SessionError::InvalidConfigValues(missing))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn row(scope: ExtensionScope, package: &str, config: Option<Value>) -> ExtensionConfigRow {
        ExtensionConfigRow {
            id: format!("{scope}-{package}"),
            scope,
            session_id: (scope == ExtensionScope::Session).then(|| "s1".into()),
            package: package.into(),
            config_json: config.map(|c| c.to_string()),
            created_at: String::new(),
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn later_scopes_win_key_by_key_and_each_package_comes_once() {
        let resolved = resolve(&[
            row(
                ExtensionScope::Global,
                "npm:a",
                Some(json!({"x": 1, "y": 1})),
            ),
            row(ExtensionScope::Global, "npm:b", None),
            row(ExtensionScope::Chat, "npm:a", Some(json!({"y": 2}))),
            row(ExtensionScope::Session, "npm:a", Some(json!({"z": 3}))),
        ]);
        assert_eq!(resolved.len(), 2);
        assert_eq!(resolved[0].package, "npm:a");
        assert_eq!(resolved[0].config, obj(json!({"x": 1, "y": 2, "z": 3})));
        assert_eq!(resolved[1].package, "npm:b");
        assert!(resolved[1].config.is_empty());
    }

    #[test]
    fn what_pi_and_the_user_wrote_is_kept_and_the_relays_entries_replaced() {
        let current = obj(json!({
            "defaultModel": "mock-model",
            "packages": ["npm:mine", {"source": "npm:old", "skills": []}, "npm:a"],
            "extensionConfig": {"npm:mine": {"k": 1}, "npm:old": {"k": 2}}
        }));
        let previous = Applied {
            packages: vec!["npm:old".into()],
            configs: vec!["npm:old".into()],
        };
        let resolved = vec![ResolvedPackage {
            package: "npm:a".into(),
            config: obj(json!({"key": "v"})),
        }];
        let (settings, applied) = merged_settings(current, &previous, &resolved);
        assert_eq!(
            Value::Object(settings),
            json!({
                "defaultModel": "mock-model",
                "packages": ["npm:mine", "npm:a"],
                "extensionConfig": {"npm:mine": {"k": 1}, "npm:a": {"key": "v"}}
            })
        );
        assert_eq!(applied.packages, ["npm:a"]);
        assert_eq!(applied.configs, ["npm:a"]);
        // Everything removed again: only what was not the relay's stays.
        let (settings, applied) = merged_settings(
            obj(json!({"packages": ["npm:a"], "extensionConfig": {"npm:a": {}}, "theme": "x"})),
            &applied,
            &[],
        );
        assert_eq!(Value::Object(settings), json!({"theme": "x"}));
        assert_eq!(applied, Applied::default());
    }

    #[test]
    fn a_required_field_left_empty_is_refused() {
        let manifest = json!({"schema": {"required": ["token"]}});
        let err = check_config(&obj(json!({"token": ""})), Some(&manifest)).unwrap_err();
        assert!(matches!(err, SessionError::InvalidConfigValues(f) if f == ["token"]));
        assert!(check_config(&obj(json!({"token": "t"})), Some(&manifest)).is_ok());
    }
}
