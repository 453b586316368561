//! [`SettingsService`]: the relay's key/value settings (`/api/settings`). Values are JSON.
//! Protected keys (credentials the relay keeps, such as a GitHub token) are neither returned nor
//! writable through the API; known keys are validated as the protocol specifies, and any other
//! key is stored as given (clients keep their own preferences here).

use std::collections::BTreeMap;

use relay_model::Mode;
use relay_store::Store;
use serde_json::Value;

use crate::SessionError;

/// Keys never returned by `GET /api/settings` and refused by `PUT`.
pub const PROTECTED: &[&str] = &["github_repos_access_token", "github_app_config"];
/// Longest key accepted.
pub const MAX_KEY_CHARS: usize = 128;
/// Largest value accepted, as JSON text.
pub const MAX_VALUE_BYTES: usize = 256 * 1024;

/// The settings service; cheap to clone.
#[derive(Clone, Debug)]
pub struct SettingsService {
    store: Store,
}

/// The idle policy as the `idle_policy` setting states it (all fields validated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdlePolicySetting {
    /// Inactivity after which a session is paused, unless its environment says otherwise.
    pub default_timeout_seconds: u64,
    /// Time after the last client left during which a session is never paused.
    pub grace_after_disconnect_seconds: u64,
    /// Session modes never paused (`chat`, `code`).
    pub disable_for_modes: Vec<Mode>,
}

fn invalid(m: impl Into<String>) -> SessionError {
    SessionError::Invalid(m.into())
}

/// Checks a setting before it is stored.
pub fn validate(key: &str, value: &Value) -> Result<(), SessionError> {
    match key {
        "models_introspection" => {
            let obj = value
                .as_object()
                .ok_or_else(|| invalid("models_introspection must be an object"))?;
            match obj.get("environmentId") {
                None | Some(Value::Null) => Ok(()),
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(()),
                Some(_) => Err(invalid(
                    "models_introspection.environmentId must be a non-empty string",
                )),
            }
        }
        "chat_mode_prompt_profile" => match value {
            Value::String(_) => Ok(()),
            _ => Err(invalid("chat_mode_prompt_profile must be a string")),
        },
        "idle_policy" => parse_idle_policy(value).map(|_| ()),
        _ => Ok(()),
    }
}

/// Parses and checks an `idle_policy` value: integer `defaultTimeoutSeconds > 0`, integer
/// `graceAfterDisconnectSeconds >= 0`, optional `disableForModes` of `chat`/`code`.
pub fn parse_idle_policy(value: &Value) -> Result<IdlePolicySetting, SessionError> {
    let obj = value
        .as_object()
        .ok_or_else(|| invalid("idle_policy must be an object"))?;
    let timeout = obj
        .get("defaultTimeoutSeconds")
        .and_then(Value::as_u64)
        .filter(|t| *t > 0)
        .ok_or_else(|| invalid("idle_policy.defaultTimeoutSeconds must be an integer > 0"))?;
    let grace = obj
        .get("graceAfterDisconnectSeconds")
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            invalid("idle_policy.graceAfterDisconnectSeconds must be an integer >= 0")
        })?;
    let modes = match obj.get("disableForModes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|m| match m.as_str().map(str::parse::<Mode>) {
                Some(Ok(mode)) => Ok(mode),
                _ => Err(invalid(
                    "idle_policy.disableForModes must be an array of \"chat\" or \"code\"",
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(invalid(
                "idle_policy.disableForModes must be an array of \"chat\" or \"code\"",
            ));
        }
    };
    Ok(IdlePolicySetting {
        default_timeout_seconds: timeout,
        grace_after_disconnect_seconds: grace,
        disable_for_modes: modes,
    })
}

impl SettingsService {
    /// A service over `store`.
    pub fn new(store: Store) -> SettingsService {
        SettingsService { store }
    }

    /// Every setting but the protected ones. A stored value that is not JSON is returned as a
    /// string (databases written by other tools may hold one).
    pub async fn all(&self) -> Result<BTreeMap<String, Value>, SessionError> {
        Ok(self
            .store
            .settings()
            .await?
            .into_iter()
            .filter(|(k, _)| !PROTECTED.contains(&k.as_str()))
            .map(|(k, v)| {
                let parsed = serde_json::from_str(&v).unwrap_or(Value::String(v));
                (k, parsed)
            })
            .collect())
    }

    /// One setting's value, if set and valid JSON.
    pub async fn get(&self, key: &str) -> Result<Option<Value>, SessionError> {
        Ok(self
            .store
            .setting(key)
            .await?
            .and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Stores a setting after checking it.
    pub async fn put(&self, key: &str, value: &Value) -> Result<(), SessionError> {
        let key = key.trim();
        if key.is_empty() {
            return Err(invalid("Key is required"));
        }
        if PROTECTED.contains(&key) {
            return Err(invalid("Cannot modify protected setting"));
        }
        crate::text::check_label("Key", key, MAX_KEY_CHARS)?;
        validate(key, value)?;
        let text = value.to_string();
        if text.len() > MAX_VALUE_BYTES {
            return Err(invalid(format!(
                "value must be at most {MAX_VALUE_BYTES} bytes as JSON"
            )));
        }
        self.store
            .put_setting(key, &text, &relay_hub::timestamp())
            .await?;
        Ok(())
    }

    /// The idle policy setting, if one is stored and valid.
    pub async fn idle_policy(&self) -> Result<Option<IdlePolicySetting>, SessionError> {
        Ok(self
            .get("idle_policy")
            .await?
            .and_then(|v| parse_idle_policy(&v).ok()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn msg(key: &str, v: Value) -> String {
        validate(key, &v).unwrap_err().to_string()
    }

    #[test]
    fn idle_policy_needs_a_positive_timeout_a_non_negative_grace_and_known_modes() {
        let ok = json!({"defaultTimeoutSeconds": 600, "graceAfterDisconnectSeconds": 0,
                        "disableForModes": ["chat"]});
        assert_eq!(
            parse_idle_policy(&ok).unwrap(),
            IdlePolicySetting {
                default_timeout_seconds: 600,
                grace_after_disconnect_seconds: 0,
                disable_for_modes: vec![Mode::Chat],
            }
        );
        assert!(msg("idle_policy", json!("x")).contains("must be an object"));
        for t in [json!(0), json!(-5), json!(1.5), json!("60"), Value::Null] {
            let m = msg(
                "idle_policy",
                json!({"defaultTimeoutSeconds": t, "graceAfterDisconnectSeconds": 1}),
            );
            assert!(m.contains("defaultTimeoutSeconds"), "{t}: {m}");
        }
        let m = msg(
            "idle_policy",
            json!({"defaultTimeoutSeconds": 60, "graceAfterDisconnectSeconds": -1}),
        );
        assert!(m.contains("graceAfterDisconnectSeconds"), "{m}");
        let m = msg(
            "idle_policy",
            json!({"defaultTimeoutSeconds": 60, "graceAfterDisconnectSeconds": 1,
                   "disableForModes": ["chat", "shell"]}),
        );
        assert!(m.contains("disableForModes"), "{m}");
    }

    #[test]
    fn known_keys_are_type_checked_and_others_pass() {
        assert!(validate("models_introspection", &json!({})).is_ok());
        assert!(validate("models_introspection", &json!({"environmentId": "e1"})).is_ok());
        assert!(msg("models_introspection", json!([])).contains("must be an object"));
        assert!(msg("models_introspection", json!({"environmentId": " "})).contains("non-empty"));
        assert!(validate("chat_mode_prompt_profile", &json!("terse")).is_ok());
        assert!(msg("chat_mode_prompt_profile", json!(3)).contains("must be a string"));
        assert!(validate("theme", &json!({"dark": true})).is_ok());
    }
}
