-- Files clients uploaded to a session (their bytes are in the state directory, in a place no
-- sandbox sees). Gone with the session.
CREATE TABLE session_files (
    id           TEXT PRIMARY KEY,
    session_id   TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    mime_type    TEXT NOT NULL,
    size         INTEGER NOT NULL,
    uploaded_at  TEXT NOT NULL,
    sandbox_path TEXT
);
CREATE INDEX session_files_session_idx ON session_files (session_id, uploaded_at);
