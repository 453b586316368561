-- The journal, re-keyed for write speed. Each session's journal gets a small integer key, and
-- a journal line's row id is that key times 2^40 plus its sequence number: a session's lines
-- are one contiguous range of the table's own B-tree, so appending a line is a single B-tree
-- insert with no secondary index to maintain (it was the relay's largest CPU cost while pi
-- streams), and reading or deleting a range needs no index either. Timestamps become Unix
-- milliseconds.
--
-- AUTOINCREMENT so that a key is never handed out twice, even after its journal is purged.
CREATE TABLE journals (
    key        INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL UNIQUE
);

CREATE TABLE journal_lines (
    id         INTEGER PRIMARY KEY,  -- journal key * 2^40 + seq
    type       TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at INTEGER NOT NULL      -- Unix milliseconds
);

INSERT INTO journals (session_id)
    SELECT DISTINCT session_id FROM events ORDER BY session_id;

INSERT INTO journal_lines (id, type, payload, created_at)
    SELECT j.key * 1099511627776 + e.seq, e.type, e.payload,
           COALESCE(CAST(ROUND((julianday(e.created_at) - 2440587.5) * 86400000) AS INTEGER), 0)
    FROM events e JOIN journals j ON j.session_id = e.session_id
    WHERE e.seq > 0 AND e.seq < 1099511627776
    ORDER BY j.key, e.seq;

DROP TABLE events;
