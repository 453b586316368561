//! Relays run as their own processes against the machine's Docker engine, for tests that kill
//! or restart them like real ones: the fixture (engine, state root, a unique instance whose
//! containers are removed at the end, the relay's log printed on failure) and the process.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_sandbox::{LABEL_INSTANCE, Sandbox};

use crate::helpers::*;

/// Storage for an engine client that only looks at or removes sandboxes.
pub(crate) fn scratch_storage() -> relay_sandbox::host::HostStorage {
    relay_sandbox::host::HostStorage::new(std::env::temp_dir(), false)
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Prints the relays' log when a test fails, since the temporary directory goes with it.
pub(crate) struct LogOnPanic(pub(crate) std::path::PathBuf);

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.0.join("relay.log")).unwrap_or_default();
            eprintln!("---- relay log ----\n{log}");
        }
    }
}

/// Removes every container of a test's relay instance when the test ends, even by a panic.
pub(crate) struct Cleanup {
    pub(crate) instance: String,
    pub(crate) docker_host: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (instance, host) = (self.instance.clone(), self.docker_host.clone());
        relay_testkit::block_on_own_thread(Duration::from_secs(60), async move {
            let Ok(d) = relay_docker::DockerSandbox::connect(
                host.as_deref()
                    .or(std::env::var("DOCKER_HOST").ok().as_deref()),
                scratch_storage(),
            )
            .await
            else {
                return;
            };
            for c in d
                .list(&[(LABEL_INSTANCE.to_owned(), instance)])
                .await
                .unwrap_or_default()
            {
                let _ = d.remove(&c.id).await;
            }
        });
    }
}

/// What every fault test on the machine's engine starts with: the engine, a state root, a
/// unique relay instance, and the guards that print the relay's log on failure and remove the
/// instance's containers at the end (fields drop in this order).
pub(crate) struct Fixture {
    pub(crate) _cleanup: Cleanup,
    pub(crate) _log: LogOnPanic,
    pub(crate) docker: relay_docker::DockerSandbox,
    pub(crate) instance: String,
    pub(crate) root: tempfile::TempDir,
}

impl Fixture {
    pub(crate) async fn new() -> Fixture {
        let docker = engine().await;
        let root = tempfile::tempdir().unwrap();
        let instance = format!("test-{}", uuid::Uuid::new_v4());
        Fixture {
            _cleanup: Cleanup {
                instance: instance.clone(),
                docker_host: None,
            },
            _log: LogOnPanic(root.path().to_path_buf()),
            docker,
            instance,
            root,
        }
    }
}

/// A relay running as its own process, so it can be killed like a real one.
pub(crate) struct RelayProcess {
    pub(crate) child: Child,
    pub(crate) app: Arc<TestApp>,
}

impl RelayProcess {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub(crate) fn terminate(mut self) {
        #[allow(unsafe_code)]
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().unwrap();
    }
}

impl Drop for RelayProcess {
    /// A failing test must not leave its relay running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(crate) async fn spawn_relay_on(
    root: &Path,
    instance: &str,
    image: &str,
    extra: &[&str],
) -> RelayProcess {
    let port = free_port();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("relay.log"))
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pi-relay"));
    cmd.arg("serve")
        .args(["--port", &port.to_string()])
        .args(["--data-dir", root.join("data").to_str().unwrap()])
        .args(["--state-dir", root.join("state").to_str().unwrap()])
        .args(["--config-dir", root.join("config").to_str().unwrap()])
        .args(["--sandbox-image", image])
        .args(["--instance-id", instance])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let child = cmd.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if http.get(format!("{base}/health")).send().await.is_ok() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "relay did not start; see {}",
            root.join("relay.log").display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The process owns the relay; the app's own fake provider and directory go unused.
    let scratch = tempfile::tempdir().unwrap();
    let app = TestApp {
        relay: None,
        base,
        ws_base: format!("ws://127.0.0.1:{port}"),
        http,
        fake: fake(&scratch),
        token: None,
        dir: scratch,
    };
    RelayProcess {
        child,
        app: Arc::new(app),
    }
}
