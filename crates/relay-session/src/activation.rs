//! Making a session usable and connecting clients to it. Activate waits for provisioning,
//! resumes a suspended sandbox (unpauses it, or starts a stopped one), and makes sure the
//! session's hub is attached, recovering what pi printed while nobody was (see
//! `crate::recovery`). Which of those a sandbox needs is decided from its status alone
//! ([`resume_plan`]); acting on it is done under the session's lock.

use relay_hub::ClientConn;
use relay_model::SessionStatus;
use relay_sandbox::{OutputHistory, SandboxError, SandboxId, SandboxStatus};

use crate::service::Inner;
use crate::spec::EnvConfig;
use crate::{Activation, ConnectRefused, SessionError, SessionService};

/// How a resume ended.
enum Resumed {
    /// The sandbox runs and its hub is attached.
    Ready(Activation),
    /// The sandbox was gone; a new one is being provisioned.
    Recreating,
}

/// What resuming a sandbox in a given status takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResumePlan {
    /// It runs: attach the hub if it is not attached.
    Attach,
    /// It is frozen: thaw it, then attach (a provider cannot attach to a frozen sandbox).
    Unpause,
    /// It is not running: attach, then start it (attaching first sees everything pi prints).
    Start,
}

/// What resuming a sandbox in `status` takes.
pub(crate) fn resume_plan(status: SandboxStatus) -> ResumePlan {
    match status {
        SandboxStatus::Running => ResumePlan::Attach,
        SandboxStatus::Paused => ResumePlan::Unpause,
        SandboxStatus::Created | SandboxStatus::Exited => ResumePlan::Start,
    }
}

/// A sandbox that cannot be resumed makes the session unavailable (503), not failed (500).
fn unavailable(e: SandboxError) -> SessionError {
    SessionError::SandboxUnavailable(e)
}

/// [`unavailable`] for errors of the session layer: only the sandbox's own are turned.
fn sandbox_unavailable(e: SessionError) -> SessionError {
    match e {
        SessionError::Sandbox(s) => SessionError::SandboxUnavailable(s),
        other => other,
    }
}

impl SessionService {
    /// Makes a session usable: waits for provisioning, resumes a suspended sandbox, restarts an
    /// exited one, and re-attaches its hub.
    pub async fn activate(&self, id: &str, client_id: &str) -> Result<Activation, SessionError> {
        let inner = &self.inner;
        inner.hubs.set_activator(id, client_id).await;
        let mut changes = inner.watch_changes();
        let deadline = tokio::time::Instant::now() + inner.cfg.activate_timeout;
        // Whether this call waited for provisioning to finish.
        let mut waited = false;
        loop {
            let row = inner.row(id).await?;
            match row.status {
                SessionStatus::Archived => return Err(SessionError::Archived),
                SessionStatus::Error if waited => return Err(SessionError::ProvisioningFailed),
                SessionStatus::Error => return Err(SessionError::InErrorState),
                SessionStatus::Active if waited && row.sandbox_provider_id.is_some() => {
                    // Provisioning just started the sandbox, delivered its secrets and attached
                    // its hub: there is nothing to resume, and the client is waiting for it.
                    return self.activation(id).await;
                }
                SessionStatus::Active | SessionStatus::Idle => {
                    if let Some(cid) = row.sandbox_provider_id {
                        match self.resume(id, &SandboxId(cid)).await? {
                            Resumed::Ready(a) => return Ok(a),
                            // A new sandbox is on its way: wait for it like for a new session.
                            Resumed::Recreating => {}
                        }
                    }
                }
                SessionStatus::Creating => {}
            }
            // Wait for the next status change, or time out.
            waited = true;
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(SessionError::ActivateTimeout),
            }
        }
    }

    async fn resume(&self, id: &str, cid: &SandboxId) -> Result<Resumed, SessionError> {
        let inner = &self.inner;
        let lock = inner.lock(id);
        let guard = lock.lock().await;
        // Looked at again under the lock: the reaper may have suspended it meanwhile.
        let row = inner.row(id).await?;
        let status = row.status;
        if !matches!(status, SessionStatus::Active | SessionStatus::Idle) {
            return Err(SessionError::Changed);
        }
        // Fresh secrets for a sandbox that starts now, and for the next start of one that
        // runs (its entrypoint read them when it started).
        let env = EnvConfig::parse(&inner.environment_of(&row).await?.config);
        inner.deliver_secrets(id, &env).await?;
        inner.open_gateway(id, &env)?;
        let info = match inner.sandbox.inspect(cid).await {
            Ok(info) => info,
            Err(SandboxError::NotFound(_)) => {
                // Removed behind the relay's back (while it was down, say). The session's files
                // and journal are all here: a new sandbox continues where the old one stopped.
                tracing::warn!(session = %id, "the sandbox is gone; creating a new one");
                inner
                    .hubs
                    .get_or_create(id)
                    .await?
                    .log("relay: the sandbox was gone; a new one was created".into());
                drop(guard);
                self.restart(id).await?;
                return Ok(Resumed::Recreating);
            }
            Err(e) => return Err(unavailable(e)),
        };
        match resume_plan(info.status) {
            ResumePlan::Attach => inner
                .ensure_attached(id, cid, false)
                .await
                .map_err(sandbox_unavailable)?,
            ResumePlan::Unpause => {
                inner.sandbox.unpause(cid).await.map_err(unavailable)?;
                inner
                    .ensure_attached(id, cid, false)
                    .await
                    .map_err(sandbox_unavailable)?;
            }
            ResumePlan::Start => {
                // Nothing of the sandbox runs: pi's model settings can be brought up to date.
                inner.prepare_egress(id, &env).await?;
                inner.write_extension_settings(id, row.mode).await?;
                // `--session-id` makes the restarted pi continue the same conversation.
                inner
                    .ensure_attached(id, cid, true)
                    .await
                    .map_err(sandbox_unavailable)?;
                if let Some(hub) = inner.hubs.get(id) {
                    hub.log("relay: sandbox restarted".into());
                }
                inner.sandbox.start(cid).await.map_err(unavailable)?;
            }
        }
        if status == SessionStatus::Idle {
            inner
                .transition(id, SessionStatus::Idle, SessionStatus::Active, None)
                .await?;
        }
        self.activation(id).await.map(Resumed::Ready)
    }

    /// What an activate answers once the sandbox runs and its hub is attached.
    async fn activation(&self, id: &str) -> Result<Activation, SessionError> {
        let inner = &self.inner;
        let hub = inner.hubs.get_or_create(id).await?;
        // Without this, a session activated out of `idle` has been inactive for longer than the
        // timeout, and the reaper's next pass would suspend it again before its client connects.
        hub.touch().await;
        let seq = hub.status().await.seq;
        // Clients page `GET /events` up to lastSeq: make sure those lines are committed (a
        // fresh sandbox's pi has printed nothing yet, and there is nothing to wait for).
        if seq > 0 {
            inner.store.barrier().await?;
        }
        Ok(Activation {
            session_id: id.to_owned(),
            last_seq: seq,
        })
    }

    /// Connects a WebSocket client to the session's hub.
    pub async fn connect(&self, id: &str, client_id: &str) -> Result<ClientConn, ConnectRefused> {
        let inner = &self.inner;
        let refused = |code, reason| ConnectRefused { code, reason };
        let row = match inner.store.session(id).await {
            Ok(Some(r)) if r.status != SessionStatus::Archived => r,
            Ok(_) => return Err(refused(4004, "Session not found")),
            Err(e) => {
                tracing::error!(error = %e, "session lookup failed");
                return Err(refused(4003, "Failed to attach to sandbox"));
            }
        };
        if row.status != SessionStatus::Active {
            return Err(refused(
                4003,
                "Session not active \u{2014} call activate first",
            ));
        }
        let Some(cid) = row.sandbox_provider_id else {
            return Err(refused(4003, "Sandbox not provisioned"));
        };
        let attached = async {
            inner.ensure_attached(id, &SandboxId(cid), false).await?;
            Ok::<_, SessionError>(inner.hubs.get_or_create(id).await?)
        }
        .await;
        match attached {
            Ok(hub) => Ok(hub.connect(client_id).await),
            Err(e) => {
                tracing::warn!(session = %id, error = %e, "attach failed");
                Err(refused(4003, "Failed to attach to sandbox"))
            }
        }
    }
}

impl Inner {
    /// Attaches the session's hub to its sandbox unless it is attached already. What pi printed
    /// while nobody was attached is first recovered, as far as the provider kept it (see
    /// [`crate::recovery`]). A stopped sandbox is only attached when `to_start` (the caller
    /// starts it next); a paused one must be thawed first.
    pub(crate) async fn ensure_attached(
        &self,
        id: &str,
        cid: &SandboxId,
        to_start: bool,
    ) -> Result<(), SessionError> {
        let hub = self.hubs.get_or_create(id).await?;
        if hub.status().await.attached {
            return Ok(());
        }
        let info = self.sandbox.inspect(cid).await?;
        // The cursor must include every batch the previous attachment queued.
        self.store.barrier().await?;
        let consumed = self.store.stdout_cursor(id).await?;
        let history = self.sandbox.capabilities().output_history;
        match info.status {
            SandboxStatus::Running => {
                crate::recovery::attach_running(&*self.sandbox, history, &hub, cid, consumed)
                    .await?;
            }
            SandboxStatus::Created | SandboxStatus::Exited if to_start => {
                crate::recovery::attach_stopped(&*self.sandbox, history, &hub, cid, consumed)
                    .await?;
                if history != OutputHistory::SinceCreation {
                    // The next run's output is counted from its first line: recorded before the
                    // caller starts it, so no line of it is journaled ahead of this.
                    self.store.set_stdout_cursor(id, 0).await?;
                }
            }
            other => {
                let e = SandboxError::InvalidState(format!("the sandbox is {other:?}"));
                return Err(e.into());
            }
        }
        Ok(())
    }
}

/// Called when a hub's output ends: records why in the session's log.
pub(crate) async fn note_exit(inner: std::sync::Arc<Inner>, id: &str) {
    let Ok(Some(row)) = inner.store.session(id).await else {
        return;
    };
    let Some(cid) = row.sandbox_provider_id else {
        return;
    };
    let Some(hub) = inner.hubs.get(id) else {
        return;
    };
    match inner.sandbox.inspect(&SandboxId(cid)).await {
        Ok(info) if info.status == SandboxStatus::Exited => {
            let code = info.exit_code.map_or("unknown".into(), |c| c.to_string());
            hub.log(format!("relay: pi exited with code {code}"));
        }
        Ok(_) => {}
        Err(e) => hub.log(format!("relay: sandbox gone: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sandbox_status_resumes_its_own_way() {
        assert_eq!(resume_plan(SandboxStatus::Running), ResumePlan::Attach);
        assert_eq!(resume_plan(SandboxStatus::Paused), ResumePlan::Unpause);
        assert_eq!(resume_plan(SandboxStatus::Exited), ResumePlan::Start);
        assert_eq!(resume_plan(SandboxStatus::Created), ResumePlan::Start);
    }
}
