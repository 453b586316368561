-- Share links of sessions: one token per session, made on first request and kept (asking again
-- gives the same link). Gone with the session.
CREATE TABLE session_shares (
    token      TEXT PRIMARY KEY,
    session_id TEXT NOT NULL UNIQUE REFERENCES sessions (id) ON DELETE CASCADE,
    created_at TEXT NOT NULL
);
