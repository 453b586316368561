//! The sandbox's forwarder (a static build of `crates/relay-forward`): mounted read-only, its
//! port kept in a label, and started after every start of the container with `docker exec` as
//! another user than pi's, so the agent can neither signal nor replace it.

use relay_sandbox::{
    EGRESS_DIR_PATH, EGRESS_SOCKET_NAME, FORWARDER_USER, Sandbox, SandboxError, SandboxId,
};

use crate::{DockerSandbox, map_err};

/// Where a sandbox sees the relay's forwarder binary (read-only).
pub const FORWARDER_PATH: &str = "/run/pi-relay/forward";
/// Label carrying the port of a sandbox's forwarder, so a start after a relay restart knows it.
pub(crate) const LABEL_EGRESS_PORT: &str = "pi-relay.egress-port";

impl DockerSandbox {
    /// The same provider, running `binary` (a static build of `crates/relay-forward`) as the
    /// forwarder of sandboxes that get egress.
    pub fn with_forwarder(mut self, binary: std::path::PathBuf) -> DockerSandbox {
        self.forwarder = Some(binary);
        self
    }

    /// Starts the forwarder of sandbox `id`, if it has one: `docker exec` as [`FORWARDER_USER`],
    /// detached, so it is no child of pi's and the agent cannot signal it.
    pub(crate) async fn start_forwarder(&self, id: &SandboxId) -> Result<(), SandboxError> {
        let known = self
            .egress_ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id.as_str())
            .copied();
        let port = match known {
            Some(port) => port,
            None => {
                let info = self.inspect(id).await?;
                let port = info
                    .labels
                    .get(LABEL_EGRESS_PORT)
                    .and_then(|p| p.parse().ok());
                self.egress_ports
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.0.clone(), port);
                port
            }
        };
        let Some(port) = port else { return Ok(()) };
        let socket = format!("{EGRESS_DIR_PATH}/{EGRESS_SOCKET_NAME}");
        let (uid, gid) = FORWARDER_USER;
        let exec = self
            .docker
            .create_exec(
                id.as_str(),
                bollard::exec::CreateExecOptions {
                    cmd: Some(vec![FORWARDER_PATH.to_owned(), port.to_string(), socket]),
                    user: Some(format!("{uid}:{gid}")),
                    attach_stdin: Some(false),
                    attach_stdout: Some(false),
                    attach_stderr: Some(false),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| map_err(e, "create the forwarder's exec"))?;
        self.docker
            .start_exec(
                &exec.id,
                Some(bollard::exec::StartExecOptions {
                    detach: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| map_err(e, "start the forwarder"))?;
        Ok(())
    }
}
