//! `/api/settings`: stored values come back, protected keys neither come back nor can be
//! written, and known keys are validated.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn settings_are_stored_and_returned_but_protected_keys_never_are() {
    let app = spawn_app().await;
    assert_eq!(app.get("/api/settings").await.body["data"], json!({}));
    for (key, value) in [
        ("theme", json!("dark")),
        (
            "idle_policy",
            json!({"defaultTimeoutSeconds": 900, "graceAfterDisconnectSeconds": 0, "disableForModes": ["code"]}),
        ),
        ("models_introspection", json!({"environmentId": "e1"})),
        ("chat_mode_prompt_profile", json!("terse")),
        (
            "session_defaults",
            json!({"chat": {"modelProvider": "mock", "modelId": "m"}}),
        ),
    ] {
        let r = app
            .put(
                "/api/settings",
                &json!({"key": key, "value": value}).to_string(),
            )
            .await;
        assert_eq!(
            (r.status, &r.body["data"]),
            (200, &json!({"ok": true})),
            "{key}"
        );
    }
    // Written by the relay itself (not through the API): a credential.
    {
        let store = relay_store::Store::open(&app.dir.path().join("data/relay.db")).unwrap();
        store
            .put_setting("github_repos_access_token", "\"ghp_not_for_clients\"", "t")
            .await
            .unwrap();
        store.barrier().await.unwrap();
    }
    let r = app.get("/api/settings").await;
    assert_eq!(r.status, 200);
    let data = &r.body["data"];
    assert_eq!(data["theme"], "dark");
    assert_eq!(data["idle_policy"]["defaultTimeoutSeconds"], 900);
    assert_eq!(data["session_defaults"]["chat"]["modelId"], "m");
    assert!(data.get("github_repos_access_token").is_none());
    assert!(!r.body.to_string().contains("ghp_not_for_clients"));

    // Overwriting keeps one value.
    app.put("/api/settings", r#"{"key":"theme","value":"light"}"#)
        .await;
    assert_eq!(
        app.get("/api/settings").await.body["data"]["theme"],
        "light"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn bad_settings_are_refused_with_clear_messages() {
    let app = spawn_app().await;
    for (body, error) in [
        ("{", "Invalid JSON body"),
        (r#"{"value":1}"#, "Key is required"),
        (r#"{"key":" ","value":1}"#, "Key is required"),
        (r#"{"key":7,"value":1}"#, "Key is required"),
        (r#"{"key":"theme"}"#, "value is required"),
        (
            r#"{"key":"github_repos_access_token","value":"x"}"#,
            "Cannot modify protected setting",
        ),
        (
            r#"{"key":"github_app_config","value":{}}"#,
            "Cannot modify protected setting",
        ),
        (
            r#"{"key":"idle_policy","value":{"defaultTimeoutSeconds":0,"graceAfterDisconnectSeconds":1}}"#,
            "idle_policy.defaultTimeoutSeconds must be an integer > 0",
        ),
        (
            r#"{"key":"idle_policy","value":{"defaultTimeoutSeconds":60,"graceAfterDisconnectSeconds":-1}}"#,
            "idle_policy.graceAfterDisconnectSeconds must be an integer >= 0",
        ),
        (
            r#"{"key":"idle_policy","value":{"defaultTimeoutSeconds":60,"graceAfterDisconnectSeconds":1,"disableForModes":["x"]}}"#,
            "idle_policy.disableForModes must be an array of \"chat\" or \"code\"",
        ),
        (
            r#"{"key":"idle_policy","value":"off"}"#,
            "idle_policy must be an object",
        ),
        (
            r#"{"key":"models_introspection","value":{"environmentId":""}}"#,
            "models_introspection.environmentId must be a non-empty string",
        ),
        (
            r#"{"key":"chat_mode_prompt_profile","value":{}}"#,
            "chat_mode_prompt_profile must be a string",
        ),
    ] {
        let r = app.put("/api/settings", body).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (400, Some(error)),
            "{body}"
        );
    }
    assert_eq!(app.get("/api/settings").await.body["data"], json!({}));
    app.shutdown().await;
}

#[tokio::test]
async fn sandbox_providers_reports_docker_and_no_gondolin() {
    let app = spawn_app().await;
    let r = app.get("/api/settings/sandbox-providers").await;
    assert_eq!(
        r.body["data"],
        json!({"docker": {"available": true}, "gondolin": {"available": false}})
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_idle_policy_setting_replaces_the_configured_timeout_and_exempts_modes() {
    // Configured to pause after an hour: only the setting can make it sooner. The relay's reaper
    // is run by hand here, after time has passed on the relay's activity clock.
    let app = spawn_app_with(&["--idle-grace-secs", "0"]).await;
    let relay = app.relay.as_ref().unwrap();
    let policy = |exempt: &[&str]| {
        json!({"key": "idle_policy", "value": {"defaultTimeoutSeconds": 1,
               "graceAfterDisconnectSeconds": 0, "disableForModes": exempt}})
        .to_string()
    };
    assert_eq!(
        app.put("/api/settings", &policy(&["chat"])).await.status,
        200
    );
    let id = app.active_session().await;
    relay
        .sessions()
        .clock()
        .advance(std::time::Duration::from_secs(5));
    assert!(
        relay.reaper.run_once().await.is_empty(),
        "chat sessions are exempt"
    );
    let path = format!("/api/sessions/{id}");
    assert_eq!(app.get(&path).await.body["data"]["status"], "active");

    assert_eq!(app.put("/api/settings", &policy(&[])).await.status, 200);
    assert_eq!(relay.reaper.run_once().await, std::slice::from_ref(&id));
    assert_eq!(app.get(&path).await.body["data"]["status"], "idle");
    app.shutdown().await;
}
