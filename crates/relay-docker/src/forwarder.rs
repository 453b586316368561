//! The sandbox's forwarder (a static build of `crates/relay-forward`): mounted read-only, its
//! port kept in a label, and started after every start of the container with `docker exec` as
//! another user than pi's, so the agent can neither signal nor replace it.
//!
//! The exec (tens of milliseconds) runs beside the sandbox's start instead of before it counts
//! as started: what the relay writes to pi's stdin waits for it instead ([`GatedInput`]). Every
//! model request pi makes follows a command written there, so pi never reaches for the forwarder
//! before it listens.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bollard::Docker;
use bollard::query_parameters::StartContainerOptions;
use relay_sandbox::{
    EGRESS_DIR_PATH, EGRESS_SOCKET_NAME, FORWARDER_USER, Sandbox, SandboxError, SandboxId,
};
use tokio::io::AsyncWrite;
use tokio::sync::watch;

use crate::{DockerSandbox, map_err};

/// Sandbox id → the start of its forwarder: `None` while it runs, then done.
pub(crate) type Starts = Arc<Mutex<HashMap<String, watch::Receiver<Option<()>>>>>;

/// pi's stdin, whose first write waits for the sandbox's forwarder to be started (if one is
/// being started: a sandbox re-attached while it runs has its forwarder already).
pub(crate) struct GatedInput {
    inner: Pin<Box<dyn AsyncWrite + Send>>,
    starts: Starts,
    id: String,
    gate: Gate,
}

enum Gate {
    Unchecked,
    Waiting(Pin<Box<dyn Future<Output = ()> + Send>>),
    Open,
}

impl GatedInput {
    pub(crate) fn new(inner: Pin<Box<dyn AsyncWrite + Send>>, starts: Starts, id: &str) -> Self {
        GatedInput {
            inner,
            starts,
            id: id.to_owned(),
            gate: Gate::Unchecked,
        }
    }

    fn poll_gate(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match &mut self.gate {
                Gate::Open => return Poll::Ready(()),
                Gate::Unchecked => {
                    let start = self
                        .starts
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&self.id)
                        .cloned();
                    self.gate = match start {
                        Some(mut done) => Gate::Waiting(Box::pin(async move {
                            // A start that ended without saying so (its task gone) opens too.
                            let _ = done.wait_for(Option::is_some).await;
                        })),
                        None => Gate::Open,
                    };
                }
                Gate::Waiting(done) => {
                    ready!(done.as_mut().poll(cx));
                    self.gate = Gate::Open;
                }
            }
        }
    }
}

impl AsyncWrite for GatedInput {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_gate(cx));
        self.inner.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_shutdown(cx)
    }
}

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

    /// The port of sandbox `id`'s forwarder, if it has one (from create, or its label).
    async fn forwarder_port(&self, id: &SandboxId) -> Result<Option<u16>, SandboxError> {
        let known = self
            .egress_ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id.as_str())
            .copied();
        if let Some(port) = known {
            return Ok(port);
        }
        let info = self.inspect(id).await?;
        let port = info
            .labels
            .get(LABEL_EGRESS_PORT)
            .and_then(|p| p.parse().ok());
        self.egress_ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.0.clone(), port);
        Ok(port)
    }

    /// Starts sandbox `id` and, if it has one, its forwarder beside it: `docker exec` as
    /// [`FORWARDER_USER`], detached, so it is no child of pi's and the agent cannot signal it.
    /// Writes to pi's stdin wait for the exec ([`GatedInput`]); one that fails is logged, and pi's
    /// model requests then fail to connect.
    pub(crate) async fn start_with_forwarder(&self, id: &SandboxId) -> Result<(), SandboxError> {
        let port = self.forwarder_port(id).await?;
        let started = port.map(|_| {
            let (tx, rx) = watch::channel(None);
            self.forwarder_starts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.0.clone(), rx);
            tx
        });
        let result = self
            .docker
            .start_container(id.as_str(), None::<StartContainerOptions>)
            .await
            .map_err(|e| map_err(e, "start container"));
        if let (Some(port), Some(started)) = (port, started) {
            let (docker, id, run) = (self.docker.clone(), id.clone(), result.is_ok());
            tokio::spawn(async move {
                if run && let Err(e) = exec_forwarder(&docker, &id, port).await {
                    tracing::warn!(sandbox = %id.0, error = %e, "the forwarder did not start; pi cannot reach its models");
                }
                let _ = started.send(Some(()));
            });
        }
        result
    }

    /// Forgets the forwarder starts of a removed sandbox.
    pub(crate) fn forget_forwarder(&self, id: &SandboxId) {
        self.forwarder_starts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id.as_str());
    }
}

async fn exec_forwarder(docker: &Docker, id: &SandboxId, port: u16) -> Result<(), SandboxError> {
    let socket = format!("{EGRESS_DIR_PATH}/{EGRESS_SOCKET_NAME}");
    let (uid, gid) = FORWARDER_USER;
    let exec = docker
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
    docker
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

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn pis_stdin_waits_for_a_forwarder_being_started_and_only_then() {
        let starts: Starts = Default::default();
        let (tx, rx) = watch::channel(None);
        starts.lock().unwrap().insert("c1".into(), rx);
        let (client, mut pi) = tokio::io::duplex(64);
        let mut input = GatedInput::new(Box::pin(client), starts.clone(), "c1");
        let mut write = Box::pin(input.write_all(b"{\"type\":\"prompt\"}\n"));
        assert!(
            (&mut write).now_or_never().is_none(),
            "written before the forwarder"
        );
        tx.send(Some(())).unwrap();
        write.await.unwrap();
        let mut got = [0u8; 18];
        pi.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"{\"type\":\"prompt\"}\n");
        // A sandbox attached with no start in flight (its forwarder runs already) is not held.
        let (client, _pi) = tokio::io::duplex(64);
        let mut input = GatedInput::new(Box::pin(client), starts.clone(), "c2");
        assert!(input.write_all(b"x").now_or_never().is_some());
        // A start whose task went away without saying so does not hold pi forever.
        let (tx, rx) = watch::channel(None);
        starts.lock().unwrap().insert("c3".into(), rx);
        drop(tx);
        let (client, _pi) = tokio::io::duplex(64);
        let mut input = GatedInput::new(Box::pin(client), starts, "c3");
        input.write_all(b"x").await.unwrap();
    }
}
