//! The sandbox provider contract: what the relay asks of a runtime that runs sessions' sandboxes,
//! in the relay's own types. A provider runs sandboxes ([`Sandbox`]), keeps each session's files
//! (its workspace, pi's agent directory and its secrets, see [`SessionStorage`]) and declares what
//! it can do ([`Capabilities`]), so the session layer adapts without knowing which runtime it is.
//! Docker is the first provider (`relay-docker`); the in-memory [`fake`] provider (feature `fake`)
//! serves tests; [`host`] keeps session files in host directories for providers that bind-mount
//! them. Nothing here knows a particular runtime's API.

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use secrecy::SecretString;
use tokio::io::AsyncWrite;

mod beneath;
mod exec;
#[cfg(feature = "fake")]
pub mod fake;
pub mod host;

pub use exec::{ExecOutput, ExecRequest, Terminal, TerminalControl, TerminalSize};

/// Label carrying the session id on every sandbox the relay creates.
pub const LABEL_SESSION: &str = "pi-relay.session";
/// Label carrying the relay instance id, so a relay finds what it owns after a restart.
pub const LABEL_INSTANCE: &str = "pi-relay.instance";
/// Label carried by the sandbox images this repository builds (`images/*/build.sh`): the hash
/// of what they were built from.
pub const LABEL_BUILD_HASH: &str = "pi-relay.build-hash";

/// Where a sandbox sees the session's workspace (read-write; the repository clone).
pub const WORKSPACE_PATH: &str = "/workspace";
/// Where a sandbox sees pi's agent directory (read-write; `PI_CODING_AGENT_DIR`).
pub const AGENT_PATH: &str = "/data/agent";
/// Where a sandbox sees its secrets, one file per secret (read-only).
pub const SECRETS_PATH: &str = "/run/secrets";
/// The sandbox user's home: private and writable, whatever uid the sandbox runs as.
pub const HOME_PATH: &str = "/home/user";
/// Where a sandbox sees the directory holding its egress socket (read-only).
pub const EGRESS_DIR_PATH: &str = "/run/egress";
/// The egress socket's file name in its directory.
pub const EGRESS_SOCKET_NAME: &str = "egress.sock";
/// The uid:gid the forwarder runs as inside a sandbox: not the agent's, so the agent cannot
/// signal or replace it.
pub const FORWARDER_USER: (u32, u32) = (65534, 65534);

/// The runtime's own id of a sandbox (a Docker container id).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SandboxId(pub String);

impl SandboxId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a provider can do. The session layer reads it once and adapts: it never asks a provider
/// for something it has not declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Freezes a running sandbox with its processes in memory ([`Sandbox::pause`],
    /// [`Sandbox::unpause`]). Without it, an idle session's sandbox is stopped, and activate
    /// starts it again (pi, started with the session's id, continues the same conversation).
    pub pause: bool,
    /// How much of a sandbox's stdout [`Sandbox::stdout_history`] gives back.
    pub output_history: OutputHistory,
    /// Lists the sandbox images it holds ([`Sandbox::list_images`]).
    pub image_listing: bool,
    /// Runs the relay's forwarder in a sandbox ([`SandboxSpec::egress`]), so a sandbox without a
    /// network of its own reaches the relay's egress gateway.
    pub egress: bool,
    /// Runs a command in a running sandbox ([`Sandbox::exec`]).
    pub exec: bool,
    /// Opens an interactive shell with a terminal in a running sandbox
    /// ([`Sandbox::open_terminal`]).
    pub terminal: bool,
}

/// How much of what a sandbox printed its provider keeps, for recovering output printed while
/// the relay was not attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputHistory {
    /// Everything since the sandbox was created, across restarts (Docker's log).
    SinceCreation,
    /// Everything since the sandbox's latest start (a restarted process starts a new log).
    SinceStart,
    /// Nothing: output printed while nobody was attached is lost.
    None,
}

/// Resource limits applied to one sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Limits {
    /// Memory limit in bytes (no swap on top of it).
    pub memory_bytes: Option<i64>,
    /// CPU quota in units of 1e-9 CPUs.
    pub nano_cpus: Option<i64>,
    /// Maximum number of processes and threads.
    pub pids: Option<i64>,
}

/// The network a sandbox is attached to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Network {
    /// No network at all (loopback only).
    None,
    /// The provider's default network (Docker's `bridge`).
    Default,
    /// The host's network namespace.
    Host,
    /// A network the operator created on the provider, by name.
    Named(String),
}

impl Network {
    /// The name clients and configuration use: `none`, `bridge`, `host` or the network's name.
    pub fn as_str(&self) -> &str {
        match self {
            Network::None => "none",
            Network::Default => "bridge",
            Network::Host => "host",
            Network::Named(n) => n,
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A network name that is empty or not a plain name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid network {0:?}: use none, bridge, host or the name of an existing network")]
pub struct InvalidNetwork(pub String);

impl FromStr for Network {
    type Err = InvalidNetwork;
    fn from_str(s: &str) -> Result<Network, InvalidNetwork> {
        Ok(match s {
            "none" => Network::None,
            "bridge" | "default" => Network::Default,
            "host" => Network::Host,
            name if name.len() <= 128
                && name.starts_with(|c: char| c.is_ascii_alphanumeric())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) =>
            {
                Network::Named(name.to_owned())
            }
            other => return Err(InvalidNetwork(other.to_owned())),
        })
    }
}

/// Everything needed to create a session's sandbox. The provider adds the session's files itself
/// ([`SessionStorage`]): the workspace at [`WORKSPACE_PATH`], pi's agent directory at
/// [`AGENT_PATH`], the secrets at [`SECRETS_PATH`] (read-only) and a writable [`HOME_PATH`].
/// Secrets never travel in here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxSpec {
    /// The session the sandbox belongs to; its files are found by this id.
    pub session_id: String,
    /// Deterministic name (`pi-sandbox-<sessionId>`).
    pub name: String,
    /// Image, as pinned by [`Sandbox::pin_image`].
    pub image: String,
    /// Command run by the image's entrypoint.
    pub command: Vec<String>,
    /// Non-secret environment variables.
    pub env: Vec<(String, String)>,
    /// `uid:gid` the sandbox runs as. Never `0`.
    pub user: (u32, u32),
    /// Working directory inside the sandbox.
    pub working_dir: String,
    /// Labels identifying the owner.
    pub labels: BTreeMap<String, String>,
    /// The network it is attached to.
    pub network: Network,
    /// Resource limits.
    pub limits: Limits,
    /// Drop all capabilities, forbid privilege escalation, run an init process.
    pub hardened: bool,
    /// The sandbox's way to the relay's egress gateway, if it gets one.
    pub egress: Option<Egress>,
}

/// A forwarder inside the sandbox, on `127.0.0.1:port`, carrying every connection to the
/// session's egress socket ([`SessionStorage::egress_socket`]), run as [`FORWARDER_USER`] from
/// every start of the sandbox on. The socket's directory is visible at [`EGRESS_DIR_PATH`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Egress {
    /// The loopback port the forwarder listens on.
    pub port: u16,
}

/// Where a sandbox is in its life, as the runtime reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxStatus {
    /// Created, not started yet (or restarting).
    Created,
    /// Its main process runs.
    Running,
    /// Frozen; processes kept in memory (only with [`Capabilities::pause`]).
    Paused,
    /// Its main process has exited.
    Exited,
}

/// What the runtime knows about one sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxInfo {
    /// Runtime id.
    pub id: SandboxId,
    /// Name.
    pub name: String,
    /// Current status.
    pub status: SandboxStatus,
    /// Exit code of the main process, once it has exited.
    pub exit_code: Option<i64>,
    /// Id of the image the sandbox was created from.
    pub image_id: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// An image the provider holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Image id (`sha256:…`).
    pub id: String,
    /// Its references (`name:tag`); empty for an untagged image.
    pub tags: Vec<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// One chunk of output from a sandbox's main process. A chunk is not a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputChunk {
    /// Bytes written to stdout.
    Stdout(Bytes),
    /// Bytes written to stderr.
    Stderr(Bytes),
}

/// Stream of output chunks; it ends when the main process exits or the attachment is dropped.
pub type OutputStream = BoxStream<'static, Result<OutputChunk, SandboxError>>;

/// An attachment to a sandbox's stdio. Dropping it detaches without stopping the sandbox;
/// stdin stays open for the next attachment.
pub struct SandboxIo {
    /// stdout and stderr, in order.
    pub output: OutputStream,
    /// The main process's stdin.
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
}

impl fmt::Debug for SandboxIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxIo").finish_non_exhaustive()
    }
}

/// One file of a sandbox's secrets directory: its name (the lower-case variable name, which the
/// image's entrypoint exports upper-cased) and its value.
#[derive(Clone, Debug)]
pub struct SecretFile {
    /// File name: letters, digits and `_` only.
    pub name: String,
    /// Content, byte for byte.
    pub value: SecretString,
}

/// A file for pi's agent directory (`models.json`, `settings.json`, an extension's file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentFile {
    /// Path relative to the agent directory, without `..` or a leading `/`.
    pub path: std::path::PathBuf,
    /// Content.
    pub content: Bytes,
}

/// Which files of a session a provider keeps, as listed by [`SessionStorage::sessions`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSession {
    /// The session's id.
    pub session_id: String,
    /// Its workspace and agent directory exist.
    pub files: bool,
    /// Its secrets exist.
    pub secrets: bool,
}

/// Errors of sandbox providers.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// No such sandbox.
    #[error("sandbox not found: {0}")]
    NotFound(String),
    /// No such image.
    #[error("image not available: {0}")]
    ImageNotFound(String),
    /// A sandbox with that name exists already.
    #[error("sandbox name already in use: {0}")]
    Conflict(String),
    /// The operation does not fit the sandbox's current state (e.g. pausing a stopped one).
    #[error("invalid sandbox state: {0}")]
    InvalidState(String),
    /// The provider does not offer this operation (see [`Capabilities`]).
    #[error("not supported by the {provider} provider: {operation}")]
    Unsupported {
        /// The provider's kind.
        provider: &'static str,
        /// What was asked.
        operation: &'static str,
    },
    /// The runtime cannot be reached.
    #[error("sandbox runtime unavailable: {context}: {source}")]
    Unavailable {
        /// What the relay was doing.
        context: String,
        /// Why it failed.
        #[source]
        source: BoxError,
    },
    /// Any other error the runtime reported.
    #[error("sandbox runtime error: {context}{}", cause(.source.as_deref()))]
    Runtime {
        /// What the relay was doing (and, without a source, what went wrong).
        context: String,
        /// Why it failed, when another error says so.
        #[source]
        source: Option<BoxError>,
    },
    /// A session's files could not be written or removed.
    #[error("session files of {session}: {source}")]
    Storage {
        /// The session.
        session: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// An error kept as the cause of another.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn cause(source: Option<&(dyn std::error::Error + Send + Sync)>) -> String {
    source.map(|s| format!(": {s}")).unwrap_or_default()
}

impl SandboxError {
    /// The runtime cannot be reached while doing `context`, because of `source`.
    pub fn unavailable(context: impl Into<String>, source: impl Into<BoxError>) -> SandboxError {
        SandboxError::Unavailable {
            context: context.into(),
            source: source.into(),
        }
    }

    /// The runtime failed: `what` says how.
    pub fn runtime(what: impl Into<String>) -> SandboxError {
        SandboxError::Runtime {
            context: what.into(),
            source: None,
        }
    }

    /// The runtime failed while doing `context`, because of `source`.
    pub fn runtime_from(context: impl Into<String>, source: impl Into<BoxError>) -> SandboxError {
        SandboxError::Runtime {
            context: context.into(),
            source: Some(source.into()),
        }
    }
}

/// Keeps each session's files where its sandboxes see them: the workspace, pi's agent directory
/// and the secrets. Existing content survives sandboxes being recreated; only
/// [`SessionStorage::remove`] deletes it.
#[async_trait]
pub trait SessionStorage: Send + Sync + fmt::Debug {
    /// Makes the session's workspace, agent directory and (empty) secrets exist, usable by
    /// `user`; keeps what they hold.
    async fn prepare(&self, session: &str, user: (u32, u32)) -> Result<(), SandboxError>;
    /// Adds `files` to the agent directory where no file of that name exists yet (pi may have
    /// changed its own copy).
    async fn seed_agent_files(
        &self,
        session: &str,
        user: (u32, u32),
        files: Vec<AgentFile>,
    ) -> Result<(), SandboxError>;
    /// A file in the agent directory (`models.json`, `exports/session-1.html`: components
    /// separated by `/`), at most `max` bytes; `None` when there is none, or when an entry on
    /// the way is not a directory or the file not a regular file (a link is never followed: the
    /// directory is the sandbox's).
    async fn read_agent_file(
        &self,
        session: &str,
        name: &str,
        max: u64,
    ) -> Result<Option<Bytes>, SandboxError>;
    /// pi's conversation files (`sessions/*/*.jsonl` in the agent directory), oldest first by
    /// modification time, at most `max` bytes together (files past that are left out); links are
    /// never followed.
    async fn conversation_files(&self, session: &str, max: u64)
    -> Result<Vec<Bytes>, SandboxError>;
    /// Keeps the bytes of a file a client uploaded where no sandbox sees them.
    async fn save_upload(
        &self,
        session: &str,
        file_id: &str,
        bytes: Bytes,
    ) -> Result<(), SandboxError>;
    /// The bytes of an uploaded file.
    async fn read_upload(
        &self,
        session: &str,
        file_id: &str,
    ) -> Result<Option<Bytes>, SandboxError>;
    /// Puts a new file `name` in the workspace directory `dir` (made if missing), owned by
    /// `user`; a link at either name is refused, never followed.
    async fn add_workspace_file(
        &self,
        session: &str,
        user: (u32, u32),
        dir: &str,
        name: &str,
        bytes: Bytes,
    ) -> Result<(), SandboxError>;
    /// Replaces a file at the top of the agent directory with `content`, owned by `user`,
    /// whatever entry had the name (a link is replaced, never followed). Only while no sandbox
    /// of the session runs.
    async fn replace_agent_file(
        &self,
        session: &str,
        user: (u32, u32),
        name: &str,
        content: Bytes,
    ) -> Result<(), SandboxError>;
    /// Makes the secrets hold exactly `files`, readable only by `user`. A sandbox starting
    /// meanwhile never reads half a value.
    async fn write_secrets(
        &self,
        session: &str,
        user: (u32, u32),
        files: Vec<SecretFile>,
    ) -> Result<(), SandboxError>;
    /// Whether the session's secrets exist (they are removed on archive).
    async fn has_secrets(&self, session: &str) -> Result<bool, SandboxError>;
    /// Removes the session's secrets (archive). Removing missing ones succeeds.
    async fn remove_secrets(&self, session: &str) -> Result<(), SandboxError>;
    /// Removes everything the session has (delete). Removing a missing session succeeds.
    async fn remove(&self, session: &str) -> Result<(), SandboxError>;
    /// Every session with files here, so files of sessions that are gone can be removed.
    async fn sessions(&self) -> Result<Vec<StoredSession>, SandboxError>;
    /// Where the relay serves the session's egress socket: a Unix socket in a directory the
    /// session's sandbox sees at [`EGRESS_DIR_PATH`]. The directory exists once the session is
    /// prepared and is never replaced while it lives (a sandbox sees a new socket in it, not a
    /// new directory).
    fn egress_socket(&self, session: &str) -> std::path::PathBuf;
}

/// The operations the relay needs from a sandbox runtime. Implementations must be idempotent
/// where the runtime allows it (removing a missing sandbox succeeds).
#[async_trait]
pub trait Sandbox: Send + Sync + fmt::Debug {
    /// Short provider name, stored with sessions and named by environments (`docker`).
    fn kind(&self) -> &'static str;
    /// What this provider can do.
    fn capabilities(&self) -> Capabilities;
    /// Where sessions' files are kept.
    fn storage(&self) -> &dyn SessionStorage;
    /// Checks that the runtime answers.
    async fn ping(&self) -> Result<(), SandboxError>;
    /// Resolves an image reference to the immutable id sandboxes are created from, so a session
    /// runs exactly the image that was resolved, and starting one costs no lookup.
    async fn pin_image(&self, image: &str) -> Result<String, SandboxError>;
    /// Lists the images carrying the label `label` (any value); only with
    /// [`Capabilities::image_listing`].
    async fn list_images(&self, label: &str) -> Result<Vec<ImageInfo>, SandboxError>;
    /// Creates (but does not start) a sandbox, with the session's files (prepared first).
    async fn create(&self, spec: &SandboxSpec) -> Result<SandboxId, SandboxError>;
    /// Attaches to stdio. Attach before [`Sandbox::start`] to see everything the process prints.
    async fn attach(&self, id: &SandboxId) -> Result<SandboxIo, SandboxError>;
    /// Starts a created or exited sandbox.
    async fn start(&self, id: &SandboxId) -> Result<(), SandboxError>;
    /// Freezes a running sandbox (only with [`Capabilities::pause`]).
    async fn pause(&self, id: &SandboxId) -> Result<(), SandboxError>;
    /// Thaws a paused sandbox (only with [`Capabilities::pause`]).
    async fn unpause(&self, id: &SandboxId) -> Result<(), SandboxError>;
    /// Asks the main process to stop, killing it after `grace`.
    async fn stop(&self, id: &SandboxId, grace: Duration) -> Result<(), SandboxError>;
    /// Removes a sandbox, stopping it first if needed. Removing a missing sandbox succeeds. The
    /// session's files stay.
    async fn remove(&self, id: &SandboxId) -> Result<(), SandboxError>;
    /// Reads a sandbox's current state from the runtime.
    async fn inspect(&self, id: &SandboxId) -> Result<SandboxInfo, SandboxError>;
    /// Lists sandboxes (running or not) carrying all the given labels.
    async fn list(&self, labels: &[(String, String)]) -> Result<Vec<SandboxInfo>, SandboxError>;
    /// Waits until the main process exits and returns its exit code.
    async fn wait(&self, id: &SandboxId) -> Result<i64, SandboxError>;
    /// What the sandbox wrote to stdout, as far back as [`Capabilities::output_history`] says
    /// (for a sandbox that is not running: its last run), as a finite stream. Used to recover
    /// output printed while the relay was not attached.
    async fn stdout_history(&self, id: &SandboxId) -> Result<OutputStream, SandboxError>;
    /// Runs a command in a running sandbox, as its user, in `/workspace`, with the sandbox's
    /// configured environment (not the secrets its entrypoint exported); only with
    /// [`Capabilities::exec`].
    async fn exec(
        &self,
        id: &SandboxId,
        request: &ExecRequest,
    ) -> Result<ExecOutput, SandboxError> {
        let _ = (id, request);
        Err(SandboxError::Unsupported {
            provider: self.kind(),
            operation: "exec",
        })
    }
    /// Opens a login shell with a terminal of `size` in a running sandbox, as its user, in
    /// `/workspace`; only with [`Capabilities::terminal`].
    async fn open_terminal(
        &self,
        id: &SandboxId,
        size: TerminalSize,
    ) -> Result<Terminal, SandboxError> {
        let _ = (id, size);
        Err(SandboxError::Unsupported {
            provider: self.kind(),
            operation: "open a terminal",
        })
    }
}

/// Default stop grace period, after which the runtime kills the process.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_from_their_configuration_names() {
        assert_eq!("none".parse(), Ok(Network::None));
        assert_eq!("bridge".parse(), Ok(Network::Default));
        assert_eq!("host".parse(), Ok(Network::Host));
        assert_eq!("my-net_1".parse(), Ok(Network::Named("my-net_1".into())));
        for bad in ["", "a b", "x/y", "--rm"] {
            assert!(bad.parse::<Network>().is_err(), "{bad:?}");
        }
        assert_eq!(Network::Default.to_string(), "bridge");
    }
}
