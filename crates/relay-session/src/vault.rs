//! The secrets vault: where the encryption key comes from, checking it at startup, and key
//! rotation.
//!
//! The key is `RELAY_ENCRYPTION_KEY` (base64 of 32 bytes) or, when that is unset, the key file
//! `<configDir>/encryption.key`, which the relay creates on first start (mode 0600, written to a
//! temporary file and linked into place, so a crash never leaves half a key). A key file that
//! other users could read is refused rather than silently re-moded: the operator should know
//! the key may have been exposed. A missing key file while secrets exist is refused too: a new
//! key could not decrypt them.
//!
//! The database holds a key check (a known value sealed with the current key, and the key's
//! version). At startup the key must open it and one secret of each stored key version, or the
//! relay refuses to start; nothing is written before that check passes.
//!
//! Rotation ([`rotate`]) re-seals every secret and the key check under a new key with the next
//! version, in one transaction. With a key file it is crash-safe: the new key is first written to
//! `encryption.key.new`, then the database commits (and is synced), then the new file replaces
//! the old one. A start after an interruption finds `encryption.key.new` and keeps whichever of
//! the two keys the database was sealed with.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use relay_store::{KeyCheckRow, SealedValue, Store};
use secrecy::{ExposeSecret, SecretString};

use crate::SessionError;
use crate::crypto::EncryptionKey;

/// The environment variable holding the key.
pub const KEY_ENV: &str = "RELAY_ENCRYPTION_KEY";
/// Name of the key file in the config dir.
pub const KEY_FILE_NAME: &str = "encryption.key";
/// Associated data of the key check (secrets use their id, a UUID, so the two never collide).
const CHECK_AAD: &[u8] = b"pi-relay:key-check";
/// The value sealed in the key check.
const CHECK_PLAINTEXT: &[u8] = b"pi-relay encryption key check";

/// Where the relay's key comes from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// `RELAY_ENCRYPTION_KEY`.
    Env(SecretString),
    /// A key file (created on first start).
    File(PathBuf),
}

impl KeySource {
    /// `RELAY_ENCRYPTION_KEY` when set (even if empty: an empty key is an error, not a reason to
    /// fall back to a file), otherwise `<config_dir>/encryption.key`.
    pub fn new(env_value: Option<SecretString>, config_dir: &Path) -> KeySource {
        match env_value {
            Some(v) => KeySource::Env(v),
            None => KeySource::File(config_dir.join(KEY_FILE_NAME)),
        }
    }

    fn describe(&self) -> String {
        match self {
            KeySource::Env(_) => KEY_ENV.to_owned(),
            KeySource::File(p) => format!("the key file {}", p.display()),
        }
    }
}

/// The key in use and its version.
#[derive(Clone, Debug)]
pub struct Vault {
    key: EncryptionKey,
    version: u32,
}

impl Vault {
    /// A vault over `key` at `version` (tests; the relay uses [`open`]).
    pub fn new(key: EncryptionKey, version: u32) -> Vault {
        Vault { key, version }
    }

    /// Version of the current key.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Seals a secret's value bound to the secret's id.
    pub fn seal_secret(&self, id: &str, value: &SecretString) -> SealedValue {
        self.key.seal(
            self.version,
            id.as_bytes(),
            value.expose_secret().as_bytes(),
        )
    }

    /// Opens a secret's value. Fails if it was sealed under another key version, for another
    /// row, or changed.
    pub fn open_secret(
        &self,
        id: &str,
        sealed: &SealedValue,
    ) -> Result<SecretString, SessionError> {
        if sealed.key_version != self.version {
            return Err(SessionError::Crypto(format!(
                "secret {id} is sealed with key version {}, but the key in use is version {}",
                sealed.key_version, self.version
            )));
        }
        let bytes = self.key.open(id.as_bytes(), sealed).map_err(|_| {
            SessionError::Crypto(format!("secret {id} does not decrypt with the key in use"))
        })?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| SessionError::Crypto(format!("secret {id} is not UTF-8")))?;
        Ok(SecretString::from(text))
    }

    fn check(&self, now: &str) -> KeyCheckRow {
        KeyCheckRow {
            sealed: self.key.seal(self.version, CHECK_AAD, CHECK_PLAINTEXT),
            created_at: now.to_owned(),
        }
    }

    fn opens_check(&self, check: &KeyCheckRow) -> bool {
        check.sealed.key_version == self.version
            && self
                .key
                .open(CHECK_AAD, &check.sealed)
                .is_ok_and(|v| &v[..] == CHECK_PLAINTEXT)
    }
}

/// Loads the key from `source`, checks it against what the database holds, and returns the
/// vault. Creates the key file on first start, and finishes a key rotation that was
/// interrupted. Refuses, changing nothing, when the key cannot decrypt the stored secrets.
pub async fn open(store: &Store, source: &KeySource) -> Result<Vault, SessionError> {
    let secrets = store.secrets().await?;
    let check = store.key_check().await?;
    let stored_version = check
        .as_ref()
        .map(|c| c.sealed.key_version)
        .or_else(|| secrets.iter().map(|s| s.sealed.key_version).max());
    let version = stored_version.unwrap_or(1);
    let key = match source {
        KeySource::Env(text) => EncryptionKey::from_base64(text.expose_secret(), KEY_ENV)?,
        KeySource::File(path) => {
            finish_interrupted_rotation(path, check.as_ref())?;
            match read_key_file(path)? {
                Some(key) => key,
                None if !secrets.is_empty() => {
                    return Err(SessionError::Key(format!(
                        "the encryption key file {} is missing, but the database holds {} \
                         secret(s) encrypted with key version {version}; refusing to create a \
                         new key that could not decrypt them. Restore the key file from a \
                         backup (mode 0600), or set {KEY_ENV} to the key. If the key is lost \
                         for good, `pi-relay secrets forget --yes` deletes the stored secrets \
                         so that they can be entered again.",
                        path.display(),
                        secrets.len()
                    )));
                }
                None => {
                    let key = EncryptionKey::generate();
                    create_key_file(path, &key)?;
                    tracing::info!(path = %path.display(), "created a new encryption key file");
                    key
                }
            }
        }
    };
    let vault = Vault { key, version };
    let now = relay_hub::timestamp();
    match &check {
        Some(c) if vault.opens_check(c) => {}
        Some(_) if secrets.is_empty() => {
            // Nothing is sealed with the old key: adopting the new one loses nothing.
            tracing::warn!(
                source = %source.describe(),
                "the encryption key changed; no secret was stored, so the new key is adopted"
            );
            store.set_key_check(vault.check(&now)).await?;
        }
        Some(_) => return Err(wrong_key(source, version, secrets.len())),
        None => {}
    }
    // One secret of every stored version must open: rows sealed under another version can
    // only come from outside pi-relay, and a silent failure later would lose them.
    let mut seen = std::collections::BTreeSet::new();
    for s in &secrets {
        if !seen.insert(s.sealed.key_version) {
            continue;
        }
        if s.sealed.key_version != version {
            return Err(SessionError::Key(format!(
                "secret {:?} is sealed with key version {} but the database's key is version \
                 {version}; the database was changed outside pi-relay. Nothing was changed.",
                s.env_var, s.sealed.key_version
            )));
        }
        if vault.open_secret(&s.id, &s.sealed).is_err() {
            return Err(wrong_key(source, version, secrets.len()));
        }
    }
    if check.is_none() {
        store.set_key_check(vault.check(&now)).await?;
    }
    Ok(vault)
}

fn wrong_key(source: &KeySource, version: u32, count: usize) -> SessionError {
    SessionError::Key(format!(
        "{} cannot decrypt the stored secrets ({count} secret(s), key version {version}): it is \
         not the key they were encrypted with. Nothing was changed. Start with the right key; \
         after `pi-relay secrets rotate-key` with {KEY_ENV}, set {KEY_ENV} to the new key that \
         command printed.",
        source.describe()
    ))
}

/// What [`rotate`] did.
#[derive(Debug)]
pub struct Rotation {
    /// The new key (to print when the key comes from `RELAY_ENCRYPTION_KEY`).
    pub key: EncryptionKey,
    /// Its version.
    pub version: u32,
    /// How many secrets were re-encrypted.
    pub secrets: usize,
    /// The key file that now holds the new key, if the key comes from a file.
    pub key_file: Option<PathBuf>,
}

/// Re-encrypts every secret under `new_key` (a random one if `None`) with the next key
/// version, in one transaction. The relay must not be running. With a key file, the new key
/// replaces it crash-safely (see the module documentation).
pub async fn rotate(
    store: &Store,
    source: &KeySource,
    new_key: Option<EncryptionKey>,
) -> Result<Rotation, SessionError> {
    let old = open(store, source).await?;
    let new = Vault {
        key: new_key.unwrap_or_else(EncryptionKey::generate),
        version: old.version + 1,
    };
    if let KeySource::File(path) = source {
        write_pending_key(path, &new.key)?;
    }
    let count = match reseal(store, &old, &new).await {
        Ok(n) => n,
        Err(e) => {
            if let KeySource::File(path) = source {
                let _ = std::fs::remove_file(pending_path(path));
            }
            return Err(e);
        }
    };
    let key_file = match source {
        KeySource::File(path) => {
            let pending = pending_path(path);
            std::fs::rename(&pending, path).map_err(|source| SessionError::KeyFile {
                what: format!(
                    "the secrets were re-encrypted, but {} could not replace {} (the next start \
                     of the relay finishes this; do not delete {})",
                    pending.display(),
                    path.display(),
                    pending.display()
                ),
                source,
            })?;
            sync_dir(path)?;
            Some(path.clone())
        }
        KeySource::Env(_) => None,
    };
    Ok(Rotation {
        key: new.key,
        version: new.version,
        secrets: count,
        key_file,
    })
}

/// Re-seals everything from `old` to `new` in one transaction and makes it durable.
async fn reseal(store: &Store, old: &Vault, new: &Vault) -> Result<usize, SessionError> {
    let (old_c, new_c) = (old.clone(), new.clone());
    let count = store
        .reseal_secrets(move |item| match &item.id {
            Some(id) => {
                let value = old_c
                    .open_secret(id, &item.sealed)
                    .map_err(|e| e.to_string())?;
                Ok(new_c.seal_secret(id, &value))
            }
            None => {
                let check = KeyCheckRow {
                    sealed: item.sealed.clone(),
                    created_at: String::new(),
                };
                if !old_c.opens_check(&check) {
                    return Err("the key check does not open with the current key".into());
                }
                Ok(new_c.key.seal(new_c.version, CHECK_AAD, CHECK_PLAINTEXT))
            }
        })
        .await
        .map_err(|e| match e {
            relay_store::StoreError::Aborted(m) => SessionError::Crypto(m),
            other => SessionError::Store(other),
        })?;
    // The key file is replaced next: the commit must survive a power loss first.
    store.checkpoint().await?;
    Ok(count)
}

fn pending_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

/// After a crash during [`rotate`]: keeps whichever key the database's key check opens.
fn finish_interrupted_rotation(
    path: &Path,
    check: Option<&KeyCheckRow>,
) -> Result<(), SessionError> {
    let pending = pending_path(path);
    if !pending.exists() {
        return Ok(());
    }
    let opens = |key: &EncryptionKey| {
        check.is_some_and(|c| {
            Vault {
                key: key.clone(),
                version: c.sealed.key_version,
            }
            .opens_check(c)
        })
    };
    let current = read_key_file(path).ok().flatten();
    if current.as_ref().is_some_and(opens) {
        tracing::warn!(path = %pending.display(), "a key rotation did not commit; its new key is discarded");
        std::fs::remove_file(&pending)?;
        return Ok(());
    }
    let new = read_key_file(&pending)?;
    if new.as_ref().is_some_and(opens) {
        tracing::warn!(path = %path.display(), "a key rotation committed but did not replace the key file; finishing it");
        std::fs::rename(&pending, path)?;
        sync_dir(path)?;
        return Ok(());
    }
    if check.is_none() {
        // Nothing was ever sealed: the pending key is as good as any.
        std::fs::remove_file(&pending)?;
        return Ok(());
    }
    Err(SessionError::Key(format!(
        "an interrupted key rotation left {} and {}, and neither decrypts the stored secrets. \
         Nothing was changed. Restore the key file from a backup or set {KEY_ENV}.",
        path.display(),
        pending.display()
    )))
}

/// Reads a key file: `None` if it does not exist. Refuses one that other users can read or
/// write, naming the fix.
fn read_key_file(path: &Path) -> Result<Option<EncryptionKey>, SessionError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SessionError::KeyFile {
                what: format!("cannot read the key file {}", path.display()),
                source,
            });
        }
    };
    if !meta.is_file() {
        return Err(SessionError::Key(format!(
            "the key file {} is not a regular file",
            path.display()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SessionError::Key(format!(
            "the key file {} can be accessed by other users (mode {mode:04o}); it holds the key \
             to every stored secret. If that was never the case in practice, run `chmod 600 {}` \
             and start again; otherwise rotate the key (`pi-relay secrets rotate-key`) after \
             fixing the mode.",
            path.display(),
            path.display()
        )));
    }
    let text =
        secrecy::zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            SessionError::KeyFile {
                what: format!("cannot read the key file {}", path.display()),
                source,
            }
        })?);
    EncryptionKey::from_base64(&text, &format!("the key file {}", path.display())).map(Some)
}

/// Writes `key` to a new file with mode 0600 and syncs it.
fn write_new_file(path: &Path, key: &EncryptionKey) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let text = key.to_base64();
    f.write_all(text.expose_secret().as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// Creates the key file atomically: written in full to a temporary name, then linked to the
/// final name, which fails rather than replace a key that appeared in the meantime.
fn create_key_file(path: &Path, key: &EncryptionKey) -> Result<(), SessionError> {
    let fail = |source: std::io::Error| SessionError::KeyFile {
        what: format!("cannot create the key file {}", path.display()),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let linked = write_new_file(&tmp, key).and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    linked.map_err(fail)?;
    sync_dir(path)
}

/// Writes the next key to `<key file>.new` before the database changes.
fn write_pending_key(path: &Path, key: &EncryptionKey) -> Result<(), SessionError> {
    let pending = pending_path(path);
    let _ = std::fs::remove_file(&pending);
    write_new_file(&pending, key).map_err(|source| SessionError::KeyFile {
        what: format!("cannot write {}", pending.display()),
        source,
    })?;
    sync_dir(path)
}

/// Makes a rename or link in `path`'s directory durable.
fn sync_dir(path: &Path) -> Result<(), SessionError> {
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
