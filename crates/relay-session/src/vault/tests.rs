//! Vault tests: key file creation, refusing keys that do not fit the stored secrets, and key
//! rotation including interrupted ones.

use std::os::unix::fs::PermissionsExt;

use secrecy::{ExposeSecret, SecretString};

use super::*;
use crate::secrets::{NewSecret, SecretKind, SecretService};

struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("relay.db")).unwrap();
        Fixture { dir, store }
    }

    fn key_path(&self) -> PathBuf {
        self.dir.path().join("config").join(KEY_FILE_NAME)
    }

    fn file_source(&self) -> KeySource {
        KeySource::new(None, &self.dir.path().join("config"))
    }

    async fn add(&self, vault: Vault, env_var: &str, value: &str) -> String {
        SecretService::new(self.store.clone(), vault)
            .create(NewSecret {
                name: env_var.into(),
                env_var: env_var.into(),
                kind: SecretKind::AiProvider,
                value: SecretString::from(value),
                enabled: true,
                domains: None,
            })
            .await
            .unwrap()
            .id
    }

    async fn values(&self, vault: Vault) -> Vec<(String, String)> {
        SecretService::new(self.store.clone(), vault)
            .sandbox_files(true)
            .await
            .unwrap()
            .into_iter()
            .map(|f| (f.name, f.value.expose_secret().to_owned()))
            .collect()
    }

    async fn rows(&self) -> Vec<relay_store::SecretRow> {
        self.store.secrets().await.unwrap()
    }
}

fn env(key: &EncryptionKey) -> KeySource {
    KeySource::Env(key.to_base64())
}

fn key_error(r: Result<Vault, SessionError>) -> String {
    match r {
        Err(SessionError::Key(m)) => m,
        other => panic!("expected a key error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_first_start_creates_a_private_key_file_that_opens_again() {
    let fx = Fixture::new();
    let vault = open(&fx.store, &fx.file_source()).await.unwrap();
    assert_eq!(vault.version(), 1);
    let meta = std::fs::metadata(fx.key_path()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(fx.key_path()).unwrap();
    assert!(EncryptionKey::from_base64(&text, "file").is_ok());
    assert!(fx.store.key_check().await.unwrap().is_some());
    // No temporary file is left next to it.
    let names: Vec<_> = std::fs::read_dir(fx.key_path().parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [KEY_FILE_NAME]);

    fx.add(vault, "OPENAI_API_KEY", "sk-1").await;
    let again = open(&fx.store, &fx.file_source()).await.unwrap();
    assert_eq!(
        fx.values(again).await,
        [("openai_api_key".to_owned(), "sk-1".to_owned())]
    );
}

#[tokio::test]
async fn a_deleted_key_file_is_refused_while_secrets_exist_and_nothing_is_written() {
    let fx = Fixture::new();
    let vault = open(&fx.store, &fx.file_source()).await.unwrap();
    fx.add(vault, "ANTHROPIC_API_KEY", "sk-ant").await;
    let before = fx.rows().await;
    std::fs::remove_file(fx.key_path()).unwrap();

    let m = key_error(open(&fx.store, &fx.file_source()).await);
    assert!(m.contains("is missing"), "{m}");
    assert!(m.contains("1 secret(s)"), "{m}");
    assert!(m.contains("secrets forget"), "{m}");
    assert!(!fx.key_path().exists(), "no new key was created");
    assert_eq!(fx.rows().await, before);
}

#[tokio::test]
async fn a_deleted_key_file_without_secrets_is_replaced_by_a_new_key() {
    let fx = Fixture::new();
    open(&fx.store, &fx.file_source()).await.unwrap();
    let old_check = fx.store.key_check().await.unwrap().unwrap();
    std::fs::remove_file(fx.key_path()).unwrap();
    let vault = open(&fx.store, &fx.file_source()).await.unwrap();
    assert!(fx.key_path().exists());
    assert_ne!(fx.store.key_check().await.unwrap().unwrap(), old_check);
    fx.add(vault, "K", "v").await;
    assert!(open(&fx.store, &fx.file_source()).await.is_ok());
}

#[tokio::test]
async fn a_key_file_other_users_can_read_is_refused_with_the_fix() {
    let fx = Fixture::new();
    open(&fx.store, &fx.file_source()).await.unwrap();
    std::fs::set_permissions(fx.key_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let m = key_error(open(&fx.store, &fx.file_source()).await);
    assert!(m.contains("mode 0644") && m.contains("chmod 600"), "{m}");
    std::fs::set_permissions(fx.key_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(open(&fx.store, &fx.file_source()).await.is_ok());
}

#[tokio::test]
async fn a_key_file_that_is_not_a_key_is_refused_naming_the_file() {
    let fx = Fixture::new();
    std::fs::create_dir_all(fx.key_path().parent().unwrap()).unwrap();
    std::fs::write(fx.key_path(), "hunter2\n").unwrap();
    std::fs::set_permissions(fx.key_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let m = key_error(open(&fx.store, &fx.file_source()).await);
    assert!(m.contains(&fx.key_path().display().to_string()), "{m}");
    assert!(m.contains("base64") || m.contains("bytes"), "{m}");
    assert!(
        fx.store.key_check().await.unwrap().is_none(),
        "nothing written"
    );
}

#[tokio::test]
async fn a_malformed_environment_key_is_refused_naming_the_variable() {
    let fx = Fixture::new();
    for bad in ["", "not base64!", "AAAA"] {
        let m = key_error(open(&fx.store, &KeySource::Env(SecretString::from(bad))).await);
        assert!(m.contains(KEY_ENV), "{bad:?}: {m}");
    }
    assert!(fx.store.key_check().await.unwrap().is_none());
    assert!(
        !fx.key_path().exists(),
        "an environment key never creates a file"
    );
}

#[tokio::test]
async fn a_wrong_key_is_refused_and_no_stored_secret_changes() {
    let fx = Fixture::new();
    let right = EncryptionKey::generate();
    let vault = open(&fx.store, &env(&right)).await.unwrap();
    fx.add(vault.clone(), "A_KEY", "a").await;
    fx.add(vault, "B_KEY", "b").await;
    let (rows, check) = (fx.rows().await, fx.store.key_check().await.unwrap());

    let m = key_error(open(&fx.store, &env(&EncryptionKey::generate())).await);
    assert!(
        m.contains("cannot decrypt") && m.contains("Nothing was changed"),
        "{m}"
    );
    assert_eq!(fx.rows().await, rows);
    assert_eq!(fx.store.key_check().await.unwrap(), check);
    // The right key still works afterwards.
    let vault = open(&fx.store, &env(&right)).await.unwrap();
    assert_eq!(fx.values(vault).await.len(), 2);
}

#[tokio::test]
async fn without_a_key_check_one_secret_per_version_is_what_decides() {
    let fx = Fixture::new();
    let right = EncryptionKey::generate();
    let vault = Vault::new(right.clone(), 1);
    fx.add(vault, "A_KEY", "a").await;
    assert!(fx.store.key_check().await.unwrap().is_none());
    key_error(open(&fx.store, &env(&EncryptionKey::generate())).await);
    assert!(fx.store.key_check().await.unwrap().is_none());
    open(&fx.store, &env(&right)).await.unwrap();
    assert!(fx.store.key_check().await.unwrap().is_some());
}

#[tokio::test]
async fn rotation_reencrypts_everything_under_the_next_version_and_replaces_the_key_file() {
    let fx = Fixture::new();
    let vault = open(&fx.store, &fx.file_source()).await.unwrap();
    fx.add(vault.clone(), "A_KEY", "value a").await;
    fx.add(vault, "B_KEY", "value b").await;
    let old_text = std::fs::read_to_string(fx.key_path()).unwrap();
    let before = fx.rows().await;

    let r = rotate(&fx.store, &fx.file_source(), None).await.unwrap();
    assert_eq!((r.version, r.secrets), (2, 2));
    assert_eq!(r.key_file.as_deref(), Some(fx.key_path().as_path()));
    let new_text = std::fs::read_to_string(fx.key_path()).unwrap();
    assert_ne!(new_text, old_text);
    assert_eq!(new_text.trim(), r.key.to_base64().expose_secret());
    assert_eq!(
        std::fs::metadata(fx.key_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(!pending_path(&fx.key_path()).exists());
    let after = fx.rows().await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.sealed.key_version, 2);
        assert_ne!(a.sealed.ciphertext, b.sealed.ciphertext);
        assert_eq!((&a.id, &a.env_var), (&b.id, &b.env_var));
    }
    let vault = open(&fx.store, &fx.file_source()).await.unwrap();
    assert_eq!(vault.version(), 2);
    assert_eq!(
        fx.values(vault).await,
        [
            ("a_key".to_owned(), "value a".to_owned()),
            ("b_key".to_owned(), "value b".to_owned())
        ]
    );
    // The old key is of no use any more.
    let old = EncryptionKey::from_base64(&old_text, "old").unwrap();
    key_error(open(&fx.store, &env(&old)).await);
}

#[tokio::test]
async fn rotation_with_an_environment_key_returns_the_new_key_to_set() {
    let fx = Fixture::new();
    let old = EncryptionKey::generate();
    let vault = open(&fx.store, &env(&old)).await.unwrap();
    fx.add(vault, "A_KEY", "a").await;
    let wanted = EncryptionKey::generate();
    let r = rotate(&fx.store, &env(&old), Some(wanted.clone()))
        .await
        .unwrap();
    assert_eq!(r.key_file, None);
    assert_eq!(
        r.key.to_base64().expose_secret(),
        wanted.to_base64().expose_secret()
    );
    let m = key_error(open(&fx.store, &env(&old)).await);
    assert!(m.contains("rotate-key"), "{m}");
    let vault = open(&fx.store, &env(&wanted)).await.unwrap();
    assert_eq!(vault.version(), 2);
    assert_eq!(fx.values(vault).await[0].1, "a");
    assert!(!fx.key_path().exists());
}

#[tokio::test]
async fn a_rotation_interrupted_before_its_commit_keeps_the_old_key() {
    let fx = Fixture::new();
    let vault = open(&fx.store, &fx.file_source()).await.unwrap();
    fx.add(vault, "A_KEY", "a").await;
    let old_text = std::fs::read_to_string(fx.key_path()).unwrap();
    // Crash right after the new key was written aside.
    write_pending_key(&fx.key_path(), &EncryptionKey::generate()).unwrap();

    let vault = open(&fx.store, &fx.file_source()).await.unwrap();
    assert_eq!(vault.version(), 1);
    assert!(!pending_path(&fx.key_path()).exists());
    assert_eq!(std::fs::read_to_string(fx.key_path()).unwrap(), old_text);
    assert_eq!(fx.values(vault).await[0].1, "a");
}

#[tokio::test]
async fn a_rotation_interrupted_after_its_commit_is_finished_with_the_new_key() {
    let fx = Fixture::new();
    let old = open(&fx.store, &fx.file_source()).await.unwrap();
    fx.add(old.clone(), "A_KEY", "a").await;
    let new = Vault::new(EncryptionKey::generate(), 2);
    // Crash after the database committed, before the key file was replaced.
    write_pending_key(&fx.key_path(), &new.key).unwrap();
    reseal(&fx.store, &old, &new).await.unwrap();

    let vault = open(&fx.store, &fx.file_source()).await.unwrap();
    assert_eq!(vault.version(), 2);
    assert!(!pending_path(&fx.key_path()).exists());
    let text = std::fs::read_to_string(fx.key_path()).unwrap();
    assert_eq!(text.trim(), new.key.to_base64().expose_secret());
    assert_eq!(fx.values(vault).await[0].1, "a");
}

#[tokio::test]
async fn a_rotation_that_meets_a_damaged_secret_changes_nothing() {
    let fx = Fixture::new();
    let vault = open(&fx.store, &fx.file_source()).await.unwrap();
    fx.add(vault.clone(), "A_KEY", "a").await;
    let b = fx.add(vault.clone(), "B_KEY", "b").await;
    // B's row gets A's ciphertext: it no longer opens (bound to A's id).
    let a_sealed = fx.rows().await[0].sealed.clone();
    fx.store
        .update_secret(
            &b,
            relay_store::SecretPatch {
                sealed: Some(a_sealed),
                updated_at: "t".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (rows, key_text) = (
        fx.rows().await,
        std::fs::read_to_string(fx.key_path()).unwrap(),
    );

    let err = rotate(&fx.store, &fx.file_source(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, SessionError::Crypto(_)), "{err:?}");
    assert_eq!(fx.rows().await, rows);
    assert_eq!(std::fs::read_to_string(fx.key_path()).unwrap(), key_text);
    assert!(!pending_path(&fx.key_path()).exists());
}
