//! The relay under test: `pi-relay serve` run as a child process of the benchmark, so its CPU time and memory are its own and can be read from `/proc/<pid>`.
//! It gets a free loopback port, temporary directories, the benchmark image, network `none`,
//! and its own instance id, which labels every container it creates.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{BoxError, Context};

/// How long the relay may take to answer `/health` after being started.
const START_LIMIT: Duration = Duration::from_secs(30);
/// How long it may take to exit after SIGTERM before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(20);

/// A running relay child.
#[derive(Debug)]
pub(crate) struct RelayChild {
    child: tokio::process::Child,
    pub pid: u32,
    pub port: u16,
    pub log: PathBuf,
}

/// A loopback port nobody listens on right now. The relay binds it a moment later; another
/// process taking it in between makes the start fail with the relay's "cannot listen" error.
fn free_port() -> Result<u16, BoxError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).ctx("finding a free port")?;
    Ok(listener.local_addr().ctx("finding a free port")?.port())
}

impl RelayChild {
    /// Starts `pi-relay serve` with everything under `root` and waits until `/health` answers.
    pub(crate) async fn start(
        exe: &Path,
        root: &Path,
        image: &str,
        instance_id: &str,
        docker_host: Option<&str>,
    ) -> Result<RelayChild, BoxError> {
        let port = free_port()?;
        let log = root.join("relay.log");
        let log_file = std::fs::File::create(&log).ctx(&format!("creating {}", log.display()))?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("serve")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--data-dir")
            .arg(root.join("data"))
            .arg("--state-dir")
            .arg(root.join("state"))
            .arg("--config-dir")
            .arg(root.join("config"))
            .args(["--sandbox-image", image, "--sandbox-network", "none"])
            .args(["--instance-id", instance_id]);
        if let Some(h) = docker_host {
            cmd.args(["--docker-host", h]);
        }
        // Settings inherited from the environment (a token, an agent template, other limits)
        // would make this relay differ from the one described, or refuse the bench's requests.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PI_RELAY_") {
                cmd.env_remove(&key);
            }
        }
        cmd.env_remove("SANDBOX_DOCKER_IMAGE")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            // A safety net for early returns and panics; the normal path stops it with SIGTERM.
            .kill_on_drop(true);
        let mut child = cmd.spawn().ctx("starting `pi-relay serve`")?;
        let pid = child.id().ok_or("the relay exited as soon as it started")?;
        wait_healthy(&mut child, port, &log).await?;
        Ok(RelayChild {
            child,
            pid,
            port,
            log,
        })
    }

    /// Stops the relay as an operator would (SIGTERM), waits for it, and kills it if it hangs.
    /// Returns how it ended.
    pub(crate) async fn stop(mut self) -> Result<String, BoxError> {
        sigterm(self.pid).ctx("sending SIGTERM to the relay")?;
        match tokio::time::timeout(STOP_LIMIT, self.child.wait()).await {
            Ok(status) => Ok(format!(
                "exited on SIGTERM ({})",
                status.ctx("waiting for the relay")?
            )),
            Err(_) => {
                self.child.kill().await.ctx("killing the relay")?;
                Err(format!("the relay ignored SIGTERM for {STOP_LIMIT:?} and was killed").into())
            }
        }
    }

    /// The last lines the relay logged.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

/// Polls `/health` until it answers, failing early with the log's tail if the relay exits.
async fn wait_healthy(
    child: &mut tokio::process::Child,
    port: u16,
    log: &Path,
) -> Result<(), BoxError> {
    let started = Instant::now();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/health");
    loop {
        if let Some(status) = child.try_wait().ctx("watching the relay")? {
            return Err(format!(
                "the relay exited during startup ({status}); last lines of {}:\n{}",
                log.display(),
                log_tail(log, 20)
            )
            .into());
        }
        let ok = http
            .get(&url)
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return Ok(());
        }
        if started.elapsed() > START_LIMIT {
            return Err(format!(
                "the relay did not answer /health within {START_LIMIT:?}; last lines of {}:\n{}",
                log.display(),
                log_tail(log, 20)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sigterm(pid: u32) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    #[allow(unsafe_code)]
    // SAFETY: kill(2) has no memory-safety preconditions. The pid is our own child, which has
    // not been reaped (we still hold its `Child`), so it cannot name another process.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
