//! Commands run in a running sandbox through the engine's exec: as the container's user, in
//! `/workspace`, stdout and stderr read as they come and kept up to a bound, the exit code read
//! once the command ends (a command still running at the timeout is left running); and
//! terminals: a login shell with a TTY, its raw stream, resized through the engine.

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use relay_sandbox::{
    ExecOutput, ExecRequest, SandboxError, SandboxId, Terminal, TerminalControl, TerminalSize,
    WORKSPACE_PATH,
};

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

/// A terminal's controls: its exec in the engine.
struct ExecControl {
    docker: bollard::Docker,
    exec: String,
}

#[async_trait::async_trait]
impl TerminalControl for ExecControl {
    async fn resize(&self, size: TerminalSize) -> Result<(), SandboxError> {
        self.docker
            .resize_exec(
                &self.exec,
                bollard::query_parameters::ResizeExecOptions {
                    h: i32::from(size.rows),
                    w: i32::from(size.cols),
                },
            )
            .await
            .map_err(|e| map_err(e, "resize a terminal"))
    }

    async fn exit_code(&self) -> Result<Option<i64>, SandboxError> {
        let inspected = self
            .docker
            .inspect_exec(&self.exec)
            .await
            .map_err(|e| map_err(e, "inspect a terminal"))?;
        Ok(match inspected.running {
            Some(true) => None,
            _ => Some(inspected.exit_code.unwrap_or(1)),
        })
    }
}

impl DockerSandbox {
    pub(crate) async fn run_terminal(
        &self,
        id: &SandboxId,
        size: TerminalSize,
    ) -> Result<Terminal, SandboxError> {
        let exec = self
            .docker
            .create_exec(
                id.as_str(),
                CreateExecOptions {
                    cmd: Some(vec!["/bin/bash".to_owned(), "-l".to_owned()]),
                    working_dir: Some(WORKSPACE_PATH.to_owned()),
                    env: Some(vec![
                        "TERM=xterm-256color".to_owned(),
                        format!("COLUMNS={}", size.cols),
                        format!("LINES={}", size.rows),
                    ]),
                    tty: Some(true),
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| map_err(e, "create a terminal"))?;
        let started = self
            .docker
            .start_exec(
                &exec.id,
                Some(StartExecOptions {
                    tty: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| map_err(e, "start a terminal"))?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(SandboxError::runtime(
                "the engine started the terminal detached",
            ));
        };
        let control = ExecControl {
            docker: self.docker.clone(),
            exec: exec.id,
        };
        // The shell starts at the engine's default size: tell it the client's.
        if let Err(e) = control.resize(size).await {
            tracing::debug!(error = %e, "cannot size a new terminal");
        }
        let output = output
            .filter_map(|chunk| async move {
                match chunk {
                    Ok(LogOutput::StdIn { .. }) => None,
                    Ok(
                        LogOutput::StdOut { message }
                        | LogOutput::StdErr { message }
                        | LogOutput::Console { message },
                    ) => Some(Ok(message)),
                    Err(e) => Some(Err(map_err(e, "read a terminal"))),
                }
            })
            .boxed();
        Ok(Terminal {
            output,
            input,
            control: Box::new(control),
        })
    }
}
