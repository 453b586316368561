//! `/api/github/*` against a fake of GitHub's REST API on loopback (in GitHub's shapes): the
//! token checked, kept sealed and never shown, the repositories of every page, GitHub's errors,
//! and the App routes saying no App is connected.

use relay_testkit::FakeGitHub;
use serde_json::{Value, json};

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
async fn the_app_routes_say_no_app_is_connected() {
    let github = FakeGitHub::start(TOKEN, "octocat", 1).await.unwrap();
    let app = app_with(&github).await;
    let status = |pat: bool| {
        json!({"configured": false, "hasPrivateKey": false, "hasWebhookSecret": false,
               "installationIds": [], "preferredMode": if pat { "pat" } else { "none" },
               "patConfigured": pat})
    };
    assert_eq!(
        app.get("/api/github/app/status").await.body["data"],
        status(false)
    );
    app.post("/api/github/token", &json!({"token": TOKEN}).to_string())
        .await;
    assert_eq!(
        app.get("/api/github/app/status").await.body["data"],
        status(true)
    );
    let r = app.get("/api/github/app/installations").await;
    assert_eq!(err(&r), (404, "GitHub App not configured".into()));
    let r = app
        .post("/api/github/app/connect", &json!({"appId": 1}).to_string())
        .await;
    assert_eq!(r.status, 501);
    assert_eq!(r.body["data"], Value::Null);
    let r = app.delete("/api/github/app/connect").await;
    assert_eq!(r.body["data"], json!({"ok": true}));
    app.shutdown().await;
}
