//! The RPC layer between WebSocket clients and pi: line framing of pi's stdout, the relay's
//! protocol messages, and one [`Hub`] per session that journals every pi line and fans it out.
//! [`Hubs`] is the registry of hubs; the session layer creates a hub when it starts a sandbox.

pub mod clock;
pub mod hub;
pub mod lines;
pub mod protocol;
mod replay;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use relay_store::Store;
use tokio_util::sync::CancellationToken;

pub use clock::Clock;
pub use hub::{ClientConn, ConnId, Hub, HubStatus, Outbound};
pub use replay::Replay;

/// What a hub tells the session layer. Implementations must not block: they are called from
/// the hub's hot path and should hand slow work to a task.
pub trait HubObserver: Send + Sync + fmt::Debug {
    /// A whitelisted client command reached pi (`prompt` carries its message text).
    fn command_sent(&self, session_id: &str, command: &str, prompt: Option<&str>);
    /// pi reported a session name (a `get_state` response or an extension's `setTitle`).
    fn session_named(&self, session_id: &str, name: &str);
    /// The sandbox's output ended (the process exited or the attachment broke).
    fn channel_closed(&self, session_id: &str, reason: &str);
}

/// Current time as the protocol's timestamps: ISO 8601 with milliseconds, UTC (`…Z`).
pub fn timestamp() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Client preferences set over REST, remembered until the relay stops.
#[derive(Debug, Default)]
pub struct ClientPrefs {
    extension_ui: Mutex<HashMap<(String, String), bool>>,
    activators: Mutex<HashMap<String, String>>,
}

impl ClientPrefs {
    fn extension_ui(&self, session: &str, client: &str) -> bool {
        self.extension_ui
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(session.to_owned(), client.to_owned()))
            .copied()
            .unwrap_or(false)
    }

    fn activator(&self, session: &str) -> Option<String> {
        self.activators
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(session)
            .cloned()
    }

    fn forget(&self, session: &str) {
        self.extension_ui
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(s, _), _| s != session);
        self.activators
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(session);
    }
}

/// The registry of hubs, one per session whose sandbox has been attached.
pub struct Hubs {
    store: Store,
    observer: Arc<dyn HubObserver>,
    prefs: Arc<ClientPrefs>,
    hubs: Mutex<HashMap<String, Arc<Hub>>>,
    cancel: CancellationToken,
    clock: Clock,
}

impl fmt::Debug for Hubs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hubs").finish_non_exhaustive()
    }
}

impl Hubs {
    /// An empty registry. Cancelling `cancel` stops every hub's reader (sandboxes keep running).
    /// Hubs measure activity with `clock`.
    pub fn new(
        store: Store,
        observer: Arc<dyn HubObserver>,
        cancel: CancellationToken,
        clock: Clock,
    ) -> Hubs {
        Hubs {
            store,
            observer,
            prefs: Arc::default(),
            hubs: Mutex::default(),
            cancel,
            clock,
        }
    }

    /// The clock hubs measure activity with.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Hub>>> {
        self.hubs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hub of a session, if one exists.
    pub fn get(&self, session_id: &str) -> Option<Arc<Hub>> {
        self.map().get(session_id).cloned()
    }

    /// The hub of a session, created (continuing the journal's sequence) if needed.
    pub async fn get_or_create(
        &self,
        session_id: &str,
    ) -> Result<Arc<Hub>, relay_store::StoreError> {
        if let Some(h) = self.get(session_id) {
            return Ok(h);
        }
        let seq = self.store.max_seq(session_id).await?;
        let hub = Hub::new(
            session_id,
            self.store.clone(),
            self.observer.clone(),
            self.prefs.clone(),
            seq,
            self.cancel.child_token(),
            self.clock.clone(),
        );
        Ok(self
            .map()
            .entry(session_id.to_owned())
            .or_insert(hub)
            .clone())
    }

    /// Removes a session's hub, closing its clients with `code`.
    pub async fn remove(&self, session_id: &str, code: u16, reason: &str) {
        let hub = self.map().remove(session_id);
        self.prefs.forget(session_id);
        if let Some(hub) = hub {
            hub.close(code, reason).await;
        }
    }

    /// Remembers whether a client shows extension dialogs.
    pub async fn set_extension_ui(&self, session_id: &str, client_id: &str, enabled: bool) {
        self.prefs
            .extension_ui
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((session_id.to_owned(), client_id.to_owned()), enabled);
        if let Some(h) = self.get(session_id) {
            h.refresh_prefs().await;
        }
    }

    /// Remembers which client activated a session (a controller candidate).
    pub async fn set_activator(&self, session_id: &str, client_id: &str) {
        self.prefs
            .activators
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session_id.to_owned(), client_id.to_owned());
        if let Some(h) = self.get(session_id) {
            h.refresh_prefs().await;
        }
    }

    /// Every hub (for shutdown and the idle reaper).
    pub fn all(&self) -> Vec<Arc<Hub>> {
        self.map().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests;
