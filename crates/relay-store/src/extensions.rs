//! SQL of extension configurations (pi packages configured for every session, a mode's sessions
//! or one session) and of what the relay last wrote in each session's `settings.json`.

use relay_model::{ExtensionScope, Mode};
use rusqlite::{OptionalExtension, params};

use crate::{Store, StoreError};

/// One configured package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtensionConfigRow {
    /// Its id.
    pub id: String,
    /// Where it applies.
    pub scope: ExtensionScope,
    /// The session, for [`ExtensionScope::Session`].
    pub session_id: Option<String>,
    /// pi's package reference (`npm:@scope/pkg`, `@scope/pkg@1.2.3`, `git:https://…`).
    pub package: String,
    /// Its configuration, a JSON object, if one was given.
    pub config_json: Option<String>,
    /// When it was added.
    pub created_at: String,
}

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ExtensionConfigRow> {
    let scope: String = r.get(1)?;
    Ok(ExtensionConfigRow {
        id: r.get(0)?,
        scope: scope.parse().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
        })?,
        session_id: r.get(2)?,
        package: r.get(3)?,
        config_json: r.get(4)?,
        created_at: r.get(5)?,
    })
}

const SELECT: &str =
    "SELECT id, scope, session_id, package, config_json, created_at FROM extension_configs";

/// What [`Store::upsert_extension_config`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upserted {
    /// A new row.
    Created,
    /// The package was configured there already; its configuration was replaced.
    Replaced,
    /// The package was configured there already and no configuration was given: unchanged.
    Unchanged,
}

fn select_by_id(
    c: &rusqlite::Connection,
    id: &str,
) -> rusqlite::Result<Option<ExtensionConfigRow>> {
    c.query_row(&format!("{SELECT} WHERE id = ?1"), [id], from_row)
        .optional()
}

impl Store {
    /// The packages configured at `scope` (for one session: `session`), oldest first.
    pub async fn extension_configs(
        &self,
        scope: ExtensionScope,
        session: Option<&str>,
    ) -> Result<Vec<ExtensionConfigRow>, StoreError> {
        let session = session.map(str::to_owned);
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "{SELECT} WHERE scope = ?1 AND IFNULL(session_id, '') = IFNULL(?2, '') \
                 ORDER BY created_at, rowid"
            ))?;
            let rows = st
                .query_map(params![scope.as_str(), session], from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Every package that applies to session `session` of `mode`: global, the mode's and the
    /// session's own, in that order (oldest first within a scope).
    pub async fn extension_configs_for(
        &self,
        session: &str,
        mode: Mode,
    ) -> Result<Vec<ExtensionConfigRow>, StoreError> {
        let session = session.to_owned();
        let rows = self
            .read(move |c| {
                let mut st = c.prepare_cached(&format!(
                    "{SELECT} WHERE (session_id IS NULL AND scope IN ('global', ?1)) \
                     OR (scope = 'session' AND session_id = ?2) ORDER BY created_at, rowid"
                ))?;
                let rows = st
                    .query_map(params![mode.as_str(), session], from_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await?;
        let mut rows = rows;
        rows.sort_by_key(|r| r.scope.priority());
        Ok(rows)
    }

    /// One configured package.
    pub async fn extension_config(
        &self,
        id: &str,
    ) -> Result<Option<ExtensionConfigRow>, StoreError> {
        let id = id.to_owned();
        self.read(move |c| Ok(select_by_id(c, &id)?)).await
    }

    /// Adds `row`'s package at its scope, or, when it is configured there already, replaces its
    /// configuration if `row` has one (and otherwise leaves it). Returns the row as stored.
    pub async fn upsert_extension_config(
        &self,
        row: ExtensionConfigRow,
    ) -> Result<(ExtensionConfigRow, Upserted), StoreError> {
        self.write(move |tx| {
            let existing = tx
                .query_row(
                    &format!(
                        "{SELECT} WHERE scope = ?1 AND IFNULL(session_id, '') = IFNULL(?2, '') \
                         AND package = ?3"
                    ),
                    params![row.scope.as_str(), row.session_id, row.package],
                    from_row,
                )
                .optional()?;
            match existing {
                Some(mut old) => {
                    if row.config_json.is_none() {
                        return Ok((old, Upserted::Unchanged));
                    }
                    tx.execute(
                        "UPDATE extension_configs SET config_json = ?2 WHERE id = ?1",
                        params![old.id, row.config_json],
                    )?;
                    old.config_json = row.config_json;
                    Ok((old, Upserted::Replaced))
                }
                None => {
                    tx.execute(
                        "INSERT INTO extension_configs \
                         (id, scope, session_id, package, config_json, created_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![
                            row.id,
                            row.scope.as_str(),
                            row.session_id,
                            row.package,
                            row.config_json,
                            row.created_at
                        ],
                    )?;
                    Ok((row, Upserted::Created))
                }
            }
        })
        .await
    }

    /// Replaces a configured package's configuration; `None` when there is no such row.
    pub async fn set_extension_config(
        &self,
        id: &str,
        config_json: String,
    ) -> Result<Option<ExtensionConfigRow>, StoreError> {
        let id = id.to_owned();
        self.write(move |tx| {
            tx.execute(
                "UPDATE extension_configs SET config_json = ?2 WHERE id = ?1",
                params![id, config_json],
            )?;
            Ok(select_by_id(tx, &id)?)
        })
        .await
    }

    /// Removes a configured package; the row it was, or `None` when there was none.
    pub async fn delete_extension_config(
        &self,
        id: &str,
    ) -> Result<Option<ExtensionConfigRow>, StoreError> {
        let id = id.to_owned();
        self.write(move |tx| {
            let old = select_by_id(tx, &id)?;
            tx.execute("DELETE FROM extension_configs WHERE id = ?1", [&id])?;
            Ok(old)
        })
        .await
    }

    /// Marks the active sessions a change at `scope` (for one session: `session`) affects as
    /// having stale extensions (they apply at the sandbox's next start); how many.
    pub async fn mark_extensions_stale(
        &self,
        scope: ExtensionScope,
        session: Option<&str>,
    ) -> Result<u64, StoreError> {
        let session = session.map(str::to_owned);
        self.write(move |tx| {
            let base = "UPDATE sessions SET extensions_stale = 1 WHERE status = 'active'";
            let n = match scope {
                ExtensionScope::Global => tx.execute(base, [])?,
                ExtensionScope::Chat | ExtensionScope::Code => {
                    let mode = if scope == ExtensionScope::Chat {
                        "chat"
                    } else {
                        "code"
                    };
                    tx.execute(&format!("{base} AND mode = ?1"), [mode])?
                }
                ExtensionScope::Session => {
                    tx.execute(&format!("{base} AND id = ?1"), params![session])?
                }
            };
            Ok(n as u64)
        })
        .await
    }

    /// What the relay last wrote in session `session`'s `settings.json` (its own JSON), if
    /// anything.
    pub async fn applied_extensions(&self, session: &str) -> Result<Option<String>, StoreError> {
        let session = session.to_owned();
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT applied FROM session_extensions_applied WHERE session_id = ?1",
                [session],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    /// Records what the relay wrote in session `session`'s `settings.json` and clears its
    /// stale mark: its sandbox is about to start with it.
    pub async fn set_applied_extensions(
        &self,
        session: &str,
        applied: String,
    ) -> Result<(), StoreError> {
        let session = session.to_owned();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO session_extensions_applied (session_id, applied) VALUES (?1, ?2) \
                 ON CONFLICT (session_id) DO UPDATE SET applied = excluded.applied",
                params![session, applied],
            )?;
            tx.execute(
                "UPDATE sessions SET extensions_stale = 0 WHERE id = ?1",
                [&session],
            )?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{new_session, temp_store};

    fn config(
        id: &str,
        scope: ExtensionScope,
        session: Option<&str>,
        pkg: &str,
    ) -> ExtensionConfigRow {
        ExtensionConfigRow {
            id: id.into(),
            scope,
            session_id: session.map(str::to_owned),
            package: pkg.into(),
            config_json: None,
            created_at: format!("2026-01-01T00:00:0{}.000Z", id.len() % 10),
        }
    }

    #[tokio::test]
    async fn a_package_is_configured_once_per_scope_and_its_config_replaced() {
        let (_d, store) = temp_store();
        let (row, did) = store
            .upsert_extension_config(config("e1", ExtensionScope::Global, None, "npm:a"))
            .await
            .unwrap();
        assert_eq!((row.id.as_str(), did), ("e1", Upserted::Created));
        // Again without a config: the first row, unchanged.
        let (row, did) = store
            .upsert_extension_config(config("e2", ExtensionScope::Global, None, "npm:a"))
            .await
            .unwrap();
        assert_eq!((row.id.as_str(), did), ("e1", Upserted::Unchanged));
        // With one: replaced in place.
        let mut with = config("e3", ExtensionScope::Global, None, "npm:a");
        with.config_json = Some("{\"k\":1}".into());
        let (row, did) = store.upsert_extension_config(with).await.unwrap();
        assert_eq!((row.id.as_str(), did), ("e1", Upserted::Replaced));
        assert_eq!(row.config_json.as_deref(), Some("{\"k\":1}"));
        // The same package at another scope is another row.
        let (_, did) = store
            .upsert_extension_config(config("e4", ExtensionScope::Chat, None, "npm:a"))
            .await
            .unwrap();
        assert_eq!(did, Upserted::Created);
        let global = store
            .extension_configs(ExtensionScope::Global, None)
            .await
            .unwrap();
        assert_eq!(global.len(), 1);
        assert_eq!(
            store
                .delete_extension_config("e1")
                .await
                .unwrap()
                .unwrap()
                .id,
            "e1"
        );
        assert!(store.delete_extension_config("e1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_session_gets_global_then_its_modes_then_its_own_and_they_go_with_it() {
        let (_d, store) = temp_store();
        store.insert_session(new_session("s1")).await.unwrap();
        store.insert_session(new_session("s2")).await.unwrap();
        for c in [
            config("own", ExtensionScope::Session, Some("s1"), "npm:a"),
            config("other", ExtensionScope::Session, Some("s2"), "npm:a"),
            config("code", ExtensionScope::Code, None, "npm:c"),
            config("chat", ExtensionScope::Chat, None, "npm:a"),
            config("g", ExtensionScope::Global, None, "npm:a"),
        ] {
            store.upsert_extension_config(c).await.unwrap();
        }
        let ids: Vec<String> = store
            .extension_configs_for("s1", Mode::Chat)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["g", "chat", "own"]);
        // A row of one session's scope needs the session.
        let orphan = config("x", ExtensionScope::Session, None, "npm:a");
        assert!(store.upsert_extension_config(orphan).await.is_err());
        store.delete_session("s1").await.unwrap();
        assert!(store.extension_config("own").await.unwrap().is_none());
        assert!(store.extension_config("other").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn only_active_sessions_in_reach_are_marked_stale_and_applying_clears_it() {
        let (_d, store) = temp_store();
        store.insert_session(new_session("s1")).await.unwrap();
        assert_eq!(
            store
                .mark_extensions_stale(ExtensionScope::Global, None)
                .await
                .unwrap(),
            0,
            "a session still creating starts with what is configured"
        );
        let t = relay_model::SessionStatus::Creating
            .to(relay_model::SessionStatus::Active)
            .unwrap();
        store
            .set_status("s1", t, None, "2026-01-01T00:00:01.000Z")
            .await
            .unwrap();
        let stale = |scope| store.mark_extensions_stale(scope, Some("s1"));
        assert_eq!(stale(ExtensionScope::Code).await.unwrap(), 0);
        assert_eq!(stale(ExtensionScope::Chat).await.unwrap(), 1);
        assert!(store.session("s1").await.unwrap().unwrap().extensions_stale);
        store
            .set_applied_extensions("s1", "{}".into())
            .await
            .unwrap();
        assert!(!store.session("s1").await.unwrap().unwrap().extensions_stale);
        assert_eq!(
            store.applied_extensions("s1").await.unwrap().as_deref(),
            Some("{}")
        );
        assert_eq!(stale(ExtensionScope::Session).await.unwrap(), 1);
    }
}
