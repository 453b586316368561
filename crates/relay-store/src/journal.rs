//! How journal lines are keyed: each session's journal has a small integer key, and a line's
//! row id is `key << 40 | seq`, so one session's lines are one contiguous range of row ids.
//! The writer resolves session ids to keys through [`JournalKeys`], a cache in front of the
//! `journals` table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension};

use crate::StoreError;

/// Bits of a row id that hold the sequence number: a session can journal 2^40 - 1 lines, and
/// 2^23 journals fit in SQLite's 63-bit row ids.
const SEQ_BITS: u32 = 40;
/// The largest sequence number a journal line can have.
pub(crate) const MAX_SEQ: u64 = (1 << SEQ_BITS) - 1;

/// Row id of line `seq` of journal `key`; `None` for a sequence number out of range.
pub(crate) fn line_id(key: i64, seq: u64) -> Option<i64> {
    (1..=MAX_SEQ)
        .contains(&seq)
        .then_some((key << SEQ_BITS) | seq as i64)
}

/// Row ids `lo..hi` (half-open) that belong to journal `key`.
pub(crate) fn key_range(key: i64) -> (i64, i64) {
    (key << SEQ_BITS, (key + 1) << SEQ_BITS)
}

/// Sequence number held in a row id.
pub(crate) fn seq_of(id: i64) -> u64 {
    (id as u64) & MAX_SEQ
}

/// Unix milliseconds of a timestamp (0 before 1970).
pub(crate) fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 text (UTC, milliseconds) of Unix milliseconds, as the API shows timestamps.
pub(crate) fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// The key of a session's journal, if it has one.
pub(crate) fn existing_key(c: &Connection, session_id: &str) -> Result<Option<i64>, StoreError> {
    Ok(
        c.prepare_cached("SELECT key FROM journals WHERE session_id = ?1")?
            .query_row([session_id], |r| r.get(0))
            .optional()?,
    )
}

/// The writer's cache of journal keys. A key is created the first time a session journals a
/// line and never reused (the table is AUTOINCREMENT), so a cached key stays right until the
/// journal is dropped; a failed commit clears the cache, as it may have rolled a new key back.
#[derive(Default)]
pub(crate) struct JournalKeys {
    keys: HashMap<Arc<str>, i64>,
    /// The last session looked up: a batch is usually one session's lines.
    last: Option<(Arc<str>, i64)>,
}

impl JournalKeys {
    /// The key of `session_id`'s journal, created if needed.
    pub(crate) fn key(&mut self, c: &Connection, session_id: &Arc<str>) -> Result<i64, StoreError> {
        if let Some((s, k)) = &self.last
            && (Arc::ptr_eq(s, session_id) || **s == **session_id)
        {
            return Ok(*k);
        }
        let key = match self.keys.get(session_id) {
            Some(k) => *k,
            None => {
                c.prepare_cached(
                    "INSERT INTO journals (session_id) VALUES (?1) ON CONFLICT DO NOTHING",
                )?
                .execute([&**session_id])?;
                let k = existing_key(c, session_id)?.ok_or_else(|| {
                    StoreError::Inconsistent(format!("journal of {session_id} vanished"))
                })?;
                self.keys.insert(session_id.clone(), k);
                k
            }
        };
        self.last = Some((session_id.clone(), key));
        Ok(key)
    }

    /// Forgets one session's key (its journal row is being dropped).
    pub(crate) fn forget(&mut self, session_id: &str) {
        self.keys.remove(session_id);
        if self.last.as_ref().is_some_and(|(s, _)| **s == *session_id) {
            self.last = None;
        }
    }

    /// Forgets every key (after a failed commit).
    pub(crate) fn clear(&mut self) {
        self.keys.clear();
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_ids_keep_journals_apart_and_in_order() {
        let a = line_id(1, 1).unwrap();
        let b = line_id(1, MAX_SEQ).unwrap();
        let c = line_id(2, 1).unwrap();
        assert!(a < b && b < c);
        let (lo, hi) = key_range(1);
        assert!(lo < a && b < hi && hi <= c);
        assert_eq!(seq_of(b), MAX_SEQ);
        assert_eq!(seq_of(c), 1);
        assert_eq!(line_id(1, 0), None);
        assert_eq!(line_id(1, MAX_SEQ + 1), None);
    }

    #[test]
    fn timestamps_round_trip_at_millisecond_precision() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(millis(t)), "2026-11-18T11:06:40.123Z");
        assert_eq!(millis(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
