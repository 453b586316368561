//! The encryption key at startup and `pi-relay secrets rotate-key`/`forget`: a first start
//! needs no key, a key that does not fit the stored secrets stops the relay with nothing
//! changed, and rotation keeps every value.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use pi_relay::app::Relay;
use secrecy::SecretString;
use serde_json::json;

use crate::helpers::*;

const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY_B: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

/// The outcome of a start: a running relay, or the refusal with the directory back.
enum Start {
    Up(Box<TestApp>),
    Refused(tempfile::TempDir, String),
}

impl Start {
    fn up(self) -> TestApp {
        match self {
            Start::Up(app) => *app,
            Start::Refused(_, e) => panic!("the relay refused to start: {e}"),
        }
    }

    fn refused(self) -> (tempfile::TempDir, String) {
        match self {
            Start::Up(_) => panic!("the relay started"),
            Start::Refused(d, e) => (d, e),
        }
    }
}

/// Starts a relay on `dir` with `key` as RELAY_ENCRYPTION_KEY (`None`: the key file).
async fn start_keyed(dir: tempfile::TempDir, key: Option<&str>) -> Start {
    let mut a = args(dir.path(), &[]);
    a.encryption_key = key.map(SecretString::from);
    let resolved = a.resolve().unwrap();
    let fake = fake(&dir);
    match Relay::start(&a, &resolved, Arc::new(fake.clone())).await {
        Ok(relay) => Start::Up(Box::new(TestApp {
            base: format!("http://{}", relay.addr),
            ws_base: format!("ws://{}", relay.addr),
            relay: Some(relay),
            http: reqwest::Client::new(),
            fake,
            token: None,
            dir,
        })),
        Err(e) => Start::Refused(dir, e.to_string()),
    }
}

/// Stops `app` and gives its directory back.
async fn stop(app: TestApp) -> tempfile::TempDir {
    let TestApp { relay, dir, .. } = app;
    relay.unwrap().shutdown().await;
    dir
}

async fn add_secret(app: &TestApp, env_var: &str, value: &str) {
    let r = app
        .post(
            "/api/secrets",
            &json!({"name": env_var, "envVar": env_var, "value": value}).to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
}

/// The secrets table as stored (sealed values), to prove a refusal changed nothing.
async fn stored(dir: &Path) -> Vec<relay_store::SecretRow> {
    relay_store::Store::open(&dir.join("data/relay.db"))
        .unwrap()
        .secrets()
        .await
        .unwrap()
}

/// The value a new session's sandbox receives for `file`.
async fn delivered(app: &TestApp, file: &str) -> String {
    let id = app.active_session().await;
    std::fs::read_to_string(app.state_dir().join(format!("pi-secrets-{id}/{file}"))).unwrap()
}

fn pi_relay(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pi-relay"));
    cmd.args(args)
        .args(["--data-dir", dir.join("data").to_str().unwrap()])
        .args(["--config-dir", dir.join("config").to_str().unwrap()])
        .env_remove("RELAY_ENCRYPTION_KEY")
        .env_remove("RELAY_NEW_ENCRYPTION_KEY")
        .env_remove("PI_RELAY_DB_PATH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[tokio::test]
async fn a_first_start_creates_a_private_key_file_and_later_starts_reuse_it() {
    let app = start_keyed(tempfile::tempdir().unwrap(), None).await.up();
    let key_file = app.dir.path().join("config/encryption.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let key = std::fs::read_to_string(&key_file).unwrap();
    add_secret(&app, "FIRST_KEY", "first-value").await;
    let dir = stop(app).await;

    let app = start_keyed(dir, None).await.up();
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key);
    assert_eq!(delivered(&app, "first_key").await, "first-value");
    app.shutdown().await;
}

#[tokio::test]
async fn a_key_that_does_not_fit_the_stored_secrets_is_refused_and_nothing_changes() {
    let app = start_keyed(tempfile::tempdir().unwrap(), Some(KEY_A))
        .await
        .up();
    add_secret(&app, "A_KEY", "value-a").await;
    let dir = stop(app).await;
    let before = stored(dir.path()).await;

    let (dir, err) = start_keyed(dir, Some(KEY_B)).await.refused();
    assert!(
        err.contains("RELAY_ENCRYPTION_KEY cannot decrypt the stored secrets"),
        "{err}"
    );
    assert!(err.contains("Nothing was changed"), "{err}");
    assert_eq!(stored(dir.path()).await, before);
    // Without the variable the relay would use a key file, which does not exist: refused too,
    // and no new key is made up.
    let (dir, err) = start_keyed(dir, None).await.refused();
    assert!(err.contains("is missing"), "{err}");
    assert!(!dir.path().join("config/encryption.key").exists());
    assert_eq!(stored(dir.path()).await, before);

    let app = start_keyed(dir, Some(KEY_A)).await.up();
    assert_eq!(delivered(&app, "a_key").await, "value-a");
    app.shutdown().await;
}

#[tokio::test]
async fn a_malformed_key_is_refused_naming_the_variable() {
    let mut dir = tempfile::tempdir().unwrap();
    for bad in ["", "c2hvcnQ=", "%%%not base64%%%"] {
        let (d, err) = start_keyed(dir, Some(bad)).await.refused();
        assert!(err.contains("RELAY_ENCRYPTION_KEY"), "{bad:?}: {err}");
        assert!(
            !err.contains(bad) || bad.is_empty(),
            "the key is never echoed: {err}"
        );
        dir = d;
    }
    assert!(stored(dir.path()).await.is_empty());
}

#[tokio::test]
async fn a_deleted_key_file_stops_the_start_while_secrets_exist() {
    let app = start_keyed(tempfile::tempdir().unwrap(), None).await.up();
    add_secret(&app, "A_KEY", "value-a").await;
    let dir = stop(app).await;
    let key_file = dir.path().join("config/encryption.key");
    let saved = std::fs::read(&key_file).unwrap();
    std::fs::remove_file(&key_file).unwrap();
    let (dir, err) = start_keyed(dir, None).await.refused();
    assert!(
        err.contains("is missing") && err.contains("1 secret(s)"),
        "{err}"
    );
    assert!(!key_file.exists());

    // A key file others can read is refused as well.
    std::fs::write(&key_file, &saved).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (dir, err) = start_keyed(dir, None).await.refused();
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let app = start_keyed(dir, None).await.up();
    assert_eq!(delivered(&app, "a_key").await, "value-a");
    app.shutdown().await;
}

#[tokio::test]
async fn rotate_key_reencrypts_under_a_new_key_file_and_refuses_while_the_relay_runs() {
    let app = start_keyed(tempfile::tempdir().unwrap(), None).await.up();
    add_secret(&app, "A_KEY", "value-a").await;
    add_secret(&app, "B_KEY", "value-b").await;
    let key_file = app.dir.path().join("config/encryption.key");
    let old_key = std::fs::read_to_string(&key_file).unwrap();

    let out = pi_relay(app.dir.path(), &["secrets", "rotate-key"], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another pi-relay process"), "{err}");
    let dir = stop(app).await;

    let out = pi_relay(dir.path(), &["secrets", "rotate-key"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("Re-encrypted 2 secret(s) under key version 2"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "the key stays in its file");
    let new_key = std::fs::read_to_string(&key_file).unwrap();
    assert_ne!(new_key, old_key);
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let (dir, err) = start_keyed(dir, Some(old_key.trim())).await.refused();
    assert!(err.contains("cannot decrypt"), "{err}");
    let app = start_keyed(dir, None).await.up();
    let list = app.get("/api/secrets").await.body["data"].clone();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|s| s["keyVersion"] == 2),
        "{list}"
    );
    assert_eq!(delivered(&app, "b_key").await, "value-b");
    app.shutdown().await;
}

#[tokio::test]
async fn rotate_key_with_the_variable_prints_the_new_key_or_takes_one() {
    let app = start_keyed(tempfile::tempdir().unwrap(), Some(KEY_A))
        .await
        .up();
    add_secret(&app, "A_KEY", "value-a").await;
    let dir = stop(app).await;

    let out = pi_relay(
        dir.path(),
        &["secrets", "rotate-key"],
        &[("RELAY_ENCRYPTION_KEY", KEY_A)],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("Set RELAY_ENCRYPTION_KEY to the new key"),
        "{err}"
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let printed = printed.trim();
    assert_eq!(printed.len(), 44, "{printed}");
    assert!(!dir.path().join("config/encryption.key").exists());

    // Next rotation with a chosen key: nothing is printed.
    let out = pi_relay(
        dir.path(),
        &["secrets", "rotate-key"],
        &[
            ("RELAY_ENCRYPTION_KEY", printed),
            ("RELAY_NEW_ENCRYPTION_KEY", KEY_B),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    // A malformed new key is refused before anything happens.
    let out = pi_relay(
        dir.path(),
        &["secrets", "rotate-key", "--new-key", "short"],
        &[("RELAY_ENCRYPTION_KEY", KEY_B)],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--new-key"));

    let app = start_keyed(dir, Some(KEY_B)).await.up();
    assert_eq!(
        app.get("/api/secrets").await.body["data"][0]["keyVersion"],
        3
    );
    assert_eq!(delivered(&app, "a_key").await, "value-a");
    app.shutdown().await;
}

#[tokio::test]
async fn forget_deletes_the_secrets_of_a_lost_key_only_when_confirmed() {
    let app = start_keyed(tempfile::tempdir().unwrap(), None).await.up();
    add_secret(&app, "A_KEY", "value-a").await;
    let session = app.active_session().await;
    let secrets_dir = app.state_dir().join(format!("pi-secrets-{session}"));
    assert!(secrets_dir.join("a_key").exists());
    let dir = stop(app).await;
    std::fs::remove_file(dir.path().join("config/encryption.key")).unwrap();

    let out = pi_relay(dir.path(), &["secrets", "forget"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert_eq!(stored(dir.path()).await.len(), 1);
    let out = pi_relay(dir.path(), &["secrets", "forget", "--yes"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stored(dir.path()).await.is_empty());

    let app = start_keyed(dir, None).await.up();
    assert!(app.dir.path().join("config/encryption.key").exists());
    // The start brought the live session's secrets directory up to date.
    assert!(secrets_dir.exists() && !secrets_dir.join("a_key").exists());
    add_secret(&app, "A_KEY", "again").await;
    assert_eq!(
        std::fs::read_to_string(secrets_dir.join("a_key")).unwrap(),
        "again"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn secrets_commands_never_create_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let out = pi_relay(dir.path(), &["secrets", "rotate-key"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("there is no database"));
    assert!(!dir.path().join("data/relay.db").exists());
}
