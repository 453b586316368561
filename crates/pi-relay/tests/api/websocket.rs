//! WebSocket behaviour: close codes, passthrough, journaling, replay, many clients, bad frames,
//! container death.

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

#[tokio::test]
async fn refusals_are_close_codes_after_the_upgrade() {
    let app = spawn_app().await;
    let id = app.create_session().await;
    let mut ws = app.ws(&id, "lastSeq=0").await;
    assert_eq!(
        close_code(&mut ws).await,
        (4001, "clientId query parameter is required".into())
    );
    let mut ws = app
        .ws(&uuid::Uuid::new_v4().to_string(), "clientId=c")
        .await;
    assert_eq!(
        close_code(&mut ws).await,
        (4004, "Session not found".into())
    );
    let mut ws = app.ws("garbage", "clientId=c").await;
    assert_eq!(close_code(&mut ws).await.0, 4004);
    // Still creating (activate not called yet) or just active: wait until provisioning settles
    // and archive it, then it is "not found" too.
    app.activate(&id, "c").await;
    app.post(&format!("/api/sessions/{id}/archive"), "").await;
    let mut ws = app.ws(&id, "clientId=c").await;
    assert_eq!(close_code(&mut ws).await.0, 4004);
    app.shutdown().await;
}

#[tokio::test]
async fn a_session_that_is_not_active_is_refused_with_4003() {
    let app = spawn_app().await;
    app.fake
        .fail_next(relay_sandbox::fake::FakeOp::Create, "no");
    let id = app.create_session().await;
    app.activate(&id, "c").await;
    let mut ws = app.ws(&id, "clientId=c").await;
    assert_eq!(
        close_code(&mut ws).await,
        (
            4003,
            "Session not active \u{2014} call activate first".into()
        )
    );
    app.shutdown().await;
}

#[tokio::test]
async fn pi_lines_pass_through_verbatim_and_are_journaled_in_order() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let (mut ws, connected) = app.connect(&id, "c1", 0).await;
    assert_eq!(
        connected,
        json!({"type": "connected", "sessionId": id, "lastSeq": 0})
    );
    send(&mut ws, json!({"id": "s1", "type": "get_state"})).await;
    let state = next_json(&mut ws).await;
    assert_eq!(state["id"], "s1");
    assert_eq!(state["command"], "get_state");
    assert_eq!(
        state["data"]["sessionId"], id,
        "pi runs with the session's own id"
    );
    let frames = prompt(&mut ws, "p1", "Run echo hi please").await;
    assert_eq!(frames[0]["type"], "response");
    assert!(frames.iter().any(|f| f["type"] == "agent_end"));
    assert!(frames.iter().any(|f| f["type"] == "tool_execution_end"));
    // No relay field is added to pi's lines.
    assert!(frames.iter().all(|f| f.get("seq").is_none()));

    let journal = app
        .get(&format!("/api/sessions/{id}/events?limit=1000"))
        .await
        .body["data"]["events"]
        .clone();
    let journal = journal.as_array().unwrap();
    // get_state response, the prompt, then every line of the run.
    assert_eq!(journal.len(), 2 + frames.len());
    assert_eq!(journal[1]["type"], "prompt");
    let replayed: Vec<&Value> = journal.iter().skip(2).map(|e| &e["payload"]).collect();
    assert_eq!(replayed, frames.iter().collect::<Vec<_>>());
    for (i, e) in journal.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1);
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_reconnecting_client_gets_exactly_what_it_missed() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let (mut a, _) = app.connect(&id, "a", 0).await;
    send(
        &mut a,
        json!({"id": "p1", "type": "prompt", "message": "first"}),
    )
    .await;
    let first_run = until_type(&mut a, "agent_settled").await;
    let seen = 1 + first_run.len() as u64; // the prompt is journaled too
    send(
        &mut a,
        json!({"id": "p2", "type": "prompt", "message": "second"}),
    )
    .await;
    let second_run = until_type(&mut a, "agent_settled").await;
    let total = seen + 1 + second_run.len() as u64;

    let (mut b, connected) = app.connect(&id, "b", seen).await;
    assert_eq!(connected["lastSeq"], total);
    let start = next_json(&mut b).await;
    assert_eq!(
        start,
        json!({"type": "replay_start", "fromSeq": seen, "toSeq": total})
    );
    let replay = until_type(&mut b, "replay_end").await;
    let replay = &replay[..replay.len() - 1];
    assert_eq!(replay.len() as u64, total - seen);
    assert_eq!(replay[0]["type"], "prompt");
    assert_eq!(replay[0]["message"], "second");
    assert_eq!(&replay[1..], &second_run[..]);

    // Live events continue for both after the replay, with nothing repeated.
    send(&mut b, json!({"id": "g", "type": "get_state"})).await;
    assert_eq!(next_json(&mut b).await["id"], "g");
    assert_eq!(next_json(&mut a).await["id"], "g");

    // lastSeq 0 and lastSeq == current mean no replay.
    let (mut c, _) = app.connect(&id, "c", 0).await;
    let (mut d, _) = app.connect(&id, "d", total + 1).await;
    send(&mut c, json!({"id": "x", "type": "get_state"})).await;
    assert_eq!(next_json(&mut c).await["id"], "x");
    assert_eq!(next_json(&mut d).await["id"], "x");
    app.shutdown().await;
}

#[tokio::test]
async fn output_printed_while_nobody_is_connected_is_journaled() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let (mut a, _) = app.connect(&id, "a", 0).await;
    send(
        &mut a,
        json!({"id": "s", "type": "prompt", "message": "sleep 300"}),
    )
    .await;
    assert_eq!(next_json(&mut a).await["id"], "s");
    let before = app
        .get(&format!("/api/sessions/{id}/events?limit=1000"))
        .await
        .body["data"]["lastSeq"]
        .clone();
    drop(a);
    // The run finishes while no client is connected.
    app.until_journaled(&id, 0, "agent_settled", PROMPTLY).await;
    let (mut b, connected) = app.connect(&id, "b", before.as_u64().unwrap()).await;
    assert!(connected["lastSeq"].as_u64() > before.as_u64());
    let frames = until_type(&mut b, "replay_end").await;
    assert!(frames.iter().any(|f| f["type"] == "agent_settled"));
    app.shutdown().await;
}

#[tokio::test]
async fn many_clients_on_one_session_all_receive_every_event() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let mut clients = Vec::new();
    for i in 0..8 {
        // Two sockets share a clientId on purpose (the pi-apps dashboard opens two per page):
        // the newer of each pair receives, as with the pi-apps relay.
        clients.push(app.connect(&id, &format!("c{}", i / 2), 0).await.0);
    }
    send(
        &mut clients[2],
        json!({"id": "p", "type": "prompt", "message": "hello"}),
    )
    .await;
    let mut runs = Vec::new();
    for c in clients.iter_mut().skip(1).step_by(2) {
        runs.push(until_type(c, "agent_settled").await);
    }
    assert_eq!(runs.len(), 4);
    assert!(runs.windows(2).all(|w| w[0] == w[1]));
    for c in clients.iter_mut().step_by(2) {
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(100), next_json(c)).await;
        assert!(quiet.is_err(), "an older socket received {quiet:?}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn bad_frames_are_ignored_and_binary_frames_are_accepted() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let (mut ws, _) = app.connect(&id, "c", 0).await;
    ws.send(Message::Text("not json".into())).await.unwrap();
    ws.send(Message::Text(r#"{"type":"upload_file","id":"u"}"#.into()))
        .await
        .unwrap();
    ws.send(Message::Text(r#"{"id":"n"}"#.into()))
        .await
        .unwrap();
    ws.send(Message::Binary(vec![0xff, 0xfe, 0x00].into()))
        .await
        .unwrap();
    ws.send(Message::Binary(
        br#"{"id":"b","type":"get_state"}"#.to_vec().into(),
    ))
    .await
    .unwrap();
    // Pretty-printed JSON must not break pi's line framing.
    ws.send(Message::Text(
        "{\n  \"id\": \"pretty\",\n  \"type\": \"get_state\"\n}".into(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["id"], "b");
    assert_eq!(next_json(&mut ws).await["id"], "pretty");
    let journal =
        app.get(&format!("/api/sessions/{id}/events")).await.body["data"]["events"].clone();
    assert_eq!(journal.as_array().unwrap().len(), 2);
    app.shutdown().await;
}

#[tokio::test]
async fn an_oversized_frame_closes_that_socket_only() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let (mut big, _) = app.connect(&id, "big", 0).await;
    let (mut other, _) = app.connect(&id, "other", 0).await;
    let huge = "x".repeat(relay_api::MAX_CLIENT_MESSAGE + 1);
    let _ = big.send(Message::Text(huge.into())).await;
    assert_eq!(close_code(&mut big).await, (1009, "Message too big".into()));
    send(&mut other, json!({"id": "still", "type": "get_state"})).await;
    assert_eq!(next_json(&mut other).await["id"], "still");
    app.shutdown().await;
}

/// A frame announcing a gigabyte is refused from its header: the relay answers 1009 before a
/// byte of the payload is sent, so nothing of it is ever held in memory.
#[tokio::test]
async fn an_oversized_frame_is_refused_from_its_header_before_its_payload() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let (mut big, _) = app.connect(&id, "big", 0).await;
    // FIN + text, masked, 64-bit length of 1 GiB, a zero mask; no payload follows.
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 30).to_be_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]);
    raw(&mut big, &header).await;
    assert_eq!(close_code(&mut big).await, (1009, "Message too big".into()));
    app.shutdown().await;
}

#[tokio::test]
async fn non_json_output_and_huge_lines_from_pi_are_handled() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let (mut ws, _) = app.connect(&id, "c", 0).await;
    let frames = prompt(&mut ws, "n", "noise").await;
    assert!(frames.iter().all(|f| f.is_object()));
    let frames = prompt(&mut ws, "b", "big 300000").await;
    let big = frames
        .iter()
        .find(|f| f["type"] == "tool_execution_update")
        .unwrap();
    assert!(big.to_string().len() > 300_000);
    let logs = app.get(&format!("/api/sessions/{id}/logs")).await.body["data"]["lines"].to_string();
    assert!(logs.contains("npm WARN"), "{logs}");
    prompt(&mut ws, "e", "stderr something odd").await;
    let logs = app.get(&format!("/api/sessions/{id}/logs")).await.body["data"]["lines"].to_string();
    assert!(logs.contains("something odd"), "{logs}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_dead_container_is_reported_and_activate_brings_it_back() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let (mut ws, _) = app.connect(&id, "c", 0).await;
    let cid = relay_sandbox::SandboxId(
        app.get(&format!("/api/sessions/{id}")).await.body["data"]["sandboxProviderId"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    app.fake.kill(&cid, 137);
    let status = until_type(&mut ws, "sandbox_status").await.pop().unwrap();
    assert_eq!(status["status"], "stopped");
    // Commands now get a clear error instead of vanishing.
    send(&mut ws, json!({"id": "x", "type": "get_state"})).await;
    let err = next_json(&mut ws).await;
    assert_eq!(err["code"], "CHANNEL_DETACHED");
    eventually(|| async {
        app.get(&format!("/api/sessions/{id}/sandbox")).await.body["data"]["status"] == "stopped"
    })
    .await;
    let r = app.activate(&id, "c").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "sandbox_status", "status": "running"})
    );
    send(&mut ws, json!({"id": "y", "type": "get_state"})).await;
    let state = next_json(&mut ws).await;
    assert_eq!(state["id"], "y");
    assert_eq!(state["data"]["sessionId"], id);
    app.shutdown().await;
}

#[tokio::test]
async fn deleting_a_session_closes_its_clients() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let (mut ws, _) = app.connect(&id, "c", 0).await;
    app.delete(&format!("/api/sessions/{id}")).await;
    assert_eq!(close_code(&mut ws).await.0, 4004);
    app.shutdown().await;
}

#[tokio::test]
async fn shutting_down_the_relay_closes_clients_with_1001() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let (mut ws, _) = app.connect(&id, "c", 0).await;
    let closing = tokio::spawn(async move { close_code(&mut ws).await });
    app.shutdown().await;
    assert_eq!(closing.await.unwrap().0, 1001);
}

#[tokio::test]
async fn a_client_that_vanishes_mid_stream_loses_nothing_from_the_journal() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let (mut a, _) = app.connect(&id, "a", 0).await;
    send(
        &mut a,
        json!({"id": "f", "type": "prompt", "message": "flood 5000"}),
    )
    .await;
    // Read a little, then disappear without a close handshake.
    for _ in 0..10 {
        next_json(&mut a).await;
    }
    drop(a);
    app.until_journaled(&id, 5000, "agent_settled", PROMPTLY)
        .await;
    let total = app.activate(&id, "b").await.body["data"]["lastSeq"]
        .as_u64()
        .unwrap();
    // prompt, response, agent_start, 5000 deltas, agent_end, agent_settled
    assert_eq!(total, 5005);
    let mut seen = 0;
    let mut after = 0;
    loop {
        let page = app
            .get(&format!(
                "/api/sessions/{id}/events?afterSeq={after}&limit=1000"
            ))
            .await
            .body["data"]
            .clone();
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        for e in events {
            seen += 1;
            assert_eq!(e["seq"].as_u64().unwrap(), seen);
        }
        after = page["lastSeq"].as_u64().unwrap();
    }
    assert_eq!(seen, total);
    app.shutdown().await;
}

#[tokio::test]
async fn a_restarted_relay_reattaches_running_sandboxes_and_continues_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake(&dir);
    let first_args = args(dir.path(), &[]);
    let first = start(dir, first_args, fake.clone()).await;
    let id = first.active_session().await;
    let (mut ws, _) = first.connect(&id, "c", 0).await;
    send(&mut ws, json!({"id": "g1", "type": "get_state"})).await;
    assert_eq!(next_json(&mut ws).await["id"], "g1");
    drop(ws);
    let TestApp { relay, dir, .. } = first;
    relay.unwrap().shutdown().await;
    assert_eq!(fake.existing().len(), 1, "the sandbox outlives the relay");

    let args = args(dir.path(), &[]);
    let second = start(dir, args, fake.clone()).await;
    let (mut ws, connected) = second.connect(&id, "c", 0).await;
    assert_eq!(connected["lastSeq"], 1);
    send(&mut ws, json!({"id": "g2", "type": "get_state"})).await;
    assert_eq!(next_json(&mut ws).await["id"], "g2");
    let events =
        second.get(&format!("/api/sessions/{id}/events")).await.body["data"]["events"].clone();
    let seqs: Vec<u64> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2]);
    second.shutdown().await;
}

#[tokio::test]
async fn output_printed_while_the_relay_was_down_is_recovered_into_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake(&dir);
    let first_args = args(dir.path(), &[]);
    let first = start(dir, first_args, fake.clone()).await;
    let id = first.active_session().await;
    let (mut ws, _) = first.connect(&id, "c", 0).await;
    send(
        &mut ws,
        json!({"id": "s", "type": "prompt", "message": "sleep 1500"}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["id"], "s");
    assert_eq!(next_json(&mut ws).await["type"], "agent_start");
    drop(ws);
    let TestApp { relay, dir, .. } = first;
    relay.unwrap().shutdown().await;
    // pi finishes its run while no relay is attached (its output is only in the sandbox's log).
    eventually(|| async {
        use futures_util::StreamExt;
        use relay_sandbox::Sandbox;
        let [sandbox] = fake.existing().try_into().unwrap();
        let mut log = fake.stdout_history(&sandbox).await.unwrap();
        let mut text = Vec::new();
        while let Some(Ok(relay_sandbox::OutputChunk::Stdout(b))) = log.next().await {
            text.extend_from_slice(&b);
        }
        String::from_utf8_lossy(&text).contains("agent_settled")
    })
    .await;

    let args = args(dir.path(), &[]);
    let second = start(dir, args, fake.clone()).await;
    let (mut ws, connected) = second.connect(&id, "c", 3).await;
    assert_eq!(connected["lastSeq"], 5);
    assert_eq!(next_json(&mut ws).await["type"], "replay_start");
    let replay = until_type(&mut ws, "replay_end").await;
    let types: Vec<&str> = replay.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["agent_end", "agent_settled", "replay_end"]);
    let events =
        second.get(&format!("/api/sessions/{id}/events")).await.body["data"]["events"].clone();
    let seqs: Vec<u64> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let logs =
        second.get(&format!("/api/sessions/{id}/logs")).await.body["data"]["lines"].to_string();
    assert!(logs.contains("recovered 2 lines"), "{logs}");
    // And the session goes on.
    send(&mut ws, json!({"id": "g", "type": "get_state"})).await;
    assert_eq!(next_json(&mut ws).await["id"], "g");
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_and_can_resume() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let (mut stalled, _) = app.connect(&id, "stalled", 0).await;
    // The prompt comes from a client that leaves at once: one that read the flood could itself
    // fall 8 MiB behind on a loaded machine and be cut off too.
    let (mut driver, _) = app.connect(&id, "driver", 0).await;
    send(
        &mut driver,
        json!({"id": "f", "type": "prompt", "message": "flood 60000"}),
    )
    .await;
    driver.close(None).await.unwrap();
    drop(driver);
    // A large flood: allow for a loaded machine.
    let limit = std::time::Duration::from_secs(120);
    app.until_journaled(&id, 60_000, "agent_settled", limit)
        .await;
    // The stalled client never read: the relay lets go of its socket all the same (after its
    // close timeout). Then look at what it left in the socket: some frames, then the end, not
    // the whole flood.
    released(&app, local_port(&stalled)).await;
    let mut frames = 0u64;
    let ending = loop {
        use futures_util::StreamExt;
        match tokio::time::timeout(std::time::Duration::from_secs(10), stalled.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => frames += 1,
            Ok(Some(Ok(Message::Close(f)))) => break f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_))) | Ok(None) => break None,
            Err(_) => panic!("the relay kept the stalled socket open ({frames} frames read)"),
        }
    };
    assert!(frames < 60_000, "{frames}");
    assert!(ending.is_none() || ending == Some(4008), "{ending:?}");
    // It resumes from what it saw.
    let (mut again, connected) = app.connect(&id, "stalled", frames).await;
    let total = connected["lastSeq"].as_u64().unwrap();
    if frames > 0 && frames < total {
        assert_eq!(next_json(&mut again).await["type"], "replay_start");
        let replay = until_type(&mut again, "replay_end").await;
        assert_eq!(replay.len() as u64, total - frames + 1);
    }
    app.shutdown().await;
}

/// Writes `bytes` straight to the socket under a WebSocket client, bypassing its framing.
async fn raw(ws: &mut Ws, bytes: &[u8]) {
    use tokio::io::AsyncWriteExt;
    match ws.get_mut() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp.write_all(bytes).await.unwrap(),
        _ => unreachable!("tests connect without TLS"),
    }
}

/// A client frame: FIN set, `opcode`, masked with a zero key (so the payload goes as is).
fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn protocol_violations_are_answered_with_their_close_codes() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let cases: [(&str, Vec<u8>, u16); 3] = [
        (
            "invalid UTF-8 in a text frame",
            masked(0x1, &[0xff, 0xfe, 0x41]),
            1007,
        ),
        (
            "an unmasked client frame",
            vec![0x81, 0x02, b'h', b'i'],
            1002,
        ),
        ("a reserved opcode", masked(0x3, b"x"), 1002),
    ];
    for (what, frame, code) in cases {
        let (mut ws, _) = app.connect(&id, "c", 0).await;
        raw(&mut ws, &frame).await;
        assert_eq!(close_code(&mut ws).await.0, code, "{what}");
    }
    // The session is fine.
    let (mut ws, _) = app.connect(&id, "c", 0).await;
    send(&mut ws, json!({"id": "g", "type": "get_state"})).await;
    assert_eq!(next_json(&mut ws).await["id"], "g");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_during_a_replay_is_cut_off_and_can_resume() {
    let app = spawn_app_with(&["--ws-stall-timeout-secs", "1"]).await;
    let id = app.active_session().await;
    {
        let (mut driver, _) = app.connect(&id, "driver", 0).await;
        send(
            &mut driver,
            json!({"id": "f", "type": "prompt", "message": "flood 40000"}),
        )
        .await;
    }
    app.until_journaled(
        &id,
        40_000,
        "agent_settled",
        std::time::Duration::from_secs(120),
    )
    .await;
    // Asks for the whole journal (about 13 MB) and never reads: the session is quiet, so only
    // the stalled write can tell.
    let (stalled, _) = tokio_tungstenite::connect_async(format!(
        "{}/ws/sessions/{id}?clientId=stalled&lastSeq=1",
        app.ws_base
    ))
    .await
    .unwrap();
    released(&app, local_port(&stalled)).await;
    // What it reads now: some of the replay, then the end.
    let mut stalled = stalled;
    let mut frames = 0u64;
    let ending = loop {
        use futures_util::StreamExt;
        match tokio::time::timeout(PROMPTLY, stalled.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => frames += 1,
            Ok(Some(Ok(Message::Close(f)))) => break f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_))) | Ok(None) => break None,
            Err(_) => panic!("the relay kept the stalled socket open ({frames} frames read)"),
        }
    };
    assert!(ending.is_none() || ending == Some(4008), "{ending:?}");
    // connected and replay_start came first; the replay itself did not finish.
    let seen = frames.saturating_sub(2);
    assert!(seen < 40_000, "{frames}");
    // It resumes from what it saw, and gets exactly the rest.
    let (mut again, connected) = app.connect(&id, "stalled", 1 + seen).await;
    let total = connected["lastSeq"].as_u64().unwrap();
    assert_eq!(next_json(&mut again).await["type"], "replay_start");
    let replay = until_type(&mut again, "replay_end").await;
    assert_eq!(replay.len() as u64, total - (1 + seen) + 1);
    app.shutdown().await;
}

#[tokio::test]
async fn two_sockets_of_one_client_get_each_frame_once_on_the_newest() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    // What the pi-apps dashboard does on every session page: two sockets, one client id.
    let (mut older, _) = app.connect(&id, "page", 0).await;
    let (mut newer, _) = app.connect(&id, "page", 0).await;
    // A command from either socket is the client's; its replies reach the newest socket only.
    send(
        &mut older,
        json!({"id": "p1", "type": "prompt", "message": "hello"}),
    )
    .await;
    let replies = until_type(&mut newer, "agent_settled").await;
    assert!(
        replies.iter().any(|f| f["type"] == "agent_end"),
        "{replies:?}"
    );
    let silent =
        tokio::time::timeout(std::time::Duration::from_millis(300), next_json(&mut older)).await;
    assert!(silent.is_err(), "the older socket received {silent:?}");
    // The older closing leaves the newer as it was.
    older.close(None).await.unwrap();
    drop(older);
    let again = prompt(&mut newer, "p2", "again").await;
    assert_eq!(again.last().unwrap()["type"], "agent_settled");
    app.shutdown().await;
}

#[tokio::test]
async fn a_terminal_the_provider_cannot_open_is_refused_with_the_protocols_error_and_close() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let mut ws = app.ws(&format!("{id}/terminal"), "cols=80&rows=24").await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "error", "message": "Terminal not supported by this sandbox provider"})
    );
    assert_eq!(
        close_code(&mut ws).await,
        (4003, "Failed to open terminal".into())
    );
    let mut ws = app
        .ws("00000000-0000-4000-8000-000000000000/terminal", "")
        .await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "error", "message": "Session not found"})
    );
    assert_eq!(close_code(&mut ws).await.0, 4004);
    app.shutdown().await;
}
