//! End to end against a real Docker engine: the real pi in the `sandbox-debian` image, a mock
//! LLM on loopback (the sandbox uses the host network to reach it), a WebSocket client, and
//! files checked on the host. Fails when Docker is not running; never skips.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use helpers::*;
use relay_testkit::{MockLlm, Script, write_pi_agent_config};
use serde_json::{Value, json};

fn image() -> String {
    std::env::var("PI_RELAY_TEST_IMAGE").unwrap_or_else(|_| "pi-relay/sandbox-debian:1.6.0".into())
}

fn sandbox_uid() -> u32 {
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    if me == 0 { 1000 } else { me }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_docker_real_pi_runs_a_tool_in_its_sandbox_and_a_late_client_replays_exactly() {
    let llm = MockLlm::start(Script {
        tool_command: "echo hi > /workspace/hello.txt".into(),
        final_text: "I wrote hello.txt".into(),
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("agent-template");
    std::fs::create_dir_all(&template).unwrap();
    write_pi_agent_config(&template, &llm.base_url()).unwrap();
    let image = image();
    let args = args(
        dir.path(),
        &[
            "--sandbox-image",
            &image,
            "--sandbox-network",
            "host",
            "--agent-template-dir",
            template.to_str().unwrap(),
        ],
    );
    let (docker, fake) = (docker(storage(&dir)).await, fake(&dir));
    let app = start_with(dir, args, Arc::new(docker), fake).await;

    let id = app.create_session().await;
    let r = app.activate(&id, "a").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (mut a, connected) = app.connect(&id, "a", 0).await;
    assert_eq!(connected["lastSeq"], 0);

    // pi has no ready banner: its answer to get_state is the readiness signal.
    send(&mut a, json!({"id": "ready", "type": "get_state"})).await;
    let ready = until_type_within(&mut a, "response", Duration::from_secs(60))
        .await
        .pop()
        .unwrap();
    assert_eq!(ready["id"], "ready");
    assert_eq!(
        ready["data"]["sessionId"], id,
        "pi runs with the relay's session id"
    );
    assert_eq!(ready["data"]["model"]["provider"], "mock");

    send(
        &mut a,
        json!({"id": "p1", "type": "prompt", "message": "Please write hello.txt"}),
    )
    .await;
    let run = until_type_within(&mut a, "agent_settled", Duration::from_secs(120)).await;
    let types: Vec<&str> = run.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"agent_end"), "{types:?}");
    let tool_end = run
        .iter()
        .find(|e| e["type"] == "tool_execution_end")
        .expect("tool ran");
    assert_eq!(tool_end["isError"], false, "{tool_end}");
    assert_eq!(run.last().unwrap()["aborted"], false);

    // The tool's file is on the host, owned by the sandbox user.
    let hello = app
        .state_dir()
        .join(format!("sessions/{id}/workspace/hello.txt"));
    assert_eq!(std::fs::read_to_string(&hello).unwrap(), "hi\n");
    let meta = std::fs::metadata(&hello).unwrap();
    assert_eq!(meta.uid(), sandbox_uid());
    // pi's conversation is on the host too, under the session's own id.
    let sessions_dir = app
        .state_dir()
        .join(format!("sessions/{id}/agent/sessions"));
    let jsonl = walk(&sessions_dir);
    assert!(
        jsonl
            .iter()
            .any(|p| p.to_string_lossy().ends_with(&format!("_{id}.jsonl"))),
        "{jsonl:?}"
    );
    assert_eq!(llm.requests().len(), 2);

    // A second client that saw only part of the journal gets exactly the rest.
    let journal = app
        .get(&format!("/api/sessions/{id}/events?limit=1000"))
        .await
        .body["data"]
        .clone();
    let events = journal["events"].as_array().unwrap().clone();
    let total = journal["lastSeq"].as_u64().unwrap();
    assert_eq!(total as usize, events.len());
    assert_eq!(
        total as usize,
        1 + 1 + run.len(),
        "get_state response, prompt, run"
    );
    let mid = total / 2;
    let (mut b, connected) = app.connect(&id, "b", mid).await;
    assert_eq!(connected["lastSeq"], total);
    assert_eq!(
        next_json(&mut b).await,
        json!({"type": "replay_start", "fromSeq": mid, "toSeq": total})
    );
    let mut replay = until_type(&mut b, "replay_end").await;
    replay.pop();
    let expected: Vec<Value> = events[mid as usize..]
        .iter()
        .map(|e| e["payload"].clone())
        .collect();
    assert_eq!(replay, expected, "no duplicate, no hole");

    // Both clients keep receiving live output.
    send(&mut b, json!({"id": "s2", "type": "get_state"})).await;
    let before = until_type_within(&mut b, "response", Duration::from_secs(30))
        .await
        .pop()
        .unwrap();
    assert_eq!(before["id"], "s2");
    assert_eq!(
        until_type_within(&mut a, "response", Duration::from_secs(30))
            .await
            .pop()
            .unwrap()["id"],
        "s2"
    );
    let messages = before["data"]["messageCount"].as_u64().unwrap();
    assert!(messages >= 4, "{before}");

    // Restart recreates the container; pi, started with the same session id, continues the
    // same conversation from its files in /data/agent.
    let old_cid =
        app.get(&format!("/api/sessions/{id}")).await.body["data"]["sandboxProviderId"].clone();
    assert_eq!(
        app.post(&format!("/api/sessions/{id}/restart"), "")
            .await
            .status,
        200
    );
    let r = app.activate(&id, "a").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_ne!(
        app.get(&format!("/api/sessions/{id}")).await.body["data"]["sandboxProviderId"],
        old_cid
    );
    drop(b);
    // The client sees the old sandbox stop and the new one start.
    let mut seen = Vec::new();
    while seen
        .last()
        .map(|v: &Value| v["status"] != "running")
        .unwrap_or(true)
    {
        seen.push(
            until_type_within(&mut a, "sandbox_status", Duration::from_secs(30))
                .await
                .pop()
                .unwrap(),
        );
    }
    send(&mut a, json!({"id": "after", "type": "get_state"})).await;
    let after = until_type_within(&mut a, "response", Duration::from_secs(60))
        .await
        .pop()
        .unwrap();
    assert_eq!(after["id"], "after");
    assert_eq!(after["data"]["sessionId"], id);
    assert_eq!(
        after["data"]["messageCount"].as_u64().unwrap(),
        messages,
        "{after}"
    );

    // Deleting the session removes its container and directories.
    let cid = app.get(&format!("/api/sessions/{id}")).await.body["data"]["sandboxProviderId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.delete(&format!("/api/sessions/{id}")).await.status, 200);
    let gone =
        relay_sandbox::Sandbox::inspect(&engine().await, &relay_sandbox::SandboxId(cid)).await;
    assert!(
        matches!(gone, Err(relay_sandbox::SandboxError::NotFound(_))),
        "{gone:?}"
    );
    assert!(!app.state_dir().join(format!("sessions/{id}")).exists());
    app.shutdown().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}
