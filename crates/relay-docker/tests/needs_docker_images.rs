//! The sandbox image contract (`images/README.md`, "Requirements"), checked on
//! `sandbox-debian` in a real Docker engine through the relay's own Docker provider. The image
//! comes from `PI_RELAY_TEST_IMAGE` (default `pi-relay/sandbox-debian:1.6.0`, which
//! `images/sandbox-debian/build.sh` builds); nothing is pulled. These tests FAIL (never skip)
//! when no engine answers.
//!
//! Two setups are checked with the same probes:
//! - seed style: `--user 1234:1234` and host directories at `/workspace` and `/data/agent`,
//!   nothing else; the image's setuid fixuid does the remapping;
//! - the relay's hardened setup (README, "How it works"): cap-drop ALL,
//!   no-new-privileges, init, the session layout of `relay_session::layout` (generated
//!   passwd/group and an empty `/var/run/fixuid.ran`, bind-mounted read-only) and a tmpfs
//!   `$HOME`, built like `relay_session`'s `spec()`; fixuid execs straight through.
//!
//! Every container carries `pi-relay.instance=test-<uuid>` and is removed at the end (and by a
//! drop guard if a test panics).

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown, symlink};
use std::path::Path;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use futures_util::StreamExt;
use relay_docker::DockerSandbox;
use relay_sandbox::host::{HostLayout, HostStorage};
use relay_sandbox::{
    LABEL_INSTANCE, LABEL_SESSION, Network, OutputChunk, Sandbox, SandboxId, SessionStorage,
};

const TIMEOUT: Duration = Duration::from_secs(60);
/// The runtime ids of the sessions here (not the image's 1000).
const UID: u32 = 1234;

fn image() -> String {
    std::env::var("PI_RELAY_TEST_IMAGE").unwrap_or_else(|_| "pi-relay/sandbox-debian:1.6.0".into())
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {TIMEOUT:?}: {what}"))
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// What a sandbox printed and how it ended.
#[derive(Debug)]
struct Output {
    code: i64,
    stdout: String,
    stderr: String,
    /// `docker inspect` of the container, as text.
    inspect: String,
}

impl Output {
    fn field(&self, key: &str) -> &str {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in {self:?}"))
    }
}

/// How a sandbox is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    /// As the seed runs it: `--user` and the session's directories only (created here through
    /// the engine's API directly); the image's setuid fixuid remaps.
    Seed,
    /// The relay's own sandbox: `relay_session::sandbox_spec` created by the Docker provider,
    /// hardened, with its generated account files and marker.
    Relay,
}

/// One sandbox to run: a session, who it runs as and what.
#[derive(Clone, Debug)]
struct Run {
    setup: Setup,
    session: String,
    layout: HostLayout,
    user: (u32, u32),
    command: Vec<String>,
    /// Whether `/run/secrets` is mounted (seed style only: the relay always mounts it).
    secrets_mounted: bool,
}

/// One test's world: provider, image, own instance label, and session files kept by the
/// provider's own storage (as the relay running as root keeps them).
struct Fixture {
    sandbox: DockerSandbox,
    storage: HostStorage,
    raw: bollard::Docker,
    image_id: String,
    instance: String,
    _state: tempfile::TempDir,
    armed: bool,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("instance", &self.instance)
            .finish()
    }
}

impl Fixture {
    async fn new() -> Fixture {
        let state = tempfile::Builder::new()
            .prefix("pi-relay-images-test-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let storage = HostStorage::new(state.path().to_path_buf(), true);
        let sandbox = within(
            "connect",
            DockerSandbox::connect(
                std::env::var("DOCKER_HOST").ok().as_deref(),
                storage.clone(),
            ),
        )
        .await
        .expect("a Docker engine must be running for these tests (scripts/docker-up.sh)");
        let image_id = within("pin image", sandbox.pin_image(&image()))
            .await
            .unwrap_or_else(|e| panic!("test image {} must be present: {e}", image()));
        let raw = sandbox.engine().clone();
        Fixture {
            sandbox,
            storage,
            raw,
            image_id,
            instance: format!("test-{}", uuid::Uuid::new_v4()),
            _state: state,
            armed: true,
        }
    }

    /// A new session's host directories, prepared by the provider's storage (owned by `uid`).
    async fn session(&self, uid: u32) -> (String, HostLayout) {
        let id = uuid::Uuid::new_v4().to_string();
        within("prepare", self.storage.prepare(&id, (uid, uid)))
            .await
            .expect("prepare the session's files (these tests need root)");
        let layout = self.storage.layout(&id);
        (id, layout)
    }

    /// Session `id`'s sandbox in `setup`, run as `uid`.
    fn spec(&self, setup: Setup, id: &str, l: &HostLayout, uid: u32, command: Vec<String>) -> Run {
        Run {
            setup,
            session: id.to_owned(),
            layout: l.clone(),
            user: (uid, uid),
            command,
            secrets_mounted: true,
        }
    }

    /// Creates the sandbox of `run` (see [`Setup`]).
    async fn create(&self, run: &Run) -> SandboxId {
        match run.setup {
            Setup::Relay => {
                let cfg = relay_session::SessionConfig {
                    default_image: image(),
                    sandbox_user: run.user,
                    network: Network::None,
                    instance_id: self.instance.clone(),
                    hardened: true,
                    agent_template: None,
                    activate_timeout: TIMEOUT,
                    trust_env: Vec::new(),
                    packages: Default::default(),
                    github_api: relay_session::github::DEFAULT_GITHUB_API.into(),
                };
                let mut spec = relay_session::sandbox_spec(
                    &cfg,
                    &run.session,
                    "{}",
                    self.image_id.clone(),
                    false,
                );
                spec.command = run.command.clone();
                within("create", self.sandbox.create(&spec))
                    .await
                    .unwrap_or_else(|e| panic!("create: {e}"))
            }
            Setup::Seed => {
                let l = &run.layout;
                let bind = |host: &Path, target: &str, read_only: bool| Mount {
                    target: Some(target.into()),
                    source: Some(host.to_str().expect("utf-8 path").into()),
                    typ: Some(MountType::BIND),
                    read_only: Some(read_only),
                    ..Default::default()
                };
                let mut mounts = vec![
                    bind(&l.workspace, "/workspace", false),
                    bind(&l.agent, "/data/agent", false),
                ];
                if run.secrets_mounted {
                    mounts.push(bind(&l.secrets, "/run/secrets", true));
                }
                let body = ContainerCreateBody {
                    image: Some(self.image_id.clone()),
                    cmd: Some(run.command.clone()),
                    env: Some(vec![format!("PI_SESSION_ID={}", run.session)]),
                    user: Some(format!("{}:{}", run.user.0, run.user.1)),
                    working_dir: Some("/workspace".into()),
                    labels: Some(HashMap::from([
                        (LABEL_SESSION.to_owned(), run.session.clone()),
                        (LABEL_INSTANCE.to_owned(), self.instance.clone()),
                    ])),
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    open_stdin: Some(true),
                    host_config: Some(HostConfig {
                        mounts: Some(mounts),
                        network_mode: Some("none".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let options = bollard::query_parameters::CreateContainerOptionsBuilder::default()
                    .name(&format!("pi-sandbox-{}", run.session))
                    .build();
                let created = within("create", self.raw.create_container(Some(options), body))
                    .await
                    .unwrap_or_else(|e| panic!("create: {e}"));
                SandboxId(created.id)
            }
        }
    }

    /// Creates, attaches, starts, reads everything until the process exits, inspects, removes.
    async fn run(&self, run: &Run) -> Output {
        let id = self.create(run).await;
        let mut io = within("attach", self.sandbox.attach(&id))
            .await
            .expect("attach");
        within("start", self.sandbox.start(&id))
            .await
            .expect("start");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(chunk) = within("output", io.output.next()).await {
            match chunk.expect("output") {
                OutputChunk::Stdout(b) => out.extend_from_slice(&b),
                OutputChunk::Stderr(b) => err.extend_from_slice(&b),
            }
        }
        let code = within("wait", self.sandbox.wait(&id)).await.expect("wait");
        let inspect = within(
            "inspect",
            self.raw.inspect_container(
                id.as_str(),
                None::<bollard::query_parameters::InspectContainerOptions>,
            ),
        )
        .await
        .expect("inspect");
        within("remove", self.sandbox.remove(&id))
            .await
            .expect("remove");
        Output {
            code,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
            inspect: format!("{inspect:?}"),
        }
    }

    async fn cleanup(mut self) {
        remove_instance(&self.sandbox, &self.instance).await;
        let left = self
            .sandbox
            .list(&[(LABEL_INSTANCE.to_owned(), self.instance.clone())])
            .await
            .expect("list");
        assert!(left.is_empty(), "containers left behind: {left:?}");
        self.armed = false;
    }
}

async fn remove_instance(sandbox: &DockerSandbox, instance: &str) {
    let filter = [(LABEL_INSTANCE.to_owned(), instance.to_owned())];
    for c in sandbox.list(&filter).await.unwrap_or_default() {
        let _ = sandbox.remove(&c.id).await;
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let instance = self.instance.clone();
        relay_testkit::block_on_own_thread(TIMEOUT, async move {
            let storage = HostStorage::new(std::env::temp_dir(), false);
            if let Ok(s) = DockerSandbox::connect(None, storage).await {
                remove_instance(&s, &instance).await;
            }
        });
    }
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

/// Writes a secret the way the relay stores it: one file, private to the sandbox uid.
fn secret(dir: &Path, name: &str, value: &[u8], uid: u32) {
    let p = dir.join(name);
    std::fs::write(&p, value).unwrap();
    chown(&p, Some(uid), Some(uid)).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// What every setup must give: who the process is, a writable home, files in /workspace
/// owned by the runtime ids on the host, pi at /usr/local/bin/pi.
const CONTRACT_PROBE: &str = r#"
    echo "whoami=$(whoami)"
    echo "id=$(id -u):$(id -g)"
    echo "home=$HOME"
    if echo ok > "$HOME/.probe" && [ "$(cat "$HOME/.probe")" = ok ]; then echo home_writable=yes; else echo home_writable=no; fi
    echo made > /workspace/made-in-sandbox && echo workspace=written
    echo made > /data/agent/made-in-sandbox && echo agent=written
    echo "pi=$(command -v pi)"
    echo "pi_version=$(/usr/local/bin/pi --version 2>&1)"
    echo "git_user=$(git config user.name)"
    echo "capeff=$(grep '^CapEff:' /proc/self/status | tr -d '\t ')"
    echo "nnp=$(grep '^NoNewPrivs:' /proc/self/status | tr -d '\t ')"
    echo "pid1=$(cat /proc/1/comm)"
"#;

#[tokio::test]
async fn needs_docker_images_image_config_has_pi_fixuid_user_1000_and_the_seed_entrypoint() {
    let fx = Fixture::new().await;
    let img = within("inspect image", fx.raw.inspect_image(&fx.image_id))
        .await
        .expect("inspect image");
    let config = img.config.expect("image config");
    assert_eq!(
        config.entrypoint,
        Some(vec![
            "fixuid".to_owned(),
            "-q".to_owned(),
            "/entrypoint.sh".to_owned()
        ])
    );
    assert_eq!(
        config.cmd,
        Some(vec!["pi".to_owned(), "--mode".to_owned(), "rpc".to_owned()])
    );
    assert_eq!(config.user.as_deref(), Some("1000:1000"));
    assert_eq!(config.working_dir.as_deref(), Some("/workspace"));
    let env = config.env.unwrap_or_default();
    for e in ["PI_CODING_AGENT_DIR=/data/agent", "HOME=/home/user"] {
        assert!(env.iter().any(|v| v == e), "{e} not in {env:?}");
    }

    // Inside, as root (fixuid then changes nothing, so the image is seen as built): the files
    // the seed requires, and no marker (fixuid must remap on a first start).
    let (id, l) = fx.session(UID).await;
    let script = r#"
        echo "passwd=$(grep '^user:' /etc/passwd)"
        echo "group=$(grep '^user:' /etc/group)"
        echo "fixuid=$(stat -c '%U:%G:%a' /usr/local/bin/fixuid)"
        echo "entrypoint=$(stat -c '%U:%a' /entrypoint.sh)"
        echo "pi_link=$(readlink -f /usr/local/bin/pi)"
        if [ -e /var/run/fixuid.ran ]; then echo marker=yes; else echo marker=no; fi
        printf 'config<<'; cat /etc/fixuid/config.yml; echo '>>'
    "#;
    let mut spec = fx.spec(Setup::Seed, &id, &l, 0, sh(script));
    spec.user = (0, 0);
    let out = fx.run(&spec).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.field("passwd"),
        "user:x:1000:1000::/home/user:/bin/bash"
    );
    assert_eq!(out.field("group"), "user:x:1000:");
    assert_eq!(out.field("fixuid"), "root:root:4755");
    assert_eq!(out.field("entrypoint"), "root:755");
    assert!(
        out.field("pi_link")
            .ends_with("/pi-coding-agent/dist/bundle/cli.js"),
        "{out:?}"
    );
    assert_eq!(out.field("marker"), "no");
    assert!(
        out.stdout.contains(
            "config<<user: user\ngroup: user\npaths:\n  - /home/user\n  - /workspace\n  - /data/agent\n>>"
        ),
        "{out:?}"
    );

    // As the image's own user: `user`, uid 1000, not root, and pi runs.
    let mut spec = fx.spec(Setup::Seed, &id, &l, 1000, sh(CONTRACT_PROBE));
    spec.user = (1000, 1000);
    let out = fx.run(&spec).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.field("whoami"), "user");
    assert_eq!(out.field("id"), "1000:1000");
    assert_eq!(out.field("pi"), "/usr/local/bin/pi");
    assert!(
        out.field("pi_version")
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit()),
        "{out:?}"
    );
    fx.cleanup().await;
}

/// The seed's own verification, extended: `--user 1234:1234` with host directories.
async fn check_contract(fx: &Fixture, setup: Setup) {
    let (id, l) = fx.session(UID).await;
    // A file from an earlier life of the session, owned by the image's uid (seed style only:
    // the relay creates everything as the sandbox uid).
    let old = l.workspace.join("from-image-uid");
    std::fs::write(&old, "x").unwrap();
    chown(&old, Some(1000), Some(1000)).unwrap();
    let out = fx
        .run(&fx.spec(setup, &id, &l, UID, sh(CONTRACT_PROBE)))
        .await;
    assert_eq!(out.code, 0, "{setup:?}: {out:?}");
    assert_eq!(out.field("whoami"), "user", "{setup:?}");
    assert_eq!(out.field("id"), "1234:1234", "{setup:?}");
    assert_eq!(out.field("home"), "/home/user", "{setup:?}");
    assert_eq!(out.field("home_writable"), "yes", "{setup:?}: {out:?}");
    assert_eq!(out.field("workspace"), "written");
    assert_eq!(out.field("agent"), "written");
    assert_eq!(out.field("pi"), "/usr/local/bin/pi");
    assert!(
        out.field("pi_version")
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit()),
        "{setup:?}: {out:?}"
    );
    assert_eq!(out.field("git_user"), "pi-sandbox");
    assert_eq!(out.field("capeff"), "CapEff:0000000000000000");
    for made in [
        l.workspace.join("made-in-sandbox"),
        l.agent.join("made-in-sandbox"),
    ] {
        assert_eq!(owner(&made), (UID, UID), "{setup:?}: {}", made.display());
    }
    // Quiet: nothing from fixuid or the entrypoint.
    assert_eq!(out.stderr, "", "{setup:?}");
    match setup {
        Setup::Seed => {
            // fixuid handed the image uid's file over.
            assert_eq!(owner(&old), (UID, UID));
            assert_eq!(out.field("nnp"), "NoNewPrivs:0");
        }
        Setup::Relay => {
            // fixuid did nothing (the marker): the file keeps its owner, the generated passwd
            // is untouched, and the hardening holds.
            assert_eq!(owner(&old), (1000, 1000));
            assert_eq!(
                std::fs::read_to_string(l.generated.join("passwd")).unwrap(),
                relay_docker::passwd(UID, UID)
            );
            assert_eq!(out.field("nnp"), "NoNewPrivs:1");
            assert_eq!(out.field("pid1"), "docker-init");
            let i = &out.inspect;
            assert!(i.contains("cap_drop: Some([\"ALL\"])"), "{i}");
            assert!(i.contains("no-new-privileges"), "{i}");
            assert!(i.contains("init: Some(true)"), "{i}");
        }
    }
}

#[tokio::test]
async fn needs_docker_images_seed_style_user_1234_is_user_with_a_writable_home_and_host_owned_files()
 {
    let fx = Fixture::new().await;
    check_contract(&fx, Setup::Seed).await;
    fx.cleanup().await;
}

#[tokio::test]
async fn needs_docker_images_the_relays_hardened_setup_passes_the_same_checks() {
    let fx = Fixture::new().await;
    check_contract(&fx, Setup::Relay).await;
    fx.cleanup().await;
}

/// Secret file name → content; the expected value drops one trailing newline.
fn tricky_secrets(token: &str) -> Vec<(String, Vec<u8>)> {
    let t = token;
    [
        ("anthropic_api_key", format!("sk-ant-{t}\n")),
        ("no_newline", format!("{t} no trailing newline")),
        ("two_newlines", format!("{t}\n\n")),
        ("multi_line", format!("line1 {t}\nline2\nline3\n")),
        ("crlf", format!("{t}\r\n")),
        ("spaces", format!("  lead {t} trail  \t")),
        ("quotes", format!("it's \"{t}\" `x`")),
        ("dollars", format!("$HOME $(id) ${{PATH}} $$ \\$x {t}")),
        ("backslashes", format!("a\\nb\\\\c {t}\\")),
        ("globs", format!("* ? [a-z] ~ {t}")),
        ("printf_like", format!("%s %d %% \\c {t}")),
        ("equals", format!("k={t}=v")),
        ("unicode", format!("héllo wörld ✓ {t}")),
        ("Mixed_Case", format!("m{t}")),
        ("long_value", format!("{t}{}", "x".repeat(60_000))),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v.into_bytes()))
    .collect()
}

fn expected_value(content: &[u8]) -> Vec<u8> {
    content.strip_suffix(b"\n").unwrap_or(content).to_vec()
}

fn sha256_hex(data: &[u8]) -> String {
    // The container computes sha256sum; the host computes the same with the coreutils binary,
    // so the test needs no hashing crate.
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// A probe that prints every variable name (never a value) and the sha256 of the named ones.
fn secrets_probe(names: &[String]) -> String {
    let mut s = String::from("awk 'BEGIN { for (k in ENVIRON) print \"name=\" k }' | sort\n");
    for n in names {
        s.push_str(&format!(
            "printf '%s' \"${n}\" | sha256sum | cut -c1-64 | sed 's/^/{n}=/'\n"
        ));
    }
    s
}

fn names_in(out: &Output) -> BTreeSet<String> {
    out.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("name="))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn needs_docker_images_secret_files_become_exactly_the_expected_variables_and_never_leak() {
    let fx = Fixture::new().await;
    let token = format!("LEAK{}", uuid::Uuid::new_v4().simple());
    let secrets = tricky_secrets(&token);
    let names: Vec<String> = secrets.iter().map(|(n, _)| n.to_uppercase()).collect();
    for setup in [Setup::Seed, Setup::Relay] {
        // Without secrets: the variables every sandbox has.
        let (id, l) = fx.session(UID).await;
        let base = fx
            .run(&fx.spec(setup, &id, &l, UID, sh(&secrets_probe(&[]))))
            .await;
        assert_eq!(base.code, 0, "{base:?}");
        let base_names = names_in(&base);

        let (id, l) = fx.session(UID).await;
        for (name, content) in &secrets {
            secret(&l.secrets, name, content, UID);
        }
        let out = fx
            .run(&fx.spec(setup, &id, &l, UID, sh(&secrets_probe(&names))))
            .await;
        assert_eq!(out.code, 0, "{setup:?}: {}", out.stderr);
        let added: BTreeSet<String> = names_in(&out).difference(&base_names).cloned().collect();
        assert_eq!(
            added,
            names.iter().cloned().collect::<BTreeSet<_>>(),
            "{setup:?}"
        );
        for (name, content) in &secrets {
            let upper = name.to_uppercase();
            assert_eq!(
                out.field(&upper),
                sha256_hex(&expected_value(content)),
                "{setup:?}: value of {upper}"
            );
        }
        // Nothing of any value anywhere: stdout, stderr, the container's configuration.
        for (what, text) in [
            ("stdout", &out.stdout),
            ("stderr", &out.stderr),
            ("docker inspect", &out.inspect),
        ] {
            assert!(!text.contains(&token), "{setup:?}: a secret in {what}");
        }
        assert_eq!(out.stderr, "", "{setup:?}");
    }
    fx.cleanup().await;
}

#[tokio::test]
async fn needs_docker_images_bad_secret_inputs_have_defined_outcomes_and_pi_still_starts() {
    let fx = Fixture::new().await;
    let probe = "awk 'BEGIN { for (k in ENVIRON) print \"name=\" k }' | sort; \
                 echo \"good=$GOOD\"; echo \"empty=[$EMPTY]\"; echo \"k8s=$K8S_TOKEN\"; \
                 echo \"pi_version=$(pi --version 2>&1)\"";
    let token = format!("LEAK{}", uuid::Uuid::new_v4().simple());
    let (id, l) = fx.session(UID).await;
    let s = &l.secrets;
    secret(s, "good", b"fine\n", UID);
    secret(s, "empty", b"", UID);
    secret(s, "bad-name", token.as_bytes(), UID);
    secret(s, "path", token.as_bytes(), UID);
    secret(s, "huge", &[b'h'; 70_000], UID);
    secret(s, "nul_byte", format!("{token}\0after").as_bytes(), UID);
    std::fs::create_dir(s.join("subdir")).unwrap();
    chown(s.join("subdir"), Some(UID), Some(UID)).unwrap();
    secret(&s.join("subdir"), "nested", token.as_bytes(), UID);
    // A symlink to a file outside the secrets (inside the container), and Kubernetes' layout.
    symlink("/etc/hostname", s.join("escape")).unwrap();
    std::fs::create_dir(s.join("..2026_11_26")).unwrap();
    chown(s.join("..2026_11_26"), Some(UID), Some(UID)).unwrap();
    secret(&s.join("..2026_11_26"), "k8s_token", b"from-k8s", UID);
    symlink("..2026_11_26", s.join("..data")).unwrap();
    symlink("..data/k8s_token", s.join("k8s_token")).unwrap();
    // Not readable by the sandbox user.
    secret(s, "locked", token.as_bytes(), 0);

    for setup in [Setup::Seed, Setup::Relay] {
        let out = fx.run(&fx.spec(setup, &id, &l, UID, sh(probe))).await;
        assert_eq!(out.code, 0, "{setup:?}: {out:?}");
        assert_eq!(out.field("good"), "fine");
        assert_eq!(out.field("empty"), "[]");
        assert_eq!(out.field("k8s"), "from-k8s");
        assert!(
            out.field("pi_version").starts_with(char::is_numeric),
            "{out:?}"
        );
        let names = names_in(&out);
        for absent in ["HUGE", "NUL_BYTE", "SUBDIR", "ESCAPE", "LOCKED", "NESTED"] {
            assert!(!names.contains(absent), "{setup:?}: {absent} is set");
        }
        assert!(!out.stderr.contains(&token), "{setup:?}: a value in stderr");
        assert!(!out.stdout.contains(&token), "{setup:?}: a value in stdout");
        let expected = [
            "entrypoint: skipping secret file 'bad-name': not a valid variable name",
            "entrypoint: secret file 'empty' is empty: EMPTY is set to an empty value",
            "entrypoint: skipping secret file 'escape': a symlink that does not lead to a file inside /run/secrets",
            "entrypoint: skipping secret file 'huge': 70000 bytes, more than the 65536 a secret may have",
            "entrypoint: skipping secret file 'locked': cannot read it",
            "entrypoint: skipping secret file 'nul_byte': it holds a NUL byte, which an environment variable cannot",
            "entrypoint: skipping secret file 'path': PATH is reserved for the sandbox",
            "entrypoint: skipping secret file 'subdir': a directory, not a file",
        ];
        let got: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(got, expected, "{setup:?}");
    }
    fx.cleanup().await;
}

#[tokio::test]
async fn needs_docker_images_a_missing_empty_or_unreadable_secrets_directory() {
    let fx = Fixture::new().await;
    let probe = "echo \"pi_version=$(pi --version 2>&1)\"";
    // Missing: no mount at /run/secrets at all (the relay always mounts it; an image run
    // seed style may not have one). Nothing loaded, nothing said.
    let (id, l) = fx.session(UID).await;
    let mut spec = fx.spec(Setup::Seed, &id, &l, UID, sh(probe));
    spec.secrets_mounted = false;
    let out = fx.run(&spec).await;
    assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{out:?}");
    for setup in [Setup::Seed, Setup::Relay] {
        // Empty (what the relay mounts for a session without secrets): the same.
        let (id, l) = fx.session(UID).await;
        let out = fx.run(&fx.spec(setup, &id, &l, UID, sh(probe))).await;
        assert_eq!(
            (out.code, out.stderr.as_str()),
            (0, ""),
            "{setup:?}: {out:?}"
        );
        // Unreadable by the sandbox user (owned by root, 0700): one warning, pi still starts.
        let (id, l) = fx.session(UID).await;
        secret(&l.secrets, "token", b"v", UID);
        chown(&l.secrets, Some(0), Some(0)).unwrap();
        let out = fx.run(&fx.spec(setup, &id, &l, UID, sh(probe))).await;
        assert_eq!(out.code, 0, "{setup:?}: {out:?}");
        assert!(out.field("pi_version").starts_with(char::is_numeric));
        assert_eq!(
            out.stderr, "entrypoint: cannot read /run/secrets as uid 1234; no secrets loaded\n",
            "{setup:?}"
        );
    }
    fx.cleanup().await;
}

#[tokio::test]
async fn needs_docker_images_a_runtime_uid_that_belongs_to_another_account() {
    let fx = Fixture::new().await;
    // 65534 is `nobody` in the image.
    let probe = "echo \"whoami=$(whoami)\"; echo \"home=$HOME\"; \
                 echo \"passwd=$(grep -E '^(user|nobody):' /etc/passwd | tr '\\n' ' ')\"";
    // Seed style: fixuid keeps `nobody` (as the original does) and says so, even with -q.
    let (id, l) = fx.session(65534).await;
    let out = fx
        .run(&fx.spec(Setup::Seed, &id, &l, 65534, sh(probe)))
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.field("whoami"), "nobody");
    assert!(
        out.stderr
            .starts_with("fixuid: warning: runtime UID '65534' belongs to existing user 'nobody'"),
        "{out:?}"
    );
    // The relay's setup: its generated passwd lists `user` before `nobody`, so the uid is
    // `user` to every tool, and fixuid (marker) says nothing.
    let (id, l) = fx.session(65534).await;
    let out = fx
        .run(&fx.spec(Setup::Relay, &id, &l, 65534, sh(probe)))
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.field("whoami"), "user");
    assert_eq!(out.field("home"), "/home/user");
    assert_eq!(out.stderr, "");
    fx.cleanup().await;
}

#[tokio::test]
async fn needs_docker_images_uid_zero_runs_as_root_and_changes_nothing() {
    let fx = Fixture::new().await;
    // The relay refuses uid 0 (`--sandbox-uid 0` is a configuration error); the image's own
    // behaviour for `docker run --user 0` is defined all the same.
    let (id, l) = fx.session(UID).await;
    let old = l.workspace.join("from-image-uid");
    std::fs::write(&old, "x").unwrap();
    chown(&old, Some(1000), Some(1000)).unwrap();
    let probe = "echo \"id=$(id -u)\"; echo \"whoami=$(whoami)\"; \
                 echo \"passwd=$(grep '^user:' /etc/passwd)\"";
    let mut spec = fx.spec(Setup::Seed, &id, &l, 0, sh(probe));
    spec.user = (0, 0);
    let out = fx.run(&spec).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.field("id"), "0");
    assert_eq!(out.field("whoami"), "root");
    assert_eq!(
        out.field("passwd"),
        "user:x:1000:1000::/home/user:/bin/bash"
    );
    assert_eq!(owner(&old), (1000, 1000));
    assert_eq!(
        out.stderr,
        "fixuid: warning: runtime UID is 0 (root): users, groups and file owners are left as \
         they are, and the command runs as root\n"
    );
    fx.cleanup().await;
}
