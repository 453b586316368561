//! The Docker sandbox provider: every [`Sandbox`] operation as a Docker Engine API call through
//! bollard. Only this crate knows bollard; it turns the relay's [`SandboxSpec`] into a container
//! configuration (labels, user, the session's host directories as bind mounts, limits,
//! hardening) and the engine's answers back into the relay's types. Session files live in host
//! directories ([`HostStorage`]); next to them it generates the `/etc/passwd`, `/etc/group` and
//! fixuid marker that let seed-style images run as any uid under the hardened flags.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerSummaryStateEnum, HostConfig,
    HostConfigLogConfig, Mount as DockerMount, MountType,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, InspectContainerOptions,
    ListContainersOptions, ListImagesOptions, LogsOptions, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::{StreamExt, TryStreamExt};
use relay_sandbox::host::{HostLayout, HostStorage};
mod exec;
mod forwarder;

pub use forwarder::FORWARDER_PATH;
use forwarder::LABEL_EGRESS_PORT;

use relay_sandbox::{
    AGENT_PATH, Capabilities, EGRESS_DIR_PATH, HOME_PATH, ImageInfo, Network, OutputChunk,
    OutputHistory, SECRETS_PATH, Sandbox, SandboxError, SandboxId, SandboxInfo, SandboxIo,
    SandboxSpec, SandboxStatus, SessionStorage, WORKSPACE_PATH,
};

/// How long a single Engine API request may take before its response headers arrive. Attach
/// and wait streams are not limited by it once the headers are in.
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// Size of a sandbox's stdout log kept by the engine: output printed while the relay was not
/// attached can be recovered as long as it fits.
pub const LOG_MAX_SIZE: &str = "256m";

/// What Docker can do: freeze containers, keep their whole log (up to [`LOG_MAX_SIZE`]), list
/// local images.
pub const CAPABILITIES: Capabilities = Capabilities {
    pause: true,
    output_history: OutputHistory::SinceCreation,
    image_listing: true,
    egress: true,
    exec: true,
    terminal: true,
};

/// Size of the tmpfs mounted at the sandbox user's home.
const HOME_TMPFS_BYTES: u64 = 256 * 1024 * 1024;

/// The Docker provider. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DockerSandbox {
    docker: Docker,
    storage: HostStorage,
    /// The static forwarder binary on this host, mounted into sandboxes that get egress.
    forwarder: Option<std::path::PathBuf>,
    /// Sandbox id → its forwarder's port (known from create, or read from its label).
    egress_ports: std::sync::Arc<std::sync::Mutex<HashMap<String, Option<u16>>>>,
    /// Sandbox id → the start of its forwarder, which pi's stdin waits for.
    forwarder_starts: forwarder::Starts,
    /// Image id → the entrypoint to use under the hardened flags (see [`strip_fixuid`]).
    entrypoints: std::sync::Arc<std::sync::Mutex<HashMap<String, Option<Vec<String>>>>>,
}

/// The entrypoint without a leading `fixuid` (and its flags), or `None` when it has none.
///
/// fixuid remaps the image's `user` to the runtime uid, which needs it setuid root; the hardened
/// flags (`no-new-privileges`) disable that, and fixuid 0.6.0 refuses to run without it even when
/// its marker file says the work is done. The relay already does fixuid's job (it mounts a
/// passwd/group mapping `user` to the sandbox uid and a writable `$HOME`), so under those flags
/// the image's own entrypoint is started past fixuid.
pub fn strip_fixuid(entrypoint: &[String]) -> Option<Vec<String>> {
    let first = entrypoint.first()?;
    if first.rsplit('/').next() != Some("fixuid") {
        return None;
    }
    let rest: Vec<String> = entrypoint[1..]
        .iter()
        .skip_while(|a| a.starts_with('-'))
        .cloned()
        .collect();
    // An empty entrypoint in the API means "the image's"; [""] clears it.
    Some(if rest.is_empty() {
        vec![String::new()]
    } else {
        rest
    })
}

impl DockerSandbox {
    /// Connects to the engine at `host` (`unix:///path`, a bare socket path, `tcp://` or
    /// `http://`), or to the platform default when `None`, and negotiates the API version so the
    /// client speaks what the engine supports. Session files are kept in `storage`, which must be
    /// on the engine's host (they are bind-mounted).
    pub async fn connect(
        host: Option<&str>,
        storage: HostStorage,
    ) -> Result<DockerSandbox, SandboxError> {
        let docker = match host.map(str::trim).filter(|h| !h.is_empty()) {
            None => Docker::connect_with_local_defaults(),
            Some(h) if h.starts_with('/') => {
                Docker::connect_with_unix(h, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            }
            Some(h) if h.starts_with("unix://") => {
                Docker::connect_with_unix(h, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            }
            Some(h) => {
                let h = h.replacen("tcp://", "http://", 1);
                Docker::connect_with_http(&h, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            }
        }
        .map_err(|e| SandboxError::unavailable("connecting to Docker", e))?;
        // bollard 0.21 happens to omit the version prefix, so old engines work by accident;
        // negotiating keeps that true once the prefix is sent.
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| SandboxError::unavailable("cannot reach Docker", e))?;
        Ok(DockerSandbox {
            docker,
            storage,
            forwarder: None,
            egress_ports: Default::default(),
            forwarder_starts: Default::default(),
            entrypoints: Default::default(),
        })
    }

    /// The engine client, for tools that measure against the engine directly (the benchmark).
    pub fn engine(&self) -> &Docker {
        &self.docker
    }

    /// Writes the files generated for a session's sandbox: a passwd and group mapping the image's
    /// `user` to the sandbox's uid:gid, and an empty fixuid marker, so fixuid (which cannot work
    /// under `no-new-privileges`) execs straight through.
    async fn generate_files(&self, spec: &SandboxSpec) -> Result<(), SandboxError> {
        let layout = self.storage.layout(&spec.session_id);
        let (uid, gid) = spec.user;
        let session = spec.session_id.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&layout.generated)?;
            write_if_changed(&layout.generated.join("passwd"), &passwd(uid, gid))?;
            write_if_changed(&layout.generated.join("group"), &group(gid))?;
            write_if_changed(&layout.generated.join("fixuid.ran"), "")
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|source| SandboxError::Storage { session, source })
    }

    async fn hardened_entrypoint(&self, image: &str) -> Result<Option<Vec<String>>, SandboxError> {
        if let Some(e) = self
            .entrypoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(image)
        {
            return Ok(e.clone());
        }
        let info = self
            .docker
            .inspect_image(image)
            .await
            .map_err(|e| map_err(e, "inspect image"))?;
        let entrypoint = info
            .config
            .and_then(|c| c.entrypoint)
            .and_then(|e| strip_fixuid(&e));
        self.entrypoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(image.to_owned(), entrypoint.clone());
        Ok(entrypoint)
    }

    /// The engine's container configuration for `spec`, the session's files at the contract's
    /// paths (see [`HostLayout`]).
    pub fn container_body(
        spec: &SandboxSpec,
        layout: &HostLayout,
        forwarder: Option<&std::path::Path>,
    ) -> ContainerCreateBody {
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let bind = |host: &std::path::Path, target: &str, read_only: bool| DockerMount {
            target: Some(target.to_owned()),
            source: Some(path(host)),
            typ: Some(MountType::BIND),
            read_only: Some(read_only),
            ..Default::default()
        };
        let mut mounts = vec![
            bind(&layout.workspace, WORKSPACE_PATH, false),
            bind(&layout.agent, AGENT_PATH, false),
            bind(&layout.secrets, SECRETS_PATH, true),
            bind(&layout.generated.join("passwd"), "/etc/passwd", true),
            bind(&layout.generated.join("group"), "/etc/group", true),
            bind(
                &layout.generated.join("fixuid.ran"),
                "/var/run/fixuid.ran",
                true,
            ),
        ];
        let mut labels: HashMap<String, String> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let (Some(egress), Some(binary)) = (spec.egress, forwarder) {
            // The directory, not the socket: a relay restart makes a new socket in it, which a
            // mount of the socket file would never see.
            mounts.push(bind(&layout.egress, EGRESS_DIR_PATH, true));
            mounts.push(bind(binary, FORWARDER_PATH, true));
            labels.insert(LABEL_EGRESS_PORT.to_owned(), egress.port.to_string());
        }
        let (uid, gid) = spec.user;
        // $HOME must be writable whatever uid the sandbox runs as.
        let tmpfs = HashMap::from([(
            HOME_PATH.to_owned(),
            format!("uid={uid},gid={gid},mode=0700,exec,size={HOME_TMPFS_BYTES}"),
        )]);
        let network_mode = match &spec.network {
            Network::None => "none".to_owned(),
            Network::Default => "bridge".to_owned(),
            Network::Host => "host".to_owned(),
            Network::Named(n) => n.clone(),
        };
        let hardening = spec.hardened.then_some(());
        let host_config = HostConfig {
            mounts: Some(mounts),
            tmpfs: Some(tmpfs),
            network_mode: Some(network_mode),
            memory: spec.limits.memory_bytes,
            // Equal to the memory limit: the sandbox gets no swap on top.
            memory_swap: spec.limits.memory_bytes,
            nano_cpus: spec.limits.nano_cpus,
            pids_limit: spec.limits.pids,
            cap_drop: hardening.map(|_| vec!["ALL".to_owned()]),
            security_opt: hardening.map(|_| vec!["no-new-privileges:true".to_owned()]),
            init: Some(spec.hardened),
            // The journal, not Docker's log, is the record; a bounded local log is kept only so
            // output printed while no relay was attached can be recovered.
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), LOG_MAX_SIZE.to_owned()),
                    ("max-file".to_owned(), "1".to_owned()),
                ])),
            }),
            auto_remove: Some(false),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(spec.command.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            user: Some(format!("{}:{}", spec.user.0, spec.user.1)),
            working_dir: Some(spec.working_dir.clone()),
            labels: Some(labels),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            // stdin stays open across attachments, so pi outlives a relay restart; StdinOnce
            // would close it (and end pi) when the relay's attachment drops.
            open_stdin: Some(true),
            stdin_once: Some(false),
            tty: Some(false),
            host_config: Some(host_config),
            ..Default::default()
        }
    }
}

/// Whether an engine error message says the container is in the wrong state for the request.
/// Some engines (20.10) answer such requests with a plain 500, e.g. "Container <id> is not
/// paused" for an unpause of a running container.
fn is_state_message(message: &str) -> bool {
    [
        "is not paused",
        "is not running",
        "is already paused",
        "is paused",
    ]
    .iter()
    .any(|m| message.contains(m))
}

fn map_err(e: BollardError, what: &str) -> SandboxError {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404,
            message,
        } => {
            // Match the engine's wording, not just the word: "No such container: <name>"
            // echoes the name, which may well contain "image".
            if message.to_ascii_lowercase().starts_with("no such image") {
                SandboxError::ImageNotFound(message)
            } else {
                SandboxError::NotFound(format!("{what}: {message}"))
            }
        }
        BollardError::DockerResponseServerError {
            status_code: 409,
            message,
        } => {
            if message.contains("already in use") {
                SandboxError::Conflict(message)
            } else {
                SandboxError::InvalidState(message)
            }
        }
        BollardError::DockerResponseServerError { message, .. } if is_state_message(&message) => {
            SandboxError::InvalidState(message)
        }
        BollardError::DockerResponseServerError { message, .. } => {
            SandboxError::runtime(format!("{what}: {message}"))
        }
        e @ (BollardError::IOError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::RequestTimeoutError) => SandboxError::unavailable(what, e),
        e => SandboxError::runtime_from(what, e),
    }
}

fn status_from_state(s: Option<ContainerStateStatusEnum>) -> SandboxStatus {
    match s {
        Some(ContainerStateStatusEnum::RUNNING) => SandboxStatus::Running,
        Some(ContainerStateStatusEnum::PAUSED) => SandboxStatus::Paused,
        Some(ContainerStateStatusEnum::CREATED | ContainerStateStatusEnum::RESTARTING) => {
            SandboxStatus::Created
        }
        _ => SandboxStatus::Exited,
    }
}

fn status_from_summary(s: Option<ContainerSummaryStateEnum>) -> SandboxStatus {
    match s {
        Some(ContainerSummaryStateEnum::RUNNING) => SandboxStatus::Running,
        Some(ContainerSummaryStateEnum::PAUSED) => SandboxStatus::Paused,
        Some(ContainerSummaryStateEnum::CREATED | ContainerSummaryStateEnum::RESTARTING) => {
            SandboxStatus::Created
        }
        _ => SandboxStatus::Exited,
    }
}

#[async_trait]
impl Sandbox for DockerSandbox {
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            egress: self.forwarder.is_some(),
            ..CAPABILITIES
        }
    }

    fn storage(&self) -> &dyn SessionStorage {
        &self.storage
    }

    async fn ping(&self) -> Result<(), SandboxError> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| SandboxError::unavailable("pinging Docker", e))
    }

    /// The local image's id. pi-relay never pulls: the image must be on the engine's host.
    async fn pin_image(&self, image: &str) -> Result<String, SandboxError> {
        let info = self
            .docker
            .inspect_image(image)
            .await
            .map_err(|e| match e {
                BollardError::DockerResponseServerError {
                    status_code: 404, ..
                } => SandboxError::ImageNotFound(format!(
                    "Image '{image}' is not present on the Docker host; build or pull it first \
                 (pi-relay never pulls images)"
                )),
                e => map_err(e, "inspect image"),
            })?;
        info.id
            .ok_or_else(|| SandboxError::runtime(format!("image {image} has no id")))
    }

    async fn list_images(&self, label: &str) -> Result<Vec<ImageInfo>, SandboxError> {
        let options = ListImagesOptions {
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![label.to_owned()],
            )])),
            ..Default::default()
        };
        let list = self
            .docker
            .list_images(Some(options))
            .await
            .map_err(|e| map_err(e, "list images"))?;
        Ok(list
            .into_iter()
            .map(|i| ImageInfo {
                id: i.id,
                // Untagged images are listed as `<none>:<none>`.
                tags: i
                    .repo_tags
                    .into_iter()
                    .filter(|t| t != "<none>:<none>")
                    .collect(),
                labels: i.labels.into_iter().collect(),
            })
            .collect())
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<SandboxId, SandboxError> {
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        if spec.egress.is_some() && self.forwarder.is_none() {
            return Err(SandboxError::runtime(
                "this sandbox needs the relay's forwarder, and none is configured (build it with \
                 scripts/build-forwarder.sh)",
            ));
        }
        self.generate_files(spec).await?;
        let mut body = Self::container_body(
            spec,
            &self.storage.layout(&spec.session_id),
            self.forwarder.as_deref(),
        );
        if spec.hardened {
            body.entrypoint = self.hardened_entrypoint(&spec.image).await?;
        }
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| map_err(e, "create container"))?;
        for w in created.warnings {
            tracing::warn!(container = %spec.name, warning = %w, "docker create warning");
        }
        self.egress_ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(created.id.clone(), spec.egress.map(|e| e.port));
        Ok(SandboxId(created.id))
    }

    async fn attach(&self, id: &SandboxId) -> Result<SandboxIo, SandboxError> {
        let options = AttachContainerOptionsBuilder::default()
            .stream(true)
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .logs(false)
            .build();
        let attached = self
            .docker
            .attach_container(id.as_str(), Some(options))
            .await
            .map_err(|e| map_err(e, "attach"))?;
        let output = attached
            .output
            .map_err(|e| map_err(e, "attach stream"))
            .filter_map(|item| async move {
                match item {
                    Ok(bollard::container::LogOutput::StdOut { message }) => {
                        Some(Ok(OutputChunk::Stdout(message)))
                    }
                    Ok(bollard::container::LogOutput::StdErr { message }) => {
                        Some(Ok(OutputChunk::Stderr(message)))
                    }
                    // Console frames only exist with a TTY, which sandboxes never get.
                    Ok(bollard::container::LogOutput::Console { message }) => {
                        Some(Ok(OutputChunk::Stdout(message)))
                    }
                    Ok(bollard::container::LogOutput::StdIn { .. }) => None,
                    Err(e) => Some(Err(e)),
                }
            })
            .boxed();
        let input =
            forwarder::GatedInput::new(attached.input, self.forwarder_starts.clone(), &id.0);
        Ok(SandboxIo {
            output,
            input: Box::pin(input),
        })
    }

    async fn start(&self, id: &SandboxId) -> Result<(), SandboxError> {
        // Every start is a new set of processes: the forwarder starts again with them.
        self.start_with_forwarder(id).await
    }

    async fn pause(&self, id: &SandboxId) -> Result<(), SandboxError> {
        self.docker
            .pause_container(id.as_str())
            .await
            .map_err(|e| map_err(e, "pause container"))
    }

    async fn unpause(&self, id: &SandboxId) -> Result<(), SandboxError> {
        self.docker
            .unpause_container(id.as_str())
            .await
            .map_err(|e| map_err(e, "unpause container"))
    }

    async fn stop(&self, id: &SandboxId, grace: Duration) -> Result<(), SandboxError> {
        let secs = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(secs).build();
        match self.docker.stop_container(id.as_str(), Some(options)).await {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(map_err(e, "stop container")),
        }
    }

    async fn remove(&self, id: &SandboxId) -> Result<(), SandboxError> {
        self.forget_forwarder(id);
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self
            .docker
            .remove_container(id.as_str(), Some(options))
            .await
        {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            // "removal already in progress" means it is going away anyway.
            Err(BollardError::DockerResponseServerError {
                status_code: 409,
                message,
            }) if message.contains("already in progress") => Ok(()),
            Err(e) => Err(map_err(e, "remove container")),
        }
    }

    async fn inspect(&self, id: &SandboxId) -> Result<SandboxInfo, SandboxError> {
        let info = self
            .docker
            .inspect_container(id.as_str(), None::<InspectContainerOptions>)
            .await
            .map_err(|e| map_err(e, "inspect container"))?;
        let state = info.state.unwrap_or_default();
        let status = status_from_state(state.status);
        Ok(SandboxInfo {
            id: SandboxId(info.id.unwrap_or_else(|| id.0.clone())),
            name: info
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_owned(),
            exit_code: (status == SandboxStatus::Exited)
                .then_some(state.exit_code)
                .flatten(),
            status,
            image_id: info.image.unwrap_or_default(),
            labels: info
                .config
                .and_then(|c| c.labels)
                .unwrap_or_default()
                .into_iter()
                .collect(),
        })
    }

    async fn list(&self, labels: &[(String, String)]) -> Result<Vec<SandboxInfo>, SandboxError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        )]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| map_err(e, "list containers"))?;
        Ok(list
            .into_iter()
            .map(|c| SandboxInfo {
                id: SandboxId(c.id.unwrap_or_default()),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_owned(),
                status: status_from_summary(c.state),
                exit_code: None,
                image_id: c.image_id.unwrap_or_default(),
                labels: c
                    .labels
                    .unwrap_or_default()
                    .into_iter()
                    .collect::<BTreeMap<_, _>>(),
            })
            .collect())
    }

    async fn exec(
        &self,
        id: &SandboxId,
        request: &relay_sandbox::ExecRequest,
    ) -> Result<relay_sandbox::ExecOutput, SandboxError> {
        self.run_exec(id, request).await
    }

    async fn open_terminal(
        &self,
        id: &SandboxId,
        size: relay_sandbox::TerminalSize,
    ) -> Result<relay_sandbox::Terminal, SandboxError> {
        self.run_terminal(id, size).await
    }

    async fn stdout_history(
        &self,
        id: &SandboxId,
    ) -> Result<relay_sandbox::OutputStream, SandboxError> {
        // Fail early (and clearly) for a missing container: the log stream reports it late.
        self.docker
            .inspect_container(id.as_str(), None::<InspectContainerOptions>)
            .await
            .map_err(|e| map_err(e, "inspect container"))?;
        let options = LogsOptions {
            follow: false,
            stdout: true,
            stderr: false,
            timestamps: false,
            tail: "all".into(),
            ..Default::default()
        };
        let stream = self
            .docker
            .logs(id.as_str(), Some(options))
            .map_err(|e| map_err(e, "container log"))
            .filter_map(|item| async move {
                match item {
                    Ok(bollard::container::LogOutput::StdOut { message })
                    | Ok(bollard::container::LogOutput::Console { message }) => {
                        Some(Ok(OutputChunk::Stdout(message)))
                    }
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                }
            })
            .boxed();
        Ok(stream)
    }

    async fn wait(&self, id: &SandboxId) -> Result<i64, SandboxError> {
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut stream = self.docker.wait_container(id.as_str(), Some(options));
        match stream.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(map_err(e, "wait container")),
            None => Err(SandboxError::runtime("wait ended without a status")),
        }
    }
}

fn write_if_changed(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::read_to_string(path).is_ok_and(|c| c == content) {
        return Ok(());
    }
    std::fs::write(path, content)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}

/// `/etc/passwd` for a sandbox: `user` (the seed images' account) at the sandbox uid:gid.
pub fn passwd(uid: u32, gid: u32) -> String {
    format!(
        "root:x:0:0:root:/root:/bin/sh\n\
         user:x:{uid}:{gid}:user:{HOME_PATH}:/bin/bash\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
}

/// `/etc/group` for a sandbox.
pub fn group(gid: u32) -> String {
    format!("root:x:0:\nuser:x:{gid}:\nnogroup:x:65534:\n")
}

#[cfg(test)]
mod tests {
    use super::{group, passwd, strip_fixuid};

    #[test]
    fn generated_passwd_maps_user_to_the_sandbox_ids() {
        assert!(passwd(1234, 5678).contains("\nuser:x:1234:5678:user:/home/user:/bin/bash\n"));
        assert!(group(5678).contains("\nuser:x:5678:\n"));
    }

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fixuid_and_its_flags_are_stripped_from_the_entrypoint() {
        assert_eq!(
            strip_fixuid(&v(&["fixuid", "-q", "/entrypoint.sh"])),
            Some(v(&["/entrypoint.sh"]))
        );
        assert_eq!(
            strip_fixuid(&v(&["/usr/local/bin/fixuid", "/entrypoint.sh", "-x"])),
            Some(v(&["/entrypoint.sh", "-x"]))
        );
        assert_eq!(strip_fixuid(&v(&["fixuid", "-q"])), Some(v(&[""])));
    }

    #[test]
    fn other_entrypoints_are_left_alone() {
        assert_eq!(strip_fixuid(&v(&["/entrypoint.sh"])), None);
        assert_eq!(strip_fixuid(&v(&["/bin/notfixuid"])), None);
        assert_eq!(strip_fixuid(&[]), None);
    }
}
