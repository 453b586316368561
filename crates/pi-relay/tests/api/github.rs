//! `/api/github/*` against a fake of GitHub's REST API on loopback (in GitHub's shapes): the
//! token checked, kept sealed and never shown, the repositories of every page, GitHub's errors,
//! and the App routes saying no App is connected.

use relay_testkit::{FakeGitHub, GITHUB_APP_TEST_ID, GITHUB_APP_TEST_KEY};
use serde_json::json;

use crate::helpers::*;
use crate::secrets::{bytes_of, contains};

const TOKEN: &str = "ghp_fakeTokenForTheRelayTests0123456789";

async fn app_with(github: &FakeGitHub) -> TestApp {
    let url = github.url();
    spawn_app_with(&["--github-api", &url]).await
}

fn err(r: &Reply) -> (u16, String) {
    (r.status, r.body["error"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn a_token_is_checked_kept_sealed_and_lists_every_repository() {
    let github = FakeGitHub::start(TOKEN, "octocat", 250).await.unwrap();
    let app = app_with(&github).await;
    let r = app.get("/api/github/token").await;
    assert_eq!(
        r.body,
        json!({"data": {"configured": false}, "error": null})
    );
    let r = app.get("/api/github/repos").await;
    assert_eq!(
        err(&r),
        (
            401,
            "GitHub auth not configured. Connect a GitHub App or add a Personal Access Token."
                .into()
        )
    );
    for (body, expected) in [
        (json!({}), (400, "Token is required")),
        (json!({"token": "   "}), (400, "Token is required")),
        (json!({"token": "ghp_wrong"}), (400, "Invalid token")),
        (json!({"token": "a b"}), (400, "Invalid token")),
    ] {
        let r = app.post("/api/github/token", &body.to_string()).await;
        assert_eq!(err(&r), (expected.0, expected.1.into()), "{body}");
    }
    let r = app
        .post(
            "/api/github/token",
            &json!({"token": format!(" {TOKEN} ")}).to_string(),
        )
        .await;
    assert_eq!(
        r.body,
        json!({"data": {"user": "octocat", "scopes": ["repo", "read:org"]}, "error": null})
    );
    let r = app.get("/api/github/token").await;
    assert_eq!(
        r.body["data"],
        json!({"configured": true, "valid": true, "user": "octocat",
               "scopes": ["repo", "read:org"], "rateLimitRemaining": 4999})
    );

    let r = app.get("/api/github/repos").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["data"]["mode"], "pat");
    let repos = r.body["data"]["repos"].as_array().unwrap();
    assert_eq!(repos.len(), 250, "three pages of 100, 100 and 50");
    assert_eq!(
        repos[0],
        json!({"id": 1000, "name": "repo-000", "fullName": "octocat/repo-000", "owner": "octocat",
               "isPrivate": true, "description": null,
               "htmlUrl": "https://github.com/octocat/repo-000",
               "cloneUrl": "https://github.com/octocat/repo-000.git",
               "sshUrl": "git@github.com:octocat/repo-000.git", "defaultBranch": "trunk"})
    );
    assert_eq!(repos[249]["fullName"], "octocat/repo-249");

    // The token is in no answer, no secret and no database file.
    assert!(
        !app.get("/api/secrets")
            .await
            .body
            .to_string()
            .contains(TOKEN)
    );
    assert!(
        !app.get("/api/settings")
            .await
            .body
            .to_string()
            .contains(TOKEN)
    );
    app.relay
        .as_ref()
        .unwrap()
        .sessions()
        .flush()
        .await
        .unwrap();
    let db = bytes_of(&app.dir.path().join("data"), "relay.db");
    assert!(db.len() > 4096);
    assert!(!contains(&db, TOKEN), "the token is stored in plain text");
    // It went to GitHub, and only as a bearer token.
    assert!(
        github
            .authorizations()
            .iter()
            .any(|a| a == &format!("Bearer {TOKEN}"))
    );

    let r = app.delete("/api/github/token").await;
    assert_eq!(r.body, json!({"data": {"ok": true}, "error": null}));
    assert_eq!(
        app.get("/api/github/token").await.body["data"]["configured"],
        false
    );
    app.shutdown().await;
}

#[tokio::test]
async fn githubs_errors_are_reported_and_the_token_never_follows_a_link_elsewhere() {
    let github = FakeGitHub::start(TOKEN, "octocat", 150).await.unwrap();
    let elsewhere = FakeGitHub::start("other", "mallory", 10).await.unwrap();
    let app = app_with(&github).await;
    let r = app
        .post("/api/github/token", &json!({"token": TOKEN}).to_string())
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A next page on another host: not followed, so the token never goes there.
    github.link_elsewhere(&elsewhere.url());
    let r = app.get("/api/github/repos").await;
    assert_eq!(r.body["data"]["repos"].as_array().unwrap().len(), 100);
    assert!(elsewhere.authorizations().is_empty());
    // GitHub failing.
    github.set_failing(true);
    let r = app.get("/api/github/repos").await;
    assert_eq!(r.status, 500);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .starts_with("GitHub API error: 500"),
        "{}",
        r.body
    );
    let r = app.get("/api/github/token").await;
    assert_eq!(r.body["data"]["configured"], true);
    assert_eq!(r.body["data"]["valid"], false);
    app.shutdown().await;
}

#[tokio::test]
async fn an_app_is_connected_with_a_key_github_accepts_and_lists_its_installations() {
    let github = FakeGitHub::start(TOKEN, "octocat", 1).await.unwrap();
    let app = app_with(&github).await;
    let status = app.get("/api/github/app/status").await.body["data"].clone();
    assert_eq!(
        status,
        json!({"configured": false, "hasPrivateKey": false, "hasWebhookSecret": false,
               "installationIds": [], "preferredMode": "none", "patConfigured": false})
    );
    let r = app.get("/api/github/app/installations").await;
    assert_eq!(err(&r), (404, "GitHub App not configured".into()));
    for (body, expected) in [
        (
            json!({"privateKey": GITHUB_APP_TEST_KEY}),
            "appId is required",
        ),
        (
            json!({"appId": 0, "privateKey": GITHUB_APP_TEST_KEY}),
            "appId is required",
        ),
        (
            json!({"appId": GITHUB_APP_TEST_ID}),
            "privateKey is required",
        ),
        (
            json!({"appId": GITHUB_APP_TEST_ID, "privateKey": " "}),
            "privateKey is required",
        ),
    ] {
        let r = app.post("/api/github/app/connect", &body.to_string()).await;
        assert_eq!(err(&r), (400, expected.into()), "{body}");
    }
    let r = app
        .post(
            "/api/github/app/connect",
            &json!({"appId": 7, "privateKey": "not a key"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid private key"),
        "{}",
        r.body
    );
    // A key GitHub does not accept for that App.
    let r = app
        .post(
            "/api/github/app/connect",
            &json!({"appId": 7, "privateKey": GITHUB_APP_TEST_KEY}).to_string(),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .starts_with("GitHub App check failed: 401"),
        "{}",
        r.body
    );

    let body = json!({"appId": GITHUB_APP_TEST_ID, "privateKey": GITHUB_APP_TEST_KEY,
                      "webhookSecret": "whsec", "installationIds": [11, 11, 0]});
    let r = app.post("/api/github/app/connect", &body.to_string()).await;
    assert_eq!(
        r.body["data"],
        json!({"ok": true, "config": {"appId": GITHUB_APP_TEST_ID, "installationIds": [11]}})
    );
    let status = app.get("/api/github/app/status").await.body["data"].clone();
    assert_eq!(
        status,
        json!({"configured": true, "appId": GITHUB_APP_TEST_ID, "appName": "pi-relay test",
               "appSlug": "pi-relay-test", "hasPrivateKey": true, "hasWebhookSecret": true,
               "installationIds": [11], "preferredMode": "github_app", "patConfigured": false})
    );
    let r = app.get("/api/github/app/installations").await;
    assert_eq!(
        r.body["data"],
        json!([{"id": 11, "account": {"login": "octocat", "type": "User"},
                "repositorySelection": "selected",
                "accessTokensUrl": "https://api.github.com/app/installations/11/access_tokens",
                "repositoriesUrl": "https://api.github.com/installation/repositories",
                "suspendedAt": null}])
    );
    // The key is nowhere to be read: not in settings, not in the database files.
    let settings = app.get("/api/settings").await.body.to_string();
    assert!(!settings.contains("github_app_config") && !settings.contains("PRIVATE KEY"));
    app.relay
        .as_ref()
        .unwrap()
        .sessions()
        .flush()
        .await
        .unwrap();
    let db = bytes_of(&app.dir.path().join("data"), "relay.db");
    let key_line = GITHUB_APP_TEST_KEY.lines().nth(1).unwrap();
    assert!(
        !contains(&db, key_line),
        "the App's key is stored in plain text"
    );
    assert!(!contains(&db, "whsec"));

    let r = app.delete("/api/github/app/connect").await;
    assert_eq!(r.body["data"], json!({"ok": true}));
    let status = app.get("/api/github/app/status").await.body["data"].clone();
    assert_eq!(status["configured"], false);
    assert_eq!(status["hasPrivateKey"], false);
    assert_eq!(status["hasWebhookSecret"], false);
    app.shutdown().await;
}

async fn connect_app(app: &TestApp, installations: serde_json::Value) {
    let body = json!({"appId": GITHUB_APP_TEST_ID, "privateKey": GITHUB_APP_TEST_KEY,
                      "installationIds": installations});
    let r = app.post("/api/github/app/connect", &body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn with_an_app_repositories_come_from_its_installations_with_tokens_kept_and_renewed() {
    let github = FakeGitHub::start(TOKEN, "octocat", 5).await.unwrap();
    let app = app_with(&github).await;
    connect_app(&app, json!([])).await;
    let r = app.get("/api/github/repos").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["data"]["mode"], "github_app");
    let names: Vec<&str> = r.body["data"]["repos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["fullName"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "acme/app-0",
            "acme/app-1",
            "octocat/app-0",
            "octocat/app-1",
            "octocat/app-2"
        ],
        "both installations, sorted"
    );
    // An hour-long token is kept: listing again mints none.
    assert_eq!(github.minted().len(), 2);
    app.get("/api/github/repos").await;
    assert_eq!(github.minted().len(), 2);
    app.shutdown().await;

    // Tokens about to expire (GitHub gives a minute here) are renewed before use.
    let github = FakeGitHub::start(TOKEN, "octocat", 5).await.unwrap();
    github.set_token_lifetime(60);
    let app = app_with(&github).await;
    connect_app(&app, json!([11])).await;
    app.get("/api/github/repos").await;
    app.get("/api/github/repos").await;
    let minted = github.minted();
    assert_eq!(minted.len(), 2, "{minted:?}");
    assert!(
        minted.iter().all(|(i, _)| *i == 11),
        "only the configured installation"
    );
    // Installation tokens never reach another route's answer.
    let status = app.get("/api/github/app/status").await.body.to_string();
    assert!(minted.iter().all(|(_, t)| !status.contains(t.as_str())));
    app.shutdown().await;
}

#[tokio::test]
async fn when_the_app_fails_the_token_lists_repositories_and_without_one_the_error_says_so() {
    let github = FakeGitHub::start(TOKEN, "octocat", 2).await.unwrap();
    let app = app_with(&github).await;
    connect_app(&app, json!([99])).await; // an installation GitHub does not have
    let r = app.get("/api/github/repos").await;
    assert_eq!(r.status, 500);
    let e = r.body["error"].as_str().unwrap();
    assert!(
        e.contains("installation 99")
            && e.ends_with("PAT fallback is not configured, so the operation cannot continue."),
        "{e}"
    );
    app.post("/api/github/token", &json!({"token": TOKEN}).to_string())
        .await;
    let r = app.get("/api/github/repos").await;
    assert_eq!(r.body["data"]["mode"], "pat");
    assert_eq!(r.body["data"]["repos"].as_array().unwrap().len(), 2);
    app.shutdown().await;
}
