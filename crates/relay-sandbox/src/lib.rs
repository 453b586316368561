//! The sandbox provider contract: what the relay asks of a container runtime, in the relay's own
//! types. Docker is the first provider (`relay-docker`); the in-memory [`fake`] provider (feature
//! `fake`) serves tests. Nothing here knows about a particular runtime's API.

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use tokio::io::AsyncWrite;

#[cfg(feature = "fake")]
pub mod fake;

/// Label carrying the session id on every container the relay creates.
pub const LABEL_SESSION: &str = "pi-relay.session";
/// Label carrying the relay instance id, so a relay finds what it owns after a restart.
pub const LABEL_INSTANCE: &str = "pi-relay.instance";
/// Label carried by the sandbox images this repository builds (`images/*/build.sh`): the hash
/// of what they were built from.
pub const LABEL_BUILD_HASH: &str = "pi-relay.build-hash";

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

/// A host directory or file made visible inside the sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Absolute path on the host.
    pub host: String,
    /// Absolute path inside the sandbox.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Resource limits applied to one sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Limits {
    /// Memory limit in bytes (swap is capped at the same value: no extra swap).
    pub memory_bytes: Option<i64>,
    /// CPU quota in units of 1e-9 CPUs.
    pub nano_cpus: Option<i64>,
    /// Maximum number of processes and threads.
    pub pids: Option<i64>,
}

/// Everything needed to create a sandbox. Secrets never travel in here: they reach the sandbox
/// as files through a read-only mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxSpec {
    /// Deterministic name (`pi-sandbox-<sessionId>`).
    pub name: String,
    /// Image reference, preferably an image id so that nothing is pulled on the hot path.
    pub image: String,
    /// Command run by the image's entrypoint.
    pub command: Vec<String>,
    /// Non-secret environment variables.
    pub env: Vec<(String, String)>,
    /// `uid:gid` the sandbox runs as. Never `0`.
    pub user: (u32, u32),
    /// Working directory inside the sandbox.
    pub working_dir: String,
    /// Bind mounts.
    pub mounts: Vec<Mount>,
    /// tmpfs mounts: target path and mount options.
    pub tmpfs: Vec<(String, String)>,
    /// Labels identifying the owner.
    pub labels: BTreeMap<String, String>,
    /// Network mode (`bridge`, `host`, `none`, or a named network).
    pub network: String,
    /// Resource limits.
    pub limits: Limits,
    /// Drop all capabilities, forbid privilege escalation, run an init process.
    pub hardened: bool,
}

/// Where a sandbox is in its life, as the runtime reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxStatus {
    /// Created, not started yet (or restarting).
    Created,
    /// Its main process runs.
    Running,
    /// Frozen; processes kept in memory.
    Paused,
    /// Its main process has exited.
    Exited,
}

impl SandboxStatus {
    /// The protocol's name for this status (`sandbox_status` messages, `GET .../sandbox`).
    pub fn as_protocol_str(self) -> &'static str {
        match self {
            SandboxStatus::Created => "creating",
            SandboxStatus::Running => "running",
            SandboxStatus::Paused => "paused",
            SandboxStatus::Exited => "stopped",
        }
    }
}

/// What the runtime knows about one sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxInfo {
    /// Runtime id.
    pub id: SandboxId,
    /// Name without a leading slash.
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

/// An image present on the runtime's host.
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
    /// The runtime cannot be reached.
    #[error("sandbox runtime unavailable: {0}")]
    Unavailable(String),
    /// Any other error the runtime reported.
    #[error("sandbox runtime error: {0}")]
    Runtime(String),
}

/// The operations the relay needs from a container runtime. Implementations must be idempotent
/// where the runtime allows it (removing a missing sandbox succeeds).
#[async_trait]
pub trait Sandbox: Send + Sync + fmt::Debug {
    /// Short provider name stored with sessions (`docker`).
    fn kind(&self) -> &'static str;
    /// Checks that the runtime answers.
    async fn ping(&self) -> Result<(), SandboxError>;
    /// Resolves an image reference to the id of an image present locally; never pulls.
    async fn resolve_image(&self, image: &str) -> Result<String, SandboxError>;
    /// Lists the images present locally that carry the label `label` (any value).
    async fn list_images(&self, label: &str) -> Result<Vec<ImageInfo>, SandboxError>;
    /// Creates (but does not start) a sandbox.
    async fn create(&self, spec: &SandboxSpec) -> Result<SandboxId, SandboxError>;
    /// Attaches to stdio. Attach before [`Sandbox::start`] to see everything the process prints.
    async fn attach(&self, id: &SandboxId) -> Result<SandboxIo, SandboxError>;
    /// Starts a created or exited sandbox.
    async fn start(&self, id: &SandboxId) -> Result<(), SandboxError>;
    /// Freezes a running sandbox.
    async fn pause(&self, id: &SandboxId) -> Result<(), SandboxError>;
    /// Thaws a paused sandbox.
    async fn unpause(&self, id: &SandboxId) -> Result<(), SandboxError>;
    /// Asks the main process to stop, killing it after `grace`.
    async fn stop(&self, id: &SandboxId, grace: Duration) -> Result<(), SandboxError>;
    /// Removes a sandbox, stopping it first if needed. Removing a missing sandbox succeeds.
    async fn remove(&self, id: &SandboxId) -> Result<(), SandboxError>;
    /// Reads a sandbox's current state from the runtime.
    async fn inspect(&self, id: &SandboxId) -> Result<SandboxInfo, SandboxError>;
    /// Lists sandboxes (running or not) carrying all the given labels.
    async fn list(&self, labels: &[(String, String)]) -> Result<Vec<SandboxInfo>, SandboxError>;
    /// Waits until the main process exits and returns its exit code.
    async fn wait(&self, id: &SandboxId) -> Result<i64, SandboxError>;
    /// Everything the sandbox has written to stdout since it was created (across restarts),
    /// as far as the runtime kept it, as a finite stream. Used to recover output printed while
    /// the relay was not attached.
    async fn stdout_log(&self, id: &SandboxId) -> Result<OutputStream, SandboxError>;
}

/// Default stop grace period, after which the runtime kills the process.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
