//! The egress gateway as sessions get it, on the fake provider (the model provider a mock over
//! HTTPS on loopback, reached by a mapped name and trusted through the extra-CA option): `GET /api/sessions/:id/egress`,
//! pi's `models.json` pointed at the gateway with a placeholder key, the proxy variables, model
//! keys kept out of the sandbox, and the session's socket answering as a sandbox's forwarder
//! would reach it (a model call gets the relay's key; a CONNECT outside the policy is refused and
//! shows in the session's usage). Environments' egress settings are validated.

use relay_testkit::{MockLlm, Script, write_pi_agent_config_with_key};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

const PLACEHOLDER: &str = "pi-relay-gateway-placeholder";

/// Sends `request` on session `id`'s egress socket, as the forwarder in its sandbox would, and
/// reads the answer until the gateway closes the connection.
async fn through_socket(app: &TestApp, id: &str, request: &str) -> String {
    let socket = app.state_dir().join(format!("egress/{id}/egress.sock"));
    let mut stream = tokio::net::UnixStream::connect(&socket)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", socket.display()));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(PROMPTLY, stream.read_to_end(&mut out))
        .await
        .expect("the gateway answers")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

async fn egress(app: &TestApp, id: &str) -> Value {
    let r = app.get(&format!("/api/sessions/{id}/egress")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["data"].clone()
}

#[tokio::test]
async fn a_sandbox_reaches_its_model_through_the_gateway_with_the_relays_key_and_nothing_else() {
    // A provider over HTTPS, reached by name: the relay trusts its CA and maps the name.
    let llm = MockLlm::start_tls(
        Script {
            tool_command: "true".into(),
            final_text: "hello from the mock".into(),
        },
        &["mock-llm.test"],
    )
    .await
    .unwrap();
    let template = tempfile::tempdir().unwrap();
    let ca = template.path().join("ca.pem");
    std::fs::write(&ca, llm.ca_pem().unwrap()).unwrap();
    let dir = template.path().join("agent");
    let base = llm.https_url("mock-llm.test");
    write_pi_agent_config_with_key(&dir, &base, "$MOCK_LLM_KEY").unwrap();
    let app = spawn_app_with(&[
        "--agent-template-dir",
        dir.to_str().unwrap(),
        "--egress-resolve",
        "mock-llm.test=127.0.0.1",
        "--egress-ca-file",
        ca.to_str().unwrap(),
    ])
    .await;
    let key = "sk-mock-7d1f0c2e";
    for (var, kind, value) in [
        ("MOCK_LLM_KEY", "ai_provider", key),
        ("ANTHROPIC_API_KEY", "ai_provider", "sk-ant-unused"),
        ("MY_VAR", "env_var", "plain"),
    ] {
        let body = json!({"name": var, "envVar": var, "kind": kind, "value": value});
        let r = app.post("/api/secrets", &body.to_string()).await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let id = app.active_session().await;

    let view = egress(&app, &id).await;
    assert_eq!(view["gateway"], true);
    assert_eq!(
        view["network"], "none",
        "the default: no network of its own"
    );
    assert_eq!(view["policy"], "allowlist");
    assert_eq!(view["allow"], json!([]));
    assert_eq!(view["providers"], json!(["anthropic", "mock"]));

    // pi's models point at the gateway, with a placeholder for the key.
    let agent = app.state_dir().join(format!("sessions/{id}/agent"));
    let models = std::fs::read_to_string(agent.join("models.json")).unwrap();
    let models: Value = serde_json::from_str(&models).unwrap();
    let mock = &models["providers"]["mock"];
    assert_eq!(mock["baseUrl"], "http://127.0.0.1:18080/p/mock/v1");
    assert_eq!(mock["apiKey"], PLACEHOLDER);
    assert_eq!(
        mock["models"][0]["id"], "mock-model",
        "the template's models kept"
    );
    assert_eq!(
        models["providers"]["anthropic"]["baseUrl"],
        "http://127.0.0.1:18080/p/anthropic"
    );
    // No key in the sandbox: not in its secrets, its spec or its agent directory.
    let secrets = app.state_dir().join(format!("pi-secrets-{id}"));
    let names: Vec<String> = std::fs::read_dir(&secrets)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["my_var"]);
    let spec = app.fake.created_specs().pop().unwrap();
    assert!(!format!("{spec:?}").contains(key));
    for (name, value) in [
        ("HTTPS_PROXY", "http://127.0.0.1:18080"),
        ("no_proxy", "127.0.0.1,localhost"),
        ("NODE_USE_ENV_PROXY", "1"),
    ] {
        assert!(
            spec.env.contains(&(name.to_owned(), value.to_owned())),
            "{name} in {:?}",
            spec.env
        );
    }
    assert!(spec.egress.is_some());
    for file in walk(&agent) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(key),
            "{}",
            file.display()
        );
    }

    // A model call as pi makes it: the relay's key replaces the placeholder.
    let body = json!({"model": "mock-model", "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let request = format!(
        "POST /p/mock/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\
         Authorization: Bearer {PLACEHOLDER}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = through_socket(&app, &id, &request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("\"hello fro\"") && answer.contains("data: [DONE]"),
        "{answer}"
    );
    assert_eq!(llm.authorizations(), [Some(format!("Bearer {key}"))]);

    // Anything else needs the policy's consent: github.com is on no list.
    let answer = through_socket(
        &app,
        &id,
        "CONNECT github.com:443 HTTP/1.1\r\nHost: github.com:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");

    let usage = egress(&app, &id).await["usage"].clone();
    assert_eq!(usage["providers"]["mock"]["requests"], 1);
    assert_eq!(usage["providers"]["mock"]["failed"], 0);
    // As the mock reported them in its last chunk.
    assert_eq!(usage["providers"]["mock"]["inputTokens"], 100);
    assert_eq!(usage["providers"]["mock"]["outputTokens"], 10);
    let hosts = usage["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 1, "{usage}");
    assert_eq!(hosts[0]["target"], "github.com:443");
    assert_eq!(hosts[0]["denied"], 1);
    assert_eq!(hosts[0]["lastVerdict"], "denied");
    assert!(hosts[0]["lastReason"].is_string(), "{usage}");
    app.shutdown().await;
}

#[tokio::test]
async fn an_environment_sets_the_policy_and_bad_settings_are_refused() {
    let app = spawn_app().await;
    for (config, error) in [
        (
            json!({"egressPolicy": "all"}),
            "config.egressPolicy: egress policy must be deny, allowlist or open, not \"all\"",
        ),
        (
            json!({"egressAllow": ["https://github.com/x"]}),
            "config.egressAllow: \"https://github.com/x\": a host pattern is a host name, \
             optionally `*.` before it and `:port` after it, without a scheme or path",
        ),
    ] {
        let body = json!({"name": "e", "sandboxType": "docker", "config": config});
        let r = app.post("/api/environments", &body.to_string()).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (400, Some(error)),
            "{config}"
        );
    }
    let body = json!({"name": "e", "sandboxType": "docker", "config": {
        "egressPolicy": "allowlist", "egressAllow": ["GitHub.com", "*.npmjs.org"]}});
    let r = app.post("/api/environments", &body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let env = r.body["data"]["id"].clone();
    let r = app
        .post(
            "/api/sessions",
            &json!({"mode": "chat", "environmentId": env}).to_string(),
        )
        .await;
    let id = r.body["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(app.activate(&id, "c").await.status, 200);
    let view = egress(&app, &id).await;
    assert_eq!(view["policy"], "allowlist");
    assert_eq!(view["allow"], json!(["github.com", "*.npmjs.org"]));
    assert_eq!(view["providers"], json!([]), "no model key configured");

    let r = app
        .get("/api/sessions/00000000-0000-4000-8000-000000000000/egress")
        .await;
    assert_eq!(r.status, 404);
    app.shutdown().await;
}

#[tokio::test]
async fn a_sandbox_on_the_host_network_has_no_gateway() {
    let app = spawn_app_with(&["--sandbox-network", "host"]).await;
    let id = app.active_session().await;
    let view = egress(&app, &id).await;
    assert_eq!(view["gateway"], false);
    assert_eq!(view["network"], "host");
    assert!(
        !app.state_dir()
            .join(format!("egress/{id}/egress.sock"))
            .exists()
    );
    app.shutdown().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let kind = e.file_type().unwrap();
        if kind.is_dir() {
            out.extend(walk(&e.path()));
        } else if kind.is_file() {
            out.push(e.path());
        }
    }
    out
}

#[tokio::test]
async fn a_secret_bound_to_domains_reaches_the_sandbox_as_a_placeholder_and_its_ca_with_it() {
    let app = spawn_app().await;
    let body = json!({"name": "GitHub", "envVar": "GH_TOKEN", "value": "ghp_real",
                      "domains": ["api.github.com", "*.githubusercontent.com"]});
    let r = app.post("/api/secrets", &body.to_string()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let secret_id = r.body["data"]["id"].as_str().unwrap().to_owned();
    let id = app.active_session().await;

    let file = app.state_dir().join(format!("pi-secrets-{id}/gh_token"));
    let placeholder = std::fs::read_to_string(&file).unwrap();
    let plain: String = secret_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    assert_eq!(placeholder, format!("pi-relay-secret-{plain}"));
    // The sandbox trusts the relay's CA: the file beside its socket, named by the variables.
    let egress = app.state_dir().join(format!("egress/{id}"));
    let ca = std::fs::read_to_string(egress.join("ca.pem")).unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
    let config_ca = app.dir.path().join("config/egress-ca.pem");
    assert_eq!(std::fs::read_to_string(config_ca).unwrap(), ca);
    let spec = app.fake.created_specs().pop().unwrap();
    assert!(
        spec.env.contains(&(
            "NODE_EXTRA_CA_CERTS".to_owned(),
            "/run/egress/ca.pem".to_owned()
        )),
        "{:?}",
        spec.env
    );
    // The relay's CA key stays in its config directory, readable by it alone.
    let key = app.dir.path().join("config/egress-ca-key.pem");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    for file in walk(&app.state_dir()) {
        let text = std::fs::read(&file).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&text).contains("PRIVATE KEY"),
            "{}",
            file.display()
        );
    }

    // Domains are host patterns.
    let body = json!({"name": "x", "envVar": "X_TOKEN", "value": "v", "domains": ["10.0.0.1"]});
    let r = app.post("/api/secrets", &body.to_string()).await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .starts_with("Domain pattern \"10.0.0.1\""),
        "{}",
        r.body
    );
    app.shutdown().await;

    // A sandbox on the host's network has no gateway to put the value in: it gets the value.
    let app = spawn_app_with(&["--sandbox-network", "host"]).await;
    let body = json!({"name": "GitHub", "envVar": "GH_TOKEN", "value": "ghp_real",
                      "domains": ["api.github.com"]});
    assert_eq!(
        app.post("/api/secrets", &body.to_string()).await.status,
        201
    );
    let id = app.active_session().await;
    let file = app.state_dir().join(format!("pi-secrets-{id}/gh_token"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "ghp_real");
    app.shutdown().await;
}
