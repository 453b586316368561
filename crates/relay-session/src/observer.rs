//! Turns what hubs report into session updates: activity time, the first prompt, names from pi,
//! and a note when a sandbox's output ends.

use std::sync::{Arc, Weak};

use relay_hub::HubObserver;
use relay_store::Store;

/// The session layer's [`HubObserver`].
#[derive(Debug)]
pub(crate) struct SessionObserver {
    pub(crate) store: Store,
    /// Set once the service exists; used to look at a sandbox whose output ended.
    pub(crate) service: std::sync::OnceLock<Weak<crate::service::Inner>>,
}

impl HubObserver for SessionObserver {
    fn command_sent(&self, session_id: &str, _command: &str, prompt: Option<&str>) {
        let store = self.store.clone();
        let id = session_id.to_owned();
        let prompt = prompt
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| crate::text::truncated(p, crate::text::MAX_FIRST_MESSAGE_CHARS));
        tokio::spawn(async move {
            let now = relay_hub::timestamp();
            if let Err(e) = store.touch_session(&id, &now).await {
                tracing::warn!(session = %id, error = %e, "cannot record activity");
            }
            if let Some(p) = prompt
                && let Err(e) = store.set_first_user_message(&id, &p).await
            {
                tracing::warn!(session = %id, error = %e, "cannot record first message");
            }
        });
    }

    fn session_named(&self, session_id: &str, name: &str) {
        let Some(name) = crate::text::cleaned_name(name) else {
            return;
        };
        let store = self.store.clone();
        let id = session_id.to_owned();
        tokio::spawn(async move {
            if let Err(e) = store.set_session_name(&id, &name).await {
                tracing::warn!(session = %id, error = %e, "cannot rename session");
            }
        });
    }

    fn channel_closed(&self, session_id: &str, _reason: &str) {
        let Some(inner) = self.service.get().and_then(Weak::upgrade) else {
            return;
        };
        let id = session_id.to_owned();
        tokio::spawn(async move { crate::activation::note_exit(Arc::clone(&inner), &id).await });
    }
}
