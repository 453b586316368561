//! Startup reconciliation: the database is a record that heals itself against the provider,
//! which is the source of truth for sandboxes. Journals of deleted sessions are purged, sessions
//! left in `creating` adopt their running sandbox or fail, running sandboxes get their hubs back
//! (with what pi printed meanwhile), and sandboxes and files no live session owns are removed.
//! Each decision is a pure function of what the store and the provider say ([`owns_sandbox`],
//! [`stale_files`]); acting on it is logged and never stops the others.

use relay_model::SessionStatus;
use relay_sandbox::{
    LABEL_INSTANCE, LABEL_SESSION, SandboxError, SandboxId, SandboxInfo, SandboxStatus,
    StoredSession,
};
use relay_store::{SessionRow, SessionSandbox};

use crate::service::Inner;
use crate::spec::EnvConfig;
use crate::{SessionError, SessionService};

/// Whether a live session owns the sandbox `info` (the session it is labelled with records it).
pub(crate) fn owns_sandbox(owner: Option<&SessionRow>, info: &SandboxInfo) -> bool {
    owner.is_some_and(|r| {
        r.status.is_live() && r.sandbox_provider_id.as_deref() == Some(info.id.as_str())
    })
}

/// Which of a session's stored files must go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StaleFiles {
    /// None: the session is live.
    Keep,
    /// Its secrets: the session is archived (it keeps its workspace and journal).
    Secrets,
    /// Everything: the session no longer exists.
    All,
}

/// Which of `stored`'s files must go, given the session's row (`None`: deleted).
pub(crate) fn stale_files(row: Option<&SessionRow>, stored: &StoredSession) -> StaleFiles {
    match row {
        None => StaleFiles::All,
        Some(r) if !r.status.is_live() && stored.secrets => StaleFiles::Secrets,
        Some(_) => StaleFiles::Keep,
    }
}

impl SessionService {
    /// Startup work: removes journals of deleted sessions, settles sessions left in `creating`,
    /// re-attaches the hubs of running sandboxes so pi's output is journaled again, and removes
    /// sandboxes and files nobody owns.
    pub async fn recover(&self) -> Result<(), SessionError> {
        let inner = &self.inner;
        for id in inner.store.orphaned_event_sessions().await? {
            inner.purge_events_later(&id);
        }
        for row in &inner.store.sessions(None).await? {
            if matches!(
                row.status,
                SessionStatus::Creating | SessionStatus::Active | SessionStatus::Idle
            ) {
                // A sandbox that runs reaches the world through this relay from now on (its
                // forwarder connects anew for each connection): serve its socket first.
                let opened = match inner.environment_of(row).await {
                    Ok(env) => inner.open_gateway(&row.id, &EnvConfig::parse(&env.config)),
                    Err(e) => Err(e),
                };
                if let Err(e) = opened {
                    tracing::warn!(session = %row.id, error = %e, "cannot serve the egress socket");
                }
            }
            match row.status {
                SessionStatus::Creating => inner.finish_interrupted_create(row).await?,
                SessionStatus::Active | SessionStatus::Idle => {
                    let Some(cid) = row.sandbox_provider_id.clone() else {
                        continue;
                    };
                    let cid = SandboxId(cid);
                    match inner.sandbox.inspect(&cid).await {
                        // A suspended (idle) sandbox is re-attached when activate resumes it.
                        Ok(info) if info.status == SandboxStatus::Running => {
                            if let Err(e) = inner.ensure_attached(&row.id, &cid, false).await {
                                tracing::warn!(session = %row.id, error = %e, "cannot re-attach");
                            }
                        }
                        // Stopped: activate restarts it.
                        Ok(_) => {}
                        Err(SandboxError::NotFound(_)) => tracing::warn!(
                            session = %row.id,
                            "the session's sandbox is gone; activate creates a new one"
                        ),
                        Err(e) => {
                            tracing::warn!(session = %row.id, error = %e, "cannot look at the sandbox")
                        }
                    }
                }
                SessionStatus::Archived | SessionStatus::Error => {}
            }
        }
        inner.remove_orphan_sandboxes().await?;
        inner.remove_stale_files().await?;
        Ok(())
    }
}

impl Inner {
    /// A session left in `creating` by a relay that stopped: adopt its sandbox if it runs,
    /// otherwise remove it and mark the session failed.
    async fn finish_interrupted_create(&self, row: &SessionRow) -> Result<(), SessionError> {
        let name = SandboxId(crate::spec::container_name(&row.id));
        if let Ok(info) = self.sandbox.inspect(&name).await
            && info.status == SandboxStatus::Running
            && info.labels.get(LABEL_INSTANCE) == Some(&self.cfg.instance_id)
        {
            let sandbox = SessionSandbox {
                provider: Some(self.sandbox.kind().into()),
                provider_id: Some(info.id.0.clone()),
                image_digest: Some(info.image_id.clone()),
            };
            self.transition_with_sandbox(
                &row.id,
                SessionStatus::Creating,
                SessionStatus::Active,
                sandbox,
            )
            .await?;
            self.ensure_attached(&row.id, &info.id, false).await?;
            tracing::info!(session = %row.id, "adopted the sandbox of an interrupted create");
            return Ok(());
        }
        self.teardown(&row.id, row.sandbox_provider_id.as_deref())
            .await;
        let reason = "the relay stopped while the sandbox was being created";
        if let Ok(hub) = self.hubs.get_or_create(&row.id).await {
            hub.log(format!("relay: session failed: {reason}"));
        }
        self.transition(
            &row.id,
            SessionStatus::Creating,
            SessionStatus::Error,
            Some(reason.into()),
        )
        .await
    }

    /// Removes sandboxes carrying this relay's label that no live session owns.
    async fn remove_orphan_sandboxes(&self) -> Result<(), SessionError> {
        let ours = [(LABEL_INSTANCE.to_owned(), self.cfg.instance_id.clone())];
        for info in self.sandbox.list(&ours).await? {
            let owner = match info.labels.get(LABEL_SESSION) {
                Some(s) => self.store.session(s).await?,
                None => None,
            };
            if !owns_sandbox(owner.as_ref(), &info) {
                tracing::info!(sandbox = %info.name, "removing a sandbox no session owns");
                if let Err(e) = self.sandbox.remove(&info.id).await {
                    tracing::warn!(sandbox = %info.name, error = %e, "cannot remove orphan sandbox");
                }
            }
        }
        Ok(())
    }

    /// Removes the files of sessions that no longer exist, and the secrets of archived ones.
    async fn remove_stale_files(&self) -> Result<(), SessionError> {
        let storage = self.sandbox.storage();
        for stored in storage.sessions().await? {
            let id = &stored.session_id;
            let removed = match stale_files(self.store.session(id).await?.as_ref(), &stored) {
                StaleFiles::Keep => continue,
                StaleFiles::Secrets => storage.remove_secrets(id).await,
                StaleFiles::All => storage.remove(id).await,
            };
            match removed {
                Ok(()) => tracing::info!(session = %id, "removed files of a session that is gone"),
                Err(e) => tracing::warn!(session = %id, error = %e, "cannot remove orphan files"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use relay_model::Mode;

    use super::*;

    fn row(status: SessionStatus, cid: Option<&str>) -> SessionRow {
        SessionRow {
            id: "s1".into(),
            mode: Mode::Chat,
            status,
            status_reason: None,
            sandbox_provider: Some("docker".into()),
            sandbox_provider_id: cid.map(str::to_owned),
            environment_id: None,
            sandbox_image_digest: None,
            repo_id: None,
            repo_path: None,
            branch_name: None,
            branch_creation_deferred: false,
            name: None,
            first_user_message: None,
            current_model_provider: None,
            current_model_id: None,
            system_prompt: None,
            extensions_stale: false,
            created_at: String::new(),
            last_activity_at: String::new(),
        }
    }

    fn sandbox(id: &str) -> SandboxInfo {
        SandboxInfo {
            id: SandboxId(id.into()),
            name: "pi-sandbox-s1".into(),
            status: SandboxStatus::Running,
            exit_code: None,
            image_id: "i".into(),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn only_a_live_session_that_records_the_sandbox_owns_it() {
        let info = sandbox("c1");
        assert!(owns_sandbox(
            Some(&row(SessionStatus::Active, Some("c1"))),
            &info
        ));
        assert!(owns_sandbox(
            Some(&row(SessionStatus::Idle, Some("c1"))),
            &info
        ));
        assert!(!owns_sandbox(
            Some(&row(SessionStatus::Active, Some("c2"))),
            &info
        ));
        assert!(!owns_sandbox(
            Some(&row(SessionStatus::Archived, Some("c1"))),
            &info
        ));
        assert!(!owns_sandbox(
            Some(&row(SessionStatus::Creating, None)),
            &info
        ));
        assert!(!owns_sandbox(None, &info));
    }

    #[test]
    fn files_go_with_their_session_and_secrets_with_archiving() {
        let stored = |secrets| StoredSession {
            session_id: "s1".into(),
            files: true,
            secrets,
        };
        assert_eq!(stale_files(None, &stored(true)), StaleFiles::All);
        let archived = row(SessionStatus::Archived, None);
        assert_eq!(
            stale_files(Some(&archived), &stored(true)),
            StaleFiles::Secrets
        );
        assert_eq!(
            stale_files(Some(&archived), &stored(false)),
            StaleFiles::Keep
        );
        for live in [
            SessionStatus::Active,
            SessionStatus::Error,
            SessionStatus::Creating,
        ] {
            assert_eq!(
                stale_files(Some(&row(live, None)), &stored(true)),
                StaleFiles::Keep
            );
        }
    }
}
