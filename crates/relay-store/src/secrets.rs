//! SQL of the secrets vault: secret rows (sealed values only; the store never sees a
//! plaintext), the key check row, and re-sealing everything under a new key in one
//! transaction. Every write goes through the single writer, so two updates of the same secret
//! are applied one after the other and a row never mixes the nonce of one value with the
//! ciphertext of another.

use rusqlite::{OptionalExtension, Transaction, params};

use crate::rows::{
    self, KeyCheckRow, ResealItem, SealedValue, SecretPatch, SecretRow, SecretWrite,
};
use crate::{Store, StoreError};

/// Whether another secret (not `except_id`) uses `env_var`, compared case-insensitively.
fn env_var_taken(tx: &Transaction<'_>, env_var: &str, except_id: &str) -> Result<bool, StoreError> {
    Ok(tx
        .query_row(
            "SELECT 1 FROM secrets WHERE env_var = ?1 COLLATE NOCASE AND id != ?2",
            params![env_var, except_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

impl Store {
    /// Every secret, oldest first.
    pub async fn secrets(&self) -> Result<Vec<SecretRow>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(&format!(
                "{} ORDER BY created_at, rowid",
                rows::SECRET_SELECT
            ))?;
            let all = st
                .query_map([], rows::secret_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(all)
        })
        .await
    }

    /// One secret.
    pub async fn secret(&self, id: &str) -> Result<Option<SecretRow>, StoreError> {
        let id = id.to_owned();
        self.read(move |c| {
            Ok(c.query_row(
                &format!("{} WHERE id = ?1", rows::SECRET_SELECT),
                [id],
                rows::secret_from_row,
            )
            .optional()?)
        })
        .await
    }

    /// Inserts a secret unless its variable name is taken.
    pub async fn insert_secret(&self, s: SecretRow) -> Result<SecretWrite, StoreError> {
        self.write(move |tx| {
            if env_var_taken(tx, &s.env_var, &s.id)? {
                return Ok(SecretWrite::DuplicateEnvVar);
            }
            tx.execute(
                "INSERT INTO secrets (id, name, env_var, kind, enabled, iv, ciphertext, tag, \
                 key_version, created_at, updated_at, domains) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    s.id,
                    s.name,
                    s.env_var,
                    s.kind,
                    s.enabled,
                    s.sealed.iv,
                    s.sealed.ciphertext,
                    s.sealed.tag,
                    s.sealed.key_version,
                    s.created_at,
                    s.updated_at,
                    s.domains
                ],
            )
            .map_err(crate::constraint)?;
            Ok(SecretWrite::Done)
        })
        .await
    }

    /// Applies `patch` to a secret in one step: the row is checked, the name uniqueness is
    /// checked and the fields are written inside the same transaction.
    pub async fn update_secret(
        &self,
        id: &str,
        patch: SecretPatch,
    ) -> Result<SecretWrite, StoreError> {
        let id = id.to_owned();
        self.write(move |tx| {
            let exists = tx
                .query_row("SELECT 1 FROM secrets WHERE id = ?1", [&id], |_| Ok(()))
                .optional()?
                .is_some();
            if !exists {
                return Ok(SecretWrite::NotFound);
            }
            if let Some(env_var) = &patch.env_var
                && env_var_taken(tx, env_var, &id)?
            {
                return Ok(SecretWrite::DuplicateEnvVar);
            }
            let (iv, ciphertext, tag, key_version) = match &patch.sealed {
                Some(s) => (
                    Some(&s.iv),
                    Some(&s.ciphertext),
                    Some(&s.tag),
                    Some(s.key_version),
                ),
                None => (None, None, None, None),
            };
            let (set_domains, domains) = match &patch.domains {
                Some(d) => (true, d.clone()),
                None => (false, None),
            };
            tx.execute(
                "UPDATE secrets SET \
                 name = COALESCE(?2, name), \
                 env_var = COALESCE(?3, env_var), \
                 kind = COALESCE(?4, kind), \
                 enabled = COALESCE(?5, enabled), \
                 iv = COALESCE(?6, iv), \
                 ciphertext = COALESCE(?7, ciphertext), \
                 tag = COALESCE(?8, tag), \
                 key_version = COALESCE(?9, key_version), \
                 domains = CASE WHEN ?10 THEN ?11 ELSE domains END, \
                 updated_at = ?12 \
                 WHERE id = ?1",
                params![
                    id,
                    patch.name,
                    patch.env_var,
                    patch.kind,
                    patch.enabled,
                    iv,
                    ciphertext,
                    tag,
                    key_version,
                    set_domains,
                    domains,
                    patch.updated_at
                ],
            )
            .map_err(crate::constraint)?;
            Ok(SecretWrite::Done)
        })
        .await
    }

    /// Deletes a secret. Returns false if there was none.
    pub async fn delete_secret(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(move |tx| Ok(tx.execute("DELETE FROM secrets WHERE id = ?1", [id])? > 0))
            .await
    }

    /// The key check, if one was written.
    pub async fn key_check(&self) -> Result<Option<KeyCheckRow>, StoreError> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT key_version, iv, ciphertext, tag, created_at \
                 FROM secrets_key_check WHERE id = 1",
                [],
                |r| {
                    Ok(KeyCheckRow {
                        sealed: SealedValue {
                            key_version: r.get(0)?,
                            iv: r.get(1)?,
                            ciphertext: r.get(2)?,
                            tag: r.get(3)?,
                        },
                        created_at: r.get(4)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    /// Writes (or replaces) the key check.
    pub async fn set_key_check(&self, check: KeyCheckRow) -> Result<(), StoreError> {
        self.write(move |tx| {
            write_key_check(tx, &check)?;
            Ok(())
        })
        .await
    }

    /// Re-seals every secret and the key check in ONE transaction: `f` receives each sealed
    /// value and returns its replacement. If `f` fails for any of them, nothing is changed and
    /// its error comes back as [`StoreError::Aborted`]. Returns how many secrets were re-sealed.
    pub async fn reseal_secrets<F>(&self, mut f: F) -> Result<usize, StoreError>
    where
        F: FnMut(&ResealItem) -> Result<SealedValue, String> + Send + 'static,
    {
        self.write(move |tx| {
            let secrets = {
                let mut st = tx.prepare(&format!("{} ORDER BY rowid", rows::SECRET_SELECT))?;
                st.query_map([], rows::secret_from_row)?
                    .collect::<Result<Vec<_>, _>>()?
            };
            for s in &secrets {
                let new = f(&ResealItem {
                    id: Some(s.id.clone()),
                    sealed: s.sealed.clone(),
                })
                .map_err(StoreError::Aborted)?;
                tx.execute(
                    "UPDATE secrets SET iv = ?2, ciphertext = ?3, tag = ?4, key_version = ?5 \
                     WHERE id = ?1",
                    params![s.id, new.iv, new.ciphertext, new.tag, new.key_version],
                )?;
            }
            // The relay's own credentials are sealed the same way, bound to their ids.
            let credentials = crate::credentials::all(tx)?;
            for (id, sealed) in &credentials {
                let new = f(&ResealItem {
                    id: Some(id.clone()),
                    sealed: sealed.clone(),
                })
                .map_err(StoreError::Aborted)?;
                crate::credentials::update_sealed(tx, id, &new)?;
            }
            let check: Option<(SealedValue, String)> = tx
                .query_row(
                    "SELECT key_version, iv, ciphertext, tag, created_at \
                     FROM secrets_key_check WHERE id = 1",
                    [],
                    |r| {
                        Ok((
                            SealedValue {
                                key_version: r.get(0)?,
                                iv: r.get(1)?,
                                ciphertext: r.get(2)?,
                                tag: r.get(3)?,
                            },
                            r.get(4)?,
                        ))
                    },
                )
                .optional()?;
            if let Some((sealed, created_at)) = check {
                let new = f(&ResealItem { id: None, sealed }).map_err(StoreError::Aborted)?;
                write_key_check(
                    tx,
                    &KeyCheckRow {
                        sealed: new,
                        created_at,
                    },
                )?;
            }
            Ok(secrets.len())
        })
        .await
    }

    /// Deletes every secret, the relay's credentials and the key check (the key is lost for good and the operator
    /// starts over). Returns how many secrets were deleted.
    pub async fn forget_secrets(&self) -> Result<usize, StoreError> {
        self.write(|tx| {
            let n = tx.execute("DELETE FROM secrets", [])?;
            tx.execute("DELETE FROM relay_credentials", [])?;
            tx.execute("DELETE FROM secrets_key_check", [])?;
            Ok(n)
        })
        .await
    }
}

fn write_key_check(tx: &Transaction<'_>, check: &KeyCheckRow) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO secrets_key_check (id, key_version, iv, ciphertext, tag, created_at) \
         VALUES (1, ?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (id) DO UPDATE SET key_version = excluded.key_version, iv = excluded.iv, \
         ciphertext = excluded.ciphertext, tag = excluded.tag",
        params![
            check.sealed.key_version,
            check.sealed.iv,
            check.sealed.ciphertext,
            check.sealed.tag,
            check.created_at
        ],
    )?;
    Ok(())
}
