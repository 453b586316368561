-- pi packages (extensions) configured for every session, the sessions of a mode, or one session,
-- and what the relay last put in each session's settings.json (so what pi or the user added
-- there themselves is kept when the relay writes it again).
CREATE TABLE extension_configs (
    id          TEXT PRIMARY KEY,
    scope       TEXT NOT NULL CHECK (scope IN ('global', 'chat', 'code', 'session')),
    session_id  TEXT REFERENCES sessions (id) ON DELETE CASCADE,
    package     TEXT NOT NULL,
    config_json TEXT,
    created_at  TEXT NOT NULL,
    CHECK ((scope = 'session') = (session_id IS NOT NULL))
);
CREATE UNIQUE INDEX extension_configs_key ON extension_configs (scope, IFNULL(session_id, ''), package);
CREATE INDEX extension_configs_session_idx ON extension_configs (session_id);

CREATE TABLE session_extensions_applied (
    session_id TEXT PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
    applied    TEXT NOT NULL
);
