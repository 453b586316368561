//! `POST /api/sessions/:id/exec`: a shell command run in a session's running sandbox, with the
//! pi-apps relay's bounds: 30 s by default, 60 s at most, 256 KiB of output kept. And the
//! terminal of `/ws/sessions/:id/terminal`: a login shell in the sandbox.

use std::time::Duration;

use relay_model::SessionStatus;
use relay_sandbox::{ExecRequest, SandboxId, SandboxStatus, Terminal, TerminalSize};

use crate::{SessionError, SessionService};

/// Output kept of a command.
pub const MAX_EXEC_OUTPUT: usize = 256 * 1024;
/// Default and longest wait for a command.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a command.
pub const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// Appended to output cut at [`MAX_EXEC_OUTPUT`].
const TRUNCATED: &str = "\n... (output truncated)";

/// What a command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecResult {
    /// Its exit code.
    pub exit_code: i64,
    /// stdout and stderr as they came (invalid UTF-8 replaced), cut at [`MAX_EXEC_OUTPUT`].
    pub output: String,
}

/// The wait for a command asked to take `seconds`: the default when not given, at most
/// [`MAX_EXEC_TIMEOUT`].
pub fn exec_timeout(seconds: Option<f64>) -> Duration {
    match seconds {
        Some(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s).min(MAX_EXEC_TIMEOUT),
        _ => DEFAULT_EXEC_TIMEOUT,
    }
}

impl SessionService {
    /// Runs `command` with `/bin/sh -c` in session `id`'s sandbox, which must be running.
    pub async fn exec(
        &self,
        id: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<ExecResult, SessionError> {
        let inner = &self.inner;
        let row = inner.row(id).await?;
        if row.status == SessionStatus::Archived {
            return Err(SessionError::NotFound);
        }
        let Some(cid) = row.sandbox_provider_id.map(SandboxId) else {
            return Err(SessionError::Conflict("No sandbox running".into()));
        };
        if !inner.sandbox.capabilities().exec {
            return Err(SessionError::Conflict(
                "Exec not supported by this sandbox provider".into(),
            ));
        }
        let running = matches!(
            inner.sandbox.inspect(&cid).await.map(|i| i.status),
            Ok(SandboxStatus::Running)
        );
        if !running {
            return Err(SessionError::Conflict("Sandbox is not running".into()));
        }
        let request = ExecRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), command.to_owned()],
            max_output: MAX_EXEC_OUTPUT,
            timeout,
        };
        let out = inner.sandbox.exec(&cid, &request).await?;
        let Some(exit_code) = out.exit_code else {
            return Err(SessionError::ExecTimedOut);
        };
        let mut output = String::from_utf8_lossy(&out.output).into_owned();
        if out.truncated {
            output.push_str(TRUNCATED);
        }
        Ok(ExecResult { exit_code, output })
    }
}

/// Why a terminal was not opened: the close code and message the protocol gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TerminalRefused {
    /// WebSocket close code (4004, 4003).
    pub code: u16,
    /// What the client is told.
    pub message: String,
}

impl SessionService {
    /// Opens a login shell with a terminal of `size` in session `id`'s sandbox.
    pub async fn open_terminal(
        &self,
        id: &str,
        size: TerminalSize,
    ) -> Result<Terminal, TerminalRefused> {
        let refused = |code, message: &str| TerminalRefused {
            code,
            message: message.to_owned(),
        };
        let inner = &self.inner;
        let row = match inner.store.session(id).await {
            Ok(Some(r)) if r.status != SessionStatus::Archived => r,
            Ok(_) => return Err(refused(4004, "Session not found")),
            Err(e) => {
                tracing::error!(error = %e, "session lookup failed");
                return Err(refused(4003, "Failed to open terminal"));
            }
        };
        let Some(cid) = row.sandbox_provider_id.map(SandboxId) else {
            return Err(refused(4003, "No sandbox provisioned"));
        };
        if !inner.sandbox.capabilities().terminal {
            return Err(refused(
                4003,
                "Terminal not supported by this sandbox provider",
            ));
        }
        let running = matches!(
            inner.sandbox.inspect(&cid).await.map(|i| i.status),
            Ok(SandboxStatus::Running)
        );
        if !running {
            return Err(refused(
                4003,
                "Sandbox is not running; activate the session first",
            ));
        }
        inner
            .sandbox
            .open_terminal(&cid, size)
            .await
            .map_err(|e| refused(4003, &e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_defaults_to_30_s_and_is_at_most_60() {
        assert_eq!(exec_timeout(None), Duration::from_secs(30));
        assert_eq!(exec_timeout(Some(5.0)), Duration::from_secs(5));
        assert_eq!(exec_timeout(Some(600.0)), Duration::from_secs(60));
        assert_eq!(exec_timeout(Some(0.0)), Duration::from_secs(30));
        assert_eq!(exec_timeout(Some(f64::NAN)), Duration::from_secs(30));
    }
}
