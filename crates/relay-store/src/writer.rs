//! The writer thread: owns the only write connection and commits queued work in batches.

use std::sync::Arc;

use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};

use crate::journal::{self, JournalKeys};
use crate::{JournalEntry, MAX_BATCH, StoreError};

/// Called after the transaction holding a job commits (or fails to).
pub(crate) type Completion = Box<dyn FnOnce(Result<(), Arc<StoreError>>) + Send>;
/// A unit of work run inside the writer's transaction; returns whether it succeeded (a failed
/// job's changes are rolled back to its savepoint) and its completion. Jobs that add or drop
/// journals get the writer's key cache.
pub(crate) type Job =
    Box<dyn FnOnce(&rusqlite::Transaction<'_>, &mut JournalKeys) -> (bool, Completion) + Send>;

pub(crate) enum WriteOp {
    /// Journal lines, the stdout cursor to record with them, and their share of the journal
    /// queue's byte budget (given back once they are committed).
    AppendBatch(
        Vec<JournalEntry>,
        Option<(std::sync::Arc<str>, u64)>,
        Option<tokio::sync::OwnedSemaphorePermit>,
    ),
    Job(Job),
    Barrier(oneshot::Sender<()>),
}

pub(crate) fn run(mut conn: Connection, mut rx: mpsc::Receiver<WriteOp>) {
    // A larger page cache keeps the journal's pages in memory while it grows.
    if let Err(e) = conn.pragma_update(None, "cache_size", -16 * 1024) {
        tracing::warn!(error = %e, "cannot enlarge the writer's page cache");
    }
    lower_priority();
    let mut keys = JournalKeys::default();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        commit_batch(&mut conn, &mut batch, &mut keys);
    }
    tracing::debug!("store writer stopped");
}

/// Nice value of the writer thread. Journal writing is bulk work, and the writer is the relay's
/// busiest thread while pi streams; at a lower priority it yields the CPU to the API and the
/// sessions' streams when the machine is saturated, and catches up as soon as it is not (a
/// full queue slows the streaming session down rather than growing memory).
const WRITER_NICE: i32 = 10;

/// Lowers this thread's scheduling priority by [`WRITER_NICE`] (Linux nice values are per
/// thread). Failing to is harmless: the writer only runs at the normal priority.
#[allow(unsafe_code)]
fn lower_priority() {
    // SAFETY: gettid and setpriority take no pointers and only affect the calling thread.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, WRITER_NICE)
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the store writer's priority");
    }
}

fn commit_batch(conn: &mut Connection, batch: &mut Vec<WriteOp>, keys: &mut JournalKeys) {
    let mut completions: Vec<Completion> = Vec::new();
    let mut barriers = Vec::new();
    let mut budget = Vec::new();
    let result = (|| -> Result<(), StoreError> {
        let tx = conn.transaction()?;
        for op in batch.drain(..) {
            match op {
                WriteOp::AppendBatch(entries, cursor, permit) => {
                    append_many(&tx, keys, &entries);
                    budget.extend(permit);
                    if let Some((session, lines)) = cursor {
                        tx.prepare_cached(
                            "UPDATE sessions SET sandbox_stdout_lines = ?2 WHERE id = ?1",
                        )?
                        .execute(params![&*session, lines as i64])?;
                    }
                }
                WriteOp::Barrier(b) => barriers.push(b),
                WriteOp::Job(job) => {
                    tx.execute_batch("SAVEPOINT job")?;
                    let (ok, done) = job(&tx, keys);
                    if ok {
                        tx.execute_batch("RELEASE job")?;
                    } else {
                        tx.execute_batch("ROLLBACK TO job; RELEASE job")?;
                    }
                    completions.push(done);
                }
            }
        }
        tx.commit()?;
        Ok(())
    })();
    batch.clear();
    drop(budget);
    let result = result.map_err(Arc::new);
    if let Err(e) = &result {
        tracing::error!(error = %e, "store batch failed to commit");
        keys.clear();
    }
    for done in completions {
        done(result.clone());
    }
    for b in barriers {
        let _ = b.send(());
    }
}

/// Rows per multi-row INSERT: one statement step for many rows roughly halves SQLite's work per
/// journal line.
const ROWS_PER_INSERT: usize = 32;

fn multi_insert_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let rows = vec!["(?, ?, ?, ?)"; ROWS_PER_INSERT].join(", ");
        format!("INSERT INTO journal_lines (id, type, payload, created_at) VALUES {rows}")
    })
}

/// A journal line ready to bind: row id and payload text.
struct Row<'a> {
    id: i64,
    entry: &'a JournalEntry,
    payload: &'a str,
}

/// Appends entries, many rows per statement. A line that cannot be stored (payload not UTF-8,
/// sequence number out of range, no journal key) is logged and dropped; a chunk that fails (a
/// duplicate sequence number) is retried row by row, so one bad line never costs the others.
fn append_many(tx: &rusqlite::Transaction<'_>, keys: &mut JournalKeys, entries: &[JournalEntry]) {
    let mut rows = Vec::with_capacity(entries.len());
    for e in entries {
        let key = match keys.key(tx, &e.session_id) {
            Ok(k) => k,
            Err(err) => {
                tracing::error!(session = %e.session_id, seq = e.seq, error = %err, "journal key unavailable; line dropped");
                continue;
            }
        };
        let Some(id) = journal::line_id(key, e.seq) else {
            tracing::error!(session = %e.session_id, seq = e.seq, "journal sequence number out of range; line dropped");
            continue;
        };
        let Ok(payload) = std::str::from_utf8(&e.payload) else {
            tracing::error!(session = %e.session_id, seq = e.seq, "journal payload is not UTF-8; line dropped");
            continue;
        };
        rows.push(Row {
            id,
            entry: e,
            payload,
        });
    }
    let mut chunks = rows.chunks_exact(ROWS_PER_INSERT);
    for chunk in &mut chunks {
        let ok = tx
            .prepare_cached(multi_insert_sql())
            .and_then(|mut st| {
                let mut i = 1;
                for r in chunk {
                    st.raw_bind_parameter(i, r.id)?;
                    st.raw_bind_parameter(i + 1, &*r.entry.ty)?;
                    st.raw_bind_parameter(i + 2, r.payload)?;
                    st.raw_bind_parameter(i + 3, journal::millis(r.entry.created_at))?;
                    i += 4;
                }
                st.raw_execute()
            })
            .is_ok();
        if !ok {
            chunk.iter().for_each(|r| append(tx, r));
        }
    }
    chunks.remainder().iter().for_each(|r| append(tx, r));
}

fn append(tx: &rusqlite::Transaction<'_>, r: &Row<'_>) {
    let res = tx
        .prepare_cached(
            "INSERT INTO journal_lines (id, type, payload, created_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut st| {
            st.execute(params![
                r.id,
                &*r.entry.ty,
                r.payload,
                journal::millis(r.entry.created_at)
            ])
        });
    if let Err(err) = res {
        tracing::error!(session = %r.entry.session_id, seq = r.entry.seq, error = %err, "journal append failed");
    }
}
