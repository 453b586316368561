//! `pi-relay secrets rotate-key` and `pi-relay secrets forget`: operator commands on the
//! secrets vault. Both take the database lock, so they refuse to run next to a relay (which
//! would go on sealing with the old key); stop the relay first.

use std::error::Error;

use relay_session::crypto::EncryptionKey;
use relay_session::vault::{self, KEY_ENV, KeySource};
use relay_store::Store;
use secrecy::ExposeSecret;

use crate::config::{ForgetArgs, RotateKeyArgs, SecretsCommand, encryption_key_from_env};
use crate::lock::StoreLock;

type BoxError = Box<dyn Error + Send + Sync>;

/// Runs a `secrets` command.
pub async fn run(cmd: SecretsCommand) -> Result<(), BoxError> {
    match cmd {
        SecretsCommand::RotateKey(args) => rotate_key(args).await,
        SecretsCommand::Forget(args) => forget(args).await,
    }
}

/// Opens an existing database (never creates one) under its lock.
fn open_store(db_path: &std::path::Path) -> Result<(StoreLock, Store), BoxError> {
    if !db_path.exists() {
        return Err(format!(
            "there is no database at {}: nothing to do (the relay creates it, and its key, on \
             first start)",
            db_path.display()
        )
        .into());
    }
    let lock = StoreLock::acquire(db_path)?;
    let store = Store::open(db_path)?;
    Ok((lock, store))
}

async fn rotate_key(args: RotateKeyArgs) -> Result<(), BoxError> {
    let (config_dir, db_path) = args.store.resolve();
    let new_key = args
        .new_key
        .as_deref()
        .map(|k| EncryptionKey::from_base64(k, "--new-key (RELAY_NEW_ENCRYPTION_KEY)"))
        .transpose()?;
    let chosen = new_key.is_some();
    let (_lock, store) = open_store(&db_path)?;
    let source = KeySource::new(encryption_key_from_env()?, &config_dir);
    let r = vault::rotate(&store, &source, new_key).await?;
    match &r.key_file {
        Some(path) => eprintln!(
            "Re-encrypted {} secret(s) under key version {}; {} holds the new key.",
            r.secrets,
            r.version,
            path.display()
        ),
        None => {
            eprintln!(
                "Re-encrypted {} secret(s) under key version {}. Set {KEY_ENV} to the new key \
                 before starting the relay again; the old key no longer works.",
                r.secrets, r.version
            );
            if !chosen {
                // Alone on stdout, so that a script can capture it.
                println!("{}", r.key.to_base64().expose_secret());
            }
        }
    }
    Ok(())
}

async fn forget(args: ForgetArgs) -> Result<(), BoxError> {
    let (_config_dir, db_path) = args.store.resolve();
    let (_lock, store) = open_store(&db_path)?;
    if !args.yes {
        let n = store.secrets().await?.len();
        return Err(format!(
            "this deletes all {n} stored secret(s) for good; run again with --yes to confirm"
        )
        .into());
    }
    let n = store.forget_secrets().await?;
    eprintln!(
        "Deleted {n} secret(s) and the key check. The next start uses the key it finds (or \
         creates one); enter the secrets again."
    );
    Ok(())
}
