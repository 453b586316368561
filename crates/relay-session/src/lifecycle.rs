//! Status changes. [`Inner::transition`] is the only way a session's status changes: it checks
//! the move against the lifecycle's rules (`relay_model`) and applies it only if the session is
//! still where the caller saw it. On top of it: restart (a new sandbox), idle (suspending an
//! unused sandbox, by pausing it or, on a provider that cannot pause, stopping it), archive and
//! delete.

use std::time::Duration;

use relay_model::SessionStatus;
use relay_sandbox::{SandboxError, SandboxId};
use relay_store::SessionSandbox;

use crate::service::Inner;
use crate::spec::EnvConfig;
use crate::{SessionError, SessionService};

/// Grace given to pi to exit on SIGTERM before the sandbox is killed.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(5);
/// Journal lines deleted per step when a session is deleted.
const DELETE_CHUNK: usize = 2000;

impl Inner {
    /// Moves session `id` from `from` (where the caller saw it, under the session's lock) to
    /// `to`, recording `reason` (for `error`). Refused if the lifecycle does not allow the move;
    /// [`SessionError::Changed`] if the session is no longer in `from`.
    pub(crate) async fn transition(
        &self,
        id: &str,
        from: SessionStatus,
        to: SessionStatus,
        reason: Option<String>,
    ) -> Result<(), SessionError> {
        let t = from.to(to)?;
        let moved = self
            .store
            .set_status(id, t, reason, &relay_hub::timestamp())
            .await?;
        self.changed();
        if moved {
            Ok(())
        } else {
            Err(SessionError::Changed)
        }
    }

    /// [`Inner::transition`] that also records the sandbox the session now runs in. Returns false
    /// if the session is no longer in `from` (deleted meanwhile, say): nothing changed.
    pub(crate) async fn transition_with_sandbox(
        &self,
        id: &str,
        from: SessionStatus,
        to: SessionStatus,
        sandbox: SessionSandbox,
    ) -> Result<bool, SessionError> {
        let t = from.to(to)?;
        let moved = self
            .store
            .set_sandbox(id, sandbox, t, &relay_hub::timestamp())
            .await?;
        self.changed();
        Ok(moved)
    }

    /// Stops and removes a session's sandbox: the one recorded (`cid`) and any left under the
    /// session's deterministic name. Errors are logged: the sandbox may be gone.
    pub(crate) async fn teardown(&self, id: &str, cid: Option<&str>) {
        let ids = cid
            .map(|c| SandboxId(c.to_owned()))
            .into_iter()
            .chain(std::iter::once(SandboxId(crate::spec::container_name(id))));
        for cid in ids {
            match self.sandbox.stop(&cid, STOP_GRACE).await {
                Ok(()) | Err(SandboxError::NotFound(_)) => {}
                Err(e) => tracing::warn!(session = %id, error = %e, "stop failed"),
            }
            if let Err(e) = self.sandbox.remove(&cid).await {
                tracing::warn!(session = %id, error = %e, "remove failed");
            }
        }
    }
}

impl SessionService {
    /// Recreates a session's sandbox. The workspace and pi's session files stay, and pi, started
    /// with the same `--session-id`, continues the same conversation. Connected clients stay
    /// connected: they see the sandbox stop and start again.
    pub async fn restart(&self, id: &str) -> Result<(), SessionError> {
        let inner = &self.inner;
        let lock = inner.lock(id);
        let guard = lock.clone().lock_owned().await;
        let row = inner.row(id).await?;
        if row.status == SessionStatus::Archived {
            return Err(SessionError::CannotRestartArchived);
        }
        if row.sandbox_provider.is_none() {
            return Err(SessionError::NotRestartable);
        }
        let env = inner.environment_of(&row).await?;
        inner.teardown(id, row.sandbox_provider_id.as_deref()).await;
        // Provisioning holds the lock until it ends: a session still in creating was left there
        // by a relay that stopped, and is simply provisioned again.
        if row.status != SessionStatus::Creating {
            inner
                .transition(id, row.status, SessionStatus::Creating, None)
                .await?;
        }
        let task_inner = inner.clone();
        let id = id.to_owned();
        inner.tasks.spawn(async move {
            // Keep the session locked until the new sandbox is up.
            let _guard = guard;
            crate::provision::provision(&task_inner, &id, &env).await;
        });
        Ok(())
    }

    /// Suspends an idle session's sandbox unless a client connected or pi started working in the
    /// meantime: pauses it, or stops it on a provider that cannot pause (activate starts it
    /// again). Returns whether it did.
    pub async fn idle(
        &self,
        id: &str,
        check: impl Fn(&relay_hub::HubStatus) -> bool,
    ) -> Result<bool, SessionError> {
        let inner = &self.inner;
        let lock = inner.lock(id);
        let _guard = lock.lock().await;
        let Some(row) = inner.store.session(id).await? else {
            return Ok(false);
        };
        let (Some(cid), SessionStatus::Active) = (row.sandbox_provider_id, row.status) else {
            return Ok(false);
        };
        let Some(hub) = inner.hubs.get(id) else {
            return Ok(false);
        };
        // Decided on a snapshot: look again now that the session is locked.
        if !check(&hub.status().await) {
            return Ok(false);
        }
        let cid = SandboxId(cid);
        let suspended = if inner.sandbox.capabilities().pause {
            inner.sandbox.pause(&cid).await
        } else {
            inner.sandbox.stop(&cid, STOP_GRACE).await
        };
        match suspended {
            Ok(()) | Err(SandboxError::NotFound(_)) | Err(SandboxError::InvalidState(_)) => {}
            Err(e) => return Err(e.into()),
        }
        hub.broadcast(relay_hub::protocol::sandbox_status(
            "paused",
            Some("Session idled due to inactivity"),
        ))
        .await;
        hub.clear_client_state().await;
        hub.log("relay: sandbox paused after inactivity".into());
        inner
            .transition(id, SessionStatus::Active, SessionStatus::Idle, None)
            .await?;
        Ok(true)
    }

    /// Active sessions with their hub's state and their environment's idle timeout, for the
    /// idle reaper.
    pub async fn idle_candidates(&self) -> Result<Vec<crate::reaper::Candidate>, SessionError> {
        let inner = &self.inner;
        let mut out = Vec::new();
        for row in inner
            .store
            .sessions(Some(vec![SessionStatus::Active]))
            .await?
        {
            let Some(hub) = inner.hubs.get(&row.id) else {
                continue;
            };
            let timeout = match &row.environment_id {
                Some(e) => inner
                    .store
                    .environment(e)
                    .await?
                    .and_then(|env| EnvConfig::parse(&env.config).idle_timeout()),
                None => None,
            };
            out.push(crate::reaper::Candidate {
                id: row.id,
                hub: hub.status().await,
                timeout,
                mode: row.mode,
            });
        }
        Ok(out)
    }

    /// Archives a session: its sandbox and secrets go, its journal and workspace stay.
    pub async fn archive(&self, id: &str) -> Result<(), SessionError> {
        let inner = &self.inner;
        let lock = inner.lock(id);
        let _guard = lock.lock().await;
        let row = inner.row(id).await?;
        if row.status == SessionStatus::Archived {
            return Ok(());
        }
        inner.teardown(id, row.sandbox_provider_id.as_deref()).await;
        inner.hubs.remove(id, 4004, "Session archived").await;
        inner.gateway.close(id);
        inner.sandbox.storage().remove_secrets(id).await?;
        inner
            .transition(id, row.status, SessionStatus::Archived, None)
            .await
    }

    /// Deletes a session and everything it owns. The journal is removed in the background, in
    /// small steps, so a long one never holds up other requests.
    pub async fn delete(&self, id: &str) -> Result<(), SessionError> {
        let inner = &self.inner;
        let lock = inner.lock(id);
        let _guard = lock.lock().await;
        let row = inner.row(id).await?;
        inner.teardown(id, row.sandbox_provider_id.as_deref()).await;
        inner.hubs.remove(id, 4004, "Session not found").await;
        inner.gateway.forget(id);
        inner.store.delete_session(id).await?;
        inner.changed();
        inner.sandbox.storage().remove(id).await?;
        inner.forget_lock(id);
        inner.purge_events_later(id);
        Ok(())
    }
}

impl Inner {
    /// Removes a deleted session's journal in the background, in chunks.
    pub(crate) fn purge_events_later(&self, id: &str) {
        let store = self.store.clone();
        let id = id.to_owned();
        self.tasks.spawn(async move {
            loop {
                match store.delete_events_chunk(&id, DELETE_CHUNK).await {
                    Ok(0) => return,
                    Ok(_) => tokio::task::yield_now().await,
                    Err(e) => {
                        tracing::warn!(session = %id, error = %e, "cannot delete journal");
                        return;
                    }
                }
            }
        });
    }
}
