//! SQL of the files clients upload to sessions: the index (the bytes are the session storage's),
//! added only while the session's count is under its limit, in one transaction.

use rusqlite::{OptionalExtension, params};

use crate::{Store, StoreError};

/// One uploaded file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRow {
    /// Its id.
    pub id: String,
    /// Its session.
    pub session_id: String,
    /// Its (sanitised) name.
    pub name: String,
    /// Its media type.
    pub mime_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was uploaded.
    pub uploaded_at: String,
    /// Where the sandbox sees it, if it was put there.
    pub sandbox_path: Option<String>,
}

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileRow> {
    Ok(FileRow {
        id: r.get(0)?,
        session_id: r.get(1)?,
        name: r.get(2)?,
        mime_type: r.get(3)?,
        size: r.get::<_, i64>(4)?.try_into().unwrap_or(0),
        uploaded_at: r.get(5)?,
        sandbox_path: r.get(6)?,
    })
}

const SELECT: &str =
    "SELECT id, session_id, name, mime_type, size, uploaded_at, sandbox_path FROM session_files";

impl Store {
    /// Records `file` unless its session already has `max_files`; false when it has.
    pub async fn add_file(&self, file: FileRow, max_files: u64) -> Result<bool, StoreError> {
        self.write(move |tx| {
            let n: i64 = tx.query_row(
                "SELECT COUNT(*) FROM session_files WHERE session_id = ?1",
                [&file.session_id],
                |r| r.get(0),
            )?;
            if u64::try_from(n).unwrap_or(u64::MAX) >= max_files {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO session_files \
                 (id, session_id, name, mime_type, size, uploaded_at, sandbox_path) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    file.id,
                    file.session_id,
                    file.name,
                    file.mime_type,
                    i64::try_from(file.size).unwrap_or(i64::MAX),
                    file.uploaded_at,
                    file.sandbox_path
                ],
            )?;
            Ok(true)
        })
        .await
    }

    /// A session's files, oldest first.
    pub async fn files(&self, session: &str) -> Result<Vec<FileRow>, StoreError> {
        let session = session.to_owned();
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "{SELECT} WHERE session_id = ?1 ORDER BY uploaded_at, rowid"
            ))?;
            let all = st
                .query_map([session], from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(all)
        })
        .await
    }

    /// One file of a session.
    pub async fn file(&self, session: &str, id: &str) -> Result<Option<FileRow>, StoreError> {
        let (session, id) = (session.to_owned(), id.to_owned());
        self.read(move |c| {
            Ok(c.query_row(
                &format!("{SELECT} WHERE session_id = ?1 AND id = ?2"),
                [session, id],
                from_row,
            )
            .optional()?)
        })
        .await
    }
}
