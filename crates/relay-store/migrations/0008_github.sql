-- Repositories the relay learned of from GitHub (the pi-apps relay's cache), and credentials the
-- relay itself uses (a GitHub token): sealed like secrets, bound to their id, re-sealed and
-- forgotten with them, never listed with them and never given to a sandbox.
CREATE TABLE repos (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    full_name      TEXT NOT NULL,
    owner          TEXT NOT NULL,
    is_private     INTEGER NOT NULL,
    description    TEXT,
    html_url       TEXT NOT NULL,
    clone_url      TEXT NOT NULL,
    ssh_url        TEXT,
    default_branch TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);

CREATE TABLE relay_credentials (
    id          TEXT PRIMARY KEY,
    key_version INTEGER NOT NULL,
    iv          TEXT NOT NULL,
    ciphertext  TEXT NOT NULL,
    tag         TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
