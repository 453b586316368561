//! The session layer on providers that can do less than Docker: the fake provider declares
//! narrower capabilities (no pause, less output history) and keeps to them, and the relay adapts.

use relay_sandbox::fake::{DOCKER_LIKE, FakeSandbox};
use relay_sandbox::{Capabilities, OutputHistory, Sandbox};
use serde_json::json;

use crate::helpers::*;

async fn start_on(capabilities: Capabilities) -> (TestApp, FakeSandbox) {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake(&dir).with_capabilities(capabilities);
    let args = args(dir.path(), &[]);
    (start(dir, args, fake.clone()).await, fake)
}

/// Every journal event's (seq, type), checking that the sequence has no gap.
async fn journal(app: &TestApp, id: &str) -> Vec<(u64, String)> {
    let page = app
        .get(&format!("/api/sessions/{id}/events?limit=10000"))
        .await;
    let out: Vec<(u64, String)> = page.body["data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (i, (seq, _)) in out.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "no gap, no duplicate: {out:?}");
    }
    out
}

/// Waits until the hub of session `id` has no client (a dropped socket is noticed a little later).
async fn clients_gone(app: &TestApp, id: &str) {
    let hub = app
        .relay
        .as_ref()
        .unwrap()
        .sessions()
        .hubs()
        .get(id)
        .unwrap();
    eventually(|| async { hub.status().await.clients == 0 }).await;
}

#[tokio::test]
async fn a_provider_that_cannot_pause_stops_an_idle_sandbox_and_activate_starts_it_again() {
    let (app, fake) = start_on(Capabilities {
        pause: false,
        ..DOCKER_LIKE
    })
    .await;
    let relay = app.relay.as_ref().unwrap();
    let id = app.active_session().await;
    let sandbox = format!("/api/sessions/{id}/sandbox");
    assert_eq!(
        app.get(&sandbox).await.body["data"]["capabilities"]["losslessPause"],
        false
    );
    {
        let (mut ws, _) = app.connect(&id, "c", 0).await;
        prompt(&mut ws, "p", "hi").await;
    }
    clients_gone(&app, &id).await;
    let before = journal(&app, &id).await.len();

    // An hour and more without activity: the reaper suspends it by stopping it.
    relay
        .sessions()
        .clock()
        .advance(std::time::Duration::from_secs(7200));
    assert_eq!(relay.reaper.run_once().await, std::slice::from_ref(&id));
    assert_eq!(
        app.get(&format!("/api/sessions/{id}")).await.body["data"]["status"],
        "idle"
    );
    assert_eq!(app.get(&sandbox).await.body["data"]["status"], "stopped");
    let [cid] = fake.existing().try_into().unwrap();
    assert_eq!(
        fake.inspect(&cid).await.unwrap().status,
        relay_sandbox::SandboxStatus::Exited
    );
    let mut ws = app.ws(&id, "clientId=c").await;
    assert_eq!(close_code(&mut ws).await.0, 4003);

    // Activate starts the same sandbox again; the session and its journal go on.
    let r = app.activate(&id, "c").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(app.get(&sandbox).await.body["data"]["status"], "running");
    assert_eq!(fake.existing(), [cid]);
    let (mut ws, _) = app.connect(&id, "c", 0).await;
    let frames = prompt(&mut ws, "p2", "again").await;
    assert_eq!(frames.last().unwrap()["type"], "agent_settled");
    assert!(journal(&app, &id).await.len() > before);
    let logs = app.get(&format!("/api/sessions/{id}/logs")).await.body["data"]["lines"].to_string();
    assert!(logs.contains("sandbox restarted"), "{logs}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_provider_keeping_only_the_latest_run_recovers_exactly_what_the_relay_missed() {
    let dir = tempfile::tempdir().unwrap();
    let capabilities = Capabilities {
        output_history: OutputHistory::SinceStart,
        ..DOCKER_LIKE
    };
    let fake = fake(&dir).with_capabilities(capabilities);
    let first_args = args(dir.path(), &[]);
    let first = start(dir, first_args, fake.clone()).await;
    let id = first.active_session().await;
    {
        let (mut ws, _) = first.connect(&id, "c", 0).await;
        prompt(&mut ws, "p", "hi").await;
    }
    // The sandbox dies and activate starts it again: its log now starts afresh.
    let [cid] = fake.existing().try_into().unwrap();
    fake.kill(&cid, 137);
    eventually(|| async {
        first.get(&format!("/api/sessions/{id}/sandbox")).await.body["data"]["status"] == "stopped"
    })
    .await;
    assert_eq!(first.activate(&id, "c").await.status, 200);
    let (mut ws, _) = first.connect(&id, "c", 0).await;
    send(
        &mut ws,
        json!({"id": "s", "type": "prompt", "message": "sleep 1500"}),
    )
    .await;
    until_type(&mut ws, "agent_start").await;
    drop(ws);
    let seen = journal(&first, &id).await;
    let TestApp { relay, dir, .. } = first;
    relay.unwrap().shutdown().await;
    // The run ends while no relay is attached: its last lines are only in the provider's log.
    eventually(|| async {
        use futures_util::StreamExt;
        let mut log = fake.stdout_history(&cid).await.unwrap();
        let mut text = Vec::new();
        while let Some(Ok(relay_sandbox::OutputChunk::Stdout(b))) = log.next().await {
            text.extend_from_slice(&b);
        }
        String::from_utf8_lossy(&text).contains("agent_settled")
    })
    .await;

    let second_args = args(dir.path(), &[]);
    let second = start(dir, second_args, fake.clone()).await;
    let all = journal(&second, &id).await;
    assert_eq!(&all[..seen.len()], &seen[..]);
    let recovered: Vec<&str> = all[seen.len()..].iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(recovered, ["agent_end", "agent_settled"]);
    let (mut ws, _) = second.connect(&id, "c", all.len() as u64).await;
    send(&mut ws, json!({"id": "g", "type": "get_state"})).await;
    assert_eq!(next_json(&mut ws).await["id"], "g");
    second.shutdown().await;
}

#[tokio::test]
async fn a_provider_without_output_history_attaches_again_and_says_what_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let capabilities = Capabilities {
        output_history: OutputHistory::None,
        ..DOCKER_LIKE
    };
    let fake = fake(&dir).with_capabilities(capabilities);
    let first_args = args(dir.path(), &[]);
    let first = start(dir, first_args, fake.clone()).await;
    let id = first.active_session().await;
    {
        let (mut ws, _) = first.connect(&id, "c", 0).await;
        prompt(&mut ws, "p", "hi").await;
    }
    let seen = journal(&first, &id).await;
    let TestApp { relay, dir, .. } = first;
    relay.unwrap().shutdown().await;

    let second_args = args(dir.path(), &[]);
    let second = start(dir, second_args, fake.clone()).await;
    let logs =
        second.get(&format!("/api/sessions/{id}/logs")).await.body["data"]["lines"].to_string();
    assert!(logs.contains("keeps no output history"), "{logs}");
    // The sandbox is attached again and the journal goes on where it was.
    let (mut ws, connected) = second.connect(&id, "c", seen.len() as u64).await;
    assert_eq!(connected["lastSeq"], seen.len() as u64);
    let frames = prompt(&mut ws, "p2", "again").await;
    assert_eq!(frames.last().unwrap()["type"], "agent_settled");
    let all = journal(&second, &id).await;
    assert_eq!(&all[..seen.len()], &seen[..]);
    second.shutdown().await;
}

#[tokio::test]
async fn on_a_provider_keeping_only_the_latest_run_a_restart_counts_output_from_its_first_line() {
    let dir = tempfile::tempdir().unwrap();
    let capabilities = Capabilities {
        output_history: OutputHistory::SinceStart,
        ..DOCKER_LIKE
    };
    let fake = fake(&dir).with_capabilities(capabilities);
    let first_args = args(dir.path(), &[]);
    let first = start(dir, first_args, fake.clone()).await;
    let id = first.active_session().await;
    {
        let (mut ws, _) = first.connect(&id, "c", 0).await;
        prompt(&mut ws, "p", "hi").await;
    }
    let [cid] = fake.existing().try_into().unwrap();
    fake.kill(&cid, 137);
    eventually(|| async {
        first.get(&format!("/api/sessions/{id}/sandbox")).await.body["data"]["status"] == "stopped"
    })
    .await;
    // Started again, and the relay goes away before the new run printed anything: what the
    // journal consumed of the old run must not count against the new run's log.
    assert_eq!(first.activate(&id, "c").await.status, 200);
    let seen = journal(&first, &id).await;
    let TestApp { relay, dir, .. } = first;
    relay.unwrap().shutdown().await;

    let second_args = args(dir.path(), &[]);
    let second = start(dir, second_args, fake.clone()).await;
    let logs =
        second.get(&format!("/api/sessions/{id}/logs")).await.body["data"]["lines"].to_string();
    assert!(!logs.contains("kept only"), "{logs}");
    let (mut ws, _) = second.connect(&id, "c", seen.len() as u64).await;
    let frames = prompt(&mut ws, "p2", "again").await;
    assert_eq!(frames.last().unwrap()["type"], "agent_settled");
    let all = journal(&second, &id).await;
    assert_eq!(&all[..seen.len()], &seen[..]);
    second.shutdown().await;
}
