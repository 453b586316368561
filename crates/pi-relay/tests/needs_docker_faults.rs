//! Fault tests against a real Docker engine: the relay killed with SIGKILL mid-run, a sandbox
//! killed from outside, 50 sessions created at once, and a storm of WebSocket clients. Each
//! checks that no container or directory is left behind and no journal line is lost or
//! duplicated. Sandboxes run the fake pi (`pi-relay/bench-fake-pi`, built by
//! images/bench-fake-pi/build.sh) so runs are long, fast and deterministic. These tests fail
//! when Docker is not running; they never skip.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[allow(dead_code)]
mod process;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use helpers::*;
use process::*;
use relay_sandbox::{LABEL_INSTANCE, Sandbox, SandboxId};
use serde_json::{Value, json};

fn fake_image() -> String {
    std::env::var("PI_RELAY_FAKE_PI_IMAGE")
        .unwrap_or_else(|_| "pi-relay/bench-fake-pi:latest".into())
}

/// A relay process running the fake pi on no network.
async fn spawn_relay(root: &Path, instance: &str, extra: &[&str]) -> RelayProcess {
    let mut args = vec!["--sandbox-network", "none"];
    args.extend_from_slice(extra);
    spawn_relay_on(root, instance, &fake_image(), &args).await
}

/// Every journal payload of a session, in order, checking the sequence has no gap.
async fn journal(app: &TestApp, id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = app
            .get(&format!(
                "/api/sessions/{id}/events?afterSeq={after}&limit=5000"
            ))
            .await
            .body["data"]
            .clone();
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            return out;
        }
        for e in events {
            assert_eq!(
                e["seq"].as_u64().unwrap(),
                out.len() as u64 + 1,
                "gap in the journal"
            );
            out.push(e["payload"].clone());
        }
        after = page["lastSeq"].as_u64().unwrap();
    }
}

async fn containers_of(
    docker: &relay_docker::DockerSandbox,
    instance: &str,
) -> Vec<relay_sandbox::SandboxInfo> {
    docker
        .list(&[(LABEL_INSTANCE.to_owned(), instance.to_owned())])
        .await
        .unwrap()
}

fn session_dirs(state: &Path) -> HashSet<String> {
    let mut out = HashSet::new();
    for e in std::fs::read_dir(state.join("sessions"))
        .into_iter()
        .flatten()
        .flatten()
    {
        out.insert(e.file_name().to_string_lossy().into_owned());
    }
    for e in std::fs::read_dir(state).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(id) = n.strip_prefix("pi-secrets-") {
            out.insert(id.to_owned());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_docker_relay_killed_mid_run_loses_and_duplicates_nothing() {
    let fx = Fixture::new().await;
    let (docker, root, instance) = (&fx.docker, &fx.root, &fx.instance);
    let first = spawn_relay(root.path(), instance, &[]).await;
    let id = first.app.create_session().await;
    assert_eq!(first.app.activate(&id, "c").await.status, 200);
    let (mut ws, connected) = first.app.connect(&id, "c", 0).await;
    assert_eq!(connected["lastSeq"], 0);
    // A 3-second run: 6000 events, one every 500 µs.
    send(
        &mut ws,
        json!({"id": "run", "type": "prompt", "message": "pace 6000 500"}),
    )
    .await;
    let mut seen = Vec::new();
    while seen.len() < 500 {
        seen.push(next_json(&mut ws).await);
    }
    first.kill9();
    drop(ws);
    // pi goes on printing while no relay is there.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let second = spawn_relay(root.path(), instance, &[]).await;
    // The client resumes from what it saw: its prompt (seq 1) plus the frames it received.
    let last_seen = 1 + seen.len() as u64;
    let (mut ws, connected) = second.app.connect(&id, "c", last_seen).await;
    let mut rest = Vec::new();
    if connected["lastSeq"].as_u64().unwrap() > last_seen {
        assert_eq!(next_json(&mut ws).await["type"], "replay_start");
        let mut replay = until_type(&mut ws, "replay_end").await;
        replay.pop();
        rest.extend(replay);
    }
    if !rest.iter().any(|v| v["type"] == "agent_settled") {
        rest.extend(until_type(&mut ws, "agent_settled").await);
    }
    let mut received = seen;
    received.extend(rest);
    let journal = journal(&second.app, &id).await;
    assert_eq!(journal[0]["type"], "prompt");
    assert_eq!(
        received.len(),
        journal.len() - 1,
        "the client saw every journaled event once"
    );
    assert_eq!(
        &received[..],
        &journal[1..],
        "same events, same order, no duplicate, no hole"
    );
    let updates = journal
        .iter()
        .filter(|e| e["type"] == "message_update")
        .count();
    assert_eq!(updates, 6000, "every event pi printed is in the journal");

    // Nothing is left behind after the session is deleted.
    assert_eq!(containers_of(docker, instance).await.len(), 1);
    assert_eq!(
        second
            .app
            .delete(&format!("/api/sessions/{id}"))
            .await
            .status,
        200
    );
    assert!(containers_of(docker, instance).await.is_empty());
    assert!(session_dirs(&root.path().join("state")).is_empty());
    second.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_docker_a_sandbox_killed_from_outside_is_reported_and_activate_restarts_it() {
    let fx = Fixture::new().await;
    let (docker, root, instance) = (&fx.docker, &fx.root, &fx.instance);
    let relay = spawn_relay(root.path(), instance, &[]).await;
    let app = &relay.app;
    let id = app.create_session().await;
    assert_eq!(app.activate(&id, "c").await.status, 200);
    let (mut ws, _) = app.connect(&id, "c", 0).await;
    prompt(&mut ws, "p", "hello").await;
    let cid = SandboxId(
        app.get(&format!("/api/sessions/{id}")).await.body["data"]["sandboxProviderId"]
            .as_str()
            .unwrap()
            .to_owned(),
    );

    let killed = Instant::now();
    docker.stop(&cid, Duration::ZERO).await.unwrap();
    let status = until_type(&mut ws, "sandbox_status").await.pop().unwrap();
    let detected = killed.elapsed();
    eprintln!("dead sandbox detected by the client after {detected:?}");
    assert_eq!(status["status"], "stopped");
    assert_eq!(
        app.get(&format!("/api/sessions/{id}/sandbox")).await.body["data"]["status"],
        "stopped"
    );
    send(&mut ws, json!({"id": "x", "type": "get_state"})).await;
    assert_eq!(next_json(&mut ws).await["code"], "CHANNEL_DETACHED");

    let r = app.activate(&id, "c").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(next_json(&mut ws).await["status"], "running");
    send(&mut ws, json!({"id": "y", "type": "get_state"})).await;
    let state = until_type(&mut ws, "response").await.pop().unwrap();
    assert_eq!(state["id"], "y");
    assert_eq!(state["data"]["sessionId"], id);
    let logs = app.get(&format!("/api/sessions/{id}/logs")).await.body["data"]["lines"].to_string();
    assert!(logs.contains("exited with code"), "{logs}");
    journal(app, &id).await;
    assert_eq!(
        containers_of(docker, instance).await.len(),
        1,
        "the same container was restarted"
    );
    app.delete(&format!("/api/sessions/{id}")).await;
    assert!(containers_of(docker, instance).await.is_empty());
    relay.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_docker_fifty_sessions_created_at_once_all_become_active() {
    let fx = Fixture::new().await;
    let (docker, root, instance) = (&fx.docker, &fx.root, &fx.instance);
    let relay = spawn_relay(root.path(), instance, &[]).await;
    let app = relay.app.clone();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let id = app.create_session().await;
            let r = app.activate(&id, &format!("c{i}")).await;
            assert_eq!(r.status, 200, "{}", r.body);
            id
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap());
    }
    eprintln!("50 sessions active after {:?}", started.elapsed());
    assert_eq!(ids.len(), 50);
    let containers = containers_of(docker, instance).await;
    assert_eq!(containers.len(), 50);
    let owners: HashSet<_> = containers
        .iter()
        .map(|c| c.labels["pi-relay.session"].clone())
        .collect();
    assert_eq!(owners, ids);
    assert_eq!(session_dirs(&root.path().join("state")), ids);
    for id in &ids {
        let s = app.get(&format!("/api/sessions/{id}")).await.body["data"].clone();
        assert_eq!(s["status"], "active");
    }
    let mut tasks = Vec::new();
    for id in ids {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            app.delete(&format!("/api/sessions/{id}")).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert!(containers_of(docker, instance).await.is_empty());
    assert!(session_dirs(&root.path().join("state")).is_empty());
    relay.terminate();
}

/// `n` clients connect at once, ask pi for its state, and leave: half politely, half by just
/// vanishing.
async fn storm(app: &Arc<TestApp>, id: &str, wave: &str, n: usize) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let app = app.clone();
        let id = id.to_owned();
        let client = format!("storm-{wave}-{i}");
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = app.connect(&id, &client, 0).await;
            send(&mut ws, json!({"id": client, "type": "get_state"})).await;
            if i % 2 == 0 {
                let _ = ws.close(None).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_docker_a_storm_of_clients_leaves_no_descriptor_or_memory_behind() {
    let fx = Fixture::new().await;
    let (docker, root, instance) = (&fx.docker, &fx.root, &fx.instance);
    let relay = spawn_relay(root.path(), instance, &[]).await;
    let pid = relay.pid();
    let app = relay.app.clone();
    let id = app.create_session().await;
    assert_eq!(app.activate(&id, "c").await.status, 200);
    // A first wave warms up what grows once and then stays (reader connections of the
    // database pool, runtime threads); the baseline is taken after it.
    storm(&app, &id, "warm", 50).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (fds_before, rss_before) = (open_fds(pid), rss_kib(pid));
    for round in 0..4 {
        storm(&app, &id, &round.to_string(), 50).await;
    }
    let rss_mid = rss_kib(pid);
    for round in 4..8 {
        storm(&app, &id, &round.to_string(), 50).await;
    }
    for _ in 0..100 {
        if open_fds(pid) <= fds_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if open_fds(pid) > fds_before {
        let targets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        panic!(
            "{} descriptors open, {fds_before} before: {targets:?}",
            open_fds(pid)
        );
    }
    let (fds_after, rss_after) = (open_fds(pid), rss_kib(pid));
    eprintln!(
        "fds {fds_before} -> {fds_after}; RSS {rss_before} KiB -> {rss_mid} KiB after 200 clients -> {rss_after} KiB after 400"
    );
    assert_eq!(fds_after, fds_before);
    // Freed memory may stay with the allocator, but it must not grow with the number of
    // clients served: the second 200 cost (almost) nothing more than the first.
    assert!(
        rss_mid < rss_before + 16 * 1024,
        "RSS grew from {rss_before} to {rss_mid} KiB"
    );
    assert!(
        rss_after < rss_mid + 4 * 1024,
        "RSS kept growing: {rss_mid} -> {rss_after} KiB"
    );
    // The session still works for a new client (answers to the storm's last commands may
    // still be on their way to every client first).
    let (mut ws, _) = app.connect(&id, "after", 0).await;
    send(&mut ws, json!({"id": "a", "type": "get_state"})).await;
    loop {
        let r = until_type(&mut ws, "response").await.pop().unwrap();
        if r["id"] == "a" {
            break;
        }
        assert!(
            r["id"].as_str().is_some_and(|i| i.starts_with("storm-")),
            "{r}"
        );
    }
    app.delete(&format!("/api/sessions/{id}")).await;
    assert!(containers_of(docker, instance).await.is_empty());
    relay.terminate();
}

/// A Docker engine of the test's own (its own data, state and socket), so it can be stopped
/// and started without disturbing anything else on the machine.
struct Engine {
    dockerd: Option<Child>,
    root: PathBuf,
}

impl Engine {
    fn socket(&self) -> String {
        format!("unix://{}", self.root.join("docker.sock").display())
    }

    async fn start(root: &Path) -> Engine {
        let mut engine = Engine {
            dockerd: None,
            root: root.to_path_buf(),
        };
        engine.boot().await;
        engine
    }

    async fn boot(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("dockerd.log"))
            .unwrap();
        let child = Command::new("/usr/sbin/dockerd")
            .args(["--data-root", self.root.join("data").to_str().unwrap()])
            .args(["--exec-root", self.root.join("x").to_str().unwrap()])
            .args(["--pidfile", self.root.join("dockerd.pid").to_str().unwrap()])
            .args(["-H", &self.socket()])
            // Like every engine in tests: no bridge, no NAT, no forwarding.
            .args(["--bridge=none", "--iptables=false", "--ip-forward=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd must be installed for these tests (bash scripts/docker-up.sh)");
        self.dockerd = Some(child);
        let started = Instant::now();
        loop {
            if let Ok(d) =
                relay_docker::DockerSandbox::connect(Some(&self.socket()), scratch_storage()).await
                && d.ping().await.is_ok()
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "second dockerd did not start; see {}",
                self.root.join("dockerd.log").display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.dockerd.take() {
            #[allow(unsafe_code)]
            // SAFETY: sending a signal to our own child process.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            child.wait().unwrap();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_docker_the_engine_stopping_and_starting_again_loses_no_session() {
    // Fails (never skips) without Docker: the image comes from the machine's engine.
    engine().await;
    let root = tempfile::Builder::new()
        .prefix("prd")
        .tempdir_in("/tmp")
        .unwrap();
    let _log = LogOnPanic(root.path().to_path_buf());
    let mut engine = Engine::start(root.path()).await;
    // The second engine has no images: hand it the test image.
    let mut saved = Command::new("docker")
        .args(["save", &fake_image()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let loaded = Command::new("docker")
        .args(["-H", &engine.socket(), "load", "-q"])
        .stdin(saved.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(saved.wait().unwrap().success(), "docker save failed");
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let second = relay_docker::DockerSandbox::connect(Some(&engine.socket()), scratch_storage())
        .await
        .unwrap();

    let instance = format!("test-{}", uuid::Uuid::new_v4());
    let _cleanup = Cleanup {
        instance: instance.clone(),
        docker_host: Some(engine.socket()),
    };
    let relay = spawn_relay(root.path(), &instance, &["--docker-host", &engine.socket()]).await;
    let app = relay.app.clone();
    let a = app.create_session().await;
    let b = app.create_session().await;
    for id in [&a, &b] {
        assert_eq!(app.activate(id, "c").await.status, 200);
    }
    let (mut ws, _) = app.connect(&a, "c", 0).await;
    let run = prompt(&mut ws, "p", "hello").await;

    engine.stop();
    assert_eq!(next_json(&mut ws).await["status"], "stopped");
    assert_eq!(
        app.get("/health").await.status,
        200,
        "the relay stays up without its engine"
    );
    let r = app.activate(&a, "c").await;
    assert_eq!(r.status, 503, "{}", r.body);

    engine.boot().await;
    for id in [&a, &b] {
        let r = app.activate(id, "c").await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(next_json(&mut ws).await["status"], "running");
    send(&mut ws, json!({"id": "g", "type": "get_state"})).await;
    let state = until_type(&mut ws, "response").await.pop().unwrap();
    assert_eq!(state["data"]["sessionId"], a);
    let journal = journal(&app, &a).await;
    assert_eq!(
        &journal[1..=run.len()],
        &run[..],
        "the journal kept the run from before"
    );
    assert_eq!(containers_of(&second, &instance).await.len(), 2);
    for id in [&a, &b] {
        assert_eq!(app.delete(&format!("/api/sessions/{id}")).await.status, 200);
    }
    assert!(containers_of(&second, &instance).await.is_empty());
    assert!(session_dirs(&root.path().join("state")).is_empty());
    relay.terminate();
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_docker_an_idle_session_is_paused_and_resumes_with_nothing_lost() {
    let fx = Fixture::new().await;
    let (docker, root, instance) = (&fx.docker, &fx.root, &fx.instance);
    let relay = spawn_relay(
        root.path(),
        instance,
        &[
            "--idle-timeout-secs",
            "1",
            "--idle-grace-secs",
            "1",
            "--idle-check-interval-secs",
            "1",
        ],
    )
    .await;
    let app = relay.app.clone();
    let id = app.create_session().await;
    assert_eq!(app.activate(&id, "c").await.status, 200);
    let (mut ws, _) = app.connect(&id, "c", 0).await;
    prompt(&mut ws, "p", "hello").await;
    // While a client is connected the session stays awake, even past the timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        app.get(&format!("/api/sessions/{id}")).await.body["data"]["status"],
        "active"
    );
    drop(ws);
    eventually(|| async {
        app.get(&format!("/api/sessions/{id}")).await.body["data"]["status"] == "idle"
    })
    .await;
    let cid = SandboxId(
        app.get(&format!("/api/sessions/{id}")).await.body["data"]["sandboxProviderId"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    assert_eq!(
        docker.inspect(&cid).await.unwrap().status,
        relay_sandbox::SandboxStatus::Paused
    );

    // From here on nothing may pause it again: a one-second timeout would race the checks below
    // on a loaded machine (the setting replaces the configured timeout at the reaper's next pass).
    let r = app
        .put(
            "/api/settings",
            &json!({"key": "idle_policy", "value": {"defaultTimeoutSeconds": 3600, "graceAfterDisconnectSeconds": 0}}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let resumed = Instant::now();
    let r = app.activate(&id, "c").await;
    eprintln!("idle session resumed in {:?}", resumed.elapsed());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        docker.inspect(&cid).await.unwrap().status,
        relay_sandbox::SandboxStatus::Running
    );
    let (mut ws, _) = app.connect(&id, "c", 0).await;
    send(&mut ws, json!({"id": "g", "type": "get_state"})).await;
    let state = until_type(&mut ws, "response").await.pop().unwrap();
    // The same pi process, its conversation intact.
    assert_eq!(state["data"]["messageCount"], 5);
    journal(&app, &id).await;
    app.delete(&format!("/api/sessions/{id}")).await;
    relay.terminate();
}
