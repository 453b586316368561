//! `/api/environments`: create, list, get, update, delete, the default environment, the image
//! list, validation, and sessions built from an environment's config.

use serde_json::{Value, json};

use crate::helpers::*;

async fn create_env(app: &TestApp, body: Value) -> Value {
    let r = app.post("/api/environments", &body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["data"].clone()
}

async fn default_env(app: &TestApp) -> Value {
    let all = app.get("/api/environments").await.body["data"].clone();
    all.as_array()
        .unwrap()
        .iter()
        .find(|e| e["isDefault"] == true)
        .unwrap()
        .clone()
}

#[tokio::test]
async fn environments_are_created_listed_fetched_and_one_is_always_the_default() {
    let app = spawn_app().await;
    let list = app.get("/api/environments").await;
    assert_eq!(list.status, 200);
    let all = list.body["data"].as_array().unwrap().clone();
    assert_eq!(all.len(), 1, "the relay creates a default environment");
    assert_eq!(all[0]["name"], "Default");
    assert_eq!(all[0]["isDefault"], true);
    assert_eq!(all[0]["config"], json!({}));

    let e = create_env(
        &app,
        json!({"name": " Small ", "sandboxType": "docker", "config": {
            "image": "pi-relay/sandbox-debian:dev", "resourceTier": "small",
            "idleTimeoutSeconds": 600, "networkMode": "none",
            "envVars": [{"key": " FOO ", "value": "bar"}]}}),
    )
    .await;
    let mut keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "config",
            "createdAt",
            "id",
            "isDefault",
            "name",
            "sandboxType",
            "updatedAt"
        ]
    );
    assert_eq!(e["name"], "Small");
    assert_eq!(e["isDefault"], false);
    assert_eq!(
        e["config"]["envVars"],
        json!([{"key": "FOO", "value": "bar"}])
    );
    let id = e["id"].as_str().unwrap();
    let got = app.get(&format!("/api/environments/{id}")).await;
    assert_eq!(got.body["data"], e);

    // Marking another one default un-marks the previous default.
    let big = create_env(
        &app,
        json!({"name": "Big", "sandboxType": "docker", "config": {"resourceTier": "large"}, "isDefault": true}),
    )
    .await;
    assert_eq!(default_env(&app).await["id"], big["id"]);
    let names: Vec<Value> = app.get("/api/environments").await.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].clone())
        .collect();
    assert_eq!(names, ["Default", "Small", "Big"], "creation order");

    for path in [
        "/api/environments/not-a-uuid".to_owned(),
        format!("/api/environments/{}", uuid::Uuid::new_v4()),
    ] {
        let r = app.get(&path).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (404, Some("Environment not found"))
        );
    }
    app.shutdown().await;
}

#[tokio::test]
async fn bad_environments_are_refused_with_clear_messages() {
    let app = spawn_app().await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"sandboxType": "docker"}), "name is required"),
        (
            json!({"name": " ", "sandboxType": "docker"}),
            "name is required",
        ),
        (
            json!({"name": "n"}),
            "sandboxType must be one of: docker, cloudflare, gondolin",
        ),
        (
            json!({"name": "n", "sandboxType": "vm"}),
            "sandboxType must be one of: docker, cloudflare, gondolin",
        ),
        (
            json!({"name": "n", "sandboxType": "gondolin"}),
            "sandboxType 'gondolin' is not supported by this relay; use docker",
        ),
        (
            json!({"name": "n", "sandboxType": "docker", "config": "x"}),
            "config must be an object",
        ),
        (
            json!({"name": "n", "sandboxType": "docker", "config": {"resourceTier": "xl"}}),
            "config.resourceTier must be one of: small, medium, large",
        ),
        (
            json!({"name": "n", "sandboxType": "docker", "config": {"idleTimeoutSeconds": 0}}),
            "config.idleTimeoutSeconds must be an integer between 60 and 86400",
        ),
        (
            json!({"name": "n", "sandboxType": "docker", "config": {"idleTimeoutSeconds": -60}}),
            "config.idleTimeoutSeconds must be an integer between 60 and 86400",
        ),
        (
            json!({"name": "n", "sandboxType": "docker", "config": {"idleTimeoutSeconds": 90000}}),
            "config.idleTimeoutSeconds must be an integer between 60 and 86400",
        ),
        (
            json!({"name": "n", "sandboxType": "docker", "config": {"networkMode": "container:x"}}),
            "config.networkMode must be bridge, none, host or the name of a network",
        ),
        (
            json!({"name": "n", "sandboxType": "docker", "config": {"envVars": [{"key": "bad-key", "value": "x"}]}}),
            "Invalid env var key: bad-key",
        ),
        (
            json!({"name": "n", "sandboxType": "docker", "config": {"envVars": [{"key": "A", "value": "1"}, {"key": "A", "value": "2"}]}}),
            "Duplicate env var key: A",
        ),
        (
            json!({"name": "n", "sandboxType": "docker", "config": {"image": "registry.example/missing:1"}}),
            // The provider's own words (Docker's are checked by its tests).
            "Image 'registry.example/missing:1' is not present on the fake provider",
        ),
        (
            json!({"name": "n", "sandboxType": "docker", "isDefault": "yes"}),
            "isDefault must be a boolean",
        ),
    ];
    for (body, error) in cases {
        let r = app.post("/api/environments", &body.to_string()).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (400, Some(error)),
            "{body}"
        );
    }
    let r = app.post("/api/environments", "{").await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (400, Some("Invalid JSON body"))
    );
    assert_eq!(
        app.get("/api/environments").await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    app.shutdown().await;
}

#[tokio::test]
async fn update_replaces_the_config_after_validating_it() {
    let app = spawn_app().await;
    let e = create_env(
        &app,
        json!({"name": "e", "sandboxType": "docker", "config": {"resourceTier": "small", "idleTimeoutSeconds": 120}}),
    )
    .await;
    let path = format!("/api/environments/{}", e["id"].as_str().unwrap());
    let r = app
        .put(&path, r#"{"config":{"resourceTier":"huge"}}"#)
        .await;
    assert_eq!(r.status, 400);
    let r = app.put(&path, r#"{"name":""}"#).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (400, Some("name is required"))
    );
    assert_eq!(
        app.get(&path).await.body["data"],
        e,
        "refused updates change nothing"
    );

    let r = app
        .put(
            &path,
            r#"{"name":"renamed","config":{"networkMode":"host"}}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["data"]["name"], "renamed");
    assert_eq!(r.body["data"]["config"], json!({"networkMode": "host"}));
    let r = app
        .put(&format!("/api/environments/{}", uuid::Uuid::new_v4()), "{}")
        .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (404, Some("Environment not found"))
    );
    let r = app.put(&path, "nope").await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (400, Some("Invalid JSON body"))
    );
    app.shutdown().await;
}

#[tokio::test]
async fn sessions_use_their_environments_image_tier_network_and_variables() {
    let app = spawn_app().await;
    app.fake.add_image(
        "pi-relay/sandbox-debian:dev",
        &[("pi-relay.build-hash", "h")],
    );
    let e = create_env(
        &app,
        json!({"name": "e", "sandboxType": "docker", "config": {
            "image": "pi-relay/sandbox-debian:dev", "resourceTier": "small",
            "networkMode": "none", "envVars": [{"key": "FOO", "value": "bar"}]}}),
    )
    .await;
    let r = app
        .post(
            "/api/sessions",
            &json!({"mode": "chat", "environmentId": e["id"]}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.body["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["data"]["environmentId"], e["id"]);
    assert_eq!(app.activate(&id, "c").await.status, 200);
    let spec = app.fake.created_specs().pop().unwrap();
    assert_eq!(spec.image, "sha256:fake-pi-relay/sandbox-debian:dev");
    assert_eq!(spec.network, relay_sandbox::Network::None);
    assert_eq!(spec.limits.memory_bytes, Some(1024 * 1024 * 1024));
    assert_eq!(spec.limits.nano_cpus, Some(1_000_000_000));
    assert!(spec.env.contains(&("FOO".to_owned(), "bar".to_owned())));
    // A session without one uses the default environment: the relay's image.
    let other = app.active_session().await;
    let spec = app.fake.created_specs().pop().unwrap();
    assert!(spec.name.ends_with(&other));
    assert_eq!(spec.image, "sha256:fake-test-image:latest");
    app.shutdown().await;
}

#[tokio::test]
async fn an_environment_in_use_is_not_deleted_until_its_sessions_are_archived() {
    let app = spawn_app().await;
    let e = create_env(&app, json!({"name": "e", "sandboxType": "docker"})).await;
    let path = format!("/api/environments/{}", e["id"].as_str().unwrap());
    let r = app
        .post(
            "/api/sessions",
            &json!({"mode": "chat", "environmentId": e["id"]}).to_string(),
        )
        .await;
    let id = r.body["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(app.activate(&id, "c").await.status, 200);

    let r = app.delete(&path).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(
        r.body["error"],
        "Environment is used by 1 session(s) that are not archived; archive or delete them first"
    );
    assert_eq!(app.get(&path).await.status, 200);

    app.post(&format!("/api/sessions/{id}/archive"), "").await;
    let r = app.delete(&path).await;
    assert_eq!((r.status, &r.body["data"]), (200, &json!({"ok": true})));
    assert_eq!(app.get(&path).await.status, 404);
    assert_eq!(app.delete(&path).await.status, 404);
    let s = app.get(&format!("/api/sessions/{id}")).await.body["data"].clone();
    assert_eq!(s["status"], "archived");
    assert!(s["environmentId"].is_null());
    app.shutdown().await;
}

#[tokio::test]
async fn the_default_environment_is_neither_deleted_nor_unmarked_only_replaced() {
    let app = spawn_app().await;
    let default = default_env(&app).await;
    let path = format!("/api/environments/{}", default["id"].as_str().unwrap());
    let r = app.delete(&path).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (
            409,
            Some(
                "Cannot delete the default environment; make another environment the default first"
            )
        )
    );
    let r = app.put(&path, r#"{"isDefault":false}"#).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("stays the default")
    );

    let other = create_env(&app, json!({"name": "next", "sandboxType": "docker"})).await;
    let r = app
        .put(
            &format!("/api/environments/{}", other["id"].as_str().unwrap()),
            r#"{"isDefault":true}"#,
        )
        .await;
    assert_eq!(r.body["data"]["isDefault"], true);
    assert_eq!(app.delete(&path).await.status, 200);
    assert_eq!(default_env(&app).await["id"], other["id"]);
    // Sessions without an environment now use the new default.
    let r = app.post("/api/sessions", r#"{"mode":"chat"}"#).await;
    assert_eq!(r.body["data"]["environmentId"], other["id"]);
    app.shutdown().await;
}

#[tokio::test]
async fn images_lists_the_default_image_and_local_sandbox_images_only() {
    let app = spawn_app().await;
    app.fake.add_image(
        "pi-relay/sandbox-debian:dev",
        &[("pi-relay.build-hash", "h1")],
    );
    app.fake.add_image(
        "pi-relay/bench-fake-pi:latest",
        &[
            ("pi-relay.build-hash", "h2"),
            ("org.opencontainers.image.description", "Fake pi"),
        ],
    );
    app.fake.add_image("postgres:16", &[]);
    let r = app.get("/api/environments/images").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body["data"],
        json!([
            {"id": "test-image:latest", "name": "test-image:latest", "image": "test-image:latest",
             "description": "The relay's default sandbox image (SANDBOX_DOCKER_IMAGE)", "isDefault": true},
            {"id": "pi-relay/bench-fake-pi:latest", "name": "pi-relay/bench-fake-pi:latest",
             "image": "pi-relay/bench-fake-pi:latest", "description": "Fake pi", "isDefault": false},
            {"id": "pi-relay/sandbox-debian:dev", "name": "pi-relay/sandbox-debian:dev",
             "image": "pi-relay/sandbox-debian:dev", "description": "Local sandbox image fake-pi-rela",
             "isDefault": false},
        ])
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_probe_checks_a_config_and_says_whether_sessions_can_run_there() {
    let app = spawn_app().await;
    let probe = |body: Value| {
        let app = &app;
        async move { app.post("/api/environments/probe", &body.to_string()).await }
    };
    let r = probe(json!({"sandboxType": "docker", "config": {"resourceTier": "small"}})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["data"],
        json!({"available": true, "sandboxType": "docker"})
    );
    let r = probe(json!({"sandboxType": "gondolin", "config": {}})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["data"]["available"], false);
    assert_eq!(
        r.body["data"]["error"],
        "sandboxType 'gondolin' is not supported by this relay; use docker"
    );
    for (body, error) in [
        (
            json!({"sandboxType": "vm"}),
            "sandboxType must be one of: docker, cloudflare, gondolin",
        ),
        (
            json!({"config": {}}),
            "sandboxType must be one of: docker, cloudflare, gondolin",
        ),
        (
            json!({"sandboxType": "docker", "config": {"resourceTier": "huge"}}),
            "config.resourceTier must be one of: small, medium, large",
        ),
    ] {
        let r = probe(body.clone()).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (400, Some(error)),
            "{body}"
        );
    }
    // Gondolin's routes answer in their shape: nothing installed, nothing to install here.
    let r = app.get("/api/environments/gondolin").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["data"]["assetsExist"], false);
    assert_eq!(r.body["data"]["installedAssetDirs"], json!([]));
    let r = app.post("/api/environments/gondolin/install", "{}").await;
    assert_eq!(r.status, 501);
    assert!(r.body["error"].as_str().unwrap().contains("not supported"));
    app.shutdown().await;
}
