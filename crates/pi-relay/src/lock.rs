//! [`StoreLock`]: one process at a time owns a relay database. `serve` holds the lock for as
//! long as it runs and the `secrets` commands take it too, so a key rotation can never run
//! next to a relay that would go on sealing secrets with the old key. The lock is an advisory
//! file lock on `<database>.lock`; the kernel releases it when the process dies, so a crash
//! never leaves a stale lock behind.

use std::fs::{File, TryLockError};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Held while a process uses the database; dropping it releases the lock.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
    path: PathBuf,
}

impl StoreLock {
    /// Takes the lock of the database at `db_path`, or says which process holds it.
    pub fn acquire(db_path: &Path) -> Result<StoreLock, String> {
        let mut name = db_path.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(format!(
                    "the database {} is in use by another pi-relay process (pid {}, lock {}); \
                     stop it first",
                    db_path.display(),
                    holder.trim(),
                    path.display()
                ));
            }
            Err(TryLockError::Error(e)) => {
                return Err(format!("cannot lock {}: {e}", path.display()));
            }
        }
        // Only a diagnostic for the message above; the lock itself is what counts.
        let _ = file.set_len(0);
        let _ = writeln!(file, "{}", std::process::id());
        Ok(StoreLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("relay.db");
        let first = StoreLock::acquire(&db).unwrap();
        assert_eq!(first.path(), dir.path().join("relay.db.lock"));
        let err = StoreLock::acquire(&db).unwrap_err();
        assert!(err.contains("in use by another pi-relay process"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        assert!(StoreLock::acquire(&db).is_ok());
    }
}
