//! The session domain: what a session is, its lifecycle, and [`SessionService`], which drives
//! the store, the sandbox provider and the hubs to create, activate, connect to, archive and
//! delete sessions; the secrets vault ([`vault`], [`secrets`]) and what sandboxes receive of
//! it; environments ([`environments`]) and relay settings ([`settings`]). It knows neither HTTP
//! nor SQL nor Docker.

mod activation;
pub mod crypto;
mod delivery;
pub mod egress;
pub mod environments;
pub mod exec;
pub mod extensions;
pub mod files;
mod gateway;
pub mod github;
pub mod github_app;
pub mod history;
mod lifecycle;
pub mod models;
mod observer;
pub mod packages;
mod provision;
pub mod reaper;
mod reconcile;
mod recovery;
pub mod secrets;
mod service;
pub mod settings;
mod spec;
pub mod text;
pub mod title;
pub mod vault;

use std::path::PathBuf;

pub use relay_gateway::usage::{HostUsage, ProviderUsage, UsageReport, Verdict};
pub use relay_gateway::{EgressMode, EgressPolicy, Gateway};
pub use relay_hub::{ClientConn, Hub, Outbound, Replay};
pub use relay_model::{ExtensionScope, IllegalTransition, Mode, SessionStatus};
pub use relay_sandbox::{SandboxError, SandboxStatus, Terminal, TerminalSize};
pub use relay_store::EventRow;
pub use service::{MAX_EVENTS_PAGE, MAX_EVENTS_PAGE_BYTES, SessionService};
pub use spec::{container_name, sandbox_spec};

/// Settings of the session layer, taken from the relay's configuration.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Image used when a session's environment names none.
    pub default_image: String,
    /// uid:gid sandboxes run as.
    pub sandbox_user: (u32, u32),
    /// Network of sandboxes whose environment names none.
    pub network: relay_sandbox::Network,
    /// Identifies this relay on the sandboxes it creates.
    pub instance_id: String,
    /// Hardened sandboxes (all capabilities dropped, no privilege escalation, an init process).
    pub hardened: bool,
    /// Files copied into every new session's pi agent directory (`models.json`,
    /// `settings.json`, extensions), unless pi's own copy exists.
    pub agent_template: Option<PathBuf>,
    /// How long activate waits for provisioning.
    pub activate_timeout: std::time::Duration,
    /// Variables that make a sandbox with the egress gateway trust the relay's CA (see
    /// `relay_gateway::Gateway::trust_variables`).
    pub trust_env: Vec<(String, String)>,
    /// Where pi packages are looked up (the npm registry and a CDN of packages' files).
    pub packages: PackageSources,
    /// GitHub's API base URL.
    pub github_api: String,
}

/// Where pi packages are looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageSources {
    /// The npm registry's base URL.
    pub registry: String,
    /// Base URL of a CDN serving packages' files (`<cdn>/<name>@<version>/schema.json`).
    pub cdn: String,
}

impl Default for PackageSources {
    fn default() -> PackageSources {
        PackageSources {
            registry: packages::DEFAULT_NPM_REGISTRY.to_owned(),
            cdn: packages::DEFAULT_PACKAGE_CDN.to_owned(),
        }
    }
}

/// A session as clients see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The session's id (a UUID).
    pub id: String,
    /// Chat or code.
    pub mode: Mode,
    /// Where it is in its lifecycle.
    pub status: SessionStatus,
    /// Why it is in that status, when the relay knows (why it failed, for `error`).
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

impl From<relay_store::SessionRow> for Session {
    fn from(r: relay_store::SessionRow) -> Session {
        Session {
            id: r.id,
            mode: r.mode,
            status: r.status,
            status_reason: r.status_reason.clone(),
            sandbox_provider: r.sandbox_provider,
            sandbox_provider_id: r.sandbox_provider_id,
            environment_id: r.environment_id,
            sandbox_image_digest: r.sandbox_image_digest,
            repo_id: r.repo_id,
            repo_path: r.repo_path,
            branch_name: r.branch_name,
            branch_creation_deferred: r.branch_creation_deferred,
            name: r.name,
            first_user_message: r.first_user_message,
            current_model_provider: r.current_model_provider,
            current_model_id: r.current_model_id,
            system_prompt: r.system_prompt,
            extensions_stale: r.extensions_stale,
            created_at: r.created_at,
            last_activity_at: r.last_activity_at,
        }
    }
}

/// What creating a session needs.
#[derive(Clone, Debug)]
pub struct NewSessionRequest {
    /// Chat or code.
    pub mode: Mode,
    /// The repository of a code session.
    pub repo_id: Option<String>,
    /// The environment to use (the default one when `None`).
    pub environment_id: Option<String>,
    /// The model provider the client chose.
    pub model_provider: Option<String>,
    /// The model the client chose.
    pub model_id: Option<String>,
    /// A title (made from the first prompt when `None`).
    pub session_name: Option<String>,
    /// The prompt the client will send first.
    pub first_prompt: Option<String>,
    /// An extra system prompt for pi.
    pub system_prompt: Option<String>,
}

/// The answer to a successful activate: the sandbox runs and its hub is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Activation {
    /// The session.
    pub session_id: String,
    /// The journal's last sequence number, committed (clients page `GET …/events` up to it).
    pub last_seq: u64,
}

/// A page of the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventPage {
    /// The events, in order.
    pub events: Vec<EventRow>,
    /// The last sequence number on the page (the one asked after when it is empty).
    pub last_seq: u64,
}

/// A session's sandbox as the runtime reports it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxView {
    /// The provider (`docker`).
    pub provider: Option<String>,
    /// The provider's id of the current sandbox.
    pub provider_id: Option<String>,
    /// What the provider says of it now.
    pub state: SandboxState,
    /// The id of the image it runs.
    pub image_digest: Option<String>,
    /// What the provider can do.
    pub capabilities: relay_sandbox::Capabilities,
}

/// What the runtime says of a session's sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxState {
    /// The session never had one (provisioning failed before one ran).
    NotProvisioned,
    /// One is being provisioned (a new session, or a restart replacing the old one).
    Provisioning,
    /// It exists, in this status.
    Present(SandboxStatus),
    /// The runtime does not know it any more.
    Gone,
    /// The runtime does not answer.
    Unreachable,
}

/// What a session's sandbox may reach and what it did through the egress gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressView {
    /// Whether its sandbox reaches the world through the gateway (not on the host's network).
    pub gateway: bool,
    /// Its sandbox's network.
    pub network: String,
    /// Its CONNECT policy.
    pub policy: EgressPolicy,
    /// The model providers the gateway serves it.
    pub providers: Vec<String>,
    /// What it did since the relay started.
    pub usage: UsageReport,
}

/// Errors of the session layer.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No such session.
    #[error("Session not found")]
    NotFound,
    /// No such environment.
    #[error("Environment not found")]
    EnvironmentNotFound,
    /// No environment given and none is the default.
    #[error("No environment specified and no default configured")]
    NoDefaultEnvironment,
    /// The session is archived.
    #[error("Session has been archived")]
    Archived,
    /// The session is in `error`.
    #[error("Session is in error state")]
    InErrorState,
    /// Restart of an archived session.
    #[error("Cannot restart archived session")]
    CannotRestartArchived,
    /// Restart of a session that never had a sandbox.
    #[error("Session has no restartable sandbox")]
    NotRestartable,
    /// Provisioning failed while activate waited.
    #[error("Sandbox provisioning failed")]
    ProvisioningFailed,
    /// Provisioning did not finish in time.
    #[error("Timed out waiting for sandbox to provision")]
    ActivateTimeout,
    /// The sandbox could not be resumed or started.
    #[error("Sandbox unavailable: {0}")]
    SandboxUnavailable(#[source] relay_sandbox::SandboxError),
    /// The lifecycle does not allow the change.
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    /// The session changed while the request was handled (another request won).
    #[error("Session changed meanwhile; try again")]
    Changed,
    /// A request the relay does not support.
    #[error("{0}")]
    Unsupported(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] relay_store::StoreError),
    /// The sandbox provider failed.
    #[error(transparent)]
    Sandbox(#[from] relay_sandbox::SandboxError),
    /// Host file system work failed.
    #[error("session files: {0}")]
    Io(#[from] std::io::Error),
    /// A request with invalid content; the message says what to fix.
    #[error("{0}")]
    Invalid(String),
    /// No such secret.
    #[error("Secret not found")]
    SecretNotFound,
    /// The request conflicts with the current state (an environment still in use, the default
    /// environment).
    #[error("{0}")]
    Conflict(String),
    /// The encryption key is missing, malformed, or not the one the stored secrets need.
    #[error("{0}")]
    Key(String),
    /// The key file could not be read or written.
    #[error("{what}: {source}")]
    KeyFile {
        /// What the relay was doing, and with which file.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A stored secret does not decrypt (the database was changed outside the relay).
    #[error("secrets vault: {0}")]
    Crypto(String),
    /// A command run in a sandbox did not end in time (it keeps running there).
    #[error("Exec timed out")]
    ExecTimedOut,
    /// No extension configuration has that id.
    #[error("Extension config not found")]
    ExtensionConfigNotFound,
    /// A configuration leaves fields its package's schema requires empty (their names).
    #[error("Invalid config values")]
    InvalidConfigValues(Vec<String>),
    /// The npm registry gave no catalogue and none is kept.
    #[error("Package catalog unavailable")]
    CatalogUnavailable,
    /// No GitHub token (or App) is configured.
    #[error("GitHub auth not configured. Connect a GitHub App or add a Personal Access Token.")]
    GitHubNotConfigured,
    /// No GitHub App is connected.
    #[error("GitHub App not configured")]
    GitHubAppNotConfigured,
    /// GitHub refused a token or a request, or could not be reached (the message says which).
    #[error("{0}")]
    GitHub(String),
}

/// Why a WebSocket may not connect, with the protocol's close code and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectRefused {
    /// 4003 or 4004.
    pub code: u16,
    /// The close reason.
    pub reason: &'static str,
}
