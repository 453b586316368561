//! [`SessionService`]: creates sessions and provisions their sandboxes in the background,
//! activates (resumes or restarts) them, connects clients to their hubs, and archives or
//! deletes them with everything they own. The engine is the source of truth for containers:
//! every decision about a sandbox is taken on a fresh inspect, never on a cached status.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay_hub::{ClientConn, Hubs};
use relay_sandbox::{
    LABEL_INSTANCE, LABEL_SESSION, Limits, Mount, Sandbox, SandboxError, SandboxId, SandboxSpec,
    SandboxStatus,
};
use relay_store::{EnvironmentRow, NewSession, SessionSandbox, Store};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::layout::SessionLayout;
use crate::observer::SessionObserver;
use crate::secrets::SecretService;
use crate::state::{Mode, SessionStatus};
use crate::{
    Activation, ConnectRefused, EventPage, NewSessionRequest, SandboxView, Session, SessionConfig,
    SessionError,
};

/// Journal lines deleted per step when a session is deleted.
const DELETE_CHUNK: usize = 2000;
/// Most events one `GET …/events` page returns.
pub const MAX_EVENTS_PAGE: usize = 10_000;
/// Grace given to pi to exit on SIGTERM before the container is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The service; cheap to clone.
#[derive(Clone, Debug)]
pub struct SessionService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    store: Store,
    sandbox: Arc<dyn Sandbox>,
    hubs: Arc<Hubs>,
    cfg: SessionConfig,
    /// What sandboxes receive in their secrets directory.
    secrets: SecretService,
    /// Bumped on every status change, so activate can wait without polling.
    changes: watch::Sender<u64>,
    /// One lifecycle operation per session at a time.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Image reference → image id, so nothing is resolved or pulled on the hot path.
    images: Mutex<HashMap<String, String>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

/// Resource tier → limits. `medium` is the default.
fn limits_for(tier: Option<&str>) -> Limits {
    const GIB: i64 = 1024 * 1024 * 1024;
    let (mem, cpus) = match tier {
        Some("small") => (GIB, 1),
        Some("large") => (4 * GIB, 4),
        _ => (2 * GIB, 2),
    };
    Limits {
        memory_bytes: Some(mem),
        nano_cpus: Some(cpus * 1_000_000_000),
        // Counts threads too: pi alone has about a dozen.
        pids: Some(512),
    }
}

/// The parts of an environment's JSON config the session layer uses.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvConfig {
    image: Option<String>,
    resource_tier: Option<String>,
    network_mode: Option<String>,
    idle_timeout_seconds: Option<u64>,
    #[serde(default)]
    env_vars: Vec<EnvVar>,
}

#[derive(Debug, serde::Deserialize)]
struct EnvVar {
    key: String,
    value: String,
}

impl SessionService {
    /// A service over `store` and `sandbox`, giving sandboxes the secrets of `secrets`.
    /// Background work (provisioning, hub readers, deletions) runs on `tasks` and stops with
    /// `cancel`.
    pub fn new(
        store: Store,
        sandbox: Arc<dyn Sandbox>,
        cfg: SessionConfig,
        secrets: SecretService,
        tasks: TaskTracker,
        cancel: CancellationToken,
    ) -> SessionService {
        let observer = Arc::new(SessionObserver {
            store: store.clone(),
            service: std::sync::OnceLock::new(),
        });
        let hubs = Arc::new(Hubs::new(store.clone(), observer.clone(), cancel.clone()));
        let inner = Arc::new(Inner {
            store,
            sandbox,
            hubs,
            cfg,
            secrets,
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

    /// The sandbox provider.
    pub fn sandbox(&self) -> &Arc<dyn Sandbox> {
        &self.inner.sandbox
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.inner.cfg
    }

    /// Makes sure a default environment exists (a Docker one using the configured image).
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
                sandbox_type: "docker".into(),
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
        let name = req
            .session_name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .unwrap_or_else(|| crate::title::session_title(req.first_prompt.as_deref(), req.mode));
        let id = uuid::Uuid::new_v4().to_string();
        inner
            .store
            .insert_session(NewSession {
                id: id.clone(),
                mode: req.mode.as_str().into(),
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
                    .map(str::to_owned),
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
            provision(&task_inner, &id, &env).await;
        });
        Ok(session)
    }

    /// One session.
    pub async fn get(&self, id: &str) -> Result<Session, SessionError> {
        self.inner
            .store
            .session(id)
            .await?
            .map(Session::from)
            .ok_or(SessionError::NotFound)
    }

    /// Sessions, most recently active first, optionally only those with the given statuses.
    pub async fn list(&self, statuses: Option<Vec<String>>) -> Result<Vec<Session>, SessionError> {
        Ok(self
            .inner
            .store
            .sessions(statuses)
            .await?
            .into_iter()
            .map(Session::from)
            .collect())
    }

    /// Makes a session usable: waits for provisioning, resumes a paused sandbox, restarts an
    /// exited one, and re-attaches its hub.
    pub async fn activate(&self, id: &str, client_id: &str) -> Result<Activation, SessionError> {
        let inner = &self.inner;
        inner.hubs.set_activator(id, client_id).await;
        let mut changes = inner.changes.subscribe();
        let deadline = tokio::time::Instant::now() + inner.cfg.activate_timeout;
        // Whether this call waited for provisioning to finish.
        let mut provisioned_meanwhile = false;
        loop {
            let row = inner
                .store
                .session(id)
                .await?
                .ok_or(SessionError::NotFound)?;
            let status: SessionStatus = row
                .status
                .parse()
                .map_err(|_| SessionError::Unsupported(format!("unknown status {}", row.status)))?;
            match status {
                SessionStatus::Archived => return Err(SessionError::Archived),
                SessionStatus::Error => {
                    return Err(SessionError::InErrorState);
                }
                SessionStatus::Active
                    if provisioned_meanwhile && row.sandbox_provider_id.is_some() =>
                {
                    // Provisioning just started the sandbox, delivered its secrets and attached
                    // its hub: there is nothing to resume, and the client is waiting for it.
                    return self.activation(id).await;
                }
                SessionStatus::Active | SessionStatus::Idle => {
                    if let Some(cid) = row.sandbox_provider_id {
                        return self.resume(id, &SandboxId(cid), status).await;
                    }
                }
                SessionStatus::Creating => {}
            }
            // Wait for the next status change, or time out.
            provisioned_meanwhile = true;
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(SessionError::ActivateTimeout),
                Err(_) => return Err(SessionError::ActivateTimeout),
            }
            // A session that failed while we waited reports the provisioning failure.
            if let Some(r) = inner.store.session(id).await?
                && r.status == "error"
            {
                return Err(SessionError::ProvisioningFailed);
            }
        }
    }

    async fn resume(
        &self,
        id: &str,
        cid: &SandboxId,
        status: SessionStatus,
    ) -> Result<Activation, SessionError> {
        let inner = &self.inner;
        let lock = inner.lock(id);
        let _guard = lock.lock().await;
        // Fresh secrets for a sandbox that starts now, and for the next start of one that
        // runs (its entrypoint read them when it started).
        inner.deliver_secrets(id).await?;
        let unavailable = |e: SandboxError| SessionError::SandboxUnavailable(e.to_string());
        let info = inner.sandbox.inspect(cid).await.map_err(unavailable)?;
        match info.status {
            SandboxStatus::Running => inner
                .ensure_attached(id, cid, false)
                .await
                .map_err(unavailable)?,
            SandboxStatus::Paused => {
                // The engine cannot attach to a paused container: thaw it first.
                inner.sandbox.unpause(cid).await.map_err(unavailable)?;
                inner
                    .ensure_attached(id, cid, false)
                    .await
                    .map_err(unavailable)?;
            }
            SandboxStatus::Created | SandboxStatus::Exited => {
                // Attach first so nothing pi prints at start is missed; `--session-id` makes
                // the restarted pi continue the same conversation.
                inner
                    .ensure_attached(id, cid, true)
                    .await
                    .map_err(unavailable)?;
                if let Some(hub) = inner.hubs.get(id) {
                    hub.log("relay: sandbox restarted".into());
                }
                inner.sandbox.start(cid).await.map_err(unavailable)?;
            }
        }
        if status != SessionStatus::Active {
            inner
                .store
                .set_status(id, "active", None, &relay_hub::timestamp())
                .await?;
            inner.changed();
        }
        self.activation(id).await
    }

    /// What an activate answers once the sandbox runs and its hub is attached.
    async fn activation(&self, id: &str) -> Result<Activation, SessionError> {
        let inner = &self.inner;
        let hub = inner.hubs.get_or_create(id).await?;
        // Without this, a session activated out of `idle` has been inactive for longer than the
        // timeout, and the reaper's next pass would pause it again before its client connects.
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
            sandbox_status: "running".into(),
        })
    }

    /// A page of the journal: events with `seq > after`, at most `limit`.
    pub async fn events(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<EventPage, SessionError> {
        self.inner
            .store
            .session(id)
            .await?
            .ok_or(SessionError::NotFound)?;
        // Lines already sent to clients may still sit in the writer's queue; a reader of the
        // journal must see at least what clients have seen.
        self.inner.store.barrier().await?;
        let limit = limit.clamp(1, MAX_EVENTS_PAGE);
        let events = self.inner.store.events(id, after, u64::MAX, limit).await?;
        let last_seq = events.last().map_or(after, |e| e.seq);
        Ok(EventPage { events, last_seq })
    }

    /// The session's sandbox as the runtime reports it now.
    pub async fn sandbox_view(&self, id: &str) -> Result<SandboxView, SessionError> {
        let row = self
            .inner
            .store
            .session(id)
            .await?
            .ok_or(SessionError::NotFound)?;
        let Some(cid) = row.sandbox_provider_id.clone() else {
            return Ok(SandboxView {
                provider: row.sandbox_provider,
                provider_id: None,
                status: "stopped".into(),
                image_digest: None,
                available: false,
            });
        };
        let (status, available) = match self.inner.sandbox.inspect(&SandboxId(cid.clone())).await {
            Ok(info) => (info.status.as_protocol_str().to_owned(), true),
            Err(SandboxError::Unavailable(_)) => ("error".to_owned(), false),
            Err(_) => ("error".to_owned(), true),
        };
        Ok(SandboxView {
            provider: row.sandbox_provider,
            provider_id: Some(cid),
            status,
            image_digest: row.sandbox_image_digest,
            available,
        })
    }

    /// Recent stderr lines of the session's sandbox and relay notes about it.
    pub async fn logs(&self, id: &str) -> Result<Vec<String>, SessionError> {
        self.inner
            .store
            .session(id)
            .await?
            .ok_or(SessionError::NotFound)?;
        Ok(self
            .inner
            .hubs
            .get(id)
            .map(|h| h.logs())
            .unwrap_or_default())
    }

    /// Connects a WebSocket client to the session's hub.
    pub async fn connect(&self, id: &str, client_id: &str) -> Result<ClientConn, ConnectRefused> {
        let inner = &self.inner;
        let refused = |code, reason| ConnectRefused { code, reason };
        let row = match inner.store.session(id).await {
            Ok(Some(r)) if r.status != "archived" => r,
            Ok(_) => return Err(refused(4004, "Session not found")),
            Err(e) => {
                tracing::error!(error = %e, "session lookup failed");
                return Err(refused(4003, "Failed to attach to sandbox"));
            }
        };
        if row.status != "active" {
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
            inner
                .hubs
                .get_or_create(id)
                .await
                .map_err(|e| SandboxError::Runtime(e.to_string()))
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

    /// Records a client's capabilities (applied when it connects, or now if it is connected).
    pub async fn set_capabilities(
        &self,
        id: &str,
        client_id: &str,
        extension_ui: bool,
    ) -> Result<(), SessionError> {
        self.inner
            .store
            .session(id)
            .await?
            .ok_or(SessionError::NotFound)?;
        self.inner
            .hubs
            .set_extension_ui(id, client_id, extension_ui)
            .await;
        Ok(())
    }

    /// Recreates a session's sandbox. The workspace and pi's session files stay, and pi, started
    /// with the same `--session-id`, continues the same conversation. Connected clients stay
    /// connected: they see the sandbox stop and start again.
    pub async fn restart(&self, id: &str) -> Result<(), SessionError> {
        let inner = &self.inner;
        let lock = inner.lock(id);
        let guard = lock.clone().lock_owned().await;
        let row = inner
            .store
            .session(id)
            .await?
            .ok_or(SessionError::NotFound)?;
        if row.status == "archived" {
            return Err(SessionError::CannotRestartArchived);
        }
        if row.sandbox_provider.is_none() {
            return Err(SessionError::NotRestartable);
        }
        let env = match &row.environment_id {
            Some(e) => inner.store.environment(e).await?,
            None => None,
        };
        let env = match env {
            Some(e) => e,
            None => inner
                .store
                .default_environment()
                .await?
                .ok_or(SessionError::NoDefaultEnvironment)?,
        };
        inner.teardown(id, row.sandbox_provider_id.as_deref()).await;
        inner
            .store
            .set_status(id, "creating", None, &relay_hub::timestamp())
            .await?;
        inner.changed();
        let task_inner = inner.clone();
        let id = id.to_owned();
        inner.tasks.spawn(async move {
            // Keep the session locked until the new sandbox is up.
            let _guard = guard;
            provision(&task_inner, &id, &env).await;
        });
        Ok(())
    }

    /// Pauses an idle session's sandbox unless a client connected or pi started working in the
    /// meantime. Returns whether it paused it.
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
        let (Some(cid), "active") = (row.sandbox_provider_id, row.status.as_str()) else {
            return Ok(false);
        };
        let Some(hub) = inner.hubs.get(id) else {
            return Ok(false);
        };
        // Decided on a snapshot: look again now that the session is locked.
        if !check(&hub.status().await) {
            return Ok(false);
        }
        match inner.sandbox.pause(&SandboxId(cid)).await {
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
            .store
            .set_status(id, "idle", None, &relay_hub::timestamp())
            .await?;
        inner.changed();
        Ok(true)
    }

    /// Active sessions with their hub's state and their environment's idle timeout, for the
    /// idle reaper.
    pub async fn idle_candidates(&self) -> Result<Vec<crate::reaper::Candidate>, SessionError> {
        let inner = &self.inner;
        let mut out = Vec::new();
        for row in inner.store.sessions(Some(vec!["active".into()])).await? {
            let Some(hub) = inner.hubs.get(&row.id) else {
                continue;
            };
            let timeout = match &row.environment_id {
                Some(e) => inner
                    .store
                    .environment(e)
                    .await?
                    .and_then(|env| serde_json::from_str::<EnvConfig>(&env.config).ok())
                    .and_then(|c| c.idle_timeout_seconds)
                    .filter(|s| *s > 0)
                    .map(Duration::from_secs),
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
        let row = inner
            .store
            .session(id)
            .await?
            .ok_or(SessionError::NotFound)?;
        if row.status == "archived" {
            return Ok(());
        }
        inner.teardown(id, row.sandbox_provider_id.as_deref()).await;
        inner.hubs.remove(id, 4004, "Session archived").await;
        let layout = SessionLayout::new(&inner.cfg.state_dir, id);
        tokio::task::spawn_blocking(move || layout.remove_secrets())
            .await
            .map_err(|e| SessionError::Io(std::io::Error::other(e)))??;
        inner
            .store
            .set_status(id, "archived", None, &relay_hub::timestamp())
            .await?;
        inner.changed();
        Ok(())
    }

    /// Deletes a session and everything it owns. The journal is removed in the background, in
    /// small steps, so a long one never holds up other requests.
    pub async fn delete(&self, id: &str) -> Result<(), SessionError> {
        let inner = &self.inner;
        let lock = inner.lock(id);
        let _guard = lock.lock().await;
        let row = inner
            .store
            .session(id)
            .await?
            .ok_or(SessionError::NotFound)?;
        inner.teardown(id, row.sandbox_provider_id.as_deref()).await;
        inner.hubs.remove(id, 4004, "Session not found").await;
        inner.store.delete_session(id).await?;
        inner.changed();
        let layout = SessionLayout::new(&inner.cfg.state_dir, id);
        tokio::task::spawn_blocking(move || layout.remove_all())
            .await
            .map_err(|e| SessionError::Io(std::io::Error::other(e)))??;
        inner
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let store = inner.store.clone();
        let id = id.to_owned();
        inner
            .tasks
            .spawn(async move { purge_events(&store, &id).await });
        Ok(())
    }

    /// Startup work: removes journals of deleted sessions, fails sessions stuck in `creating`,
    /// and re-attaches the hubs of running sandboxes so pi's output is journaled again.
    pub async fn recover(&self) -> Result<(), SessionError> {
        let inner = &self.inner;
        for id in inner.store.orphaned_event_sessions().await? {
            let store = inner.store.clone();
            inner
                .tasks
                .spawn(async move { purge_events(&store, &id).await });
        }
        let rows = inner.store.sessions(None).await?;
        for row in &rows {
            match row.status.as_str() {
                "creating" => inner.finish_interrupted_create(row).await?,
                "active" | "idle" => {
                    let Some(cid) = row.sandbox_provider_id.clone() else {
                        continue;
                    };
                    let cid = SandboxId(cid);
                    match inner.sandbox.inspect(&cid).await {
                        // A paused (idle) sandbox is re-attached when activate thaws it.
                        Ok(info) if info.status == SandboxStatus::Running => {
                            if let Err(e) = inner.ensure_attached(&row.id, &cid, false).await {
                                tracing::warn!(session = %row.id, error = %e, "cannot re-attach");
                            }
                        }
                        // Stopped: activate restarts it.
                        Ok(_) => {}
                        Err(e) => tracing::warn!(session = %row.id, error = %e, "sandbox missing"),
                    }
                }
                _ => {}
            }
        }
        inner.remove_orphan_sandboxes().await?;
        inner.remove_orphan_dirs().await?;
        Ok(())
    }

    /// Brings the secrets directories of all sessions that may start a sandbox up to date
    /// after a secret changed: a deleted or disabled secret leaves the disk at once (a running
    /// pi keeps what its entrypoint exported until its sandbox restarts). Failures are logged.
    pub async fn refresh_secret_files(&self) {
        let inner = &self.inner;
        let rows = match inner.store.sessions(None).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list sessions to refresh their secrets");
                return;
            }
        };
        for row in rows.into_iter().filter(|r| r.status != "archived") {
            let lock = inner.lock(&row.id);
            let _guard = lock.lock().await;
            // Archive and delete remove the directory under the same lock: write only where it
            // still exists, so a removed directory is never brought back.
            let live =
                matches!(inner.store.session(&row.id).await, Ok(Some(r)) if r.status != "archived");
            let layout = SessionLayout::new(&inner.cfg.state_dir, &row.id);
            if !live || !layout.secrets.exists() {
                continue;
            }
            // Read under the lock: of two concurrent refreshes, the last to write has the
            // newest secrets.
            if let Err(e) = inner.deliver_secrets(&row.id).await {
                tracing::warn!(session = %row.id, error = %e, "cannot refresh secrets");
            }
        }
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

    /// Resolves an image reference to its id now, so the first session does not pay for it.
    pub async fn warm_image(&self, image: &str) -> Result<String, SessionError> {
        Ok(self.inner.image_id(image).await?)
    }

    /// The cancellation token background work stops on.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.inner.cancel
    }
}

impl Inner {
    /// Writes the secrets meant for sandboxes into the session's secrets directory (and
    /// removes files of secrets deleted or disabled since). Called before every container
    /// start, with the session locked.
    async fn deliver_secrets(&self, id: &str) -> Result<(), SessionError> {
        let files = self.secrets.sandbox_files().await?;
        let layout = SessionLayout::new(&self.cfg.state_dir, id);
        let (uid, gid) = self.cfg.sandbox_user;
        let chown = self.cfg.chown_session_dirs;
        tokio::task::spawn_blocking(move || layout.write_secrets(&files, uid, gid, chown))
            .await
            .map_err(|e| SessionError::Io(std::io::Error::other(e)))??;
        Ok(())
    }

    fn lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    fn changed(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    async fn image_id(&self, image: &str) -> Result<String, SandboxError> {
        if let Some(id) = self
            .images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(image)
        {
            return Ok(id.clone());
        }
        let id = self.sandbox.resolve_image(image).await?;
        self.images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(image.to_owned(), id.clone());
        Ok(id)
    }

    fn forget_image(&self, image: &str) {
        self.images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(image);
    }

    /// Attaches the session's hub to its sandbox unless it is attached already. What pi printed
    /// while nobody was attached is first recovered from the engine's log (see
    /// [`crate::recovery`]). A stopped sandbox is only attached when `to_start` (the caller
    /// starts it next); a paused one must be unpaused first (the engine refuses to attach).
    async fn ensure_attached(
        &self,
        id: &str,
        cid: &SandboxId,
        to_start: bool,
    ) -> Result<(), SandboxError> {
        let runtime = |e: relay_store::StoreError| SandboxError::Runtime(e.to_string());
        let hub = self.hubs.get_or_create(id).await.map_err(runtime)?;
        if hub.status().await.attached {
            return Ok(());
        }
        let info = self.sandbox.inspect(cid).await?;
        // The cursor must include every batch the previous attachment queued.
        self.store.barrier().await.map_err(runtime)?;
        let consumed = self.store.stdout_cursor(id).await.map_err(runtime)?;
        match info.status {
            SandboxStatus::Running => {
                crate::recovery::attach_running(&*self.sandbox, &hub, cid, consumed).await
            }
            SandboxStatus::Created | SandboxStatus::Exited if to_start => {
                crate::recovery::attach_stopped(&*self.sandbox, &hub, cid, consumed).await
            }
            other => Err(SandboxError::InvalidState(format!(
                "sandbox is {}",
                other.as_protocol_str()
            ))),
        }
    }

    /// A session left in `creating` by a relay that stopped: adopt its container if it runs,
    /// otherwise remove it and mark the session failed.
    async fn finish_interrupted_create(
        &self,
        row: &relay_store::SessionRow,
    ) -> Result<(), SessionError> {
        let name = SandboxId(container_name(&row.id));
        if let Ok(info) = self.sandbox.inspect(&name).await
            && info.status == SandboxStatus::Running
            && info.labels.get(LABEL_INSTANCE) == Some(&self.cfg.instance_id)
        {
            self.store
                .set_sandbox(
                    &row.id,
                    SessionSandbox {
                        provider: Some(self.sandbox.kind().into()),
                        provider_id: Some(info.id.0.clone()),
                        image_digest: Some(info.image_id.clone()),
                    },
                    "active",
                    &relay_hub::timestamp(),
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
        self.store
            .set_status(
                &row.id,
                "error",
                Some(reason.into()),
                &relay_hub::timestamp(),
            )
            .await?;
        Ok(())
    }

    /// Removes containers carrying this relay's label that no live session owns.
    async fn remove_orphan_sandboxes(&self) -> Result<(), SessionError> {
        let ours = [(LABEL_INSTANCE.to_owned(), self.cfg.instance_id.clone())];
        for info in self.sandbox.list(&ours).await? {
            let owner = match info.labels.get(LABEL_SESSION) {
                Some(s) => self.store.session(s).await?,
                None => None,
            };
            let owned = owner.is_some_and(|r| {
                r.status != "archived" && r.sandbox_provider_id.as_deref() == Some(info.id.as_str())
            });
            if !owned {
                tracing::info!(container = %info.name, "removing a sandbox no session owns");
                if let Err(e) = self.sandbox.remove(&info.id).await {
                    tracing::warn!(container = %info.name, error = %e, "cannot remove orphan sandbox");
                }
            }
        }
        Ok(())
    }

    /// Removes session and secrets directories of sessions that no longer exist, and secrets
    /// directories of archived sessions. Only names the relay creates are touched.
    async fn remove_orphan_dirs(&self) -> Result<(), SessionError> {
        let state_dir = self.cfg.state_dir.clone();
        let mut candidates = Vec::new();
        let session_ids = |dir: &std::path::Path, prefix: &str| -> Vec<String> {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter_map(|n| n.strip_prefix(prefix).map(str::to_owned))
                .filter(|id| uuid::Uuid::parse_str(id).is_ok())
                .collect()
        };
        for id in session_ids(&state_dir.join("sessions"), "") {
            candidates.push((id, false));
        }
        for id in session_ids(&state_dir, "pi-secrets-") {
            candidates.push((id, true));
        }
        for (id, secrets_only) in candidates {
            let layout = SessionLayout::new(&state_dir, &id);
            let remove = match self.store.session(&id).await? {
                None => Some(layout.clone()),
                Some(r) if r.status == "archived" && secrets_only => Some(layout.clone()),
                Some(_) => None,
            };
            if let Some(l) = remove {
                let result = tokio::task::spawn_blocking(move || {
                    if secrets_only {
                        l.remove_secrets()
                    } else {
                        l.remove_all()
                    }
                })
                .await
                .map_err(|e| SessionError::Io(std::io::Error::other(e)))?;
                match result {
                    Ok(()) => {
                        tracing::info!(session = %id, "removed files of a session that is gone")
                    }
                    Err(e) => {
                        tracing::warn!(session = %id, error = %e, "cannot remove orphan files")
                    }
                }
            }
        }
        Ok(())
    }

    /// Stops and removes a session's sandbox (errors are logged: the container may be gone).
    async fn teardown(&self, id: &str, cid: Option<&str>) {
        let ids = cid
            .map(|c| SandboxId(c.to_owned()))
            .into_iter()
            .chain(std::iter::once(SandboxId(container_name(id))));
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

    fn spec(
        &self,
        id: &str,
        env: &EnvConfig,
        image_id: String,
        layout: &SessionLayout,
    ) -> SandboxSpec {
        build_spec(&self.cfg, id, env, image_id, layout)
    }
}

/// The container configuration of session `id` in an environment whose JSON config is
/// `environment_config` (`{}` for the default), from the image `image_id`. The relay uses it
/// for every sandbox; the benchmark's raw baseline uses it so both start the same container.
pub fn sandbox_spec(
    cfg: &SessionConfig,
    id: &str,
    environment_config: &str,
    image_id: String,
    layout: &SessionLayout,
) -> SandboxSpec {
    let env: EnvConfig = serde_json::from_str(environment_config).unwrap_or_default();
    build_spec(cfg, id, &env, image_id, layout)
}

fn build_spec(
    cfg: &SessionConfig,
    id: &str,
    env: &EnvConfig,
    image_id: String,
    layout: &SessionLayout,
) -> SandboxSpec {
    let (uid, gid) = cfg.sandbox_user;
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let mut envs = vec![
        ("PI_CODING_AGENT_DIR".to_owned(), "/data/agent".to_owned()),
        ("HOME".to_owned(), "/home/user".to_owned()),
        ("PI_SESSION_ID".to_owned(), id.to_owned()),
    ];
    envs.extend(
        env.env_vars
            .iter()
            .map(|v| (v.key.clone(), v.value.clone())),
    );
    SandboxSpec {
        name: container_name(id),
        image: image_id,
        command: vec![
            "pi".into(),
            "--mode".into(),
            "rpc".into(),
            "--session-id".into(),
            id.into(),
        ],
        env: envs,
        user: (uid, gid),
        working_dir: "/workspace".into(),
        mounts: vec![
            Mount {
                host: path(&layout.workspace),
                target: "/workspace".into(),
                read_only: false,
            },
            Mount {
                host: path(&layout.agent),
                target: "/data/agent".into(),
                read_only: false,
            },
            Mount {
                host: path(&layout.secrets),
                target: "/run/secrets".into(),
                read_only: true,
            },
            Mount {
                host: path(&layout.generated.join("passwd")),
                target: "/etc/passwd".into(),
                read_only: true,
            },
            Mount {
                host: path(&layout.generated.join("group")),
                target: "/etc/group".into(),
                read_only: true,
            },
            Mount {
                host: path(&layout.generated.join("fixuid.ran")),
                target: "/var/run/fixuid.ran".into(),
                read_only: true,
            },
        ],
        // $HOME must be writable whatever uid the sandbox runs as.
        tmpfs: vec![(
            "/home/user".into(),
            format!("uid={uid},gid={gid},mode=0700,exec,size=268435456"),
        )],
        labels: BTreeMap::from([
            (LABEL_SESSION.to_owned(), id.to_owned()),
            (LABEL_INSTANCE.to_owned(), cfg.instance_id.clone()),
        ]),
        network: env
            .network_mode
            .clone()
            .unwrap_or_else(|| cfg.network.clone()),
        limits: limits_for(env.resource_tier.as_deref()),
        hardened: cfg.hardened,
    }
}

/// `pi-sandbox-<sessionId>`
pub fn container_name(id: &str) -> String {
    format!("pi-sandbox-{id}")
}

async fn provision(inner: &Arc<Inner>, id: &str, env: &EnvironmentRow) {
    match try_provision(inner, id, env).await {
        Ok(()) => {}
        Err(e) => {
            tracing::warn!(session = %id, error = %e, "provisioning failed");
            if let Ok(hub) = inner.hubs.get_or_create(id).await {
                hub.log(format!("relay: provisioning failed: {e}"));
            }
            inner.teardown(id, None).await;
            if let Err(e) = inner
                .store
                .set_status(id, "error", Some(e.to_string()), &relay_hub::timestamp())
                .await
            {
                tracing::error!(session = %id, error = %e, "cannot mark session failed");
            }
        }
    }
    inner.changed();
}

async fn try_provision(
    inner: &Arc<Inner>,
    id: &str,
    env: &EnvironmentRow,
) -> Result<(), SessionError> {
    let env_cfg: EnvConfig = serde_json::from_str(&env.config).unwrap_or_default();
    let image = env_cfg
        .image
        .clone()
        .unwrap_or_else(|| inner.cfg.default_image.clone());
    let layout = SessionLayout::new(&inner.cfg.state_dir, id);
    let (uid, gid) = inner.cfg.sandbox_user;
    let chown = inner.cfg.chown_session_dirs;
    let prepared = layout.clone();
    let template = inner.cfg.agent_template.clone();
    let dirs = async {
        tokio::task::spawn_blocking(move || {
            prepared.prepare(uid, gid, chown)?;
            match template {
                Some(t) => prepared.seed_agent_dir(&t, uid, gid, chown),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| SessionError::Io(std::io::Error::other(e)))??;
        inner.deliver_secrets(id).await
    };
    // Independent, and both on the way to a running sandbox the client waits for.
    let (dirs, image_id) = tokio::join!(dirs, inner.image_id(&image));
    dirs?;
    let image_id = image_id?;
    let spec = inner.spec(id, &env_cfg, image_id, &layout);
    let cid = match inner.sandbox.create(&spec).await {
        Ok(cid) => cid,
        Err(SandboxError::Conflict(_)) => {
            // Left over from an earlier attempt: the name is ours, remove it and try again.
            inner.sandbox.remove(&SandboxId(spec.name.clone())).await?;
            inner.sandbox.create(&spec).await?
        }
        Err(SandboxError::ImageNotFound(m)) => {
            inner.forget_image(&image);
            return Err(SandboxError::ImageNotFound(m).into());
        }
        Err(e) => return Err(e.into()),
    };
    let hub = inner.hubs.get_or_create(id).await?;
    // A new container: its output starts from line 0 (recorded before anything is journaled:
    // the hub's first batch is queued behind it).
    let (cursor, io) = tokio::join!(
        inner.store.set_stdout_cursor(id, 0),
        inner.sandbox.attach(&cid)
    );
    cursor?;
    let io = io?;
    hub.attach(io, 0, bytes::Bytes::new()).await;
    inner.sandbox.start(&cid).await?;
    let info = inner.sandbox.inspect(&cid).await?;
    if info.status != SandboxStatus::Running {
        return Err(SessionError::SandboxUnavailable(format!(
            "container is {} right after start (exit code {})",
            info.status.as_protocol_str(),
            info.exit_code.map_or("unknown".into(), |c| c.to_string())
        )));
    }
    let updated = inner
        .store
        .set_sandbox(
            id,
            SessionSandbox {
                provider: Some(inner.sandbox.kind().into()),
                provider_id: Some(cid.0.clone()),
                image_digest: Some(info.image_id.clone()),
            },
            "active",
            &relay_hub::timestamp(),
        )
        .await?;
    if !updated {
        // Deleted while we were creating it: leave nothing behind.
        inner.teardown(id, Some(cid.as_str())).await;
    }
    Ok(())
}

/// Called when a hub's output ends: records why in the session's log.
pub(crate) async fn note_exit(inner: Arc<Inner>, id: &str) {
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

async fn purge_events(store: &Store, id: &str) {
    loop {
        match store.delete_events_chunk(id, DELETE_CHUNK).await {
            Ok(0) => return,
            Ok(_) => tokio::task::yield_now().await,
            Err(e) => {
                tracing::warn!(session = %id, error = %e, "cannot delete journal");
                return;
            }
        }
    }
}
