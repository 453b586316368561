//! Running things in a sandbox besides its main process: a command to completion
//! ([`crate::Sandbox::exec`]) and an interactive shell with a terminal
//! ([`crate::Sandbox::open_terminal`]).

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use tokio::io::AsyncWrite;

use crate::SandboxError;

/// A command run in a sandbox by [`Sandbox::exec`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecRequest {
    /// The program and its arguments (no shell unless it is named).
    pub argv: Vec<String>,
    /// Output kept; the rest is read and dropped (the command is never held up).
    pub max_output: usize,
    /// How long to wait for it to end; it keeps running in the sandbox after that.
    pub timeout: Duration,
}

/// What a command run by [`Sandbox::exec`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    /// Its exit code; `None` when it did not end within the timeout.
    pub exit_code: Option<i64>,
    /// stdout and stderr as they came, up to the request's `max_output`.
    pub output: Bytes,
    /// Output was dropped past `max_output`.
    pub truncated: bool,
}

/// A terminal's size in characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TerminalSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

/// An open terminal: what the shell prints, its keyboard, and its controls. Dropping it closes
/// the terminal's streams (the shell sees its terminal hang up).
pub struct Terminal {
    /// What the shell prints, raw (one stream: a terminal merges stdout and stderr).
    pub output: BoxStream<'static, Result<Bytes, SandboxError>>,
    /// The shell's keyboard.
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
    /// Resizing, and the exit code once it ended.
    pub control: Box<dyn TerminalControl>,
}

impl fmt::Debug for Terminal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Terminal").finish_non_exhaustive()
    }
}

/// Controls of an open [`Terminal`].
#[async_trait]
pub trait TerminalControl: Send + Sync {
    /// Tells the shell its terminal's new size.
    async fn resize(&self, size: TerminalSize) -> Result<(), SandboxError>;
    /// The shell's exit code, once it ended.
    async fn exit_code(&self) -> Result<Option<i64>, SandboxError>;
}
