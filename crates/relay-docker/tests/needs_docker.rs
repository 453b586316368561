//! Tests of the Docker provider against a real engine. They FAIL (never skip) when no engine
//! answers: start one with `scripts/docker-up.sh`. Select them with `cargo test needs_docker`.
//!
//! Every test labels its containers with its own `pi-relay.instance=test-<uuid>` value, touches
//! nothing else, and removes what it created (explicitly at the end, and from a drop guard when
//! it panics). The image comes from `PI_RELAY_TEST_IMAGE` (default
//! `pi-relay/sandbox-debian:1.6.0`); it must already be present, nothing is pulled.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use relay_docker::DockerSandbox;
use relay_sandbox::{
    LABEL_INSTANCE, LABEL_SESSION, OutputChunk, Sandbox, SandboxError, SandboxId, SandboxStatus,
};
use tokio::io::AsyncWriteExt;

use helpers::*;

mod helpers {
    use std::future::Future;
    use std::time::Duration;

    use futures_util::StreamExt;
    use relay_docker::DockerSandbox;
    use relay_sandbox::host::{HostLayout, HostStorage};
    use relay_sandbox::{
        LABEL_INSTANCE, Network, OutputChunk, Sandbox, SandboxId, SandboxIo, SandboxSpec,
        SecretFile, SessionStorage,
    };

    /// Upper bound for any single engine operation or output wait.
    pub(crate) const TIMEOUT: Duration = Duration::from_secs(30);
    /// uid:gid the sandboxes run as (deliberately not the image's 1000).
    pub(crate) const UID: u32 = 1234;
    pub(crate) const GID: u32 = 1234;
    /// Name of the secret file (exported as `PI_RELAY_TEST_TOKEN` by the entrypoint).
    pub(crate) const SECRET_FILE: &str = "pi_relay_test_token";
    /// What the provider mounts at `$HOME` for a sandbox of [`UID`]:[`GID`].
    pub(crate) const HOME_TMPFS_OPTS: &str = "uid=1234,gid=1234,mode=0700,exec,size=268435456";

    /// Awaits `fut`, failing the test if it takes longer than [`TIMEOUT`].
    pub(crate) async fn within<F: Future>(what: &str, fut: F) -> F::Output {
        match tokio::time::timeout(TIMEOUT, fut).await {
            Ok(v) => v,
            Err(_) => panic!("timed out after {TIMEOUT:?}: {what}"),
        }
    }

    pub(crate) fn image_ref() -> String {
        std::env::var("PI_RELAY_TEST_IMAGE")
            .unwrap_or_else(|_| "pi-relay/sandbox-debian:1.6.0".to_owned())
    }

    /// The provider on the machine's engine, keeping session files in `storage`.
    pub(crate) async fn connect(storage: HostStorage) -> DockerSandbox {
        within(
            "connect",
            DockerSandbox::connect(std::env::var("DOCKER_HOST").ok().as_deref(), storage),
        )
        .await
        .expect("Docker engine must be running for these tests (scripts/docker-up.sh)")
    }

    /// The static forwarder `scripts/build-forwarder.sh` builds (`PI_RELAY_FORWARDER` names
    /// another). Its absence fails the tests that need it, with the fix in the message.
    pub(crate) fn forwarder() -> std::path::PathBuf {
        std::env::var_os("PI_RELAY_FORWARDER")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                let target = std::env::var_os("CARGO_TARGET_DIR")
                    .map(std::path::PathBuf::from)
                    .unwrap_or_else(|| {
                        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target")
                    });
                target.join("debug/pi-relay-forward")
            })
    }

    /// bollard's own client, to read the raw container configuration.
    pub(crate) async fn raw_docker() -> bollard::Docker {
        let docker = bollard::Docker::connect_with_defaults().expect("bollard client");
        within("negotiate version", docker.negotiate_version())
            .await
            .expect("Docker engine must be running for these tests (scripts/docker-up.sh)")
    }

    pub(crate) fn sh(script: &str) -> Vec<String> {
        vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()]
    }

    /// One test's world: provider, resolved image, own instance label, a state directory for
    /// session files and a guard that removes every container carrying the instance label.
    #[derive(Debug)]
    pub(crate) struct Fixture {
        pub sandbox: DockerSandbox,
        pub image_id: String,
        pub instance: String,
        /// Each sandbox's secret file holds this (plus a newline).
        pub secret_value: String,
        storage: HostStorage,
        _state: tempfile::TempDir,
        guard: Cleanup,
    }

    impl Fixture {
        pub(crate) async fn new() -> Fixture {
            let state = tempfile::Builder::new()
                .prefix("pi-relay-docker-test-")
                .tempdir()
                .expect("tempdir");
            // As the relay running as root: session files are handed to the sandbox user.
            let storage = HostStorage::new(state.path().to_path_buf(), true);
            let sandbox = connect(storage.clone()).await.with_forwarder(forwarder());
            let image_id = within("pin image", sandbox.pin_image(&image_ref()))
                .await
                .unwrap_or_else(|e| panic!("test image {} must be present: {e}", image_ref()));
            let instance = format!("test-{}", uuid::Uuid::new_v4());
            Fixture {
                guard: Cleanup {
                    instance: instance.clone(),
                    armed: true,
                },
                sandbox,
                image_id,
                instance,
                secret_value: format!("s3cr3t-{}", uuid::Uuid::new_v4().simple()),
                storage,
                _state: state,
            }
        }

        pub(crate) fn instance_filter(&self) -> Vec<(String, String)> {
            vec![(LABEL_INSTANCE.to_owned(), self.instance.clone())]
        }

        /// The relay's own spec for a new session (`relay_session::sandbox_spec`, default
        /// environment) running `command`, with the session's files prepared and one secret.
        pub(crate) async fn spec(&self, command: Vec<String>) -> SandboxSpec {
            let session = uuid::Uuid::new_v4().to_string();
            let cfg = relay_session::SessionConfig {
                default_image: image_ref(),
                sandbox_user: (UID, GID),
                network: Network::None,
                instance_id: self.instance.clone(),
                hardened: true,
                agent_template: None,
                activate_timeout: Duration::from_secs(60),
                trust_env: Vec::new(),
                packages: Default::default(),
                github_api: relay_session::github::DEFAULT_GITHUB_API.into(),
            };
            let mut spec =
                relay_session::sandbox_spec(&cfg, &session, "{}", self.image_id.clone(), false);
            spec.command = command;
            within("prepare files", self.storage.prepare(&session, (UID, GID)))
                .await
                .expect("prepare files");
            let secret = SecretFile {
                name: SECRET_FILE.to_owned(),
                value: format!("{}\n", self.secret_value).into(),
            };
            within(
                "write secrets",
                self.storage
                    .write_secrets(&session, (UID, GID), vec![secret]),
            )
            .await
            .expect("write secrets");
            spec
        }

        /// Where the session of `spec` has its files on the host.
        pub(crate) fn layout(&self, spec: &SandboxSpec) -> HostLayout {
            self.storage.layout(&spec.session_id)
        }

        /// Where the relay serves the egress socket of the session of `spec`.
        pub(crate) fn egress_socket(&self, spec: &SandboxSpec) -> std::path::PathBuf {
            self.storage.egress_socket(&spec.session_id)
        }

        pub(crate) async fn create(&self, spec: &SandboxSpec) -> SandboxId {
            within("create", self.sandbox.create(spec))
                .await
                .unwrap_or_else(|e| panic!("create {}: {e}", spec.name))
        }

        /// Creates, attaches (before start, so nothing is lost) and starts.
        pub(crate) async fn run(&self, spec: &SandboxSpec) -> (SandboxId, SandboxIo) {
            let id = self.create(spec).await;
            let io = within("attach", self.sandbox.attach(&id))
                .await
                .expect("attach");
            within("start", self.sandbox.start(&id))
                .await
                .expect("start");
            (id, io)
        }

        /// Removes every container of this test and checks that none is left.
        pub(crate) async fn cleanup(mut self) {
            let filter = self.instance_filter();
            let list = within("list for cleanup", self.sandbox.list(&filter))
                .await
                .expect("list");
            for c in list {
                within("remove", self.sandbox.remove(&c.id))
                    .await
                    .expect("remove");
            }
            let left = within("list after cleanup", self.sandbox.list(&filter))
                .await
                .expect("list");
            assert!(left.is_empty(), "containers left behind: {left:?}");
            self.guard.armed = false;
        }
    }

    /// Drop guard: when a test ends without [`Fixture::cleanup`] (it panicked), removes the
    /// test's containers from a separate thread with its own runtime and connection, since the
    /// test's runtime may be shutting down.
    #[derive(Debug)]
    struct Cleanup {
        instance: String,
        armed: bool,
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            if !self.armed {
                return;
            }
            let instance = self.instance.clone();
            let done = relay_testkit::block_on_own_thread(TIMEOUT, async move {
                let storage = HostStorage::new(std::env::temp_dir(), false);
                let Ok(sandbox) =
                    DockerSandbox::connect(std::env::var("DOCKER_HOST").ok().as_deref(), storage)
                        .await
                else {
                    return;
                };
                let filter = [(LABEL_INSTANCE.to_owned(), instance)];
                for c in sandbox.list(&filter).await.unwrap_or_default() {
                    let _ = sandbox.remove(&c.id).await;
                }
            });
            if !done {
                eprintln!("cleanup of instance {} failed", self.instance);
            }
        }
    }

    /// What [`collect_output`] read.
    #[derive(Debug, Default)]
    pub(crate) struct Collected {
        pub stdout: Vec<u8>,
        pub stderr: Vec<u8>,
        /// Size of every stdout chunk, in order.
        pub stdout_chunks: Vec<usize>,
        pub stderr_chunks: usize,
        /// The stream ended (the process exited).
        pub ended: bool,
    }

    impl Collected {
        pub(crate) fn out(&self) -> String {
            String::from_utf8_lossy(&self.stdout).into_owned()
        }
        pub(crate) fn err(&self) -> String {
            String::from_utf8_lossy(&self.stderr).into_owned()
        }
        fn contains(&self, marker: &str) -> bool {
            let hay = |b: &[u8]| b.windows(marker.len()).any(|w| w == marker.as_bytes());
            hay(&self.stdout) || hay(&self.stderr)
        }
    }

    /// Concatenates stdout and stderr chunks until `until` appears in either (when given) or
    /// the stream ends. Fails the test after [`TIMEOUT`] or on a stream error.
    pub(crate) async fn collect_output(io: &mut SandboxIo, until: Option<&str>) -> Collected {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let mut c = Collected::default();
        loop {
            if until.is_some_and(|m| c.contains(m)) {
                return c;
            }
            match tokio::time::timeout_at(deadline, io.output.next()).await {
                Err(_) => panic!(
                    "no {until:?} in output within {TIMEOUT:?}; stdout={:?} stderr={:?}",
                    c.out(),
                    c.err()
                ),
                Ok(None) => {
                    c.ended = true;
                    assert!(
                        until.is_none(),
                        "output ended before {until:?}; stdout={:?} stderr={:?}",
                        c.out(),
                        c.err()
                    );
                    return c;
                }
                Ok(Some(Err(e))) => panic!("output stream error: {e}"),
                Ok(Some(Ok(OutputChunk::Stdout(b)))) => {
                    c.stdout_chunks.push(b.len());
                    c.stdout.extend_from_slice(&b);
                }
                Ok(Some(Ok(OutputChunk::Stderr(b)))) => {
                    c.stderr_chunks += 1;
                    c.stderr.extend_from_slice(&b);
                }
            }
        }
    }

    /// Writes `text` to the sandbox's stdin and flushes.
    pub(crate) async fn send(io: &mut SandboxIo, text: &str) {
        use tokio::io::AsyncWriteExt;
        within("write stdin", io.input.write_all(text.as_bytes()))
            .await
            .expect("write stdin");
        within("flush stdin", io.input.flush())
            .await
            .expect("flush stdin");
    }
}

async fn inspect_status(fx: &Fixture, id: &SandboxId) -> (SandboxStatus, Option<i64>) {
    let info = within("inspect", fx.sandbox.inspect(id))
        .await
        .expect("inspect");
    (info.status, info.exit_code)
}

async fn wait_exit(fx: &Fixture, id: &SandboxId) -> i64 {
    within("wait", fx.sandbox.wait(id)).await.expect("wait")
}

#[tokio::test]
async fn needs_docker_create_applies_name_labels_user_mounts_limits_and_hardening() {
    let fx = Fixture::new().await;
    let spec = fx.spec(sh("true")).await;
    let id = fx.create(&spec).await;

    let info = within("inspect", fx.sandbox.inspect(&id))
        .await
        .expect("inspect");
    assert_eq!(info.status, SandboxStatus::Created);
    assert_eq!(info.exit_code, None);
    assert_eq!(info.name, spec.name);
    assert_eq!(info.image_id, fx.image_id);
    assert!(id.as_str().starts_with(info.id.as_str()) || info.id == id);
    assert_eq!(
        info.labels.get(LABEL_SESSION),
        spec.labels.get(LABEL_SESSION)
    );
    assert_eq!(info.labels.get(LABEL_INSTANCE), Some(&fx.instance));

    // Inspecting by name works too.
    let by_name = within(
        "inspect by name",
        fx.sandbox.inspect(&SandboxId(spec.name.clone())),
    )
    .await
    .expect("inspect by name");
    assert_eq!(by_name.id, info.id);

    let listed = within("list", fx.sandbox.list(&fx.instance_filter()))
        .await
        .expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, info.id);
    assert_eq!(listed[0].name, spec.name);
    assert_eq!(listed[0].status, SandboxStatus::Created);
    assert_eq!(listed[0].image_id, fx.image_id);
    assert_eq!(listed[0].labels, info.labels);

    // Both labels must match: the right instance with another session finds nothing.
    let none = within(
        "list with two labels",
        fx.sandbox.list(&[
            (LABEL_INSTANCE.to_owned(), fx.instance.clone()),
            (LABEL_SESSION.to_owned(), "some-other-session".to_owned()),
        ]),
    )
    .await
    .expect("list");
    assert!(none.is_empty(), "{none:?}");

    // The raw configuration, as the engine stored it.
    let docker = raw_docker().await;
    let raw = within(
        "raw inspect",
        docker.inspect_container(
            id.as_str(),
            None::<bollard::query_parameters::InspectContainerOptions>,
        ),
    )
    .await
    .expect("raw inspect");
    let config = raw.config.clone().expect("config");
    assert_eq!(config.user.as_deref(), Some("1234:1234"));
    assert_eq!(config.open_stdin, Some(true));
    assert_eq!(config.stdin_once, Some(false));
    assert_eq!(config.tty, Some(false));
    assert_eq!(config.working_dir.as_deref(), Some("/workspace"));
    assert_eq!(config.cmd, Some(spec.command.clone()));
    let env = config.env.clone().unwrap_or_default();
    assert!(
        env.contains(&"PI_CODING_AGENT_DIR=/data/agent".to_owned()),
        "{env:?}"
    );
    assert!(env.contains(&"HOME=/home/user".to_owned()), "{env:?}");
    for e in &env {
        assert!(!e.contains(&fx.secret_value), "secret value in Env: {e}");
        assert!(
            !e.to_ascii_lowercase().starts_with(SECRET_FILE),
            "secret variable in Env: {e}"
        );
    }
    assert!(
        !format!("{raw:?}").contains(&fx.secret_value),
        "secret value somewhere in docker inspect"
    );

    let hc = raw.host_config.clone().expect("host config");
    assert_eq!(hc.cap_drop, Some(vec!["ALL".to_owned()]));
    let secopt = hc.security_opt.clone().unwrap_or_default();
    assert!(
        secopt.iter().any(|s| s.starts_with("no-new-privileges")),
        "{secopt:?}"
    );
    assert_eq!(hc.init, Some(true));
    // The default environment's tier (medium).
    assert_eq!(hc.pids_limit, Some(512));
    assert_eq!(hc.memory, Some(2 << 30));
    assert_eq!(hc.memory_swap, Some(2 << 30));
    assert_eq!(hc.nano_cpus, Some(2_000_000_000));
    assert_eq!(hc.network_mode.as_deref(), Some("none"));
    assert_eq!(
        hc.tmpfs
            .as_ref()
            .and_then(|t| t.get("/home/user"))
            .map(String::as_str),
        Some(HOME_TMPFS_OPTS)
    );
    assert_eq!(hc.privileged, Some(false));
    assert_eq!(hc.auto_remove, Some(false));
    let log = hc.log_config.clone().expect("log config");
    assert_eq!(log.typ.as_deref(), Some("json-file"));
    assert_eq!(
        log.config
            .as_ref()
            .and_then(|c| c.get("max-size"))
            .map(String::as_str),
        Some(relay_docker::LOG_MAX_SIZE)
    );

    // Mounts as requested (HostConfig) and as the engine set them up (MountPoints).
    let requested = hc.mounts.clone().unwrap_or_default();
    assert_eq!(requested.len(), 6, "{requested:?}");
    let points = raw.mounts.clone().unwrap_or_default();
    assert_eq!(points.len(), 6, "{points:?}");
    let dirs = fx.layout(&spec);
    let generated = |name: &str| dirs.generated.join(name);
    for (target, host, rw) in [
        ("/workspace", &dirs.workspace, true),
        ("/data/agent", &dirs.agent, true),
        ("/run/secrets", &dirs.secrets, false),
        ("/etc/passwd", &generated("passwd"), false),
        ("/etc/group", &generated("group"), false),
        ("/var/run/fixuid.ran", &generated("fixuid.ran"), false),
    ] {
        let host = host.to_str().unwrap();
        let m = requested
            .iter()
            .find(|m| m.target.as_deref() == Some(target))
            .unwrap_or_else(|| panic!("no mount for {target}: {requested:?}"));
        assert_eq!(m.source.as_deref(), Some(host));
        assert_eq!(m.typ, Some(bollard::models::MountType::BIND));
        assert_eq!(m.read_only.unwrap_or(false), !rw, "{target}");
        let p = points
            .iter()
            .find(|p| p.destination.as_deref() == Some(target))
            .unwrap_or_else(|| panic!("no mount point for {target}: {points:?}"));
        assert_eq!(p.source.as_deref(), Some(host));
        assert_eq!(p.rw, Some(rw), "{target}");
    }

    within("remove", fx.sandbox.remove(&id))
        .await
        .expect("remove");
    fx.cleanup().await;
}

#[tokio::test]
async fn needs_docker_attached_run_shows_uid_files_readonly_secrets_stderr_and_exit_code() {
    let fx = Fixture::new().await;
    let script = r#"
        echo "uid=$(id -u) gid=$(id -g)"
        echo "home=$HOME"
        echo "secret-len=${#PI_RELAY_TEST_TOKEN}"
        [ "$PI_RELAY_TEST_TOKEN" = "$(cat /run/secrets/pi_relay_test_token)" ] && echo secret=exported
        echo hello > /workspace/out.txt && echo wrote-workspace
        echo agent > /data/agent/state.json && echo wrote-agent
        if touch /run/secrets/intruder; then echo secrets=writable; else echo secrets=readonly; fi
        if echo h > "$HOME/probe" && [ "$(cat "$HOME/probe")" = h ]; then echo home=writable; fi
        echo to-stderr >&2
        echo done
    "#;
    let spec = fx.spec(sh(script)).await;
    let (id, mut io) = fx.run(&spec).await;
    let got = collect_output(&mut io, None).await;
    assert!(got.ended);
    let code = wait_exit(&fx, &id).await;
    assert_eq!(code, 0, "stdout={:?} stderr={:?}", got.out(), got.err());

    let expected = format!(
        "uid=1234 gid=1234\nhome=/home/user\nsecret-len={}\nsecret=exported\n\
         wrote-workspace\nwrote-agent\nsecrets=readonly\nhome=writable\ndone\n",
        fx.secret_value.len()
    );
    assert_eq!(got.out(), expected);
    assert!(!got.out().contains(&fx.secret_value));
    // stderr is its own channel: the touch error and our line, never mixed into stdout.
    assert!(got.stderr_chunks >= 1);
    assert!(got.err().contains("to-stderr\n"), "{:?}", got.err());
    assert!(
        got.err().contains("Read-only file system"),
        "{:?}",
        got.err()
    );
    assert!(!got.out().contains("to-stderr"));

    // The files exist on the host, owned by the sandbox uid.
    let dirs = fx.layout(&spec);
    let out = dirs.workspace.join("out.txt");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello\n");
    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 1234));
    let meta = std::fs::metadata(dirs.agent.join("state.json")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 1234));
    assert!(!dirs.secrets.join("intruder").exists());

    assert_eq!(
        inspect_status(&fx, &id).await,
        (SandboxStatus::Exited, Some(0))
    );

    // A non-zero exit: wait reports the code (bollard reports it as an error internally).
    let spec3 = fx.spec(sh("echo before-exit; exit 3")).await;
    let (id3, mut io3) = fx.run(&spec3).await;
    let got3 = collect_output(&mut io3, None).await;
    assert_eq!(got3.out(), "before-exit\n");
    assert_eq!(wait_exit(&fx, &id3).await, 3);
    assert_eq!(
        inspect_status(&fx, &id3).await,
        (SandboxStatus::Exited, Some(3))
    );
    // wait on an already exited sandbox returns at once with the same code.
    assert_eq!(wait_exit(&fx, &id3).await, 3);

    for id in [&id, &id3] {
        within("remove", fx.sandbox.remove(id))
            .await
            .expect("remove");
    }
    fx.cleanup().await;
}

const ECHO_LOOP: &str = r#"while read l; do echo "got:$l"; done"#;

#[tokio::test]
async fn needs_docker_stdin_survives_dropping_and_renewing_the_attachment() {
    let fx = Fixture::new().await;
    let spec = fx.spec(sh(ECHO_LOOP)).await;
    let (id, mut io) = fx.run(&spec).await;

    send(&mut io, "one\ntwo\n").await;
    let got = collect_output(&mut io, Some("got:two\n")).await;
    assert_eq!(got.out(), "got:one\ngot:two\n");

    // Detach completely (both halves).
    drop(io);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        inspect_status(&fx, &id).await,
        (SandboxStatus::Running, None)
    );

    let mut io = within("re-attach", fx.sandbox.attach(&id))
        .await
        .expect("re-attach");
    send(&mut io, "three\n").await;
    let got = collect_output(&mut io, Some("got:three\n")).await;
    // No replay of earlier output (logs=false), just the new answer.
    assert_eq!(got.out(), "got:three\n");
    assert_eq!(
        inspect_status(&fx, &id).await,
        (SandboxStatus::Running, None)
    );

    // A second re-attach after a clean stdin shutdown of this one still works: shutting the
    // write half does not close the process's stdin either (StdinOnce=false).
    within("shutdown stdin", io.input.shutdown())
        .await
        .expect("shutdown");
    drop(io);
    let mut io = within("re-attach", fx.sandbox.attach(&id))
        .await
        .expect("re-attach");
    send(&mut io, "four\n").await;
    let got = collect_output(&mut io, Some("got:four\n")).await;
    assert_eq!(got.out(), "got:four\n");

    drop(io);
    within("remove", fx.sandbox.remove(&id))
        .await
        .expect("remove");
    fx.cleanup().await;
}

#[tokio::test]
async fn needs_docker_output_chunks_are_frames_not_lines() {
    let fx = Fixture::new().await;
    let spec = fx
        .spec(sh(r"head -c 300000 /dev/zero | tr '\0' a; echo"))
        .await;
    let (id, mut io) = fx.run(&spec).await;
    let got = collect_output(&mut io, None).await;
    assert!(got.ended);
    assert_eq!(wait_exit(&fx, &id).await, 0);

    assert_eq!(got.stdout.len(), 300_001);
    assert!(got.stdout[..300_000].iter().all(|&b| b == b'a'));
    assert_eq!(got.stdout[300_000], b'\n');
    assert!(
        got.stdout_chunks.len() > 1,
        "one line arrived in {} chunks",
        got.stdout_chunks.len()
    );
    // Docker frames are at most 32 KiB; most chunks here end in the middle of the line.
    assert!(
        got.stdout_chunks.iter().all(|&n| n <= 32 * 1024),
        "{:?}",
        got.stdout_chunks
    );
    assert!(got.stdout_chunks.len() >= 300_001 / (32 * 1024));
    assert!(got.stderr.is_empty(), "{:?}", got.err());

    within("remove", fx.sandbox.remove(&id))
        .await
        .expect("remove");
    fx.cleanup().await;
}

#[tokio::test]
async fn needs_docker_paused_sandbox_answers_only_after_unpause() {
    let fx = Fixture::new().await;
    let spec = fx.spec(sh(ECHO_LOOP)).await;
    let (id, mut io) = fx.run(&spec).await;
    send(&mut io, "ping1\n").await;
    let got = collect_output(&mut io, Some("got:ping1\n")).await;
    assert_eq!(got.out(), "got:ping1\n");

    within("pause", fx.sandbox.pause(&id)).await.expect("pause");
    assert_eq!(
        inspect_status(&fx, &id).await,
        (SandboxStatus::Paused, None)
    );
    let listed = within("list", fx.sandbox.list(&fx.instance_filter()))
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, SandboxStatus::Paused);
    // Pausing twice is a state error.
    let again = within("pause again", fx.sandbox.pause(&id)).await;
    assert!(
        matches!(again, Err(SandboxError::InvalidState(_))),
        "{again:?}"
    );

    send(&mut io, "ping2\n").await;
    match tokio::time::timeout(
        Duration::from_millis(1200),
        futures_util::StreamExt::next(&mut io.output),
    )
    .await
    {
        Err(_) => {}
        Ok(item) => panic!("a paused sandbox answered: {item:?}"),
    }

    let unpaused = Instant::now();
    within("unpause", fx.sandbox.unpause(&id))
        .await
        .expect("unpause");
    assert_eq!(
        inspect_status(&fx, &id).await,
        (SandboxStatus::Running, None)
    );
    let got = collect_output(&mut io, Some("got:ping2\n")).await;
    assert_eq!(got.out(), "got:ping2\n");
    eprintln!("answer {:?} after unpause", unpaused.elapsed());
    let again = within("unpause again", fx.sandbox.unpause(&id)).await;
    assert!(
        matches!(again, Err(SandboxError::InvalidState(_))),
        "{again:?}"
    );

    // A paused sandbox can still be stopped (the engine thaws it to deliver SIGTERM).
    within("pause", fx.sandbox.pause(&id)).await.expect("pause");
    within("stop paused", fx.sandbox.stop(&id, Duration::from_secs(10)))
        .await
        .expect("stop paused");
    let (status, code) = inspect_status(&fx, &id).await;
    assert_eq!(status, SandboxStatus::Exited);
    assert!(code.is_some_and(|c| c != 0), "{code:?}");
    // Its output stream ends with the process.
    let rest = collect_output(&mut io, None).await;
    assert!(rest.ended);

    drop(io);
    within("remove", fx.sandbox.remove(&id))
        .await
        .expect("remove");
    fx.cleanup().await;
}

#[tokio::test]
async fn needs_docker_stop_honours_the_grace_period_and_remove_is_idempotent() {
    let fx = Fixture::new().await;

    // Hardened: docker-init forwards SIGTERM to sleep, which dies at once (128 + 15).
    let spec = fx.spec(sh("sleep 300")).await;
    let (id, io) = fx.run(&spec).await;
    drop(io);
    assert_eq!(
        inspect_status(&fx, &id).await,
        (SandboxStatus::Running, None)
    );
    let t = Instant::now();
    within("stop", fx.sandbox.stop(&id, Duration::from_secs(20)))
        .await
        .expect("stop");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}");
    assert_eq!(
        inspect_status(&fx, &id).await,
        (SandboxStatus::Exited, Some(143))
    );
    // Stopping a stopped sandbox succeeds (the engine answers 304).
    within("stop again", fx.sandbox.stop(&id, Duration::from_secs(1)))
        .await
        .expect("stop again");
    // Pausing a stopped one is a state error.
    let paused = within("pause stopped", fx.sandbox.pause(&id)).await;
    assert!(
        matches!(paused, Err(SandboxError::InvalidState(_))),
        "{paused:?}"
    );

    // Not hardened, so sleep is PID 1 and ignores SIGTERM: killed after the grace period.
    let mut spec = fx.spec(sh("exec sleep 300")).await;
    spec.hardened = false;
    let (id2, io2) = fx.run(&spec).await;
    drop(io2);
    let grace = Duration::from_secs(2);
    let t = Instant::now();
    within("stop", fx.sandbox.stop(&id2, grace))
        .await
        .expect("stop");
    let took = t.elapsed();
    assert!(took >= grace, "stopped after {took:?}, before the grace");
    assert!(took < grace + Duration::from_secs(15), "stop took {took:?}");
    assert_eq!(
        inspect_status(&fx, &id2).await,
        (SandboxStatus::Exited, Some(137))
    );

    for id in [&id, &id2] {
        within("remove", fx.sandbox.remove(id))
            .await
            .expect("remove");
        let gone = within("inspect removed", fx.sandbox.inspect(id)).await;
        assert!(matches!(gone, Err(SandboxError::NotFound(_))), "{gone:?}");
        within("remove again", fx.sandbox.remove(id))
            .await
            .expect("remove is idempotent");
    }

    // Removing a running sandbox stops it first.
    let spec = fx.spec(sh("sleep 300")).await;
    let (id3, io3) = fx.run(&spec).await;
    drop(io3);
    within("remove running", fx.sandbox.remove(&id3))
        .await
        .expect("remove running");
    let gone = within("inspect removed", fx.sandbox.inspect(&id3)).await;
    assert!(matches!(gone, Err(SandboxError::NotFound(_))), "{gone:?}");

    let never = SandboxId(format!("pi-sandbox-never-existed-{}", uuid::Uuid::new_v4()));
    within("remove unknown", fx.sandbox.remove(&never))
        .await
        .expect("removing a sandbox that never existed succeeds");
    let listed = within("list", fx.sandbox.list(&fx.instance_filter()))
        .await
        .expect("list");
    assert!(listed.is_empty(), "{listed:?}");
    fx.cleanup().await;
}

#[tokio::test]
async fn needs_docker_errors_map_to_conflict_image_not_found_and_not_found() {
    let fx = Fixture::new().await;

    // Same name twice.
    let spec = fx.spec(sh("true")).await;
    let id = fx.create(&spec).await;
    let mut dup = fx.spec(sh("true")).await;
    dup.name = spec.name.clone();
    let err = within("create duplicate", fx.sandbox.create(&dup)).await;
    assert!(matches!(err, Err(SandboxError::Conflict(_))), "{err:?}");
    let listed = within("list", fx.sandbox.list(&fx.instance_filter()))
        .await
        .expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");

    // Missing images, by reference and by id.
    let missing = format!("pi-relay/no-such-image:{}", uuid::Uuid::new_v4().simple());
    let err = within("pin missing image", fx.sandbox.pin_image(&missing)).await;
    match err {
        Err(SandboxError::ImageNotFound(m)) => assert_eq!(
            m,
            format!(
                "Image '{missing}' is not present on the Docker host; build or pull it first \
                 (pi-relay never pulls images)"
            )
        ),
        other => panic!("{other:?}"),
    }
    let mut bad_image = fx.spec(sh("true")).await;
    bad_image.image = format!("sha256:{}", "0".repeat(64));
    let err = within("create with missing image", fx.sandbox.create(&bad_image)).await;
    assert!(
        matches!(err, Err(SandboxError::ImageNotFound(_))),
        "{err:?}"
    );
    // pin_image gives the id, and pinning the id again gives the same id.
    let again = within("pin by id", fx.sandbox.pin_image(&fx.image_id))
        .await
        .expect("pin by id");
    assert_eq!(again, fx.image_id);

    // Unknown sandboxes, whatever their name looks like.
    for unknown in [
        format!("{}", uuid::Uuid::new_v4().simple()),
        format!("pi-sandbox-image-{}", uuid::Uuid::new_v4()),
    ] {
        let unknown = SandboxId(unknown);
        let err = within("inspect unknown", fx.sandbox.inspect(&unknown)).await;
        assert!(matches!(err, Err(SandboxError::NotFound(_))), "{err:?}");
        let err = within("start unknown", fx.sandbox.start(&unknown)).await;
        assert!(matches!(err, Err(SandboxError::NotFound(_))), "{err:?}");
        let err = within("wait unknown", fx.sandbox.wait(&unknown)).await;
        assert!(matches!(err, Err(SandboxError::NotFound(_))), "{err:?}");
        let err = within("attach unknown", fx.sandbox.attach(&unknown)).await;
        assert!(matches!(err, Err(SandboxError::NotFound(_))), "{err:?}");
    }

    // A command that does not exist. With an entrypoint script that execs its arguments the
    // engine starts the container and the shell's exec fails (127); an image whose entrypoint
    // is the command itself makes the start fail instead. Either way it is removable.
    let spec_bad = fx.spec(vec!["/nonexistent-binary".to_owned()]).await;
    let bad = fx.create(&spec_bad).await;
    let mut io = within("attach", fx.sandbox.attach(&bad))
        .await
        .expect("attach");
    match within("start nonexistent", fx.sandbox.start(&bad)).await {
        Ok(()) => {
            eprintln!("start of a nonexistent command succeeded; the entrypoint's exec failed");
            let got = collect_output(&mut io, None).await;
            let code = wait_exit(&fx, &bad).await;
            assert_eq!(code, 127, "stderr={:?}", got.err());
            assert!(got.err().contains("nonexistent-binary"), "{:?}", got.err());
            assert_eq!(
                inspect_status(&fx, &bad).await,
                (SandboxStatus::Exited, Some(127))
            );
        }
        Err(e) => {
            eprintln!("start of a nonexistent command failed: {e}");
            assert!(
                matches!(e, SandboxError::Runtime { .. } if e.to_string().contains("nonexistent-binary")),
                "{e:?}"
            );
            let (status, code) = inspect_status(&fx, &bad).await;
            assert!(
                status == SandboxStatus::Created || code.is_some_and(|c| c != 0),
                "{status:?} {code:?}"
            );
        }
    }
    drop(io);

    for id in [&id, &bad] {
        within("remove", fx.sandbox.remove(id))
            .await
            .expect("remove");
    }
    fx.cleanup().await;
}

#[tokio::test]
async fn needs_docker_hardening_drops_capabilities_sets_no_new_privs_and_runs_init() {
    let fx = Fixture::new().await;
    let script = r#"grep -E "^(CapEff|CapBnd|NoNewPrivs):" /proc/self/status; echo "pid1=$(cat /proc/1/comm)""#;
    // (hardened, uid) cases: the real configuration, the same unhardened, and root both ways
    // (root shows that the hardening, not the uid, empties the effective set).
    let cases = [(true, 1234), (false, 1234), (true, 0), (false, 0)];
    let mut results = Vec::new();
    for (hardened, uid) in cases {
        let mut spec = fx.spec(sh(script)).await;
        spec.hardened = hardened;
        spec.user = (uid, uid);
        let (id, mut io) = fx.run(&spec).await;
        let got = collect_output(&mut io, None).await;
        assert_eq!(wait_exit(&fx, &id).await, 0, "{:?}", got.err());
        let field = |name: &str| {
            got.out()
                .lines()
                .find_map(|l| {
                    l.strip_prefix(&format!("{name}:"))
                        .map(|v| v.trim().to_owned())
                })
                .unwrap_or_else(|| panic!("no {name} in {:?}", got.out()))
        };
        let zero = |v: &str| v.chars().all(|c| c == '0');
        let (cap_eff, cap_bnd, nnp) = (field("CapEff"), field("CapBnd"), field("NoNewPrivs"));
        let pid1 = got
            .out()
            .lines()
            .find_map(|l| l.strip_prefix("pid1=").map(str::to_owned))
            .expect("pid1");
        eprintln!(
            "hardened={hardened} uid={uid}: CapEff={cap_eff} CapBnd={cap_bnd} \
             NoNewPrivs={nnp} pid1={pid1}"
        );
        if hardened {
            assert!(zero(&cap_eff), "CapEff {cap_eff}");
            assert!(zero(&cap_bnd), "CapBnd {cap_bnd}");
            assert_eq!(nnp, "1");
            assert!(pid1 == "docker-init" || pid1 == "tini", "pid1 {pid1}");
        } else {
            assert!(!zero(&cap_bnd), "CapBnd {cap_bnd}");
            assert_eq!(nnp, "0");
            assert!(pid1 != "docker-init" && pid1 != "tini", "pid1 {pid1}");
            if uid == 0 {
                assert!(!zero(&cap_eff), "CapEff {cap_eff}");
            } else {
                // An unprivileged uid has no effective capabilities either way.
                assert!(zero(&cap_eff), "CapEff {cap_eff}");
            }
        }
        results.push(id);
    }
    for id in &results {
        within("remove", fx.sandbox.remove(id))
            .await
            .expect("remove");
    }
    fx.cleanup().await;
}

#[tokio::test]
async fn needs_docker_connect_accepts_socket_forms_and_reports_unreachable_engines() {
    let storage = || relay_sandbox::host::HostStorage::new(std::env::temp_dir(), false);
    let sandbox = connect(storage()).await;
    assert_eq!(sandbox.kind(), "docker");
    within("ping", sandbox.ping()).await.expect("ping");

    // The same engine, spelled the ways DOCKER_HOST may spell a local socket.
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    let socket = match host.strip_prefix("unix://") {
        Some(path) => Some(path.to_owned()),
        None if host.trim().is_empty() => Some("/var/run/docker.sock".to_owned()),
        None => None,
    };
    if let Some(path) = socket {
        for form in [path.clone(), format!("unix://{path}")] {
            let s = within("connect", DockerSandbox::connect(Some(&form), storage()))
                .await
                .unwrap_or_else(|e| panic!("connect {form}: {e}"));
            within("ping", s.ping())
                .await
                .unwrap_or_else(|e| panic!("ping via {form}: {e}"));
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-docker.sock");
    let err = within(
        "connect to a missing socket",
        DockerSandbox::connect(Some(missing.to_str().unwrap()), storage()),
    )
    .await;
    assert!(
        matches!(err, Err(SandboxError::Unavailable { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn needs_docker_stderr_arrives_as_stderr_chunks_in_order() {
    let fx = Fixture::new().await;
    let spec = fx
        .spec(sh(
            "echo out1; sleep 0.2; echo err1 >&2; sleep 0.2; echo out2",
        ))
        .await;
    let (id, mut io) = fx.run(&spec).await;
    let mut seq = Vec::new();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while let Some(item) =
        tokio::time::timeout_at(deadline, futures_util::StreamExt::next(&mut io.output))
            .await
            .expect("output timed out")
    {
        seq.push(item.expect("output"));
    }
    assert_eq!(
        seq,
        vec![
            OutputChunk::Stdout("out1\n".into()),
            OutputChunk::Stderr("err1\n".into()),
            OutputChunk::Stdout("out2\n".into()),
        ]
    );
    assert_eq!(wait_exit(&fx, &id).await, 0);
    within("remove", fx.sandbox.remove(&id))
        .await
        .expect("remove");
    fx.cleanup().await;
}

#[tokio::test]
async fn needs_docker_exited_sandbox_can_be_started_again() {
    let fx = Fixture::new().await;
    let spec = fx.spec(sh("echo run >> /workspace/runs; exit 5")).await;
    let (id, mut io) = fx.run(&spec).await;
    collect_output(&mut io, None).await;
    assert_eq!(wait_exit(&fx, &id).await, 5);
    drop(io);
    let mut io = within("attach", fx.sandbox.attach(&id))
        .await
        .expect("attach");
    within("restart", fx.sandbox.start(&id))
        .await
        .expect("start an exited sandbox");
    collect_output(&mut io, None).await;
    assert_eq!(wait_exit(&fx, &id).await, 5);
    assert_eq!(
        std::fs::read_to_string(fx.layout(&spec).workspace.join("runs")).unwrap(),
        "run\nrun\n"
    );
    drop(io);
    within("remove", fx.sandbox.remove(&id))
        .await
        .expect("remove");
    fx.cleanup().await;
}

#[tokio::test]
async fn needs_docker_the_forwarder_carries_the_sandbox_to_the_egress_socket_and_the_agent_cannot_kill_it()
 {
    let fx = Fixture::new().await;
    assert!(
        forwarder().is_file(),
        "{} is missing: run scripts/build-forwarder.sh",
        forwarder().display()
    );
    let script = r#"
        for i in $(seq 100); do
            if exec 3<>/dev/tcp/127.0.0.1/18080; then break; fi 2>/dev/null
            sleep 0.05
        done
        echo ping >&3
        read -r line <&3
        echo "got:$line"
        for p in /proc/[0-9]*; do
            if [ "$(cat $p/comm 2>/dev/null)" = forward ]; then
                echo "forwarder-uid:$(awk '/^Uid:/ {print $2}' $p/status)"
                if kill "${p#/proc/}" 2>/dev/null; then echo kill:done; else echo kill:refused; fi
            fi
        done
        if exec 4<>/dev/tcp/1.1.1.1/443; then echo outside:reached; else echo outside:unreachable; fi 2>/dev/null
    "#;
    let mut spec = fx
        .spec(vec!["bash".to_owned(), "-c".to_owned(), script.to_owned()])
        .await;
    spec.egress = Some(relay_sandbox::Egress { port: 18080 });
    // The relay's side: a socket that answers each line with "pong".
    let socket = fx.egress_socket(&spec);
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind the egress socket");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let (stream, _) = listener.accept().await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        let line = lines.next_line().await.unwrap().unwrap();
        w.write_all(format!("pong-{line}\n").as_bytes())
            .await
            .unwrap();
    });
    let (id, mut io) = fx.run(&spec).await;
    let got = collect_output(&mut io, None).await;
    within("the relay side", server).await.unwrap();
    let out = got.out();
    assert!(out.contains("got:pong-ping\n"), "{out} {}", got.err());
    assert!(out.contains("forwarder-uid:65534\n"), "{out}");
    assert!(out.contains("kill:refused\n"), "{out}");
    assert!(out.contains("outside:unreachable\n"), "{out}");
    within("remove", fx.sandbox.remove(&id))
        .await
        .expect("remove");
    fx.cleanup().await;
}
