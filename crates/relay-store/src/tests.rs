//! Store tests against a real SQLite file per test.

use std::sync::Arc;

use bytes::Bytes;

use relay_model::Mode;

use super::*;

pub(crate) fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("relay.db")).unwrap();
    (dir, store)
}

pub(crate) fn new_session(id: &str) -> NewSession {
    NewSession {
        id: id.into(),
        mode: Mode::Chat,
        repo_id: None,
        name: Some("Chat session".into()),
        model_provider: None,
        model_id: None,
        system_prompt: None,
        sandbox_provider: None,
        environment_id: None,
        first_user_message: None,
        created_at: "2026-01-01T00:00:00.000Z".into(),
    }
}

/// `from → to`, which the lifecycle allows.
fn t(from: SessionStatus, to: SessionStatus) -> Transition {
    from.to(to).unwrap()
}

fn entry(session: &str, seq: u64) -> JournalEntry {
    JournalEntry {
        session_id: Arc::from(session),
        seq,
        ty: "agent_start".into(),
        payload: Bytes::from(format!("{{\"type\":\"agent_start\",\"n\":{seq}}}")),
        created_at: std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_767_225_600_000),
    }
}

#[tokio::test]
async fn a_new_session_starts_in_creating() {
    let (_d, store) = temp_store();
    store.insert_session(new_session("s1")).await.unwrap();
    let row = store.session("s1").await.unwrap().unwrap();
    assert_eq!(row.status, SessionStatus::Creating);
    assert_eq!(row.mode, Mode::Chat);
    assert_eq!(row.created_at, row.last_activity_at);
    assert!(store.session("nope").await.unwrap().is_none());
}

#[tokio::test]
async fn a_duplicate_session_id_is_a_constraint_error() {
    let (_d, store) = temp_store();
    store.insert_session(new_session("s1")).await.unwrap();
    let err = store.insert_session(new_session("s1")).await.unwrap_err();
    assert!(matches!(err, StoreError::Constraint(_)), "{err:?}");
    // The failed job must not poison later writes.
    store.insert_session(new_session("s2")).await.unwrap();
    assert_eq!(store.sessions(None).await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_status_changes_only_from_the_status_the_transition_starts_at() {
    use SessionStatus::*;
    let (_d, store) = temp_store();
    store.insert_session(new_session("s1")).await.unwrap();
    // The session is creating, not active: nothing changes.
    assert!(
        !store
            .set_status("s1", t(Active, Idle), None, "t")
            .await
            .unwrap()
    );
    assert_eq!(store.session("s1").await.unwrap().unwrap().status, Creating);
    let reason = Some("no image".to_owned());
    assert!(
        store
            .set_status("s1", t(Creating, Error), reason, "t")
            .await
            .unwrap()
    );
    let row = store.session("s1").await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.status_reason.as_deref()),
        (Error, Some("no image"))
    );
    // A missing session changes nothing either.
    assert!(
        !store
            .set_status("nope", t(Error, Creating), None, "t")
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn an_unknown_status_in_the_database_is_a_clear_error() {
    let (dir, store) = temp_store();
    store.insert_session(new_session("s1")).await.unwrap();
    store.barrier().await.unwrap();
    // Only a database changed behind the relay's back (its schema refuses the value) holds one.
    let raw = Connection::open(dir.path().join("relay.db")).unwrap();
    raw.pragma_update(None, "ignore_check_constraints", true)
        .unwrap();
    raw.execute("UPDATE sessions SET status = 'deleted' WHERE id = 's1'", [])
        .unwrap();
    let err = store.session("s1").await.unwrap_err().to_string();
    assert!(err.contains("unknown session status \"deleted\""), "{err}");
    assert!(store.sessions(None).await.is_err());
}

#[tokio::test]
async fn sessions_are_listed_newest_activity_first_and_filtered_by_status() {
    let (_d, store) = temp_store();
    for id in ["a", "b", "c"] {
        store.insert_session(new_session(id)).await.unwrap();
    }
    let (creating, active, archived) = (
        SessionStatus::Creating,
        SessionStatus::Active,
        SessionStatus::Archived,
    );
    store
        .set_status("b", t(creating, active), None, "2026-01-03T00:00:00.000Z")
        .await
        .unwrap();
    store
        .set_status("c", t(creating, archived), None, "2026-01-02T00:00:00.000Z")
        .await
        .unwrap();
    let ids: Vec<_> = store
        .sessions(None)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, ["b", "c", "a"]);
    let active = store.sessions(Some(vec![active, creating])).await.unwrap();
    assert_eq!(
        active.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["b", "a"]
    );
}

#[tokio::test]
async fn journal_lines_are_readable_after_a_barrier_in_order() {
    let (_d, store) = temp_store();
    store.insert_session(new_session("s1")).await.unwrap();
    for seq in 1..=10 {
        store.append(entry("s1", seq)).await.unwrap();
    }
    store.append(entry("s2", 1)).await.unwrap();
    store.barrier().await.unwrap();
    assert_eq!(store.max_seq("s1").await.unwrap(), 10);
    assert_eq!(store.max_seq("s2").await.unwrap(), 1);
    assert_eq!(store.max_seq("none").await.unwrap(), 0);
    let page = store
        .events("s1", 2, u64::MAX, 3, usize::MAX)
        .await
        .unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(page[0].payload, "{\"type\":\"agent_start\",\"n\":3}");
    assert_eq!(page[0].ty, "agent_start");
    let bounded = store.events("s1", 0, 4, 100, usize::MAX).await.unwrap();
    assert_eq!(bounded.len(), 4);
    assert_eq!(bounded[0].created_at, "2026-01-01T00:00:00.000Z");
    assert!(
        store
            .events("s1", 4, 4, 100, usize::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .events("s1", 10, u64::MAX, 100, usize::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .events("none", 0, u64::MAX, 100, usize::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    // Each session's lines stay its own, whatever the order they were written in.
    let s2 = store
        .events("s2", 0, u64::MAX, 100, usize::MAX)
        .await
        .unwrap();
    assert_eq!(s2.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);
    // A page ends once its payloads reach the byte budget, and always holds one event.
    let line = page[0].payload.len();
    let by_bytes = store
        .events("s1", 0, u64::MAX, 100, 3 * line)
        .await
        .unwrap();
    assert_eq!(
        by_bytes.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let tiny = store.events("s1", 5, u64::MAX, 100, 1).await.unwrap();
    assert_eq!(tiny.iter().map(|e| e.seq).collect::<Vec<_>>(), [6]);
}

#[tokio::test]
async fn journals_written_interleaved_read_back_apart() {
    let (_d, store) = temp_store();
    let batch: Vec<_> = (1..=50)
        .flat_map(|seq| [entry("a", seq), entry("b", seq), entry("c", seq)])
        .collect();
    store.append_batch(batch, None).await.unwrap();
    store.barrier().await.unwrap();
    for id in ["a", "b", "c"] {
        let all = store
            .events(id, 0, u64::MAX, 1000, usize::MAX)
            .await
            .unwrap();
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=50).collect::<Vec<_>>()
        );
        assert_eq!(store.max_seq(id).await.unwrap(), 50);
    }
}

#[tokio::test]
async fn a_sequence_number_out_of_range_is_dropped_alone() {
    let (_d, store) = temp_store();
    let batch = vec![
        entry("s1", 1),
        entry("s1", 0),
        entry("s1", 1 << 40),
        entry("s1", 2),
    ];
    store.append_batch(batch, None).await.unwrap();
    store.barrier().await.unwrap();
    let all = store
        .events("s1", 0, u64::MAX, 10, usize::MAX)
        .await
        .unwrap();
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
}

#[tokio::test]
async fn a_database_from_before_journal_keys_keeps_its_journal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    {
        // The schema as 0.1 left it: migrations 1-3, events keyed by session id text.
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        for (_, sql) in &migrations::MIGRATIONS[..3] {
            tx.execute_batch(sql).unwrap();
        }
        tx.pragma_update(None, "user_version", 3).unwrap();
        tx.commit().unwrap();
        let mut st = conn
            .prepare(
                "INSERT INTO events (session_id, seq, type, payload, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .unwrap();
        for (sid, seq, at) in [
            ("s1", 1, "2026-03-04T05:06:07.089Z"),
            ("s2", 1, "2026-03-04T05:06:08.000Z"),
            ("s1", 2, "2026-03-04T05:06:09.999Z"),
        ] {
            st.execute(params![
                sid,
                seq,
                "agent_start",
                format!("{{\"n\":{seq}}}"),
                at
            ])
            .unwrap();
        }
    }
    let store = Store::open(&path).unwrap();
    let s1 = store
        .events("s1", 0, u64::MAX, 10, usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        s1.iter()
            .map(|e| (e.seq, e.payload.as_str(), e.created_at.as_str()))
            .collect::<Vec<_>>(),
        [
            (1, "{\"n\":1}", "2026-03-04T05:06:07.089Z"),
            (2, "{\"n\":2}", "2026-03-04T05:06:09.999Z")
        ]
    );
    assert_eq!(store.max_seq("s2").await.unwrap(), 1);
    // New lines continue the migrated journal.
    store.append(entry("s1", 3)).await.unwrap();
    store.barrier().await.unwrap();
    assert_eq!(store.max_seq("s1").await.unwrap(), 3);
}

#[tokio::test]
async fn a_duplicate_journal_seq_is_dropped_not_fatal() {
    let (_d, store) = temp_store();
    store.append(entry("s1", 1)).await.unwrap();
    store.append(entry("s1", 1)).await.unwrap();
    store.append(entry("s1", 2)).await.unwrap();
    store.barrier().await.unwrap();
    let all = store
        .events("s1", 0, u64::MAX, 10, usize::MAX)
        .await
        .unwrap();
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
}

#[tokio::test]
async fn deleting_a_session_leaves_events_to_be_removed_in_chunks() {
    let (_d, store) = temp_store();
    store.insert_session(new_session("s1")).await.unwrap();
    for seq in 1..=25 {
        store.append(entry("s1", seq)).await.unwrap();
    }
    store.barrier().await.unwrap();
    assert!(store.delete_session("s1").await.unwrap());
    assert!(!store.delete_session("s1").await.unwrap());
    assert_eq!(store.orphaned_event_sessions().await.unwrap(), ["s1"]);
    let mut removed = 0;
    loop {
        let n = store.delete_events_chunk("s1", 10).await.unwrap();
        if n == 0 {
            break;
        }
        assert!(n <= 10);
        removed += n;
    }
    assert_eq!(removed, 25);
    assert!(store.orphaned_event_sessions().await.unwrap().is_empty());
    // A line that arrives after the purge (a late write of the deleted session) is found again
    // and purged like the rest.
    store.append(entry("s1", 26)).await.unwrap();
    store.barrier().await.unwrap();
    assert_eq!(store.orphaned_event_sessions().await.unwrap(), ["s1"]);
    assert_eq!(store.delete_events_chunk("s1", 10).await.unwrap(), 1);
    assert_eq!(store.delete_events_chunk("s1", 10).await.unwrap(), 0);
    assert!(store.orphaned_event_sessions().await.unwrap().is_empty());
}

#[tokio::test]
async fn purging_leaves_a_live_sessions_empty_journal_alone() {
    let (_d, store) = temp_store();
    store.insert_session(new_session("s1")).await.unwrap();
    store.append(entry("s1", 1)).await.unwrap();
    assert_eq!(store.delete_events_chunk("s1", 10).await.unwrap(), 1);
    assert_eq!(store.delete_events_chunk("s1", 10).await.unwrap(), 0);
    store.append(entry("s1", 2)).await.unwrap();
    store.barrier().await.unwrap();
    assert_eq!(store.max_seq("s1").await.unwrap(), 2);
}

#[tokio::test]
async fn reopening_a_database_keeps_data_and_does_not_remigrate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    {
        let store = Store::open(&path).unwrap();
        store.insert_session(new_session("s1")).await.unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert!(store.session("s1").await.unwrap().is_some());
}

/// A Docker environment named after its id.
fn env(id: &str, is_default: bool) -> EnvironmentRow {
    EnvironmentRow {
        id: id.into(),
        name: id.into(),
        sandbox_type: "docker".into(),
        config: "{}".into(),
        is_default,
        created_at: "t".into(),
        updated_at: "t".into(),
    }
}

#[tokio::test]
async fn setting_a_default_environment_clears_the_previous_default() {
    let (_d, store) = temp_store();
    store.insert_environment(env("e1", true)).await.unwrap();
    store.insert_environment(env("e2", true)).await.unwrap();
    assert_eq!(store.default_environment().await.unwrap().unwrap().id, "e2");
    assert!(!store.environment("e1").await.unwrap().unwrap().is_default);
    assert_eq!(store.environment_count().await.unwrap(), 2);
}

pub(crate) fn sealed(tag: &str) -> SealedValue {
    SealedValue {
        iv: format!("iv-{tag}"),
        ciphertext: format!("ct-{tag}"),
        tag: format!("tag-{tag}"),
        key_version: 1,
    }
}

fn secret(id: &str, env_var: &str) -> SecretRow {
    SecretRow {
        id: id.into(),
        name: id.into(),
        env_var: env_var.into(),
        kind: "ai_provider".into(),
        enabled: true,
        sealed: sealed(id),
        created_at: "t0".into(),
        updated_at: "t0".into(),
        domains: None,
    }
}

#[tokio::test]
async fn secret_variable_names_are_unique_whatever_their_case() {
    let (_d, store) = temp_store();
    assert_eq!(
        store
            .insert_secret(secret("a", "OPENAI_API_KEY"))
            .await
            .unwrap(),
        SecretWrite::Done
    );
    assert_eq!(
        store
            .insert_secret(secret("b", "openai_api_key"))
            .await
            .unwrap(),
        SecretWrite::DuplicateEnvVar
    );
    store.insert_secret(secret("c", "OTHER")).await.unwrap();
    let rename = SecretPatch {
        env_var: Some("OpenAI_Api_Key".into()),
        updated_at: "t1".into(),
        ..Default::default()
    };
    assert_eq!(
        store.update_secret("c", rename).await.unwrap(),
        SecretWrite::DuplicateEnvVar
    );
    let ids: Vec<_> = store
        .secrets()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, ["a", "c"]);
}

#[tokio::test]
async fn a_secret_patch_changes_only_what_it_names() {
    let (_d, store) = temp_store();
    let mut s = secret("a", "A");
    s.domains = Some(r#"["x.com"]"#.into());
    store.insert_secret(s).await.unwrap();
    let patch = SecretPatch {
        enabled: Some(false),
        sealed: Some(sealed("new")),
        updated_at: "t1".into(),
        ..Default::default()
    };
    assert_eq!(
        store.update_secret("a", patch).await.unwrap(),
        SecretWrite::Done
    );
    let row = store.secret("a").await.unwrap().unwrap();
    assert!(!row.enabled);
    assert_eq!(row.sealed, sealed("new"));
    assert_eq!((row.name.as_str(), row.env_var.as_str()), ("a", "A"));
    assert_eq!(row.domains.as_deref(), Some(r#"["x.com"]"#));
    assert_eq!(row.updated_at, "t1");
    let clear = SecretPatch {
        domains: Some(None),
        updated_at: "t2".into(),
        ..Default::default()
    };
    store.update_secret("a", clear).await.unwrap();
    assert_eq!(store.secret("a").await.unwrap().unwrap().domains, None);
    assert_eq!(
        store
            .update_secret("zz", SecretPatch::default())
            .await
            .unwrap(),
        SecretWrite::NotFound
    );
    assert!(store.delete_secret("a").await.unwrap());
    assert!(!store.delete_secret("a").await.unwrap());
}

#[tokio::test]
async fn resealing_is_all_or_nothing() {
    let (_d, store) = temp_store();
    for id in ["a", "b", "c"] {
        store
            .insert_secret(secret(id, &id.to_uppercase()))
            .await
            .unwrap();
    }
    store
        .set_key_check(KeyCheckRow {
            sealed: sealed("check"),
            created_at: "t0".into(),
        })
        .await
        .unwrap();
    let before = store.secrets().await.unwrap();
    // Fails on the second secret: the first one's new value must not survive.
    let err = store
        .reseal_secrets(|item| match item.id.as_deref() {
            Some("b") => Err("b does not open".into()),
            _ => Ok(SealedValue {
                key_version: 2,
                ..sealed("v2")
            }),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Aborted(ref m) if m == "b does not open"),
        "{err:?}"
    );
    assert_eq!(store.secrets().await.unwrap(), before);
    assert_eq!(
        store.key_check().await.unwrap().unwrap().sealed,
        sealed("check")
    );

    let n = store
        .reseal_secrets(|item| {
            Ok(SealedValue {
                key_version: 2,
                ..sealed(item.id.as_deref().unwrap_or("check2"))
            })
        })
        .await
        .unwrap();
    assert_eq!(n, 3);
    assert!(
        store
            .secrets()
            .await
            .unwrap()
            .iter()
            .all(|s| s.sealed.key_version == 2)
    );
    let check = store.key_check().await.unwrap().unwrap();
    assert_eq!(
        (check.sealed.key_version, check.created_at.as_str()),
        (2, "t0")
    );
    assert_eq!(check.sealed.ciphertext, "ct-check2");
    store.checkpoint().await.unwrap();
    assert_eq!(store.forget_secrets().await.unwrap(), 3);
    assert!(store.key_check().await.unwrap().is_none());
}

#[tokio::test]
async fn environments_in_use_or_default_are_not_deleted_and_the_default_stays() {
    let (_d, store) = temp_store();
    store.insert_environment(env("e1", true)).await.unwrap();
    store.insert_environment(env("e2", false)).await.unwrap();
    let mut s = new_session("s1");
    s.environment_id = Some("e2".into());
    store.insert_session(s).await.unwrap();

    assert_eq!(
        store.delete_environment("e2").await.unwrap(),
        EnvironmentWrite::InUse(1)
    );
    assert_eq!(
        store.delete_environment("e1").await.unwrap(),
        EnvironmentWrite::IsDefault
    );
    assert_eq!(
        store.delete_environment("e3").await.unwrap(),
        EnvironmentWrite::NotFound
    );
    let unmark = EnvironmentPatch {
        is_default: Some(false),
        updated_at: "t2".into(),
        ..Default::default()
    };
    assert_eq!(
        store.update_environment("e1", unmark).await.unwrap(),
        EnvironmentWrite::IsDefault
    );
    let promote = EnvironmentPatch {
        is_default: Some(true),
        name: Some("second".into()),
        updated_at: "t2".into(),
        ..Default::default()
    };
    assert_eq!(
        store.update_environment("e2", promote).await.unwrap(),
        EnvironmentWrite::Done
    );
    let envs = store.environments().await.unwrap();
    assert_eq!(
        envs.iter()
            .map(|e| (e.id.as_str(), e.is_default))
            .collect::<Vec<_>>(),
        [("e1", false), ("e2", true)]
    );
    assert_eq!(envs[1].name, "second");

    store
        .set_status(
            "s1",
            t(SessionStatus::Creating, SessionStatus::Archived),
            None,
            "t3",
        )
        .await
        .unwrap();
    store
        .update_environment(
            "e1",
            EnvironmentPatch {
                is_default: Some(true),
                updated_at: "t4".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.delete_environment("e2").await.unwrap(),
        EnvironmentWrite::Done
    );
    assert_eq!(
        store.session("s1").await.unwrap().unwrap().environment_id,
        None
    );
}

#[tokio::test]
async fn settings_are_upserted_by_key() {
    let (_d, store) = temp_store();
    store.put_setting("theme", "\"dark\"", "t1").await.unwrap();
    store.put_setting("a", "1", "t1").await.unwrap();
    store.put_setting("theme", "\"light\"", "t2").await.unwrap();
    assert_eq!(
        store.settings().await.unwrap(),
        [
            ("a".to_owned(), "1".to_owned()),
            ("theme".to_owned(), "\"light\"".to_owned())
        ]
    );
    assert_eq!(
        store.setting("theme").await.unwrap().as_deref(),
        Some("\"light\"")
    );
    assert_eq!(store.setting("none").await.unwrap(), None);
}

#[tokio::test]
async fn a_large_batch_with_one_duplicate_keeps_every_other_line() {
    let (_d, store) = temp_store();
    store.append(entry("s1", 40)).await.unwrap();
    store.barrier().await.unwrap();
    // 100 lines in one batch; seq 40 is already taken.
    let batch: Vec<_> = (1..=100).map(|seq| entry("s1", seq)).collect();
    store.append_batch(batch, None).await.unwrap();
    store.barrier().await.unwrap();
    let all = store
        .events("s1", 0, u64::MAX, 1000, usize::MAX)
        .await
        .unwrap();
    assert_eq!(all.len(), 100);
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=100).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn batches_beyond_the_journal_queue_budget_are_written_in_turn() {
    let (_d, store) = temp_store();
    // One line larger than the whole budget, then many batches that together exceed it.
    let mut big = entry("s1", 1);
    big.payload = Bytes::from("x".repeat(JOURNAL_QUEUE_BYTES + 1));
    store.append_batch(vec![big], None).await.unwrap();
    let line = Bytes::from("y".repeat(64 * 1024));
    let mut seq = 1;
    for _ in 0..2 * JOURNAL_QUEUE_BYTES / (16 * line.len()) {
        let batch = (0..16)
            .map(|_| {
                seq += 1;
                JournalEntry {
                    payload: line.clone(),
                    ..entry("s1", seq)
                }
            })
            .collect();
        store.append_batch(batch, None).await.unwrap();
    }
    store.barrier().await.unwrap();
    assert_eq!(store.max_seq("s1").await.unwrap(), seq);
    // Everything committed gave its budget back.
    assert_eq!(
        store.inner.journal_budget.available_permits(),
        JOURNAL_QUEUE_BYTES
    );
}

#[tokio::test]
async fn the_database_files_are_private_to_the_relay() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let mode = |suffix: &str| {
        let f = dir.path().join(format!("relay.db{suffix}"));
        std::fs::metadata(f).unwrap().permissions().mode() & 0o777
    };
    {
        let store = Store::open(&path).unwrap();
        store.insert_session(new_session("s1")).await.unwrap();
        for suffix in ["", "-wal", "-shm"] {
            assert_eq!(mode(suffix), 0o600, "relay.db{suffix}");
        }
    }
    // A database made readable by others (an older relay, a copy) is made private again.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _store = Store::open(&path).unwrap();
    assert_eq!(mode(""), 0o600);
}
