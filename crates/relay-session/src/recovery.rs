//! Re-attaching a hub to a sandbox that ran while nobody was attached (the relay was down or
//! restarted, the attachment broke), without losing or repeating a line of pi's output.
//!
//! The journal records how many stdout lines of the container it has consumed. The engine keeps
//! everything the container printed in its log. For a stopped sandbox, the log past that count
//! is what was missed. For a running one, pi keeps printing while the log is read, so the
//! boundary between "in the log" and "seen live" is fixed with a marker: the relay attaches,
//! asks pi for its state under a unique id, and everything pi printed before that answer is
//! taken from the log, everything after it from the live attachment.
//!
//! Providers keep different amounts of history ([`OutputHistory`]): Docker keeps everything since
//! the sandbox was created, so the count goes on across restarts; a provider that keeps only the
//! latest run's output starts the count again at each start; with no history at all, the relay
//! attaches and notes in the session's log that output printed meanwhile is lost.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use relay_hub::Hub;
use relay_hub::lines::LineSplitter;
use relay_sandbox::{OutputChunk, OutputHistory, Sandbox, SandboxError, SandboxId, SandboxIo};
use tokio::io::AsyncWriteExt;

/// Prefix of the ids of the relay's own marker requests; their answers are never journaled.
pub(crate) use relay_hub::protocol::SYNC_ID_PREFIX;

/// How long pi has to answer the marker request.
const SYNC_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the engine's log may lag behind the live attachment.
const LOG_LAG_TIMEOUT: Duration = Duration::from_secs(5);

/// Lines of the engine's log after the first `consumed`.
pub(crate) struct LogTail {
    /// Complete lines after the first `consumed` (and before the marker, if one was sought).
    pub(crate) missed: Vec<Bytes>,
    /// Complete lines in the log (up to and including the marker, if one was found).
    pub(crate) total: u64,
    /// Whether the marker was found.
    pub(crate) marker_found: bool,
}

/// Reads the container's stdout log, keeping the lines after the first `consumed` and stopping
/// after the line containing `marker` if given. A last line without a newline counts as a line
/// when `exited` (the process will not finish it).
pub(crate) async fn read_log(
    sandbox: &dyn Sandbox,
    cid: &SandboxId,
    consumed: u64,
    marker: Option<&str>,
    exited: bool,
) -> Result<LogTail, SandboxError> {
    let mut stream = sandbox.stdout_history(cid).await?;
    let mut splitter = LineSplitter::new();
    let mut lines = Vec::new();
    let mut tail = LogTail {
        missed: Vec::new(),
        total: 0,
        marker_found: false,
    };
    let contains = |line: &[u8], m: &str| line.windows(m.len()).any(|w| w == m.as_bytes());
    while let Some(chunk) = stream.next().await {
        let OutputChunk::Stdout(b) = chunk? else {
            continue;
        };
        splitter.push(&b, &mut lines);
        for line in lines.drain(..) {
            tail.total += 1;
            if tail.total <= consumed {
                continue;
            }
            if marker.is_some_and(|m| contains(&line, m)) {
                tail.marker_found = true;
                return Ok(tail);
            }
            tail.missed.push(line);
        }
    }
    if exited && let Some(last) = splitter.finish() {
        tail.total += 1;
        if tail.total > consumed {
            tail.missed.push(last);
        }
    }
    Ok(tail)
}

fn note_truncation(hub: &Hub, consumed: u64, kept: u64) {
    tracing::warn!(session = %hub.session_id(), consumed, kept, "sandbox log was truncated; output printed while detached may be missing");
    hub.log(format!(
        "relay: the sandbox provider kept only {kept} of {consumed} output lines; some output printed while the relay was away is lost"
    ));
}

fn note_no_history(hub: &Hub) {
    tracing::info!(session = %hub.session_id(), "the provider keeps no output history; output printed while detached is not recovered");
    hub.log(
        "relay: this sandbox provider keeps no output history; output printed while the relay \
         was away is not in the journal"
            .into(),
    );
}

/// Recovers and attaches a sandbox that is not running (created or exited); the caller starts
/// it afterwards.
pub(crate) async fn attach_stopped(
    sandbox: &dyn Sandbox,
    history: OutputHistory,
    hub: &std::sync::Arc<Hub>,
    cid: &SandboxId,
    consumed: u64,
) -> Result<(), SandboxError> {
    let total = if history == OutputHistory::None {
        note_no_history(hub);
        0
    } else {
        let tail = read_log(sandbox, cid, consumed, None, true).await?;
        if tail.total < consumed {
            note_truncation(hub, consumed, tail.total);
        }
        let total = tail.total.max(consumed);
        hub.recover(tail.missed, total).await;
        total
    };
    // The count of lines the next run's output continues from: its log starts empty unless the
    // provider keeps every run's output.
    let next = match history {
        OutputHistory::SinceCreation => total,
        OutputHistory::SinceStart | OutputHistory::None => 0,
    };
    let io = sandbox.attach(cid).await?;
    hub.attach(io, next, Bytes::new()).await;
    Ok(())
}

/// Recovers and attaches a running sandbox, using a marker request to join the log and the live
/// stream exactly.
pub(crate) async fn attach_running(
    sandbox: &dyn Sandbox,
    history: OutputHistory,
    hub: &std::sync::Arc<Hub>,
    cid: &SandboxId,
    consumed: u64,
) -> Result<(), SandboxError> {
    if history == OutputHistory::None {
        note_no_history(hub);
        let io = sandbox.attach(cid).await?;
        hub.attach(io, 0, Bytes::new()).await;
        return Ok(());
    }
    let SandboxIo {
        mut output,
        mut input,
    } = sandbox.attach(cid).await?;
    let marker = format!("{SYNC_ID_PREFIX}{}", uuid::Uuid::new_v4());
    let request = format!("{{\"id\":\"{marker}\",\"type\":\"get_state\"}}\n");
    let io_error = |e: std::io::Error| SandboxError::runtime_from("writing to pi", e);
    input
        .write_all(request.as_bytes())
        .await
        .map_err(io_error)?;
    input.flush().await.map_err(io_error)?;

    // Hold the live stream until the marker's answer passes by.
    let mut held = BytesMut::new();
    let mut stderr = Vec::new();
    let after_marker = tokio::time::timeout(SYNC_TIMEOUT, async {
        let mut searched = 0;
        loop {
            match output.next().await {
                Some(Ok(OutputChunk::Stdout(b))) => {
                    held.extend_from_slice(&b);
                    while let Some(nl) = held[searched..].iter().position(|&c| c == b'\n') {
                        let end = searched + nl + 1;
                        let line = &held[searched..end];
                        if line.windows(marker.len()).any(|w| w == marker.as_bytes()) {
                            return Ok(end);
                        }
                        searched = end;
                    }
                }
                Some(Ok(OutputChunk::Stderr(b))) => stderr.push(b),
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(SandboxError::InvalidState(
                        "the sandbox stopped while the relay re-attached".into(),
                    ));
                }
            }
        }
    })
    .await
    .map_err(|_| SandboxError::runtime("pi did not answer the relay's re-attach request"))??;
    let live_rest = held.split_off(after_marker).freeze();

    // Everything before the marker is in the log, which may lag a little behind the live stream.
    let deadline = tokio::time::Instant::now() + LOG_LAG_TIMEOUT;
    let tail = loop {
        let tail = read_log(sandbox, cid, consumed, Some(&marker), false).await?;
        if tail.marker_found || tokio::time::Instant::now() >= deadline {
            break tail;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if !tail.marker_found {
        note_truncation(hub, consumed, tail.total);
    }
    let total = tail.total;
    hub.recover(tail.missed, total).await;
    let replay = std::iter::once(Ok(OutputChunk::Stdout(live_rest)))
        .chain(stderr.into_iter().map(|b| Ok(OutputChunk::Stderr(b))));
    let output = futures_util::stream::iter(replay).chain(output).boxed();
    hub.attach(SandboxIo { output, input }, total, Bytes::new())
        .await;
    Ok(())
}
