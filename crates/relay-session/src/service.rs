//! [`SessionService`]: the session domain's one entry point, cheap to clone. This module holds the
//! service's shared state and the requests that only read or create; the rest is spread by
//! responsibility: `provision` (making a sandbox), `activation` (resuming it and attaching its
//! hub, connecting clients), `lifecycle` (every status change, restart, idle, archive, delete),
//! `reconcile` (startup), `recovery` (re-attaching without losing output). The engine is the
//! source of truth for sandboxes: every decision about one is taken on a fresh inspect, never on
//! a cached status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use relay_hub::Hubs;
use relay_model::{Mode, SessionStatus};
use relay_sandbox::{Sandbox, SandboxError, SandboxId};
use relay_store::{EnvironmentRow, NewSession, Store};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::observer::SessionObserver;
use crate::secrets::SecretService;
use crate::text;
use crate::{
    EventPage, NewSessionRequest, SandboxState, SandboxView, Session, SessionConfig, SessionError,
};

/// Most events one `GET …/events` page returns.
pub const MAX_EVENTS_PAGE: usize = 10_000;
/// Payload bytes after which a `GET …/events` page ends (it holds at least one event).
pub const MAX_EVENTS_PAGE_BYTES: usize = 8 * 1024 * 1024;

/// The service; cheap to clone.
#[derive(Clone, Debug)]
pub struct SessionService {
    pub(crate) inner: Arc<Inner>,
}

/// State shared by every clone of the service and its background work.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) sandbox: Arc<dyn Sandbox>,
    pub(crate) hubs: Arc<Hubs>,
    pub(crate) cfg: SessionConfig,
    /// What sandboxes receive in their secrets directory, and the providers' keys.
    pub(crate) secrets: SecretService,
    /// The egress gateway sandboxes reach the world through.
    pub(crate) gateway: relay_gateway::Gateway,
    /// pi's models, as last asked (`GET /api/models`).
    pub(crate) models: tokio::sync::Mutex<crate::models::ModelsCache>,
    /// Bumped on every status change, so activate can wait without polling.
    changes: watch::Sender<u64>,
    /// One lifecycle operation per session at a time.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Image reference → pinned image id, so nothing is resolved on the hot path.
    images: Mutex<HashMap<String, String>>,
    /// The npm registry's pi packages.
    pub(crate) packages: crate::packages::Packages,
    /// GitHub App installation tokens, kept until shortly before they expire.
    pub(crate) installation_tokens: crate::github_app::InstallationTokens,
    pub(crate) tasks: TaskTracker,
    pub(crate) cancel: CancellationToken,
}

impl SessionService {
    /// A service over `store` and `sandbox`, giving sandboxes the secrets of `secrets` and the
    /// world through `gateway`. Background work (provisioning, hub readers, deletions) runs on
    /// `tasks` and stops with `cancel`.
    pub fn new(
        store: Store,
        sandbox: Arc<dyn Sandbox>,
        cfg: SessionConfig,
        secrets: SecretService,
        gateway: relay_gateway::Gateway,
        tasks: TaskTracker,
        cancel: CancellationToken,
    ) -> SessionService {
        let observer = Arc::new(SessionObserver {
            store: store.clone(),
            service: std::sync::OnceLock::new(),
        });
        let hubs = Arc::new(Hubs::new(
            store.clone(),
            observer.clone(),
            cancel.clone(),
            relay_hub::Clock::default(),
        ));
        let packages = crate::packages::Packages::new(
            gateway.clone(),
            &cfg.packages.registry,
            &cfg.packages.cdn,
        );
        let inner = Arc::new(Inner {
            packages,
            installation_tokens: Default::default(),
            store,
            sandbox,
            hubs,
            cfg,
            secrets,
            gateway,
            models: Default::default(),
            changes: watch::channel(0).0,
            locks: Mutex::default(),
            images: Mutex::default(),
            tasks,
            cancel,
        });
        let _ = observer.service.set(Arc::downgrade(&inner));
        SessionService { inner }
    }

    /// The hub registry.
    pub fn hubs(&self) -> &Arc<Hubs> {
        &self.inner.hubs
    }

    /// The clock activity is measured with (the idle reaper's).
    pub fn clock(&self) -> &relay_hub::Clock {
        self.inner.hubs.clock()
    }

    /// The sandbox provider.
    pub fn sandbox(&self) -> &Arc<dyn Sandbox> {
        &self.inner.sandbox
    }

    /// The secrets service whose secrets sandboxes receive.
    pub fn secrets(&self) -> &SecretService {
        &self.inner.secrets
    }

    /// The egress gateway.
    pub fn gateway(&self) -> &relay_gateway::Gateway {
        &self.inner.gateway
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.inner.cfg
    }

    /// The cancellation token background work stops on.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.inner.cancel
    }

    /// Makes sure a default environment exists (of the provider's type, using the configured
    /// image).
    pub async fn ensure_default_environment(&self) -> Result<(), SessionError> {
        let store = &self.inner.store;
        if store.environment_count().await? > 0 {
            return Ok(());
        }
        let now = relay_hub::timestamp();
        store
            .insert_environment(EnvironmentRow {
                id: uuid::Uuid::new_v4().to_string(),
                name: "Default".into(),
                sandbox_type: self.inner.sandbox.kind().into(),
                // No image: sessions use the relay's configured image (SANDBOX_DOCKER_IMAGE).
                config: "{}".into(),
                is_default: true,
                created_at: now.clone(),
                updated_at: now,
            })
            .await?;
        Ok(())
    }

    /// Creates a session and starts provisioning its sandbox in the background.
    pub async fn create(&self, req: NewSessionRequest) -> Result<Session, SessionError> {
        let inner = &self.inner;
        let env = match &req.environment_id {
            Some(id) => inner
                .store
                .environment(id)
                .await?
                .ok_or(SessionError::EnvironmentNotFound)?,
            None => inner
                .store
                .default_environment()
                .await?
                .ok_or(SessionError::NoDefaultEnvironment)?,
        };
        if req.mode == Mode::Code {
            return Err(SessionError::Unsupported(
                "Code sessions need a repository clone, which this relay does not support yet; \
                 create a chat session"
                    .into(),
            ));
        }
        let name = match req.session_name.as_deref().map(str::trim) {
            Some(n) if !n.is_empty() => {
                text::check_label("sessionName", n, text::MAX_NAME_CHARS)?;
                n.to_owned()
            }
            _ => {
                let title = crate::title::session_title(req.first_prompt.as_deref(), req.mode);
                text::cleaned_name(&title)
                    .unwrap_or_else(|| crate::title::session_title(None, req.mode))
            }
        };
        if req
            .system_prompt
            .as_ref()
            .is_some_and(|p| p.len() > text::MAX_SYSTEM_PROMPT_BYTES)
        {
            return Err(SessionError::Invalid(format!(
                "systemPrompt must be at most {} bytes",
                text::MAX_SYSTEM_PROMPT_BYTES
            )));
        }
        let id = uuid::Uuid::new_v4().to_string();
        inner
            .store
            .insert_session(NewSession {
                id: id.clone(),
                mode: req.mode,
                repo_id: req.repo_id.clone(),
                name: Some(name),
                model_provider: req.model_provider.clone(),
                model_id: req.model_id.clone(),
                system_prompt: req.system_prompt.clone(),
                sandbox_provider: Some(inner.sandbox.kind().into()),
                environment_id: Some(env.id.clone()),
                first_user_message: req
                    .first_prompt
                    .as_deref()
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| text::truncated(p, text::MAX_FIRST_MESSAGE_CHARS)),
                created_at: relay_hub::timestamp(),
            })
            .await
            .map_err(|e| match e {
                // The environment was deleted since it was read.
                relay_store::StoreError::Constraint(_) => SessionError::EnvironmentNotFound,
                other => other.into(),
            })?;
        let session = self.get(&id).await?;
        let task_inner = inner.clone();
        inner.tasks.spawn(async move {
            let lock = task_inner.lock(&id);
            let _guard = lock.lock().await;
            crate::provision::provision(&task_inner, &id, &env).await;
        });
        Ok(session)
    }

    /// One session.
    pub async fn get(&self, id: &str) -> Result<Session, SessionError> {
        Ok(self.inner.row(id).await?.into())
    }

    /// Session `id`; one still being created is answered once it has started (or failed), or
    /// after `wait` at the latest, so a client that reads a new session once sees where it got.
    pub async fn get_when_started(
        &self,
        id: &str,
        wait: std::time::Duration,
    ) -> Result<Session, SessionError> {
        let inner = &self.inner;
        let mut changes = inner.watch_changes();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let row = inner.row(id).await?;
            if row.status != SessionStatus::Creating {
                return Ok(row.into());
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Ok(row.into()),
            }
        }
    }

    /// Sessions, most recently active first, optionally only those with the given statuses.
    pub async fn list(
        &self,
        statuses: Option<Vec<SessionStatus>>,
    ) -> Result<Vec<Session>, SessionError> {
        Ok(self
            .inner
            .store
            .sessions(statuses)
            .await?
            .into_iter()
            .map(Session::from)
            .collect())
    }

    /// A page of the journal: events with `seq > after`, at most `limit` (1 to
    /// [`MAX_EVENTS_PAGE`]) and about [`MAX_EVENTS_PAGE_BYTES`] of payloads.
    pub async fn events(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<EventPage, SessionError> {
        self.inner.row(id).await?;
        // Lines already sent to clients may still sit in the writer's queue; a reader of the
        // journal must see at least what clients have seen.
        self.inner.store.barrier().await?;
        let limit = limit.clamp(1, MAX_EVENTS_PAGE);
        let events = (self.inner.store)
            .events(id, after, u64::MAX, limit, MAX_EVENTS_PAGE_BYTES)
            .await?;
        let last_seq = events.last().map_or(after, |e| e.seq);
        Ok(EventPage { events, last_seq })
    }

    /// The session's sandbox as the runtime reports it now.
    pub async fn sandbox_view(&self, id: &str) -> Result<SandboxView, SessionError> {
        let row = self.inner.row(id).await?;
        let state = match &row.sandbox_provider_id {
            // A restart keeps the old sandbox's id until the new one runs: it is gone meanwhile.
            _ if row.status == SessionStatus::Creating => SandboxState::Provisioning,
            None => SandboxState::NotProvisioned,
            Some(cid) => match self.inner.sandbox.inspect(&SandboxId(cid.clone())).await {
                Ok(info) => SandboxState::Present(info.status),
                Err(SandboxError::Unavailable { .. }) => SandboxState::Unreachable,
                Err(_) => SandboxState::Gone,
            },
        };
        Ok(SandboxView {
            provider: row.sandbox_provider,
            image_digest: row.sandbox_image_digest,
            provider_id: row.sandbox_provider_id,
            state,
            capabilities: self.inner.sandbox.capabilities(),
        })
    }

    /// Recent stderr lines of the session's sandbox and relay notes about it.
    pub async fn logs(&self, id: &str) -> Result<Vec<String>, SessionError> {
        self.inner.row(id).await?;
        Ok(self
            .inner
            .hubs
            .get(id)
            .map(|h| h.logs())
            .unwrap_or_default())
    }

    /// Records a client's capabilities (applied when it connects, or now if it is connected).
    pub async fn set_capabilities(
        &self,
        id: &str,
        client_id: &str,
        extension_ui: bool,
    ) -> Result<(), SessionError> {
        self.inner.row(id).await?;
        self.inner
            .hubs
            .set_extension_ui(id, client_id, extension_ui)
            .await;
        Ok(())
    }

    /// Closes every client (sandboxes keep running) when the relay stops.
    pub async fn shutdown(&self) {
        for hub in self.inner.hubs.all() {
            hub.close(1001, "Relay shutting down").await;
        }
    }

    /// Waits until every journal line and update queued so far is committed.
    pub async fn flush(&self) -> Result<(), SessionError> {
        Ok(self.inner.store.barrier().await?)
    }

    /// Pins an image reference now, so the first session does not pay for it.
    pub async fn warm_image(&self, image: &str) -> Result<String, SessionError> {
        Ok(self.inner.image_id(image).await?)
    }
}

impl Inner {
    /// The session's row, or [`SessionError::NotFound`].
    pub(crate) async fn row(&self, id: &str) -> Result<relay_store::SessionRow, SessionError> {
        self.store.session(id).await?.ok_or(SessionError::NotFound)
    }

    /// The lock that keeps lifecycle operations on session `id` apart.
    pub(crate) fn lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    /// Forgets the lock of a deleted session.
    pub(crate) fn forget_lock(&self, id: &str) {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Wakes everyone waiting for a status change.
    pub(crate) fn changed(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    /// A receiver of status changes.
    pub(crate) fn watch_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The pinned id of `image`, from the cache or the provider.
    pub(crate) async fn image_id(&self, image: &str) -> Result<String, SandboxError> {
        if let Some(id) = self
            .images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(image)
        {
            return Ok(id.clone());
        }
        let id = self.sandbox.pin_image(image).await?;
        self.images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(image.to_owned(), id.clone());
        Ok(id)
    }

    /// Drops a pinned image that turned out to be gone.
    pub(crate) fn forget_image(&self, image: &str) {
        self.images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(image);
    }
}
