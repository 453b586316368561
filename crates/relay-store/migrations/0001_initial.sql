-- Environments: how sandboxes of a session are made (image, limits, ...); config is JSON.
CREATE TABLE environments (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    sandbox_type TEXT NOT NULL,
    config       TEXT NOT NULL,
    is_default   INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);

-- Sessions; column names follow the pi-apps relay so its data model carries over.
CREATE TABLE sessions (
    id                       TEXT PRIMARY KEY,
    mode                     TEXT NOT NULL CHECK (mode IN ('chat', 'code')),
    status                   TEXT NOT NULL DEFAULT 'creating'
                             CHECK (status IN ('creating', 'active', 'idle', 'archived', 'error')),
    status_reason            TEXT,
    repo_id                  TEXT,
    repo_path                TEXT,
    branch_name              TEXT,
    name                     TEXT,
    current_model_provider   TEXT,
    current_model_id         TEXT,
    system_prompt            TEXT,
    sandbox_provider         TEXT,
    sandbox_provider_id      TEXT,
    sandbox_image_digest     TEXT,
    environment_id           TEXT REFERENCES environments (id),
    first_user_message       TEXT,
    extensions_stale         INTEGER NOT NULL DEFAULT 0,
    branch_creation_deferred INTEGER NOT NULL DEFAULT 0,
    created_at               TEXT NOT NULL,
    last_activity_at         TEXT NOT NULL
);
CREATE INDEX sessions_status_idx ON sessions (status);

-- The event journal: every line pi printed and every prompt, numbered per session from 1.
-- No foreign key to sessions on purpose: deleting a session removes its events in small
-- chunks afterwards, so one big delete never stalls the single writer.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    type       TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE UNIQUE INDEX events_session_seq_idx ON events (session_id, seq);
