//! Sandboxes without a network of their own, end to end: the relay as its own process on its
//! defaults (network `none`, the forwarder beside its binary), the real pi in the
//! `sandbox-debian` image, and a mock model provider served over HTTPS on loopback, reached by a
//! name the relay maps (`--egress-resolve`) and trusted through `--egress-ca-file`. pi's turn,
//! with a tool call, goes through the gateway; the provider sees the relay's key and the sandbox
//! never holds it anywhere; the tool's own traffic gets what the environment's policy allows;
//! the agent can neither kill nor replace the forwarder; a relay killed mid-stream is survived
//! by pi's retry. Fails when Docker is not running; never skips.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[allow(dead_code)]
mod process;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use helpers::*;
use process::*;
use relay_testkit::{MockLlm, Script, write_pi_agent_config_with_key};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The provider's name as the sandbox's pi and the relay know it.
const LLM_HOST: &str = "mock-llm.test";

fn image() -> String {
    std::env::var("PI_RELAY_TEST_IMAGE").unwrap_or_else(|_| "pi-relay/sandbox-debian:1.6.0".into())
}

fn docker_cli(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs (Docker must be installed for needs_docker tests)")
}

/// A line echo server on loopback: the host an environment allows.
async fn echo_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if write
                        .write_all(format!("{line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// The mock provider over HTTPS, the agent template pointing pi at it with its key named by a
/// variable, and the relay flags that reach and trust it.
struct Provider {
    llm: MockLlm,
    flags: Vec<String>,
}

async fn provider(root: &Path, tool_command: String) -> Provider {
    let llm = MockLlm::start_tls(
        Script {
            tool_command,
            final_text: "All done.".into(),
        },
        &[LLM_HOST],
    )
    .await
    .unwrap();
    let template = root.join("agent-template");
    write_pi_agent_config_with_key(&template, &llm.https_url(LLM_HOST), "$MOCK_LLM_KEY").unwrap();
    let ca = root.join("mock-ca.pem");
    std::fs::write(&ca, llm.ca_pem().unwrap()).unwrap();
    let flags = [
        "--agent-template-dir",
        template.to_str().unwrap(),
        "--egress-ca-file",
        ca.to_str().unwrap(),
        "--egress-resolve",
        &format!("{LLM_HOST}=127.0.0.1"),
    ]
    .map(str::to_owned)
    .to_vec();
    Provider { llm, flags }
}

/// A fixture, the mock provider (its model's tool runs `tool_command`) and a relay using it.
async fn relay_with_provider(tool_command: &str) -> (Fixture, Provider, RelayProcess) {
    let fx = Fixture::new().await;
    let p = provider(fx.root.path(), tool_command.into()).await;
    let flags: Vec<&str> = p.flags.iter().map(String::as_str).collect();
    let relay = spawn_relay_on(fx.root.path(), &fx.instance, &image(), &flags).await;
    (fx, p, relay)
}

async fn add_key(app: &TestApp, key: &str) {
    let body =
        json!({"name": "Mock LLM", "envVar": "MOCK_LLM_KEY", "kind": "ai_provider", "value": key});
    let r = app.post("/api/secrets", &body.to_string()).await;
    assert_eq!(r.status, 201, "{}", r.body);
}

/// Waits for pi to answer `get_state` (it has no ready banner).
async fn ready(ws: &mut Ws) {
    send(ws, json!({"id": "ready", "type": "get_state"})).await;
    let r = until_type_within(ws, "response", Duration::from_secs(90))
        .await
        .pop()
        .unwrap();
    assert_eq!(r["success"], true, "{r}");
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Every regular file under `dir`, recursively (without following links).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let kind = e.file_type().unwrap();
        if kind.is_dir() {
            out.extend(files_under(&e.path()));
        } else if kind.is_file() {
            out.push(e.path());
        }
    }
    out
}

/// Host pids of every process in the container whose init is `init`: those in its pid
/// namespace (processes started by `docker exec`, like the forwarder, are no descendants of
/// init).
fn container_processes(init: u32) -> Vec<u32> {
    let ns = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let theirs = ns(init).expect("the container's init runs");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| ns(*pid).as_ref() == Some(&theirs))
        .collect()
}

/// What pi's tool does in the sandbox, each result in a file of the workspace: a file written,
/// and the environment it sees kept in `$HOME` (scanned for the key later); a request with a
/// domain-bound secret (it holds a placeholder) to that domain, from Node;
/// `git clone` of a host on no list; a tunnel through the gateway to the allowed echo server
/// opened by hand; a direct connection past the gateway; the network interfaces; and attempts
/// to kill and to replace the forwarder.
fn tool_script(echo_port: u16, secret_port: u16) -> String {
    format!(
        r#"cd /workspace
echo hi > hello.txt
env > "$HOME/env-seen-by-the-tool"
printf %s "$MY_API_TOKEN" > token-seen.txt
node -e 'fetch("https://api.secret.test:{secret_port}/v1/chat/completions", {{method: "POST",
  headers: {{authorization: "Bearer " + process.env.MY_API_TOKEN, "content-type": "application/json"}},
  body: JSON.stringify({{model: "m", messages: [{{role: "user", content: "hi"}}]}})}})
  .then(r => r.text()).then(t => require("fs").writeFileSync("fetch.txt", t),
    e => require("fs").writeFileSync("fetch.txt", "ERR " + e + " " + (e.cause || "")))'
git clone https://github.com/pi-relay/nothing.git /tmp/nothing > clone.txt 2>&1; echo "exit=$?" >> clone.txt
exec 3<>/dev/tcp/127.0.0.1/18080
printf 'CONNECT allowed.test:{echo_port} HTTP/1.1\r\nHost: allowed.test:{echo_port}\r\n\r\n' >&3
IFS= read -r status <&3; echo "${{status%$'\r'}}" > connect.txt
while IFS= read -r line <&3 && [ -n "${{line%$'\r'}}" ]; do :; done
echo ping-through-the-tunnel >&3; IFS= read -r reply <&3; echo "$reply" >> connect.txt
exec 3>&-
timeout 5 bash -c 'exec 4<>/dev/tcp/127.0.0.1/{echo_port}' 2> direct.txt; echo "exit=$?" >> direct.txt
ls /sys/class/net > net.txt
for p in /proc/[0-9]*; do
  case "$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)" in
    /run/pi-relay/forward*) kill -9 "${{p#/proc/}}" 2>> kill.txt; echo "kill=$?" >> kill.txt ;;
  esac
done
cp /bin/true /run/pi-relay/forward 2> replace.txt; echo "exit=$?" >> replace.txt
true"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_docker_real_pi_without_a_network_works_through_the_relay_which_keeps_the_key() {
    let fx = Fixture::new().await;
    let echo = echo_server().await;
    // A service a secret is bound to, over HTTPS with a CA of its own (trusted by the relay).
    let service = MockLlm::start_tls(
        Script {
            tool_command: "true".into(),
            final_text: "service answer".into(),
        },
        &["api.secret.test"],
    )
    .await
    .unwrap();
    let p = provider(fx.root.path(), tool_script(echo, service.port())).await;
    let cas = format!("{}{}", p.llm.ca_pem().unwrap(), service.ca_pem().unwrap());
    std::fs::write(fx.root.path().join("mock-ca.pem"), cas).unwrap();
    let mut flags: Vec<&str> = p.flags.iter().map(String::as_str).collect();
    flags.extend(["--egress-resolve", "allowed.test=127.0.0.1"]);
    flags.extend(["--egress-resolve", "api.secret.test=127.0.0.1"]);
    let relay = spawn_relay_on(fx.root.path(), &fx.instance, &image(), &flags).await;
    let app = relay.app.clone();
    let key = format!("sk-egress-{}", uuid::Uuid::new_v4().simple());
    add_key(&app, &key).await;
    let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
    let body = json!({"name": "Service token", "envVar": "MY_API_TOKEN", "value": token,
                      "domains": [format!("api.secret.test:{}", service.port())]});
    let r = app.post("/api/secrets", &body.to_string()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let body = json!({"name": "allow-echo", "sandboxType": "docker",
                      "config": {"egressAllow": [format!("allowed.test:{echo}")]}});
    let r = app.post("/api/environments", &body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = json!({"mode": "chat", "environmentId": r.body["data"]["id"]});
    let r = app.post("/api/sessions", &body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.body["data"]["id"].as_str().unwrap().to_owned();
    let r = app.activate(&id, "c").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (mut ws, _) = app.connect(&id, "c", 0).await;
    ready(&mut ws).await;

    send(
        &mut ws,
        json!({"id": "p1", "type": "prompt", "message": "Try the network"}),
    )
    .await;
    let run = until_type_within(&mut ws, "agent_settled", Duration::from_secs(180)).await;
    let tool_end = run
        .iter()
        .find(|e| e["type"] == "tool_execution_end")
        .unwrap_or_else(|| panic!("the tool ran: {run:?}"));
    assert_eq!(tool_end["isError"], false, "{tool_end}");
    assert_eq!(run.last().unwrap()["aborted"], false);

    // Both model calls of the turn went through the gateway, which put the relay's key in.
    assert_eq!(
        p.llm.authorizations(),
        vec![Some(format!("Bearer {key}")); 2],
        "the provider saw the relay's key on every request"
    );

    let state = std::fs::canonicalize(fx.root.path().join("state")).unwrap();
    let workspace = state.join(format!("sessions/{id}/workspace"));
    let read = |name: &str| std::fs::read_to_string(workspace.join(name)).unwrap();
    assert_eq!(read("hello.txt"), "hi\n");
    // A host on no list: refused with a status, never a hang.
    let clone = read("clone.txt");
    assert!(clone.contains("403"), "{clone}");
    assert!(!clone.contains("exit=0"), "{clone}");
    // The allowed host: tunneled.
    let connect = read("connect.txt");
    assert!(connect.starts_with("HTTP/1.1 200"), "{connect}");
    assert!(connect.ends_with("ping-through-the-tunnel\n"), "{connect}");
    // Nothing but the gateway: no interface but loopback, and the host's loopback unreachable.
    assert_eq!(read("net.txt"), "lo\n");
    let direct = read("direct.txt");
    assert!(!direct.contains("exit=0"), "{direct}");
    // The forwarder is another user's process on a read-only mount.
    let kill = read("kill.txt");
    assert!(
        kill.contains("kill=1"),
        "the agent found the forwarder: {kill}"
    );
    assert!(!kill.contains("kill=0"), "{kill}");
    let replace = read("replace.txt");
    assert!(!replace.contains("exit=0"), "{replace}");

    // The domain-bound secret: a placeholder in the sandbox, the value at its domain.
    let seen = read("token-seen.txt");
    assert!(seen.starts_with("pi-relay-secret-"), "{seen}");
    let fetched = read("fetch.txt");
    assert!(
        fetched.contains("\"service\"") && fetched.contains("data: [DONE]"),
        "{fetched}"
    );
    assert_eq!(service.authorizations(), [Some(format!("Bearer {token}"))]);

    // The relay's view of it.
    let egress = app.get(&format!("/api/sessions/{id}/egress")).await.body["data"].clone();
    assert_eq!(egress["network"], "none");
    assert_eq!(
        egress["usage"]["providers"]["mock"]["requests"], 2,
        "{egress}"
    );
    let hosts = egress["usage"]["hosts"].as_array().unwrap();
    let host = |target: &str| {
        hosts
            .iter()
            .find(|h| h["target"] == target)
            .unwrap_or_else(|| panic!("{target} in {egress}"))
            .clone()
    };
    assert_eq!(host("github.com:443")["lastVerdict"], "denied");
    assert_eq!(
        host(&format!("allowed.test:{echo}"))["lastVerdict"],
        "allowed"
    );

    // The key is nowhere the sandbox can look.
    let cid = app.get(&format!("/api/sessions/{id}")).await.body["data"]["sandboxProviderId"]
        .as_str()
        .unwrap()
        .to_owned();
    let inspect = docker_cli(&["inspect", &cid]);
    assert!(inspect.status.success());
    assert!(!contains(&inspect.stdout, &key), "docker inspect");
    let info: Value = serde_json::from_slice::<Value>(&inspect.stdout).unwrap()[0].clone();
    let logs = docker_cli(&["logs", &cid]);
    assert!(
        !contains(&logs.stdout, &key) && !contains(&logs.stderr, &key),
        "container log"
    );
    let pid = info["State"]["Pid"].as_u64().unwrap() as u32;
    let tree = container_processes(pid);
    assert!(
        tree.len() >= 3,
        "init, pi and the forwarder at least: {tree:?}"
    );
    let mut forwarder_alive = false;
    let mut home = None;
    for p in &tree {
        let environ = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
        assert!(!contains(&environ, &key), "the environment of process {p}");
        assert!(
            !contains(&environ, &token),
            "the environment of process {p}"
        );
        let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        forwarder_alive |= contains(&cmdline, "/run/pi-relay/forward");
        if home.is_none() {
            home = environ
                .split(|b| *b == 0)
                .find_map(|v| v.strip_prefix(b"HOME="))
                .map(|h| String::from_utf8_lossy(h).into_owned());
        }
    }
    assert!(forwarder_alive, "the forwarder survived the agent's kill");
    let home = home.expect("the sandbox's processes have a HOME");
    let mut scanned = files_under(&state.join(format!("sessions/{id}")));
    scanned.extend(files_under(&state.join(format!("pi-secrets-{id}"))));
    // $HOME is a tmpfs inside the container: read through its root.
    let home_files = files_under(&PathBuf::from(format!("/proc/{pid}/root{home}")));
    assert!(
        home_files
            .iter()
            .any(|f| f.ends_with("env-seen-by-the-tool")),
        "the tool's file in {home}: {home_files:?}"
    );
    scanned.extend(home_files);
    for file in &scanned {
        let bytes = std::fs::read(file).unwrap_or_default();
        assert!(!contains(&bytes, &key), "{}", file.display());
        assert!(!contains(&bytes, &token), "{}", file.display());
    }
    let models =
        std::fs::read_to_string(state.join(format!("sessions/{id}/agent/models.json"))).unwrap();
    assert!(models.contains("pi-relay-gateway-placeholder"), "{models}");
    drop(ws);
    relay.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_docker_a_relay_killed_mid_stream_is_survived_by_pis_retry() {
    let fx = Fixture::new().await;
    let p = provider(
        fx.root.path(),
        "echo after-restart > /workspace/hello.txt".into(),
    )
    .await;
    // pi retries a failed request after 2, 4, 8 … s: time for a relay to come back.
    let settings = fx.root.path().join("agent-template/settings.json");
    let mut s: Value = serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap();
    s["retry"]["maxRetries"] = json!(5);
    s["retry"]["baseDelayMs"] = json!(2000);
    std::fs::write(&settings, s.to_string()).unwrap();
    let flags: Vec<&str> = p.flags.iter().map(String::as_str).collect();
    let relay = spawn_relay_on(fx.root.path(), &fx.instance, &image(), &flags).await;
    let app = relay.app.clone();
    let key = format!("sk-restart-{}", uuid::Uuid::new_v4().simple());
    add_key(&app, &key).await;
    let id = app.active_session().await;
    let (mut ws, _) = app.connect(&id, "c", 0).await;
    ready(&mut ws).await;

    // The answer streams slowly; the relay dies while it does.
    p.llm.set_chunk_delay(Duration::from_millis(700));
    send(
        &mut ws,
        json!({"id": "p1", "type": "prompt", "message": "Write the file"}),
    )
    .await;
    eventually_within(Duration::from_secs(60), || async {
        !p.llm.requests().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    relay.kill9();
    p.llm.set_chunk_delay(Duration::ZERO);
    drop(ws);

    let relay = spawn_relay_on(fx.root.path(), &fx.instance, &image(), &flags).await;
    let app = relay.app.clone();
    let state = std::fs::canonicalize(fx.root.path().join("state")).unwrap();
    let hello = state.join(format!("sessions/{id}/workspace/hello.txt"));
    // The turn completes on the new relay, its events all in the journal.
    let mut settled = false;
    for _ in 0..180 {
        let page = app
            .get(&format!("/api/sessions/{id}/events?limit=10000"))
            .await
            .body["data"]["events"]
            .clone();
        let types: Vec<String> = page
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["payload"]["type"].as_str().unwrap_or("").to_owned())
            .collect();
        if types.iter().any(|t| t == "agent_settled") {
            assert!(types.iter().any(|t| t == "auto_retry_start"), "{types:?}");
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(settled, "the turn settled after the restart");
    assert_eq!(std::fs::read_to_string(&hello).unwrap(), "after-restart\n");
    assert!(
        p.llm.requests().len() >= 3,
        "the killed request, its retry, the final answer"
    );
    for a in p.llm.authorizations() {
        assert_eq!(a, Some(format!("Bearer {key}")));
    }
    relay.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_docker_the_models_pi_offers_are_asked_of_the_real_pi() {
    let (fx, _provider, relay) = relay_with_provider("true").await;
    let app = relay.app.clone();
    add_key(&app, "sk-models").await;
    let r = app.get("/api/models").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["error"], Value::Null, "{}", r.body);
    let models = r.body["data"]["models"].as_array().unwrap();
    assert!(
        models
            .iter()
            .any(|m| m["provider"] == "mock" && m["id"] == "mock-model"),
        "{models:?}"
    );
    // The throwaway sandbox is gone.
    assert!(containers_of_instance(&fx.instance).is_empty());
    relay.terminate();
}

fn containers_of_instance(instance: &str) -> Vec<String> {
    let out = docker_cli(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=pi-relay.instance={instance}"),
    ]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_docker_exec_runs_a_command_in_the_sandbox_with_bounds() {
    let (fx, _provider, relay) = relay_with_provider("true").await;
    let app = relay.app.clone();
    let id = app.active_session().await;
    let sandbox = app.get(&format!("/api/sessions/{id}/sandbox")).await;
    assert_eq!(sandbox.body["data"]["capabilities"]["exec"], true);
    let exec = |body: Value| {
        let (app, id) = (app.clone(), id.clone());
        async move {
            app.post(&format!("/api/sessions/{id}/exec"), &body.to_string())
                .await
        }
    };
    let r =
        exec(json!({"command": "echo out; echo err >&2; pwd; id -u; echo hi > made.txt"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["data"]["exitCode"], 0);
    let out = r.body["data"]["output"].as_str().unwrap();
    for line in ["out", "err", "/workspace"] {
        assert!(out.lines().any(|l| l == line), "{line} in {out:?}");
    }
    assert!(!out.lines().any(|l| l == "0"), "never root: {out:?}");
    let state = std::fs::canonicalize(fx.root.path().join("state")).unwrap();
    assert_eq!(
        std::fs::read_to_string(state.join(format!("sessions/{id}/workspace/made.txt"))).unwrap(),
        "hi\n"
    );
    let r = exec(json!({"command": "exit 3"})).await;
    assert_eq!(r.body["data"]["exitCode"], 3);
    let r = exec(json!({"command": "head -c 300000 /dev/zero | tr '\\0' x"})).await;
    let out = r.body["data"]["output"].as_str().unwrap();
    assert!(
        out.ends_with("\n... (output truncated)"),
        "{}",
        &out[out.len() - 40..]
    );
    assert_eq!(out.len(), 256 * 1024 + "\n... (output truncated)".len());
    let r = exec(json!({"command": "sleep 5", "timeout": 1})).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (500, Some("Exec timed out"))
    );
    relay.terminate();
}

/// Terminal output until it holds `needle` (each message within 20 s).
async fn output_until(ws: &mut Ws, needle: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(needle) {
        let m = next_json_within(ws, Duration::from_secs(20)).await;
        assert_eq!(m["type"], "output", "{m} after {seen:?}");
        seen.push_str(m["data"].as_str().unwrap());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_docker_a_terminal_runs_a_shell_in_the_sandbox() {
    let (_fx, _provider, relay) = relay_with_provider("true").await;
    let app = relay.app.clone();
    let id = app.active_session().await;
    let sandbox = app.get(&format!("/api/sessions/{id}/sandbox")).await;
    assert_eq!(sandbox.body["data"]["capabilities"]["terminal"], true);
    let mut ws = app.ws(&format!("{id}/terminal"), "cols=90&rows=20").await;
    let input = |data: &str| json!({"type": "input", "data": data});
    send(&mut ws, input("echo $((6*7)); pwd; stty size\n")).await;
    let seen = output_until(&mut ws, "20 90").await;
    assert!(seen.contains("42"), "{seen:?}");
    assert!(seen.contains("/workspace"), "{seen:?}");
    send(&mut ws, json!({"type": "resize", "cols": 100, "rows": 30})).await;
    send(&mut ws, input("stty size\n")).await;
    output_until(&mut ws, "30 100").await;
    send(&mut ws, input("exit 7\n")).await;
    let exit = loop {
        let m = next_json_within(&mut ws, Duration::from_secs(20)).await;
        if m["type"] == "exit" {
            break m;
        }
    };
    assert_eq!(exit["exitCode"], 7);
    assert_eq!(close_code(&mut ws).await, (1000, "PTY exited".into()));
    relay.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_docker_pis_export_and_history_are_served() {
    let (_fx, _provider, relay) = relay_with_provider("echo hi").await;
    let app = relay.app.clone();
    add_key(&app, "sk-export").await;
    let id = app.active_session().await;
    let (mut ws, _) = app.connect(&id, "c", 0).await;
    ready(&mut ws).await;
    send(
        &mut ws,
        json!({"id": "p", "type": "prompt", "message": "say hi"}),
    )
    .await;
    until_type_within(&mut ws, "agent_settled", Duration::from_secs(120)).await;
    // What the pi-apps dashboard does: pi writes the export where the relay serves it from.
    let path = format!("/data/agent/exports/session-{id}.html");
    send(
        &mut ws,
        json!({"id": "e", "type": "export_html", "outputPath": path}),
    )
    .await;
    let r = until_type_within(&mut ws, "response", Duration::from_secs(60))
        .await
        .pop()
        .unwrap();
    assert_eq!(r["success"], true, "{r}");
    let res = reqwest::get(format!("{}/api/sessions/{id}/export", app.base))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("<html"));
    let history = app.get(&format!("/api/sessions/{id}/history")).await;
    let entries = history.body["data"]["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["type"] == "message"),
        "pi's conversation: {entries:?}"
    );
    relay.terminate();
}

/// A package configured for every session reaches the real pi through the settings.json the
/// relay writes before pi starts: here a local extension (no registry needed) whose command pi
/// then offers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_docker_configured_packages_reach_the_real_pi() {
    let (_fx, _provider, relay) = relay_with_provider("echo hi").await;
    let app = relay.app.clone();
    add_key(&app, "sk-extensions").await;
    let body = json!({"scope": "global", "package": "/workspace/hello-relay.ts", "config": {"greeting": "hi"}});
    let r = app.post("/api/extension-configs", &body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["meta"]["manifestMissing"], true);
    let id = app.active_session().await;
    // The extension is written into the workspace; pi loads it at its next start.
    let extension = "export default function (pi) { pi.registerCommand('hello-relay', { description: 'from the relay', handler: async () => {} }); }";
    let command = format!("printf '%s\\n' \"{extension}\" > /workspace/hello-relay.ts");
    let r = app
        .post(
            &format!("/api/sessions/{id}/exec"),
            &json!({"command": command}).to_string(),
        )
        .await;
    assert_eq!(r.body["data"]["exitCode"], 0, "{}", r.body);
    let r = app.post(&format!("/api/sessions/{id}/restart"), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(app.activate(&id, "c").await.status, 200);
    let (mut ws, _) = app.connect(&id, "c", 0).await;
    ready(&mut ws).await;
    send(&mut ws, json!({"id": "cmds", "type": "get_commands"})).await;
    let r = loop {
        let r = until_type_within(&mut ws, "response", Duration::from_secs(60))
            .await
            .pop()
            .unwrap();
        if r["id"] == "cmds" {
            break r;
        }
    };
    let commands = r["data"]["commands"].as_array().unwrap();
    assert!(
        commands
            .iter()
            .any(|c| c["name"] == "hello-relay" && c["source"] == "extension"),
        "{commands:?}"
    );
    let settings = app
        .post(
            &format!("/api/sessions/{id}/exec"),
            &json!({"command": "cat /data/agent/settings.json"}).to_string(),
        )
        .await;
    let text = settings.body["data"]["output"].as_str().unwrap().to_owned();
    let settings: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(settings["packages"], json!(["/workspace/hello-relay.ts"]));
    assert_eq!(
        settings["extensionConfig"]["/workspace/hello-relay.ts"],
        json!({"greeting": "hi"})
    );
    relay.terminate();
}

/// A file a client uploads is in the real sandbox for the agent to read, as the sandbox's user;
/// a share link names the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_docker_uploads_reach_the_sandbox_and_share_links_name_the_session() {
    let (_fx, _provider, relay) = relay_with_provider("echo hi").await;
    let app = relay.app.clone();
    let id = app.active_session().await;
    let (status, body) = upload(
        &app,
        &id,
        "notes.md",
        "text/markdown",
        b"# from the client\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let path = body["data"]["sandboxPath"].as_str().unwrap().to_owned();
    assert!(path.starts_with("/workspace/.pi-uploads/"), "{path}");
    let r = app
        .post(
            &format!("/api/sessions/{id}/exec"),
            &json!({"command": format!("cat '{path}' && id -u && stat -c %u '{path}'")})
                .to_string(),
        )
        .await;
    assert_eq!(r.body["data"]["exitCode"], 0, "{}", r.body);
    let out = r.body["data"]["output"].as_str().unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "# from the client", "{out}");
    assert_eq!(lines[1], lines[2], "owned by the sandbox's user: {out}");
    let share = app.post(&format!("/api/sessions/{id}/share"), "").await;
    let token = share.body["data"]["token"].as_str().unwrap().to_owned();
    let got = app.get(&format!("/api/sessions/share/{token}")).await;
    assert_eq!(got.body["data"]["sessionId"], id.as_str());
    relay.terminate();
}
