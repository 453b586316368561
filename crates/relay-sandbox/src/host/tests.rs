//! Tests of the host-side session storage: layout, modes, seeding and link safety.
use std::os::unix::fs::MetadataExt;

use secrecy::SecretString;

use super::*;

const USER: (u32, u32) = (1000, 1000);
const ID: &str = "0b7e2a52-4d3c-4c36-9a51-4f0e7a2b9c10";

fn storage(dir: &Path) -> HostStorage {
    HostStorage::new(dir.to_path_buf(), false)
}

fn secret(n: &str, v: &str) -> SecretFile {
    SecretFile {
        name: n.into(),
        value: SecretString::from(v),
    }
}

#[test]
fn paths_follow_the_sandbox_contract() {
    let l = HostLayout::new(Path::new("/state"), "abc");
    assert_eq!(l.workspace, Path::new("/state/sessions/abc/workspace"));
    assert_eq!(l.agent, Path::new("/state/sessions/abc/agent"));
    assert_eq!(l.secrets, Path::new("/state/pi-secrets-abc"));
}

#[tokio::test]
async fn prepare_creates_private_dirs_and_keeps_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let s = storage(dir.path());
    let l = s.layout(ID);
    s.prepare(ID, USER).await.unwrap();
    std::fs::write(l.workspace.join("keep.txt"), "x").unwrap();
    s.prepare(ID, USER).await.unwrap();
    assert!(l.workspace.join("keep.txt").exists());
    assert!(l.agent.join("exports").is_dir(), "pi's export directory");
    // A link the agent put in its place is left alone, never followed.
    std::fs::remove_dir(l.agent.join("exports")).unwrap();
    std::os::unix::fs::symlink("/nonexistent", l.agent.join("exports")).unwrap();
    s.prepare(ID, USER).await.unwrap();
    assert!(
        std::fs::symlink_metadata(l.agent.join("exports"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(std::fs::metadata(&l.root).unwrap().mode() & 0o777, 0o750);
    assert_eq!(std::fs::metadata(&l.secrets).unwrap().mode() & 0o777, 0o700);
    s.remove(ID).await.unwrap();
    assert!(!l.root.exists() && !l.secrets.exists());
    s.remove(ID).await.unwrap();
}

#[tokio::test]
async fn agent_files_fill_in_missing_files_only_and_stay_inside() {
    let dir = tempfile::tempdir().unwrap();
    let s = storage(dir.path());
    let l = s.layout(ID);
    s.prepare(ID, USER).await.unwrap();
    std::fs::write(l.agent.join("settings.json"), "pi's own").unwrap();
    let file = |p: &str, c: &'static str| AgentFile {
        path: p.into(),
        content: bytes::Bytes::from_static(c.as_bytes()),
    };
    s.seed_agent_files(
        ID,
        USER,
        vec![
            file("models.json", "{}"),
            file("sub/dir/x", "x"),
            file("settings.json", "new"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(l.agent.join("models.json")).unwrap(),
        "{}"
    );
    assert_eq!(
        std::fs::read_to_string(l.agent.join("sub/dir/x")).unwrap(),
        "x"
    );
    assert_eq!(
        std::fs::read_to_string(l.agent.join("settings.json")).unwrap(),
        "pi's own"
    );
    for bad in ["../escape", "/etc/x", ""] {
        let err = s.seed_agent_files(ID, USER, vec![file(bad, "x")]).await;
        assert!(err.is_err(), "{bad:?}");
    }
    assert!(!l.root.join("escape").exists());
}

#[tokio::test]
async fn agent_files_never_follow_links_the_agent_planted() {
    let dir = tempfile::tempdir().unwrap();
    let s = storage(dir.path());
    let l = s.layout(ID);
    s.prepare(ID, USER).await.unwrap();
    // An agent left links to places outside its directory before its sandbox was
    // re-provisioned.
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(outside.join("models.json"), l.agent.join("models.json")).unwrap();
    std::os::unix::fs::symlink(&outside, l.agent.join("extensions")).unwrap();
    let file = |p: &str| AgentFile {
        path: p.into(),
        content: bytes::Bytes::from_static(b"template"),
    };
    s.seed_agent_files(
        ID,
        USER,
        vec![file("models.json"), file("extensions/x/index.js")],
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing was written through a link"
    );
    assert!(
        std::fs::symlink_metadata(l.agent.join("models.json"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[tokio::test]
async fn agent_files_are_read_and_replaced_without_following_links() {
    let dir = tempfile::tempdir().unwrap();
    let s = storage(dir.path());
    let l = s.layout(ID);
    s.prepare(ID, USER).await.unwrap();
    let read = |name: &'static str| s.read_agent_file(ID, name, 64);
    assert_eq!(read("models.json").await.unwrap(), None);
    s.replace_agent_file(ID, USER, "models.json", Bytes::from("{}"))
        .await
        .unwrap();
    assert_eq!(read("models.json").await.unwrap().unwrap(), "{}");
    assert!(read("models.json").await.is_ok());
    std::fs::write(l.agent.join("big"), vec![b'x'; 65]).unwrap();
    assert!(read("big").await.is_err(), "larger than the bound");

    // The agent replaced the file with a link to something of the host's.
    let secret = dir.path().join("host-secret");
    std::fs::write(&secret, "host").unwrap();
    std::fs::remove_file(l.agent.join("models.json")).unwrap();
    std::os::unix::fs::symlink(&secret, l.agent.join("models.json")).unwrap();
    assert_eq!(
        read("models.json").await.unwrap(),
        None,
        "a link is not read"
    );
    s.replace_agent_file(ID, USER, "models.json", Bytes::from("new"))
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "host");
    assert_eq!(
        std::fs::read_to_string(l.agent.join("models.json")).unwrap(),
        "new"
    );
    // A planted link at the temporary name is no way out either.
    std::os::unix::fs::symlink(&secret, l.agent.join(".models.json.pi-relay.tmp")).unwrap();
    s.replace_agent_file(ID, USER, "models.json", Bytes::from("again"))
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "host");

    for bad in ["", "..", "../x", "a//b", "/etc/passwd"] {
        assert!(s.read_agent_file(ID, bad, 1).await.is_err(), "{bad:?}");
    }
    assert_eq!(s.read_agent_file(ID, "a/b", 1).await.unwrap(), None);
    for bad in ["", "..", "a/b", "../x"] {
        assert!(
            s.replace_agent_file(ID, USER, bad, Bytes::new())
                .await
                .is_err(),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn secrets_are_private_files_named_by_variable_and_stale_ones_go() {
    let dir = tempfile::tempdir().unwrap();
    let s = storage(dir.path());
    let l = s.layout(ID);
    s.write_secrets(
        ID,
        USER,
        vec![secret("openai_api_key", "sk-1\n"), secret("old_key", "x")],
    )
    .await
    .unwrap();
    std::fs::write(l.secrets.join(".stray.tmp"), "partial").unwrap();
    s.write_secrets(ID, USER, vec![secret("openai_api_key", "sk-2")])
        .await
        .unwrap();
    let names: Vec<String> = std::fs::read_dir(&l.secrets)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["openai_api_key"]);
    let path = l.secrets.join("openai_api_key");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "sk-2");
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o400);
    assert_eq!(std::fs::metadata(&l.secrets).unwrap().mode() & 0o777, 0o700);
    assert!(s.has_secrets(ID).await.unwrap());
    let bad = s
        .write_secrets(ID, USER, vec![secret("../escape", "x")])
        .await;
    assert!(bad.is_err());
    assert!(!dir.path().join("escape").exists());
    s.remove_secrets(ID).await.unwrap();
    assert!(!s.has_secrets(ID).await.unwrap());
}

#[tokio::test]
async fn stored_sessions_are_listed_by_what_they_have() {
    let dir = tempfile::tempdir().unwrap();
    let s = storage(dir.path());
    let other = "1b7e2a52-4d3c-4c36-9a51-4f0e7a2b9c10";
    s.prepare(ID, USER).await.unwrap();
    s.prepare(other, USER).await.unwrap();
    s.remove_secrets(other).await.unwrap();
    // Names the relay never creates are not its to list (or remove).
    std::fs::create_dir_all(dir.path().join("sessions/not-a-session")).unwrap();
    std::fs::create_dir_all(dir.path().join("pi-secrets-x")).unwrap();
    assert_eq!(
        s.sessions().await.unwrap(),
        [
            StoredSession {
                session_id: ID.into(),
                files: true,
                secrets: true
            },
            StoredSession {
                session_id: other.into(),
                files: true,
                secrets: false
            },
        ]
    );
    assert!(
        is_uuid(ID) && !is_uuid("0b7e2a52") && !is_uuid("zb7e2a52-4d3c-4c36-9a51-4f0e7a2b9c10")
    );
}
