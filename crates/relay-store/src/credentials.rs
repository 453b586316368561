//! SQL of the relay's own credentials (a GitHub token) and of the repositories it learned of:
//! the credentials sealed by the vault like secrets, re-sealed and forgotten with them
//! ([`Store::reseal_secrets`], [`Store::forget_secrets`]).

use rusqlite::{OptionalExtension, Transaction, params};

use crate::{SealedValue, Store, StoreError};

/// A repository as GitHub describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoRow {
    /// GitHub's id, as a string.
    pub id: String,
    /// Its name.
    pub name: String,
    /// `owner/name`.
    pub full_name: String,
    /// Its owner's login.
    pub owner: String,
    /// Whether it is private.
    pub is_private: bool,
    /// Its description.
    pub description: Option<String>,
    /// Its page.
    pub html_url: String,
    /// Its HTTPS clone URL.
    pub clone_url: String,
    /// Its SSH clone URL.
    pub ssh_url: Option<String>,
    /// Its default branch.
    pub default_branch: String,
}

fn sealed_from(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<SealedValue> {
    Ok(SealedValue {
        key_version: r.get(at)?,
        iv: r.get(at + 1)?,
        ciphertext: r.get(at + 2)?,
        tag: r.get(at + 3)?,
    })
}

/// Every credential, for re-sealing.
pub(crate) fn all(tx: &Transaction<'_>) -> Result<Vec<(String, SealedValue)>, StoreError> {
    let mut st = tx.prepare(
        "SELECT id, key_version, iv, ciphertext, tag FROM relay_credentials ORDER BY id",
    )?;
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, sealed_from(r, 1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Replaces a credential's sealed value (re-sealing).
pub(crate) fn update_sealed(
    tx: &Transaction<'_>,
    id: &str,
    sealed: &SealedValue,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE relay_credentials SET key_version = ?2, iv = ?3, ciphertext = ?4, tag = ?5 \
         WHERE id = ?1",
        params![
            id,
            sealed.key_version,
            sealed.iv,
            sealed.ciphertext,
            sealed.tag
        ],
    )?;
    Ok(())
}

impl Store {
    /// The relay's credential `id`, sealed.
    pub async fn credential(&self, id: &str) -> Result<Option<SealedValue>, StoreError> {
        let id = id.to_owned();
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT key_version, iv, ciphertext, tag FROM relay_credentials WHERE id = ?1",
                [id],
                |r| sealed_from(r, 0),
            )
            .optional()?)
        })
        .await
    }

    /// Stores the relay's credential `id`, replacing any.
    pub async fn set_credential(
        &self,
        id: &str,
        sealed: SealedValue,
        at: &str,
    ) -> Result<(), StoreError> {
        let (id, at) = (id.to_owned(), at.to_owned());
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO relay_credentials (id, key_version, iv, ciphertext, tag, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO UPDATE SET \
                 key_version = excluded.key_version, iv = excluded.iv, \
                 ciphertext = excluded.ciphertext, tag = excluded.tag, updated_at = excluded.updated_at",
                params![id, sealed.key_version, sealed.iv, sealed.ciphertext, sealed.tag, at],
            )?;
            Ok(())
        })
        .await
    }

    /// Removes the relay's credential `id`; whether there was one.
    pub async fn delete_credential(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(move |tx| {
            Ok(tx.execute("DELETE FROM relay_credentials WHERE id = ?1", [id])? > 0)
        })
        .await
    }

    /// Records `repos` (GitHub's view wins over what was kept).
    pub async fn upsert_repos(&self, repos: Vec<RepoRow>, at: &str) -> Result<(), StoreError> {
        let at = at.to_owned();
        self.write(move |tx| {
            let mut st = tx.prepare_cached(
                "INSERT INTO repos (id, name, full_name, owner, is_private, description, html_url, \
                 clone_url, ssh_url, default_branch, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) ON CONFLICT (id) DO UPDATE SET \
                 name = excluded.name, full_name = excluded.full_name, owner = excluded.owner, \
                 is_private = excluded.is_private, description = excluded.description, \
                 html_url = excluded.html_url, clone_url = excluded.clone_url, \
                 ssh_url = excluded.ssh_url, default_branch = excluded.default_branch, \
                 updated_at = excluded.updated_at",
            )?;
            for r in &repos {
                st.execute(params![
                    r.id,
                    r.name,
                    r.full_name,
                    r.owner,
                    r.is_private,
                    r.description,
                    r.html_url,
                    r.clone_url,
                    r.ssh_url,
                    r.default_branch,
                    at
                ])?;
            }
            Ok(())
        })
        .await
    }

    /// A repository the relay learned of.
    pub async fn repo(&self, id: &str) -> Result<Option<RepoRow>, StoreError> {
        let id = id.to_owned();
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT id, name, full_name, owner, is_private, description, html_url, clone_url, \
                 ssh_url, default_branch FROM repos WHERE id = ?1",
                [id],
                |r| {
                    Ok(RepoRow {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        full_name: r.get(2)?,
                        owner: r.get(3)?,
                        is_private: r.get(4)?,
                        description: r.get(5)?,
                        html_url: r.get(6)?,
                        clone_url: r.get(7)?,
                        ssh_url: r.get(8)?,
                        default_branch: r.get(9)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use crate::tests::{sealed, temp_store};
    use crate::{SealedValue, StoreError};

    #[tokio::test]
    async fn credentials_are_resealed_and_forgotten_with_the_secrets() {
        let (_d, store) = temp_store();
        store
            .set_credential("cred:a", sealed("a"), "t0")
            .await
            .unwrap();
        store
            .set_credential("cred:a", sealed("a2"), "t1")
            .await
            .unwrap();
        assert_eq!(
            store.credential("cred:a").await.unwrap(),
            Some(sealed("a2"))
        );
        // A credential that does not open aborts the whole re-sealing.
        let err = store
            .reseal_secrets(|item| match item.id.as_deref() {
                Some("cred:a") => Err("no".into()),
                _ => Ok(sealed("x")),
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Aborted(_)), "{err:?}");
        assert_eq!(
            store.credential("cred:a").await.unwrap(),
            Some(sealed("a2"))
        );
        store
            .reseal_secrets(|_| {
                Ok(SealedValue {
                    key_version: 2,
                    ..sealed("v2")
                })
            })
            .await
            .unwrap();
        assert_eq!(
            store
                .credential("cred:a")
                .await
                .unwrap()
                .unwrap()
                .key_version,
            2
        );
        store.forget_secrets().await.unwrap();
        assert_eq!(store.credential("cred:a").await.unwrap(), None);
        assert!(!store.delete_credential("cred:a").await.unwrap());
    }
}
