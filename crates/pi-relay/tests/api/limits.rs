//! Bad input is refused clearly, and what one client sends cannot grow what every client gets:
//! labels with hidden characters, oversized text fields, reserved variables, and the size of
//! session lists and journal pages.

use serde_json::{Value, json};

use crate::helpers::*;

/// Labels that look like something they are not, or break a log line.
const HIDDEN: [&str; 4] = ["nul\u{0}", "rtl\u{202e}gpj.exe", "\u{feff}bom", "new\nline"];

#[tokio::test]
async fn labels_with_hidden_characters_are_refused_everywhere() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let hidden = "must not contain control characters, bidirectional overrides or byte-order marks";
    for label in HIDDEN {
        let cases = [
            (
                "POST",
                "/api/environments".to_owned(),
                json!({"name": label, "sandboxType": "docker"}),
            ),
            (
                "POST",
                "/api/sessions".to_owned(),
                json!({"mode": "chat", "sessionName": label}),
            ),
            (
                "POST",
                "/api/secrets".to_owned(),
                json!({"name": label, "envVar": "X", "value": "v"}),
            ),
            (
                "PUT",
                "/api/settings".to_owned(),
                json!({"key": label, "value": 1}),
            ),
            (
                "POST",
                format!("/api/sessions/{id}/activate"),
                json!({"clientId": label}),
            ),
        ];
        for (method, path, body) in cases {
            let r = match method {
                "POST" => app.post(&path, &body.to_string()).await,
                _ => app.put(&path, &body.to_string()).await,
            };
            let error = r.body["error"].as_str().unwrap_or_default().to_owned();
            assert_eq!(r.status, 400, "{method} {path} {label:?}: {}", r.body);
            assert!(error.ends_with(hidden), "{method} {path}: {error}");
        }
    }
    // In a path and in the WebSocket's query too.
    let r = app
        .put(
            &format!("/api/sessions/{id}/clients/rtl%E2%80%AEx/capabilities"),
            r#"{"capabilities":{"extensionUI":true}}"#,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let mut ws = app.ws(&id, "clientId=rtl%E2%80%AEx").await;
    let (code, reason) = close_code(&mut ws).await;
    assert_eq!(code, 4001);
    assert!(reason.ends_with(hidden), "{reason}");
    // Ordinary non-ASCII names are fine.
    let r = app
        .post(
            "/api/sessions",
            &json!({"mode": "chat", "sessionName": "Überprüfung 日本語 ✓"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    app.shutdown().await;
}

#[tokio::test]
async fn environments_may_not_set_the_variables_secrets_may_not() {
    let app = spawn_app().await;
    for key in [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "PATH",
        "HOME",
        "PI_SESSION_ID",
        "SHELL",
        "BASH_ENV",
    ] {
        let body = json!({"name": "e", "sandboxType": "docker",
                          "config": {"envVars": [{"key": key, "value": "x"}]}});
        let r = app.post("/api/environments", &body.to_string()).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (
                400,
                Some(format!("Env var key is reserved by the relay: {key}").as_str())
            ),
            "{key}"
        );
        let secret = json!({"name": "s", "envVar": key, "value": "x"});
        let r = app.post("/api/secrets", &secret.to_string()).await;
        assert_eq!(r.status, 400, "{key}: {}", r.body);
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_huge_first_prompt_does_not_grow_every_session_list() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let (mut ws, _) = app.connect(&id, "c", 0).await;
    let huge = "é".repeat(3 * 1024 * 1024);
    prompt(&mut ws, "p", &huge).await;
    // Recorded by the session's observer, after the prompt went to pi.
    eventually(|| async {
        app.get("/api/sessions").await.body["data"][0]["firstUserMessage"].is_string()
    })
    .await;
    let r = app.get("/api/sessions").await;
    let first = r.body["data"][0]["firstUserMessage"].as_str().unwrap();
    assert_eq!(
        first.chars().count(),
        relay_session::text::MAX_FIRST_MESSAGE_CHARS
    );
    assert!(r.body.to_string().len() < 64 * 1024);
    // At creation too; and a system prompt is refused rather than cut.
    let body = json!({"mode": "chat", "firstPrompt": "x".repeat(500_000)});
    let r = app.post("/api/sessions", &body.to_string()).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body["data"]["firstUserMessage"].as_str().unwrap().len(),
        2000
    );
    assert_eq!(r.body["data"]["name"].as_str().unwrap().chars().count(), 73);
    let body = json!({"mode": "chat", "systemPrompt": "x".repeat(70 * 1024)});
    let r = app.post("/api/sessions", &body.to_string()).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (400, Some("systemPrompt must be at most 65536 bytes"))
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_journal_page_is_bounded_in_bytes_as_well_as_count() {
    let app = spawn_app().await;
    let id = app.active_session().await;
    let (mut ws, _) = app.connect(&id, "c", 0).await;
    // Six prompts of 3 MiB each: 18 MiB of journal in a handful of events.
    for i in 0..6 {
        prompt(&mut ws, &format!("p{i}"), &"x".repeat(3 * 1024 * 1024)).await;
    }
    let mut after = 0;
    let mut pages = 0;
    let mut seen = 0;
    loop {
        let res = app
            .http
            .get(format!(
                "{}/api/sessions/{id}/events?afterSeq={after}&limit=10000",
                app.base
            ))
            .send()
            .await
            .unwrap();
        let bytes = res.bytes().await.unwrap();
        // A page ends once it holds 8 MiB of payloads (plus the one that crossed the line).
        assert!(
            bytes.len() < 12 * 1024 * 1024,
            "page of {} bytes",
            bytes.len()
        );
        let page: Value = serde_json::from_slice(&bytes).unwrap();
        let events = page["data"]["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        seen += events.len();
        after = page["data"]["lastSeq"].as_u64().unwrap();
        pages += 1;
    }
    assert!(pages >= 3, "{pages} pages");
    assert_eq!(seen as u64, after, "every event once, in order");
    app.shutdown().await;
}

#[tokio::test]
async fn what_the_relay_keeps_on_disk_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app().await;
    let id = app.active_session().await;
    let secret = json!({"name": "s", "envVar": "MY_TOKEN", "value": "v"});
    assert_eq!(
        app.post("/api/secrets", &secret.to_string()).await.status,
        201
    );
    app.relay
        .as_ref()
        .unwrap()
        .sessions()
        .flush()
        .await
        .unwrap();
    let root = app.dir.path();
    let state = app.state_dir();
    let mode = |p: std::path::PathBuf| {
        let m = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        m.permissions().mode() & 0o777
    };
    let expected = [
        (root.join("data"), 0o700),
        (root.join("config"), 0o700),
        (state.clone(), 0o700),
        (root.join("data/relay.db"), 0o600),
        (root.join("data/relay.db-wal"), 0o600),
        (root.join("data/relay.db-shm"), 0o600),
        (root.join("data/relay.db.lock"), 0o600),
        (root.join("config/encryption.key"), 0o600),
        (state.join("sessions"), 0o700),
        (state.join(format!("sessions/{id}")), 0o750),
        (state.join(format!("pi-secrets-{id}")), 0o700),
        (state.join(format!("pi-secrets-{id}/my_token")), 0o400),
    ];
    for (path, want) in expected {
        assert_eq!(mode(path.clone()), want, "{}", path.display());
    }
    app.shutdown().await;
}

#[tokio::test]
async fn the_token_can_come_from_a_file() {
    use std::os::unix::fs::PermissionsExt;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "file-t0ken\n").unwrap();
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let app = spawn_app_with(&["--auth-token-file", file.path().to_str().unwrap()]).await;
    assert_eq!(app.token.as_deref(), Some("file-t0ken"));
    assert_eq!(app.get("/api/sessions").await.status, 200);
    let bare = app
        .http
        .get(format!("{}/api/sessions", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 401);
    app.shutdown().await;
}
