//! Store tests against a real SQLite file per test.

use std::sync::Arc;

use bytes::Bytes;

use super::*;

fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("relay.db")).unwrap();
    (dir, store)
}

fn new_session(id: &str) -> NewSession {
    NewSession {
        id: id.into(),
        mode: "chat".into(),
        name: Some("Chat session".into()),
        created_at: "2026-01-01T00:00:00.000Z".into(),
        ..Default::default()
    }
}

fn entry(session: &str, seq: u64) -> JournalEntry {
    JournalEntry {
        session_id: Arc::from(session),
        seq,
        ty: "agent_start".into(),
        payload: Bytes::from(format!("{{\"type\":\"agent_start\",\"n\":{seq}}}")),
        created_at: Arc::from("2026-01-01T00:00:00.000Z"),
    }
}

#[tokio::test]
async fn a_new_session_starts_in_creating() {
    let (_d, store) = temp_store();
    store.insert_session(new_session("s1")).await.unwrap();
    let row = store.session("s1").await.unwrap().unwrap();
    assert_eq!(row.status, "creating");
    assert_eq!(row.mode, "chat");
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
async fn an_invalid_status_is_refused_by_the_schema() {
    let (_d, store) = temp_store();
    store.insert_session(new_session("s1")).await.unwrap();
    assert!(store.set_status("s1", "bogus", None, "t").await.is_err());
    assert_eq!(
        store.session("s1").await.unwrap().unwrap().status,
        "creating"
    );
}

#[tokio::test]
async fn sessions_are_listed_newest_activity_first_and_filtered_by_status() {
    let (_d, store) = temp_store();
    for id in ["a", "b", "c"] {
        store.insert_session(new_session(id)).await.unwrap();
    }
    store
        .set_status("b", "active", None, "2026-01-03T00:00:00.000Z")
        .await
        .unwrap();
    store
        .set_status("c", "archived", None, "2026-01-02T00:00:00.000Z")
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
    let active = store
        .sessions(Some(vec!["active".into(), "creating".into()]))
        .await
        .unwrap();
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
    let page = store.events("s1", 2, u64::MAX, 3).await.unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(page[0].payload, "{\"type\":\"agent_start\",\"n\":3}");
    assert_eq!(page[0].ty, "agent_start");
    let bounded = store.events("s1", 0, 4, 100).await.unwrap();
    assert_eq!(bounded.len(), 4);
}

#[tokio::test]
async fn a_duplicate_journal_seq_is_dropped_not_fatal() {
    let (_d, store) = temp_store();
    store.append(entry("s1", 1)).await.unwrap();
    store.append(entry("s1", 1)).await.unwrap();
    store.append(entry("s1", 2)).await.unwrap();
    store.barrier().await.unwrap();
    let all = store.events("s1", 0, u64::MAX, 10).await.unwrap();
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

#[tokio::test]
async fn setting_a_default_environment_clears_the_previous_default() {
    let (_d, store) = temp_store();
    let env = |id: &str, is_default| EnvironmentRow {
        id: id.into(),
        name: id.into(),
        sandbox_type: "docker".into(),
        config: "{}".into(),
        is_default,
        created_at: "t".into(),
        updated_at: "t".into(),
    };
    store.insert_environment(env("e1", true)).await.unwrap();
    store.insert_environment(env("e2", true)).await.unwrap();
    assert_eq!(store.default_environment().await.unwrap().unwrap().id, "e2");
    assert!(!store.environment("e1").await.unwrap().unwrap().is_default);
    assert_eq!(store.environment_count().await.unwrap(), 2);
}
