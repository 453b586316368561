//! Commands run in a running sandbox through the engine's exec: as the container's user, in
//! `/workspace`, stdout and stderr read as they come and kept up to a bound, the exit code read
//! once the command ends. A command still running at the timeout is left running.

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use relay_sandbox::{ExecOutput, ExecRequest, SandboxError, SandboxId, WORKSPACE_PATH};

use crate::{DockerSandbox, map_err};

impl DockerSandbox {
    pub(crate) async fn run_exec(
        &self,
        id: &SandboxId,
        request: &ExecRequest,
    ) -> Result<ExecOutput, SandboxError> {
        let exec = self
            .docker
            .create_exec(
                id.as_str(),
                CreateExecOptions {
                    cmd: Some(request.argv.clone()),
                    working_dir: Some(WORKSPACE_PATH.to_owned()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    attach_stdin: Some(false),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| map_err(e, "create an exec"))?;
        let started = self
            .docker
            .start_exec(&exec.id, Some(StartExecOptions::default()))
            .await
            .map_err(|e| map_err(e, "start an exec"))?;
        let StartExecResults::Attached { mut output, .. } = started else {
            return Err(SandboxError::runtime(
                "the engine started the exec detached",
            ));
        };
        let mut kept = BytesMut::new();
        let mut truncated = false;
        let read = async {
            while let Some(chunk) = output.next().await {
                let bytes: Bytes = match chunk.map_err(|e| map_err(e, "read an exec's output"))? {
                    LogOutput::StdOut { message }
                    | LogOutput::StdErr { message }
                    | LogOutput::Console { message } => message,
                    LogOutput::StdIn { .. } => continue,
                };
                let room = request.max_output.saturating_sub(kept.len());
                if bytes.len() > room {
                    truncated = true;
                }
                kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
            Ok::<(), SandboxError>(())
        };
        if tokio::time::timeout(request.timeout, read).await.is_err() {
            return Ok(ExecOutput {
                exit_code: None,
                output: kept.freeze(),
                truncated,
            });
        }
        let inspected = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| map_err(e, "inspect an exec"))?;
        Ok(ExecOutput {
            exit_code: Some(inspected.exit_code.unwrap_or(0)),
            output: kept.freeze(),
            truncated,
        })
    }
}
