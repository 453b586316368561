//! The Docker sandbox provider: every [`Sandbox`] operation as a Docker Engine API call through
//! bollard. Only this crate knows bollard; it turns the relay's [`SandboxSpec`] into a container
//! configuration (labels, user, mounts, limits, hardening) and the engine's answers back into
//! the relay's types.

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
    StartContainerOptions, StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::{StreamExt, TryStreamExt};
use relay_sandbox::{
    ImageInfo, OutputChunk, Sandbox, SandboxError, SandboxId, SandboxInfo, SandboxIo, SandboxSpec,
    SandboxStatus,
};

/// How long a single Engine API request may take before its response headers arrive. Attach
/// and wait streams are not limited by it once the headers are in.
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// Size of a sandbox's stdout log kept by the engine: output printed while the relay was not
/// attached can be recovered as long as it fits.
pub const LOG_MAX_SIZE: &str = "256m";

/// The Docker provider. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DockerSandbox {
    docker: Docker,
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
    /// client speaks what the engine supports.
    pub async fn connect(host: Option<&str>) -> Result<DockerSandbox, SandboxError> {
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
        .map_err(|e| SandboxError::Unavailable(e.to_string()))?;
        // bollard 0.21 happens to omit the version prefix, so old engines work by accident;
        // negotiating keeps that true once the prefix is sent.
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| SandboxError::Unavailable(format!("cannot reach Docker: {e}")))?;
        Ok(DockerSandbox {
            docker,
            entrypoints: Default::default(),
        })
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

    fn container_body(spec: &SandboxSpec) -> ContainerCreateBody {
        let mounts = spec
            .mounts
            .iter()
            .map(|m| DockerMount {
                target: Some(m.target.clone()),
                source: Some(m.host.clone()),
                typ: Some(MountType::BIND),
                read_only: Some(m.read_only),
                ..Default::default()
            })
            .collect();
        let hardening = spec.hardened.then_some(());
        let host_config = HostConfig {
            mounts: Some(mounts),
            tmpfs: (!spec.tmpfs.is_empty()).then(|| spec.tmpfs.iter().cloned().collect()),
            network_mode: Some(spec.network.clone()),
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
            labels: Some(
                spec.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
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
            SandboxError::Runtime(format!("{what}: {message}"))
        }
        e @ (BollardError::IOError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::RequestTimeoutError) => SandboxError::Unavailable(format!("{what}: {e}")),
        e => SandboxError::Runtime(format!("{what}: {e}")),
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

    async fn ping(&self) -> Result<(), SandboxError> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| SandboxError::Unavailable(e.to_string()))
    }

    async fn resolve_image(&self, image: &str) -> Result<String, SandboxError> {
        let info = self.docker.inspect_image(image).await.map_err(|e| match e {
            BollardError::DockerResponseServerError {
                status_code: 404, ..
            } => SandboxError::ImageNotFound(format!(
                "{image} is not present on the Docker host (pi-relay never pulls; build it with \
                 images/sandbox-debian/build.sh or `docker pull` it)"
            )),
            e => map_err(e, "inspect image"),
        })?;
        info.id
            .ok_or_else(|| SandboxError::Runtime(format!("image {image} has no id")))
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
        let mut body = Self::container_body(spec);
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
        Ok(SandboxIo {
            output,
            input: attached.input,
        })
    }

    async fn start(&self, id: &SandboxId) -> Result<(), SandboxError> {
        self.docker
            .start_container(id.as_str(), None::<StartContainerOptions>)
            .await
            .map_err(|e| map_err(e, "start container"))
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

    async fn stdout_log(
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
            None => Err(SandboxError::Runtime("wait ended without a status".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::strip_fixuid;

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
