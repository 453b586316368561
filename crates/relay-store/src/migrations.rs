//! Schema migrations, embedded in the binary and applied in order at open. The applied version
//! is SQLite's `user_version`; each migration runs in its own transaction.

use rusqlite::Connection;

use crate::StoreError;

/// The migrations, oldest first. Never edit one that has shipped; add a new one.
pub(crate) const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_initial",
        include_str!("../migrations/0001_initial.sql"),
    ),
    (
        "0002_stdout_cursor",
        include_str!("../migrations/0002_stdout_cursor.sql"),
    ),
    (
        "0003_secrets_settings",
        include_str!("../migrations/0003_secrets_settings.sql"),
    ),
    (
        "0004_journal_keys",
        include_str!("../migrations/0004_journal_keys.sql"),
    ),
    ("0005_shares", include_str!("../migrations/0005_shares.sql")),
    (
        "0006_session_files",
        include_str!("../migrations/0006_session_files.sql"),
    ),
    (
        "0007_extension_configs",
        include_str!("../migrations/0007_extension_configs.sql"),
    ),
    ("0008_github", include_str!("../migrations/0008_github.sql")),
];

/// Applies every migration newer than the database's `user_version`.
pub(crate) fn apply(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (index, (name, sql)) in MIGRATIONS.iter().enumerate() {
        let version = index as i64 + 1;
        if version <= current {
            continue;
        }
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(migration = name, "applied database migration");
    }
    if current > MIGRATIONS.len() as i64 {
        tracing::warn!(
            current,
            known = MIGRATIONS.len(),
            "database was written by a newer pi-relay"
        );
    }
    Ok(())
}
