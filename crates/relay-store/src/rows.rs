//! Row types exchanged with the store and their mapping from SQL rows.

use std::sync::Arc;

use bytes::Bytes;
use relay_model::{Mode, SessionStatus};

/// A session as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    /// The session's id (a UUID).
    pub id: String,
    /// Chat or code.
    pub mode: Mode,
    /// Where it is in its lifecycle.
    pub status: SessionStatus,
    /// Why the session is in `error` (never shown to clients verbatim in the session object).
    pub status_reason: Option<String>,
    /// The provider its sandboxes run on (`docker`).
    pub sandbox_provider: Option<String>,
    /// The provider's id of its current sandbox, once one was created.
    pub sandbox_provider_id: Option<String>,
    /// The environment its sandboxes are made from.
    pub environment_id: Option<String>,
    /// The id of the image its current sandbox runs.
    pub sandbox_image_digest: Option<String>,
    /// The repository of a code session.
    pub repo_id: Option<String>,
    /// Where the repository is in the workspace.
    pub repo_path: Option<String>,
    /// The session's branch in the repository.
    pub branch_name: Option<String>,
    /// The branch is created at the first push rather than at the start.
    pub branch_creation_deferred: bool,
    /// Its title, given by the client or pi, or made from the first prompt.
    pub name: Option<String>,
    /// The first prompt a client sent.
    pub first_user_message: Option<String>,
    /// The model provider pi uses, as the client chose it.
    pub current_model_provider: Option<String>,
    /// The model pi uses, as the client chose it.
    pub current_model_id: Option<String>,
    /// An extra system prompt for pi.
    pub system_prompt: Option<String>,
    /// pi's extensions changed since its sandbox started.
    pub extensions_stale: bool,
    /// When it was created (ISO 8601, UTC).
    pub created_at: String,
    /// When a client or pi last did something (ISO 8601, UTC).
    pub last_activity_at: String,
}

/// What a new session row needs.
#[derive(Clone, Debug)]
pub struct NewSession {
    /// The session's id (a UUID).
    pub id: String,
    /// Chat or code.
    pub mode: Mode,
    /// The repository of a code session.
    pub repo_id: Option<String>,
    /// Its title, given by the client or pi, or made from the first prompt.
    pub name: Option<String>,
    /// The model provider chosen at creation.
    pub model_provider: Option<String>,
    /// The model chosen at creation.
    pub model_id: Option<String>,
    /// An extra system prompt for pi.
    pub system_prompt: Option<String>,
    /// The provider its sandboxes will run on.
    pub sandbox_provider: Option<String>,
    /// The environment its sandboxes are made from.
    pub environment_id: Option<String>,
    /// The first prompt a client sent.
    pub first_user_message: Option<String>,
    /// Creation time (ISO 8601, UTC); also its first activity.
    pub created_at: String,
}

/// The sandbox a session runs in.
#[derive(Clone, Debug, Default)]
pub struct SessionSandbox {
    /// The provider (`docker`).
    pub provider: Option<String>,
    /// The provider's id of the sandbox.
    pub provider_id: Option<String>,
    /// The id of the image it runs.
    pub image_digest: Option<String>,
}

/// An environment row; `config` is a JSON object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvironmentRow {
    /// The environment's id (a UUID).
    pub id: String,
    /// Its name, shown to clients.
    pub name: String,
    /// The provider type it runs on (`docker`).
    pub sandbox_type: String,
    /// Its configuration, a JSON object (image, resource tier, idle timeout, variables, network).
    pub config: String,
    /// Sessions created without an environment use this one.
    pub is_default: bool,
    /// When it was created (ISO 8601, UTC).
    pub created_at: String,
    /// When it last changed (ISO 8601, UTC).
    pub updated_at: String,
}

/// One journal line to write. `payload` is the JSON text exactly as pi printed it.
#[derive(Clone, Debug)]
pub struct JournalEntry {
    /// The session the line belongs to.
    pub session_id: Arc<str>,
    /// Its sequence number in the session's journal.
    pub seq: u64,
    /// Its `type` field (`unknown` when it has none).
    pub ty: Box<str>,
    /// The line exactly as pi printed it, without the newline.
    pub payload: Bytes,
    /// When the relay read it.
    pub created_at: std::time::SystemTime,
}

/// One journal line as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRow {
    /// Its sequence number in the session's journal.
    pub seq: u64,
    /// Its `type` field.
    pub ty: String,
    /// The line as pi printed it (JSON text).
    pub payload: String,
    /// When the relay read it (ISO 8601, UTC).
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
    /// The AES-GCM nonce, base64.
    pub iv: String,
    /// The encrypted value, base64.
    pub ciphertext: String,
    /// The authentication tag, base64.
    pub tag: String,
    /// Which key sealed it.
    pub key_version: u32,
}

/// A secret as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRow {
    /// The secret's id (a UUID).
    pub id: String,
    /// Its name, shown to clients.
    pub name: String,
    /// The variable it becomes in a sandbox.
    pub env_var: String,
    /// `ai_provider`, `env_var` or `sandbox_provider`.
    pub kind: String,
    /// Whether sandboxes receive it.
    pub enabled: bool,
    /// The value, sealed by the vault.
    pub sealed: SealedValue,
    /// When it was created (ISO 8601, UTC).
    pub created_at: String,
    /// When it last changed (ISO 8601, UTC).
    pub updated_at: String,
    /// JSON array of domain patterns, or `None`.
    pub domains: Option<String>,
}

/// A change to a secret: `None` fields stay as they are.
#[derive(Clone, Debug, Default)]
pub struct SecretPatch {
    /// A new name.
    pub name: Option<String>,
    /// A new variable name.
    pub env_var: Option<String>,
    /// A new kind.
    pub kind: Option<String>,
    /// Enabled or not.
    pub enabled: Option<bool>,
    /// A new sealed value.
    pub sealed: Option<SealedValue>,
    /// `Some(None)` clears the domains.
    pub domains: Option<Option<String>>,
    /// When the change is made (ISO 8601, UTC).
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
    /// A known text sealed with the current key.
    pub sealed: SealedValue,
    /// When it was sealed (ISO 8601, UTC).
    pub created_at: String,
}

/// One sealed value handed to [`crate::Store::reseal_secrets`]: a secret (by id) or the key
/// check (`id` is `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResealItem {
    /// The secret it belongs to (`None`: the key check).
    pub id: Option<String>,
    /// The value as sealed now.
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
    /// A new name.
    pub name: Option<String>,
    /// The whole new config (JSON object).
    pub config: Option<String>,
    /// Make it the default.
    pub is_default: Option<bool>,
    /// When the change is made (ISO 8601, UTC).
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
