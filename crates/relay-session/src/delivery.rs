//! Secrets reach sandboxes through the session service: creating, changing or deleting a secret
//! here also brings the secrets of every live session up to date, so a deleted or disabled secret
//! leaves them at once (a running pi keeps what its entrypoint exported until its sandbox
//! restarts), and a new one is there for the next start.

use relay_model::SessionStatus;

use crate::secrets::{NewSecret, SecretChange, SecretInfo};
use crate::{SessionError, SessionService};

impl SessionService {
    /// Creates a secret and delivers it to live sessions.
    pub async fn create_secret(&self, new: NewSecret) -> Result<SecretInfo, SessionError> {
        let info = self.inner.secrets.create(new).await?;
        self.secrets_changed().await;
        Ok(info)
    }

    /// Changes a secret and brings live sessions' secrets up to date.
    pub async fn update_secret(&self, id: &str, change: SecretChange) -> Result<(), SessionError> {
        self.inner.secrets.update(id, change).await?;
        self.secrets_changed().await;
        Ok(())
    }

    /// Deletes a secret and removes it from live sessions' secrets.
    pub async fn delete_secret(&self, id: &str) -> Result<(), SessionError> {
        self.inner.secrets.delete(id).await?;
        self.secrets_changed().await;
        Ok(())
    }

    /// After a secret changed: the providers the gateway serves (their keys, the domain-bound
    /// secrets) and every live session's secrets directory. Failures are logged.
    async fn secrets_changed(&self) {
        if let Err(e) = self.refresh_providers().await {
            tracing::warn!(error = %e, "cannot refresh the gateway's providers");
        }
        self.refresh_secret_files().await;
    }

    /// Brings the secrets of all sessions that may start a sandbox up to date (also at startup:
    /// secrets may have been deleted with `pi-relay secrets forget` while the relay was down).
    /// Failures are logged.
    pub async fn refresh_secret_files(&self) {
        let inner = &self.inner;
        let rows = match inner.store.sessions(None).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list sessions to refresh their secrets");
                return;
            }
        };
        let storage = inner.sandbox.storage();
        for row in rows.into_iter().filter(|r| r.status.is_live()) {
            let lock = inner.lock(&row.id);
            let _guard = lock.lock().await;
            // Archive and delete remove the secrets under the same lock: write only where they
            // still exist, so removed secrets never come back.
            let live = matches!(
                inner.store.session(&row.id).await,
                Ok(Some(r)) if r.status != SessionStatus::Archived
            );
            if !live || !storage.has_secrets(&row.id).await.unwrap_or(false) {
                continue;
            }
            // Read under the lock: of two concurrent refreshes, the last to write has the
            // newest secrets.
            let delivered = match inner.environment_of(&row).await {
                Ok(env) => {
                    let env = crate::spec::EnvConfig::parse(&env.config);
                    inner.deliver_secrets(&row.id, &env).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = delivered {
                tracing::warn!(session = %row.id, error = %e, "cannot refresh secrets");
            }
        }
    }
}
