//! Row types exchanged with the store and their mapping from SQL rows.

use std::sync::Arc;

use bytes::Bytes;
use relay_model::{Mode, SessionStatus};

/// A session as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    pub id: String,
    pub mode: Mode,
    pub status: SessionStatus,
    /// Why the session is in `error` (never shown to clients verbatim in the session object).
    pub status_reason: Option<String>,
    pub sandbox_provider: Option<String>,
    pub sandbox_provider_id: Option<String>,
    pub environment_id: Option<String>,
    pub sandbox_image_digest: Option<String>,
    pub repo_id: Option<String>,
    pub repo_path: Option<String>,
    pub branch_name: Option<String>,
    pub branch_creation_deferred: bool,
    pub name: Option<String>,
    pub first_user_message: Option<String>,
    pub current_model_provider: Option<String>,
    pub current_model_id: Option<String>,
    pub system_prompt: Option<String>,
    pub extensions_stale: bool,
    pub created_at: String,
    pub last_activity_at: String,
}

/// What a new session row needs.
#[derive(Clone, Debug)]
pub struct NewSession {
    pub id: String,
    pub mode: Mode,
    pub repo_id: Option<String>,
    pub name: Option<String>,
    pub model_provider: Option<String>,
    pub model_id: Option<String>,
    pub system_prompt: Option<String>,
    pub sandbox_provider: Option<String>,
    pub environment_id: Option<String>,
    pub first_user_message: Option<String>,
    pub created_at: String,
}

/// The sandbox a session runs in.
#[derive(Clone, Debug, Default)]
pub struct SessionSandbox {
    pub provider: Option<String>,
    pub provider_id: Option<String>,
    pub image_digest: Option<String>,
}

/// An environment row; `config` is a JSON object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvironmentRow {
    pub id: String,
    pub name: String,
    pub sandbox_type: String,
    pub config: String,
    pub is_default: bool,
    pub created_at: String,
    pub updated_at: String,
}

/// One journal line to write. `payload` is the JSON text exactly as pi printed it.
#[derive(Clone, Debug)]
pub struct JournalEntry {
    pub session_id: Arc<str>,
    pub seq: u64,
    pub ty: Box<str>,
    pub payload: Bytes,
    pub created_at: std::time::SystemTime,
}

/// One journal line as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRow {
    pub seq: u64,
    pub ty: String,
    pub payload: String,
    pub created_at: String,
}

pub(crate) const SESSION_SELECT: &str = "SELECT s.id, s.mode, s.status, s.status_reason, \
    s.sandbox_provider, s.sandbox_provider_id, s.environment_id, s.sandbox_image_digest, \
    s.repo_id, s.repo_path, s.branch_name, s.branch_creation_deferred, s.name, \
    s.first_user_message, s.current_model_provider, s.current_model_id, s.system_prompt, \
    s.extensions_stale, s.created_at, s.last_activity_at FROM sessions s";

pub(crate) fn session_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRow> {
    Ok(SessionRow {
        id: r.get(0)?,
        mode: parsed(r, 1)?,
        status: parsed(r, 2)?,
        status_reason: r.get(3)?,
        sandbox_provider: r.get(4)?,
        sandbox_provider_id: r.get(5)?,
        environment_id: r.get(6)?,
        sandbox_image_digest: r.get(7)?,
        repo_id: r.get(8)?,
        repo_path: r.get(9)?,
        branch_name: r.get(10)?,
        branch_creation_deferred: r.get(11)?,
        name: r.get(12)?,
        first_user_message: r.get(13)?,
        current_model_provider: r.get(14)?,
        current_model_id: r.get(15)?,
        system_prompt: r.get(16)?,
        extensions_stale: r.get(17)?,
        created_at: r.get(18)?,
        last_activity_at: r.get(19)?,
    })
}

/// A text column holding one of a type's names; any other value in the database is a clear error
/// naming the value, not a silent default.
fn parsed<T>(r: &rusqlite::Row<'_>, col: usize) -> rusqlite::Result<T>
where
    T: std::str::FromStr<Err = relay_model::UnknownValue>,
{
    let text: String = r.get(col)?;
    text.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, Box::new(e))
    })
}

pub(crate) const ENV_SELECT: &str = "SELECT id, name, sandbox_type, config, is_default, \
    created_at, updated_at FROM environments";

pub(crate) fn environment_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EnvironmentRow> {
    Ok(EnvironmentRow {
        id: r.get(0)?,
        name: r.get(1)?,
        sandbox_type: r.get(2)?,
        config: r.get(3)?,
        is_default: r.get(4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
    })
}

/// A value sealed with AES-256-GCM as stored: base64 nonce, ciphertext without the tag, and
/// tag, plus the version of the key that sealed it. The store never sees a plaintext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedValue {
    pub iv: String,
    pub ciphertext: String,
    pub tag: String,
    pub key_version: u32,
}

/// A secret as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRow {
    pub id: String,
    pub name: String,
    pub env_var: String,
    /// `ai_provider`, `env_var` or `sandbox_provider`.
    pub kind: String,
    pub enabled: bool,
    pub sealed: SealedValue,
    pub created_at: String,
    pub updated_at: String,
    /// JSON array of domain patterns, or `None`.
    pub domains: Option<String>,
}

/// A change to a secret: `None` fields stay as they are.
#[derive(Clone, Debug, Default)]
pub struct SecretPatch {
    pub name: Option<String>,
    pub env_var: Option<String>,
    pub kind: Option<String>,
    pub enabled: Option<bool>,
    pub sealed: Option<SealedValue>,
    /// `Some(None)` clears the domains.
    pub domains: Option<Option<String>>,
    pub updated_at: String,
}

/// The outcome of writing a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretWrite {
    /// Written.
    Done,
    /// No secret has that id.
    NotFound,
    /// Another secret has the same variable name (compared case-insensitively).
    DuplicateEnvVar,
}

/// The known value sealed with the current key (see the `secrets_key_check` table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyCheckRow {
    pub sealed: SealedValue,
    pub created_at: String,
}

/// One sealed value handed to [`crate::Store::reseal_secrets`]: a secret (by id) or the key
/// check (`id` is `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResealItem {
    pub id: Option<String>,
    pub sealed: SealedValue,
}

pub(crate) const SECRET_SELECT: &str = "SELECT id, name, env_var, kind, enabled, iv, ciphertext, \
    tag, key_version, created_at, updated_at, domains FROM secrets";

pub(crate) fn secret_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SecretRow> {
    Ok(SecretRow {
        id: r.get(0)?,
        name: r.get(1)?,
        env_var: r.get(2)?,
        kind: r.get(3)?,
        enabled: r.get(4)?,
        sealed: SealedValue {
            iv: r.get(5)?,
            ciphertext: r.get(6)?,
            tag: r.get(7)?,
            key_version: r.get(8)?,
        },
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
        domains: r.get(11)?,
    })
}

/// A change to an environment: `None` fields stay as they are.
#[derive(Clone, Debug, Default)]
pub struct EnvironmentPatch {
    pub name: Option<String>,
    /// The whole new config (JSON object).
    pub config: Option<String>,
    pub is_default: Option<bool>,
    pub updated_at: String,
}

/// The outcome of changing or deleting an environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvironmentWrite {
    /// Done.
    Done,
    /// No environment has that id.
    NotFound,
    /// Refused: sessions that are not archived use it (how many).
    InUse(u64),
    /// Refused: it is the default environment, and there must always be one.
    IsDefault,
}
