//! fixuid in real containers of the sandbox image (`PI_RELAY_TEST_IMAGE`, default
//! `pi-relay/sandbox-debian:1.6.0`, which `images/sandbox-debian/build.sh` builds with this
//! crate's binary installed setuid root). These tests FAIL (never skip) when no Docker engine
//! answers. Every container carries the label `pi-relay.test=<this test's uuid>`, uses network
//! `none`, and is removed at the end (and from a drop guard if the test panics).
//!
//! What they prove: the remap of user and group (passwd, group, process ids, supplementary
//! groups, no way back to root), the hand-over of files that stops at other mounts and never
//! follows symlinks, "run once" through the marker, `-q`, `HOME`, the environment surviving the
//! setuid start, each refusal with its message, a runtime uid that belongs to another account,
//! uid 0, and the pass-through under `no-new-privileges` when the marker is mounted.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptions, LogsOptions,
    RemoveContainerOptionsBuilder, StartContainerOptions, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;

const LABEL: &str = "pi-relay.test";
const TIMEOUT: Duration = Duration::from_secs(60);

fn image() -> String {
    std::env::var("PI_RELAY_TEST_IMAGE").unwrap_or_else(|_| "pi-relay/sandbox-debian:1.6.0".into())
}

/// How to start one container.
#[derive(Clone, Debug, Default)]
struct Spec {
    /// `--user`; `None` keeps the image's user.
    user: Option<String>,
    /// Replaces the image's entrypoint.
    entrypoint: Option<Vec<String>>,
    cmd: Vec<String>,
    env: Vec<String>,
    /// `host:container[:ro]`
    binds: Vec<String>,
    tmpfs: Vec<(String, String)>,
    /// cap-drop ALL + no-new-privileges + init, as the relay's hardened sandboxes.
    hardened: bool,
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// What a container printed and how it ended.
#[derive(Debug, Default)]
struct Output {
    code: i64,
    stdout: String,
    stderr: String,
}

/// One test's engine connection and label; removes its containers when done.
struct Fixture {
    docker: Docker,
    label: String,
    armed: bool,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("label", &self.label)
            .finish()
    }
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {TIMEOUT:?}: {what}"))
}

impl Fixture {
    async fn new() -> Fixture {
        let docker = Docker::connect_with_defaults().expect("bollard client");
        let docker = within("negotiate", docker.negotiate_version())
            .await
            .expect("a Docker engine must be running for these tests (scripts/docker-up.sh)");
        within("inspect image", docker.inspect_image(&image()))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "test image {} must be present (images/sandbox-debian/build.sh): {e}",
                    image()
                )
            });
        Fixture {
            docker,
            label: format!("fixuid-{}", uuid::Uuid::new_v4()),
            armed: true,
        }
    }

    async fn create(&self, spec: &Spec) -> String {
        let hardened = spec.hardened.then_some(());
        let body = ContainerCreateBody {
            image: Some(image()),
            user: spec.user.clone(),
            entrypoint: spec.entrypoint.clone(),
            cmd: Some(spec.cmd.clone()),
            env: Some(spec.env.clone()),
            labels: Some(HashMap::from([(LABEL.to_owned(), self.label.clone())])),
            host_config: Some(HostConfig {
                binds: Some(spec.binds.clone()),
                tmpfs: Some(spec.tmpfs.iter().cloned().collect()),
                network_mode: Some("none".into()),
                cap_drop: hardened.map(|_| vec!["ALL".into()]),
                security_opt: hardened.map(|_| vec!["no-new-privileges:true".into()]),
                init: Some(spec.hardened),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".into()),
                    config: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = format!("{}-{}", self.label, uuid::Uuid::new_v4().simple());
        within(
            "create",
            self.docker.create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body,
            ),
        )
        .await
        .expect("create container")
        .id
    }

    /// Starts a created (or exited) container and waits for it to exit.
    async fn start_and_wait(&self, id: &str) -> i64 {
        within(
            "start",
            self.docker
                .start_container(id, None::<StartContainerOptions>),
        )
        .await
        .expect("start");
        let mut wait = self.docker.wait_container(
            id,
            Some(
                WaitContainerOptionsBuilder::default()
                    .condition("not-running")
                    .build(),
            ),
        );
        match within("wait", wait.next()).await {
            Some(Ok(r)) => r.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            other => panic!("wait: {other:?}"),
        }
    }

    /// Everything the container printed so far, across its starts.
    async fn logs(&self, id: &str) -> (String, String) {
        let mut stream = self.docker.logs(
            id,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                tail: "all".into(),
                ..Default::default()
            }),
        );
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(item) = within("logs", stream.next()).await {
            match item.expect("logs") {
                bollard::container::LogOutput::StdOut { message } => {
                    out.extend_from_slice(&message)
                }
                bollard::container::LogOutput::StdErr { message } => {
                    err.extend_from_slice(&message)
                }
                _ => {}
            }
        }
        (
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    }

    async fn run(&self, spec: &Spec) -> Output {
        let id = self.create(spec).await;
        let code = self.start_and_wait(&id).await;
        let (stdout, stderr) = self.logs(&id).await;
        self.remove(&id).await;
        Output {
            code,
            stdout,
            stderr,
        }
    }

    async fn remove(&self, id: &str) {
        within(
            "remove",
            self.docker.remove_container(
                id,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            ),
        )
        .await
        .expect("remove");
    }

    async fn cleanup(mut self) {
        remove_labelled(&self.docker, &self.label).await;
        self.armed = false;
    }
}

async fn remove_labelled(docker: &Docker, label: &str) {
    let list = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("{LABEL}={label}")],
            )])),
            ..Default::default()
        }))
        .await
        .unwrap_or_default();
    for c in list {
        if let Some(id) = c.id {
            let _ = docker
                .remove_container(
                    &id,
                    Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                )
                .await;
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // The test panicked: remove its containers from a thread with its own runtime.
        let label = self.label.clone();
        relay_testkit::block_on_own_thread(TIMEOUT, async move {
            if let Ok(d) = Docker::connect_with_defaults() {
                remove_labelled(&d, &label).await;
            }
        });
    }
}

/// A host directory for a bind mount, owned like the image's user (1000:1000).
fn host_dir(parent: &Path, name: &str) -> PathBuf {
    let d = parent.join(name);
    std::fs::create_dir_all(&d).unwrap();
    own(&d, (1000, 1000));
    d
}

fn own(p: &Path, ids: (u32, u32)) {
    lchown(p, Some(ids.0), Some(ids.1))
        .unwrap_or_else(|e| panic!("lchown {} (these tests need root): {e}", p.display()));
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

fn bind(host: &Path, target: &str) -> String {
    format!("{}:{target}", host.display())
}

fn tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("fixuid-test-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// Pulls `key=value` lines out of a probe's output.
fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {out:?}"))
}

const PROBE: &str = r#"
    echo "id=$(id -u):$(id -g)"
    echo "names=$(id -un):$(id -gn)"
    echo "groups=$(id -G)"
    echo "passwd=$(grep '^user:' /etc/passwd)"
    echo "group=$(grep '^user:' /etc/group)"
    echo "uids=$(grep '^Uid:' /proc/self/status | tr -s '\t ' ' ')"
    echo "gids=$(grep '^Gid:' /proc/self/status | tr -s '\t ' ' ')"
    echo "capeff=$(grep '^CapEff:' /proc/self/status | tr -d '\t ')"
    echo "home=$HOME"
    if [ -e /var/run/fixuid.ran ]; then echo marker=yes; else echo marker=no; fi
"#;

#[tokio::test]
async fn needs_docker_fixuid_remaps_user_and_group_and_drops_root_for_good() {
    let fx = Fixture::new().await;
    let out = fx
        .run(&Spec {
            user: Some("1234:5678".into()),
            cmd: sh(PROBE),
            ..Default::default()
        })
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let o = &out.stdout;
    assert_eq!(field(o, "id"), "1234:5678");
    assert_eq!(field(o, "names"), "user:user");
    assert_eq!(field(o, "groups"), "5678");
    assert_eq!(field(o, "passwd"), "user:x:1234:5678::/home/user:/bin/bash");
    assert_eq!(field(o, "group"), "user:x:5678:");
    // Real, effective, saved and filesystem ids: nothing is left to get root back with.
    assert_eq!(field(o, "uids"), "Uid: 1234 1234 1234 1234");
    assert_eq!(field(o, "gids"), "Gid: 5678 5678 5678 5678");
    assert_eq!(field(o, "capeff"), "CapEff:0000000000000000");
    assert_eq!(field(o, "marker"), "yes");
    // `-q`: a plain remap prints nothing.
    assert_eq!(out.stderr, "");

    // Only the gid differs: the group is renumbered, the user keeps its uid.
    let out = fx
        .run(&Spec {
            user: Some("1000:4321".into()),
            cmd: sh(PROBE),
            ..Default::default()
        })
        .await;
    assert_eq!(field(&out.stdout, "names"), "user:user", "{out:?}");
    assert_eq!(
        field(&out.stdout, "passwd"),
        "user:x:1000:4321::/home/user:/bin/bash"
    );

    // The image's own ids: nothing to change.
    let out = fx
        .run(&Spec {
            user: Some("1000:1000".into()),
            cmd: sh(PROBE),
            ..Default::default()
        })
        .await;
    assert_eq!(field(&out.stdout, "id"), "1000:1000", "{out:?}");
    assert_eq!(
        field(&out.stdout, "passwd"),
        "user:x:1000:1000::/home/user:/bin/bash"
    );
    fx.cleanup().await;
}

#[tokio::test]
async fn needs_docker_fixuid_sets_the_groups_that_list_the_user() {
    let fx = Fixture::new().await;
    let tmp = tempdir();
    // A group file (bind-mounted read-write, so fixuid rewrites it in place) where `user` is
    // a member of `extra`, and `root` lists it too: only groups listing the user count.
    let group = tmp.path().join("group");
    std::fs::write(
        &group,
        "root:x:0:user\nextra:x:4242:user,other\nnope:x:4343:other\nuser:x:1000:\n",
    )
    .unwrap();
    let out = fx
        .run(&Spec {
            user: Some("1234:5678".into()),
            cmd: sh(PROBE),
            binds: vec![bind(&group, "/etc/group")],
            ..Default::default()
        })
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(field(&out.stdout, "groups"), "5678 0 4242");
    assert_eq!(
        std::fs::read_to_string(&group).unwrap(),
        "root:x:0:user\nextra:x:4242:user,other\nnope:x:4343:other\nuser:x:5678:\n"
    );
    fx.cleanup().await;
}

#[tokio::test]
async fn needs_docker_fixuid_hands_files_over_without_crossing_mounts_or_following_symlinks() {
    let fx = Fixture::new().await;
    let tmp = tempdir();
    let ws = host_dir(tmp.path(), "workspace");
    let nested = host_dir(tmp.path(), "nested");
    let agent = host_dir(tmp.path(), "agent");
    for (dir, name, ids) in [
        (&ws, "mine", (1000, 1000)),
        (&ws, "uid-only", (1000, 0)),
        (&ws, "foreign", (4000, 4000)),
        (&nested, "other-mount", (1000, 1000)),
        (&agent, "session.jsonl", (1000, 1000)),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, "x").unwrap();
        own(&p, ids);
    }
    std::fs::create_dir(ws.join("sub")).unwrap();
    own(&ws.join("sub"), (1000, 1000));
    std::fs::write(ws.join("sub/deep"), "x").unwrap();
    own(&ws.join("sub/deep"), (1000, 1000));
    // A symlink owned by the user, pointing at a file of the user outside the configured
    // paths: the link changes, the file it points to does not.
    let target = tmp.path().join("target");
    std::fs::write(&target, "x").unwrap();
    own(&target, (1000, 1000));
    symlink("/opt/target", ws.join("link")).unwrap();
    own(&ws.join("link"), (1000, 1000));

    let out = fx
        .run(&Spec {
            user: Some("1234:1234".into()),
            // The entrypoint without -q: fixuid says what it does.
            entrypoint: Some(vec!["fixuid".into(), "/entrypoint.sh".into()]),
            cmd: sh("stat -c 'tmpfs=%u:%g' /data/agent/cache; stat -c 'home=%u:%g' /home/user"),
            binds: vec![
                bind(&target, "/opt/target"),
                bind(&ws, "/workspace"),
                bind(&nested, "/workspace/nested"),
                bind(&agent, "/data/agent"),
            ],
            tmpfs: vec![("/data/agent/cache".into(), "uid=1000,gid=1000".into())],
            ..Default::default()
        })
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(owner(&ws), (1234, 1234));
    assert_eq!(owner(&ws.join("mine")), (1234, 1234));
    assert_eq!(owner(&ws.join("sub")), (1234, 1234));
    assert_eq!(owner(&ws.join("sub/deep")), (1234, 1234));
    assert_eq!(owner(&ws.join("link")), (1234, 1234));
    assert_eq!(owner(&agent.join("session.jsonl")), (1234, 1234));
    // Not both old ids, or not the old ids at all: left alone.
    assert_eq!(owner(&ws.join("uid-only")), (1000, 0));
    assert_eq!(owner(&ws.join("foreign")), (4000, 4000));
    // Another mount inside a configured path (same host filesystem, so the same device
    // number): neither changed nor entered. Same for a tmpfs (another device).
    assert_eq!(owner(&nested), (1000, 1000));
    assert_eq!(owner(&nested.join("other-mount")), (1000, 1000));
    assert_eq!(field(&out.stdout, "tmpfs"), "1000:1000");
    assert_eq!(owner(&target), (1000, 1000));
    // The image's home was handed over too.
    assert_eq!(field(&out.stdout, "home"), "1234:1234");
    for line in [
        "fixuid: updating user 'user' to UID '1234'",
        "fixuid: updating group 'user' to GID '1234'",
        "fixuid: recursively searching path /workspace",
        "fixuid: chown /workspace/mine",
        "fixuid: skipping mounted path /workspace/nested",
        "fixuid: skipping mounted path /data/agent/cache",
    ] {
        assert!(
            out.stderr.lines().any(|l| l == line),
            "no {line:?} in {}",
            out.stderr
        );
    }
    fx.cleanup().await;
}

#[tokio::test]
async fn needs_docker_fixuid_runs_once_per_container_and_q_silences_it() {
    let fx = Fixture::new().await;
    let tmp = tempdir();
    let ws = host_dir(tmp.path(), "workspace");
    let id = fx
        .create(&Spec {
            user: Some("1234:1234".into()),
            entrypoint: Some(vec!["fixuid".into(), "/entrypoint.sh".into()]),
            cmd: sh("id -un"),
            binds: vec![bind(&ws, "/workspace")],
            ..Default::default()
        })
        .await;
    assert_eq!(fx.start_and_wait(&id).await, 0);
    let (out1, err1) = fx.logs(&id).await;
    assert_eq!(out1, "user\n");
    assert!(
        err1.contains("updating user 'user' to UID '1234'"),
        "{err1}"
    );
    assert_eq!(owner(&ws), (1234, 1234));

    // A file of the image's ids appears; a restart does not hand it over again.
    let late = ws.join("late");
    std::fs::write(&late, "x").unwrap();
    own(&late, (1000, 1000));
    assert_eq!(fx.start_and_wait(&id).await, 0);
    let (out2, err2) = fx.logs(&id).await;
    assert_eq!(out2, "user\nuser\n");
    let second = &err2[err1.len()..];
    assert_eq!(
        second,
        "fixuid: already ran on this system; will not attempt to change UID/GID\n"
    );
    assert_eq!(owner(&late), (1000, 1000));
    fx.remove(&id).await;

    // Calling fixuid again inside a running container only runs the command, as the caller.
    let out = fx
        .run(&Spec {
            user: Some("1234:1234".into()),
            cmd: vec!["fixuid".into(), "-q".into(), "id".into(), "-u".into()],
            ..Default::default()
        })
        .await;
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (0, "1234\n", "")
    );
    fx.cleanup().await;
}

#[tokio::test]
async fn needs_docker_fixuid_fixes_home_only_when_it_is_the_root_directory() {
    let fx = Fixture::new().await;
    for (home, expected) in [("/", "/home/user"), ("/custom", "/custom")] {
        let out = fx
            .run(&Spec {
                user: Some("1234:1234".into()),
                env: vec![format!("HOME={home}")],
                cmd: sh("echo \"home=$HOME\""),
                ..Default::default()
            })
            .await;
        assert_eq!(field(&out.stdout, "home"), expected, "{out:?}");
    }
    // Script mode (no command): prints the export line for `eval $(fixuid)`.
    let out = fx
        .run(&Spec {
            user: Some("1234:1234".into()),
            entrypoint: Some(vec!["fixuid".into(), "-q".into()]),
            env: vec!["HOME=/".into()],
            ..Default::default()
        })
        .await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "export HOME=\"/home/user\"\n"),
        "{out:?}"
    );
    fx.cleanup().await;
}

#[tokio::test]
async fn needs_docker_fixuid_passes_the_containers_environment_through_unchanged() {
    let fx = Fixture::new().await;
    // The C library drops these from a setuid program's environment; the command must still
    // get them, exactly.
    let out = fx
        .run(&Spec {
            user: Some("1234:1234".into()),
            env: vec![
                "TMPDIR=/tmp/custom".into(),
                "LD_LIBRARY_PATH=/opt/lib".into(),
                "MULTI=a b\nc=d".into(),
            ],
            cmd: sh("printf '%s|%s|%s' \"$TMPDIR\" \"$LD_LIBRARY_PATH\" \"$MULTI\""),
            ..Default::default()
        })
        .await;
    assert_eq!(out.stdout, "/tmp/custom|/opt/lib|a b\nc=d", "{out:?}");
    fx.cleanup().await;
}

/// A one-file configuration mounted over the image's.
fn config_file(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join(format!("config-{}.yml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test]
async fn needs_docker_fixuid_refuses_with_a_clear_message_and_runs_nothing() {
    let fx = Fixture::new().await;
    let tmp = tempdir();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let cases: Vec<(&str, Spec, i64, &str)> = vec![
        (
            "no-new-privileges without the marker",
            Spec {
                hardened: true,
                ..Default::default()
            },
            1,
            "fixuid: fixuid is not running as root, and /var/run/fixuid.ran does not exist. Check that:",
        ),
        (
            "no configuration",
            Spec {
                binds: vec![bind(&empty, "/etc/fixuid")],
                ..Default::default()
            },
            1,
            "fixuid: could not find config at /etc/fixuid/config.yml or /etc/fixuid/config.yaml",
        ),
        (
            "invalid configuration",
            Spec {
                binds: vec![bind(
                    &config_file(tmp.path(), "user: user\n  nested: x\n"),
                    "/etc/fixuid/config.yml",
                )],
                ..Default::default()
            },
            1,
            "fixuid: /etc/fixuid/config.yml: line 2: nested mappings are not supported (indented \
             line that is not a list item) (fixuid reads only top-level `key: value` lines and \
             lists of strings)",
        ),
        (
            "no user key",
            Spec {
                binds: vec![bind(
                    &config_file(tmp.path(), "group: user\n"),
                    "/etc/fixuid/config.yml",
                )],
                ..Default::default()
            },
            1,
            "fixuid: cannot find key 'user' in configuration file /etc/fixuid/config.yml",
        ),
        (
            "unknown user",
            Spec {
                binds: vec![bind(
                    &config_file(tmp.path(), "user: ghost\ngroup: user\n"),
                    "/etc/fixuid/config.yml",
                )],
                ..Default::default()
            },
            1,
            "fixuid: user 'ghost' does not exist in /etc/passwd",
        ),
        (
            "unknown group",
            Spec {
                binds: vec![bind(
                    &config_file(tmp.path(), "user: user\ngroup: ghosts\n"),
                    "/etc/fixuid/config.yml",
                )],
                ..Default::default()
            },
            1,
            "fixuid: group 'ghosts' does not exist in /etc/group",
        ),
        (
            "malformed paths",
            Spec {
                binds: vec![bind(
                    &config_file(tmp.path(), "user: user\ngroup: user\npaths: /home\n"),
                    "/etc/fixuid/config.yml",
                )],
                ..Default::default()
            },
            1,
            "fixuid: key 'paths' is malformed ('/home' is a string, not a list); it should be a \
             list of absolute paths in configuration file /etc/fixuid/config.yml",
        ),
        (
            "unknown command",
            Spec {
                cmd: vec!["no-such-program".into()],
                entrypoint: Some(vec!["fixuid".into(), "-q".into()]),
                ..Default::default()
            },
            127,
            "fixuid: cannot run 'no-such-program': no such executable in $PATH",
        ),
        (
            "unknown flag",
            Spec {
                cmd: vec!["-x".into(), "true".into()],
                entrypoint: Some(vec!["fixuid".into()]),
                ..Default::default()
            },
            2,
            "fixuid: flag provided but not defined: -x",
        ),
    ];
    for (what, mut spec, code, message) in cases {
        spec.user = Some("1234:1234".into());
        if spec.cmd.is_empty() {
            spec.cmd = sh("echo the-command-ran");
        }
        let out = fx.run(&spec).await;
        assert_eq!(out.code, code, "{what}: {out:?}");
        assert!(
            out.stderr.lines().next() == Some(message),
            "{what}: expected first line {message:?}, got {:?}",
            out.stderr
        );
        assert!(!out.stdout.contains("the-command-ran"), "{what}: {out:?}");
    }
    fx.cleanup().await;
}

#[tokio::test]
async fn needs_docker_fixuid_a_runtime_uid_of_another_account_keeps_that_account() {
    let fx = Fixture::new().await;
    let tmp = tempdir();
    let ws = host_dir(tmp.path(), "workspace");
    std::fs::write(ws.join("f"), "x").unwrap();
    own(&ws.join("f"), (1000, 1000));
    // 65534 is `nobody`/`nogroup` in the image.
    let out = fx
        .run(&Spec {
            user: Some("65534:65534".into()),
            cmd: sh(PROBE),
            binds: vec![bind(&ws, "/workspace")],
            ..Default::default()
        })
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(field(&out.stdout, "names"), "nobody:nogroup");
    // `user` keeps its ids; the image's files still go to the runtime ids (as the original).
    assert_eq!(
        field(&out.stdout, "passwd"),
        "user:x:1000:1000::/home/user:/bin/bash"
    );
    assert_eq!(owner(&ws.join("f")), (65534, 65534));
    // Even with -q, this is said.
    assert!(
        out.stderr.starts_with(
            "fixuid: warning: runtime UID '65534' belongs to existing user 'nobody': 'user' keeps \
             UID '1000'"
        ),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(
            "fixuid: warning: runtime GID '65534' belongs to existing group 'nogroup': 'user' \
             keeps GID '1000'"
        ),
        "{}",
        out.stderr
    );
    fx.cleanup().await;
}

#[tokio::test]
async fn needs_docker_fixuid_uid_zero_changes_nothing_and_runs_as_root() {
    let fx = Fixture::new().await;
    let tmp = tempdir();
    let ws = host_dir(tmp.path(), "workspace");
    std::fs::write(ws.join("f"), "x").unwrap();
    own(&ws.join("f"), (1000, 1000));
    for user in ["0:0", "0:1234"] {
        let out = fx
            .run(&Spec {
                user: Some(user.into()),
                cmd: sh(PROBE),
                binds: vec![bind(&ws, "/workspace")],
                ..Default::default()
            })
            .await;
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(field(&out.stdout, "id"), user);
        assert_eq!(
            field(&out.stdout, "passwd"),
            "user:x:1000:1000::/home/user:/bin/bash"
        );
        assert_eq!(field(&out.stdout, "group"), "user:x:1000:");
        // No marker: nothing was done, so a later non-root start would still remap.
        assert_eq!(field(&out.stdout, "marker"), "no");
        assert_eq!(owner(&ws.join("f")), (1000, 1000));
        assert_eq!(owner(&ws), (1000, 1000));
        // (`id -gn` also complains about gid 1234, which has no group: that is the probe.)
        let fixuid_lines: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("fixuid:"))
            .collect();
        assert_eq!(
            fixuid_lines,
            vec![
                "fixuid: warning: runtime UID is 0 (root): users, groups and file owners are left \
                 as they are, and the command runs as root"
            ]
        );
    }
    fx.cleanup().await;
}

#[tokio::test]
async fn needs_docker_fixuid_execs_straight_through_under_no_new_privileges_with_the_marker() {
    let fx = Fixture::new().await;
    let tmp = tempdir();
    let marker = tmp.path().join("fixuid.ran");
    std::fs::write(&marker, "").unwrap();
    let passwd = tmp.path().join("passwd");
    std::fs::write(
        &passwd,
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1234:1234:user:/home/user:/bin/bash\n",
    )
    .unwrap();
    let group = tmp.path().join("group");
    std::fs::write(&group, "root:x:0:\nuser:x:1234:\n").unwrap();
    let out = fx
        .run(&Spec {
            user: Some("1234:1234".into()),
            hardened: true,
            cmd: sh(PROBE),
            binds: vec![
                format!("{}:/var/run/fixuid.ran:ro", marker.display()),
                format!("{}:/etc/passwd:ro", passwd.display()),
                format!("{}:/etc/group:ro", group.display()),
            ],
            tmpfs: vec![("/home/user".into(), "uid=1234,gid=1234,mode=0700".into())],
            ..Default::default()
        })
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(field(&out.stdout, "id"), "1234:1234");
    assert_eq!(
        field(&out.stdout, "passwd"),
        "user:x:1234:1234:user:/home/user:/bin/bash"
    );
    assert_eq!(field(&out.stdout, "uids"), "Uid: 1234 1234 1234 1234");
    assert_eq!(out.stderr, "");
    fx.cleanup().await;
}
