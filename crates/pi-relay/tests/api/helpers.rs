//! `spawn_app()` and typed helpers for talking to a test relay.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use pi_relay::app::Relay;
use pi_relay::config::{Cli, Command, ServeArgs};
use relay_sandbox::fake::FakeSandbox;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) struct TestApp {
    pub relay: Option<Relay>,
    pub base: String,
    pub ws_base: String,
    pub http: reqwest::Client,
    pub fake: FakeSandbox,
    pub token: Option<String>,
    pub dir: tempfile::TempDir,
}

pub(crate) fn args(dir: &std::path::Path, extra: &[&str]) -> ServeArgs {
    let data = dir.join("data");
    let state = dir.join("state");
    let config = dir.join("config");
    let mut argv: Vec<String> = vec![
        "pi-relay".into(),
        "serve".into(),
        "--port".into(),
        "0".into(),
    ];
    for (flag, path) in [
        ("--data-dir", &data),
        ("--state-dir", &state),
        ("--config-dir", &config),
    ] {
        argv.push(flag.into());
        argv.push(path.to_string_lossy().into_owned());
    }
    if !extra.contains(&"--sandbox-image") {
        argv.extend(["--sandbox-image".into(), "test-image:latest".into()]);
    }
    argv.extend(extra.iter().map(|s| s.to_string()));
    match Cli::parse_from(argv).command {
        Command::Serve(a) => *a,
        _ => unreachable!(),
    }
}

pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

pub(crate) async fn spawn_app_with(extra: &[&str]) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let args = args(dir.path(), extra);
    let fake = fake(&dir);
    start(dir, args, fake).await
}

/// Where a relay started with [`args`] in `dir` keeps session files.
pub(crate) fn storage(dir: &tempfile::TempDir) -> relay_sandbox::host::HostStorage {
    let resolved = args(dir.path(), &[]).resolve().unwrap();
    pi_relay::app::host_storage(&resolved).unwrap()
}

/// The machine's Docker engine, keeping session files in `storage`. Fails (never skips) when no
/// engine answers. (For the Docker test binaries, which share this file.)
#[allow(dead_code)]
pub(crate) async fn docker(
    storage: relay_sandbox::host::HostStorage,
) -> relay_docker::DockerSandbox {
    relay_docker::DockerSandbox::connect(std::env::var("DOCKER_HOST").ok().as_deref(), storage)
        .await
        .expect("Docker engine must be running for these tests (bash scripts/docker-up.sh)")
        .with_forwarder(forwarder())
}

/// The sandbox forwarder, where `pi-relay serve` looks for it: beside the relay's binary
/// (`bash scripts/build-forwarder.sh` puts it there; scripts/test.sh runs that).
#[allow(dead_code)]
pub(crate) fn forwarder() -> std::path::PathBuf {
    let path =
        std::path::Path::new(env!("CARGO_BIN_EXE_pi-relay")).with_file_name("pi-relay-forward");
    assert!(
        path.is_file(),
        "{} is missing: run `bash scripts/build-forwarder.sh` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The engine, for tests that only look at or remove its sandboxes (no session files).
#[allow(dead_code)]
pub(crate) async fn engine() -> relay_docker::DockerSandbox {
    docker(relay_sandbox::host::HostStorage::new(
        std::env::temp_dir(),
        false,
    ))
    .await
}

/// A fake provider keeping session files where a relay started with [`args`] in `dir` keeps them.
pub(crate) fn fake(dir: &tempfile::TempDir) -> FakeSandbox {
    FakeSandbox::new(storage(dir))
}

pub(crate) async fn start(dir: tempfile::TempDir, args: ServeArgs, fake: FakeSandbox) -> TestApp {
    let sandbox = Arc::new(fake.clone());
    start_with(dir, args, sandbox, fake).await
}

/// Starts a relay on a given provider (`fake` is only used by tests that drive the fake).
pub(crate) async fn start_with(
    dir: tempfile::TempDir,
    args: ServeArgs,
    sandbox: Arc<dyn relay_sandbox::Sandbox>,
    fake: FakeSandbox,
) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("TEST_LOG").unwrap_or_default())
            .with_test_writer()
            .try_init();
    }
    let mut args = args;
    args.read_token_file().unwrap();
    let resolved = args.resolve().unwrap();
    let relay = Relay::start(&args, &resolved, sandbox).await.unwrap();
    let addr = relay.addr;
    TestApp {
        relay: Some(relay),
        base: format!("http://{addr}"),
        ws_base: format!("ws://{addr}"),
        http: reqwest::Client::new(),
        fake,
        token: args
            .auth_token
            .as_ref()
            .map(|t| secrecy::ExposeSecret::expose_secret(t).to_owned()),
        dir,
    }
}

pub(crate) struct Reply {
    pub status: u16,
    pub body: Value,
}

impl TestApp {
    pub(crate) fn state_dir(&self) -> std::path::PathBuf {
        std::fs::canonicalize(self.dir.path().join("state")).unwrap()
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Reply {
        let res = self
            .auth(self.http.get(format!("{}{path}", self.base)))
            .send()
            .await
            .unwrap();
        reply(res).await
    }

    pub(crate) async fn post(&self, path: &str, body: &str) -> Reply {
        let res = self
            .auth(self.http.post(format!("{}{path}", self.base)))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        reply(res).await
    }

    pub(crate) async fn put(&self, path: &str, body: &str) -> Reply {
        let res = self
            .auth(self.http.put(format!("{}{path}", self.base)))
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        reply(res).await
    }

    pub(crate) async fn delete(&self, path: &str) -> Reply {
        let res = self
            .auth(self.http.delete(format!("{}{path}", self.base)))
            .send()
            .await
            .unwrap();
        reply(res).await
    }

    /// Creates a chat session and returns its id.
    pub(crate) async fn create_session(&self) -> String {
        let r = self.post("/api/sessions", r#"{"mode":"chat"}"#).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["data"]["id"].as_str().unwrap().to_owned()
    }

    /// Creates and activates a chat session; returns its id.
    pub(crate) async fn active_session(&self) -> String {
        let id = self.create_session().await;
        let r = self.activate(&id, "c1").await;
        assert_eq!(r.status, 200, "{}", r.body);
        id
    }

    pub(crate) async fn activate(&self, id: &str, client: &str) -> Reply {
        self.post(
            &format!("/api/sessions/{id}/activate"),
            &json!({"clientId": client}).to_string(),
        )
        .await
    }

    pub(crate) async fn ws(&self, id: &str, query: &str) -> Ws {
        let url = format!("{}/ws/sessions/{id}?{query}", self.ws_base);
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        ws
    }

    /// Connects and returns the socket after its `connected` message.
    pub(crate) async fn connect(&self, id: &str, client: &str, last_seq: u64) -> (Ws, Value) {
        let mut ws = self
            .ws(id, &format!("clientId={client}&lastSeq={last_seq}"))
            .await;
        let first = next_json(&mut ws).await;
        assert_eq!(first["type"], "connected", "{first}");
        (ws, first)
    }

    /// Waits (up to `limit`) until the session's journal holds an event of type `ty` after
    /// `after_seq` (at most 1,000 events past it are looked at).
    pub(crate) async fn until_journaled(
        &self,
        id: &str,
        after_seq: u64,
        ty: &str,
        limit: Duration,
    ) {
        let page = format!("/api/sessions/{id}/events?afterSeq={after_seq}&limit=1000");
        eventually_within(limit, || async {
            self.get(&page).await.body["data"]["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["type"] == ty)
        })
        .await
    }

    pub(crate) async fn shutdown(mut self) {
        if let Some(r) = self.relay.take() {
            r.shutdown().await;
        }
    }
}

async fn reply(res: reqwest::Response) -> Reply {
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply { status, body }
}

/// How long a test waits for what should come at once.
pub(crate) const PROMPTLY: Duration = Duration::from_secs(10);

/// The next text frame as JSON (fails after 10 s).
pub(crate) async fn next_json(ws: &mut Ws) -> Value {
    next_json_within(ws, PROMPTLY).await
}

/// The next text frame as JSON (fails after `limit`).
pub(crate) async fn next_json_within(ws: &mut Ws, limit: Duration) -> Value {
    loop {
        let msg = tokio::time::timeout(limit, ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("socket ended")
            .expect("socket error");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(f) => panic!("socket closed: {f:?}"),
            _ => {}
        }
    }
}

/// Frames until (and including) one whose `type` is `ty`.
pub(crate) async fn until_type(ws: &mut Ws, ty: &str) -> Vec<Value> {
    until_type_within(ws, ty, PROMPTLY).await
}

/// As [`until_type`], each frame within `limit` (the real pi takes longer than the fake).
pub(crate) async fn until_type_within(ws: &mut Ws, ty: &str, limit: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let v = next_json_within(ws, limit).await;
        let done = v["type"] == ty;
        out.push(v);
        if done {
            return out;
        }
    }
}

/// Sends a prompt and reads its frames until (and including) `agent_settled`.
pub(crate) async fn prompt(ws: &mut Ws, id: &str, message: &str) -> Vec<Value> {
    send(ws, json!({"id": id, "type": "prompt", "message": message})).await;
    until_type(ws, "agent_settled").await
}

/// Waits for the socket to be closed by the server and returns the close code and reason.
pub(crate) async fn close_code(ws: &mut Ws) -> (u16, String) {
    loop {
        let msg = tokio::time::timeout(PROMPTLY, ws.next())
            .await
            .expect("timed out waiting for close");
        match msg {
            Some(Ok(Message::Close(Some(f)))) => return (f.code.into(), f.reason.to_string()),
            Some(Ok(Message::Close(None))) | None => return (1005, String::new()),
            Some(Ok(_)) => {}
            // A reset without a close frame counts as an abnormal close.
            Some(Err(_)) => return (1006, String::new()),
        }
    }
}

pub(crate) async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Polls `f` until it returns true (fails after 10 s).
pub(crate) async fn eventually<F, Fut>(f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(PROMPTLY, f).await
}

/// As [`eventually`], for conditions that take longer on a loaded machine (a large flood).
pub(crate) async fn eventually_within<F, Fut>(limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let step = Duration::from_millis(50);
    for _ in 0..limit.as_millis().div_ceil(step.as_millis()) {
        if f().await {
            return;
        }
        tokio::time::sleep(step).await;
    }
    panic!("condition not met within {limit:?}");
}

/// TCP states in `/proc/net/tcp` in which a server socket still holds its descriptor after the
/// client has gone: ESTABLISHED (01) and CLOSE_WAIT (08, the client closed, the server did not).
const HELD: [&str; 2] = ["01", "08"];

/// The kernel's state of the server's socket for the connection from local port `client_port`
/// to the relay on `server_port`, if it still has one.
fn server_socket_state(server_port: u16, client_port: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
        (port(cols[1]) == Some(server_port) && port(cols[2]) == Some(client_port))
            .then(|| cols[3].to_owned())
    })
}

/// Waits until the relay holds no socket of the connection from `client_port` (at most 10 s).
pub(crate) async fn released(app: &TestApp, client_port: u16) {
    let server_port = app.relay.as_ref().unwrap().addr.port();
    eventually(|| async {
        server_socket_state(server_port, client_port).is_none_or(|s| !HELD.contains(&s.as_str()))
    })
    .await;
}

/// The local port of a client's WebSocket connection.
pub(crate) fn local_port(ws: &Ws) -> u16 {
    match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp.local_addr().unwrap().port(),
        _ => unreachable!("tests connect without TLS"),
    }
}

/// A `multipart/form-data` body with one `file` field.
pub(crate) fn form(name: &str, mime: &str, content: &[u8]) -> (String, Vec<u8>) {
    let boundary = "pi-relay-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
         Content-Type: {mime}\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

pub(crate) async fn upload(
    app: &TestApp,
    id: &str,
    name: &str,
    mime: &str,
    content: &[u8],
) -> (u16, Value) {
    let (ty, body) = form(name, mime, content);
    let res = app
        .http
        .post(format!("{}/api/sessions/{id}/files", app.base))
        .header("content-type", ty)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}
