//! The relay's SQLite store: sessions, environments, the event journal, secrets (sealed
//! values only) and settings.
//!
//! One writer thread owns the only write connection; every write, from a session status change
//! to a journal line, goes through it in order, so per-session sequence numbers never race and
//! journal lines are committed in batches. Reads use a small pool of separate connections (WAL
//! lets them proceed while the writer commits). Only this crate knows SQL.

mod credentials;
mod extensions;
mod files;
mod journal;
mod migrations;
mod rows;
mod secrets;
mod settings;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use relay_model::{SessionStatus, Transition};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

pub use credentials::RepoRow;
pub use extensions::{ExtensionConfigRow, Upserted};
pub use files::FileRow;
pub use rows::{
    EnvironmentPatch, EnvironmentRow, EnvironmentWrite, EventRow, JournalEntry, KeyCheckRow,
    NewSession, ResealItem, SealedValue, SecretPatch, SecretRow, SecretWrite, SessionRow,
    SessionSandbox,
};
use writer::{Job, WriteOp};

/// How many journal lines or jobs the writer commits in one transaction at most.
const MAX_BATCH: usize = 4096;
/// Reader connections kept open (and the most reads running at once).
const READERS: usize = 4;
/// Queue length between producers and the writer thread. A full queue slows producers down
/// (and, through them, pi's stdout) instead of growing memory without bound.
const WRITE_QUEUE: usize = 16 * 1024;
/// Journal bytes queued for the writer at most. While the writer is behind (it runs at a lower
/// priority than the rest of the relay), streaming sessions wait for it here, so a flood costs
/// at most this much memory on top of what is being committed.
const JOURNAL_QUEUE_BYTES: usize = 16 * 1024 * 1024;
/// What a queued journal line costs beyond its payload (entry, session id handle, type).
const JOURNAL_ENTRY_OVERHEAD: usize = 64;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The transaction holding this write failed to commit (the cause is shared by every write
    /// of the batch).
    #[error("database commit failed: {0}")]
    Commit(#[source] Arc<StoreError>),
    /// A WAL checkpoint could not copy every page back (readers held some).
    #[error("checkpoint incomplete ({done} of {log} pages)")]
    CheckpointIncomplete {
        /// Pages copied.
        done: i64,
        /// Pages in the log.
        log: i64,
    },
    /// The database does not hold what the relay wrote a moment ago.
    #[error("database inconsistent: {0}")]
    Inconsistent(String),
    /// The writer thread has stopped (the store is closing).
    #[error("database writer has stopped")]
    Closed,
    /// The database's files could not be created or made private.
    #[error("cannot prepare the database files {path}: {source}")]
    Files {
        /// The database path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The database file could not be opened or prepared.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// The database path.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// A row violates a uniqueness or reference constraint.
    #[error("constraint violated: {0}")]
    Constraint(String),
    /// A read or maintenance task on a blocking thread failed.
    #[error("database task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The writer thread could not be started.
    #[error("cannot start the database writer: {0}")]
    WriterThread(#[source] std::io::Error),
    /// The caller abandoned a write; its transaction was rolled back and nothing changed.
    #[error("write abandoned, nothing changed: {0}")]
    Aborted(String),
}

/// Handle to the store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    writer: mpsc::Sender<WriteOp>,
    /// One permit per journal byte that may be queued for the writer.
    journal_budget: Arc<tokio::sync::Semaphore>,
    readers: Mutex<Vec<Connection>>,
    /// One permit per pooled reader: reads beyond that wait rather than open more connections,
    /// so the relay's file descriptors stay constant under load.
    reader_permits: tokio::sync::Semaphore,
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let open = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(open)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(open)?;
    // WAL lets readers run while the writer commits; NORMAL skips the fsync per commit (a power
    // loss can drop the last commits, never corrupt the file).
    // Larger pages hold more journal lines each (fewer B-tree pages to write, fewer overflow
    // pages for pi's multi-KiB lines). Only takes effect when the database is created.
    conn.pragma_update(None, "page_size", 16 * 1024)
        .map_err(open)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(open)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(open)?;
    Ok(conn)
}

/// Creates the database file 0600 if it is new, and takes group and other access away from it and
/// its `-wal` and `-shm` files if they have any (SQLite creates those with the database's mode).
fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = PathBuf::from(name);
        match std::fs::metadata(&file) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the database at `path`, applies pending migrations and starts
    /// the writer thread. The database and its WAL and shared-memory files are private to the
    /// relay's user (mode 0600): they hold every conversation.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        make_private(path).map_err(|source| StoreError::Files {
            path: path.to_path_buf(),
            source,
        })?;
        let mut conn = open_connection(path)?;
        migrations::apply(&mut conn)?;
        let readers = (0..READERS)
            .map(|_| open_connection(path))
            .collect::<Result<Vec<_>, _>>()?;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer::run(conn, rx))
            .map_err(StoreError::WriterThread)?;
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer: tx,
                journal_budget: Arc::new(tokio::sync::Semaphore::new(JOURNAL_QUEUE_BYTES)),
                readers: Mutex::new(readers),
                reader_permits: tokio::sync::Semaphore::new(READERS),
            }),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` inside the writer's current transaction and returns its result once committed.
    async fn write<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        self.write_journals(move |tx, _| f(tx)).await
    }

    /// [`Store::write`] for work that also adds or drops journals, and so needs the writer's
    /// cache of journal keys.
    async fn write_journals<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>, &mut journal::JournalKeys) -> Result<R, StoreError>
            + Send
            + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |tx, keys| {
            let result = f(tx, keys);
            let ok = result.is_ok();
            let done: writer::Completion = Box::new(move |commit| {
                let _ = reply.send(match commit {
                    Ok(()) => result,
                    Err(e) => Err(StoreError::Commit(e)),
                });
            });
            (ok, done)
        });
        self.inner
            .writer
            .send(WriteOp::Job(job))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs a read on a pooled connection off the async runtime.
    async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        let _permit = inner
            .reader_permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let pool = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = pool.readers.lock().map(|mut p| p.pop()).unwrap_or(None);
            // A permit guarantees a pooled connection; open one only if a panic lost it.
            let conn = match pooled {
                Some(c) => c,
                None => open_connection(&pool.path)?,
            };
            let result = f(&conn);
            if let Ok(mut readers) = pool.readers.lock() {
                readers.push(conn);
            }
            result
        })
        .await
        .map_err(StoreError::Task)?
    }

    /// Queues one journal line. Returns once the writer has accepted it (not yet committed);
    /// waits when the writer is behind.
    pub async fn append(&self, entry: JournalEntry) -> Result<(), StoreError> {
        self.append_batch(vec![entry], None).await
    }

    /// Waits until `entries` fit in the journal queue; the permit goes with them to the writer,
    /// which drops it once they are committed.
    async fn journal_permit(
        &self,
        entries: &[JournalEntry],
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, StoreError> {
        if entries.is_empty() {
            return Ok(None);
        }
        let bytes: usize = entries
            .iter()
            .map(|e| e.payload.len() + JOURNAL_ENTRY_OVERHEAD)
            .sum();
        // A batch larger than the whole budget (one very long line) waits for all of it.
        let permits = u32::try_from(bytes.min(JOURNAL_QUEUE_BYTES)).unwrap_or(u32::MAX);
        let permit = Arc::clone(&self.inner.journal_budget)
            .acquire_many_owned(permits)
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(Some(permit))
    }

    /// Queues several journal lines at once, in order; cheaper than one [`Store::append`] each.
    /// `stdout_cursor` (session, lines) records, in the same transaction, how many stdout lines
    /// of the session's container these entries bring the journal to.
    pub async fn append_batch(
        &self,
        entries: Vec<JournalEntry>,
        stdout_cursor: Option<(Arc<str>, u64)>,
    ) -> Result<(), StoreError> {
        if entries.is_empty() && stdout_cursor.is_none() {
            return Ok(());
        }
        let permit = self.journal_permit(&entries).await?;
        self.inner
            .writer
            .send(WriteOp::AppendBatch(entries, stdout_cursor, permit))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Resolves once everything queued before this call is committed.
    pub async fn barrier(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .writer
            .send(WriteOp::Barrier(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// Makes every committed write durable in the database file itself. Commits run with
    /// `synchronous=NORMAL`, which a power loss may undo; a caller that must not lose one (key
    /// rotation, before it replaces the key file) checkpoints the WAL with a sync.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        self.barrier().await?;
        let path = self.inner.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = open_connection(&path)?;
            // (busy, wal pages, pages checkpointed); busy = 1 means readers kept it from
            // finishing.
            let (busy, log, done): (i64, i64, i64) =
                conn.query_row("PRAGMA wal_checkpoint(FULL)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
            if busy != 0 || done < log {
                return Err(StoreError::CheckpointIncomplete { done, log });
            }
            Ok(())
        })
        .await
        .map_err(StoreError::Task)?
    }

    // ---- sessions ----

    /// Inserts a new session row.
    pub async fn insert_session(&self, s: NewSession) -> Result<(), StoreError> {
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO sessions (id, mode, status, repo_id, branch_name, name, \
                 current_model_provider, current_model_id, system_prompt, sandbox_provider, \
                 environment_id, first_user_message, created_at, last_activity_at) \
                 VALUES (?1, ?2, 'creating', ?3, NULL, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)",
                params![
                    s.id,
                    s.mode.as_str(),
                    s.repo_id,
                    s.name,
                    s.model_provider,
                    s.model_id,
                    s.system_prompt,
                    s.sandbox_provider,
                    s.environment_id,
                    s.first_user_message,
                    s.created_at
                ],
            )
            .map_err(constraint)?;
            Ok(())
        })
        .await
    }

    /// Moves a session along `transition` (and records the reason, for `error`), if it is still
    /// in the transition's starting status. Returns false if it is not (or the row is gone):
    /// nothing changed.
    pub async fn set_status(
        &self,
        id: &str,
        transition: Transition,
        reason: Option<String>,
        now: &str,
    ) -> Result<bool, StoreError> {
        let (id, now) = (id.to_owned(), now.to_owned());
        self.write(move |tx| {
            let n = tx.execute(
                "UPDATE sessions SET status = ?3, status_reason = ?4, last_activity_at = ?5 \
                 WHERE id = ?1 AND status = ?2",
                params![
                    id,
                    transition.from().as_str(),
                    transition.to().as_str(),
                    reason,
                    now
                ],
            )?;
            Ok(n > 0)
        })
        .await
    }

    /// Records a session's sandbox and moves it along `transition`, if it is still in the
    /// transition's starting status. Returns false if it is not (or the row is gone): nothing
    /// changed.
    pub async fn set_sandbox(
        &self,
        id: &str,
        sandbox: SessionSandbox,
        transition: Transition,
        now: &str,
    ) -> Result<bool, StoreError> {
        let (id, now) = (id.to_owned(), now.to_owned());
        self.write(move |tx| {
            let n = tx.execute(
                "UPDATE sessions SET sandbox_provider = ?2, sandbox_provider_id = ?3, \
                 sandbox_image_digest = ?4, status = ?6, status_reason = NULL, \
                 last_activity_at = ?7 WHERE id = ?1 AND status = ?5",
                params![
                    id,
                    sandbox.provider,
                    sandbox.provider_id,
                    sandbox.image_digest,
                    transition.from().as_str(),
                    transition.to().as_str(),
                    now
                ],
            )?;
            Ok(n > 0)
        })
        .await
    }

    /// How many stdout lines of its container the session's journal has consumed.
    pub async fn stdout_cursor(&self, id: &str) -> Result<u64, StoreError> {
        let id = id.to_owned();
        self.read(move |c| {
            let v: Option<i64> = c
                .query_row(
                    "SELECT sandbox_stdout_lines FROM sessions WHERE id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(v.unwrap_or(0) as u64)
        })
        .await
    }

    /// Sets the stdout cursor (0 for a new container).
    pub async fn set_stdout_cursor(&self, id: &str, lines: u64) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.write(move |tx| {
            tx.execute(
                "UPDATE sessions SET sandbox_stdout_lines = ?2 WHERE id = ?1",
                params![id, lines as i64],
            )?;
            Ok(())
        })
        .await
    }

    /// Bumps `last_activity_at`.
    pub async fn touch_session(&self, id: &str, now: &str) -> Result<(), StoreError> {
        let (id, now) = (id.to_owned(), now.to_owned());
        self.write(move |tx| {
            tx.execute(
                "UPDATE sessions SET last_activity_at = ?2 WHERE id = ?1",
                params![id, now],
            )?;
            Ok(())
        })
        .await
    }

    /// Sets `first_user_message` if it is still empty.
    pub async fn set_first_user_message(&self, id: &str, text: &str) -> Result<(), StoreError> {
        let (id, text) = (id.to_owned(), text.to_owned());
        self.write(move |tx| {
            tx.execute(
                "UPDATE sessions SET first_user_message = ?2 \
                 WHERE id = ?1 AND first_user_message IS NULL",
                params![id, text],
            )?;
            Ok(())
        })
        .await
    }

    /// Renames a session.
    pub async fn set_session_name(&self, id: &str, name: &str) -> Result<(), StoreError> {
        let (id, name) = (id.to_owned(), name.to_owned());
        self.write(move |tx| {
            tx.execute(
                "UPDATE sessions SET name = ?2 WHERE id = ?1",
                params![id, name],
            )?;
            Ok(())
        })
        .await
    }

    /// Deletes a session row (its events are removed separately, in chunks, by
    /// [`Store::delete_events_chunk`]). Returns false if there was no such row.
    pub async fn delete_session(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(move |tx| Ok(tx.execute("DELETE FROM sessions WHERE id = ?1", [id])? > 0))
            .await
    }

    /// Deletes up to `limit` events of a session; returns how many were deleted. Deleting in
    /// small chunks keeps the single writer responsive for everyone else. Once a journal is
    /// empty and its session gone, the journal itself is dropped.
    pub async fn delete_events_chunk(&self, id: &str, limit: usize) -> Result<usize, StoreError> {
        let id = id.to_owned();
        self.write_journals(move |tx, keys| {
            let Some(key) = journal::existing_key(tx, &id)? else {
                return Ok(0);
            };
            let (lo, hi) = journal::key_range(key);
            let n = tx.execute(
                "DELETE FROM journal_lines WHERE id IN \
                 (SELECT id FROM journal_lines WHERE id >= ?1 AND id < ?2 ORDER BY id LIMIT ?3)",
                params![lo, hi, i64::try_from(limit).unwrap_or(i64::MAX)],
            )?;
            if n == 0 {
                let dropped = tx.execute(
                    "DELETE FROM journals WHERE key = ?1 \
                     AND NOT EXISTS (SELECT 1 FROM sessions WHERE id = ?2)",
                    params![key, id],
                )?;
                if dropped > 0 {
                    keys.forget(&id);
                }
            }
            Ok(n)
        })
        .await
    }

    /// Ids of sessions that have a journal but no session row (left by an interrupted delete).
    pub async fn orphaned_event_sessions(&self) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT j.session_id FROM journals j \
                 LEFT JOIN sessions s ON s.id = j.session_id WHERE s.id IS NULL ORDER BY j.key",
            )?;
            let ids = st
                .query_map([], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(ids)
        })
        .await
    }

    /// One session.
    pub async fn session(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        let id = id.to_owned();
        self.read(move |c| {
            Ok(c.query_row(
                &format!("{} WHERE s.id = ?1", rows::SESSION_SELECT),
                [id],
                rows::session_from_row,
            )
            .optional()?)
        })
        .await
    }

    /// Sessions ordered by last activity, newest first; optionally only those in `statuses`.
    pub async fn sessions(
        &self,
        statuses: Option<Vec<SessionStatus>>,
    ) -> Result<Vec<SessionRow>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "{} ORDER BY s.last_activity_at DESC, s.created_at DESC",
                rows::SESSION_SELECT
            ))?;
            let all = st
                .query_map([], rows::session_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(match statuses {
                Some(wanted) => all
                    .into_iter()
                    .filter(|s| wanted.contains(&s.status))
                    .collect(),
                None => all,
            })
        })
        .await
    }

    // ---- environments ----

    /// Inserts an environment row.
    pub async fn insert_environment(&self, env: EnvironmentRow) -> Result<(), StoreError> {
        self.write(move |tx| {
            if env.is_default {
                tx.execute("UPDATE environments SET is_default = 0", [])?;
            }
            tx.execute(
                "INSERT INTO environments (id, name, sandbox_type, config, is_default, \
                 created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    env.id,
                    env.name,
                    env.sandbox_type,
                    env.config,
                    env.is_default,
                    env.created_at,
                    env.updated_at
                ],
            )
            .map_err(constraint)?;
            Ok(())
        })
        .await
    }

    /// One environment.
    pub async fn environment(&self, id: &str) -> Result<Option<EnvironmentRow>, StoreError> {
        let id = id.to_owned();
        self.read(move |c| {
            Ok(c.query_row(
                &format!("{} WHERE id = ?1", rows::ENV_SELECT),
                [id],
                rows::environment_from_row,
            )
            .optional()?)
        })
        .await
    }

    /// The default environment, if any.
    pub async fn default_environment(&self) -> Result<Option<EnvironmentRow>, StoreError> {
        self.read(move |c| {
            Ok(c.query_row(
                &format!("{} WHERE is_default = 1 LIMIT 1", rows::ENV_SELECT),
                [],
                rows::environment_from_row,
            )
            .optional()?)
        })
        .await
    }

    /// Number of environments.
    pub async fn environment_count(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            let n: i64 = c.query_row("SELECT COUNT(*) FROM environments", [], |r| r.get(0))?;
            Ok(n as u64)
        })
        .await
    }

    // ---- journal ----

    /// Highest journaled sequence number of a session (0 when none).
    pub async fn max_seq(&self, session_id: &str) -> Result<u64, StoreError> {
        let id = session_id.to_owned();
        self.read(move |c| {
            let Some(key) = journal::existing_key(c, &id)? else {
                return Ok(0);
            };
            let (lo, hi) = journal::key_range(key);
            let top: Option<i64> = c
                .prepare_cached("SELECT MAX(id) FROM journal_lines WHERE id >= ?1 AND id < ?2")?
                .query_row(params![lo, hi], |r| r.get(0))?;
            Ok(top.map_or(0, journal::seq_of))
        })
        .await
    }

    /// Events with `after < seq <= upto`, ascending: at most `limit` of them, and no more once
    /// their payloads reach `max_bytes` (the first event always comes, however large, so paging
    /// makes progress).
    pub async fn events(
        &self,
        session_id: &str,
        after: u64,
        upto: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<EventRow>, StoreError> {
        let id = session_id.to_owned();
        self.read(move |c| {
            let upto = upto.min(journal::MAX_SEQ);
            let Some(key) = journal::existing_key(c, &id)? else {
                return Ok(Vec::new());
            };
            if after >= upto {
                return Ok(Vec::new());
            }
            let (Some(from), Some(to)) = (
                journal::line_id(key, after + 1),
                journal::line_id(key, upto),
            ) else {
                return Ok(Vec::new());
            };
            let mut st = c.prepare_cached(
                "SELECT id, type, payload, created_at FROM journal_lines \
                 WHERE id >= ?1 AND id <= ?2 ORDER BY id LIMIT ?3",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut rows = st.query(params![from, to, limit])?;
            let (mut out, mut bytes) = (Vec::new(), 0usize);
            while bytes < max_bytes
                && let Some(r) = rows.next()?
            {
                let row = EventRow {
                    seq: journal::seq_of(r.get(0)?),
                    ty: r.get(1)?,
                    payload: r.get(2)?,
                    created_at: journal::rfc3339(r.get(3)?),
                };
                bytes += row.payload.len();
                out.push(row);
            }
            Ok(out)
        })
        .await
    }
}

pub(crate) fn constraint(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, msg)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Constraint(msg.unwrap_or_else(|| f.to_string()))
        }
        other => StoreError::Sqlite(other),
    }
}

#[cfg(test)]
mod tests;
