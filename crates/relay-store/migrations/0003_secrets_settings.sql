-- Secrets, encrypted at rest with AES-256-GCM (the pi-apps relay's format: base64 iv,
-- ciphertext without the tag, and tag; plus the key version that sealed them). The ciphertext
-- is bound to its row: the secret's id is the associated data, so a value copied into another
-- row does not decrypt.
CREATE TABLE secrets (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    env_var     TEXT NOT NULL,
    kind        TEXT NOT NULL DEFAULT 'env_var'
                CHECK (kind IN ('ai_provider', 'env_var', 'sandbox_provider')),
    enabled     INTEGER NOT NULL DEFAULT 1,
    iv          TEXT NOT NULL,
    ciphertext  TEXT NOT NULL,
    tag         TEXT NOT NULL,
    key_version INTEGER NOT NULL DEFAULT 1,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    domains     TEXT
);
-- Case-insensitive: each secret becomes a file named by the lower-case variable name, so
-- FOO and foo would be the same file.
CREATE UNIQUE INDEX secrets_env_var_idx ON secrets (env_var COLLATE NOCASE);

-- A known value sealed with the current key, so a start with the wrong key is refused before
-- anything is written, even when no secret exists yet. One row.
CREATE TABLE secrets_key_check (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    key_version INTEGER NOT NULL,
    iv          TEXT NOT NULL,
    ciphertext  TEXT NOT NULL,
    tag         TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

-- Relay settings: JSON values by key.
CREATE TABLE settings (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
