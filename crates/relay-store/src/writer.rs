//! The writer thread: owns the only write connection and commits queued work in batches.

use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};

use crate::{JournalEntry, MAX_BATCH, StoreError};

/// Called after the transaction holding a job commits (or fails to).
pub(crate) type Completion = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;
/// A unit of work run inside the writer's transaction; returns whether it succeeded (a failed
/// job's changes are rolled back to its savepoint) and its completion.
pub(crate) type Job = Box<dyn FnOnce(&rusqlite::Transaction<'_>) -> (bool, Completion) + Send>;

pub(crate) enum WriteOp {
    Append(JournalEntry),
    AppendBatch(Vec<JournalEntry>, Option<(std::sync::Arc<str>, u64)>),
    Job(Job),
    Barrier(oneshot::Sender<()>),
}

pub(crate) fn run(mut conn: Connection, mut rx: mpsc::Receiver<WriteOp>) {
    // A larger page cache keeps the journal's index pages in memory while it grows.
    if let Err(e) = conn.pragma_update(None, "cache_size", -16 * 1024) {
        tracing::warn!(error = %e, "cannot enlarge the writer's page cache");
    }
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        commit_batch(&mut conn, &mut batch);
    }
    tracing::debug!("store writer stopped");
}

fn commit_batch(conn: &mut Connection, batch: &mut Vec<WriteOp>) {
    let mut completions: Vec<Completion> = Vec::new();
    let mut barriers = Vec::new();
    let result = (|| -> Result<(), StoreError> {
        let tx = conn.transaction()?;
        for op in batch.drain(..) {
            match op {
                WriteOp::Append(e) => append(&tx, &e),
                WriteOp::AppendBatch(entries, cursor) => {
                    append_many(&tx, &entries);
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
                    let (ok, done) = job(&tx);
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
    if let Err(e) = &result {
        tracing::error!(error = %e, "store batch failed to commit");
    }
    for done in completions {
        done(result.as_ref().map(|_| ()));
    }
    for b in barriers {
        let _ = b.send(());
    }
}

/// Rows per multi-row INSERT: one statement step for many rows roughly halves SQLite's work per
/// journal line, the relay's largest CPU cost while pi streams.
const ROWS_PER_INSERT: usize = 32;

fn multi_insert_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let rows = vec!["(?, ?, ?, ?, ?)"; ROWS_PER_INSERT].join(", ");
        format!("INSERT INTO events (session_id, seq, type, payload, created_at) VALUES {rows}")
    })
}

/// Appends entries, many rows per statement. A chunk that fails (a duplicate sequence number,
/// a payload that is not UTF-8) is retried row by row, so one bad line never costs the others.
fn append_many(tx: &rusqlite::Transaction<'_>, entries: &[JournalEntry]) {
    let mut chunks = entries.chunks_exact(ROWS_PER_INSERT);
    for chunk in &mut chunks {
        let ok = chunk
            .iter()
            .all(|e| std::str::from_utf8(&e.payload).is_ok())
            && tx
                .prepare_cached(multi_insert_sql())
                .and_then(|mut st| {
                    let mut i = 1;
                    for e in chunk {
                        // Checked above; a lossy conversion never happens here.
                        let payload = String::from_utf8_lossy(&e.payload);
                        st.raw_bind_parameter(i, &*e.session_id)?;
                        st.raw_bind_parameter(i + 1, e.seq as i64)?;
                        st.raw_bind_parameter(i + 2, &*e.ty)?;
                        st.raw_bind_parameter(i + 3, payload.as_ref())?;
                        st.raw_bind_parameter(i + 4, &*e.created_at)?;
                        i += 5;
                    }
                    st.raw_execute()
                })
                .is_ok();
        if !ok {
            chunk.iter().for_each(|e| append(tx, e));
        }
    }
    chunks.remainder().iter().for_each(|e| append(tx, e));
}

fn append(tx: &rusqlite::Transaction<'_>, e: &JournalEntry) {
    let payload = match std::str::from_utf8(&e.payload) {
        Ok(p) => p,
        Err(_) => {
            tracing::error!(session = %e.session_id, seq = e.seq, "journal payload is not UTF-8; dropped");
            return;
        }
    };
    let res = tx
        .prepare_cached(
            "INSERT INTO events (session_id, seq, type, payload, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut st| {
            st.execute(params![
                &*e.session_id,
                e.seq as i64,
                &*e.ty,
                payload,
                &*e.created_at
            ])
        });
    if let Err(err) = res {
        tracing::error!(session = %e.session_id, seq = e.seq, error = %err, "journal append failed");
    }
}
