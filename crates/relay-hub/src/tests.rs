//! Hub tests with the fake sandbox running the fake pi and a real SQLite journal.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use relay_sandbox::fake::FakeSandbox;
use relay_sandbox::host::HostStorage;
use relay_sandbox::{Limits, Sandbox, SandboxSpec};
use relay_store::Store;
use tokio_util::sync::CancellationToken;

use super::*;

#[derive(Debug, Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
}

impl HubObserver for Recorder {
    fn command_sent(&self, _s: &str, command: &str, prompt: Option<&str>) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("command {command} {prompt:?}"));
    }
    fn session_named(&self, _s: &str, name: &str) {
        self.calls.lock().unwrap().push(format!("named {name}"));
    }
    fn channel_closed(&self, _s: &str, reason: &str) {
        self.calls.lock().unwrap().push(format!("closed {reason}"));
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    store: Store,
    hubs: Hubs,
    fake: FakeSandbox,
    recorder: Arc<Recorder>,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db")).unwrap();
    let recorder = Arc::new(Recorder::default());
    let hubs = Hubs::new(
        store.clone(),
        recorder.clone(),
        CancellationToken::new(),
        crate::Clock::default(),
    );
    let fake = FakeSandbox::new(HostStorage::new(dir.path().join("state"), false));
    Setup {
        _dir: dir,
        store,
        hubs,
        fake,
        recorder,
    }
}

fn spec(name: &str) -> SandboxSpec {
    SandboxSpec {
        session_id: name.into(),
        name: name.into(),
        image: "img".into(),
        command: vec![
            "pi".into(),
            "--mode".into(),
            "rpc".into(),
            "--session-id".into(),
            name.into(),
        ],
        env: vec![],
        user: (1000, 1000),
        working_dir: "/workspace".into(),
        labels: Default::default(),
        network: relay_sandbox::Network::None,
        limits: Limits::default(),
        hardened: true,
        egress: None,
    }
}

/// A hub attached to a started fake pi.
async fn running_hub(s: &Setup, session: &str) -> (Arc<Hub>, relay_sandbox::SandboxId) {
    s.fake
        .storage()
        .prepare(session, (1000, 1000))
        .await
        .unwrap();
    let id = s.fake.create(&spec(session)).await.unwrap();
    let hub = s.hubs.get_or_create(session).await.unwrap();
    hub.attach(s.fake.attach(&id).await.unwrap(), 0, Bytes::new())
        .await;
    s.fake.start(&id).await.unwrap();
    (hub, id)
}

async fn recv_json(c: &mut ClientConn) -> serde_json::Value {
    match tokio::time::timeout(Duration::from_secs(10), c.recv())
        .await
        .unwrap()
    {
        Some(Outbound::Text(b)) => serde_json::from_slice(&b).unwrap(),
        other => panic!("unexpected {other:?}"),
    }
}

async fn until(c: &mut ClientConn, ty: &str) -> Vec<serde_json::Value> {
    let mut out = vec![];
    loop {
        let v = recv_json(c).await;
        let done = v["type"] == ty;
        out.push(v);
        if done {
            return out;
        }
    }
}

fn cmd(v: serde_json::Value) -> Bytes {
    Bytes::from(v.to_string())
}

#[tokio::test]
async fn prompts_and_pi_lines_share_one_gapless_sequence() {
    let s = setup().await;
    let (hub, _) = running_hub(&s, "s1").await;
    let mut c = hub.connect("c").await;
    assert_eq!(c.seq_at_connect(), 0);
    hub.command(
        c.id(),
        cmd(serde_json::json!({"id":"p","type":"prompt","message":"hello"})),
    )
    .await;
    let run = until(&mut c, "agent_settled").await;
    s.store.barrier().await.unwrap();
    let rows = s
        .store
        .events("s1", 0, u64::MAX, 10_000, usize::MAX)
        .await
        .unwrap();
    assert_eq!(rows.len(), run.len() + 1);
    assert_eq!(rows[0].ty, "prompt");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
    }
    assert_eq!(hub.status().await.seq, rows.len() as u64);
    assert!(
        s.recorder
            .calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c == "command prompt Some(\"hello\")")
    );
}

#[tokio::test]
async fn a_new_hub_continues_the_journal_sequence() {
    let s = setup().await;
    let (hub, id) = running_hub(&s, "s1").await;
    let mut c = hub.connect("c").await;
    hub.command(
        c.id(),
        cmd(serde_json::json!({"id":"g","type":"get_state"})),
    )
    .await;
    recv_json(&mut c).await;
    s.store.barrier().await.unwrap();
    s.hubs.remove("s1", 1000, "bye").await;
    s.fake.stop(&id, Duration::from_secs(1)).await.unwrap();
    let hub2 = s.hubs.get_or_create("s1").await.unwrap();
    assert_eq!(hub2.status().await.seq, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_after_its_backlog_limit() {
    let s = setup().await;
    let (hub, _) = running_hub(&s, "s1").await;
    let driver = hub.connect("driver").await;
    let slow = hub.connect("slow").await;
    let kicked = slow.kicked();
    hub.command(
        driver.id(),
        cmd(serde_json::json!({"id":"f","type":"prompt","message":"flood 60000"})),
    )
    .await;
    drop(driver);
    // Neither client reads; pi is never held up by them and the journal gets everything.
    let expected = 60_000 + 5; // prompt, response, agent_start, deltas, agent_end, agent_settled
    for _ in 0..600 {
        if hub.status().await.seq >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(hub.status().await.seq, expected);
    assert!(kicked.is_cancelled(), "slow client was not cut off");
    s.store.barrier().await.unwrap();
    assert_eq!(s.store.max_seq("s1").await.unwrap(), expected);
    drop(slow);
}

#[tokio::test]
async fn extension_dialogs_go_to_the_controller_only() {
    let s = setup().await;
    let (hub, _) = running_hub(&s, "s1").await;
    s.hubs.set_extension_ui("s1", "ui", true).await;
    let mut ui = hub.connect("ui").await;
    let mut plain = hub.connect("plain").await;
    // Only the controller may answer a dialog.
    hub.command(
        plain.id(),
        cmd(serde_json::json!({"type":"extension_ui_response","id":"x","confirmed":true})),
    )
    .await;
    let err = recv_json(&mut plain).await;
    assert_eq!(err["code"], "NOT_CONTROLLER");
    hub.command(
        ui.id(),
        cmd(serde_json::json!({"type":"extension_ui_response","id":"x","confirmed":true})),
    )
    .await;
    hub.command(
        ui.id(),
        cmd(serde_json::json!({"id":"g","type":"get_state"})),
    )
    .await;
    assert_eq!(recv_json(&mut ui).await["id"], "g");
    assert_eq!(recv_json(&mut plain).await["id"], "g");
}

#[tokio::test]
async fn a_closed_channel_is_announced_and_commands_get_an_error() {
    let s = setup().await;
    let (hub, id) = running_hub(&s, "s1").await;
    let mut c = hub.connect("c").await;
    s.fake.kill(&id, 137);
    let v = recv_json(&mut c).await;
    assert_eq!(v["type"], "sandbox_status");
    assert_eq!(v["status"], "stopped");
    hub.command(
        c.id(),
        cmd(serde_json::json!({"id":"g","type":"get_state"})),
    )
    .await;
    assert_eq!(recv_json(&mut c).await["code"], "CHANNEL_DETACHED");
    assert!(!hub.status().await.attached);
    assert!(
        s.recorder
            .calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.starts_with("closed"))
    );
}

#[tokio::test]
async fn pi_reporting_a_session_name_renames_the_session() {
    let s = setup().await;
    let (hub, _) = running_hub(&s, "s1").await;
    let mut c = hub.connect("c").await;
    hub.command(
        c.id(),
        cmd(serde_json::json!({"id":"n","type":"set_session_name","name":"My work"})),
    )
    .await;
    hub.command(
        c.id(),
        cmd(serde_json::json!({"id":"g","type":"get_state"})),
    )
    .await;
    until(&mut c, "response").await;
    let state = until(&mut c, "response").await.pop().unwrap();
    assert_eq!(state["data"]["sessionName"], "My work");
    assert!(
        s.recorder
            .calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c == "named My work")
    );
}

#[tokio::test]
async fn running_tool_calls_are_tracked_until_they_end() {
    let s = setup().await;
    let (hub, _) = running_hub(&s, "s1").await;
    let mut c = hub.connect("c").await;
    hub.command(
        c.id(),
        cmd(serde_json::json!({"id":"p","type":"prompt","message":"go"})),
    )
    .await;
    until(&mut c, "tool_execution_start").await;
    // The end event may already be queued; once settled, nothing runs.
    until(&mut c, "agent_settled").await;
    assert_eq!(hub.status().await.running_tools, 0);
}

#[tokio::test]
async fn only_the_newest_socket_of_a_client_receives_and_the_older_closing_changes_nothing() {
    let s = setup().await;
    let (hub, _) = running_hub(&s, "s1").await;
    // The pi-apps dashboard opens two sockets with one client id on every session page.
    let older = hub.connect("page").await;
    let mut newer = hub.connect("page").await;
    let mut other = hub.connect("other").await;
    assert_eq!(hub.status().await.clients, 2, "one per client id");
    hub.command(
        older.id(),
        cmd(serde_json::json!({"id":"g1","type":"get_state"})),
    )
    .await;
    assert_eq!(recv_json(&mut newer).await["id"], "g1");
    assert_eq!(recv_json(&mut other).await["id"], "g1");
    let mut older = older;
    assert!(older.try_recv().is_none(), "the older socket gets nothing");
    // Its close leaves the newer one as it was.
    older.close().await;
    hub.command(
        newer.id(),
        cmd(serde_json::json!({"id":"g2","type":"get_state"})),
    )
    .await;
    assert_eq!(recv_json(&mut newer).await["id"], "g2");
    assert_eq!(recv_json(&mut other).await["id"], "g2");
    assert_eq!(hub.status().await.clients, 2);
    assert_eq!(hub.status().await.last_disconnected_at, None);
}
