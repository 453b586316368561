//! SQL of relay settings and of environment changes: key/value settings (JSON text), and
//! environment updates and deletes that check, in the same transaction, the rules that keep
//! sessions valid (one default environment; no environment deleted under a live session). And
//! sessions' share links.

use rusqlite::{OptionalExtension, params};

use crate::rows::{self, EnvironmentPatch, EnvironmentRow, EnvironmentWrite};
use crate::{Store, StoreError};

impl Store {
    /// Every setting as (key, JSON text), by key.
    pub async fn settings(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached("SELECT key, value FROM settings ORDER BY key")?;
            let all = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(all)
        })
        .await
    }

    /// One setting's JSON text.
    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_owned();
        self.read(move |c| {
            Ok(
                c.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                    r.get(0)
                })
                .optional()?,
            )
        })
        .await
    }

    /// Inserts or replaces a setting.
    pub async fn put_setting(&self, key: &str, value: &str, now: &str) -> Result<(), StoreError> {
        let (key, value, now) = (key.to_owned(), value.to_owned(), now.to_owned());
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO settings (key, value, updated_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 updated_at = excluded.updated_at",
                params![key, value, now],
            )?;
            Ok(())
        })
        .await
    }

    /// Removes a setting; whether there was one.
    pub async fn delete_setting(&self, key: &str) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.write(move |tx| Ok(tx.execute("DELETE FROM settings WHERE key = ?1", [key])? > 0))
            .await
    }

    /// Session `session`'s share link `(token, created_at)`, made with `token` and `now` if it
    /// has none; `None` when the session does not exist.
    pub async fn share(
        &self,
        session: &str,
        token: &str,
        now: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let (session, token, now) = (session.to_owned(), token.to_owned(), now.to_owned());
        self.write(move |tx| {
            let exists: bool = tx
                .query_row("SELECT 1 FROM sessions WHERE id = ?1", [&session], |_| {
                    Ok(())
                })
                .optional()?
                .is_some();
            if !exists {
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO session_shares (token, session_id, created_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (session_id) DO NOTHING",
                params![token, session, now],
            )?;
            Ok(Some(tx.query_row(
                "SELECT token, created_at FROM session_shares WHERE session_id = ?1",
                [&session],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?))
        })
        .await
    }

    /// The session a share token names.
    pub async fn shared_session(&self, token: &str) -> Result<Option<String>, StoreError> {
        let token = token.to_owned();
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT session_id FROM session_shares WHERE token = ?1",
                [token],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    /// Every environment, in the order they were created.
    pub async fn environments(&self) -> Result<Vec<EnvironmentRow>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(&format!("{} ORDER BY rowid", rows::ENV_SELECT))?;
            let all = st
                .query_map([], rows::environment_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(all)
        })
        .await
    }

    /// Changes an environment. Making it the default clears the previous default; un-marking
    /// the default is refused ([`EnvironmentWrite::IsDefault`]) because sessions created without
    /// an environment need one.
    pub async fn update_environment(
        &self,
        id: &str,
        patch: EnvironmentPatch,
    ) -> Result<EnvironmentWrite, StoreError> {
        let id = id.to_owned();
        self.write(move |tx| {
            let Some(is_default) = is_default(tx, &id)? else {
                return Ok(EnvironmentWrite::NotFound);
            };
            match patch.is_default {
                Some(false) if is_default => return Ok(EnvironmentWrite::IsDefault),
                Some(true) if !is_default => {
                    tx.execute("UPDATE environments SET is_default = 0", [])?;
                }
                _ => {}
            }
            tx.execute(
                "UPDATE environments SET name = COALESCE(?2, name), \
                 config = COALESCE(?3, config), is_default = COALESCE(?4, is_default), \
                 updated_at = ?5 WHERE id = ?1",
                params![
                    id,
                    patch.name,
                    patch.config,
                    patch.is_default,
                    patch.updated_at
                ],
            )?;
            Ok(EnvironmentWrite::Done)
        })
        .await
    }

    /// Deletes an environment unless it is the default or a session that is not archived uses
    /// it. Archived sessions that used it keep their record but lose the reference (they can
    /// never start a sandbox again).
    pub async fn delete_environment(&self, id: &str) -> Result<EnvironmentWrite, StoreError> {
        let id = id.to_owned();
        self.write(move |tx| {
            let Some(is_default) = is_default(tx, &id)? else {
                return Ok(EnvironmentWrite::NotFound);
            };
            let users: i64 = tx.query_row(
                "SELECT COUNT(*) FROM sessions WHERE environment_id = ?1 AND status != 'archived'",
                [&id],
                |r| r.get(0),
            )?;
            if users > 0 {
                return Ok(EnvironmentWrite::InUse(users as u64));
            }
            if is_default {
                return Ok(EnvironmentWrite::IsDefault);
            }
            tx.execute(
                "UPDATE sessions SET environment_id = NULL WHERE environment_id = ?1",
                [&id],
            )?;
            tx.execute("DELETE FROM environments WHERE id = ?1", [&id])?;
            Ok(EnvironmentWrite::Done)
        })
        .await
    }
}

/// Whether environment `id` is the default; `None` when there is no such environment.
fn is_default(tx: &rusqlite::Transaction<'_>, id: &str) -> rusqlite::Result<Option<bool>> {
    tx.query_row(
        "SELECT is_default FROM environments WHERE id = ?1",
        [id],
        |r| r.get(0),
    )
    .optional()
}
