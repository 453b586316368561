//! The idle reaper: pauses the sandbox of a session nobody uses. A session is idle when no
//! client is connected, pi is not in the middle of a run (no agent run, no tool call), the last
//! client left more than the grace period ago, and nothing happened for its environment's idle
//! timeout. Deciding is pure ([`select_victims`]); acting goes through the session service,
//! which checks again under the session's lock. The `idle_policy` setting, when a client has
//! set one, replaces the configured timeout and grace and can exempt session modes.

use std::time::Duration;

use relay_hub::HubStatus;
use relay_model::Mode;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::SessionService;
use crate::settings::SettingsService;

/// When sessions are paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdlePolicy {
    /// Inactivity after which a session is paused, unless its environment says otherwise.
    pub timeout: Duration,
    /// Time after the last client left during which a session is never paused (it may be
    /// reconnecting).
    pub grace: Duration,
}

/// An active session as the reaper sees it.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Session id.
    pub id: String,
    /// Its hub's state.
    pub hub: HubStatus,
    /// Its environment's idle timeout, if set.
    pub timeout: Option<Duration>,
    /// Its mode.
    pub mode: Mode,
}

/// Whether a session with this hub state may be paused now.
pub fn is_idle(now: Instant, hub: &HubStatus, timeout: Duration, policy: &IdlePolicy) -> bool {
    if hub.clients > 0 || hub.agent_running || hub.running_tools > 0 {
        return false;
    }
    if hub
        .last_disconnected_at
        .is_some_and(|t| now.saturating_duration_since(t) < policy.grace)
    {
        return false;
    }
    now.saturating_duration_since(hub.last_activity) >= timeout
}

/// The sessions to pause now.
pub fn select_victims(now: Instant, candidates: &[Candidate], policy: &IdlePolicy) -> Vec<String> {
    candidates
        .iter()
        .filter(|c| is_idle(now, &c.hub, c.timeout.unwrap_or(policy.timeout), policy))
        .map(|c| c.id.clone())
        .collect()
}

/// Runs the policy every `interval`.
#[derive(Debug)]
pub struct IdleReaper {
    sessions: SessionService,
    policy: IdlePolicy,
    interval: Duration,
    settings: Option<SettingsService>,
}

impl IdleReaper {
    /// A reaper over `sessions`.
    pub fn new(sessions: SessionService, policy: IdlePolicy, interval: Duration) -> IdleReaper {
        IdleReaper {
            sessions,
            policy,
            interval,
            settings: None,
        }
    }

    /// Follows the `idle_policy` setting of `settings` when one is set.
    pub fn with_settings(mut self, settings: SettingsService) -> IdleReaper {
        self.settings = Some(settings);
        self
    }

    /// The policy of this pass and the modes it never pauses: the `idle_policy` setting if
    /// set (read every pass, so a change applies without a restart), else the configuration.
    async fn effective_policy(&self) -> (IdlePolicy, Vec<Mode>) {
        let Some(settings) = &self.settings else {
            return (self.policy, Vec::new());
        };
        match settings.idle_policy().await {
            Ok(Some(p)) => (
                IdlePolicy {
                    timeout: Duration::from_secs(p.default_timeout_seconds),
                    grace: Duration::from_secs(p.grace_after_disconnect_seconds),
                },
                p.disable_for_modes,
            ),
            Ok(None) => (self.policy, Vec::new()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the idle_policy setting");
                (self.policy, Vec::new())
            }
        }
    }

    /// One pass: pauses every idle session; returns their ids. A failure on one session is
    /// logged and does not stop the others.
    pub async fn run_once(&self) -> Vec<String> {
        let mut candidates = match self.sessions.idle_candidates().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "idle reaper cannot list sessions");
                return Vec::new();
            }
        };
        let (policy, exempt) = self.effective_policy().await;
        candidates.retain(|c| !exempt.contains(&c.mode));
        let mut paused = Vec::new();
        let clock = self.sessions.clock().clone();
        for (id, timeout) in select_victims(clock.now(), &candidates, &policy)
            .into_iter()
            .map(|id| {
                let t = candidates
                    .iter()
                    .find(|c| c.id == id)
                    .and_then(|c| c.timeout);
                (id, t.unwrap_or(policy.timeout))
            })
        {
            let clock = clock.clone();
            let still_idle = move |h: &HubStatus| is_idle(clock.now(), h, timeout, &policy);
            match self.sessions.idle(&id, still_idle).await {
                Ok(true) => {
                    tracing::info!(session = %id, "session idled");
                    paused.push(id);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(session = %id, error = %e, "cannot idle session"),
            }
        }
        paused
    }

    /// Runs until `cancel`.
    pub async fn run(&self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => { self.run_once().await; }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: IdlePolicy = IdlePolicy {
        timeout: Duration::from_secs(3600),
        grace: Duration::from_secs(300),
    };

    fn hub(now: Instant, idle_for: u64) -> HubStatus {
        HubStatus {
            clients: 0,
            attached: true,
            running_tools: 0,
            agent_running: false,
            seq: 10,
            last_disconnected_at: None,
            last_activity: now - Duration::from_secs(idle_for),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_quiet_for_its_timeout_is_idle() {
        tokio::time::advance(Duration::from_secs(10_000)).await;
        let now = Instant::now();
        assert!(is_idle(now, &hub(now, 3600), POLICY.timeout, &POLICY));
        assert!(!is_idle(now, &hub(now, 3599), POLICY.timeout, &POLICY));
    }

    #[tokio::test(start_paused = true)]
    async fn connected_clients_and_running_work_keep_a_session_awake() {
        tokio::time::advance(Duration::from_secs(10_000)).await;
        let now = Instant::now();
        let mut h = hub(now, 5000);
        h.clients = 1;
        assert!(!is_idle(now, &h, POLICY.timeout, &POLICY));
        let mut h = hub(now, 5000);
        h.agent_running = true;
        assert!(!is_idle(now, &h, POLICY.timeout, &POLICY));
        let mut h = hub(now, 5000);
        h.running_tools = 1;
        assert!(!is_idle(now, &h, POLICY.timeout, &POLICY));
    }

    #[tokio::test(start_paused = true)]
    async fn the_grace_period_after_a_disconnect_is_respected() {
        tokio::time::advance(Duration::from_secs(10_000)).await;
        let now = Instant::now();
        let mut h = hub(now, 5000);
        h.last_disconnected_at = Some(now - Duration::from_secs(299));
        let short = Duration::from_secs(1);
        assert!(!is_idle(now, &h, short, &POLICY));
        h.last_disconnected_at = Some(now - Duration::from_secs(300));
        assert!(is_idle(now, &h, short, &POLICY));
    }

    #[tokio::test(start_paused = true)]
    async fn an_environment_timeout_overrides_the_default() {
        tokio::time::advance(Duration::from_secs(10_000)).await;
        let now = Instant::now();
        let c = |id: &str, idle, timeout| Candidate {
            id: id.into(),
            hub: hub(now, idle),
            timeout,
            mode: Mode::Chat,
        };
        let victims = select_victims(
            now,
            &[
                c("default-long", 100, None),
                c("env-short", 100, Some(Duration::from_secs(60))),
                c("env-long", 4000, Some(Duration::from_secs(7200))),
                c("default-over", 4000, None),
            ],
            &POLICY,
        );
        assert_eq!(victims, ["env-short", "default-over"]);
    }
}
