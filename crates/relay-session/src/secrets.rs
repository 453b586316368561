//! [`SecretService`]: the secrets clients manage (`/api/secrets`), their validation, and which
//! of them reach sandboxes.
//!
//! Values are sealed by the [`Vault`] before they reach the store and are never returned to
//! clients. An enabled `env_var` secret reaches a sandbox as a file named by its lower-case
//! variable name (see `relay_sandbox::SessionStorage::write_secrets`); the image's entrypoint
//! exports it upper-cased. An `ai_provider` secret never enters a sandbox: it is a model
//! provider's key, which the relay's egress gateway adds to the sandbox's model requests
//! ([`SecretService::provider_keys`], `crate::egress`). Never `sandbox_provider` secrets
//! (credentials of sandbox providers) nor the variables the relay keeps for itself
//! ([`RELAY_ONLY`]) either, which the pi-apps relay handed to every sandbox.

use std::collections::HashMap;
use std::sync::Arc;

use relay_gateway::{DomainSecret, HostPattern};
use relay_store::{SecretPatch, SecretRow, SecretWrite, Store};
use secrecy::{ExposeSecret, SecretString};

use crate::SessionError;
use crate::vault::Vault;

/// Largest secret value accepted, in bytes. Far above any API key or PEM private key, and
/// small enough that every sandbox's environment stays well under the kernel's limits.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Most bytes all secret values may hold together: the sandbox image's entrypoint exports at
/// most this much, because the kernel refuses to start a program with too large an
/// environment.
pub const MAX_TOTAL_BYTES: usize = 1024 * 1024;
/// Longest secret name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest variable name accepted (a file name in the secrets directory).
pub const MAX_ENV_VAR_CHARS: usize = 128;

/// Variables a sandbox needs with its own values; a secret may not replace them (the sandbox
/// images' entrypoint skips them too, but for the proxy variables, which the relay sets to its
/// egress gateway), nor any `LD_*` variable.
pub const RESERVED: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "PWD",
    "OLDPWD",
    "IFS",
    "ENV",
    "BASH_ENV",
    "CDPATH",
    "PI_SECRETS_DIR",
    "PI_CODING_AGENT_DIR",
    "PI_SESSION_ID",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "NODE_USE_ENV_PROXY",
];

/// Whether `name` (in any case) is a variable a sandbox needs with its own value: one of
/// [`RESERVED`] or any `LD_*`. The one rule for secrets and environments alike.
pub fn is_reserved_variable(name: &str) -> bool {
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name))
        || name.to_ascii_uppercase().starts_with("LD_")
}

/// Variables of secrets the relay uses itself (GitHub App credentials): never given to a
/// sandbox, whatever their kind.
pub const RELAY_ONLY: &[&str] = &["GITHUB_APP_PRIVATE_KEY", "GITHUB_APP_WEBHOOK_SECRET"];

/// What a secret is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// A model provider's API key (the gateway's: never in a sandbox).
    AiProvider,
    /// Any other variable for pi or its extensions (reaches sandboxes).
    EnvVar,
    /// A credential of a sandbox provider, for the relay only.
    SandboxProvider,
}

impl SecretKind {
    /// Parses the protocol's name.
    pub fn parse(s: &str) -> Option<SecretKind> {
        match s {
            "ai_provider" => Some(SecretKind::AiProvider),
            "env_var" => Some(SecretKind::EnvVar),
            "sandbox_provider" => Some(SecretKind::SandboxProvider),
            _ => None,
        }
    }

    /// The protocol's name.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::AiProvider => "ai_provider",
            SecretKind::EnvVar => "env_var",
            SecretKind::SandboxProvider => "sandbox_provider",
        }
    }

    /// Whether secrets of this kind are given to sandboxes (as files their entrypoint
    /// exports).
    pub fn reaches_sandboxes(self) -> bool {
        matches!(self, SecretKind::EnvVar)
    }
}

/// A secret as clients see it: everything but the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretInfo {
    /// The secret's id (a UUID).
    pub id: String,
    /// Its name.
    pub name: String,
    /// The variable it becomes in a sandbox.
    pub env_var: String,
    /// `ai_provider`, `env_var` or `sandbox_provider`.
    pub kind: String,
    /// Whether sandboxes receive it.
    pub enabled: bool,
    /// When it was created (ISO 8601, UTC).
    pub created_at: String,
    /// When it last changed (ISO 8601, UTC).
    pub updated_at: String,
    /// The version of the key that sealed it.
    pub key_version: u32,
    /// `None` when the secret has no domains.
    pub domains: Option<Vec<String>>,
}

impl From<SecretRow> for SecretInfo {
    fn from(r: SecretRow) -> SecretInfo {
        let domains = r
            .domains
            .as_deref()
            .and_then(|d| serde_json::from_str::<Vec<String>>(d).ok())
            .filter(|d| !d.is_empty());
        SecretInfo {
            id: r.id,
            name: r.name,
            env_var: r.env_var,
            kind: r.kind,
            enabled: r.enabled,
            created_at: r.created_at,
            updated_at: r.updated_at,
            key_version: r.sealed.key_version,
            domains,
        }
    }
}

/// A secret to create. Fields are checked by [`SecretService::create`].
#[derive(Debug)]
pub struct NewSecret {
    /// Its name.
    pub name: String,
    /// The variable it becomes in a sandbox.
    pub env_var: String,
    /// What it is for.
    pub kind: SecretKind,
    /// The value (never returned to clients).
    pub value: SecretString,
    /// Whether sandboxes receive it.
    pub enabled: bool,
    /// The hosts it is meant for.
    pub domains: Option<Vec<String>>,
}

/// A change to a secret: `None` fields stay as they are; `domains: Some(vec![])` clears them.
#[derive(Debug, Default)]
pub struct SecretChange {
    /// A new name.
    pub name: Option<String>,
    /// A new variable.
    pub env_var: Option<String>,
    /// A new kind.
    pub kind: Option<SecretKind>,
    /// A new value, sealed afresh.
    pub value: Option<SecretString>,
    /// Enabled or not.
    pub enabled: Option<bool>,
    /// New hosts (`Some(vec![])` clears them).
    pub domains: Option<Vec<String>>,
}

pub use relay_sandbox::SecretFile;

/// The secrets service; cheap to clone.
#[derive(Clone, Debug)]
pub struct SecretService {
    store: Store,
    vault: Arc<Vault>,
}

/// Checks a secret's name: non-blank, bounded. Returns it trimmed.
pub fn validate_name(name: &str) -> Result<String, SessionError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(SessionError::Invalid("name is required".into()));
    }
    crate::text::check_label("name", name, MAX_NAME_CHARS)?;
    Ok(name.to_owned())
}

/// Checks a variable name, trimmed. Beyond the pi-apps relay's checks (no NUL, no `=`, not
/// empty) it must be a shell variable name, `[A-Za-z_][A-Za-z0-9_]*`: the sandbox's entrypoint
/// exports it, and any other name would be skipped there or break its file.
pub fn validate_env_var(raw: &str) -> Result<String, SessionError> {
    let v = raw.trim();
    if v.contains('\0') {
        return Err(SessionError::Invalid(
            "envVar must not contain NUL bytes".into(),
        ));
    }
    if v.contains('=') {
        return Err(SessionError::Invalid("envVar must not contain '='".into()));
    }
    if v.is_empty() {
        return Err(SessionError::Invalid("envVar must not be empty".into()));
    }
    let mut chars = v.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(SessionError::Invalid(format!(
            "envVar must be a shell variable name (letters, digits and '_', not starting with a \
             digit): {v:?}"
        )));
    }
    if v.len() > MAX_ENV_VAR_CHARS {
        return Err(SessionError::Invalid(format!(
            "envVar must be at most {MAX_ENV_VAR_CHARS} characters"
        )));
    }
    if is_reserved_variable(v) {
        return Err(SessionError::Invalid(format!(
            "envVar '{v}' is reserved for the sandbox itself"
        )));
    }
    Ok(v.to_owned())
}

/// Checks a value: not blank, no NUL byte (an environment variable cannot hold one), at most
/// [`MAX_VALUE_BYTES`]. The value is kept exactly as given, surrounding whitespace included.
pub fn validate_value(value: &SecretString) -> Result<(), SessionError> {
    let v = value.expose_secret();
    if v.trim().is_empty() {
        return Err(SessionError::Invalid("value is required".into()));
    }
    if v.contains('\0') {
        return Err(SessionError::Invalid(
            "value must not contain NUL bytes".into(),
        ));
    }
    if v.len() > MAX_VALUE_BYTES {
        return Err(SessionError::Invalid(format!(
            "value must be at most {MAX_VALUE_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Checks and normalizes domain patterns: trimmed, lower-cased, deduplicated; no scheme, path
/// or query. An empty list means none.
pub fn validate_domains(raw: &[String]) -> Result<Vec<String>, SessionError> {
    let mut out: Vec<String> = Vec::new();
    for d in raw {
        let p = d.trim().to_lowercase();
        if p.is_empty() {
            return Err(SessionError::Invalid(
                "Domain pattern must not be empty".into(),
            ));
        }
        for (needle, what) in [("://", "URL scheme"), ("/", "slash"), ("?", "query string")] {
            if p.contains(needle) {
                return Err(SessionError::Invalid(format!(
                    "Domain pattern must not contain {what}: \"{p}\""
                )));
            }
        }
        if let Err(e) = p.parse::<HostPattern>() {
            return Err(SessionError::Invalid(format!("Domain pattern {e}")));
        }
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

fn domains_json(domains: &[String]) -> Option<String> {
    (!domains.is_empty()).then(|| serde_json::Value::from(domains.to_vec()).to_string())
}

/// Length of a sealed value's plaintext: GCM adds no padding, so it is the ciphertext's.
fn sealed_len(sealed: &relay_store::SealedValue) -> usize {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(&sealed.ciphertext)
        .map_or(0, |c| c.len())
}

fn duplicate(env_var: &str) -> SessionError {
    SessionError::Invalid(format!("A secret with envVar '{env_var}' already exists"))
}

impl SecretService {
    /// A service over `store`, sealing with `vault`.
    pub fn new(store: Store, vault: Vault) -> SecretService {
        SecretService {
            store,
            vault: Arc::new(vault),
        }
    }

    /// The vault secrets are sealed with (the relay's own credentials are sealed with it too).
    pub(crate) fn vault(&self) -> &Vault {
        &self.vault
    }

    /// Every secret, oldest first, without values.
    pub async fn list(&self) -> Result<Vec<SecretInfo>, SessionError> {
        Ok(self
            .store
            .secrets()
            .await?
            .into_iter()
            .map(SecretInfo::from)
            .collect())
    }

    /// Refuses a value that would take all secrets together past [`MAX_TOTAL_BYTES`]
    /// (`replacing`: the secret whose value it replaces).
    async fn check_total(&self, len: usize, replacing: Option<&str>) -> Result<(), SessionError> {
        let others: usize = self
            .store
            .secrets()
            .await?
            .iter()
            .filter(|s| Some(s.id.as_str()) != replacing)
            .map(|s| sealed_len(&s.sealed))
            .sum();
        if others + len > MAX_TOTAL_BYTES {
            return Err(SessionError::Invalid(format!(
                "all secret values together may hold at most {MAX_TOTAL_BYTES} bytes \
                 (sandboxes get them as environment variables); {others} are stored already"
            )));
        }
        Ok(())
    }

    /// Creates a secret.
    pub async fn create(&self, new: NewSecret) -> Result<SecretInfo, SessionError> {
        let name = validate_name(&new.name)?;
        let env_var = validate_env_var(&new.env_var)?;
        validate_value(&new.value)?;
        self.check_total(new.value.expose_secret().len(), None)
            .await?;
        let domains = validate_domains(new.domains.as_deref().unwrap_or_default())?;
        let id = uuid::Uuid::new_v4().to_string();
        let now = relay_hub::timestamp();
        let row = SecretRow {
            sealed: self.vault.seal_secret(&id, &new.value),
            id: id.clone(),
            name,
            env_var: env_var.clone(),
            kind: new.kind.as_str().into(),
            enabled: new.enabled,
            created_at: now.clone(),
            updated_at: now,
            domains: domains_json(&domains),
        };
        match self.store.insert_secret(row).await? {
            SecretWrite::Done => {}
            SecretWrite::DuplicateEnvVar => return Err(duplicate(&env_var)),
            SecretWrite::NotFound => return Err(SessionError::SecretNotFound),
        }
        self.store
            .secret(&id)
            .await?
            .map(SecretInfo::from)
            .ok_or(SessionError::SecretNotFound)
    }

    /// Changes a secret; a new value is sealed afresh. The change is applied in one write, so
    /// concurrent updates of the same secret follow one another and never mix.
    pub async fn update(&self, id: &str, change: SecretChange) -> Result<(), SessionError> {
        let name = change.name.as_deref().map(validate_name).transpose()?;
        let env_var = change
            .env_var
            .as_deref()
            .map(validate_env_var)
            .transpose()?;
        if let Some(v) = &change.value {
            validate_value(v)?;
            self.check_total(v.expose_secret().len(), Some(id)).await?;
        }
        let domains = change
            .domains
            .as_deref()
            .map(validate_domains)
            .transpose()?;
        let patch = SecretPatch {
            name,
            env_var: env_var.clone(),
            kind: change.kind.map(|k| k.as_str().to_owned()),
            enabled: change.enabled,
            sealed: change.value.as_ref().map(|v| self.vault.seal_secret(id, v)),
            domains: domains.as_deref().map(domains_json),
            updated_at: relay_hub::timestamp(),
        };
        match self.store.update_secret(id, patch).await? {
            SecretWrite::Done => Ok(()),
            SecretWrite::NotFound => Err(SessionError::SecretNotFound),
            SecretWrite::DuplicateEnvVar => Err(duplicate(env_var.as_deref().unwrap_or_default())),
        }
    }

    /// Deletes a secret.
    pub async fn delete(&self, id: &str) -> Result<(), SessionError> {
        if self.store.delete_secret(id).await? {
            Ok(())
        } else {
            Err(SessionError::SecretNotFound)
        }
    }

    /// The files a sandbox's secrets directory holds now: enabled secrets of the kinds that
    /// reach sandboxes, minus the relay's own, named by the lower-case variable name. A sandbox
    /// with the egress gateway gets placeholders for secrets bound to domains (the gateway puts
    /// the values in on requests to those domains). A `direct` one (no gateway: the host's
    /// network) gets their values, and the model keys, which it uses itself.
    pub async fn sandbox_files(&self, direct: bool) -> Result<Vec<SecretFile>, SessionError> {
        let mut out = Vec::new();
        for row in self.store.secrets().await? {
            let kind =
                |k: SecretKind| k.reaches_sandboxes() || (direct && k == SecretKind::AiProvider);
            if !usable(&row, kind) {
                continue;
            }
            let value = if !direct && !bound_domains(&row).is_empty() {
                SecretString::from(relay_gateway::intercept::placeholder_for(&row.id))
            } else {
                self.vault.open_secret(&row.id, &row.sealed)?
            };
            out.push(SecretFile {
                name: row.env_var.to_ascii_lowercase(),
                value,
            });
        }
        Ok(out)
    }

    /// The secrets the gateway puts in on requests to their domains: enabled `env_var`
    /// secrets with domains, minus the relay's own.
    pub async fn domain_secrets(&self) -> Result<Vec<DomainSecret>, SessionError> {
        let mut out = Vec::new();
        for row in self.store.secrets().await? {
            let domains = bound_domains(&row);
            if domains.is_empty() || !usable(&row, |k| k == SecretKind::EnvVar) {
                continue;
            }
            out.push(DomainSecret {
                name: row.env_var.clone(),
                placeholder: relay_gateway::intercept::placeholder_for(&row.id),
                value: self.vault.open_secret(&row.id, &row.sealed)?,
                domains,
            });
        }
        Ok(out)
    }

    /// The model providers' keys the gateway adds to sandboxes' requests: enabled
    /// `ai_provider` secrets, minus the relay's own, by variable.
    pub async fn provider_keys(&self) -> Result<HashMap<String, SecretString>, SessionError> {
        let mut out = HashMap::new();
        for row in self.store.secrets().await? {
            if usable(&row, |k| k == SecretKind::AiProvider) {
                let value = self.vault.open_secret(&row.id, &row.sealed)?;
                out.insert(row.env_var.clone(), value);
            }
        }
        Ok(out)
    }
}

/// The host patterns a secret is bound to (stored domains that are not host patterns, from
/// before they were checked, are left out with a warning).
fn bound_domains(row: &SecretRow) -> Vec<HostPattern> {
    let Some(raw) = row.domains.as_deref() else {
        return Vec::new();
    };
    let list: Vec<String> = serde_json::from_str(raw).unwrap_or_default();
    list.iter()
        .filter_map(|d| match d.parse::<HostPattern>() {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(secret = %row.env_var, error = %e, "a secret's domain is not a host pattern; ignored");
                None
            }
        })
        .collect()
}

/// Whether `row` is enabled, of a kind `kind` accepts, and not one of the relay's own.
fn usable(row: &SecretRow, kind: impl Fn(SecretKind) -> bool) -> bool {
    let relay_only = RELAY_ONLY
        .iter()
        .any(|r| r.eq_ignore_ascii_case(&row.env_var));
    row.enabled && SecretKind::parse(&row.kind).is_some_and(kind) && !relay_only
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(r: Result<String, SessionError>) -> String {
        match r {
            Err(SessionError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn variable_names_are_checked_in_the_protocols_order_then_as_shell_names() {
        assert_eq!(
            validate_env_var("  OPENAI_API_KEY ").unwrap(),
            "OPENAI_API_KEY"
        );
        assert_eq!(validate_env_var("_x1").unwrap(), "_x1");
        assert_eq!(
            invalid(validate_env_var("A\0=B")),
            "envVar must not contain NUL bytes"
        );
        assert_eq!(
            invalid(validate_env_var("A=B")),
            "envVar must not contain '='"
        );
        assert_eq!(invalid(validate_env_var("   ")), "envVar must not be empty");
        for bad in ["1ABC", "MY-KEY", "MY KEY", "KEY\n", "KÉY", "a.b", "$X"] {
            let m = invalid(validate_env_var(&format!("{bad}x")));
            assert!(m.contains("shell variable name"), "{bad:?}: {m}");
        }
        assert!(invalid(validate_env_var(&"A".repeat(129))).contains("at most 128"));
        for reserved in [
            "path",
            "PI_CODING_AGENT_DIR",
            "USER",
            "LD_PRELOAD",
            "ld_library_path",
        ] {
            assert!(
                invalid(validate_env_var(reserved)).contains("reserved"),
                "{reserved}"
            );
        }
        assert!(validate_env_var("LDX").is_ok());
    }

    #[test]
    fn values_must_be_non_blank_without_nul_and_within_the_limit() {
        let v = |s: &str| validate_value(&SecretString::from(s));
        assert!(v(" sk-1 ").is_ok());
        assert!(v(&"x".repeat(MAX_VALUE_BYTES)).is_ok());
        let msg = |r: Result<(), SessionError>| r.unwrap_err().to_string();
        assert_eq!(msg(v("")), "value is required");
        assert_eq!(msg(v(" \n\t")), "value is required");
        assert_eq!(msg(v("a\0b")), "value must not contain NUL bytes");
        assert_eq!(
            msg(v(&"x".repeat(MAX_VALUE_BYTES + 1))),
            "value must be at most 65536 bytes"
        );
    }

    #[test]
    fn domains_are_trimmed_lowercased_deduplicated_and_free_of_urls() {
        let d = |v: &[&str]| validate_domains(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            d(&[" API.OpenAI.com ", "api.openai.com", "*.anthropic.com"]).unwrap(),
            ["api.openai.com", "*.anthropic.com"]
        );
        assert!(d(&[]).unwrap().is_empty());
        let msg = |v: &[&str]| d(v).unwrap_err().to_string();
        assert_eq!(msg(&[" "]), "Domain pattern must not be empty");
        assert_eq!(
            msg(&["https://x.com"]),
            "Domain pattern must not contain URL scheme: \"https://x.com\""
        );
        assert_eq!(
            msg(&["x.com/path"]),
            "Domain pattern must not contain slash: \"x.com/path\""
        );
        assert_eq!(
            msg(&["x.com?q"]),
            "Domain pattern must not contain query string: \"x.com?q\""
        );
    }

    #[test]
    fn names_are_required_and_bounded() {
        assert_eq!(validate_name("  Anthropic ").unwrap(), "Anthropic");
        assert_eq!(invalid(validate_name(" ")), "name is required");
        assert!(invalid(validate_name(&"n".repeat(201))).contains("at most 200"));
    }

    #[test]
    fn only_user_variables_reach_sandboxes() {
        assert!(!SecretKind::AiProvider.reaches_sandboxes());
        assert!(SecretKind::EnvVar.reaches_sandboxes());
        assert!(!SecretKind::SandboxProvider.reaches_sandboxes());
        for k in ["ai_provider", "env_var", "sandbox_provider"] {
            assert_eq!(SecretKind::parse(k).unwrap().as_str(), k);
        }
        assert_eq!(SecretKind::parse("other"), None);
    }
}
