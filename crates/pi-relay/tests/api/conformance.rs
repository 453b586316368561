//! Conformance to the protocol (`docs/protocol.md`), table-driven over every HTTP route: the
//! CORS preflight of each, the not-found answer of each route that names a resource, the
//! success shape of each route that needs none, a wrong method on each (405 with `Allow`), and
//! the envelope on every answer, unknown routes included. Behaviour beyond the shapes is tested
//! route by route in the other modules.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

/// An id no resource has.
const NONE: &str = "00000000-0000-4000-8000-000000000000";

/// Every route: method, path (`{id}` is [`NONE`]), body.
const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/health", ""),
    ("GET", "/api", ""),
    ("GET", "/api/meta/version", ""),
    ("GET", "/api/sessions", ""),
    ("POST", "/api/sessions", r#"{"mode":"chat"}"#),
    ("GET", "/api/sessions/{id}", ""),
    ("DELETE", "/api/sessions/{id}", ""),
    ("POST", "/api/sessions/{id}/activate", r#"{"clientId":"c"}"#),
    ("GET", "/api/sessions/{id}/events", ""),
    ("GET", "/api/sessions/{id}/sandbox", ""),
    ("GET", "/api/sessions/{id}/logs", ""),
    (
        "PUT",
        "/api/sessions/{id}/clients/c/capabilities",
        r#"{"capabilities":{"extensionUI":true}}"#,
    ),
    ("POST", "/api/sessions/{id}/restart", ""),
    ("POST", "/api/sessions/{id}/archive", ""),
    ("GET", "/api/sessions/{id}/egress", ""),
    ("POST", "/api/sessions/{id}/exec", r#"{"command":"true"}"#),
    ("GET", "/api/sessions/{id}/history", ""),
    ("GET", "/api/sessions/{id}/export", ""),
    ("POST", "/api/sessions/{id}/share", ""),
    ("GET", "/api/sessions/share/{id}", ""),
    ("GET", "/api/sessions/{id}/files", ""),
    ("GET", "/api/sessions/{id}/files/{id}/content", ""),
    ("GET", "/api/secrets", ""),
    ("PUT", "/api/secrets/{id}", r#"{"value":"v"}"#),
    ("DELETE", "/api/secrets/{id}", ""),
    ("GET", "/api/environments", ""),
    ("GET", "/api/environments/{id}", ""),
    ("PUT", "/api/environments/{id}", r#"{"name":"n"}"#),
    ("DELETE", "/api/environments/{id}", ""),
    ("GET", "/api/environments/images", ""),
    ("GET", "/api/environments/gondolin", ""),
    ("GET", "/api/settings", ""),
    ("GET", "/api/settings/sandbox-providers", ""),
    ("GET", "/api/models", ""),
    ("POST", "/api/models/refresh", ""),
    ("GET", "/api/extension-configs?scope=global", ""),
    ("GET", "/api/extension-configs/resolved/{id}", ""),
    ("POST", "/api/extension-configs/validation/cancel", ""),
    ("PUT", "/api/extension-configs/{id}", "{}"),
    ("DELETE", "/api/extension-configs/{id}", ""),
    ("GET", "/api/github/token", ""),
    ("DELETE", "/api/github/token", ""),
    ("GET", "/api/github/app/status", ""),
    ("DELETE", "/api/github/app/connect", ""),
];

/// What a route naming [`NONE`] answers: status and error.
fn not_found(path: &str) -> Option<(u16, &'static str)> {
    let p = path.split('?').next().unwrap_or_default();
    if !p.contains("{id}") {
        return None;
    }
    Some(if p.starts_with("/api/sessions/share/") {
        (404, "Share not found")
    } else if p.contains("/files/{id}/content") || p.starts_with("/api/sessions/") {
        (404, "Session not found")
    } else if p.starts_with("/api/secrets/") {
        (404, "Secret not found")
    } else if p.starts_with("/api/environments/") {
        (404, "Environment not found")
    } else if p.starts_with("/api/extension-configs/resolved/") {
        (404, "Session not found")
    } else {
        (404, "Extension config not found")
    })
}

async fn call(app: &TestApp, method: &str, path: &str, body: &str) -> reqwest::Response {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = app.http.request(method, format!("{}{path}", app.base));
    if !body.is_empty() {
        req = req
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn every_route_answers_a_preflight() {
    let app = spawn_app().await;
    for (method, path, _) in ROUTES {
        let path = path.replace("{id}", NONE);
        let res = app
            .http
            .request(Method::OPTIONS, format!("{}{path}", app.base))
            .header("origin", "http://dashboard.test")
            .header("access-control-request-method", *method)
            .header(
                "access-control-request-headers",
                "content-type,authorization",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204, "{method} {path}");
        let h = res.headers();
        assert_eq!(h["access-control-allow-origin"], "*", "{path}");
        let allowed = h["access-control-allow-methods"].to_str().unwrap();
        assert!(allowed.contains(method), "{method} {path}: {allowed}");
        assert_eq!(
            h["access-control-allow-headers"],
            "content-type,authorization"
        );
    }
    app.shutdown().await;
}

#[tokio::test]
async fn every_route_naming_a_missing_resource_answers_its_not_found() {
    let app = spawn_app().await;
    for (method, path, body) in ROUTES {
        let Some((status, error)) = not_found(path) else {
            continue;
        };
        let path = path.replace("{id}", NONE);
        let res = call(&app, method, &path, body).await;
        assert_eq!(res.status(), status, "{method} {path}");
        assert_eq!(res.headers()["access-control-allow-origin"], "*");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v, json!({"data": null, "error": error}), "{method} {path}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn every_route_without_a_resource_answers_its_success_shape() {
    let app = spawn_app().await;
    for (method, path, body) in ROUTES {
        if not_found(path).is_some() {
            continue;
        }
        let res = call(&app, method, path, body).await;
        assert_eq!(res.status(), 200, "{method} {path}");
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{path}"
        );
        let v: Value = res.json().await.unwrap();
        // The two answers the protocol leaves outside the envelope.
        if *path == "/health" {
            assert_eq!(v["ok"], true);
            continue;
        }
        if *path == "/api" {
            assert_eq!(v["name"], "pi-relay");
            assert_eq!(v["endpoints"]["health"], "GET /health");
            continue;
        }
        assert!(v["error"].is_null(), "{method} {path}: {v}");
        let data = &v["data"];
        let expected = match (*method, *path) {
            (_, "/api/sessions" | "/api/secrets" | "/api/environments") if *method == "GET" => {
                "array"
            }
            (_, "/api/environments/images" | "/api/extension-configs?scope=global") => "array",
            _ => "object",
        };
        let kind = match data {
            Value::Array(_) => "array",
            Value::Object(_) => "object",
            _ => "other",
        };
        assert_eq!(kind, expected, "{method} {path}: {v}");
        match *path {
            "/api/meta/version" => assert!(data["relayVersion"].is_string(), "{v}"),
            "/api/settings/sandbox-providers" => {
                assert!(data["docker"]["available"].is_boolean(), "{v}");
                assert_eq!(data["gondolin"]["available"], false);
            }
            "/api/models" => assert!(data["models"].is_array(), "{v}"),
            "/api/models/refresh" => assert_eq!(data, &json!({"ok": true})),
            "/api/extension-configs/validation/cancel" => {
                assert_eq!(data, &json!({"canceled": false}))
            }
            "/api/sessions" if *method == "POST" => {
                assert_eq!(data["status"], "creating");
                assert!(data["wsEndpoint"].is_string());
            }
            _ => {}
        }
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_wrong_method_on_any_route_is_405_with_allow_in_the_envelope() {
    let app = spawn_app().await;
    for (method, path, _) in ROUTES {
        // A method no route of the protocol takes.
        let wrong = if *method == "PATCH" { "PUT" } else { "PATCH" };
        let path = path.replace("{id}", NONE);
        let res = call(&app, wrong, &path, "{}").await;
        assert_eq!(res.status(), 405, "{wrong} {path}");
        assert!(
            res.headers()["allow"].to_str().unwrap().contains(method),
            "{path}"
        );
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["data"], Value::Null, "{path}");
        assert!(v["error"].is_string(), "{path}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn unknown_routes_answer_404_in_the_envelope() {
    let app = spawn_app().await;
    for (method, path) in [
        ("GET", "/api/nothing"),
        ("POST", "/api/sessions/x/y/z"),
        ("GET", "/api/github/nothing"),
        ("DELETE", "/somewhere"),
    ] {
        let res = call(&app, method, path, "").await;
        assert_eq!(res.status(), 404, "{method} {path}");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v, json!({"data": null, "error": "Not found"}), "{path}");
    }
    app.shutdown().await;
}
