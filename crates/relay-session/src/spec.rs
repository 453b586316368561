//! What a session's sandbox is made of, decided without touching anything: the environment's
//! config as the session layer reads it, the resource limits of each tier, and
//! [`sandbox_spec`], the one function that builds every sandbox's [`SandboxSpec`] (the relay's,
//! the Docker tests' and the benchmark's alike).

use std::collections::BTreeMap;
use std::time::Duration;

use relay_sandbox::{
    AGENT_PATH, HOME_PATH, LABEL_INSTANCE, LABEL_SESSION, Limits, Network, SandboxSpec,
    WORKSPACE_PATH,
};

use crate::SessionConfig;

/// The parts of an environment's JSON config the session layer uses. The config was validated
/// when it was stored (`environments::normalize_config`); a config that no longer parses counts
/// as empty, so sessions still start, with the relay's defaults.
#[derive(Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EnvConfig {
    pub(crate) image: Option<String>,
    resource_tier: Option<String>,
    network_mode: Option<String>,
    idle_timeout_seconds: Option<u64>,
    #[serde(default)]
    env_vars: Vec<EnvVar>,
}

#[derive(Debug, PartialEq, Eq, serde::Deserialize)]
struct EnvVar {
    key: String,
    value: String,
}

impl EnvConfig {
    /// Reads an environment's stored config.
    pub(crate) fn parse(config: &str) -> EnvConfig {
        serde_json::from_str(config).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "an environment's config does not parse; using the defaults");
            EnvConfig::default()
        })
    }

    /// The environment's idle timeout, if it sets one.
    pub(crate) fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout_seconds
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
    }

    /// The environment's network, or `default` when it names none (or one that is invalid).
    fn network(&self, default: &Network) -> Network {
        self.network_mode
            .as_deref()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| default.clone())
    }
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

/// `pi-sandbox-<sessionId>`
pub fn container_name(id: &str) -> String {
    format!("pi-sandbox-{id}")
}

/// The sandbox of session `id` in an environment whose JSON config is `environment_config` (`{}`
/// for the default), created from the image `image_id`.
pub fn sandbox_spec(
    cfg: &SessionConfig,
    id: &str,
    environment_config: &str,
    image_id: String,
) -> SandboxSpec {
    spec_for(cfg, id, &EnvConfig::parse(environment_config), image_id)
}

pub(crate) fn spec_for(
    cfg: &SessionConfig,
    id: &str,
    env: &EnvConfig,
    image_id: String,
) -> SandboxSpec {
    let mut envs = vec![
        ("PI_CODING_AGENT_DIR".to_owned(), AGENT_PATH.to_owned()),
        ("HOME".to_owned(), HOME_PATH.to_owned()),
        ("PI_SESSION_ID".to_owned(), id.to_owned()),
    ];
    envs.extend(
        env.env_vars
            .iter()
            .map(|v| (v.key.clone(), v.value.clone())),
    );
    SandboxSpec {
        session_id: id.to_owned(),
        name: container_name(id),
        image: image_id,
        // `--session-id`: a recreated sandbox's pi continues the same conversation.
        command: vec![
            "pi".into(),
            "--mode".into(),
            "rpc".into(),
            "--session-id".into(),
            id.into(),
        ],
        env: envs,
        user: cfg.sandbox_user,
        working_dir: WORKSPACE_PATH.into(),
        labels: BTreeMap::from([
            (LABEL_SESSION.to_owned(), id.to_owned()),
            (LABEL_INSTANCE.to_owned(), cfg.instance_id.clone()),
        ]),
        network: env.network(&cfg.network),
        limits: limits_for(env.resource_tier.as_deref()),
        hardened: cfg.hardened,
        egress: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn config() -> SessionConfig {
        SessionConfig {
            default_image: "img:1".into(),
            sandbox_user: (1000, 1001),
            network: Network::None,
            instance_id: "relay-1".into(),
            hardened: true,
            agent_template: None,
            activate_timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_default_environment_runs_pi_for_the_session_by_the_contract() {
        let spec = sandbox_spec(&config(), "s1", "{}", "sha256:abc".into());
        assert_eq!(spec.name, "pi-sandbox-s1");
        assert_eq!(spec.session_id, "s1");
        assert_eq!(spec.image, "sha256:abc");
        assert_eq!(spec.command, ["pi", "--mode", "rpc", "--session-id", "s1"]);
        assert_eq!(spec.user, (1000, 1001));
        assert_eq!(spec.working_dir, "/workspace");
        assert!(
            spec.env
                .contains(&("PI_CODING_AGENT_DIR".into(), "/data/agent".into()))
        );
        assert!(spec.env.contains(&("HOME".into(), "/home/user".into())));
        assert_eq!(spec.labels["pi-relay.session"], "s1");
        assert_eq!(spec.labels["pi-relay.instance"], "relay-1");
        assert_eq!(spec.network, Network::None);
        assert_eq!(spec.limits.memory_bytes, Some(2 << 30));
        assert_eq!(spec.limits.nano_cpus, Some(2_000_000_000));
        assert!(spec.hardened);
    }

    #[test]
    fn an_environment_sets_tier_network_and_variables() {
        let env = r#"{"resourceTier":"large","networkMode":"host",
                      "envVars":[{"key":"FOO","value":"bar"}],"idleTimeoutSeconds":120}"#;
        let spec = sandbox_spec(&config(), "s1", env, "i".into());
        assert_eq!(spec.limits.memory_bytes, Some(4 << 30));
        assert_eq!(spec.limits.nano_cpus, Some(4_000_000_000));
        assert_eq!(spec.network, Network::Host);
        assert_eq!(spec.env.last(), Some(&("FOO".into(), "bar".into())));
        assert_eq!(
            EnvConfig::parse(env).idle_timeout(),
            Some(Duration::from_secs(120))
        );
        let small = sandbox_spec(&config(), "s1", r#"{"resourceTier":"small"}"#, "i".into());
        assert_eq!(small.limits.memory_bytes, Some(1 << 30));
    }

    #[test]
    fn a_config_that_does_not_parse_falls_back_to_the_defaults() {
        assert_eq!(EnvConfig::parse("not json"), EnvConfig::default());
        assert_eq!(
            EnvConfig::parse(r#"{"idleTimeoutSeconds":0}"#).idle_timeout(),
            None
        );
        let spec = sandbox_spec(&config(), "s1", r#"{"networkMode":"a b"}"#, "i".into());
        assert_eq!(spec.network, Network::None);
    }
}
