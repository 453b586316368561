//! Extension configurations and the packages catalogue, against a fake npm registry on loopback
//! (in the registry's shapes): the protocol's answers and errors, scopes, settings.json written
//! before pi starts without losing what pi wrote, stale marks, the catalogue's cache and outage.

use relay_testkit::{FakePackage, FakeRegistry};
use serde_json::{Value, json};

use crate::helpers::*;

fn package(name: &str, schema: Option<Value>) -> FakePackage {
    FakePackage {
        name: name.into(),
        version: "1.2.0".into(),
        keywords: vec!["pi-package".into()],
        pi: json!({"skills": ["./skills"], "tools": ["linkup_search"]}),
        schema,
    }
}

async fn registry() -> FakeRegistry {
    FakeRegistry::start(vec![
        package("@acme/pi-linkup", None),
        package(
            "pi-keyed",
            Some(json!({"type": "object", "properties": {"apiKey": {"type": "string"}}, "required": ["apiKey"]})),
        ),
        FakePackage {
            keywords: vec!["other".into()],
            ..package("not-pi", None)
        },
    ])
    .await
    .unwrap()
}

async fn app_with(registry: &FakeRegistry) -> TestApp {
    let (url, cdn) = (registry.url(), registry.cdn_url());
    spawn_app_with(&["--npm-registry", &url, "--package-cdn", &cdn]).await
}

fn settings_json(app: &TestApp, id: &str) -> Option<Value> {
    let path = app
        .state_dir()
        .join(format!("sessions/{id}/agent/settings.json"));
    std::fs::read(path)
        .ok()
        .map(|b| serde_json::from_slice(&b).unwrap())
}

async fn stale(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/api/sessions/{id}")).await.body["data"]["extensionsStale"].clone()
}

#[tokio::test]
async fn configs_are_listed_added_replaced_and_removed_with_the_protocols_answers() {
    let npm = registry().await;
    let app = app_with(&npm).await;
    let err = |r: &Reply| (r.status, r.body["error"].as_str().unwrap_or("").to_owned());
    let r = app.get("/api/extension-configs").await;
    assert_eq!(
        err(&r),
        (
            400,
            "scope query param required, must be one of: global, chat, code, session".into()
        )
    );
    let r = app.get("/api/extension-configs?scope=session").await;
    assert_eq!(
        err(&r),
        (
            400,
            "sessionId query param required for session scope".into()
        )
    );
    for (body, expected) in [
        (
            json!({"scope": "all", "package": "x"}),
            (400, "scope must be one of: global, chat, code, session"),
        ),
        (
            json!({"scope": "session", "package": "x"}),
            (400, "sessionId is required for session scope"),
        ),
        (
            json!({"scope": "session", "sessionId": uuid::Uuid::new_v4().to_string(), "package": "x"}),
            (404, "Session not found"),
        ),
        (
            json!({"scope": "global", "package": "  "}),
            (400, "package is required"),
        ),
        (
            json!({"scope": "global", "package": "x", "config": 3}),
            (400, "config must be an object"),
        ),
    ] {
        let r = app.post("/api/extension-configs", &body.to_string()).await;
        assert_eq!(err(&r), (expected.0, expected.1.into()), "{body}");
    }
    assert_eq!(
        err(&app.post("/api/extension-configs", "[").await),
        (400, "Invalid JSON body".into())
    );

    // Added, with its manifest from the registry.
    let body =
        json!({"scope": "global", "package": "npm:@acme/pi-linkup@1", "config": {"region": "eu"}});
    let r = app.post("/api/extension-configs", &body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let first = r.body["data"].clone();
    assert_eq!(first["scope"], "global");
    assert_eq!(first["sessionId"], Value::Null);
    assert_eq!(first["configJson"], "{\"region\":\"eu\"}");
    assert_eq!(first["manifest"]["name"], "@acme/pi-linkup");
    assert_eq!(first["manifest"]["version"], "1.2.0");
    assert_eq!(first["manifest"]["skills"], json!(["./skills"]));
    assert_eq!(
        r.body["meta"],
        json!({"staleSessionCount": 0, "validationSkipped": true, "manifestMissing": false})
    );
    // The same package again without a config: the same row, unchanged.
    let again = json!({"scope": "global", "package": "npm:@acme/pi-linkup@1"});
    let r = app.post("/api/extension-configs", &again.to_string()).await;
    assert_eq!(r.body["data"]["id"], first["id"]);
    assert_eq!(r.body["data"]["configJson"], "{\"region\":\"eu\"}");
    // A git package has no manifest.
    let git = json!({"scope": "chat", "package": "git:github.com/acme/tools"});
    let r = app.post("/api/extension-configs", &git.to_string()).await;
    assert_eq!(r.body["meta"]["manifestMissing"], true);
    assert_eq!(r.body["data"]["manifest"], Value::Null);

    // A schema's required field left empty.
    let keyed = json!({"scope": "global", "package": "pi-keyed", "config": {"apiKey": " "}});
    let r = app.post("/api/extension-configs", &keyed.to_string()).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        json!({"data": null, "error": "Invalid config values",
               "meta": {"fieldErrors": [{"field": "apiKey", "message": "Required"}]}})
    );

    let list = app.get("/api/extension-configs?scope=global").await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(list.body["data"][0]["manifest"]["name"], "@acme/pi-linkup");
    let id = first["id"].as_str().unwrap();
    let r = app
        .put(
            &format!("/api/extension-configs/{id}"),
            &json!({"config": {"region": "us"}}).to_string(),
        )
        .await;
    assert_eq!(r.body["data"]["configJson"], "{\"region\":\"us\"}");
    assert_eq!(r.body["meta"], json!({"staleSessionCount": 0}));
    let r = app.put("/api/extension-configs/nope", "{}").await;
    assert_eq!(err(&r), (404, "Extension config not found".into()));
    let r = app.delete(&format!("/api/extension-configs/{id}")).await;
    assert_eq!(r.body, json!({"data": {"ok": true}, "error": null}));
    let r = app.delete(&format!("/api/extension-configs/{id}")).await;
    assert_eq!(err(&r), (404, "Extension config not found".into()));
    let r = app
        .post("/api/extension-configs/validation/cancel", "")
        .await;
    assert_eq!(r.body["data"], json!({"canceled": false}));
    app.shutdown().await;
}

#[tokio::test]
async fn a_session_gets_its_packages_in_settings_json_and_keeps_what_pi_wrote() {
    let npm = registry().await;
    let app = app_with(&npm).await;
    let add = |body: Value| {
        let app = &app;
        async move {
            let r = app.post("/api/extension-configs", &body.to_string()).await;
            assert_eq!(r.status, 200, "{}", r.body);
            r.body
        }
    };
    add(json!({"scope": "global", "package": "npm:@acme/pi-linkup", "config": {"a": 1, "b": 1}}))
        .await;
    add(json!({"scope": "code", "package": "npm:code-only"})).await;
    let id = app.active_session().await;
    // Written before pi started.
    assert_eq!(
        settings_json(&app, &id).unwrap(),
        json!({"packages": ["npm:@acme/pi-linkup"], "extensionConfig": {"npm:@acme/pi-linkup": {"a": 1, "b": 1}}})
    );
    assert_eq!(stale(&app, &id).await, false);

    // A change reaches the running session at its next start: stale until then.
    let r = add(json!({"scope": "session", "sessionId": id, "package": "npm:@acme/pi-linkup", "config": {"b": 2}})).await;
    assert_eq!(r["meta"]["staleSessionCount"], 1);
    assert_eq!(stale(&app, &id).await, true);
    let r = app
        .get(&format!("/api/extension-configs/resolved/{id}"))
        .await;
    assert_eq!(
        r.body["data"],
        json!({"packages": [{"package": "npm:@acme/pi-linkup", "config": {"a": 1, "b": 2}}]})
    );
    let r = app
        .get(&format!(
            "/api/extension-configs?scope=session&sessionId={id}"
        ))
        .await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 1);
    let r = app
        .get(&format!(
            "/api/extension-configs/resolved/{}",
            uuid::Uuid::new_v4()
        ))
        .await;
    assert_eq!(
        (r.status, r.body["error"].clone()),
        (404, json!("Session not found"))
    );

    // pi (or the user) wrote settings of its own meanwhile.
    let path = app
        .state_dir()
        .join(format!("sessions/{id}/agent/settings.json"));
    let mut mine = settings_json(&app, &id).unwrap();
    mine["defaultModel"] = json!("mock-model");
    mine["packages"]
        .as_array_mut()
        .unwrap()
        .insert(0, json!("./my-local-ext"));
    std::fs::write(&path, serde_json::to_vec(&mine).unwrap()).unwrap();
    assert_eq!(
        app.post(&format!("/api/sessions/{id}/restart"), "")
            .await
            .status,
        200
    );
    assert_eq!(app.activate(&id, "c").await.status, 200);
    assert_eq!(
        settings_json(&app, &id).unwrap(),
        json!({
            "defaultModel": "mock-model",
            "packages": ["./my-local-ext", "npm:@acme/pi-linkup"],
            "extensionConfig": {"npm:@acme/pi-linkup": {"a": 1, "b": 2}}
        })
    );
    assert_eq!(stale(&app, &id).await, false);
    // Removing every configuration takes only the relay's entries away.
    for scope in ["global", "session"] {
        let q = format!("/api/extension-configs?scope={scope}&sessionId={id}");
        for c in app.get(&q).await.body["data"].as_array().unwrap() {
            let r = app
                .delete(&format!(
                    "/api/extension-configs/{}",
                    c["id"].as_str().unwrap()
                ))
                .await;
            assert_eq!(r.body["meta"]["staleSessionCount"], 1, "{}", r.body);
        }
    }
    assert_eq!(
        app.post(&format!("/api/sessions/{id}/restart"), "")
            .await
            .status,
        200
    );
    assert_eq!(app.activate(&id, "c").await.status, 200);
    assert_eq!(
        settings_json(&app, &id).unwrap(),
        json!({"defaultModel": "mock-model", "packages": ["./my-local-ext"]})
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_catalogue_lists_pi_packages_from_the_registry_and_keeps_them() {
    let npm = registry().await;
    let app = app_with(&npm).await;
    let r = app.get("/api/packages?query=linkup&limit=100").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let packages = r.body["data"]["packages"].as_array().unwrap().clone();
    assert_eq!(packages.len(), 1, "{packages:?}");
    let p = &packages[0];
    assert_eq!(p["name"], "@acme/pi-linkup");
    assert_eq!(p["version"], "1.2.0");
    assert_eq!(p["keywords"], json!(["pi-package"]));
    assert_eq!(p["extensionMeta"]["skills"], json!(["./skills"]));
    assert_eq!(p["extensionMeta"]["tools"], json!(["linkup_search"]));
    assert_eq!(r.body["data"]["stale"], false);
    assert!(r.body["data"]["fetchedAt"].as_str().unwrap().ends_with('Z'));
    // The registry was asked with the keyword and the limit clamped to 50.
    let search = npm
        .asked()
        .into_iter()
        .find(|a| a.starts_with("/-/v1/search"))
        .unwrap();
    assert!(
        search.contains("text=keywords%3Api-package%20linkup"),
        "{search}"
    );
    assert!(search.ends_with("size=50"), "{search}");
    // Kept: the same search asks nothing again.
    let (searches, documents) = (npm.searches(), npm.documents());
    let again = app.get("/api/packages?query=linkup&limit=100").await;
    assert_eq!(again.body["data"]["packages"], json!(packages));
    assert_eq!((npm.searches(), npm.documents()), (searches, documents));
    // Every pi package by default; others never.
    let all = app.get("/api/packages").await.body["data"]["packages"].clone();
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["@acme/pi-linkup", "pi-keyed"]);
    // A search never made, with the registry down: 503.
    npm.set_down(true);
    let r = app.get("/api/packages?query=nothing-yet").await;
    assert_eq!(
        (r.status, r.body["error"].clone()),
        (503, json!("Package catalog unavailable"))
    );
    app.shutdown().await;
}

/// With the registry unreachable, configurations are still listed (their manifests `null`), and
/// the registry is not asked again for each package on every listing.
#[tokio::test]
async fn configs_are_listed_while_the_registry_is_down_without_asking_it_each_time() {
    let npm = registry().await;
    let app = app_with(&npm).await;
    npm.set_down(true);
    let body = json!({"scope": "global", "package": "npm:pi-keyed"});
    let r = app.post("/api/extension-configs", &body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["meta"]["manifestMissing"], true);
    for _ in 0..3 {
        let list = app.get("/api/extension-configs?scope=global").await;
        assert_eq!(list.body["data"][0]["manifest"], Value::Null);
    }
    let asked = npm.asked().into_iter().filter(|a| a == "/pi-keyed").count();
    assert_eq!(asked, 1, "{:?}", npm.asked());
    app.shutdown().await;
}
