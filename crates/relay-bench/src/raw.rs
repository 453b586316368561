//! The baseline: the same image run straight through the Engine API, with no relay in between.
//! Containers get the relay's exact configuration (see [`Raw::spec`]) and session files made by
//! the same provider code, and this run's instance label, so the final sweep removes them too.

use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use relay_docker::DockerSandbox;
use relay_sandbox::{OutputChunk, OutputStream, Sandbox, SandboxId, SandboxSpec, SandboxStatus};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{BoxError, Context, sys};

/// Limit of the readiness check of a fresh container.
const READY_LIMIT: Duration = Duration::from_secs(60);

/// Engine API timings of one raw create → running.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawTimes {
    pub create: Duration,
    pub start: Duration,
    pub inspect: Duration,
    pub total: Duration,
}

/// Creates and removes baseline containers.
#[derive(Debug)]
pub(crate) struct Raw {
    docker: DockerSandbox,
    image_id: String,
    user: (u32, u32),
    instance_id: String,
    next: AtomicU64,
    created: Mutex<Vec<SandboxId>>,
}

impl Raw {
    /// Baseline containers of `image_id`, with session files in `docker`'s storage, run as the
    /// user the relay would pick (it runs as the same user as the benchmark).
    pub(crate) fn new(
        docker: DockerSandbox,
        image_id: String,
        instance_id: String,
    ) -> Result<Raw, BoxError> {
        let (euid, egid) = sys::effective_ids().ctx("reading this process's uid")?;
        // As pi-relay's `Relay::start`: as root, sandboxes run as 1000:1000 (its default
        // --sandbox-uid/gid) with directories handed to them; otherwise as the relay's own user.
        let root = euid == 0;
        Ok(Raw {
            docker,
            image_id,
            user: if root { (1000, 1000) } else { (euid, egid) },
            instance_id,
            next: AtomicU64::new(1),
            created: Mutex::new(Vec::new()),
        })
    }

    /// A fresh container spec with its session files prepared (not timed: the relay's equivalent
    /// work is part of what the relay is measured on, the baseline is the engine alone).
    async fn prepare(&self) -> Result<SandboxSpec, BoxError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("raw-{}-{n}", std::process::id());
        self.docker
            .storage()
            .prepare(&id, self.user)
            .await
            .ctx("preparing raw session files")?;
        Ok(self.spec(&id))
    }

    /// The relay's own container configuration for a chat session in the default environment
    /// (`relay_session::sandbox_spec`), under a name of the benchmark's, so the baseline starts
    /// exactly the container the relay starts.
    fn spec(&self, id: &str) -> SandboxSpec {
        let cfg = relay_session::SessionConfig {
            default_image: self.image_id.clone(),
            sandbox_user: self.user,
            network: relay_sandbox::Network::None,
            instance_id: self.instance_id.clone(),
            hardened: true,
            agent_template: None,
            activate_timeout: std::time::Duration::from_secs(60),
            trust_env: Vec::new(),
            packages: Default::default(),
            github_api: relay_session::github::DEFAULT_GITHUB_API.into(),
        };
        let mut spec = relay_session::sandbox_spec(&cfg, id, "{}", self.image_id.clone(), false);
        spec.name = format!("pi-bench-{id}");
        spec
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<SandboxId, BoxError> {
        let id = self.docker.create(spec).await.ctx("raw create container")?;
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id.clone());
        Ok(id)
    }

    /// Create + start + inspect, each timed; the container keeps running until
    /// [`Raw::remove_all`].
    pub(crate) async fn create_start_inspect(&self) -> Result<RawTimes, BoxError> {
        let spec = self.prepare().await?;
        let t0 = Instant::now();
        let id = self.create(&spec).await?;
        let t1 = Instant::now();
        self.docker.start(&id).await.ctx("raw start container")?;
        let t2 = Instant::now();
        let info = self
            .docker
            .inspect(&id)
            .await
            .ctx("raw inspect container")?;
        let t3 = Instant::now();
        if info.status != SandboxStatus::Running {
            return Err(format!(
                "raw container is {:?} right after start (exit code {:?})",
                info.status, info.exit_code
            )
            .into());
        }
        Ok(RawTimes {
            create: t1 - t0,
            start: t2 - t1,
            inspect: t3 - t2,
            total: t3 - t0,
        })
    }

    /// A running container attached before start, as the relay attaches, whose pi has answered
    /// a `get_state`.
    pub(crate) async fn start_attached(&self) -> Result<RawPi, BoxError> {
        let spec = self.prepare().await?;
        let id = self.create(&spec).await?;
        let io = self.docker.attach(&id).await.ctx("raw attach")?;
        self.docker.start(&id).await.ctx("raw start container")?;
        let mut pi = RawPi {
            id,
            output: io.output,
            input: io.input,
            carry: Vec::new(),
        };
        pi.send_line(r#"{"id":"ready","type":"get_state"}"#).await?;
        pi.read_until(READY_LIMIT, |l| l.starts_with(br#"{"id":"ready""#), |_| {})
            .await
            .ctx("raw pi readiness")?;
        Ok(pi)
    }

    /// Removes a container this run created.
    pub(crate) async fn remove(&self, id: &SandboxId) -> Result<(), BoxError> {
        self.docker
            .remove(id)
            .await
            .ctx("removing a raw container")?;
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|c| c != id);
        Ok(())
    }

    /// Removes every container this run created, a few at a time; returns the failures.
    pub(crate) async fn remove_all(&self) -> Vec<String> {
        let ids = std::mem::take(&mut *self.created.lock().unwrap_or_else(|p| p.into_inner()));
        let mut errors = Vec::new();
        for chunk in ids.chunks(5) {
            let results =
                futures_util::future::join_all(chunk.iter().map(|id| self.docker.remove(id))).await;
            errors.extend(
                results
                    .into_iter()
                    .filter_map(|r| r.err().map(|e| e.to_string())),
            );
        }
        errors
    }
}

/// An attached baseline container.
pub(crate) struct RawPi {
    pub id: SandboxId,
    output: OutputStream,
    input: Pin<Box<dyn AsyncWrite + Send>>,
    /// The unterminated end of the last chunk.
    carry: Vec<u8>,
}

impl std::fmt::Debug for RawPi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawPi")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl RawPi {
    /// Writes one command line to pi's stdin.
    pub(crate) async fn send_line(&mut self, line: &str) -> Result<(), BoxError> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        tokio::time::timeout(Duration::from_secs(30), async {
            self.input.write_all(&bytes).await?;
            self.input.flush().await
        })
        .await
        .map_err(|_| "writing to raw pi's stdin timed out")?
        .ctx("writing to raw pi's stdin")?;
        Ok(())
    }

    /// Reads stdout lines, calling `each` on every one, until one satisfies `done` (included);
    /// returns how many lines were read. Splits on `\n` like the relay does.
    pub(crate) async fn read_until(
        &mut self,
        limit: Duration,
        done: impl Fn(&[u8]) -> bool,
        mut each: impl FnMut(&[u8]),
    ) -> Result<u64, BoxError> {
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        let mut lines = 0u64;
        // Lines left over from the previous read come first.
        let leftover = std::mem::take(&mut self.carry);
        if self.feed(&leftover, &done, &mut each, &mut lines) {
            return Ok(lines);
        }
        loop {
            let chunk = tokio::select! {
                biased;
                c = self.output.next() => c,
                () = &mut deadline => return Err(format!("raw pi: no end within {limit:?} ({lines} lines)").into()),
            };
            let bytes = match chunk {
                Some(Ok(OutputChunk::Stdout(b))) => b,
                Some(Ok(OutputChunk::Stderr(_))) => continue,
                Some(Err(e)) => return Err(format!("raw attach stream: {e}").into()),
                None => return Err(format!("raw pi's output ended after {lines} lines").into()),
            };
            if self.feed(&bytes, &done, &mut each, &mut lines) {
                return Ok(lines);
            }
        }
    }

    /// Splits `bytes` (after the carried partial line) into lines; true once `done` matched,
    /// with the rest carried for the next read.
    fn feed(
        &mut self,
        bytes: &[u8],
        done: &impl Fn(&[u8]) -> bool,
        each: &mut impl FnMut(&[u8]),
        lines: &mut u64,
    ) -> bool {
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            let (line, after) = rest.split_at(nl);
            rest = &after[1..];
            let finished = if self.carry.is_empty() {
                each(line);
                done(line)
            } else {
                self.carry.extend_from_slice(line);
                let line = std::mem::take(&mut self.carry);
                each(&line);
                done(&line)
            };
            *lines += 1;
            if finished {
                self.carry.extend_from_slice(rest);
                return true;
            }
        }
        self.carry.extend_from_slice(rest);
        false
    }
}
