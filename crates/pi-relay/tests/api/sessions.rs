//! REST behaviour of sessions, health, CORS, auth.

use relay_session::SessionStatus;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn health_and_index_answer_without_an_envelope() {
    let app = spawn_app().await;
    let r = app.get("/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        json!({"ok": true, "version": "0.1.0", "commit": "dev"})
    );
    let r = app.get("/api").await;
    assert_eq!(r.body["endpoints"]["health"], "GET /health");
    assert_eq!(r.body["endpoints"]["rpc"], "WS /rpc (not yet implemented)");
    app.shutdown().await;
}

/// One blocking HTTP/1.1 GET; returns the status line.
fn blocking_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{BufRead, Write};
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut status = String::new();
    std::io::BufReader::new(tcp).read_line(&mut status).unwrap();
    status.trim_end().to_owned()
}

#[tokio::test]
async fn health_is_answered_while_the_work_runtime_is_stuck() {
    let app = spawn_app().await;
    let addr = app.relay.as_ref().unwrap().addr;
    // This test's runtime is the relay's work runtime (one thread). Block it, and ask for
    // /health and for a session list from other threads: /health must be answered by the API
    // thread while the list waits for the work runtime.
    let (health_tx, health_rx) = std::sync::mpsc::channel();
    let (list_tx, list_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || health_tx.send(blocking_get(addr, "/health")));
    std::thread::spawn(move || list_tx.send(blocking_get(addr, "/api/sessions")));
    let health = health_rx.recv_timeout(std::time::Duration::from_secs(30));
    let list_while_blocked = list_rx.try_recv();
    assert_eq!(health.as_deref(), Ok("HTTP/1.1 200 OK"));
    assert!(list_while_blocked.is_err(), "{list_while_blocked:?}");
    // Unblocked, the list is answered too.
    let list = tokio::task::spawn_blocking(move || {
        list_rx.recv_timeout(std::time::Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(list.as_deref(), Ok("HTTP/1.1 200 OK"));
    app.shutdown().await;
}

#[tokio::test]
async fn every_error_of_the_http_layer_is_enveloped() {
    let app = spawn_app().await;
    for path in ["/nope", "/api/nope", "/api/sessions/x/nope"] {
        let r = app.get(path).await;
        assert_eq!(
            (r.status, r.body.clone()),
            (404, json!({"data": null, "error": "Not found"})),
            "{path}"
        );
    }
    // A known path with a method it does not take.
    let res = app
        .http
        .patch(format!("{}/api/sessions", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert!(res.headers().contains_key("allow"));
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body, json!({"data": null, "error": "Method not allowed"}));
    // A body over the route's limit (settings: 512 KiB).
    let big = json!({"key": "k", "value": "x".repeat(600 * 1024)}).to_string();
    let r = app.put("/api/settings", &big).await;
    assert_eq!(
        (r.status, r.body),
        (
            413,
            json!({"data": null, "error": "Request body too large"})
        )
    );
    // A WebSocket route asked for without an upgrade.
    let id = app.create_session().await;
    let r = app.get(&format!("/ws/sessions/{id}?clientId=c")).await;
    assert_eq!(r.body["data"], json!(null), "{}", r.body);
    assert!(r.body["error"].is_string(), "{}", r.body);
    app.shutdown().await;
}

#[tokio::test]
async fn cors_preflight_is_answered_with_204_and_permissive_headers() {
    let app = spawn_app().await;
    let res = app
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/api/sessions", app.base),
        )
        .header("origin", "http://dash.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    assert_eq!(h["access-control-allow-headers"], "content-type");
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("DELETE")
    );
    let res = app
        .http
        .get(format!("{}/api/sessions", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    assert!(res.headers().contains_key("x-request-id"));
    app.shutdown().await;
}

/// The pi-apps dashboard reads a new session once, right after creating it, and shows
/// "Starting…" for as long as what it read says `creating`: that read waits for the start.
#[tokio::test]
async fn a_new_session_read_right_after_creation_is_seen_started() {
    let app = spawn_app().await;
    let id = app.create_session().await;
    let s = app.get(&format!("/api/sessions/{id}")).await.body["data"].clone();
    assert_eq!(s["status"], "active", "{s}");
    assert!(s["sandboxProviderId"].is_string(), "{s}");
    // Lists are answered at once, whatever they hold.
    let r = app.get("/api/sessions").await;
    assert_eq!(r.status, 200);
    app.shutdown().await;
}

#[tokio::test]
async fn a_session_is_created_then_becomes_active_with_its_container() {
    let app = spawn_app().await;
    let r = app
        .post(
            "/api/sessions",
            r#"{"mode":"chat","firstPrompt":"  Fix   the bug ","modelProvider":"mock"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let s = &r.body["data"];
    let id = s["id"].as_str().unwrap().to_owned();
    assert_eq!(s["status"], "creating");
    assert_eq!(s["name"], "Fix the bug");
    assert_eq!(s["firstUserMessage"], "Fix   the bug");
    assert_eq!(s["currentModelProvider"], "mock");
    assert_eq!(s["wsEndpoint"], format!("/ws/sessions/{id}"));
    assert!(r.body["error"].is_null());

    let a = app.activate(&id, "c1").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body["data"],
        json!({"sessionId": id, "status": "active", "lastSeq": 0, "sandboxStatus": "running", "wsEndpoint": format!("/ws/sessions/{id}")})
    );
    let s = app.get(&format!("/api/sessions/{id}")).await.body["data"].clone();
    assert_eq!(s["status"], "active");
    assert!(s["sandboxProviderId"].as_str().unwrap().len() > 10);
    assert_eq!(s["sandboxImageDigest"], "sha256:fake-test-image:latest");

    // The container follows the sandbox contract.
    let specs = app.fake.created_specs();
    assert_eq!(specs.len(), 1);
    let spec = &specs[0];
    assert_eq!(spec.name, format!("pi-sandbox-{id}"));
    assert_eq!(spec.labels["pi-relay.session"], id);
    assert!(spec.labels.contains_key("pi-relay.instance"));
    assert_eq!(
        spec.command,
        ["pi", "--mode", "rpc", "--session-id", id.as_str()]
    );
    assert_ne!(spec.user.0, 0);
    assert!(spec.hardened);
    assert_eq!(spec.session_id, id);
    assert_eq!(spec.working_dir, "/workspace");
    // The provider keeps the session's files at the contract's host paths.
    let state = app.state_dir();
    for dir in [
        format!("sessions/{id}/workspace"),
        format!("sessions/{id}/agent"),
        format!("pi-secrets-{id}"),
    ] {
        assert!(state.join(&dir).is_dir(), "{dir}");
    }
    assert!(spec.env.iter().all(|(k, _)| !k.contains("KEY")));

    let sb = app.get(&format!("/api/sessions/{id}/sandbox")).await;
    assert_eq!(sb.body["data"]["status"], "running");
    assert_eq!(sb.body["data"]["provider"], "docker");
    assert_eq!(sb.body["data"]["capabilities"]["losslessPause"], true);
    app.shutdown().await;
}

#[tokio::test]
async fn create_rejects_bad_input_with_the_protocol_errors() {
    let app = spawn_app().await;
    for (body, status, error) in [
        ("{not json", 400, "Invalid JSON body"),
        ("", 400, "Invalid JSON body"),
        ("[1,2]", 400, "Invalid JSON body"),
        (r#"{"mode":"talk"}"#, 400, "mode must be 'chat' or 'code'"),
        (r#"{"mode":5}"#, 400, "mode must be 'chat' or 'code'"),
        (
            r#"{"mode":"code"}"#,
            400,
            "repoId is required for code mode",
        ),
        (
            r#"{"mode":"chat","environmentId":"nope"}"#,
            404,
            "Environment not found",
        ),
        (
            r#"{"mode":"chat","firstPrompt":42}"#,
            400,
            "firstPrompt must be a string",
        ),
    ] {
        let r = app.post("/api/sessions", body).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (status, Some(error)),
            "{body}"
        );
        assert!(r.body["data"].is_null());
    }
    assert_eq!(app.get("/api/sessions").await.body["data"], json!([]));
    app.shutdown().await;
}

#[tokio::test]
async fn activate_checks_client_id_before_the_session() {
    let app = spawn_app().await;
    let unknown = uuid::Uuid::new_v4();
    let r = app
        .post(&format!("/api/sessions/{unknown}/activate"), "{}")
        .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (400, Some("clientId is required"))
    );
    let r = app
        .post(
            &format!("/api/sessions/{unknown}/activate"),
            r#"{"clientId":7}"#,
        )
        .await;
    assert_eq!(r.status, 400);
    let r = app
        .post(&format!("/api/sessions/{unknown}/activate"), "oops")
        .await;
    assert_eq!(r.body["error"], "Invalid JSON body");
    let r = app.activate(&unknown.to_string(), "c").await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (404, Some("Session not found"))
    );
    let r = app.activate("../../etc", "c").await;
    assert_eq!(r.status, 404);
    app.shutdown().await;
}

#[tokio::test]
async fn malformed_and_unknown_ids_are_not_found_everywhere() {
    let app = spawn_app().await;
    for id in [
        "not-a-uuid",
        &uuid::Uuid::new_v4().to_string(),
        &"x".repeat(5000),
    ] {
        for path in ["", "/events", "/sandbox", "/logs"] {
            let r = app.get(&format!("/api/sessions/{id}{path}")).await;
            assert_eq!(
                (r.status, r.body["error"].as_str()),
                (404, Some("Session not found")),
                "{path}"
            );
        }
        assert_eq!(
            app.post(&format!("/api/sessions/{id}/archive"), "")
                .await
                .status,
            404
        );
        assert_eq!(app.delete(&format!("/api/sessions/{id}")).await.status, 404);
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_failed_provisioning_marks_the_session_error_and_leaves_no_container() {
    let app = spawn_app().await;
    app.fake
        .fail_next(relay_sandbox::fake::FakeOp::Start, "start exploded");
    let id = app.create_session().await;
    // Activate waits for provisioning: it answers 500 if the failure comes while it waits,
    // 409 if the session was already in error.
    let r = app.activate(&id, "c1").await;
    assert!(r.status == 500 || r.status == 409, "{}", r.body);
    assert_eq!(
        app.get(&format!("/api/sessions/{id}")).await.body["data"]["status"],
        "error"
    );
    assert!(app.fake.existing().is_empty(), "container left behind");
    let r = app.activate(&id, "c1").await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (409, Some("Session is in error state"))
    );
    let logs = app.get(&format!("/api/sessions/{id}/logs")).await;
    assert!(
        logs.body["data"]["lines"]
            .to_string()
            .contains("start exploded"),
        "{}",
        logs.body
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_missing_image_fails_provisioning_with_a_clear_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let args = args(dir.path(), &["--sandbox-image", "missing-image:1"]);
    let fake = fake(&dir);
    let app = start(dir, args, fake).await;
    let id = app.create_session().await;
    let status = app.activate(&id, "c").await.status;
    assert!(status == 500 || status == 409, "{status}");
    let logs = app.get(&format!("/api/sessions/{id}/logs")).await;
    assert!(
        logs.body["data"]["lines"]
            .to_string()
            .contains("missing-image"),
        "{}",
        logs.body
    );
    app.shutdown().await;
}

#[tokio::test]
async fn archive_removes_the_container_and_secrets_and_refuses_activation() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let secrets = app.state_dir().join(format!("pi-secrets-{id}"));
    assert!(secrets.exists());
    let r = app.post(&format!("/api/sessions/{id}/archive"), "").await;
    assert_eq!(r.body["data"], json!({"ok": true}));
    assert!(app.fake.existing().is_empty());
    assert!(!secrets.exists());
    assert!(
        app.state_dir()
            .join(format!("sessions/{id}/workspace"))
            .exists()
    );
    let r = app.activate(&id, "c").await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (410, Some("Session has been archived"))
    );
    // Archiving twice is fine.
    assert_eq!(
        app.post(&format!("/api/sessions/{id}/archive"), "")
            .await
            .status,
        200
    );
    let listed = app.get("/api/sessions?status=archived").await.body["data"].clone();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(
        app.get("/api/sessions?status=active").await.body["data"],
        json!([])
    );
    app.shutdown().await;
}

#[tokio::test]
async fn delete_removes_the_row_the_container_and_every_directory() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let root = app.state_dir().join(format!("sessions/{id}"));
    assert!(root.exists());
    let r = app.delete(&format!("/api/sessions/{id}")).await;
    assert_eq!(r.body["data"], json!({"ok": true}));
    assert_eq!(app.get(&format!("/api/sessions/{id}")).await.status, 404);
    assert!(!root.exists());
    assert!(!app.state_dir().join(format!("pi-secrets-{id}")).exists());
    assert!(app.fake.existing().is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn a_token_guards_every_route_but_health() {
    let app = spawn_app_with(&["--auth-token", "s3cret"]).await;
    let anon = reqwest::Client::new();
    let r = anon
        .get(format!("{}/api/sessions", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = anon
        .get(format!("{}/api/sessions", app.base))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = anon
        .get(format!("{}/health", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Query tokens only count on WebSocket routes.
    let r = anon
        .get(format!("{}/api/sessions?token=s3cret", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(app.get("/api/sessions").await.status, 200);
    let id = app.active_session().await;
    let denied =
        tokio_tungstenite::connect_async(format!("{}/ws/sessions/{id}?clientId=c", app.ws_base))
            .await;
    assert!(denied.is_err());
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "{}/ws/sessions/{id}?clientId=c&token=s3cret",
        app.ws_base
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "connected");
    app.shutdown().await;
}

#[tokio::test]
async fn capabilities_are_validated_and_echoed() {
    let app = spawn_app().await;
    let id = app.create_session().await;
    let path = format!("/api/sessions/{id}/clients/web-1/capabilities");
    let r = app
        .put(
            &path,
            r#"{"clientKind":"web","capabilities":{"extensionUI":true}}"#,
        )
        .await;
    assert_eq!(
        r.body["data"],
        json!({"sessionId": id, "clientId": "web-1", "capabilities": {"extensionUI": true}})
    );
    let r = app.put(&path, r#"{"capabilities":{}}"#).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (400, Some("capabilities.extensionUI is required"))
    );
    assert_eq!(
        app.put(&path, "nope").await.body["error"],
        "Invalid JSON body"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn events_are_paged_by_after_seq_and_limit() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let (mut ws, _) = app.connect(&id, "c1", 0).await;
    prompt(&mut ws, "p1", "hi").await;
    let all = app
        .get(&format!("/api/sessions/{id}/events?afterSeq=0&limit=1000"))
        .await
        .body["data"]
        .clone();
    let events = all["events"].as_array().unwrap();
    assert!(events.len() > 20);
    assert_eq!(events[0]["seq"], 1);
    assert_eq!(events[0]["type"], "prompt");
    assert_eq!(events[0]["payload"]["message"], "hi");
    assert!(events[0]["createdAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(all["lastSeq"], events.len());
    let page = app
        .get(&format!("/api/sessions/{id}/events?afterSeq=2&limit=3"))
        .await
        .body["data"]
        .clone();
    let seqs: Vec<_> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 4, 5]);
    assert_eq!(page["lastSeq"], 5);
    let empty = app
        .get(&format!("/api/sessions/{id}/events?afterSeq=100000"))
        .await
        .body["data"]
        .clone();
    assert_eq!(empty, json!({"events": [], "lastSeq": 100000}));
    let bad = app
        .get(&format!("/api/sessions/{id}/events?afterSeq=-1"))
        .await;
    assert_eq!(bad.status, 400);
    // The first prompt is recorded on the session; activate now reports the journal's end.
    let s = app.get(&format!("/api/sessions/{id}")).await.body["data"].clone();
    assert_eq!(s["firstUserMessage"], "hi");
    assert_eq!(
        app.activate(&id, "c1").await.body["data"]["lastSeq"],
        events.len()
    );
    app.shutdown().await;
}

#[tokio::test]
async fn restart_recreates_the_sandbox_and_keeps_clients_and_files() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let marker = app
        .state_dir()
        .join(format!("sessions/{id}/workspace/keep.txt"));
    std::fs::write(&marker, "x").unwrap();
    let old =
        app.get(&format!("/api/sessions/{id}")).await.body["data"]["sandboxProviderId"].clone();
    let (mut ws, _) = app.connect(&id, "c", 0).await;
    let r = app.post(&format!("/api/sessions/{id}/restart"), "").await;
    assert_eq!(
        r.body["data"],
        json!({"ok": true, "sandboxStatus": "creating"})
    );
    assert_eq!(next_json(&mut ws).await["status"], "stopped");
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "sandbox_status", "status": "running"})
    );
    assert_eq!(app.activate(&id, "c").await.status, 200);
    let new =
        app.get(&format!("/api/sessions/{id}")).await.body["data"]["sandboxProviderId"].clone();
    assert_ne!(old, new);
    assert_eq!(app.fake.existing().len(), 1, "the old container is gone");
    assert!(marker.exists());
    send(&mut ws, json!({"id": "g", "type": "get_state"})).await;
    assert_eq!(next_json(&mut ws).await["id"], "g");
    app.post(&format!("/api/sessions/{id}/archive"), "").await;
    let r = app.post(&format!("/api/sessions/{id}/restart"), "").await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (409, Some("Cannot restart archived session"))
    );
    assert_eq!(
        app.post(
            &format!("/api/sessions/{}/restart", uuid::Uuid::new_v4()),
            ""
        )
        .await
        .status,
        404
    );
    app.shutdown().await;
}

#[tokio::test]
async fn an_unused_session_is_paused_and_activate_resumes_it() {
    let app = spawn_app_with(&[
        "--idle-timeout-secs",
        "1",
        "--idle-grace-secs",
        "0",
        "--idle-check-interval-secs",
        "1",
    ])
    .await;
    let id = app.active_session().await;
    {
        let (mut ws, _) = app.connect(&id, "c", 0).await;
        prompt(&mut ws, "p", "hi").await;
    }
    eventually(|| async {
        app.get(&format!("/api/sessions/{id}")).await.body["data"]["status"] == "idle"
    })
    .await;
    assert_eq!(
        app.get(&format!("/api/sessions/{id}/sandbox")).await.body["data"]["status"],
        "paused"
    );
    let mut ws = app.ws(&id, "clientId=c").await;
    assert_eq!(close_code(&mut ws).await.0, 4003);
    let r = app.activate(&id, "c").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        app.get(&format!("/api/sessions/{id}/sandbox")).await.body["data"]["status"],
        "running"
    );
    let (mut ws, connected) = app.connect(&id, "c", 0).await;
    send(&mut ws, json!({"id": "g", "type": "get_state"})).await;
    let state = next_json(&mut ws).await;
    assert_eq!(state["id"], "g");
    // Same pi process, same conversation: nothing was lost while paused.
    assert_eq!(state["data"]["messageCount"], 5);
    assert!(connected["lastSeq"].as_u64().unwrap() > 20);
    app.shutdown().await;
}

#[tokio::test]
async fn activating_an_idle_session_restarts_its_idle_clock() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    {
        let (mut ws, _) = app.connect(&id, "c", 0).await;
        prompt(&mut ws, "p", "hi").await;
    }
    // A reaper of our own, run by hand (the relay's own checks once a minute).
    let policy = relay_session::reaper::IdlePolicy {
        timeout: std::time::Duration::from_secs(2),
        grace: std::time::Duration::ZERO,
    };
    let sessions = app.relay.as_ref().unwrap().sessions().clone();
    let clock = sessions.clock().clone();
    let reaper = relay_session::reaper::IdleReaper::new(
        sessions,
        policy,
        std::time::Duration::from_secs(60),
    );
    // Once the client has gone, quiet for longer than the timeout on the relay's activity clock.
    let hub = app
        .relay
        .as_ref()
        .unwrap()
        .sessions()
        .hubs()
        .get(&id)
        .unwrap();
    eventually(|| async { hub.status().await.clients == 0 }).await;
    clock.advance(std::time::Duration::from_millis(2500));
    assert_eq!(reaper.run_once().await, std::slice::from_ref(&id));
    let r = app.activate(&id, "c").await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Nothing happened for longer than the timeout before the activate, but the activate is
    // activity: the session stays awake for its client to connect.
    assert!(reaper.run_once().await.is_empty());
    assert_eq!(
        app.get(&format!("/api/sessions/{id}/sandbox")).await.body["data"]["status"],
        "running"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn startup_removes_sandboxes_and_directories_nobody_owns() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake(&dir);
    let first_args = args(dir.path(), &[]);
    let first = start(dir, first_args, fake.clone()).await;
    let kept = first.active_session().await;
    let archived = first.active_session().await;
    first
        .post(&format!("/api/sessions/{archived}/archive"), "")
        .await;
    let state = first.state_dir();
    let instance = std::fs::read_to_string(first.dir.path().join("data/instance-id")).unwrap();
    let TestApp { relay, dir, .. } = first;
    relay.unwrap().shutdown().await;

    // Left behind by a crash: a container and directories of a session that no longer exists,
    // a secrets directory of an archived session, and files that are not the relay's.
    let ghost = uuid::Uuid::new_v4().to_string();
    let mut spec = fake.created_specs()[0].clone();
    spec.name = format!("pi-sandbox-{ghost}");
    spec.labels.insert("pi-relay.session".into(), ghost.clone());
    spec.labels
        .insert("pi-relay.instance".into(), instance.trim().into());
    relay_sandbox::Sandbox::create(&fake, &spec).await.unwrap();
    let mut foreign = spec.clone();
    foreign.name = "someone-else".into();
    foreign
        .labels
        .insert("pi-relay.instance".into(), "another-relay".into());
    relay_sandbox::Sandbox::create(&fake, &foreign)
        .await
        .unwrap();
    std::fs::create_dir_all(state.join(format!("sessions/{ghost}/workspace"))).unwrap();
    std::fs::create_dir_all(state.join(format!("pi-secrets-{ghost}"))).unwrap();
    std::fs::create_dir_all(state.join(format!("pi-secrets-{archived}"))).unwrap();
    std::fs::create_dir_all(state.join("sessions/not-a-session")).unwrap();
    assert_eq!(fake.existing().len(), 3);

    let second_args = args(dir.path(), &[]);
    let second = start(dir, second_args, fake.clone()).await;
    let names: Vec<String> = relay_sandbox::Sandbox::list(&fake, &[])
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&format!("pi-sandbox-{kept}")));
    assert!(names.contains(&"someone-else".to_owned()));
    assert!(!state.join(format!("sessions/{ghost}")).exists());
    assert!(!state.join(format!("pi-secrets-{ghost}")).exists());
    assert!(!state.join(format!("pi-secrets-{archived}")).exists());
    assert!(
        state
            .join(format!("sessions/{archived}/workspace"))
            .exists()
    );
    assert!(state.join(format!("sessions/{kept}/workspace")).exists());
    assert!(state.join(format!("pi-secrets-{kept}")).exists());
    assert!(state.join("sessions/not-a-session").exists());
    second.shutdown().await;
}

#[tokio::test]
async fn two_activates_at_once_both_succeed_on_one_sandbox() {
    let app = spawn_app().await;
    let id = app.create_session().await;
    let (a, b) = tokio::join!(app.activate(&id, "a"), app.activate(&id, "b"));
    assert_eq!((a.status, b.status), (200, 200), "{} {}", a.body, b.body);
    assert_eq!(a.body["data"]["status"], "active");
    assert_eq!(app.fake.existing().len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn deleting_a_session_while_it_is_created_leaves_nothing_behind() {
    let app = spawn_app().await;
    let id = app.create_session().await;
    let r = app.delete(&format!("/api/sessions/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(app.get(&format!("/api/sessions/{id}")).await.status, 404);
    assert!(app.fake.existing().is_empty());
    assert!(!app.state_dir().join(format!("sessions/{id}")).exists());
    assert!(!app.state_dir().join(format!("pi-secrets-{id}")).exists());
    let r = app.activate(&id, "c").await;
    assert_eq!(r.status, 404);
    app.shutdown().await;
}

#[tokio::test]
async fn sessions_left_creating_by_a_stopped_relay_are_adopted_or_failed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake(&dir);
    let first_args = args(dir.path(), &[]);
    let first = start(dir, first_args, fake.clone()).await;
    let running = first.active_session().await;
    let gone = first.active_session().await;
    let gone_cid = relay_sandbox::SandboxId(
        first.get(&format!("/api/sessions/{gone}")).await.body["data"]["sandboxProviderId"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    let TestApp { relay, dir, .. } = first;
    relay.unwrap().shutdown().await;
    // As if the relay had died in the middle of provisioning both sessions: one container got
    // started, the other never did.
    relay_sandbox::Sandbox::remove(&fake, &gone_cid)
        .await
        .unwrap();
    {
        let store = relay_store::Store::open(&dir.path().join("data/relay.db")).unwrap();
        for id in [&running, &gone] {
            store
                .set_status(
                    id,
                    SessionStatus::Active.to(SessionStatus::Creating).unwrap(),
                    None,
                    "2026-01-01T00:00:00.000Z",
                )
                .await
                .unwrap();
        }
        store.barrier().await.unwrap();
    }

    let second_args = args(dir.path(), &[]);
    let second = start(dir, second_args, fake.clone()).await;
    let s = second.get(&format!("/api/sessions/{running}")).await.body["data"].clone();
    assert_eq!(s["status"], "active", "the running container was adopted");
    let (mut ws, _) = second.connect(&running, "c", 0).await;
    send(&mut ws, json!({"id": "g", "type": "get_state"})).await;
    assert_eq!(next_json(&mut ws).await["id"], "g");
    let s = second.get(&format!("/api/sessions/{gone}")).await.body["data"].clone();
    assert_eq!(s["status"], "error");
    assert!(
        s["statusReason"].as_str().is_some_and(|r| !r.is_empty()),
        "an error says why: {s}"
    );
    let active = second.get(&format!("/api/sessions/{running}")).await.body["data"].clone();
    assert!(active.get("statusReason").is_none(), "{active}");
    let r = second.activate(&gone, "c").await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (409, Some("Session is in error state"))
    );
    let logs =
        second.get(&format!("/api/sessions/{gone}/logs")).await.body["data"]["lines"].to_string();
    assert!(
        logs.contains("the relay stopped while the sandbox was being created"),
        "{logs}"
    );
    assert_eq!(fake.existing().len(), 1);
    second.shutdown().await;
}

#[tokio::test]
async fn a_sandbox_removed_while_the_relay_was_down_is_recreated_by_activate() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake(&dir);
    let first_args = args(dir.path(), &[]);
    let first = start(dir, first_args, fake.clone()).await;
    let id = first.active_session().await;
    {
        let (mut ws, _) = first.connect(&id, "c", 0).await;
        prompt(&mut ws, "p", "hi").await;
    }
    std::fs::write(
        first
            .state_dir()
            .join(format!("sessions/{id}/workspace/kept.txt")),
        "work",
    )
    .unwrap();
    let journal_before = first
        .get(&format!("/api/sessions/{id}/events?limit=1000"))
        .await
        .body["data"]["events"]
        .as_array()
        .unwrap()
        .len() as u64;
    let TestApp { relay, dir, .. } = first;
    relay.unwrap().shutdown().await;
    // Someone removes the container while the relay is away.
    let [old] = fake.existing().try_into().unwrap();
    relay_sandbox::Sandbox::remove(&fake, &old).await.unwrap();

    let second_args = args(dir.path(), &[]);
    let second = start(dir, second_args, fake.clone()).await;
    let s = second.get(&format!("/api/sessions/{id}/sandbox")).await;
    assert_eq!(s.body["data"]["status"], "error");
    let r = second.activate(&id, "c").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let [new] = fake.existing().try_into().unwrap();
    assert_ne!(new, old);
    let s = second.get(&format!("/api/sessions/{id}")).await.body["data"].clone();
    assert_eq!(s["status"], "active");
    assert_eq!(s["sandboxProviderId"], new.as_str());
    // Its files are there, and its journal goes on where it stopped.
    assert!(
        second
            .state_dir()
            .join(format!("sessions/{id}/workspace/kept.txt"))
            .exists()
    );
    let (mut ws, connected) = second.connect(&id, "c", journal_before).await;
    assert_eq!(connected["lastSeq"], journal_before);
    prompt(&mut ws, "p2", "again").await;
    let events = second
        .get(&format!("/api/sessions/{id}/events?limit=1000"))
        .await
        .body["data"]["events"]
        .clone();
    let seqs: Vec<u64> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(seqs.len() as u64 > journal_before);
    let logs =
        second.get(&format!("/api/sessions/{id}/logs")).await.body["data"]["lines"].to_string();
    assert!(logs.contains("the sandbox was gone"), "{logs}");
    second.shutdown().await;
}

#[tokio::test]
async fn meta_version_names_the_relay_and_its_commit() {
    let app = spawn_app().await;
    let r = app.get("/api/meta/version").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["data"]["relayVersion"], env!("CARGO_PKG_VERSION"));
    assert!(r.body["data"]["serverHash"].is_string());
    assert!(r.body["data"]["dashboardHash"].is_string());
    app.shutdown().await;
}

#[tokio::test]
async fn models_are_asked_of_pi_once_and_again_when_what_they_follow_from_changes() {
    let app = spawn_app().await;
    let r = app.get("/api/models").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["error"], Value::Null);
    let data = r.body["data"].clone();
    assert_eq!(data["source"], "fallback-environment");
    assert!(data["environmentId"].is_string());
    let models = data["models"].as_array().unwrap();
    assert_eq!(models.len(), 1, "fake-pi's model: {data}");
    assert!(models[0]["id"].is_string() && models[0]["provider"].is_string());
    // A throwaway sandbox answered; it is gone, with its files.
    let asked = app.fake.created_specs().len();
    assert_eq!(asked, 1);
    assert!(app.fake.existing().is_empty());
    let sessions = app.state_dir().join("sessions");
    assert_eq!(std::fs::read_dir(&sessions).map_or(0, |d| d.count()), 0);

    // Kept: nothing is started for the same question.
    assert_eq!(app.get("/api/models").await.body["data"], data);
    assert_eq!(app.fake.created_specs().len(), asked);
    // A new provider key changes pi's models.json: asked again. So does a refresh.
    let body =
        json!({"name": "k", "envVar": "ANTHROPIC_API_KEY", "kind": "ai_provider", "value": "sk"});
    assert_eq!(
        app.post("/api/secrets", &body.to_string()).await.status,
        201
    );
    app.get("/api/models").await;
    assert_eq!(app.fake.created_specs().len(), asked + 1);
    let r = app.post("/api/models/refresh", "").await;
    assert_eq!(r.body["data"], json!({"ok": true}));
    app.get("/api/models").await;
    assert_eq!(app.fake.created_specs().len(), asked + 2);
    // The environment the setting names is asked first.
    let env = app.get("/api/environments").await.body["data"][0]["id"].clone();
    let setting = json!({"key": "models_introspection", "value": {"environmentId": env}});
    app.put("/api/settings", &setting.to_string()).await;
    app.post("/api/models/refresh", "").await;
    let r = app.get("/api/models").await;
    assert_eq!(r.body["data"]["source"], "configured-environment");
    assert_eq!(r.body["data"]["environmentId"], env);
    app.shutdown().await;
}

#[tokio::test]
async fn models_degrade_to_the_last_answer_and_then_to_unavailable() {
    let app = spawn_app().await;
    app.get("/api/models").await;
    // The engine fails: the last answer is given, marked.
    app.post("/api/models/refresh", "").await;
    app.fake
        .fail_next(relay_sandbox::fake::FakeOp::Create, "the engine is down");
    let r = app.get("/api/models").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["data"]["source"], "fallback-cache");
    assert_eq!(r.body["data"]["degraded"], true);
    assert_eq!(r.body["data"]["models"].as_array().unwrap().len(), 1);
    assert!(
        r.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("the engine is down")),
        "{}",
        r.body
    );
    app.shutdown().await;

    let app = spawn_app().await;
    app.fake
        .fail_next(relay_sandbox::fake::FakeOp::Create, "the engine is down");
    let r = app.get("/api/models").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["data"]["source"], "unavailable");
    assert_eq!(r.body["data"]["models"], json!([]));
    assert!(r.body["error"].is_string());
    app.shutdown().await;
}

#[tokio::test]
async fn exec_checks_its_request_and_says_when_the_provider_cannot() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let path = format!("/api/sessions/{id}/exec");
    for (body, status, error) in [
        ("{", 400, "Invalid JSON body"),
        ("{}", 400, "command is required"),
        (
            r#"{"command":"ls","timeout":"x"}"#,
            400,
            "timeout must be a number of seconds",
        ),
        // The fake runs nothing but fake-pi.
        (
            r#"{"command":"ls"}"#,
            409,
            "Exec not supported by this sandbox provider",
        ),
    ] {
        let r = app.post(&path, body).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (status, Some(error)),
            "{body}"
        );
    }
    let r = app
        .post(
            "/api/sessions/00000000-0000-4000-8000-000000000000/exec",
            r#"{"command":"ls"}"#,
        )
        .await;
    assert_eq!(r.status, 404);
    let sandbox = app.get(&format!("/api/sessions/{id}/sandbox")).await;
    assert_eq!(sandbox.body["data"]["capabilities"]["exec"], false);
    app.shutdown().await;
}

#[tokio::test]
async fn history_and_export_serve_what_pi_wrote_and_never_follow_links() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let agent = app.state_dir().join(format!("sessions/{id}/agent"));
    let r = app.get(&format!("/api/sessions/{id}/history")).await;
    assert_eq!(r.status, 200);
    let before = r.body["data"]["entries"].as_array().unwrap().len();
    let dir = agent.join("sessions/--workspace--");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("2026-01-01_{id}.jsonl")),
        "{\"type\":\"session\",\"id\":\"s\"}\n\nbroken\n{\"type\":\"message\",\"id\":\"m\"}\n",
    )
    .unwrap();
    let r = app.get(&format!("/api/sessions/{id}/history")).await;
    let entries = r.body["data"]["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len(), before + 2, "{entries:?}");
    assert!(entries.iter().any(|e| e["id"] == "m"));

    let r = app.get(&format!("/api/sessions/{id}/export")).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (404, Some("Export not found"))
    );
    std::fs::write(
        agent.join(format!("exports/session-{id}.html")),
        "<h1>hi</h1>",
    )
    .unwrap();
    let res = reqwest::get(format!("{}/api/sessions/{id}/export", app.base))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(
        res.headers()["content-disposition"],
        format!("inline; filename=\"session-{id}.html\"")
    );
    assert_eq!(res.text().await.unwrap(), "<h1>hi</h1>");
    // What the agent links elsewhere is not read (the relay may run as root).
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.jsonl"), "{\"type\":\"leak\"}\n").unwrap();
    std::fs::write(outside.path().join(format!("session-{id}.html")), "leak").unwrap();
    std::fs::remove_dir_all(agent.join("exports")).unwrap();
    std::os::unix::fs::symlink(outside.path(), agent.join("exports")).unwrap();
    std::os::unix::fs::symlink(outside.path(), agent.join("sessions/linked")).unwrap();
    assert_eq!(
        app.get(&format!("/api/sessions/{id}/export")).await.status,
        404
    );
    let r = app.get(&format!("/api/sessions/{id}/history")).await;
    assert!(!r.body.to_string().contains("leak"));
    let r = app
        .get("/api/sessions/00000000-0000-4000-8000-000000000000/history")
        .await;
    assert_eq!(r.status, 404);
    app.shutdown().await;
}

#[tokio::test]
async fn a_share_link_is_made_once_names_its_session_and_goes_with_it() {
    let app = spawn_app().await;
    let id = app.create_session().await;
    let r = app.post(&format!("/api/sessions/{id}/share"), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let share = r.body["data"].clone();
    let token = share["token"].as_str().unwrap().to_owned();
    assert_eq!(share["sessionId"], id);
    assert_eq!(share["url"], format!("/share/{token}"));
    assert!(share["createdAt"].is_string());
    let again = app.post(&format!("/api/sessions/{id}/share"), "").await;
    assert_eq!(again.body["data"], share, "the same link");
    let r = app.get(&format!("/api/sessions/share/{token}")).await;
    assert_eq!(r.body["data"]["sessionId"], id);
    assert_eq!(r.body["data"]["token"], token);
    assert!(r.body["data"].get("sessionName").is_some());
    for bad in ["nope", "00000000-0000-4000-8000-000000000000"] {
        let r = app.get(&format!("/api/sessions/share/{bad}")).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (404, Some("Share not found"))
        );
    }
    let r = app
        .post(
            "/api/sessions/00000000-0000-4000-8000-000000000000/share",
            "",
        )
        .await;
    assert_eq!(r.status, 404);
    app.delete(&format!("/api/sessions/{id}")).await;
    eventually(|| async {
        app.get(&format!("/api/sessions/share/{token}"))
            .await
            .status
            == 404
    })
    .await;
    app.shutdown().await;
}

#[tokio::test]
async fn uploads_are_checked_kept_listed_served_and_put_in_the_workspace() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let (status, r) = upload(&app, &id, "../notes/plan v1.md", "text/markdown", b"# plan").await;
    assert_eq!(status, 200, "{r}");
    let file = r["data"].clone();
    assert_eq!(file["name"], "plan-v1.md");
    assert_eq!(file["size"], 6);
    assert_eq!(file["writeDeferred"], false);
    let fid = file["id"].as_str().unwrap().to_owned();
    let in_sandbox = format!("/workspace/.pi-uploads/{fid}-plan-v1.md");
    assert_eq!(file["sandboxPath"], in_sandbox);
    let on_host = app.state_dir().join(format!(
        "sessions/{id}/workspace/.pi-uploads/{fid}-plan-v1.md"
    ));
    assert_eq!(std::fs::read(&on_host).unwrap(), b"# plan");
    // Images are kept but not put in the workspace (they travel inline in prompts).
    let (status, r) = upload(&app, &id, "a.png", "image/png", b"\x89PNG").await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["data"]["sandboxPath"], Value::Null);

    let list = app.get(&format!("/api/sessions/{id}/files")).await;
    let names: Vec<&str> = list.body["data"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["plan-v1.md", "a.png"]);
    let res = app
        .http
        .get(format!(
            "{}/api/sessions/{id}/files/{fid}/content",
            app.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/markdown");
    assert_eq!(res.headers()["content-security-policy"], "sandbox");
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"# plan");
    let r = app
        .get(&format!("/api/sessions/{id}/files/nope/content"))
        .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (404, Some("File not found"))
    );

    for (name, mime, content, error) in [
        (
            "x.bin",
            "application/octet-stream",
            &b"x"[..],
            "unsupported file type. allowed categories: images, text/code, docs",
        ),
        ("e.txt", "text/plain", &b""[..], "file is empty"),
    ] {
        let (status, r) = upload(&app, &id, name, mime, content).await;
        assert_eq!((status, r["error"].as_str()), (400, Some(error)), "{name}");
    }
    let r = app.post(&format!("/api/sessions/{id}/files"), "{}").await;
    assert_eq!(r.status, 400);
    // The settings bound size and count.
    for (key, value) in [
        ("session_file_upload_max_bytes", 4),
        ("session_file_upload_max_files", 2),
    ] {
        app.put(
            "/api/settings",
            &json!({"key": key, "value": value}).to_string(),
        )
        .await;
    }
    let (status, r) = upload(&app, &id, "big.txt", "text/plain", b"12345").await;
    assert_eq!(
        (status, r["error"].as_str()),
        (400, Some("file too large (max 4 bytes)"))
    );
    let (status, r) = upload(&app, &id, "c.txt", "text/plain", b"123").await;
    assert_eq!(
        (status, r["error"].as_str()),
        (400, Some("session file quota reached"))
    );
    // A link the agent put at the uploads directory is not followed.
    let outside = tempfile::tempdir().unwrap();
    let uploads = app
        .state_dir()
        .join(format!("sessions/{id}/workspace/.pi-uploads"));
    std::fs::remove_dir_all(&uploads).unwrap();
    std::os::unix::fs::symlink(outside.path(), &uploads).unwrap();
    app.put(
        "/api/settings",
        &json!({"key": "session_file_upload_max_files", "value": 10}).to_string(),
    )
    .await;
    let (status, r) = upload(&app, &id, "d.txt", "text/plain", b"123").await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["data"]["writeDeferred"], true);
    assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    // Deleting the session deletes its files.
    app.delete(&format!("/api/sessions/{id}")).await;
    eventually(|| async { !app.state_dir().join(format!("uploads/{id}")).exists() }).await;
    app.shutdown().await;
}
