//! The secrets leak test, against a real Docker engine and the real pi in the `sandbox-debian`
//! image: a relay (its own process, logging at debug level) is given a secret with a unique
//! value, a session runs a real pi turn whose tool uses it, and then the value must be in pi's
//! process environment (exported by the image's entrypoint from `/run/secrets`) and nowhere
//! else: not in `docker inspect`, the container's Env, labels or command, its log, the relay's
//! log, the event journal, any API response or WebSocket frame, the SQLite files, or any file
//! under the state dir but the live session's secrets directory. Fails when Docker is not
//! running; never skips.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use relay_testkit::{MockLlm, Script, write_pi_agent_config};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn image() -> String {
    std::env::var("PI_RELAY_TEST_IMAGE").unwrap_or_else(|_| "pi-relay/sandbox-debian:1.6.0".into())
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs (Docker must be installed for needs_docker tests)")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The relay as a child process; killed if the test fails. Its containers are removed, by this
/// test's own instance label, whatever happens.
struct Relay {
    child: Child,
    instance: String,
    log: PathBuf,
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let out = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=pi-relay.instance={}", self.instance),
        ]);
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = docker(&["rm", "-f", id]);
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!(
                "---- relay log (last 20000 bytes) ----\n{}",
                tail(&log, 20_000)
            );
        }
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A client that keeps every response body and WebSocket frame it receives.
struct Client {
    base: String,
    http: reqwest::Client,
    seen: Mutex<Vec<String>>,
}

impl Client {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let res = rb.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        self.seen.lock().unwrap().push(text.clone());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    fn seen(&self) -> String {
        self.seen.lock().unwrap().join("\n")
    }
}

async fn spawn_relay(root: &Path, template: &Path) -> (Relay, Client) {
    let port = free_port();
    let instance = format!("leak-test-{}", uuid::Uuid::new_v4().simple());
    let log_path = root.join("relay.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pi-relay"))
        .arg("serve")
        .args(["--port", &port.to_string()])
        .args(["--data-dir", root.join("data").to_str().unwrap()])
        .args(["--state-dir", root.join("state").to_str().unwrap()])
        .args(["--config-dir", root.join("config").to_str().unwrap()])
        .args(["--sandbox-image", &image()])
        // The sandbox reaches the mock LLM on the host's loopback.
        .args(["--sandbox-network", "host"])
        .args(["--agent-template-dir", template.to_str().unwrap()])
        .args(["--instance-id", &instance])
        .env("PI_RELAY_LOG", "debug")
        .env_remove("RELAY_ENCRYPTION_KEY")
        .env_remove("PI_RELAY_DB_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let relay = Relay {
        child,
        instance,
        log: log_path,
    };
    let client = Client {
        base: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::new(),
        seen: Mutex::default(),
    };
    let started = Instant::now();
    while client
        .http
        .get(format!("{}/health", client.base))
        .send()
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "relay did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (relay, client)
}

/// WebSocket frames until one of type `ty` (each frame is also kept as seen).
async fn until_type(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    client: &Client,
    ty: &str,
    limit: Duration,
) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let msg = tokio::time::timeout(limit, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {ty} within {limit:?}"))
            .expect("socket ended")
            .expect("socket error");
        if let Message::Text(t) = msg {
            client.seen.lock().unwrap().push(t.to_string());
            let v: Value = serde_json::from_str(&t).unwrap();
            let done = v["type"] == ty;
            out.push(v);
            if done {
                return out;
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Every regular file under `dir`, recursively, except under `skip`.
fn files_under(dir: &Path, skip: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p == skip {
            continue;
        }
        let kind = e.file_type().unwrap();
        if kind.is_dir() {
            out.extend(files_under(&p, skip));
        } else if kind.is_file() {
            out.push(p);
        }
    }
    out
}

/// References of the local images labelled `pi-relay.build-hash`, as the docker CLI lists them.
fn labelled_images() -> BTreeSet<String> {
    let out = docker(&[
        "image",
        "ls",
        "--filter",
        "label=pi-relay.build-hash",
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ]);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|t| !t.contains("<none>"))
        .map(str::to_owned)
        .collect()
}

/// The SQLite files (`relay.db`, `-wal`, `-shm`) in `dir` with their bytes.
fn db_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("relay.db") && p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Host pids of the container's process tree: its init and every descendant.
fn process_tree(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name (field 2) may contain spaces; fields after it are fixed.
            let after = &stat[stat.rfind(')')? + 2..];
            let ppid = after.split(' ').nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

fn sha256_hex(text: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_docker_a_secret_reaches_pis_environment_and_nothing_else() {
    // Unique values: found anywhere, they can only have come from this test.
    let token = format!(
        "leak-{}-{}",
        uuid::Uuid::new_v4().simple(),
        std::process::id()
    );
    let relay_only = format!("cfonly-{}", uuid::Uuid::new_v4().simple());

    // pi's tool proves it sees the variable without printing it: only its hash is written.
    let llm = MockLlm::start(Script {
        tool_command: "printf %s \"$LEAK_TEST_TOKEN\" | sha256sum > /workspace/token.sha256".into(),
        final_text: "Stored the hash.".into(),
    })
    .await
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    let template = root.path().join("agent-template");
    write_pi_agent_config(&template, &llm.base_url()).unwrap();
    let (mut relay, client) = spawn_relay(root.path(), &template).await;

    let (status, _) = client
        .post(
            "/api/secrets",
            json!({"name": "Leak test", "envVar": "LEAK_TEST_TOKEN", "kind": "env_var", "value": token}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = client
        .post(
            "/api/secrets",
            json!({"name": "Worker", "envVar": "CF_WORKER_SECRET", "kind": "sandbox_provider", "value": relay_only}),
        )
        .await;
    assert_eq!(status, 201);

    let (status, created) = client.post("/api/sessions", json!({"mode": "chat"})).await;
    assert_eq!(status, 200, "{created}");
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    let (status, body) = client
        .post(
            &format!("/api/sessions/{id}/activate"),
            json!({"clientId": "leak"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let url = format!(
        "{}/ws/sessions/{id}?clientId=leak&lastSeq=0",
        client.base.replacen("http", "ws", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    until_type(&mut ws, &client, "connected", Duration::from_secs(10)).await;
    ws.send(Message::Text(
        json!({"id": "ready", "type": "get_state"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    until_type(&mut ws, &client, "response", Duration::from_secs(60)).await;
    ws.send(Message::Text(
        json!({"id": "p1", "type": "prompt", "message": "Store the hash of the token"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let run = until_type(&mut ws, &client, "agent_settled", Duration::from_secs(120)).await;
    let tool_end = run
        .iter()
        .find(|e| e["type"] == "tool_execution_end")
        .expect("the tool ran");
    assert_eq!(tool_end["isError"], false, "{tool_end}");

    // 1. It arrived: the tool's shell saw the value (its hash is in the workspace) ...
    let state = std::fs::canonicalize(root.path().join("state")).unwrap();
    let hash = std::fs::read_to_string(state.join(format!("sessions/{id}/workspace/token.sha256")))
        .unwrap();
    assert_eq!(hash, sha256_hex(&token));
    // ... and it is in pi's process environment, exported by the entrypoint.
    let (_, session) = client.get(&format!("/api/sessions/{id}")).await;
    let cid = session["data"]["sandboxProviderId"]
        .as_str()
        .unwrap()
        .to_owned();
    let inspect = docker(&["inspect", &cid]);
    assert!(inspect.status.success());
    let raw_inspect = String::from_utf8(inspect.stdout).unwrap();
    let info: Value = serde_json::from_str::<Value>(&raw_inspect).unwrap()[0].clone();
    let pid = info["State"]["Pid"].as_u64().unwrap() as u32;
    assert!(pid > 0, "the container runs");
    let mut pi_env = None;
    for p in process_tree(pid) {
        let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let environ = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
        assert!(
            !contains(&environ, &relay_only),
            "a sandbox_provider secret reached process {p}"
        );
        // pi sets its process title to `pi` (node rewrites argv), so it is found by argv[0].
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        if argv0 == b"pi" || argv0.ends_with(b"/pi") {
            pi_env = Some(environ);
        }
    }
    let pi_env = pi_env.expect("pi runs in the container's process tree");
    assert!(
        contains(&pi_env, &format!("\0LEAK_TEST_TOKEN={token}\0"))
            || pi_env.starts_with(format!("LEAK_TEST_TOKEN={token}\0").as_bytes()),
        "pi's environment has LEAK_TEST_TOKEN"
    );
    // The only file holding it on the host: the live session's secrets directory.
    let secrets_dir = state.join(format!("pi-secrets-{id}"));
    assert_eq!(
        std::fs::read_to_string(secrets_dir.join("leak_test_token")).unwrap(),
        token
    );
    assert!(!secrets_dir.join("cf_worker_secret").exists());

    // 2. Nowhere else.
    for secret in [&token, &relay_only] {
        assert!(!raw_inspect.contains(secret.as_str()), "docker inspect");
        for field in [
            &info["Config"]["Env"],
            &info["Config"]["Labels"],
            &info["Config"]["Cmd"],
            &info["Config"]["Entrypoint"],
            &info["Args"],
            &info["Path"],
            &info["HostConfig"],
        ] {
            assert!(!field.to_string().contains(secret.as_str()), "{field}");
        }
    }
    let logs = docker(&["logs", &cid]);
    for secret in [&token, &relay_only] {
        assert!(
            !contains(&logs.stdout, secret) && !contains(&logs.stderr, secret),
            "container log"
        );
    }
    let (_, journal) = client
        .get(&format!("/api/sessions/{id}/events?limit=10000"))
        .await;
    assert!(journal["data"]["events"].as_array().unwrap().len() > 5);
    client.get("/api/secrets").await;
    client.get("/api/sessions").await;
    client.get("/api/settings").await;
    client.get("/api/environments").await;
    // The image list is what the engine has: the default image, then every local image with
    // the build label of this repository's image scripts (read before and after, since another
    // build may tag an image meanwhile).
    let before = labelled_images();
    let (status, images) = client.get("/api/environments/images").await;
    let after = labelled_images();
    assert_eq!(status, 200, "{images}");
    assert_eq!(images["data"][0]["image"], image());
    assert_eq!(images["data"][0]["isDefault"], true);
    let listed: BTreeSet<String> = images["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["image"].as_str().unwrap().to_owned())
        .collect();
    assert!(listed.contains(&image()));
    let surely: BTreeSet<String> = before.intersection(&after).cloned().collect();
    let maybe: BTreeSet<String> = before.union(&after).cloned().collect();
    assert!(
        surely.is_subset(&listed),
        "{surely:?} not all in {listed:?}"
    );
    assert!(
        listed.iter().all(|i| maybe.contains(i) || *i == image()),
        "{listed:?} has more than {maybe:?}"
    );
    let seen = client.seen();
    assert!(
        seen.contains("tool_execution_end"),
        "the test kept what it received"
    );
    // The database files while the relay runs (with its WAL) and after it stopped (SIGTERM:
    // it flushes its journal and logs, and SQLite checkpoints the WAL into the main file).
    let data_dir = root.path().join("data");
    let live_db = db_files(&data_dir);
    assert!(
        live_db.iter().any(|(p, _)| p.ends_with("relay.db-wal")),
        "{:?}",
        live_db.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    #[allow(unsafe_code)]
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(relay.child.id() as i32, libc::SIGTERM);
    }
    assert!(relay.child.wait().unwrap().success());
    let relay_log = std::fs::read(&relay.log).unwrap();
    assert!(
        contains(&relay_log, "DEBUG"),
        "the relay logged at debug level"
    );
    let stopped_db = db_files(&data_dir);
    assert!(stopped_db.iter().any(|(p, _)| p.ends_with("relay.db")));
    let state_files = files_under(&state, &secrets_dir);
    assert!(
        state_files.iter().any(|p| p.ends_with("token.sha256")),
        "the state dir was read"
    );
    for secret in [&token, &relay_only] {
        assert!(
            !seen.contains(secret.as_str()),
            "an API response or WebSocket frame"
        );
        assert!(!contains(&relay_log, secret), "the relay's debug log");
        for (f, bytes) in live_db.iter().chain(&stopped_db) {
            assert!(!contains(bytes, secret), "{} holds a secret", f.display());
        }
        for f in &state_files {
            assert!(
                !contains(&std::fs::read(f).unwrap(), secret),
                "{} holds a secret",
                f.display()
            );
        }
    }
    assert!(llm.requests().len() >= 2);
    drop(relay);
}
