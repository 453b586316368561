//! `/api/secrets`: shapes and errors of the protocol, the stricter checks of this relay, and
//! what reaches a sandbox's secrets directory (and what never does).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::{Value, json};

use crate::helpers::*;

/// Creates a secret and returns its id.
async fn add(app: &TestApp, body: Value) -> String {
    let r = app.post("/api/secrets", &body.to_string()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["data"]["id"].as_str().unwrap().to_owned()
}

/// The files of a session's secrets directory: name → content.
fn secret_files(app: &TestApp, id: &str) -> Vec<(String, String)> {
    let dir = app.state_dir().join(format!("pi-secrets-{id}"));
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn files(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Every byte of the files directly in `dir` whose name starts with `prefix`.
pub(crate) fn bytes_of(dir: &Path, prefix: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) && e.path().is_file() {
            out.extend(std::fs::read(e.path()).unwrap());
        }
    }
    out
}

pub(crate) fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn a_secret_is_created_with_201_listed_without_its_value_and_deleted() {
    let app = spawn_app().await;
    let r = app
        .post(
            "/api/secrets",
            r#"{"name":"OpenAI","envVar":"OPENAI_API_KEY","kind":"ai_provider","value":"sk-created-1"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.body["error"].is_null());
    let s = r.body["data"].as_object().unwrap();
    let mut keys: Vec<&str> = s.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "createdAt",
            "enabled",
            "envVar",
            "id",
            "keyVersion",
            "kind",
            "name",
            "updatedAt"
        ],
        "SecretInfo, with no value and no domains key"
    );
    assert_eq!(s["name"], "OpenAI");
    assert_eq!(s["envVar"], "OPENAI_API_KEY");
    assert_eq!(s["kind"], "ai_provider");
    assert_eq!(s["enabled"], true);
    assert_eq!(s["keyVersion"], 1);
    let id = s["id"].as_str().unwrap().to_owned();

    // Defaults: kind env_var, enabled.
    let r = app
        .post(
            "/api/secrets",
            r#"{"name":"Token","envVar":"MY_TOKEN","value":"t"}"#,
        )
        .await;
    assert_eq!(r.body["data"]["kind"], "env_var");
    assert_eq!(r.body["data"]["enabled"], true);

    let list = app.get("/api/secrets").await;
    assert_eq!(list.status, 200);
    assert_eq!(list.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(list.body["data"][0]["id"], id.as_str());
    assert!(!list.body.to_string().contains("sk-created-1"));

    let r = app.delete(&format!("/api/secrets/{id}")).await;
    assert_eq!((r.status, &r.body["data"]), (200, &json!({"ok": true})));
    for r in [
        app.delete(&format!("/api/secrets/{id}")).await,
        app.put(&format!("/api/secrets/{id}"), r#"{"enabled":false}"#)
            .await,
        app.delete("/api/secrets/not-a-uuid").await,
    ] {
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (404, Some("Secret not found"))
        );
    }
    assert_eq!(
        app.get("/api/secrets").await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    app.shutdown().await;
}

#[tokio::test]
async fn create_rejects_bad_input_with_clear_messages_and_stores_nothing() {
    let app = spawn_app().await;
    let big = "x".repeat(64 * 1024 + 1);
    let cases: Vec<(String, &str)> = vec![
        ("{".into(), "Invalid JSON body"),
        ("[]".into(), "Invalid JSON body"),
        (r#"{"envVar":"A","value":"v"}"#.into(), "name is required"),
        (
            r#"{"name":" ","envVar":"A","value":"v"}"#.into(),
            "name is required",
        ),
        (r#"{"name":"n","value":"v"}"#.into(), "envVar is required"),
        (
            r#"{"name":"n","envVar":"  ","value":"v"}"#.into(),
            "envVar is required",
        ),
        (r#"{"name":"n","envVar":"A"}"#.into(), "value is required"),
        (
            r#"{"name":"n","envVar":"A","value":""}"#.into(),
            "value is required",
        ),
        (
            r#"{"name":"n","envVar":"A","value":" \n "}"#.into(),
            "value is required",
        ),
        (
            r#"{"name":"n","envVar":"A","value":5}"#.into(),
            "value is required",
        ),
        (
            r#"{"name":"n","envVar":"A","value":"v","kind":"ssh"}"#.into(),
            "kind must be one of: ai_provider, env_var, sandbox_provider",
        ),
        (
            r#"{"name":"n","envVar":"A=B","value":"v"}"#.into(),
            "envVar must not contain '='",
        ),
        (
            r#"{"name":"n","envVar":"A\u0000B","value":"v"}"#.into(),
            "envVar must not contain NUL bytes",
        ),
        (
            r#"{"name":"n","envVar":"MY-KEY","value":"v"}"#.into(),
            "envVar must be a shell variable name (letters, digits and '_', not starting with a digit): \"MY-KEY\"",
        ),
        (
            r#"{"name":"n","envVar":"9LIVES","value":"v"}"#.into(),
            "envVar must be a shell variable name (letters, digits and '_', not starting with a digit): \"9LIVES\"",
        ),
        (
            r#"{"name":"n","envVar":"HOME","value":"v"}"#.into(),
            "envVar 'HOME' is reserved for the sandbox itself",
        ),
        (
            r#"{"name":"n","envVar":"LD_PRELOAD","value":"v"}"#.into(),
            "envVar 'LD_PRELOAD' is reserved for the sandbox itself",
        ),
        (
            r#"{"name":"n","envVar":"A","value":"a\u0000b"}"#.into(),
            "value must not contain NUL bytes",
        ),
        (
            json!({"name": "n", "envVar": "A", "value": big}).to_string(),
            "value must be at most 65536 bytes",
        ),
        (
            r#"{"name":"n","envVar":"A","value":"v","enabled":"yes"}"#.into(),
            "enabled must be a boolean",
        ),
        (
            r#"{"name":"n","envVar":"A","value":"v","domains":"x.com"}"#.into(),
            "domains must be an array of strings",
        ),
        (
            r#"{"name":"n","envVar":"A","value":"v","domains":["https://x.com"]}"#.into(),
            "Domain pattern must not contain URL scheme: \"https://x.com\"",
        ),
        (
            r#"{"name":"n","envVar":"A","value":"v","domains":[" "]}"#.into(),
            "Domain pattern must not be empty",
        ),
    ];
    for (body, error) in cases {
        let r = app.post("/api/secrets", &body).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (400, Some(error)),
            "{}",
            &body[..body.len().min(80)]
        );
    }
    // Exactly at the limit is fine.
    let max = "y".repeat(64 * 1024);
    add(&app, json!({"name": "big", "envVar": "BIG", "value": max})).await;
    assert_eq!(
        app.get("/api/secrets").await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    app.shutdown().await;
}

#[tokio::test]
async fn duplicate_variable_names_are_refused_in_any_case_and_the_first_value_stays() {
    let app = spawn_app().await;
    add(
        &app,
        json!({"name": "a", "envVar": "OPENAI_API_KEY", "value": "first"}),
    )
    .await;
    for env_var in ["OPENAI_API_KEY", " OPENAI_API_KEY ", "openai_api_key"] {
        let r = app
            .post(
                "/api/secrets",
                &json!({"name": "b", "envVar": env_var, "value": "second"}).to_string(),
            )
            .await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(
            r.body["error"],
            format!("A secret with envVar '{}' already exists", env_var.trim())
        );
    }
    // Renaming another secret onto it is refused too.
    let other = add(&app, json!({"name": "c", "envVar": "OTHER", "value": "v"})).await;
    let r = app
        .put(
            &format!("/api/secrets/{other}"),
            r#"{"envVar":"Openai_Api_Key"}"#,
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (
            400,
            Some("A secret with envVar 'Openai_Api_Key' already exists")
        )
    );
    let id = app.active_session().await;
    assert_eq!(
        secret_files(&app, &id),
        files(&[("openai_api_key", "first"), ("other", "v")])
    );
    app.shutdown().await;
}

async fn first_secret(app: &TestApp) -> Value {
    app.get("/api/secrets").await.body["data"][0].clone()
}

#[tokio::test]
async fn update_changes_what_it_is_given_and_validates_like_create() {
    let app = spawn_app().await;
    let id = add(
        &app,
        json!({"name": "n", "envVar": "MY_TOKEN", "value": "v1", "domains": ["API.x.com", "api.x.com"]}),
    )
    .await;
    let before = first_secret(&app).await;
    assert_eq!(before["domains"], json!(["api.x.com"]));

    for (body, error) in [
        ("{", "Invalid JSON body"),
        (r#"{"name":""}"#, "name is required"),
        (r#"{"envVar":""}"#, "envVar must not be empty"),
        (
            r#"{"envVar":"A B"}"#,
            "envVar must be a shell variable name (letters, digits and '_', not starting with a digit): \"A B\"",
        ),
        (r#"{"value":""}"#, "value is required"),
        (
            r#"{"kind":"x"}"#,
            "kind must be one of: ai_provider, env_var, sandbox_provider",
        ),
        (r#"{"enabled":1}"#, "enabled must be a boolean"),
        (
            r#"{"domains":["a/b"]}"#,
            "Domain pattern must not contain slash: \"a/b\"",
        ),
        (
            r#"{"domains":["a?b"]}"#,
            "Domain pattern must not contain query string: \"a?b\"",
        ),
    ] {
        let r = app.put(&format!("/api/secrets/{id}"), body).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (400, Some(error)),
            "{body}"
        );
    }
    assert_eq!(
        first_secret(&app).await,
        before,
        "a refused update changes nothing"
    );

    let r = app
        .put(
            &format!("/api/secrets/{id}"),
            r#"{"name":"Renamed","kind":"ai_provider","domains":[],"value":"v2"}"#,
        )
        .await;
    assert_eq!((r.status, &r.body["data"]), (200, &json!({"ok": true})));
    let after = first_secret(&app).await;
    assert_eq!(after["name"], "Renamed");
    assert_eq!(after["kind"], "ai_provider");
    assert_eq!(after["envVar"], "MY_TOKEN");
    assert!(after.get("domains").is_none(), "[] clears the domains");
    assert_eq!(after["createdAt"], before["createdAt"]);
    assert_ne!(after["updatedAt"], before["updatedAt"]);
    let session = app.active_session().await;
    assert!(
        secret_files(&app, &session).is_empty(),
        "a model key (kind ai_provider) stays with the relay"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn concurrent_updates_of_one_secret_leave_exactly_one_complete_value() {
    let app = spawn_app().await;
    let id = add(
        &app,
        json!({"name": "n", "envVar": "RACE_KEY", "value": "v-start"}),
    )
    .await;
    let values: Vec<String> = (0..32)
        .map(|i| format!("value-{i:02}-{}", "z".repeat(i * 97)))
        .collect();
    let puts = values.iter().map(|v| {
        let body = json!({"value": v, "name": format!("name-{}", v.len())}).to_string();
        let path = format!("/api/secrets/{id}");
        let app = &app;
        async move { app.put(&path, &body).await }
    });
    for r in futures_util::future::join_all(puts).await {
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // The stored value decrypts (no nonce of one value with the ciphertext of another) and is
    // one of those written, with the name written by the same request.
    let session = app.active_session().await;
    let got = secret_files(&app, &session);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "race_key");
    assert!(values.contains(&got[0].1), "{:?}", &got[0].1[..20]);
    let name = app.get("/api/secrets").await.body["data"][0]["name"].clone();
    assert_eq!(name, format!("name-{}", got[0].1.len()));
    app.shutdown().await;
}

#[tokio::test]
async fn sandboxes_get_enabled_model_keys_and_variables_but_never_relay_or_provider_secrets() {
    let app = spawn_app().await;
    for (env_var, kind, value, enabled) in [
        ("OPENAI_API_KEY", "ai_provider", "sk-openai", true),
        ("my_Token", "env_var", "  spaced value\n", true),
        ("CF_WORKER_SECRET", "sandbox_provider", "cf-secret", true),
        ("DISABLED_KEY", "env_var", "off-value", false),
        (
            "GITHUB_APP_PRIVATE_KEY",
            "env_var",
            "-----BEGIN KEY-----",
            true,
        ),
    ] {
        add(
            &app,
            json!({"name": env_var, "envVar": env_var, "kind": kind, "value": value, "enabled": enabled}),
        )
        .await;
    }
    let id = app.active_session().await;
    assert_eq!(
        secret_files(&app, &id),
        files(&[("my_token", "  spaced value\n")]),
        "values are delivered exactly (the entrypoint exports MY_TOKEN); the model key stays \
         with the relay, whose gateway adds it to the sandbox's model requests"
    );
    let dir = app.state_dir().join(format!("pi-secrets-{id}"));
    assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    for (name, _) in secret_files(&app, &id) {
        let meta = std::fs::metadata(dir.join(&name)).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o400, "{name}");
        let me = std::fs::metadata("/proc/self").unwrap().uid();
        assert_eq!(meta.uid(), if me == 0 { 1000 } else { me }, "{name}");
    }
    // Nothing secret travels in the container's configuration.
    let spec = format!("{:?}", app.fake.created_specs());
    for v in [
        "sk-openai",
        "spaced value",
        "cf-secret",
        "off-value",
        "BEGIN KEY",
    ] {
        assert!(!spec.contains(v), "{v} in the sandbox spec");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_sandbox_on_the_host_network_calls_its_providers_itself_with_the_key() {
    // No gateway there (a forwarder on the host's loopback would serve every session at once).
    let app = spawn_app_with(&["--sandbox-network", "host"]).await;
    for (env_var, kind) in [("OPENAI_API_KEY", "ai_provider"), ("MY_VAR", "env_var")] {
        add(
            &app,
            json!({"name": env_var, "envVar": env_var, "kind": kind, "value": "v"}),
        )
        .await;
    }
    let id = app.active_session().await;
    assert_eq!(
        secret_files(&app, &id),
        files(&[("my_var", "v"), ("openai_api_key", "v")])
    );
    let spec = format!("{:?}", app.fake.created_specs());
    assert!(
        !spec.contains("HTTPS_PROXY"),
        "no gateway, no proxy: {spec}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn secret_changes_reach_live_sessions_and_activate_and_restart_refresh_them() {
    let app = spawn_app().await;
    let first = add(&app, json!({"name": "a", "envVar": "A_KEY", "value": "a1"})).await;
    let id = app.active_session().await;
    assert_eq!(secret_files(&app, &id), files(&[("a_key", "a1")]));

    // Added, changed, disabled and deleted secrets show on disk at once.
    let second = add(&app, json!({"name": "b", "envVar": "B_KEY", "value": "b1"})).await;
    assert_eq!(
        secret_files(&app, &id),
        files(&[("a_key", "a1"), ("b_key", "b1")])
    );
    app.put(&format!("/api/secrets/{first}"), r#"{"value":"a2"}"#)
        .await;
    app.put(&format!("/api/secrets/{second}"), r#"{"enabled":false}"#)
        .await;
    assert_eq!(secret_files(&app, &id), files(&[("a_key", "a2")]));
    app.delete(&format!("/api/secrets/{first}")).await;
    assert!(secret_files(&app, &id).is_empty());

    // Activate rewrites the directory from the store, whatever happened to it.
    app.put(&format!("/api/secrets/{second}"), r#"{"enabled":true}"#)
        .await;
    let dir = app.state_dir().join(format!("pi-secrets-{id}"));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(app.activate(&id, "c1").await.status, 200);
    assert_eq!(secret_files(&app, &id), files(&[("b_key", "b1")]));

    // So does a restart, before the new container starts.
    std::fs::remove_file(dir.join("b_key")).unwrap();
    assert_eq!(
        app.post(&format!("/api/sessions/{id}/restart"), "")
            .await
            .status,
        200
    );
    assert_eq!(app.activate(&id, "c1").await.status, 200);
    assert_eq!(secret_files(&app, &id), files(&[("b_key", "b1")]));
    app.shutdown().await;
}

#[tokio::test]
async fn archived_sessions_keep_no_secret_files_not_even_after_a_secret_change() {
    let app = spawn_app().await;
    add(&app, json!({"name": "a", "envVar": "A_KEY", "value": "a1"})).await;
    let id = app.active_session().await;
    let dir = app.state_dir().join(format!("pi-secrets-{id}"));
    assert!(dir.exists());
    app.post(&format!("/api/sessions/{id}/archive"), "").await;
    assert!(!dir.exists());
    add(&app, json!({"name": "b", "envVar": "B_KEY", "value": "b1"})).await;
    assert!(!dir.exists());
    app.shutdown().await;
}

#[tokio::test]
async fn values_are_stored_encrypted_and_never_in_the_database_files() {
    let app = spawn_app().await;
    let value = format!("plain-{}", uuid::Uuid::new_v4());
    add(
        &app,
        json!({"name": "n", "envVar": "PLAIN_CHECK", "value": value}),
    )
    .await;
    let id = app.active_session().await;
    app.relay
        .as_ref()
        .unwrap()
        .sessions()
        .flush()
        .await
        .unwrap();
    let data = app.dir.path().join("data");
    let db = bytes_of(&data, "relay.db");
    assert!(db.len() > 4096, "the database files were read");
    assert!(!contains(&db, &value));
    assert!(!contains(
        &bytes_of(&app.dir.path().join("config"), ""),
        &value
    ));
    // Only the session's secrets directory holds it.
    assert_eq!(secret_files(&app, &id)[0].1, value);
    app.shutdown().await;
}

#[tokio::test]
async fn all_values_together_are_limited_to_one_mebibyte() {
    let app = spawn_app().await;
    let full = "f".repeat(64 * 1024);
    let mut ids = Vec::new();
    for i in 0..16 {
        ids.push(
            add(
                &app,
                json!({"name": "n", "envVar": format!("BIG_{i}"), "value": full}),
            )
            .await,
        );
    }
    let r = app
        .post(
            "/api/secrets",
            r#"{"name":"n","envVar":"ONE_MORE","value":"x"}"#,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .starts_with("all secret values together may hold at most 1048576 bytes"),
        "{}",
        r.body
    );
    // Replacing a value counts it once.
    let r = app
        .put(
            &format!("/api/secrets/{}", ids[0]),
            &json!({"value": "g".repeat(64 * 1024)}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    app.delete(&format!("/api/secrets/{}", ids[1])).await;
    add(
        &app,
        json!({"name": "n", "envVar": "ONE_MORE", "value": "x"}),
    )
    .await;
    app.shutdown().await;
}
